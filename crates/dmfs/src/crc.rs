//! CRC-32 (the ISO-HDLC / zlib variant) used as the image's integrity check.
//!
//! It catches corruption, not tampering: authenticity is left to the signature area.

use crate::layout::{header, HEADER_SIZE};

/// Reflected form of the CRC-32 polynomial 0x04C11DB7.
const POLYNOMIAL: u32 = 0xedb8_8320;

/// One entry per byte value, built at compile time so the hypervisor carries no runtime set-up.
const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut value = index as u32;
        let mut bit = 0;
        while bit < 8 {
            value = if value & 1 != 0 {
                POLYNOMIAL ^ (value >> 1)
            } else {
                value >> 1
            };
            bit += 1;
        }
        table[index] = value;
        index += 1;
    }
    table
}

/// Incremental CRC-32 state.
#[derive(Clone, Copy, Debug)]
pub struct Crc32 {
    state: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    /// Starts a new checksum.
    pub const fn new() -> Self {
        Self { state: u32::MAX }
    }

    /// Feeds `bytes` into the checksum.
    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state = TABLE[usize::from(self.state as u8 ^ byte)] ^ (self.state >> 8);
        }
    }

    /// Feeds `count` zero bytes into the checksum.
    pub fn update_zeros(&mut self, count: usize) {
        for _ in 0..count {
            self.update(&[0]);
        }
    }

    /// The checksum of everything fed so far.
    pub const fn finish(&self) -> u32 {
        !self.state
    }
}

/// The checksum an image stores in its header: CRC-32 over all of `image`, with the checksum field
/// and the signature area read as zeros.
///
/// Leaving the signature area out lets a signature cover the checksum without the two depending
/// on each other. `image` must be exactly the image (its declared length), not a padded buffer.
pub fn checksum(image: &[u8]) -> u32 {
    // Sorted, non-overlapping ranges that count as zero.
    const ZEROED: [(usize, usize); 2] = [
        (header::CHECKSUM, header::CHECKSUM + 4),
        (header::SIGNATURE, header::SIGNATURE + header::SIGNATURE_LEN),
    ];
    const _: () = assert!(header::SIGNATURE + header::SIGNATURE_LEN == HEADER_SIZE);

    let mut crc = Crc32::new();
    let mut position = 0;
    for (start, end) in ZEROED {
        let start = start.min(image.len());
        let end = end.min(image.len());
        crc.update(image.get(position..start).unwrap_or_default());
        crc.update_zeros(end - start);
        position = end;
    }
    crc.update(image.get(position..).unwrap_or_default());
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_check_value() {
        let mut crc = Crc32::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xcbf4_3926);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut whole = Crc32::new();
        whole.update(b"hello, world");
        let mut parts = Crc32::new();
        parts.update(b"hello");
        parts.update(b", world");
        assert_eq!(whole.finish(), parts.finish());
    }

    #[test]
    fn zero_run_equals_literal_zeros() {
        let mut literal = Crc32::new();
        literal.update(&[0; 37]);
        let mut run = Crc32::new();
        run.update_zeros(37);
        assert_eq!(literal.finish(), run.finish());
    }

    #[test]
    fn image_checksum_ignores_checksum_field_and_signature_area() {
        let mut image = [0x5au8; 200];
        let reference = checksum(&image);
        image[header::CHECKSUM..header::CHECKSUM + 4].copy_from_slice(&[1, 2, 3, 4]);
        image[header::SIGNATURE + 10] = 0xff;
        assert_eq!(checksum(&image), reference);
        image[150] ^= 1;
        assert_ne!(checksum(&image), reference);
        image[150] ^= 1;
        image[0] ^= 1;
        assert_ne!(checksum(&image), reference);
    }

    #[test]
    fn short_input_does_not_panic() {
        for length in 0..140 {
            let bytes = [7u8; 140];
            let _ = checksum(&bytes[..length]);
        }
        let mut expected = Crc32::new();
        expected.update(&[7; 12]);
        expected.update_zeros(2);
        assert_eq!(checksum(&[7; 14]), expected.finish());
    }
}
