//! Decoding of RISC-V integer load/store instructions for MMIO emulation, and of the address-translation
//! instructions a hypervisor answers while it narrows a guest's paging modes ([`translation`]).
//!
//! When a guest load or store hits an address that the hypervisor emulates, the trap
//! carries either `htinst` (a transformed copy of the faulting instruction, or 0) or
//! nothing useful, in which case the hypervisor fetches the instruction at the guest's
//! `sepc` itself. Both forms end up here and are turned into an [`MmioInsn`]: which
//! register is read or written, how many bytes are accessed, and how far to advance
//! `sepc` afterwards.
//!
//! Only the integer accesses that a driver can sensibly perform on a device register are
//! accepted: `LB LH LW LD LBU LHU LWU SB SH SW SD` and the RV64C forms `C.LW C.LD C.SW
//! C.SD C.LWSP C.LDSP C.SWSP C.SDSP`. Floating-point loads/stores, atomics and anything
//! else are rejected with a [`DecodeError`] so the hypervisor can fault the guest.

#![cfg_attr(not(test), no_std)]

use core::fmt;

pub mod translation;

/// Direction of an MMIO access and the integer register it involves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A load into `rd` (x0 is allowed: the value is discarded); `signed` selects sign
    /// extension of the loaded value to 64 bits, otherwise it is zero-extended.
    Load { rd: u8, signed: bool },
    /// A store of the low `width` bytes of `rs2`.
    Store { rs2: u8 },
}

/// A decoded MMIO load or store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioInsn {
    /// What the instruction does and with which register.
    pub access: Access,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// Instruction length in bytes (2 for compressed, 4 otherwise): how far to advance
    /// `sepc` once the access has been emulated.
    pub len: u8,
}

