//! Everything that needs an instruction Rust cannot express: entry, trap vector, `ecall`, CSRs, `wfi`, raw loads.
//!
//! The guest runs in S-mode (VS-mode under Keel) with `satp` = Bare, so every address here is a
//! physical (guest-physical) one.

use core::arch::{asm, global_asm};

/// `sstatus.SIE`: supervisor interrupts enabled.
pub const SSTATUS_SIE: usize = 1 << 1;
/// `sip.SSIP` / `sie.SSIE`: supervisor software interrupt.
pub const IRQ_SOFTWARE: usize = 1 << 1;
/// `sip.STIP` / `sie.STIE`: supervisor timer interrupt.
pub const IRQ_TIMER: usize = 1 << 5;

// Entry with a0 = hartid and a1 = device tree address, from OpenSBI or from Keel. Neither promises a
// stack or zeroed .bss, so set up both before any Rust code runs. `sbi_check_main` never returns;
// the loop after it only guards against that.
global_asm!(
    r#"
    .section .text.entry, "ax"
    .globl _start
_start:
    .option push
    .option norelax
    la      sp, __stack_top
    .option pop
    la      t0, __bss_start
    la      t1, __bss_end
1:
    bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
2:
    call    sbi_check_main
3:
    wfi
    j       3b
"#
);

// The trap vector (direct mode): saves the registers a Rust function may clobber, lets
// `sbi_check_trap` record the trap and move `sepc`, and returns. Callee-saved registers are kept by
// the Rust function itself, so the interrupted code sees every register as it left it.
global_asm!(
    r#"
    .section .text
    .balign 4
    .globl sbi_check_trap_vector
sbi_check_trap_vector:
    addi    sp, sp, -128
    sd      ra, 0(sp)
    sd      t0, 8(sp)
    sd      t1, 16(sp)
    sd      t2, 24(sp)
    sd      t3, 32(sp)
    sd      t4, 40(sp)
    sd      t5, 48(sp)
    sd      t6, 56(sp)
    sd      a0, 64(sp)
    sd      a1, 72(sp)
    sd      a2, 80(sp)
    sd      a3, 88(sp)
    sd      a4, 96(sp)
    sd      a5, 104(sp)
    sd      a6, 112(sp)
    sd      a7, 120(sp)
    call    sbi_check_trap
    ld      ra, 0(sp)
    ld      t0, 8(sp)
    ld      t1, 16(sp)
    ld      t2, 24(sp)
    ld      t3, 32(sp)
    ld      t4, 40(sp)
    ld      t5, 48(sp)
    ld      t6, 56(sp)
    ld      a0, 64(sp)
    ld      a1, 72(sp)
    ld      a2, 80(sp)
    ld      a3, 88(sp)
    ld      a4, 96(sp)
    ld      a5, 104(sp)
    ld      a6, 112(sp)
    ld      a7, 120(sp)
    addi    sp, sp, 128
    sret
"#
);

extern "C" {
    fn _start();
    fn sbi_check_trap_vector();
}

/// The guest's entry point, a valid start address to hand to `sbi_hart_start`.
pub fn entry_address() -> usize {
    _start as *const () as usize
}

/// Points `stvec` at the trap vector, in direct mode (the vector is 4-byte aligned, so mode bits are 0).
pub fn install_trap_vector() {
    let vector = sbi_check_trap_vector as *const () as usize;
    // SAFETY: the vector is a complete handler that preserves every register and returns with
    // `sret`; installing it changes only where this guest's own traps go.
    unsafe { asm!("csrw stvec, {0}", in(reg) vector, options(nostack)) };
}

/// One `ecall` to the SBI implementation; returns (`a0`, `a1`).
///
/// For the legacy extensions `a1` comes back unchanged, so the second value is meaningless there.
pub fn ecall(eid: usize, fid: usize, args: [usize; 6]) -> (isize, usize) {
    let error: isize;
    let value: usize;
    // SAFETY: the SBI calling convention preserves every register except a0 and a1, which are
    // declared as outputs. The call may read guest memory the arguments point at (DBCN), so the
    // asm block is not marked `nomem`: pending stores reach memory first.
    unsafe {
        asm!(
            "ecall",
            inlateout("a0") args[0] => error,
            inlateout("a1") args[1] => value,
            in("a2") args[2],
            in("a3") args[3],
            in("a4") args[4],
            in("a5") args[5],
            in("a6") fid,
            in("a7") eid,
            options(nostack),
        );
    }
    (error, value)
}

