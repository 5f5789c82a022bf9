//! The address-translation instructions a guest runs while `hstatus.VTVM` makes them trap: accesses to
//! `satp` and `sfence.vma`, and what a write to `satp` leaves behind when a hypervisor offers fewer
//! paging modes than the hart has.
//!
//! A guest learns which paging modes exist by writing `satp` and reading it back: the field is WARL,
//! and a write naming a mode the hart lacks changes nothing at all. Under the H extension `vsatp`
//! offers whatever the hart offers, so a hypervisor that wants its guests to use a shallower mode traps
//! those accesses and answers them itself with [`satp_after_write`].

/// The `satp` CSR's number.
pub const CSR_SATP: u16 = 0x180;

/// `satp.MODE` values (bits 63:60 on RV64).
pub mod satp_mode {
    /// No translation.
    pub const BARE: u64 = 0;
    /// Three-level paging, 39-bit virtual addresses.
    pub const SV39: u64 = 8;
    /// Four-level paging, 48-bit virtual addresses.
    pub const SV48: u64 = 9;
    /// Five-level paging, 57-bit virtual addresses.
    pub const SV57: u64 = 10;
}

const SATP_MODE_SHIFT: u32 = 60;

/// How a device tree's `mmu-type` property names a paging mode: `riscv,sv39` and so on; `None` for a value that is
/// not one of the RV64 modes in [`satp_mode`].
pub const fn mmu_type(mode: u64) -> Option<&'static str> {
    match mode {
        satp_mode::BARE => Some("riscv,none"),
        satp_mode::SV39 => Some("riscv,sv39"),
        satp_mode::SV48 => Some("riscv,sv48"),
        satp_mode::SV57 => Some("riscv,sv57"),
        _ => None,
    }
}

/// The `MODE` field of a `satp` value.
pub fn satp_mode_of(satp: u64) -> u64 {
    satp >> SATP_MODE_SHIFT
}

/// What a guest's `satp` holds after it writes `written` over `old`, when the paging modes on offer are Bare and
/// every mode from Sv39 up to `widest` (one of [`satp_mode`]). A write that names any other mode has no effect
/// at all, as the privileged specification requires of `satp`.
pub fn satp_after_write(old: u64, written: u64, widest: u64) -> u64 {
    let mode = satp_mode_of(written);
    if mode == satp_mode::BARE || (satp_mode::SV39..=widest).contains(&mode) {
        written
    } else {
        old
    }
}

/// Which of the three CSR operations an instruction performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrOp {
    /// `csrrw`/`csrrwi`: replace the value.
    Write,
    /// `csrrs`/`csrrsi`: set the operand's bits.
    Set,
    /// `csrrc`/`csrrci`: clear the operand's bits.
    Clear,
}

/// Where a CSR instruction's operand comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrOperand {
    /// The value of register `rs1`.
    Register(u8),
    /// The 5-bit immediate, zero-extended.
    Immediate(u8),
}

/// A decoded Zicsr instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsrInsn {
    /// The CSR's number.
    pub csr: u16,
    /// The register that receives the CSR's old value (x0: discarded).
    pub rd: u8,
    pub op: CsrOp,
    pub operand: CsrOperand,
}

impl CsrInsn {
    /// The value the instruction writes to a CSR that held `old`, given the operand's value (the register's
    /// contents, or the immediate), or `None` when it does not write at all: `csrrs` and `csrrc` with x0 or a zero
    /// immediate only read.
    pub fn written(&self, old: u64, operand: u64) -> Option<u64> {
        let source_is_zero = match self.operand {
            CsrOperand::Register(rs1) => rs1 == 0,
            CsrOperand::Immediate(imm) => imm == 0,
        };
        match self.op {
            CsrOp::Write => Some(operand),
            CsrOp::Set if source_is_zero => None,
            CsrOp::Clear if source_is_zero => None,
            CsrOp::Set => Some(old | operand),
            CsrOp::Clear => Some(old & !operand),
        }
    }
}

/// An instruction that `hstatus.VTVM` sends to the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslationInsn {
    /// `sfence.vma rs1, rs2`.
    SfenceVma { rs1: u8, rs2: u8 },
    /// A CSR instruction (the caller checks which CSR it names).
    Csr(CsrInsn),
}

const OPCODE_SYSTEM: u32 = 0b111_0011;
const FUNCT7_SFENCE_VMA: u32 = 0b000_1001;

