//! The RISC-V edge: CSRs, special instructions, boot entry and the hypervisor's own trap vector.
//!
//! Everything that needs `asm!` lives under this module (and the world switch in `vcpu::switch`), behind safe
//! functions whose preconditions are stated where they are not obvious.

pub mod csr;

use core::arch::{asm, global_asm};

/// Trap causes from `scause` (exception codes; interrupts have bit 63 set).
pub mod cause {
    /// Instruction access fault.
    pub const INSTRUCTION_ACCESS_FAULT: u64 = 1;
    /// Illegal instruction.
    pub const ILLEGAL_INSTRUCTION: u64 = 2;
    /// Load access fault.
    pub const LOAD_ACCESS_FAULT: u64 = 5;
    /// Store/AMO access fault.
    pub const STORE_ACCESS_FAULT: u64 = 7;
    /// Environment call from VS-mode.
    pub const VIRTUAL_SUPERVISOR_ECALL: u64 = 10;
    /// Instruction guest-page fault.
    pub const INSTRUCTION_GUEST_PAGE_FAULT: u64 = 20;
    /// Load guest-page fault.
    pub const LOAD_GUEST_PAGE_FAULT: u64 = 21;
    /// Virtual instruction.
    pub const VIRTUAL_INSTRUCTION: u64 = 22;
    /// Store/AMO guest-page fault.
    pub const STORE_GUEST_PAGE_FAULT: u64 = 23;
    /// Set in `scause` for interrupts.
    pub const INTERRUPT: u64 = 1 << 63;
    /// Supervisor software interrupt number.
    pub const IRQ_S_SOFT: u64 = 1;
    /// Supervisor timer interrupt number.
    pub const IRQ_S_TIMER: u64 = 5;
    /// Supervisor external interrupt number.
    pub const IRQ_S_EXT: u64 = 9;
}

/// Exceptions the guest handles itself (`hedeleg`): misaligned fetch, illegal instruction, breakpoint,
/// misaligned load/store, user ecall and the three VS-stage page faults.
pub const GUEST_DELEGATED_EXCEPTIONS: u64 =
    (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 12) | (1 << 13) | (1 << 15);

/// Interrupts the guest takes directly (`hideleg`): VS software, timer and external.
pub const GUEST_DELEGATED_INTERRUPTS: u64 = csr::bits::IRQ_VS_SOFT | csr::bits::IRQ_VS_TIMER | csr::bits::IRQ_VS_EXT;

/// Waits for an interrupt (pending and enabled in `sie`, whatever `sstatus.SIE` says).
#[inline(always)]
pub fn wait_for_interrupt() {
    // SAFETY: WFI only stalls this hart until an interrupt is pending.
    unsafe { asm!("wfi", options(nomem, nostack)) };
}

/// Synchronises this hart's instruction fetches with its stores.
#[inline(always)]
pub fn fence_i() {
    // SAFETY: a fence has no effect other than ordering.
    unsafe { asm!("fence.i", options(nostack)) };
}

/// Flushes every G-stage translation of every VMID on this hart (`hfence.gvma x0, x0`).
#[inline(always)]
pub fn hfence_gvma_all() {
    // SAFETY: flushing address-translation caches cannot break memory safety.
    unsafe { asm!(".insn r 0x73, 0, 0x31, x0, x0, x0", options(nostack)) };
}

/// Flushes the VS-stage translations of the guest whose VMID is in `hgatp` now (`hfence.vvma x0, x0`).
#[inline(always)]
pub fn hfence_vvma_all() {
    // SAFETY: flushing address-translation caches cannot break memory safety.
    unsafe { asm!(".insn r 0x73, 0, 0x11, x0, x0, x0", options(nostack)) };
}

/// The result of reading guest memory through the guest's own translation.
#[repr(C)]
struct GuestRead {
    value: u64,
    /// Zero on success, else the `scause` of the fault the access raised.
    fault: u64,
}

