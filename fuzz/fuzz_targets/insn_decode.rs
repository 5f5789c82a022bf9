//! Fuzzes the MMIO instruction decoder: raw words, compressed halfwords and `htinst` values, checked
//! against an independent reading of the base-ISA load/store encodings. Also the decoder of trapped
//! address-translation instructions and the `satp` write rule.
#![no_main]

use keel_insn::translation::{decode_translation, satp_after_write, satp_mode, satp_mode_of, TranslationInsn};
use keel_insn::{decode, decode_htinst, load_value, store_value, Access, DecodeError, MmioInsn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, u64, u64)| {
    let (raw, htinst, value) = input;

    let decoded = decode(raw);
    if let Ok(insn) = decoded {
        check_shape(&insn);
        assert_eq!(insn.len, if raw & 0b11 == 0b11 { 4 } else { 2 });
    }
    if raw & 0b11 != 0b11 {
        // A compressed instruction is its low half only: the upper half belongs to the next one.
        assert_eq!(decode(raw & 0xffff), decoded);
        assert_eq!(decode((raw & 0xffff) | (!raw & 0xffff_0000)), decoded);
    } else {
        assert_eq!(decoded.ok(), reference_standard(raw));
        // The same instruction transformed into htinst decodes alike; with bit 1 clear it stands
        // for a compressed original and is 2 bytes long.
        let transformed = decode_htinst(u64::from(raw));
        assert_eq!(
            transformed.map_err(|_| ()),
            decoded.map(Some).map_err(|_| ())
        );
        if let Ok(Some(insn)) = decode_htinst(u64::from(raw & !0b10)) {
            assert_eq!(insn.len, 2);
            assert_eq!(Some(MmioInsn { len: 4, ..insn }), decoded.ok());
        }
    }

    match decode_htinst(htinst) {
        Ok(None) => assert_eq!(htinst, 0),
        Ok(Some(insn)) => {
            check_shape(&insn);
            assert!(htinst <= u64::from(u32::MAX) && htinst & 1 == 1);
        }
        Err(DecodeError::ImplicitPageTableAccess) => {
            assert!(matches!(htinst, 0x2000 | 0x3000 | 0x2020 | 0x3020));
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    if let Err(error) = decoded {
        let _ = error.to_string();
    }

    check_translation(raw, htinst, value);

    for width in [1u8, 2, 4, 8] {
        let stored = store_value(value, width);
        let bits = u32::from(width) * 8;
        assert!(bits == 64 || stored >> bits == 0);
        assert_eq!(load_value(stored, width, false), stored);
        assert_eq!(load_value(value, width, false), stored);
        let signed = load_value(value, width, true);
        assert_eq!(store_value(signed, width), stored);
    }
});

/// A trapped translation instruction is a SYSTEM-opcode word whose fields decode as the spec lays them out, and
/// a `satp` write either takes the value whole (Bare, or a mode from Sv39 to the offer) or changes nothing.
fn check_translation(raw: u32, old: u64, written: u64) {
    match decode_translation(raw) {
        Some(TranslationInsn::SfenceVma { rs1, rs2 }) => {
            assert_eq!(raw & 0xfe00_7fff, 0x1200_0073);
            assert_eq!((u32::from(rs1), u32::from(rs2)), ((raw >> 15) & 0x1f, (raw >> 20) & 0x1f));
        }
        Some(TranslationInsn::Csr(insn)) => {
            assert_eq!(raw & 0x7f, 0x73);
            assert!(matches!((raw >> 12) & 7, 1 | 2 | 3 | 5 | 6 | 7));
            assert_eq!(u32::from(insn.csr), raw >> 20);
            assert_eq!(u32::from(insn.rd), (raw >> 7) & 0x1f);
            let _ = insn.written(old, written);
        }
        None => assert!(raw & 0x7f != 0x73 || (raw >> 12) & 7 == 4 || (raw >> 12) & 7 == 0),
    }
    for widest in [satp_mode::SV39, satp_mode::SV48, satp_mode::SV57] {
        let after = satp_after_write(old, written, widest);
        let mode = satp_mode_of(written);
        let offered = mode == satp_mode::BARE || (satp_mode::SV39..=widest).contains(&mode);
        assert_eq!(after, if offered { written } else { old });
    }
}

fn check_shape(insn: &MmioInsn) {
    assert!(matches!(insn.width, 1 | 2 | 4 | 8));
    assert!(matches!(insn.len, 2 | 4));
    match insn.access {
        Access::Load { rd, signed } => {
            assert!(rd < 32);
            // RV64 has no zero-extending 8-byte load, so a full-width load is always "signed".
            if insn.width == 8 {
                assert!(signed);
            }
        }
        Access::Store { rs2 } => assert!(rs2 < 32),
    }
}

/// The RV64I `LOAD` and `STORE` encodings, read straight from the base ISA's tables.
fn reference_standard(raw: u32) -> Option<MmioInsn> {
    let opcode = raw & 0x7f;
    let funct3 = (raw >> 12) & 0b111;
    let rd = ((raw >> 7) & 0x1f) as u8;
    let rs2 = ((raw >> 20) & 0x1f) as u8;
    let (access, width) = match (opcode, funct3) {
        (0b000_0011, 0) => (Access::Load { rd, signed: true }, 1),
        (0b000_0011, 1) => (Access::Load { rd, signed: true }, 2),
        (0b000_0011, 2) => (Access::Load { rd, signed: true }, 4),
        (0b000_0011, 3) => (Access::Load { rd, signed: true }, 8),
        (0b000_0011, 4) => (Access::Load { rd, signed: false }, 1),
        (0b000_0011, 5) => (Access::Load { rd, signed: false }, 2),
        (0b000_0011, 6) => (Access::Load { rd, signed: false }, 4),
        (0b010_0011, 0) => (Access::Store { rs2 }, 1),
        (0b010_0011, 1) => (Access::Store { rs2 }, 2),
        (0b010_0011, 2) => (Access::Store { rs2 }, 4),
        (0b010_0011, 3) => (Access::Store { rs2 }, 8),
        _ => return None,
    };
    Some(MmioInsn {
        access,
        width,
        len: 4,
    })
}
