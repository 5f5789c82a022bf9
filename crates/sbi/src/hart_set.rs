//! `HartSet`: a validated set of a capsule's vCPU ids, built from SBI hart-mask arguments.

use core::fmt;

use crate::SbiError;

/// A set of vCPU ids of one capsule, stored as a 64-bit bitmap (bit *n* is vCPU *n*).
///
/// Capsules have at most [`HartSet::MAX_HARTS`] vCPUs, so one `u64` covers every possible id.
/// Sets handed to an [`Environment`](crate::Environment) by [`dispatch`](crate::dispatch) only
/// ever contain ids below the capsule's vCPU count.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HartSet {
    bits: u64,
}

impl HartSet {
    /// The largest vCPU count a capsule can have.
    pub const MAX_HARTS: usize = 64;

    /// The empty set.
    pub const fn empty() -> HartSet {
        HartSet { bits: 0 }
    }

    /// Every vCPU id below `vcpu_count` (clamped to [`HartSet::MAX_HARTS`]).
    pub const fn all(vcpu_count: usize) -> HartSet {
        if vcpu_count >= Self::MAX_HARTS {
            HartSet { bits: u64::MAX }
        } else {
            HartSet {
                bits: (1u64 << vcpu_count) - 1,
            }
        }
    }

    /// The set whose bitmap is `bits`, with no validation against a vCPU count.
    pub const fn from_bits(bits: u64) -> HartSet {
        HartSet { bits }
    }

    /// The set containing only `vcpu`, or `None` if `vcpu` is not below [`HartSet::MAX_HARTS`].
    pub const fn single(vcpu: usize) -> Option<HartSet> {
        if vcpu < Self::MAX_HARTS {
            Some(HartSet { bits: 1 << vcpu })
        } else {
            None
        }
    }

    /// Builds the set named by an SBI `(hart_mask, hart_mask_base)` pair (SBI v2.0 §3.1,
    /// "Hart list parameter") for a capsule with `vcpu_count` vCPUs.
    ///
    /// * `hart_mask_base == usize::MAX` (-1) selects every vCPU and ignores `hart_mask`.
    /// * Otherwise bit *i* of `hart_mask` names hart `hart_mask_base + i`.
    ///
    /// Errors with [`SbiError::InvalidParam`], as the spec's "Hart Mask Errors" table requires,
    /// when `hart_mask_base` is not a valid hart id or a set bit names a hart id the capsule does
    /// not have. The base is checked even when the mask is 0, because the spec lists an invalid
    /// `hart_mask_base` as an error on its own. A zero mask with a valid base is an empty set.
    pub fn from_mask_and_base(
        hart_mask: usize,
        hart_mask_base: usize,
        vcpu_count: usize,
    ) -> Result<HartSet, SbiError> {
        let vcpu_count = vcpu_count.min(Self::MAX_HARTS);
        if hart_mask_base == usize::MAX {
            return Ok(HartSet::all(vcpu_count));
        }
        if hart_mask_base >= vcpu_count {
            return Err(SbiError::InvalidParam);
        }
        // Only the bits below `harts_from_base` can name existing vCPUs; `checked_shr` returns
        // `None` when that count equals the register width, in which case every bit is valid.
        let harts_from_base = vcpu_count - hart_mask_base;
        let out_of_range_bits = u32::try_from(harts_from_base)
            .ok()
            .and_then(|shift| hart_mask.checked_shr(shift))
            .unwrap_or(0);
        if out_of_range_bits != 0 {
            return Err(SbiError::InvalidParam);
        }
        // `hart_mask` now fits in `harts_from_base` bits, so shifting by the base stays below
        // bit `vcpu_count` and loses nothing; `usize` is at most 64 bits on every Rust target.
        let bits = (hart_mask as u64) << hart_mask_base;
        Ok(HartSet { bits })
    }

    /// Builds the set from a legacy (SBI v0.1) hart-mask word for a capsule with `vcpu_count`
    /// vCPUs: bit *n* names hart *n*.
    ///
    /// Errors with [`SbiError::InvalidParam`] if a set bit names a hart the capsule does not have.
    pub fn from_legacy_mask(hart_mask: usize, vcpu_count: usize) -> Result<HartSet, SbiError> {
        Self::from_mask_and_base(hart_mask, 0, vcpu_count)
    }

    /// The raw bitmap: bit *n* set means vCPU *n* is a member.
    pub const fn bits(self) -> u64 {
        self.bits
    }

    /// Whether `vcpu` is a member.
    pub const fn contains(self, vcpu: usize) -> bool {
        vcpu < Self::MAX_HARTS && self.bits & (1 << vcpu) != 0
    }

    /// Whether the set has no members.
    pub const fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// The number of members.
    pub const fn len(self) -> usize {
        self.bits.count_ones() as usize
    }

    /// The set without `vcpu` (unchanged if `vcpu` was not a member).
    pub const fn without(self, vcpu: usize) -> HartSet {
        if vcpu < Self::MAX_HARTS {
            HartSet {
                bits: self.bits & !(1 << vcpu),
            }
        } else {
            self
        }
    }

    /// The members in increasing order.
    pub fn iter(self) -> HartSetIter {
        HartSetIter {
            remaining: self.bits,
        }
    }
}

