//! Exit counters: how often guests trap into Keel, by cause. Read by the benchmarks.

/// Traps from one vCPU into Keel, by cause.
#[derive(Default, Clone, Debug)]
pub struct ExitCounters {
    pub sbi: u64,
    pub mmio: u64,
    pub virtual_instruction: u64,
    pub host_timer: u64,
    pub host_external: u64,
    pub host_software: u64,
    pub injected_faults: u64,
    pub other: u64,
}

impl ExitCounters {
    /// All exits.
    pub fn total(&self) -> u64 {
        self.sbi
            + self.mmio
            + self.virtual_instruction
            + self.host_timer
            + self.host_external
            + self.host_software
            + self.injected_faults
            + self.other
    }
}
