//! Exit counters: how often guests trap into Keel, by cause. Read by the benchmarks.

use core::sync::atomic::{AtomicU64, Ordering};

/// A count that only the hart running its vCPU writes and any hart may read. Bumping it is a plain load and
/// store, no atomic read-modify-write on the exit path: a vCPU runs on one hart at a time, and moving it to
/// another hart orders its state (`VcpuShared::running`) before the next exit there.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline(always)]
    pub fn bump(&self) {
        self.0.store(self.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Traps from one vCPU into Keel, by cause. They live beside the vCPU's other shared state, so that whichever
/// hart sees its capsule stop can report every vCPU's counts, including those running elsewhere.
#[derive(Default, Debug)]
pub struct ExitCounters {
    pub sbi: Counter,
    pub mmio: Counter,
    pub virtual_instruction: Counter,
    pub host_timer: Counter,
    pub host_external: Counter,
    pub host_software: Counter,
    pub injected_faults: Counter,
    pub other: Counter,
}

impl ExitCounters {
    fn all(&self) -> [&Counter; 8] {
        [
            &self.sbi,
            &self.mmio,
            &self.virtual_instruction,
            &self.host_timer,
            &self.host_external,
            &self.host_software,
            &self.injected_faults,
            &self.other,
        ]
    }

    /// All exits.
    pub fn total(&self) -> u64 {
        self.all().iter().map(|counter| counter.get()).sum()
    }

    /// Starts counting afresh (when the capsule reboots and none of its vCPUs runs).
    pub fn reset(&self) {
        self.all().iter().for_each(|counter| counter.reset());
    }
}
