//! IPI and RFENCE extensions: hart-mask validation and fence ranges.

use keel_sbi::{FenceRange, HartSet, SbiError};

use crate::mock::{Event, MockEnvironment};
use crate::{call, err, ok};

const IPI: usize = 0x0073_5049;
const RFENCE: usize = 0x5246_4E43;
const ALL: usize = usize::MAX;

#[test]
fn send_ipi_to_masked_harts() {
    let mut environment = MockEnvironment::new(4);
    assert_eq!(call(&mut environment, IPI, 0, &[0b0110, 0]), ok(0));
    assert_eq!(call(&mut environment, IPI, 0, &[0b1, 3]), ok(0));
    assert_eq!(
        environment.events,
        vec![
            Event::SendIpi(HartSet::from_bits(0b0110)),
            Event::SendIpi(HartSet::from_bits(0b1000)),
        ]
    );
}

#[test]
fn base_minus_one_means_all_harts_whatever_the_mask() {
    let mut environment = MockEnvironment::new(3);
    assert_eq!(call(&mut environment, IPI, 0, &[0, ALL]), ok(0));
    assert_eq!(call(&mut environment, IPI, 0, &[0xdead_beef, ALL]), ok(0));
    assert_eq!(
        environment.events,
        vec![
            Event::SendIpi(HartSet::from_bits(0b111)),
            Event::SendIpi(HartSet::from_bits(0b111)),
        ]
    );
}

#[test]
fn invalid_hart_masks_are_rejected_without_side_effects() {
    let mut environment = MockEnvironment::new(4);
    // Base beyond the vCPU count, with and without mask bits.
    assert_eq!(
        call(&mut environment, IPI, 0, &[1, 4]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut environment, IPI, 0, &[0, 4]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut environment, IPI, 0, &[1, usize::MAX - 1]),
        err(SbiError::InvalidParam)
    );
    // Bits beyond the vCPU count.
    assert_eq!(
        call(&mut environment, IPI, 0, &[0b1_0000, 0]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut environment, IPI, 0, &[0b11, 3]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut environment, IPI, 0, &[1 << 63, 0]),
        err(SbiError::InvalidParam)
    );
    assert!(environment.events.is_empty());
}

#[test]
fn zero_mask_with_valid_base_succeeds_without_sending() {
    let mut environment = MockEnvironment::new(4);
    assert_eq!(call(&mut environment, IPI, 0, &[0, 2]), ok(0));
    assert!(environment.events.is_empty());
}

#[test]
fn other_ipi_functions_are_not_supported() {
    let mut environment = MockEnvironment::new(2);
    assert_eq!(
        call(&mut environment, IPI, 1, &[1, 0]),
        err(SbiError::NotSupported)
    );
    assert!(environment.events.is_empty());
}

#[test]
fn remote_fence_i() {
    let mut environment = MockEnvironment::new(2);
    assert_eq!(call(&mut environment, RFENCE, 0, &[0b10, 0]), ok(0));
    assert_eq!(call(&mut environment, RFENCE, 0, &[0, ALL]), ok(0));
    assert_eq!(
        call(&mut environment, RFENCE, 0, &[0b100, 0]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        environment.events,
        vec![
            Event::RemoteFenceI(HartSet::from_bits(0b10)),
            Event::RemoteFenceI(HartSet::from_bits(0b11)),
        ]
    );
}

#[test]
fn remote_sfence_vma_ranges() {
    let mut environment = MockEnvironment::new(2);
    let targets = HartSet::from_bits(0b11);
    // A plain range.
    assert_eq!(
        call(&mut environment, RFENCE, 1, &[0, ALL, 0x4000, 0x2000]),
        ok(0)
    );
    // start == 0 && size == 0: everything.
    assert_eq!(call(&mut environment, RFENCE, 1, &[0, ALL, 0, 0]), ok(0));
    // size == 2^XLEN - 1: everything, whatever the start.
    assert_eq!(
        call(
            &mut environment,
            RFENCE,
            1,
            &[0, ALL, 0x1234_5000, usize::MAX]
        ),
        ok(0)
    );
    // A range wrapping past the top of the address space is widened to everything.
    assert_eq!(
        call(
            &mut environment,
            RFENCE,
            1,
            &[0, ALL, usize::MAX - 0xfff, 0x2000]
        ),
        ok(0)
    );
    // A range ending exactly at the top is kept.
    assert_eq!(
        call(
            &mut environment,
            RFENCE,
            1,
            &[0, ALL, usize::MAX - 0xfff, 0x1000]
        ),
        ok(0)
    );
    assert_eq!(
        environment.events,
        vec![
            Event::RemoteSfenceVma {
                targets,
                range: FenceRange::Range {
                    start: 0x4000,
                    size: 0x2000
                },
                asid: None
            },
            Event::RemoteSfenceVma {
                targets,
                range: FenceRange::All,
                asid: None
            },
            Event::RemoteSfenceVma {
                targets,
                range: FenceRange::All,
                asid: None
            },
            Event::RemoteSfenceVma {
                targets,
                range: FenceRange::All,
                asid: None
            },
            Event::RemoteSfenceVma {
                targets,
                range: FenceRange::Range {
                    start: usize::MAX - 0xfff,
                    size: 0x1000
                },
                asid: None
            },
        ]
    );
}

#[test]
fn empty_fence_range_succeeds_without_fencing() {
    let mut environment = MockEnvironment::new(2);
    assert_eq!(
        call(&mut environment, RFENCE, 1, &[0b1, 0, 0x4000, 0]),
        ok(0)
    );
    assert_eq!(
        call(&mut environment, RFENCE, 2, &[0b1, 0, 0x4000, 0, 7]),
        ok(0)
    );
    assert!(environment.events.is_empty());
}

#[test]
fn remote_sfence_vma_asid_passes_the_asid() {
    let mut environment = MockEnvironment::new(3);
    assert_eq!(
        call(&mut environment, RFENCE, 2, &[0b1, 1, 0x8000, 0x1000, 42]),
        ok(0)
    );
    assert_eq!(
        call(&mut environment, RFENCE, 2, &[0b1, 3, 0x8000, 0x1000, 42]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        environment.events,
        vec![Event::RemoteSfenceVma {
            targets: HartSet::from_bits(0b10),
            range: FenceRange::Range {
                start: 0x8000,
                size: 0x1000
            },
            asid: Some(42)
        }]
    );
}

#[test]
fn hypervisor_fences_and_unknown_functions_are_not_supported() {
    let mut environment = MockEnvironment::new(2);
    for fid in [3, 4, 5, 6, 7, usize::MAX] {
        assert_eq!(
            call(&mut environment, RFENCE, fid, &[0b1, 0, 0, 0, 1]),
            err(SbiError::NotSupported),
            "fid {fid}"
        );
    }
    assert!(environment.events.is_empty());
}

#[test]
fn vcpu_count_above_sixty_four_is_clamped() {
    let mut environment = MockEnvironment::new(100);
    assert_eq!(call(&mut environment, IPI, 0, &[0, ALL]), ok(0));
    assert_eq!(
        call(&mut environment, IPI, 0, &[1, 64]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        environment.events,
        vec![Event::SendIpi(HartSet::from_bits(u64::MAX))]
    );
}
