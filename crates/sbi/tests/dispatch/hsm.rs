//! HSM extension: hart start, stop, status and suspend.

use keel_sbi::{HartState, HartSuspend, Outcome, SbiError};

use crate::mock::{Event, MockEnvironment};
use crate::{call, err, ok};

const HSM: usize = 0x0048_534D;

#[test]
fn hart_start_reaches_the_environment() {
    let mut environment = MockEnvironment::new(4);
    assert_eq!(
        call(&mut environment, HSM, 0, &[2, 0x8020_0000, 0xabcd]),
        ok(0)
    );
    assert_eq!(
        environment.events,
        vec![Event::HartStart {
            vcpu: 2,
            start_addr: 0x8020_0000,
            opaque: 0xabcd
        }]
    );
}

#[test]
fn hart_start_rejects_ids_the_capsule_does_not_have() {
    let mut environment = MockEnvironment::new(4);
    for hartid in [4, 64, usize::MAX] {
        assert_eq!(
            call(&mut environment, HSM, 0, &[hartid, 0x8020_0000, 0]),
            err(SbiError::InvalidParam)
        );
    }
    assert!(environment.events.is_empty());
}

#[test]
fn hart_start_of_the_caller_is_already_available() {
    let mut environment = MockEnvironment::new(4);
    environment.current_vcpu = 1;
    assert_eq!(
        call(&mut environment, HSM, 0, &[1, 0x8020_0000, 0]),
        err(SbiError::AlreadyAvailable)
    );
    assert!(environment.events.is_empty());
}

#[test]
fn hart_start_errors_from_the_environment_reach_the_guest() {
    let mut environment = MockEnvironment::new(2);
    environment.hart_start_result = Err(SbiError::AlreadyAvailable);
    assert_eq!(
        call(&mut environment, HSM, 0, &[1, 0x8020_0000, 0]),
        err(SbiError::AlreadyAvailable)
    );
    environment.hart_start_result = Err(SbiError::InvalidAddress);
    assert_eq!(
        call(&mut environment, HSM, 0, &[1, 0x10, 0]),
        err(SbiError::InvalidAddress)
    );
    assert_eq!(environment.events.len(), 2);
}

#[test]
fn hart_stop_stops_the_caller() {
    let mut environment = MockEnvironment::new(2);
    assert_eq!(call(&mut environment, HSM, 1, &[]), Outcome::HartStop);
    assert!(environment.events.is_empty());
}

#[test]
fn hart_get_status_reports_each_state_id() {
    let states = [
        (HartState::Started, 0),
        (HartState::Stopped, 1),
        (HartState::StartPending, 2),
        (HartState::StopPending, 3),
        (HartState::Suspended, 4),
        (HartState::SuspendPending, 5),
        (HartState::ResumePending, 6),
    ];
    let mut environment = MockEnvironment::new(states.len());
    for (vcpu, (state, _)) in states.iter().enumerate() {
        environment.states[vcpu] = *state;
    }
    for (vcpu, (state, id)) in states.into_iter().enumerate() {
        assert_eq!(state.id(), id);
        assert_eq!(call(&mut environment, HSM, 2, &[vcpu]), ok(id));
    }
}

#[test]
fn hart_get_status_rejects_ids_the_capsule_does_not_have() {
    let mut environment = MockEnvironment::new(2);
    assert_eq!(
        call(&mut environment, HSM, 2, &[2]),
        err(SbiError::InvalidParam)
    );
    assert_eq!(
        call(&mut environment, HSM, 2, &[usize::MAX]),
        err(SbiError::InvalidParam)
    );
}

#[test]
fn retentive_suspend() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, HSM, 3, &[0, 0x8020_0000, 7]),
        Outcome::Suspend(HartSuspend::Retentive)
    );
    // `suspend_type` is 32 bits wide: upper register bits are not part of it.
    assert_eq!(
        call(&mut environment, HSM, 3, &[0xffff_ffff_0000_0000, 0, 0]),
        Outcome::Suspend(HartSuspend::Retentive)
    );
}

#[test]
fn non_retentive_suspend() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, HSM, 3, &[0x8000_0000, 0x8020_1000, 0x55]),
        Outcome::Suspend(HartSuspend::NonRetentive {
            resume_addr: 0x8020_1000,
            opaque: 0x55
        })
    );
    environment.resume_address_result = Err(SbiError::InvalidAddress);
    assert_eq!(
        call(&mut environment, HSM, 3, &[0x8000_0000, 0x10, 0x55]),
        err(SbiError::InvalidAddress)
    );
}

#[test]
fn reserved_and_platform_suspend_types_are_invalid() {
    let mut environment = MockEnvironment::new(1);
    for suspend_type in [
        0x0000_0001,
        0x0FFF_FFFF,
        0x1000_0000,
        0x7FFF_FFFF,
        0x8000_0001,
        0x8FFF_FFFF,
        0x9000_0000,
        0xFFFF_FFFF,
    ] {
        assert_eq!(
            call(&mut environment, HSM, 3, &[suspend_type, 0x8020_0000, 0]),
            err(SbiError::InvalidParam),
            "{suspend_type:#x}"
        );
    }
}

#[test]
fn unknown_hsm_functions_are_not_supported() {
    let mut environment = MockEnvironment::new(2);
    for fid in [4, 5, usize::MAX] {
        assert_eq!(
            call(&mut environment, HSM, fid, &[1]),
            err(SbiError::NotSupported)
        );
    }
}
