//! Virtual CPUs: the guest register file, the VS-level CSRs, floating-point state and the world switch.
//!
//! The world switch is one assembly routine whose save-slot offsets come from `offset_of!` on [`Context`], so there
//! is no offset table to keep in step by hand. `run_guest` saves Keel's callee-saved registers, loads the guest's
//! and `sret`s into VS-mode; the guest's next trap lands in `keel_guest_exit`, which saves the guest and returns
//! from `run_guest` as if it were an ordinary call.

use core::arch::global_asm;
use core::mem::offset_of;

use crate::arch::csr::{self, bits};

/// Guest state the world switch saves and restores on every exit.
#[repr(C)]
#[derive(Default, Clone)]
pub struct GuestRegs {
    /// x0..x31 (x0 is always 0).
    pub x: [u64; 32],
    /// Where the guest resumes.
    pub sepc: u64,
    /// `sstatus` as the guest left it: SPP is the guest's privilege, FS its floating-point state.
    pub sstatus: u64,
    /// `hstatus` for the guest (SPV set so `sret` enters a virtual mode).
    pub hstatus: u64,
}

/// Keel's callee-saved registers while a guest runs.
#[repr(C)]
#[derive(Default, Clone)]
struct HostRegs {
    ra: u64,
    sp: u64,
    gp: u64,
    tp: u64,
    s: [u64; 12],
}

/// Why the guest stopped running: the trap CSRs at the exit. For an ecall from VS-mode (an SBI call) only `scause`
/// is read; `stval`, `htval` and `htinst` are then 0.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct ExitInfo {
    /// `scause`.
    pub scause: u64,
    /// `stval`.
    pub stval: u64,
    /// `htval`: guest-physical address >> 2 for guest-page faults.
    pub htval: u64,
    /// `htinst`: the transformed trapping instruction, or 0.
    pub htinst: u64,
}

/// Everything the world switch touches, in one `#[repr(C)]` block.
#[repr(C)]
#[derive(Default, Clone)]
pub struct Context {
    /// The guest's registers.
    pub guest: GuestRegs,
    host: HostRegs,
    /// The trap that ended the last run.
    pub exit: ExitInfo,
}

/// The guest's VS-level CSRs. They stay live in hardware while the vCPU owns its hart and are only saved when
/// another vCPU takes the hart over.
#[derive(Default, Clone, Debug)]
pub struct VsCsrs {
    pub vsstatus: u64,
    pub vsie: u64,
    pub vstvec: u64,
    pub vsscratch: u64,
    pub vsepc: u64,
    pub vscause: u64,
    pub vstval: u64,
    pub vsatp: u64,
    pub vstimecmp: u64,
    /// Interrupts Keel is injecting (VSSIP, VSTIP, VSEIP).
    pub hvip: u64,
}

impl VsCsrs {
    /// The reset state of a vCPU: 64-bit VS-mode, no translation, timer far in the future.
    pub fn reset() -> Self {
        Self { vsstatus: bits::SSTATUS_UXL_64, vstimecmp: u64::MAX, ..Self::default() }
    }

    /// Loads this state into the hart.
    pub fn load(&self, sstc: bool) {
        csr::vsstatus::write(self.vsstatus);
        csr::vsie::write(self.vsie);
        csr::vstvec::write(self.vstvec);
        csr::vsscratch::write(self.vsscratch);
        csr::vsepc::write(self.vsepc);
        csr::vscause::write(self.vscause);
        csr::vstval::write(self.vstval);
        csr::vsatp::write(self.vsatp);
        if sstc {
            csr::vstimecmp::write(self.vstimecmp);
        }
        csr::hvip::write(self.hvip);
    }

    /// Saves the hart's VS-level state.
    pub fn save(&mut self, sstc: bool) {
        self.vsstatus = csr::vsstatus::read();
        self.vsie = csr::vsie::read();
        self.vstvec = csr::vstvec::read();
        self.vsscratch = csr::vsscratch::read();
        self.vsepc = csr::vsepc::read();
        self.vscause = csr::vscause::read();
        self.vstval = csr::vstval::read();
        self.vsatp = csr::vsatp::read();
        if sstc {
            self.vstimecmp = csr::vstimecmp::read();
        }
        self.hvip = csr::hvip::read();
    }
}

/// Floating-point registers and `fcsr`.
#[repr(C)]
#[derive(Default, Clone)]
pub struct FpState {
    f: [u64; 32],
    fcsr: u64,
}

impl FpState {
    /// Saves the hart's floating-point registers if the guest has dirtied them (per `sstatus.FS` at its exit).
    pub fn save_if_dirty(&mut self, guest_sstatus: u64) -> bool {
        if guest_sstatus & bits::SSTATUS_FS != bits::SSTATUS_FS_DIRTY {
            return false;
        }
        // SAFETY: the routine enables FS just for the copy and writes only into `self`.
        unsafe { keel_fp_save(self) };
        true
    }

    /// Loads these registers into the hart.
    pub fn restore(&self) {
        // SAFETY: the routine enables FS just for the copy and reads only from `self`.
        unsafe { keel_fp_restore(self) };
    }
}

