//! The vCPU scheduler: per-hart run queues, time slices, WFI as a yield, and idle harts that sleep.
//!
//! Policy (docs/scheduler.md has the reasoning):
//! - Each vCPU has a home hart, chosen when it is created as the hart with the fewest vCPUs; it stays there.
//! - A hart runs its vCPUs round-robin. A vCPU runs until its slice ([`SLICE_MICROSECONDS`]) ends, it waits for an
//!   interrupt (WFI, trapped only while other vCPUs share the hart), it stops, or its capsule stops.
//! - A vCPU alone on its hart gets no slice timer and executes WFI natively: an idle guest's ticks cost no exits.
//!   (With Sstc it still gets one exit a second, a watchdog against lost timer interrupts: see `run.rs`.)
//! - A waiting vCPU becomes runnable when an interrupt is pending for it: its timer deadline passed, or another
//!   hart (or a device) raised one. The hart's timer is armed for the earliest deadline among its waiting vCPUs,
//!   and other harts kick it with an IPI, so a descheduled vCPU still wakes on time. Newly woken vCPUs run first.
//! - A hart with nothing runnable sleeps in WFI until its timer, a kick, or the console wakes it.

use alloc::{boxed::Box, collections::VecDeque, sync::Arc};
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;

use crate::arch::{self, csr, csr::bits};
use crate::capsule::{Capsule, RunState, Vcpu};
use crate::hart::{self, MAX_HARTS};
use crate::{firmware, run, PLATFORM};

/// Length of a time slice when vCPUs share a hart.
pub const SLICE_MICROSECONDS: u64 = 10_000;

/// The vCPUs homed on each hart that are not running right now.
static QUEUES: [Mutex<VecDeque<Box<Vcpu>>>; MAX_HARTS] = [const { Mutex::new(VecDeque::new()) }; MAX_HARTS];
/// How many vCPUs each hart is home to (running or queued).
static LOAD: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];
/// Which vCPU (by address) ran last on each hart, to know when translation caches need flushing.
static LAST_RUN: [AtomicUsize; MAX_HARTS] = [const { AtomicUsize::new(0) }; MAX_HARTS];

/// Whether guests get Sstc (their timer compares in hardware, without Keel).
pub fn sstc() -> bool {
    PLATFORM.get().is_some_and(|p| p.sstc)
}

/// Timer ticks per microsecond.
fn ticks_per_microsecond() -> u64 {
    PLATFORM.get().map_or(10, |p| (p.host.timebase_frequency / 1_000_000).max(1))
}

/// `microseconds` in ticks of the `time` CSR.
pub fn ticks(microseconds: u64) -> u64 {
    microseconds.saturating_mul(ticks_per_microsecond())
}

/// Milliseconds (to a tenth) since `start`, a reading of the `time` CSR, for logging how long something took.
pub struct Since(pub u64);

impl core::fmt::Display for Since {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let tenths = csr::time::read().saturating_sub(self.0) / ticks(100);
        write!(f, "{}.{} ms", tenths / 10, tenths % 10)
    }
}

/// Programs this hart's supervisor timer for `deadline` (`u64::MAX` disarms it).
pub fn arm_timer(deadline: u64) {
    if sstc() {
        csr::stimecmp::write(deadline);
    } else {
        firmware::set_timer(deadline);
    }
}

/// Picks the home hart for a new vCPU: the online hart with the fewest vCPUs, lowest id first.
pub fn choose_hart(online: &[usize]) -> usize {
    online.iter().copied().min_by_key(|&h| (LOAD[h].load(Ordering::Acquire), h)).unwrap_or(0)
}

/// Gives every vCPU of `capsule` a home hart and queues it there.
pub fn place(capsule: &Arc<Capsule>, online: &[usize]) {
    for (index, shared) in capsule.vcpus.iter().enumerate() {
        let hartid = choose_hart(online);
        shared.hart.store(hartid, Ordering::Release);
        // Count it before the next choice so a capsule's vCPUs spread out.
        LOAD[hartid].fetch_add(1, Ordering::AcqRel);
        QUEUES[hartid].lock().push_back(Vcpu::new(capsule.clone(), index));
        hart::kick(hartid);
    }
}

