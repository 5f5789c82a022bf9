//! SRST extension: system reset type and reason validation.

use keel_sbi::{Outcome, ResetKind, ResetReason, SbiError};

use crate::mock::MockEnvironment;
use crate::{call, err};

const SRST: usize = 0x5352_5354;

#[test]
fn every_defined_type_and_reason_resets() {
    let mut environment = MockEnvironment::new(1);
    let kinds = [
        (0, ResetKind::Shutdown),
        (1, ResetKind::ColdReboot),
        (2, ResetKind::WarmReboot),
    ];
    let reasons = [(0, ResetReason::NoReason), (1, ResetReason::SystemFailure)];
    for (reset_type, kind) in kinds {
        assert_eq!(kind.reset_type(), reset_type as u32);
        for (reset_reason, reason) in reasons {
            assert_eq!(reason.reset_reason(), reset_reason as u32);
            assert_eq!(
                call(&mut environment, SRST, 0, &[reset_type, reset_reason]),
                Outcome::Reset { kind, reason }
            );
        }
    }
    assert!(environment.events.is_empty());
}

#[test]
fn reserved_and_vendor_reset_types_are_invalid() {
    let mut environment = MockEnvironment::new(1);
    for reset_type in [3, 0xEFFF_FFFF, 0xF000_0000, 0xFFFF_FFFF] {
        assert_eq!(
            call(&mut environment, SRST, 0, &[reset_type, 0]),
            err(SbiError::InvalidParam),
            "{reset_type:#x}"
        );
    }
}

#[test]
fn reserved_and_unimplemented_reasons_are_invalid() {
    let mut environment = MockEnvironment::new(1);
    for reset_reason in [
        2,
        0xDFFF_FFFF,
        0xE000_0000,
        0xEFFF_FFFF,
        0xF000_0000,
        0xFFFF_FFFF,
    ] {
        assert_eq!(
            call(&mut environment, SRST, 0, &[0, reset_reason]),
            err(SbiError::InvalidParam),
            "{reset_reason:#x}"
        );
    }
}

#[test]
fn only_the_low_32_bits_of_each_parameter_count() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(
            &mut environment,
            SRST,
            0,
            &[0x1_0000_0001, 0xffff_ffff_0000_0001]
        ),
        Outcome::Reset {
            kind: ResetKind::ColdReboot,
            reason: ResetReason::SystemFailure
        }
    );
}

#[test]
fn unknown_srst_functions_are_not_supported() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, SRST, 1, &[0, 0]),
        err(SbiError::NotSupported)
    );
}

#[test]
fn reset_value_mapping_round_trips() {
    for value in 0..4u32 {
        if let Some(kind) = ResetKind::from_reset_type(value) {
            assert_eq!(kind.reset_type(), value);
        } else {
            assert_eq!(value, 3);
        }
        if let Some(reason) = ResetReason::from_reset_reason(value) {
            assert_eq!(reason.reset_reason(), value);
        } else {
            assert!(value >= 2);
        }
    }
}