/// Decodes `raw` (a 32-bit encoding) if it is `sfence.vma` or a Zicsr instruction; every other instruction,
/// compressed ones included, is `None`. Both are always four bytes long.
pub fn decode_translation(raw: u32) -> Option<TranslationInsn> {
    if raw & 0x7f != OPCODE_SYSTEM {
        return None;
    }
    let rd = ((raw >> 7) & 0x1f) as u8;
    let funct3 = (raw >> 12) & 0b111;
    let rs1 = ((raw >> 15) & 0x1f) as u8;
    let rs2 = ((raw >> 20) & 0x1f) as u8;
    let (op, immediate) = match funct3 {
        0b000 => {
            return (raw >> 25 == FUNCT7_SFENCE_VMA && rd == 0).then_some(TranslationInsn::SfenceVma { rs1, rs2 });
        }
        0b001 => (CsrOp::Write, false),
        0b010 => (CsrOp::Set, false),
        0b011 => (CsrOp::Clear, false),
        0b101 => (CsrOp::Write, true),
        0b110 => (CsrOp::Set, true),
        0b111 => (CsrOp::Clear, true),
        _ => return None,
    };
    Some(TranslationInsn::Csr(CsrInsn {
        csr: (raw >> 20) as u16,
        rd,
        op,
        operand: if immediate { CsrOperand::Immediate(rs1) } else { CsrOperand::Register(rs1) },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Encodings from the GNU assembler (riscv64-linux-gnu-as).
    const CSRW_SATP_A2: u32 = 0x1806_1073; // csrrw x0, satp, a2
    const CSRR_A0_SATP: u32 = 0x1800_2573; // csrrs a0, satp, x0
    const CSRRW_A0_SATP_X0: u32 = 0x1800_1573; // csrrw a0, satp, x0 (Linux's csr_swap(satp, 0))
    const CSRRSI_T0_SATP_4: u32 = 0x1802_62f3; // csrrsi t0, satp, 4
    const CSRRC_X0_SATP_T1: u32 = 0x1803_3073; // csrrc x0, satp, t1
    const CSRRCI_A1_SATP_0: u32 = 0x1800_75f3; // csrrci a1, satp, 0
    const SFENCE_VMA: u32 = 0x1200_0073; // sfence.vma
    const SFENCE_VMA_A0_A1: u32 = 0x12b5_0073; // sfence.vma a0, a1
    const WFI: u32 = 0x1050_0073;
    const ECALL: u32 = 0x0000_0073;
    const LD_A0: u32 = 0x0005_3503; // ld a0, 0(a0)

    /// The decoding of a CSR instruction on `satp`.
    fn on_satp(rd: u8, op: CsrOp, operand: CsrOperand) -> Option<TranslationInsn> {
        Some(TranslationInsn::Csr(CsrInsn { csr: CSR_SATP, rd, op, operand }))
    }

    #[test]
    fn satp_instructions_decode_with_their_operands() {
        let cases = [
            (CSRW_SATP_A2, on_satp(0, CsrOp::Write, CsrOperand::Register(12))),
            (CSRR_A0_SATP, on_satp(10, CsrOp::Set, CsrOperand::Register(0))),
            (CSRRW_A0_SATP_X0, on_satp(10, CsrOp::Write, CsrOperand::Register(0))),
            (CSRRSI_T0_SATP_4, on_satp(5, CsrOp::Set, CsrOperand::Immediate(4))),
            (CSRRC_X0_SATP_T1, on_satp(0, CsrOp::Clear, CsrOperand::Register(6))),
            (CSRRCI_A1_SATP_0, on_satp(11, CsrOp::Clear, CsrOperand::Immediate(0))),
        ];
        for (raw, expected) in cases {
            assert_eq!(decode_translation(raw), expected, "{raw:#x}");
        }
    }

    #[test]
    fn sfence_vma_decodes_and_other_system_instructions_do_not() {
        assert_eq!(decode_translation(SFENCE_VMA), Some(TranslationInsn::SfenceVma { rs1: 0, rs2: 0 }));
        assert_eq!(decode_translation(SFENCE_VMA_A0_A1), Some(TranslationInsn::SfenceVma { rs1: 10, rs2: 11 }));
        for raw in [WFI, ECALL, LD_A0, 0x4501 /* c.li a0, 0 */] {
            assert_eq!(decode_translation(raw), None, "{raw:#x}");
        }
    }

    #[test]
    fn only_writing_forms_write() {
        let insn = |raw| match decode_translation(raw) {
            Some(TranslationInsn::Csr(insn)) => insn,
            other => panic!("{raw:#x} decoded as {other:?}"),
        };
        assert_eq!(insn(CSRR_A0_SATP).written(0x1234, 0), None);
        assert_eq!(insn(CSRRCI_A1_SATP_0).written(0x1234, 0), None);
        assert_eq!(insn(CSRRW_A0_SATP_X0).written(0x1234, 0), Some(0));
        assert_eq!(insn(CSRW_SATP_A2).written(0x1234, 0xff), Some(0xff));
        assert_eq!(insn(CSRRSI_T0_SATP_4).written(0x1231, 4), Some(0x1235));
        assert_eq!(insn(CSRRC_X0_SATP_T1).written(0x1234, 0x0204), Some(0x1030));
    }

    #[test]
    fn satp_writes_naming_modes_beyond_the_offer_change_nothing() {
        let sv39 = satp_mode::SV39 << 60 | 0x8_0123;
        let sv48 = satp_mode::SV48 << 60 | 0x8_0123;
        let sv57 = satp_mode::SV57 << 60 | 0x8_0123;
        let reserved = 5 << 60 | 0x8_0123;
        // Linux's probe: Sv57, then Sv48, each read back; both stay Bare when only Sv39 is offered.
        assert_eq!(satp_after_write(0, sv57, satp_mode::SV39), 0);
        assert_eq!(satp_after_write(0, sv48, satp_mode::SV39), 0);
        assert_eq!(satp_after_write(0, sv39, satp_mode::SV39), sv39);
        assert_eq!(satp_after_write(sv39, 0, satp_mode::SV39), 0);
        assert_eq!(satp_after_write(sv39, reserved, satp_mode::SV57), sv39);
        // A wider offer takes the modes up to it and no further.
        assert_eq!(satp_after_write(0, sv48, satp_mode::SV48), sv48);
        assert_eq!(satp_after_write(0, sv57, satp_mode::SV48), 0);
        assert_eq!(satp_after_write(0, sv57, satp_mode::SV57), sv57);
        assert_eq!(satp_mode_of(sv48), satp_mode::SV48);
    }

    #[test]
    fn modes_have_their_device_tree_names() {
        assert_eq!(mmu_type(satp_mode::SV39), Some("riscv,sv39"));
        assert_eq!(mmu_type(satp_mode::SV48), Some("riscv,sv48"));
        assert_eq!(mmu_type(satp_mode::SV57), Some("riscv,sv57"));
        assert_eq!(mmu_type(satp_mode::BARE), Some("riscv,none"));
        assert_eq!(mmu_type(5), None);
    }
}