/// Why an instruction could not be turned into an [`MmioInsn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A floating-point load or store (FLH/FLW/FLD/FLQ, FSH/FSW/FSD/FSQ and their
    /// compressed forms); the hypervisor does not touch guest FP state for MMIO.
    FloatingPointAccess { raw: u32 },
    /// An AMO or LR/SC: atomic accesses to MMIO are not emulated.
    AtomicAccess { raw: u32 },
    /// An encoding that the ISA reserves (for example `C.LWSP` with `rd = x0`, load
    /// `funct3 = 7`, or the all-zero compressed instruction).
    Reserved { raw: u32 },
    /// A valid instruction that is not a load or store at all.
    NotLoadOrStore { raw: u32 },
    /// `htinst` holds one of the pseudoinstructions that report an implicit VS-stage
    /// page-table access (0x2000, 0x3000, 0x2020, 0x3020): the fault came from the
    /// guest's page-table walk, not from an instruction that the hypervisor can emulate.
    ImplicitPageTableAccess,
    /// `htinst` holds a value that is neither 0, a transformed load/store, nor one of
    /// the defined pseudoinstructions.
    UnknownHtinst { htinst: u64 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::FloatingPointAccess { raw } => {
                write!(
                    f,
                    "instruction {raw:#010x} is a floating-point load/store, not emulated for MMIO"
                )
            }
            DecodeError::AtomicAccess { raw } => {
                write!(
                    f,
                    "instruction {raw:#010x} is an atomic memory operation, not emulated for MMIO"
                )
            }
            DecodeError::Reserved { raw } => {
                write!(f, "instruction {raw:#010x} is a reserved encoding")
            }
            DecodeError::NotLoadOrStore { raw } => {
                write!(f, "instruction {raw:#010x} is not an integer load or store")
            }
            DecodeError::ImplicitPageTableAccess => {
                write!(f, "htinst reports an implicit VS-stage page-table access")
            }
            DecodeError::UnknownHtinst { htinst } => {
                write!(f, "htinst value {htinst:#x} is not a transformed load/store or known pseudoinstruction")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

// Major opcodes (bits 6:0) of the 32-bit encodings that matter here.
const OPCODE_LOAD: u32 = 0b000_0011;
const OPCODE_LOAD_FP: u32 = 0b000_0111;
const OPCODE_STORE: u32 = 0b010_0011;
const OPCODE_STORE_FP: u32 = 0b010_0111;
const OPCODE_AMO: u32 = 0b010_1111;

// Pseudoinstructions written to htinst for implicit VS-stage page-table accesses.
const PSEUDO_PT_READ_32: u64 = 0x0000_2000;
const PSEUDO_PT_READ_64: u64 = 0x0000_3000;
const PSEUDO_PT_WRITE_32: u64 = 0x0000_2020;
const PSEUDO_PT_WRITE_64: u64 = 0x0000_3020;

/// Decodes a raw instruction as fetched from guest memory.
///
/// If `raw & 3 != 3` the instruction is 16-bit compressed and only the low half of `raw`
/// is looked at (the upper half may hold the start of the next instruction); otherwise
/// `raw` is a whole 32-bit instruction.
pub fn decode(raw: u32) -> Result<MmioInsn, DecodeError> {
    if raw & 0b11 != 0b11 {
        decode_compressed(raw as u16)
    } else {
        decode_standard(raw, 4)
    }
}

/// Decodes the `htinst` CSR value of a guest-page-fault or access-fault trap.
///
/// Returns `Ok(None)` for 0, meaning the hardware gave no information and the
/// instruction must be fetched from guest memory and passed to [`decode`]. A transformed
/// load/store (bit 0 set) is decoded directly; bit 1 clear in it means the original
/// instruction was compressed, so `len` is 2 even though the transformed form is the
/// 32-bit equivalent. The implicit page-table access pseudoinstructions yield
/// [`DecodeError::ImplicitPageTableAccess`].
pub fn decode_htinst(htinst: u64) -> Result<Option<MmioInsn>, DecodeError> {
    if htinst == 0 {
        return Ok(None);
    }
    match htinst {
        PSEUDO_PT_READ_32 | PSEUDO_PT_READ_64 | PSEUDO_PT_WRITE_32 | PSEUDO_PT_WRITE_64 => {
            return Err(DecodeError::ImplicitPageTableAccess);
        }
        _ => {}
    }
    // A transformed instruction is a 32-bit encoding: anything above bit 31, or bit 0
    // clear outside the pseudoinstructions, is not something the hardware may report.
    let Ok(low) = u32::try_from(htinst) else {
        return Err(DecodeError::UnknownHtinst { htinst });
    };
    if low & 1 == 0 {
        return Err(DecodeError::UnknownHtinst { htinst });
    }
    let len = if low & 0b10 == 0 { 2 } else { 4 };
    // Restore bit 1 so the value is an ordinary 32-bit encoding. The rs1 field holds the
    // faulting address offset and the immediate fields are zero; neither is used.
    decode_standard(low | 0b10, len).map(Some)
}

/// Extends a value loaded from a device to the 64-bit register value the guest sees.
///
/// Only the low `width` bytes of `raw` are used; they are sign-extended when `signed`,
/// otherwise zero-extended. A `width` of 8 (or any width other than 1, 2 or 4) returns
/// `raw` unchanged.
pub fn load_value(raw: u64, width: u8, signed: bool) -> u64 {
    match (width, signed) {
        (1, false) => raw & 0xff,
        (1, true) => raw as u8 as i8 as i64 as u64,
        (2, false) => raw & 0xffff,
        (2, true) => raw as u16 as i16 as i64 as u64,
        (4, false) => raw & 0xffff_ffff,
        (4, true) => raw as u32 as i32 as i64 as u64,
        _ => raw,
    }
}

/// Truncates a register value to the low `width` bytes that a store writes.
///
/// A `width` of 8 (or any width other than 1, 2 or 4) returns `value` unchanged.
pub fn store_value(value: u64, width: u8) -> u64 {
    match width {
        1 => value & 0xff,
        2 => value & 0xffff,
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

/// Decodes a 32-bit encoding; `len` is the length of the original instruction.
fn decode_standard(raw: u32, len: u8) -> Result<MmioInsn, DecodeError> {
    let opcode = raw & 0x7f;
    let funct3 = (raw >> 12) & 0b111;
    let rd = ((raw >> 7) & 0x1f) as u8;
    let rs2 = ((raw >> 20) & 0x1f) as u8;
    match opcode {
        OPCODE_LOAD => {
            let (width, signed) = match funct3 {
                0b000 => (1, true),  // LB
                0b001 => (2, true),  // LH
                0b010 => (4, true),  // LW
                0b011 => (8, true),  // LD (the sign flag is irrelevant at full width)
                0b100 => (1, false), // LBU
                0b101 => (2, false), // LHU
                0b110 => (4, false), // LWU
                _ => return Err(DecodeError::Reserved { raw }),
            };
            Ok(MmioInsn {
                access: Access::Load { rd, signed },
                width,
                len,
            })
        }
        OPCODE_STORE => {
            let width = match funct3 {
                0b000 => 1, // SB
                0b001 => 2, // SH
                0b010 => 4, // SW
                0b011 => 8, // SD
                _ => return Err(DecodeError::Reserved { raw }),
            };
            Ok(MmioInsn {
                access: Access::Store { rs2 },
                width,
                len,
            })
        }
        OPCODE_LOAD_FP | OPCODE_STORE_FP => Err(DecodeError::FloatingPointAccess { raw }),
        OPCODE_AMO => Err(DecodeError::AtomicAccess { raw }),
        _ => Err(DecodeError::NotLoadOrStore { raw }),
    }
}

/// Decodes a 16-bit RV64C encoding.
fn decode_compressed(half: u16) -> Result<MmioInsn, DecodeError> {
    let raw = u32::from(half);
    if half == 0 {
        // The all-zero halfword is defined to be illegal.
        return Err(DecodeError::Reserved { raw });
    }
    let quadrant = half & 0b11;
    let funct3 = (half >> 13) & 0b111;
    // The CL/CS formats name x8..x15 with a 3-bit field in bits 4:2.
    let reg_prime = (((half >> 2) & 0b111) + 8) as u8;
    // The CI/CSS (stack-pointer based) formats use full 5-bit register fields.
    let rd_full = ((half >> 7) & 0x1f) as u8;
    let rs2_full = ((half >> 2) & 0x1f) as u8;
    let compressed = |access, width| {
        Ok(MmioInsn {
            access,
            width,
            len: 2,
        })
    };

    match (quadrant, funct3) {
        // Quadrant 0: loads and stores relative to x8..x15.
        (0b00, 0b001) | (0b00, 0b101) => Err(DecodeError::FloatingPointAccess { raw }), // C.FLD, C.FSD
        (0b00, 0b010) => compressed(
            Access::Load {
                rd: reg_prime,
                signed: true,
            },
            4,
        ), // C.LW
        (0b00, 0b011) => compressed(
            Access::Load {
                rd: reg_prime,
                signed: true,
            },
            8,
        ), // C.LD
        (0b00, 0b110) => compressed(Access::Store { rs2: reg_prime }, 4),               // C.SW
        (0b00, 0b111) => compressed(Access::Store { rs2: reg_prime }, 8),               // C.SD
        // funct3 = 100 is reserved in base RV64C (later claimed by the Zcb byte/half
        // accesses, which are not emulated); 000 is C.ADDI4SPN.
        (0b00, 0b100) => Err(DecodeError::Reserved { raw }),
        (0b00, _) => Err(DecodeError::NotLoadOrStore { raw }),

        // Quadrant 2: stack-pointer based loads and stores.
        (0b10, 0b001) | (0b10, 0b101) => Err(DecodeError::FloatingPointAccess { raw }), // C.FLDSP, C.FSDSP
        (0b10, 0b010) | (0b10, 0b011) => {
            // C.LWSP / C.LDSP with rd = x0 are reserved encodings.
            if rd_full == 0 {
                return Err(DecodeError::Reserved { raw });
            }
            let width = if funct3 == 0b010 { 4 } else { 8 };
            compressed(
                Access::Load {
                    rd: rd_full,
                    signed: true,
                },
                width,
            )
        }
        (0b10, 0b110) | (0b10, 0b111) => {
            let width = if funct3 == 0b110 { 4 } else { 8 };
            compressed(Access::Store { rs2: rs2_full }, width)
        }
        // Quadrant 1 (arithmetic and branches) and the rest of quadrant 2.
        _ => Err(DecodeError::NotLoadOrStore { raw }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Hand encoders for the formats under test ----

    fn i_type(opcode: u32, funct3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
        ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | opcode
    }

    fn s_type(opcode: u32, funct3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
        let imm = imm as u32 & 0xfff;
        ((imm >> 5) << 25)
            | (rs2 << 20)
            | (rs1 << 15)
            | (funct3 << 12)
            | ((imm & 0x1f) << 7)
            | opcode
    }

    fn load(funct3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
        i_type(OPCODE_LOAD, funct3, rd, rs1, imm)
    }

    fn store(funct3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
        s_type(OPCODE_STORE, funct3, rs1, rs2, imm)
    }

    /// R-type AMO: funct5 selects the operation, aq/rl bits left clear.
    fn amo(funct5: u32, funct3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
        (funct5 << 27) | (rs2 << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | OPCODE_AMO
    }

    /// CL/CS format for quadrant 0: `reg` is the rd'/rs2' register (x8..x15), offset
    /// fields are placed raw (bits 12:10 and 6:5).
    fn c_ls(funct3: u16, rs1: u16, reg: u16, offset_high: u16, offset_low: u16) -> u16 {
        assert!((8..16).contains(&rs1) && (8..16).contains(&reg));
        (funct3 << 13)
            | (offset_high << 10)
            | ((rs1 - 8) << 7)
            | (offset_low << 5)
            | ((reg - 8) << 2)
    }

    /// CI format for quadrant 2 stack loads: rd in bits 11:7, offset bits raw.
    fn c_lsp(funct3: u16, rd: u16, offset_bit12: u16, offset_low: u16) -> u16 {
        (funct3 << 13) | (offset_bit12 << 12) | (rd << 7) | (offset_low << 2) | 0b10
    }

    /// CSS format for quadrant 2 stack stores: rs2 in bits 6:2, offset in 12:7.
    fn c_ssp(funct3: u16, rs2: u16, offset: u16) -> u16 {
        (funct3 << 13) | (offset << 7) | (rs2 << 2) | 0b10
    }

    fn load_insn(rd: u8, signed: bool, width: u8, len: u8) -> MmioInsn {
        MmioInsn {
            access: Access::Load { rd, signed },
            width,
            len,
        }
    }

    fn store_insn(rs2: u8, width: u8, len: u8) -> MmioInsn {
        MmioInsn {
            access: Access::Store { rs2 },
            width,
            len,
        }
    }

    /// Mirrors the hardware transformation of a standard load into htinst: immediate
    /// cleared, rs1 replaced by an address offset, bit 1 cleared if it was compressed.
    fn transform_load(rd: u32, funct3: u32, address_offset: u32, compressed: bool) -> u64 {
        let word = i_type(OPCODE_LOAD, funct3, rd, address_offset, 0);
        u64::from(if compressed { word & !0b10 } else { word })
    }

    fn transform_store(rs2: u32, funct3: u32, address_offset: u32, compressed: bool) -> u64 {
        let word = s_type(OPCODE_STORE, funct3, address_offset, rs2, 0);
        u64::from(if compressed { word & !0b10 } else { word })
    }

    // ---- Standard loads and stores ----

    #[test]
    fn every_standard_load_width_and_signedness() {
        let cases = [
            (0b000, 1, true),  // LB
            (0b001, 2, true),  // LH
            (0b010, 4, true),  // LW
            (0b011, 8, true),  // LD
            (0b100, 1, false), // LBU
            (0b101, 2, false), // LHU
            (0b110, 4, false), // LWU
        ];
        for (funct3, width, signed) in cases {
            let raw = load(funct3, 10, 11, -4);
            assert_eq!(
                decode(raw),
                Ok(load_insn(10, signed, width, 4)),
                "funct3 {funct3}"
            );
        }
    }

    #[test]
    fn every_standard_store_width() {
        for (funct3, width) in [(0b000, 1), (0b001, 2), (0b010, 4), (0b011, 8)] {
            let raw = store(funct3, 5, 12, 2047);
            assert_eq!(decode(raw), Ok(store_insn(12, width, 4)), "funct3 {funct3}");
        }
    }

    #[test]
    fn standard_register_fields_cover_all_registers() {
        for register in 0..32u32 {
            // Vary rs1 and the immediate in the opposite direction so they cannot leak
            // into the decoded register field.
            let other = 31 - register;
            let load_raw = load(0b010, register, other, -2048);
            assert_eq!(decode(load_raw), Ok(load_insn(register as u8, true, 4, 4)));
            let store_raw = store(0b011, other, register, -1);
            assert_eq!(decode(store_raw), Ok(store_insn(register as u8, 8, 4)));
        }
    }

    #[test]
    fn load_into_x0_is_accepted() {
        assert_eq!(decode(load(0b100, 0, 10, 0)), Ok(load_insn(0, false, 1, 4)));
    }

    #[test]
    fn reserved_load_and_store_widths_are_rejected() {
        let raw = load(0b111, 1, 2, 0);
        assert_eq!(decode(raw), Err(DecodeError::Reserved { raw }));
        for funct3 in 0b100..=0b111 {
            let raw = store(funct3, 1, 2, 0);
            assert_eq!(
                decode(raw),
                Err(DecodeError::Reserved { raw }),
                "funct3 {funct3}"
            );
        }
    }

    #[test]
    fn floating_point_loads_and_stores_are_rejected() {
        // FLH, FLW, FLD, FLQ and FSH, FSW, FSD, FSQ.
        for funct3 in 0b001..=0b100 {
            let raw = i_type(OPCODE_LOAD_FP, funct3, 1, 2, 8);
            assert_eq!(decode(raw), Err(DecodeError::FloatingPointAccess { raw }));
            let raw = s_type(OPCODE_STORE_FP, funct3, 2, 1, 8);
            assert_eq!(decode(raw), Err(DecodeError::FloatingPointAccess { raw }));
        }
    }

    #[test]
    fn atomics_are_rejected() {
        let lr_w = amo(0b00010, 0b010, 5, 6, 0);
        let sc_d = amo(0b00011, 0b011, 5, 6, 7);
        let amoswap_w = amo(0b00001, 0b010, 5, 6, 7);
        let amoadd_d = amo(0b00000, 0b011, 5, 6, 7);
        let amoor_w = amo(0b01000, 0b010, 5, 6, 7);
        for raw in [lr_w, sc_d, amoswap_w, amoadd_d, amoor_w] {
            assert_eq!(decode(raw), Err(DecodeError::AtomicAccess { raw }));
        }
    }

    #[test]
    fn other_instructions_are_not_loads_or_stores() {
        let addi = i_type(0b001_0011, 0, 1, 2, 5);
        let jal = 0x0000_00ef;
        let ecall = 0x0000_0073;
        let fence = 0x0ff0_000f;
        let csrrw = 0x1410_1073;
        let lui = 0x0000_12b7;
        let long_48_bit = 0x0000_001f;
        for raw in [
            addi,
            jal,
            ecall,
            fence,
            csrrw,
            lui,
            long_48_bit,
            0xffff_ffff,
        ] {
            assert_eq!(
                decode(raw),
                Err(DecodeError::NotLoadOrStore { raw }),
                "{raw:#x}"
            );
        }
    }

    #[test]
    fn known_encodings_from_an_assembler() {
        // lw a0, 0(a1); sd ra, 8(sp); lbu t0, 5(a0); c.lw a0, 0(a1); c.sdsp ra, 8(sp)
        assert_eq!(decode(0x0005_a503), Ok(load_insn(10, true, 4, 4)));
        assert_eq!(decode(0x0011_3423), Ok(store_insn(1, 8, 4)));
        assert_eq!(decode(0x0055_4283), Ok(load_insn(5, false, 1, 4)));
        assert_eq!(decode(0x4188), Ok(load_insn(10, true, 4, 2)));
        assert_eq!(decode(0xe406), Ok(store_insn(1, 8, 2)));
    }

    // ---- Compressed loads and stores ----

    #[test]
    fn compressed_register_based_loads_and_stores() {
        for (funct3, width) in [(0b010u16, 4u8), (0b011, 8)] {
            let half = c_ls(funct3, 9, 10, 0b101, 0b01);
            assert_eq!(decode(u32::from(half)), Ok(load_insn(10, true, width, 2)));
        }
        for (funct3, width) in [(0b110u16, 4u8), (0b111, 8)] {
            let half = c_ls(funct3, 9, 10, 0b010, 0b10);
            assert_eq!(decode(u32::from(half)), Ok(store_insn(10, width, 2)));
        }
    }

    #[test]
    fn compressed_register_fields_span_x8_to_x15() {
        for register in 8..16u16 {
            let base = 23 - register; // also in x8..x15, differs from `register` mostly
            let lw = c_ls(0b010, base, register, 0b111, 0b11);
            assert_eq!(
                decode(u32::from(lw)),
                Ok(load_insn(register as u8, true, 4, 2))
            );
            let sd = c_ls(0b111, base, register, 0b111, 0b11);
            assert_eq!(decode(u32::from(sd)), Ok(store_insn(register as u8, 8, 2)));
        }
        // Boundaries explicitly.
        assert_eq!(
            decode(u32::from(c_ls(0b011, 15, 8, 0, 0))),
            Ok(load_insn(8, true, 8, 2))
        );
        assert_eq!(
            decode(u32::from(c_ls(0b110, 8, 15, 0, 0))),
            Ok(store_insn(15, 4, 2))
        );
    }

    #[test]
    fn compressed_stack_loads_cover_x1_to_x31() {
        for rd in 1..32u16 {
            let lwsp = c_lsp(0b010, rd, 1, 0b11111);
            assert_eq!(decode(u32::from(lwsp)), Ok(load_insn(rd as u8, true, 4, 2)));
            let ldsp = c_lsp(0b011, rd, 0, 0b00001);
            assert_eq!(decode(u32::from(ldsp)), Ok(load_insn(rd as u8, true, 8, 2)));
        }
    }

    #[test]
    fn compressed_stack_loads_into_x0_are_reserved() {
        for funct3 in [0b010u16, 0b011] {
            let half = c_lsp(funct3, 0, 1, 0b10101);
            let raw = u32::from(half);
            assert_eq!(decode(raw), Err(DecodeError::Reserved { raw }));
        }
    }

    #[test]
    fn compressed_stack_stores_cover_x0_to_x31() {
        for rs2 in 0..32u16 {
            let swsp = c_ssp(0b110, rs2, 0b111111);
            assert_eq!(decode(u32::from(swsp)), Ok(store_insn(rs2 as u8, 4, 2)));
            let sdsp = c_ssp(0b111, rs2, 0b000001);
            assert_eq!(decode(u32::from(sdsp)), Ok(store_insn(rs2 as u8, 8, 2)));
        }
    }

    #[test]
    fn compressed_floating_point_forms_are_rejected() {
        let fld = c_ls(0b001, 8, 9, 0, 0);
        let fsd = c_ls(0b101, 8, 9, 0, 0);
        let fldsp = c_lsp(0b001, 3, 0, 0);
        let fsdsp = c_ssp(0b101, 3, 0);
        for half in [fld, fsd, fldsp, fsdsp] {
            let raw = u32::from(half);
            assert_eq!(
                decode(raw),
                Err(DecodeError::FloatingPointAccess { raw }),
                "{raw:#06x}"
            );
        }
    }

    #[test]
    fn compressed_non_memory_instructions_are_rejected() {
        let c_nop = 0x0001u16;
        let c_addi4spn = 0x0040u16; // c.addi4spn s0, sp, 4
        let c_mv = 0x852eu16; // c.mv a0, a1
        let c_jr = 0x8082u16; // c.jr ra (ret)
        for half in [c_nop, c_addi4spn, c_mv, c_jr] {
            let raw = u32::from(half);
            assert_eq!(
                decode(raw),
                Err(DecodeError::NotLoadOrStore { raw }),
                "{raw:#06x}"
            );
        }
        // The zero halfword and the base-RV64C reserved quadrant-0 slot.
        assert_eq!(decode(0), Err(DecodeError::Reserved { raw: 0 }));
        let reserved = u32::from(0b100u16 << 13);
        assert_eq!(
            decode(reserved),
            Err(DecodeError::Reserved { raw: reserved })
        );
    }

    #[test]
    fn compressed_decoding_ignores_the_upper_half() {
        // A 32-bit fetch at sepc may pick up the next instruction in the upper half.
        let half = c_ls(0b010, 9, 10, 0, 0);
        let with_junk = 0xdead_0000 | u32::from(half);
        assert_eq!(decode(with_junk), Ok(load_insn(10, true, 4, 2)));
    }

    // ---- htinst ----

    #[test]
    fn htinst_zero_means_decode_it_yourself() {
        assert_eq!(decode_htinst(0), Ok(None));
    }

    #[test]
    fn htinst_transformed_standard_accesses() {
        let value = transform_load(31, 0b101, 3, false);
        assert_eq!(decode_htinst(value), Ok(Some(load_insn(31, false, 2, 4))));
        let value = transform_store(0, 0b000, 0, false);
        assert_eq!(decode_htinst(value), Ok(Some(store_insn(0, 1, 4))));
    }

    #[test]
    fn htinst_transformed_compressed_accesses_have_length_two() {
        // C.LW x12 transforms into LW x12 with bit 1 cleared.
        let value = transform_load(12, 0b010, 0, true);
        assert_eq!(decode_htinst(value), Ok(Some(load_insn(12, true, 4, 2))));
        // C.SDSP x31 transforms into SD x31 with bit 1 cleared.
        let value = transform_store(31, 0b011, 1, true);
        assert_eq!(decode_htinst(value), Ok(Some(store_insn(31, 8, 2))));
    }

    #[test]
    fn htinst_every_width_round_trips_through_the_transform() {
        for funct3 in 0..7u32 {
            let plain = decode(load(funct3, 7, 0, 0)).map(|insn| MmioInsn { len: 2, ..insn });
            let transformed = decode_htinst(transform_load(7, funct3, 0, true));
            assert_eq!(transformed, plain.map(Some), "load funct3 {funct3}");
        }
        for funct3 in 0..4u32 {
            let plain = decode(store(funct3, 0, 7, 0));
            let transformed = decode_htinst(transform_store(7, funct3, 0, false));
            assert_eq!(transformed, plain.map(Some), "store funct3 {funct3}");
        }
    }

    #[test]
    fn htinst_page_table_pseudoinstructions() {
        for value in [0x2000u64, 0x3000, 0x2020, 0x3020] {
            assert_eq!(
                decode_htinst(value),
                Err(DecodeError::ImplicitPageTableAccess),
                "{value:#x}"
            );
        }
    }

    #[test]
    fn htinst_unknown_values_are_rejected() {
        for htinst in [0x1000u64, 0x2002, 0x4000, 0x1_0000_0003, u64::MAX, 0x2010] {
            assert_eq!(
                decode_htinst(htinst),
                Err(DecodeError::UnknownHtinst { htinst }),
                "{htinst:#x}"
            );
        }
    }

    #[test]
    fn htinst_transformed_fp_and_atomics_are_rejected() {
        let fld = u64::from(i_type(OPCODE_LOAD_FP, 0b011, 1, 0, 0));
        assert!(matches!(
            decode_htinst(fld),
            Err(DecodeError::FloatingPointAccess { .. })
        ));
        let amoswap = u64::from(amo(0b00001, 0b011, 1, 0, 2));
        assert!(matches!(
            decode_htinst(amoswap),
            Err(DecodeError::AtomicAccess { .. })
        ));
        // A transformed compressed FP store (C.FSD) has bit 1 clear.
        let fsd = u64::from(s_type(OPCODE_STORE_FP, 0b011, 0, 9, 0) & !0b10);
        assert!(matches!(
            decode_htinst(fsd),
            Err(DecodeError::FloatingPointAccess { .. })
        ));
    }

    // ---- Value helpers ----

    #[test]
    fn load_value_extends_by_width() {
        assert_eq!(load_value(0xffff_ffff_ffff_ff80, 1, false), 0x80);
        assert_eq!(load_value(0x80, 1, true), 0xffff_ffff_ffff_ff80);
        assert_eq!(load_value(0x7f, 1, true), 0x7f);
        assert_eq!(load_value(0x1234_8001, 2, true), 0xffff_ffff_ffff_8001);
        assert_eq!(load_value(0x1234_8001, 2, false), 0x8001);
        assert_eq!(
            load_value(0xdead_beef_8000_0000, 4, true),
            0xffff_ffff_8000_0000
        );
        assert_eq!(load_value(0xdead_beef_8000_0000, 4, false), 0x8000_0000);
        assert_eq!(load_value(0xdead_beef_7fff_ffff, 4, true), 0x7fff_ffff);
        assert_eq!(
            load_value(0x8000_0000_0000_0001, 8, true),
            0x8000_0000_0000_0001
        );
        assert_eq!(
            load_value(0x8000_0000_0000_0001, 8, false),
            0x8000_0000_0000_0001
        );
        // Unexpected widths do not panic and leave the value alone.
        assert_eq!(load_value(0x1234, 3, true), 0x1234);
    }

    #[test]
    fn store_value_truncates_by_width() {
        assert_eq!(store_value(0x1122_3344_5566_7788, 1), 0x88);
        assert_eq!(store_value(0x1122_3344_5566_7788, 2), 0x7788);
        assert_eq!(store_value(0x1122_3344_5566_7788, 4), 0x5566_7788);
        assert_eq!(store_value(0x1122_3344_5566_7788, 8), 0x1122_3344_5566_7788);
    }

    #[test]
    fn errors_display_the_instruction() {
        let message = DecodeError::AtomicAccess { raw: 0x1234_5678 }.to_string();
        assert!(
            message.contains("0x12345678") && message.contains("atomic"),
            "{message}"
        );
        let message = DecodeError::UnknownHtinst { htinst: 0x4000 }.to_string();
        assert!(message.contains("0x4000"), "{message}");
    }

    // ---- Robustness ----

    /// Checks the invariants any successful decode must satisfy.
    fn check_invariants(result: Result<MmioInsn, DecodeError>, expected_len: u8) {
        if let Ok(insn) = result {
            assert_eq!(insn.len, expected_len);
            assert!(matches!(insn.width, 1 | 2 | 4 | 8));
            match insn.access {
                Access::Load { rd, .. } => assert!(rd < 32),
                Access::Store { rs2 } => assert!(rs2 < 32),
            }
        }
    }

    #[test]
    fn all_compressed_encodings_decode_without_panicking() {
        let mut accepted = 0;
        for half in 0..=u16::MAX {
            if half & 0b11 == 0b11 {
                continue; // not a compressed instruction
            }
            let result = decode(u32::from(half));
            check_invariants(result, 2);
            if let Ok(insn) = result {
                accepted += 1;
                // Compressed accesses are only ever 4 or 8 bytes wide.
                assert!(matches!(insn.width, 4 | 8), "{half:#06x}");
            }
        }
        // Each (quadrant, funct3) slot holds 2^11 encodings. Eight slots are accepted
        // (C.LW C.LD C.SW C.SD C.LWSP C.LDSP C.SWSP C.SDSP), except the 2^6 encodings
        // per stack-load slot that name rd = x0.
        assert_eq!(accepted, 8 * 2048 - 2 * 64);
    }

    #[test]
    fn random_32_bit_encodings_decode_without_panicking() {
        // xorshift64*: deterministic, so a failure is reproducible.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..1_000_000 {
            let value = next();
            let word = (value as u32) | 0b11;
            check_invariants(decode(word), 4);
            // Feed the same bits to the htinst path, both as-is and truncated.
            let _ = decode_htinst(value);
            if let Ok(Some(insn)) = decode_htinst(value & 0xffff_ffff) {
                let expected_len = if value & 0b10 == 0 { 2 } else { 4 };
                check_invariants(Ok(insn), expected_len);
            }
        }
    }
}
