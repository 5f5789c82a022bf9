//! The guest's own trap handler: records each trap and steps over the instruction that caused it.

use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::instruction_length;
use crate::{arch, console, sbi};

/// The interrupt bit of `scause` on RV64.
const INTERRUPT: usize = 1 << 63;
/// Exception codes that concern the fetch of the instruction at `sepc` itself: skipping is
/// impossible (its bytes cannot be read) and pointless.
const FETCH_EXCEPTIONS: [usize; 3] = [0, 1, 12];

static COUNT: AtomicUsize = AtomicUsize::new(0);
static CAUSE: AtomicUsize = AtomicUsize::new(0);
static VALUE: AtomicUsize = AtomicUsize::new(0);
static PC: AtomicUsize = AtomicUsize::new(0);
/// Where a failed instruction fetch resumes, when a check jumps somewhere on purpose (0: nowhere, the fetch
/// failure is fatal). Used once: the handler clears it.
pub static FETCH_RESUME: AtomicUsize = AtomicUsize::new(0);
/// The program name that opens the line a fatal trap prints (`<name>: FAILED trap: ...`); the SBI check
/// guest's unless [`set_program_name`] chose another. One pointer, so a reader never sees half of a change.
static NAME: AtomicPtr<&'static str> = AtomicPtr::new((&raw const DEFAULT_NAME).cast_mut());
static DEFAULT_NAME: &str = "sbi-check";

/// Names the program in the line a fatal trap prints, so the test reading the console knows whose it is.
pub fn set_program_name(name: &'static &'static str) {
    NAME.store((name as *const &'static str).cast_mut(), Ordering::SeqCst);
}

fn program_name() -> &'static str {
    // SAFETY: NAME only ever holds a pointer made from a `&'static &'static str` (DEFAULT_NAME's or one given
    // to `set_program_name`), which is valid and never written through.
    unsafe { *NAME.load(Ordering::SeqCst) }
}

/// What the most recent trap left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapRecord {
    /// Traps taken since the last [`reset`].
    pub count: usize,
    pub scause: usize,
    pub stval: usize,
    pub sepc: usize,
}

/// Forgets earlier traps, before a check that expects a specific one.
pub fn reset() {
    COUNT.store(0, Ordering::SeqCst);
    CAUSE.store(0, Ordering::SeqCst);
    VALUE.store(0, Ordering::SeqCst);
    PC.store(0, Ordering::SeqCst);
}

pub fn last() -> TrapRecord {
    TrapRecord {
        count: COUNT.load(Ordering::SeqCst),
        scause: CAUSE.load(Ordering::SeqCst),
        stval: VALUE.load(Ordering::SeqCst),
        sepc: PC.load(Ordering::SeqCst),
    }
}

/// Called by `sbi_check_trap_vector` (see `arch`) for every trap.
#[no_mangle]
extern "C" fn sbi_check_trap() {
    let (scause, stval, sepc) = arch::read_trap_registers();
    CAUSE.store(scause, Ordering::SeqCst);
    VALUE.store(stval, Ordering::SeqCst);
    PC.store(sepc, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);

    if scause & INTERRUPT != 0 {
        // Interrupts stay globally disabled (sstatus.SIE = 0), so this is not expected. Mask the
        // source so it cannot repeat forever, and let the check that enabled it see the record.
        let code = scause & !INTERRUPT;
        if code < usize::BITS as usize {
            arch::clear_sie(1 << code);
        }
        return;
    }
    if FETCH_EXCEPTIONS.contains(&scause) {
        match FETCH_RESUME.swap(0, Ordering::SeqCst) {
            0 => fatal(scause, stval, sepc, "an instruction fetch failed"),
            resume => {
                arch::write_sepc(resume);
                return;
            }
        }
    }
    // SAFETY: sepc is the instruction that raised this (non-fetch) exception, so it was fetched
    // from this guest's memory and is readable, and 2-byte aligned.
    let parcel = unsafe { arch::read_instruction_parcel(sepc) };
    match instruction_length(parcel) {
        Some(length) => arch::write_sepc(sepc + length),
        None => fatal(
            scause,
            stval,
            sepc,
            "the instruction's length is not 16 or 32 bits",
        ),
    }
}

/// A trap the guest cannot step over: say so and stop, since no later check could be trusted.
fn fatal(scause: usize, stval: usize, sepc: usize, why: &str) -> ! {
    console::println!(
        "{}: FAILED trap: scause {scause:#x} stval {stval:#x} sepc {sepc:#x} cannot be skipped: {why}",
        program_name()
    );
    sbi::shutdown()
}
