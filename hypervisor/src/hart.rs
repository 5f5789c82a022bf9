//! Physical harts: identity, bring-up of the secondaries, and the messages harts send each other.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::arch::{self, csr, csr::bits};
use crate::{firmware, memory};

/// The most harts Keel drives; hart ids at or above this are left stopped (and logged).
pub const MAX_HARTS: usize = 64;
/// Stack size of each secondary hart.
const STACK_SIZE: usize = 64 * 1024;

/// Harts that have entered Keel.
static ONLINE: [AtomicBool; MAX_HARTS] = [const { AtomicBool::new(false) }; MAX_HARTS];
/// How many harts are online.
static ONLINE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// This hart's id. Keel keeps it in `tp` from the first instruction on.
#[inline(always)]
pub fn id() -> usize {
    let hartid: usize;
    // SAFETY: reading a general register has no side effects; `tp` is set at entry and never changed by Rust code.
    unsafe { core::arch::asm!("mv {0}, tp", out(reg) hartid, options(nomem, nostack, preserves_flags)) };
    hartid
}

/// Records that this hart runs Keel.
pub fn mark_online() {
    let hartid = id();
    if hartid < MAX_HARTS && !ONLINE[hartid].swap(true, Ordering::AcqRel) {
        ONLINE_COUNT.fetch_add(1, Ordering::AcqRel);
    }
}

/// Whether hart `hartid` has entered Keel.
pub fn is_online(hartid: usize) -> bool {
    hartid < MAX_HARTS && ONLINE[hartid].load(Ordering::Acquire)
}

/// Number of harts running Keel.
pub fn online_count() -> usize {
    ONLINE_COUNT.load(Ordering::Acquire)
}

/// How long the boot hart waits for a secondary hart: to hand itself back after a second entry into `_start`, and
/// to come online after it was started. Both take well under a second even on a loaded emulator; a missing hart
/// only idles, so the limit is generous.
const HART_WAIT_SECONDS: u64 = 3;

unsafe extern "C" {
    /// What a hart that lost the boot lottery in `_start` got back from SBI HSM `hart_stop` when that failed: its
    /// hart id plus one in the upper half, the SBI error in the lower half; zero if none failed.
    static keel_lottery_stop_failure: AtomicU64;
}

/// The deadline `HART_WAIT_SECONDS` from now, in `time` ticks of a timebase of `timebase_hz`.
fn deadline(timebase_hz: u64) -> u64 {
    csr::time::read().saturating_add(HART_WAIT_SECONDS.saturating_mul(timebase_hz))
}

/// Starts every other enabled hart of the platform through SBI HSM, each on a stack of its own.
pub fn start_secondaries(hartids: impl Iterator<Item = usize>, timebase_hz: u64) {
    unsafe extern "C" {
        fn keel_secondary_start();
    }
    let me = id();
    for hartid in hartids.filter(|&h| h != me) {
        if hartid >= MAX_HARTS {
            log::warn!("hart {hartid} is beyond the {MAX_HARTS} Keel supports; leaving it stopped");
            continue;
        }
        let Some(stack) = memory::alloc_pages(STACK_SIZE / memory::PAGE_SIZE) else {
            log::error!("no memory for hart {hartid}'s stack; leaving it stopped");
            continue;
        };
        let top = stack + STACK_SIZE;
        let entry = keel_secondary_start as *const () as usize;
        let mut started = firmware::hart_start(hartid, entry, top);
        if started == Err(firmware::FirmwareError(firmware::ERROR_ALREADY_AVAILABLE)) {
            // The firmware sent this hart into Keel's entry as well (some do, now and then); it lost the boot
            // lottery there and is handing itself back (`_start`). Start it properly once it has.
            let until = deadline(timebase_hz);
            while !firmware::hart_stopped(hartid) && csr::time::read() < until {
                core::hint::spin_loop();
            }
            started = firmware::hart_start(hartid, entry, top);
            if started.is_err() {
                report_lottery_stop_failure();
            }
        }
        if let Err(error) = started {
            log::warn!("firmware could not start hart {hartid}: SBI error {}", error.0);
        }
    }
}

/// Names the hart that entered `_start` a second time and could not hand itself back, if one did.
fn report_lottery_stop_failure() {
    // SAFETY: the word is defined in `_start`'s assembly, aligned, and only ever accessed atomically or by `sd`.
    let failure = unsafe { keel_lottery_stop_failure.load(Ordering::Acquire) };
    if failure != 0 {
        log::warn!(
            "hart {} entered Keel's entry point a second time and SBI HSM hart_stop failed there (SBI error {}); it idles",
            (failure >> 32) - 1,
            failure as u32 as i32
        );
    }
}

/// Waits until `count` harts are online, or for [`HART_WAIT_SECONDS`] at most.
pub fn wait_online(count: usize, timebase_hz: u64) {
    let until = deadline(timebase_hz);
    while online_count() < count {
        if csr::time::read() >= until {
            log::warn!("only {} of {count} harts came online within {HART_WAIT_SECONDS} s", online_count());
            report_lottery_stop_failure();
            return;
        }
        core::hint::spin_loop();
    }
}

/// Sleeps in WFI until `ready()` holds, woken by [`kick`]s. A hart waiting this way takes no time from the others,
/// which matters under an emulator that runs several harts on fewer host CPUs.
pub fn sleep_until(ready: impl Fn() -> bool) {
    csr::sie::set(bits::IRQ_S_SOFT);
    while !ready() {
        // A kick that lands before the WFI leaves SSIP pending, so the WFI returns at once.
        arch::wait_for_interrupt();
        csr::sip::clear(bits::IRQ_S_SOFT);
    }
}

/// Set when something on a hart's own queue may have become runnable through work done on that hart.
static RESCHEDULE: [AtomicBool; MAX_HARTS] = [const { AtomicBool::new(false) }; MAX_HARTS];

/// Takes this hart's reschedule note.
pub fn take_reschedule(hartid: usize) -> bool {
    RESCHEDULE[hartid].swap(false, Ordering::AcqRel)
}

/// Kicks hart `hartid` out of WFI or out of its guest so it looks at its queue; on this hart, leaves a note
/// that the run loop reads after the current exit.
pub fn kick(hartid: usize) {
    if hartid == id() {
        RESCHEDULE[hartid].store(true, Ordering::Release);
        return;
    }
    if let Err(error) = firmware::send_ipi(1, hartid) {
        log::warn!("IPI to hart {hartid} failed: SBI error {}", error.0);
    }
}