unsafe extern "C" {
    fn keel_hlvx_hu(address: u64) -> GuestRead;
    fn keel_hlvx_wu(address: u64) -> GuestRead;
    fn keel_hlv_d(address: u64) -> GuestRead;
    static keel_guest_access_hlvx: u8;
    static keel_guest_access_hlvx_wu: u8;
    static keel_guest_access_hlv_d: u8;
}

/// Reads 16 bits of guest *instruction* memory at guest virtual address `address` as the guest's current
/// privilege would fetch them (HLVX.HU). A fault is returned as its cause instead of trapping.
pub fn guest_fetch_u16(address: u64) -> Result<u16, u64> {
    // SAFETY: the access goes through the guest's two-stage translation, which only reaches memory mapped into
    // the guest; faults are caught by the fixup in `keel_host_trap_handler`.
    let read = unsafe { keel_hlvx_hu(address) };
    if read.fault == 0 { Ok(read.value as u16) } else { Err(read.fault) }
}

/// Reads 32 bits of guest instruction memory at `address` like [`guest_fetch_u16`] (HLVX.WU), in one two-stage
/// walk instead of two. The four bytes must not cross a page boundary (`address` 4-byte aligned ensures it).
pub fn guest_fetch_u32(address: u64) -> Result<u32, u64> {
    // SAFETY: as for `guest_fetch_u16`.
    let read = unsafe { keel_hlvx_wu(address) };
    if read.fault == 0 { Ok(read.value as u32) } else { Err(read.fault) }
}

/// Reads a 64-bit value at guest virtual address `address` through the guest's translation (HLV.D).
pub fn guest_load_u64(address: u64) -> Result<u64, u64> {
    // SAFETY: as for `guest_fetch_u16`.
    let read = unsafe { keel_hlv_d(address) };
    if read.fault == 0 { Ok(read.value) } else { Err(read.fault) }
}

/// Registers saved by the hypervisor's own trap vector.
#[repr(C)]
pub struct HostTrapFrame {
    /// x0..x31 (x0 and sp as they were).
    pub x: [u64; 32],
    /// The trapping pc.
    pub sepc: u64,
    padding: u64,
}

/// Handles a trap taken while Keel itself runs. The only expected ones are faults of the guarded guest-memory
/// accesses above; anything else is a bug in Keel and stops this hart with a message that says what happened.
#[unsafe(no_mangle)]
extern "C" fn keel_host_trap_handler(frame: &mut HostTrapFrame) {
    let scause = csr::scause::read();
    let guarded = [
        core::ptr::addr_of!(keel_guest_access_hlvx) as u64,
        core::ptr::addr_of!(keel_guest_access_hlvx_wu) as u64,
        core::ptr::addr_of!(keel_guest_access_hlv_d) as u64,
    ];
    if scause & cause::INTERRUPT == 0 && guarded.contains(&frame.sepc) {
        frame.x[11] = scause.max(1);
        frame.sepc += 4;
        return;
    }
    panic!(
        "unexpected trap in the hypervisor: scause {:#x} stval {:#x} sepc {:#x} htval {:#x}",
        scause,
        csr::stval::read(),
        frame.sepc,
        csr::htval::read()
    );
}

/// Points this hart's trap vector at the hypervisor's own handler.
pub fn install_host_trap_vector() {
    unsafe extern "C" {
        fn keel_host_trap();
    }
    csr::stvec::write(keel_host_trap as *const () as u64);
}

global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    csrw sie, zero
    mv tp, a0
    /* One hart boots Keel. A firmware that sends more than one here (some do) gets the others back. */
    lla t0, keel_boot_lottery
    li t1, 1
    amoswap.w t1, t1, (t0)
    bnez t1, 5f
    la sp, __boot_stack_top
    la t0, __bss_start
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sd zero, 0(t0)
    addi t0, t0, 8
    j 1b
2:  call keel_boot_main
3:  wfi
    j 3b
    /* Lost the lottery: stop through SBI HSM (hart_stop), so that the boot hart can start this hart as a
       secondary. It must not touch the stack or .bss, which the boot hart owns. */
