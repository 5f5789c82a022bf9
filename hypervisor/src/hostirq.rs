//! Keel's driver for the machine's own PLIC: routes the host UART's and the host NIC's interrupts to the boot hart.

use core::sync::atomic::{AtomicUsize, Ordering};

static BASE: AtomicUsize = AtomicUsize::new(0);
static CONTEXT: AtomicUsize = AtomicUsize::new(0);

fn reg(offset: usize) -> *mut u32 {
    (BASE.load(Ordering::Acquire) + offset) as *mut u32
}

/// Takes the PLIC at `base`, enables `source` at priority 1 for the S-mode `context` of this hart and opens its
/// threshold.
pub fn init(base: usize, context: usize, source: u32) {
    BASE.store(base, Ordering::Release);
    CONTEXT.store(context, Ordering::Release);
    enable(source);
    // SAFETY: the PLIC's registers are MMIO the device tree gave us; the threshold register is this context's own.
    unsafe { core::ptr::write_volatile(reg(0x20_0000 + 0x1000 * context), 0) };
}

/// Whether `init` found the PLIC and this hart's context.
pub fn ready() -> bool {
    BASE.load(Ordering::Acquire) != 0
}

/// Enables one more `source` at priority 1 for the context `init` chose.
pub fn enable(source: u32) {
    let context = CONTEXT.load(Ordering::Acquire);
    let source = source as usize;
    // SAFETY: as in `init`; the offsets follow the PLIC specification and touch only this context's enables and
    // this source's priority.
    unsafe {
        core::ptr::write_volatile(reg(4 * source), 1);
        let enable = reg(0x2000 + 0x80 * context + 4 * (source / 32));
        core::ptr::write_volatile(enable, core::ptr::read_volatile(enable) | 1 << (source % 32));
    }
}

/// Claims the highest-priority pending interrupt of this hart's context (0 if none).
pub fn claim() -> u32 {
    if BASE.load(Ordering::Acquire) == 0 {
        return 0;
    }
    let context = CONTEXT.load(Ordering::Acquire);
    // SAFETY: as in `init`; reading claim is how the PLIC hands out an interrupt.
    unsafe { core::ptr::read_volatile(reg(0x20_0004 + 0x1000 * context)) }
}

/// Signals that `source` has been handled.
pub fn complete(source: u32) {
    let context = CONTEXT.load(Ordering::Acquire);
    // SAFETY: as in `init`.
    unsafe { core::ptr::write_volatile(reg(0x20_0004 + 0x1000 * context), source) };
}
