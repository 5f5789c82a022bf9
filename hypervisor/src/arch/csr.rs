//! Typed access to the control and status registers Keel uses: the only place that writes `csr*` instructions.
//!
//! Each register is a zero-sized type with `read`/`write`/`set`/`clear`. Numbers are used instead of names so the
//! assembler needs no H-extension support; the names follow the privileged specification.

macro_rules! csr {
    ($(#[$doc:meta])* $name:ident = $number:literal) => {
        $(#[$doc])*
        #[allow(non_camel_case_types, dead_code)]
        pub struct $name;

        #[allow(dead_code)]
        impl $name {
            /// The CSR's number in the privileged specification.
            pub const NUMBER: u16 = $number;

            /// Reads the register.
            #[inline(always)]
            pub fn read() -> u64 {
                let value: u64;
                // SAFETY: reading this CSR has no side effects beyond returning its value; Keel runs in HS-mode,
                // where the register is accessible (checked at boot for the H extension).
                unsafe { core::arch::asm!(concat!("csrr {0}, ", stringify!($number)), out(reg) value, options(nomem, nostack)) };
                value
            }

            /// Writes the register.
            #[inline(always)]
            pub fn write(value: u64) {
                // SAFETY: callers decide the value; writes to these supervisor/hypervisor CSRs only change the state
                // of this hart's trap and translation machinery, which Keel owns.
                unsafe { core::arch::asm!(concat!("csrw ", stringify!($number), ", {0}"), in(reg) value, options(nostack)) };
            }

            /// Sets the bits of `mask`.
            #[inline(always)]
            pub fn set(mask: u64) {
                // SAFETY: as for `write`.
                unsafe { core::arch::asm!(concat!("csrs ", stringify!($number), ", {0}"), in(reg) mask, options(nostack)) };
            }

            /// Clears the bits of `mask`.
            #[inline(always)]
            pub fn clear(mask: u64) {
                // SAFETY: as for `write`.
                unsafe { core::arch::asm!(concat!("csrc ", stringify!($number), ", {0}"), in(reg) mask, options(nostack)) };
            }

            /// Writes `value` and returns the previous contents.
            #[inline(always)]
            pub fn swap(value: u64) -> u64 {
                let old: u64;
                // SAFETY: as for `write`.
                unsafe { core::arch::asm!(concat!("csrrw {0}, ", stringify!($number), ", {1}"), out(reg) old, in(reg) value, options(nostack)) };
                old
            }
        }
    };
}

// Supervisor level (HS-mode when V = 0).
csr!(/** Supervisor status. */ sstatus = 0x100);
csr!(/** Supervisor interrupt enable. */ sie = 0x104);
csr!(/** Supervisor trap vector. */ stvec = 0x105);
csr!(/** Supervisor counter enable. */ scounteren = 0x106);
csr!(/** Supervisor scratch: the current vCPU context while a guest runs. */ sscratch = 0x140);
csr!(/** Supervisor exception program counter. */ sepc = 0x141);
csr!(/** Supervisor trap cause. */ scause = 0x142);
csr!(/** Supervisor trap value. */ stval = 0x143);
csr!(/** Supervisor interrupt pending. */ sip = 0x144);
csr!(/** Supervisor timer compare (Sstc). */ stimecmp = 0x14D);
csr!(/** Supervisor address translation and protection. */ satp = 0x180);

// Hypervisor.
csr!(/** Hypervisor status. */ hstatus = 0x600);
csr!(/** Hypervisor exception delegation. */ hedeleg = 0x602);
csr!(/** Hypervisor interrupt delegation. */ hideleg = 0x603);
csr!(/** Hypervisor interrupt enable. */ hie = 0x604);
csr!(/** Offset added to `time` for the guest. */ htimedelta = 0x605);
csr!(/** Hypervisor counter enable. */ hcounteren = 0x606);
csr!(/** Hypervisor environment configuration. */ henvcfg = 0x60A);
csr!(/** Hypervisor trap value: the faulting guest-physical address shifted right by 2. */ htval = 0x643);
csr!(/** Hypervisor interrupt pending. */ hip = 0x644);
csr!(/** Hypervisor virtual interrupt pending: what Keel injects into the guest. */ hvip = 0x645);
csr!(/** Hypervisor trap instruction (transformed). */ htinst = 0x64A);
csr!(/** Hypervisor guest address translation and protection (G-stage root, VMID). */ hgatp = 0x680);

// Virtual supervisor: the guest's own S-level registers while V = 0.
csr!(/** Guest status. */ vsstatus = 0x200);
csr!(/** Guest interrupt enable. */ vsie = 0x204);
csr!(/** Guest trap vector. */ vstvec = 0x205);
csr!(/** Guest scratch. */ vsscratch = 0x240);
csr!(/** Guest exception program counter. */ vsepc = 0x241);
csr!(/** Guest trap cause. */ vscause = 0x242);
csr!(/** Guest trap value. */ vstval = 0x243);
csr!(/** Guest interrupt pending. */ vsip = 0x244);
csr!(/** Guest timer compare (Sstc). */ vstimecmp = 0x24D);
csr!(/** Guest address translation and protection. */ vsatp = 0x280);

// Unprivileged counters.
csr!(/** Real-time counter. */ time = 0xC01);

/// Field masks and values of the registers above.
pub mod bits {
    /// `sstatus.SIE`: supervisor interrupts enabled.
    pub const SSTATUS_SIE: u64 = 1 << 1;
    /// `sstatus.SPIE`.
    pub const SSTATUS_SPIE: u64 = 1 << 5;
    /// `sstatus.SPP`: the privilege before the trap (1 = S; with `hstatus.SPV` set, VS).
    pub const SSTATUS_SPP: u64 = 1 << 8;
    /// `sstatus.FS` field.
    pub const SSTATUS_FS: u64 = 3 << 13;
    /// `sstatus.FS` = Initial.
    pub const SSTATUS_FS_INITIAL: u64 = 1 << 13;
    /// `sstatus.FS` = Dirty.
    pub const SSTATUS_FS_DIRTY: u64 = 3 << 13;
    /// `sstatus.UXL` = 64-bit.
    pub const SSTATUS_UXL_64: u64 = 2 << 32;

    /// `hstatus.SPV`: the trap came from a virtual mode.
    pub const HSTATUS_SPV: u64 = 1 << 7;
    /// `hstatus.SPVP`: the guest's privilege at the trap (and of HLV/HSV accesses).
    pub const HSTATUS_SPVP: u64 = 1 << 8;
    /// `hstatus.VTVM`: `satp` accesses and `sfence.vma` in VS-mode raise a virtual-instruction exception.
    pub const HSTATUS_VTVM: u64 = 1 << 20;
    /// `hstatus.VTW`: WFI in VS-mode raises a virtual-instruction exception.
    pub const HSTATUS_VTW: u64 = 1 << 21;
    /// `hstatus.VSXL` = 64-bit.
    pub const HSTATUS_VSXL_64: u64 = 2 << 32;

    /// Supervisor software interrupt (bit in `sie`/`sip`).
    pub const IRQ_S_SOFT: u64 = 1 << 1;
    /// Virtual supervisor software interrupt (bit in `hvip`/`hideleg`).
    pub const IRQ_VS_SOFT: u64 = 1 << 2;
    /// Supervisor timer interrupt.
    pub const IRQ_S_TIMER: u64 = 1 << 5;
    /// Virtual supervisor timer interrupt.
    pub const IRQ_VS_TIMER: u64 = 1 << 6;
    /// Supervisor external interrupt.
    pub const IRQ_S_EXT: u64 = 1 << 9;
    /// Virtual supervisor external interrupt.
    pub const IRQ_VS_EXT: u64 = 1 << 10;

    /// `henvcfg.STCE`: the guest may use `stimecmp` (Sstc).
    pub const HENVCFG_STCE: u64 = 1 << 63;

    /// `hcounteren`: cycle, time and instret readable by the guest.
    pub const COUNTEREN_CY_TM_IR: u64 = 0b111;
}