5:  li a7, 0x48534D
    li a6, 1
    ecall
    /* Still here: hart_stop failed. Leave the hart id and the error for the boot hart to report. */
    addi t0, tp, 1
    slli t0, t0, 32
    slli a0, a0, 32
    srli a0, a0, 32
    or t0, t0, a0
    lla t1, keel_lottery_stop_failure
    sd t0, 0(t1)
6:  wfi
    j 6b

    .section .data
    .align 3
keel_boot_lottery:
    .word 0
    .align 3
    .global keel_lottery_stop_failure
keel_lottery_stop_failure:
    .dword 0

    .text
    .global keel_secondary_start
    .align 2
keel_secondary_start:
    csrw sie, zero
    mv tp, a0
    mv sp, a1
    call keel_secondary_main
4:  wfi
    j 4b

    .align 2
    .global keel_host_trap
keel_host_trap:
    addi sp, sp, -272
    sd x1, 8(sp)
    sd x3, 24(sp)
    sd x4, 32(sp)
    sd x5, 40(sp)
    sd x6, 48(sp)
    sd x7, 56(sp)
    sd x8, 64(sp)
    sd x9, 72(sp)
    sd x10, 80(sp)
    sd x11, 88(sp)
    sd x12, 96(sp)
    sd x13, 104(sp)
    sd x14, 112(sp)
    sd x15, 120(sp)
    sd x16, 128(sp)
    sd x17, 136(sp)
    sd x18, 144(sp)
    sd x19, 152(sp)
    sd x20, 160(sp)
    sd x21, 168(sp)
    sd x22, 176(sp)
    sd x23, 184(sp)
    sd x24, 192(sp)
    sd x25, 200(sp)
    sd x26, 208(sp)
    sd x27, 216(sp)
    sd x28, 224(sp)
    sd x29, 232(sp)
    sd x30, 240(sp)
    sd x31, 248(sp)
    addi t0, sp, 272
    sd t0, 16(sp)
    csrr t0, sepc
    sd t0, 256(sp)
    mv a0, sp
    call keel_host_trap_handler
    ld t0, 256(sp)
    csrw sepc, t0
    ld x1, 8(sp)
    ld x3, 24(sp)
    ld x4, 32(sp)
    ld x5, 40(sp)
    ld x6, 48(sp)
    ld x7, 56(sp)
    ld x8, 64(sp)
    ld x9, 72(sp)
    ld x10, 80(sp)
    ld x11, 88(sp)
    ld x12, 96(sp)
    ld x13, 104(sp)
    ld x14, 112(sp)
    ld x15, 120(sp)
    ld x16, 128(sp)
    ld x17, 136(sp)
    ld x18, 144(sp)
    ld x19, 152(sp)
    ld x20, 160(sp)
    ld x21, 168(sp)
    ld x22, 176(sp)
    ld x23, 184(sp)
    ld x24, 192(sp)
    ld x25, 200(sp)
    ld x26, 208(sp)
    ld x27, 216(sp)
    ld x28, 224(sp)
    ld x29, 232(sp)
    ld x30, 240(sp)
    ld x31, 248(sp)
    addi sp, sp, 272
    sret

    .global keel_hlvx_hu
    .align 2
keel_hlvx_hu:
    li a1, 0
    .global keel_guest_access_hlvx
keel_guest_access_hlvx:
    .insn r 0x73, 4, 0x32, a0, a0, x3
    ret

    .global keel_hlvx_wu
    .align 2
keel_hlvx_wu:
    li a1, 0
    .global keel_guest_access_hlvx_wu
keel_guest_access_hlvx_wu:
    .insn r 0x73, 4, 0x34, a0, a0, x3
    ret

    .global keel_hlv_d
    .align 2
keel_hlv_d:
    li a1, 0
    .global keel_guest_access_hlv_d
keel_guest_access_hlv_d:
    .insn r 0x73, 4, 0x36, a0, a0, x0
    ret

    .section .bss.stack, "aw", @nobits
    .align 12
    .global __boot_stack_top
__boot_stack:
    .space 65536
__boot_stack_top:
"#
);
