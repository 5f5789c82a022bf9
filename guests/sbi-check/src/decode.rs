//! Instruction lengths from the low bits of the first 16-bit parcel (unprivileged spec, "Base Instruction-Length Encoding").

/// The length in bytes of the instruction whose first (lowest-addressed) 16-bit parcel is `first_parcel`.
///
/// Returns `None` for the 48-bit and longer encodings, which RV64GC does not use: a trap handler that
/// cannot tell how far to skip must not guess.
pub const fn instruction_length(first_parcel: u16) -> Option<usize> {
    if first_parcel & 0b11 != 0b11 {
        // Bits [1:0] other than 11: a 16-bit compressed instruction.
        Some(2)
    } else if first_parcel & 0b1_1100 != 0b1_1100 {
        // Bits [1:0] = 11 and bits [4:2] other than 111: a 32-bit instruction.
        Some(4)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::instruction_length;

    #[test]
    fn compressed_and_standard_lengths() {
        // c.lw a0, 0(a0) = 0x4108; lw a0, 0(a0) = 0x00052503 (low parcel 0x2503).
        assert_eq!(instruction_length(0x4108), Some(2));
        assert_eq!(instruction_length(0x2503), Some(4));
        // lbu a0, 5(a0) = 0x00554503.
        assert_eq!(instruction_length(0x4503), Some(4));
        // c.nop = 0x0001, and quadrant 2 (c.ldsp) = 0x6502.
        assert_eq!(instruction_length(0x0001), Some(2));
        assert_eq!(instruction_length(0x6502), Some(2));
    }

    #[test]
    fn longer_encodings_are_not_guessed() {
        // 48-bit encodings have bits [5:0] = 011111, 64-bit ones bits [6:0] = 0111111.
        assert_eq!(instruction_length(0b01_1111), None);
        assert_eq!(instruction_length(0b011_1111), None);
        assert_eq!(instruction_length(0xffff), None);
    }
}