/// Queues fresh vCPUs for a capsule that rebooted, on the harts they had.
pub fn requeue_fresh(capsule: &Arc<Capsule>) {
    for (index, shared) in capsule.vcpus.iter().enumerate() {
        let hartid = shared.hart.load(Ordering::Acquire);
        LOAD[hartid].fetch_add(1, Ordering::AcqRel);
        QUEUES[hartid].lock().push_back(Vcpu::new(capsule.clone(), index));
        hart::kick(hartid);
    }
}

/// Takes every queued vCPU of `capsule` off the queues (it stopped); running ones leave at their next exit.
pub fn remove_capsule(capsule: &Arc<Capsule>) {
    for (hartid, queue) in QUEUES.iter().enumerate() {
        let removed: alloc::vec::Vec<Box<Vcpu>> = {
            let mut queue = queue.lock();
            let (gone, kept): (VecDeque<_>, VecDeque<_>) =
                queue.drain(..).partition(|v| Arc::ptr_eq(&v.capsule, capsule));
            *queue = kept;
            gone.into_iter().collect()
        };
        if !removed.is_empty() {
            LOAD[hartid].fetch_sub(removed.len(), Ordering::AcqRel);
        }
        // Dropped outside the queue lock: the last one may free the capsule.
        drop(removed);
    }
}

/// Whether a vCPU that is waiting for an interrupt has one now, or whether its wait should end anyway.
fn wake_condition(vcpu: &Vcpu, now: u64) -> bool {
    let shared = vcpu.shared();
    if shared.ipi.load(Ordering::Acquire) || shared.external.load(Ordering::Acquire) {
        return true;
    }
    if vcpu.timer_deadline(sstc()) <= now {
        return true;
    }
    // Interrupts Keel already injected, seen at the guest's S-level bit positions, against what it enabled.
    let pending = (vcpu.vs.hvip >> 1) & (bits::IRQ_S_SOFT | bits::IRQ_S_TIMER | bits::IRQ_S_EXT);
    pending & vcpu.vs.vsie != 0
}

/// What a queued vCPU is, for the picker.
enum Readiness {
    /// Drop it: its capsule stopped or rebooted since it was queued.
    Gone,
    Runnable,
    /// It waits (WFI) or is stopped.
    Waiting,
}

fn readiness(vcpu: &Vcpu, now: u64) -> Readiness {
    let capsule = &vcpu.capsule;
    if capsule.stopped.load(Ordering::Acquire) || capsule.generation.load(Ordering::Acquire) != vcpu.generation {
        return Readiness::Gone;
    }
    match vcpu.shared().state() {
        RunState::Stopped => Readiness::Waiting,
        RunState::StartPending => Readiness::Runnable,
        RunState::Started if vcpu.waiting && !wake_condition(vcpu, now) => Readiness::Waiting,
        RunState::Started => Readiness::Runnable,
    }
}

/// Takes the next vCPU to run off this hart's queue: woken waiters first, then round-robin.
fn pick(hartid: usize) -> Option<Box<Vcpu>> {
    let now = csr::time::read();
    let mut gone = alloc::vec::Vec::new();
    let chosen = {
        let mut queue = QUEUES[hartid].lock();
        let mut chosen = None;
        let mut index = 0;
        while index < queue.len() {
            match readiness(&queue[index], now) {
                Readiness::Gone => {
                    if let Some(vcpu) = queue.remove(index) {
                        gone.push(vcpu);
                    }
                    continue;
                }
                Readiness::Runnable => {
                    let woken = queue[index].waiting;
                    if chosen.is_none() || woken {
                        chosen = Some(index);
                        if woken {
                            break;
                        }
                    }
                }
                Readiness::Waiting => {}
            }
            index += 1;
        }
        chosen.and_then(|index| queue.remove(index))
    };
    if !gone.is_empty() {
        LOAD[hartid].fetch_sub(gone.len(), Ordering::AcqRel);
    }
    // Dropping a vCPU may drop the last reference to its capsule, which scrubs and frees its memory: do it
    // outside the queue lock.
    drop(gone);
    chosen
}

/// The earliest timer deadline among this hart's queued vCPUs that wait for an interrupt. (A queued vCPU that
/// is merely preempted gets the hart back at its turn; its deadline need not interrupt anyone.)
#[link_section = ".text.hot.1"]
pub fn queued_deadline(hartid: usize) -> u64 {
    let sstc = sstc();
    QUEUES[hartid]
        .lock()
        .iter()
        .filter(|v| v.waiting && v.shared().state() == RunState::Started)
        .map(|v| v.timer_deadline(sstc))
        .min()
        .unwrap_or(u64::MAX)
}