impl fmt::Debug for HartSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl IntoIterator for HartSet {
    type Item = usize;
    type IntoIter = HartSetIter;

    fn into_iter(self) -> HartSetIter {
        self.iter()
    }
}

/// Iterator over the members of a [`HartSet`], lowest id first.
#[derive(Clone, Debug)]
pub struct HartSetIter {
    remaining: u64,
}

impl Iterator for HartSetIter {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let vcpu = self.remaining.trailing_zeros() as usize;
        // Clear the lowest set bit.
        self.remaining &= self.remaining - 1;
        Some(vcpu)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let count = self.remaining.count_ones() as usize;
        (count, Some(count))
    }
}

impl ExactSizeIterator for HartSetIter {}

#[cfg(test)]
mod tests {
    use super::HartSet;
    use crate::SbiError;

    #[test]
    fn all_covers_exactly_the_vcpu_count() {
        assert_eq!(HartSet::all(0).bits(), 0);
        assert_eq!(HartSet::all(1).bits(), 0b1);
        assert_eq!(HartSet::all(4).bits(), 0b1111);
        assert_eq!(HartSet::all(64).bits(), u64::MAX);
        assert_eq!(HartSet::all(1000).bits(), u64::MAX);
    }

    #[test]
    fn base_minus_one_selects_all_and_ignores_the_mask() {
        for mask in [0, 1, usize::MAX] {
            let set = HartSet::from_mask_and_base(mask, usize::MAX, 3).unwrap();
            assert_eq!(set.bits(), 0b111);
        }
    }

    #[test]
    fn mask_is_shifted_by_base() {
        let set = HartSet::from_mask_and_base(0b101, 2, 8).unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(set.bits(), 0b10100);
    }

    #[test]
    fn zero_mask_with_valid_base_is_empty() {
        let set = HartSet::from_mask_and_base(0, 3, 4).unwrap();
        assert!(set.is_empty());
    }

    #[test]
    fn base_beyond_vcpu_count_is_invalid_even_with_zero_mask() {
        assert_eq!(
            HartSet::from_mask_and_base(0, 4, 4),
            Err(SbiError::InvalidParam)
        );
        assert_eq!(
            HartSet::from_mask_and_base(1, 4, 4),
            Err(SbiError::InvalidParam)
        );
        assert_eq!(
            HartSet::from_mask_and_base(1, usize::MAX - 1, 4),
            Err(SbiError::InvalidParam)
        );
    }

    #[test]
    fn bits_beyond_vcpu_count_are_invalid() {
        assert_eq!(
            HartSet::from_mask_and_base(0b1000, 0, 3),
            Err(SbiError::InvalidParam)
        );
        assert_eq!(
            HartSet::from_mask_and_base(0b10, 2, 3),
            Err(SbiError::InvalidParam)
        );
        assert_eq!(
            HartSet::from_mask_and_base(1 << 63, 0, 63),
            Err(SbiError::InvalidParam)
        );
        // The highest valid bit is accepted.
        assert_eq!(
            HartSet::from_mask_and_base(0b100, 0, 3).unwrap().bits(),
            0b100
        );
    }

    #[test]
    fn full_width_mask_on_sixty_four_vcpus() {
        let set = HartSet::from_mask_and_base(usize::MAX, 0, 64).unwrap();
        assert_eq!(set.len(), 64);
        let set = HartSet::from_mask_and_base(1, 63, 64).unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![63]);
        assert_eq!(
            HartSet::from_mask_and_base(0b11, 63, 64),
            Err(SbiError::InvalidParam)
        );
    }

    #[test]
    fn vcpu_count_above_the_maximum_is_clamped() {
        assert_eq!(
            HartSet::from_mask_and_base(1, 64, 200),
            Err(SbiError::InvalidParam)
        );
        assert_eq!(
            HartSet::from_mask_and_base(0, usize::MAX, 200)
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn zero_vcpus_accepts_only_the_all_form() {
        assert!(HartSet::from_mask_and_base(0, usize::MAX, 0)
            .unwrap()
            .is_empty());
        assert_eq!(
            HartSet::from_mask_and_base(0, 0, 0),
            Err(SbiError::InvalidParam)
        );
    }

    #[test]
    fn legacy_mask_has_base_zero() {
        assert_eq!(HartSet::from_legacy_mask(0b11, 2).unwrap().bits(), 0b11);
        assert_eq!(
            HartSet::from_legacy_mask(0b100, 2),
            Err(SbiError::InvalidParam)
        );
    }

    #[test]
    fn membership_helpers() {
        let set = HartSet::from_bits(0b1011);
        assert!(set.contains(0));
        assert!(!set.contains(2));
        assert!(!set.contains(64));
        assert_eq!(set.len(), 3);
        assert_eq!(set.without(1).bits(), 0b1001);
        assert_eq!(set.without(99), set);
        assert_eq!(HartSet::single(5).map(HartSet::bits), Some(1 << 5));
        assert_eq!(HartSet::single(64), None);
        assert_eq!(set.iter().len(), 3);
        assert_eq!(format!("{set:?}"), "{0, 1, 3}");
    }
}