unsafe extern "C" {
    fn keel_run_guest(context: *mut Context);
    fn keel_fp_save(state: *mut FpState);
    fn keel_fp_restore(state: *const FpState);
}

/// Runs the guest described by `context` until its next trap into HS-mode.
///
/// The VS CSRs, `hgatp` and delegation must already be set up for this guest on this hart.
pub fn run_guest(context: &mut Context) {
    // SAFETY: `context` is a valid, exclusively borrowed Context; the routine saves and restores every register
    // the calling convention asks it to, and leaves `stvec` pointing at Keel's own trap vector again.
    unsafe { keel_run_guest(context) };
}

global_asm!(
    r#"
    .section .text.hot.0, "ax"
    .global keel_run_guest
    .align 2
keel_run_guest:
    sd ra, ({hr}+0)(a0)
    sd sp, ({hr}+8)(a0)
    sd gp, ({hr}+16)(a0)
    sd tp, ({hr}+24)(a0)
    sd s0, ({hs}+0)(a0)
    sd s1, ({hs}+8)(a0)
    sd s2, ({hs}+16)(a0)
    sd s3, ({hs}+24)(a0)
    sd s4, ({hs}+32)(a0)
    sd s5, ({hs}+40)(a0)
    sd s6, ({hs}+48)(a0)
    sd s7, ({hs}+56)(a0)
    sd s8, ({hs}+64)(a0)
    sd s9, ({hs}+72)(a0)
    sd s10, ({hs}+80)(a0)
    sd s11, ({hs}+88)(a0)
    csrw sscratch, a0
    la t0, keel_guest_exit
    csrw stvec, t0
    ld t0, {gsepc}(a0)
    csrw sepc, t0
    ld t0, {gsstatus}(a0)
    csrw sstatus, t0
    ld t0, {ghstatus}(a0)
    csrw hstatus, t0
    ld x1, ({gx}+8)(a0)
    ld x2, ({gx}+16)(a0)
    ld x3, ({gx}+24)(a0)
    ld x4, ({gx}+32)(a0)
    ld x5, ({gx}+40)(a0)
    ld x6, ({gx}+48)(a0)
    ld x7, ({gx}+56)(a0)
    ld x8, ({gx}+64)(a0)
    ld x9, ({gx}+72)(a0)
    ld x11, ({gx}+88)(a0)
    ld x12, ({gx}+96)(a0)
    ld x13, ({gx}+104)(a0)
    ld x14, ({gx}+112)(a0)
    ld x15, ({gx}+120)(a0)
    ld x16, ({gx}+128)(a0)
    ld x17, ({gx}+136)(a0)
    ld x18, ({gx}+144)(a0)
    ld x19, ({gx}+152)(a0)
    ld x20, ({gx}+160)(a0)
    ld x21, ({gx}+168)(a0)
    ld x22, ({gx}+176)(a0)
    ld x23, ({gx}+184)(a0)
    ld x24, ({gx}+192)(a0)
    ld x25, ({gx}+200)(a0)
    ld x26, ({gx}+208)(a0)
    ld x27, ({gx}+216)(a0)
    ld x28, ({gx}+224)(a0)
    ld x29, ({gx}+232)(a0)
    ld x30, ({gx}+240)(a0)
    ld x31, ({gx}+248)(a0)
    ld a0, ({gx}+80)(a0)
    sret

    .align 2
    .global keel_guest_exit
keel_guest_exit:
    csrrw a0, sscratch, a0
    sd x1, ({gx}+8)(a0)
    sd x2, ({gx}+16)(a0)
    sd x3, ({gx}+24)(a0)
    sd x4, ({gx}+32)(a0)
    sd x5, ({gx}+40)(a0)
    sd x6, ({gx}+48)(a0)
    sd x7, ({gx}+56)(a0)
    sd x8, ({gx}+64)(a0)
    sd x9, ({gx}+72)(a0)
    sd x11, ({gx}+88)(a0)
    sd x12, ({gx}+96)(a0)
    sd x13, ({gx}+104)(a0)
    sd x14, ({gx}+112)(a0)
    sd x15, ({gx}+120)(a0)
    sd x16, ({gx}+128)(a0)
    sd x17, ({gx}+136)(a0)
    sd x18, ({gx}+144)(a0)
    sd x19, ({gx}+152)(a0)
    sd x20, ({gx}+160)(a0)
    sd x21, ({gx}+168)(a0)
    sd x22, ({gx}+176)(a0)
    sd x23, ({gx}+184)(a0)
    sd x24, ({gx}+192)(a0)
    sd x25, ({gx}+200)(a0)
    sd x26, ({gx}+208)(a0)
    sd x27, ({gx}+216)(a0)
    sd x28, ({gx}+224)(a0)
    sd x29, ({gx}+232)(a0)
    sd x30, ({gx}+240)(a0)
    sd x31, ({gx}+248)(a0)
    csrr t0, sscratch
    sd t0, ({gx}+80)(a0)
    csrr t0, sepc
    sd t0, {gsepc}(a0)
    csrr t0, sstatus
    sd t0, {gsstatus}(a0)
    csrr t0, hstatus
    sd t0, {ghstatus}(a0)
    csrr t0, scause
    sd t0, ({ex}+0)(a0)
    // An SBI call needs none of the fault registers, and every CSR access is dear under emulation.
    li t1, {ecall_vs}
    beq t0, t1, 1f
    csrr t0, stval
    sd t0, ({ex}+8)(a0)
    csrr t0, 0x643
    sd t0, ({ex}+16)(a0)
    csrr t0, 0x64A
    sd t0, ({ex}+24)(a0)
    j 2f
1:  sd zero, ({ex}+8)(a0)
    sd zero, ({ex}+16)(a0)
    sd zero, ({ex}+24)(a0)
2:
    li t0, {fs}
    csrc sstatus, t0
    la t0, keel_host_trap
    csrw stvec, t0
    ld ra, ({hr}+0)(a0)
    ld sp, ({hr}+8)(a0)
    ld gp, ({hr}+16)(a0)
    ld tp, ({hr}+24)(a0)
    ld s0, ({hs}+0)(a0)
    ld s1, ({hs}+8)(a0)
    ld s2, ({hs}+16)(a0)
    ld s3, ({hs}+24)(a0)
    ld s4, ({hs}+32)(a0)
    ld s5, ({hs}+40)(a0)
    ld s6, ({hs}+48)(a0)
    ld s7, ({hs}+56)(a0)
    ld s8, ({hs}+64)(a0)
    ld s9, ({hs}+72)(a0)
    ld s10, ({hs}+80)(a0)
    ld s11, ({hs}+88)(a0)
    ret

    .option push
    .option arch, +d
    .global keel_fp_save
    .align 2
keel_fp_save:
    li t0, {fs}
    csrs sstatus, t0
    fsd f0, 0(a0)
    fsd f1, 8(a0)
    fsd f2, 16(a0)
    fsd f3, 24(a0)
    fsd f4, 32(a0)
    fsd f5, 40(a0)
    fsd f6, 48(a0)
    fsd f7, 56(a0)
    fsd f8, 64(a0)
    fsd f9, 72(a0)
    fsd f10, 80(a0)
    fsd f11, 88(a0)
    fsd f12, 96(a0)
    fsd f13, 104(a0)
    fsd f14, 112(a0)
    fsd f15, 120(a0)
    fsd f16, 128(a0)
    fsd f17, 136(a0)
    fsd f18, 144(a0)
    fsd f19, 152(a0)
    fsd f20, 160(a0)
    fsd f21, 168(a0)
    fsd f22, 176(a0)
    fsd f23, 184(a0)
    fsd f24, 192(a0)
    fsd f25, 200(a0)
    fsd f26, 208(a0)
    fsd f27, 216(a0)
    fsd f28, 224(a0)
    fsd f29, 232(a0)
    fsd f30, 240(a0)
    fsd f31, 248(a0)
    frcsr t1
    sd t1, 256(a0)
    csrc sstatus, t0
    ret

    .global keel_fp_restore
    .align 2
keel_fp_restore:
    li t0, {fs}
    csrs sstatus, t0
    fld f0, 0(a0)
    fld f1, 8(a0)
    fld f2, 16(a0)
    fld f3, 24(a0)
    fld f4, 32(a0)
    fld f5, 40(a0)
    fld f6, 48(a0)
    fld f7, 56(a0)
    fld f8, 64(a0)
    fld f9, 72(a0)
    fld f10, 80(a0)
    fld f11, 88(a0)
    fld f12, 96(a0)
    fld f13, 104(a0)
    fld f14, 112(a0)
    fld f15, 120(a0)
    fld f16, 128(a0)
    fld f17, 136(a0)
    fld f18, 144(a0)
    fld f19, 152(a0)
    fld f20, 160(a0)
    fld f21, 168(a0)
    fld f22, 176(a0)
    fld f23, 184(a0)
    fld f24, 192(a0)
    fld f25, 200(a0)
    fld f26, 208(a0)
    fld f27, 216(a0)
    fld f28, 224(a0)
    fld f29, 232(a0)
    fld f30, 240(a0)
    fld f31, 248(a0)
    ld t1, 256(a0)
    fscsr t1
    csrc sstatus, t0
    ret
    .option pop
"#,
    gx = const offset_of!(Context, guest) + offset_of!(GuestRegs, x),
    gsepc = const offset_of!(Context, guest) + offset_of!(GuestRegs, sepc),
    gsstatus = const offset_of!(Context, guest) + offset_of!(GuestRegs, sstatus),
    ghstatus = const offset_of!(Context, guest) + offset_of!(GuestRegs, hstatus),
    hr = const offset_of!(Context, host),
    hs = const offset_of!(Context, host) + offset_of!(HostRegs, s),
    ex = const offset_of!(Context, exit),
    ecall_vs = const crate::arch::cause::VIRTUAL_SUPERVISOR_ECALL,
    fs = const bits::SSTATUS_FS,
);