/// Whether a vCPU on this hart has just become ready — a waiter whose interrupt arrived, or one being started —
/// so that the running vCPU should give way before its slice ends.
#[link_section = ".text.hot.1"]
pub fn woken_waiting(hartid: usize) -> bool {
    let now = csr::time::read();
    QUEUES[hartid].lock().iter().any(|v| {
        (v.waiting || v.shared().state() == RunState::StartPending) && matches!(readiness(v, now), Readiness::Runnable)
    })
}

/// Whether other vCPUs share this hart (called with one of its vCPUs switched in).
///
/// `LOAD` counts the running vCPU and the queued ones, so this is "the queue is not empty" without taking the
/// queue lock, which would otherwise be taken before every guest entry. The count moves a moment before or after
/// the queue itself; in between the answer only sets or clears `hstatus.VTW` one entry late, and a vCPU placed on
/// this hart kicks it anyway.
pub fn shared_hart(hartid: usize) -> bool {
    LOAD[hartid].load(Ordering::Acquire) > 1
}

/// Sleeps until something may have become runnable: a timer deadline, a kick, or console input.
fn idle(hartid: usize) {
    arm_timer(queued_deadline(hartid));
    arch::wait_for_interrupt();
    let pending = csr::sip::read();
    if pending & bits::IRQ_S_SOFT != 0 {
        csr::sip::clear(bits::IRQ_S_SOFT);
    }
    if pending & bits::IRQ_S_TIMER != 0 {
        arm_timer(u64::MAX);
    }
    if pending & bits::IRQ_S_EXT != 0 {
        run::service_host_external();
    }
}

/// Each hart's loop: run vCPUs from its queue, sleep when none is runnable.
#[link_section = ".text.hot.1"]
pub fn hart_loop() -> ! {
    let hartid = hart::id();
    loop {
        match pick(hartid) {
            Some(mut vcpu) => {
                let keep = run_slice(hartid, &mut vcpu);
                if keep {
                    QUEUES[hartid].lock().push_back(vcpu);
                } else {
                    LOAD[hartid].fetch_sub(1, Ordering::AcqRel);
                    drop(vcpu);
                }
            }
            None => idle(hartid),
        }
    }
}

/// Why a slice ended.
pub enum SliceEnd {
    /// Still started: queue it again.
    Requeue,
    /// Gone for good (capsule stopped or rebooted).
    Drop,
}

/// Switches `vcpu` in, runs it until its slice ends or it waits or stops, and switches it out.
/// Returns whether it goes back on the queue.
fn run_slice(hartid: usize, vcpu: &mut Vcpu) -> bool {
    let capsule = vcpu.capsule.clone();
    let shared = &capsule.vcpus[vcpu.index];
    if shared.state() == RunState::StartPending {
        vcpu.reset_to(shared.start_pc.load(Ordering::Acquire), shared.start_opaque.load(Ordering::Acquire));
        shared.set_state(RunState::Started);
    }
    if shared.state() != RunState::Started {
        return true;
    }
    vcpu.waiting = false;
    let sstc = sstc();

    // Switch in. Translation caches may hold another vCPU's (or another capsule's) entries.
    shared.running.store(true, Ordering::Release);
    csr::hgatp::write(capsule.hgatp);
    let me = vcpu as *const Vcpu as usize;
    if LAST_RUN[hartid].swap(me, Ordering::AcqRel) != me {
        arch::hfence_gvma_all();
        arch::hfence_vvma_all();
    }
    vcpu.vs.load(sstc);
    vcpu.fp.restore();

    let end = run::run_vcpu(hartid, vcpu);

    // Switch out.
    vcpu.vs.save(sstc);
    vcpu.fp.save_if_dirty(vcpu.context.guest.sstatus);
    shared.running.store(false, Ordering::Release);
    arm_timer(u64::MAX);
    matches!(end, SliceEnd::Requeue)
}

/// The deadline of a slice starting now, if the hart is shared; `u64::MAX` otherwise.
pub fn slice_deadline(hartid: usize) -> u64 {
    if shared_hart(hartid) {
        csr::time::read().saturating_add(ticks(SLICE_MICROSECONDS))
    } else {
        u64::MAX
    }
}