/// `rdtime`: ticks of the platform timer, at the device tree's timebase frequency.
pub fn read_time() -> u64 {
    let time: u64;
    // SAFETY: reading the `time` CSR has no side effects; S-mode may read it (the firmware or
    // Keel enables it through `scounteren`/`hcounteren`).
    unsafe { asm!("rdtime {0}", out(reg) time, options(nomem, nostack)) };
    time
}

/// `wfi`: wait until an interrupt is pending and enabled in `sie` (even with `sstatus.SIE` clear).
pub fn wait_for_interrupt() {
    // SAFETY: `wfi` only pauses the hart; it is a hint and may also return at once.
    unsafe { asm!("wfi", options(nomem, nostack)) };
}

macro_rules! csr_accessors {
    ($read:ident, $set:ident, $clear:ident, $csr:literal) => {
        #[doc = concat!("Reads `", $csr, "`.")]
        #[allow(dead_code)]
        pub fn $read() -> usize {
            let value: usize;
            // SAFETY: reading this supervisor CSR has no side effects.
            unsafe { asm!(concat!("csrr {0}, ", $csr), out(reg) value, options(nomem, nostack)) };
            value
        }

        #[doc = concat!("Sets `bits` in `", $csr, "`.")]
        #[allow(dead_code)]
        pub fn $set(bits: usize) {
            // SAFETY: the callers change only interrupt-enable and interrupt-pending bits, which
            // affect nothing but this guest's own interrupt delivery.
            unsafe { asm!(concat!("csrs ", $csr, ", {0}"), in(reg) bits, options(nomem, nostack)) };
        }

        #[doc = concat!("Clears `bits` in `", $csr, "`.")]
        #[allow(dead_code)]
        pub fn $clear(bits: usize) {
            // SAFETY: as for setting: only interrupt-enable and pending bits are touched.
            unsafe { asm!(concat!("csrc ", $csr, ", {0}"), in(reg) bits, options(nomem, nostack)) };
        }
    };
}

csr_accessors!(read_sstatus, set_sstatus, clear_sstatus, "sstatus");
csr_accessors!(read_sie, set_sie, clear_sie, "sie");
csr_accessors!(read_sip, set_sip, clear_sip, "sip");

/// `scause`, `stval` and `sepc` of the trap being handled.
pub fn read_trap_registers() -> (usize, usize, usize) {
    let (cause, value, pc): (usize, usize, usize);
    // SAFETY: reading the trap CSRs has no side effects.
    unsafe {
        asm!(
            "csrr {0}, scause",
            "csrr {1}, stval",
            "csrr {2}, sepc",
            out(reg) cause,
            out(reg) value,
            out(reg) pc,
            options(nomem, nostack),
        );
    }
    (cause, value, pc)
}

/// Sets `sepc`, where `sret` resumes.
pub fn write_sepc(pc: usize) {
    // SAFETY: only called from the trap handler, with the address of the instruction after the
    // one that trapped, so `sret` resumes inside this guest's own code.
    unsafe { asm!("csrw sepc, {0}", in(reg) pc, options(nomem, nostack)) };
}

/// The first 16-bit parcel of the instruction at `pc`.
///
/// # Safety
/// `pc` must be the address of an instruction this guest has fetched (so it is readable memory);
/// instructions are 2-byte aligned with the C extension.
pub unsafe fn read_instruction_parcel(pc: usize) -> u16 {
    // SAFETY: the caller guarantees `pc` is readable and 2-byte aligned.
    unsafe { core::ptr::read_volatile(pc as *const u16) }
}

/// One byte read from a device register.
///
/// # Safety
/// `address` must be a device register whose read has no side effect the caller minds (a 16550's
/// LSR, for instance), or ordinary memory.
pub unsafe fn read_device_byte(address: usize) -> u8 {
    // SAFETY: forwarded from the caller; a volatile load is one `lbu` the compiler keeps.
    unsafe { core::ptr::read_volatile(address as *const u8) }
}

/// A 32-bit load from an address that is expected to fault, as one `lw` instruction.
///
/// When the load faults, the trap handler skips the instruction and the register keeps `fallback`.
///
/// # Safety
/// A trap vector that skips faulting loads must be installed, and a successful read of `address`
/// must not have side effects the caller minds.
pub unsafe fn probe_load_u32(address: usize, fallback: u32) -> u32 {
    let mut value = fallback as usize;
    // SAFETY: forwarded from the caller. Only `value` is written, and only by the load itself.
    unsafe {
        asm!("lw {value}, 0({address})", value = inout(reg) value, address = in(reg) address, options(nostack))
    };
    value as u32
}
