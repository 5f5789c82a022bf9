//! Helpers the integration tests share: building images, patching their bytes, resealing them.

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code)]

use keel_dmfs::layout::{header, RECORD_SIZE};
use keel_dmfs::{
    checksum, BuildError, CapsuleSpec, Field, FieldProblem, FormatError, Image, ImageBuilder,
};

pub const MIB: u64 = 1 << 20;

/// Builds an image from `capsules`, in order.
pub fn build(capsules: Vec<CapsuleSpec>) -> Result<Vec<u8>, BuildError> {
    capsules
        .into_iter()
        .try_fold(ImageBuilder::new(), ImageBuilder::capsule)?
        .build()
}

pub fn get_u64(image: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(image[offset..offset + 8].try_into().unwrap())
}

pub fn set_u16(image: &mut [u8], offset: usize, value: u16) {
    image[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

pub fn set_u32(image: &mut [u8], offset: usize, value: u32) {
    image[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub fn set_u64(image: &mut [u8], offset: usize, value: u64) {
    image[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Recomputes the checksum so a test reaches the checks behind it.
///
/// The header's image length decides what is summed, cut to the buffer so that a length made too
/// large by a test still reaches the parser (which reports it) instead of panicking here.
pub fn reseal(image: &mut [u8]) {
    let length = get_u64(image, header::IMAGE_LENGTH) as usize;
    let sum = checksum(&image[..length.min(image.len())]);
    set_u32(image, header::CHECKSUM, sum);
}

/// Offset of capsule `capsule`'s record in the capsule table.
pub fn record_base(image: &[u8], capsule: usize) -> usize {
    get_u64(image, header::TABLE_OFFSET) as usize + capsule * RECORD_SIZE
}

/// Applies `change` to `image`, reseals it and returns the parse result.
pub fn parse_changed(
    mut image: Vec<u8>,
    change: impl FnOnce(&mut Vec<u8>),
) -> Result<(), FormatError> {
    change(&mut image);
    reseal(&mut image);
    Image::parse(&image).map(|_| ())
}

/// The error the parser gives for `problem` with `field` of capsule `capsule`.
pub fn field_error(capsule: u32, field: Field, problem: FieldProblem) -> Result<(), FormatError> {
    Err(FormatError::Field {
        capsule,
        field,
        problem,
    })
}

/// Small deterministic generator so the corruption loops are reproducible.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}
