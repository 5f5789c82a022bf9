//! Legacy v0.1 calls: a0-only results, hart-mask pointers, function ID ignored.

use keel_sbi::{dispatch, Call, FenceRange, HartSet, Outcome, ResetKind, ResetReason, SbiError};

use crate::err;
use crate::mock::{Event, MockEnvironment};

const SET_TIMER: usize = 0x00;
const CONSOLE_PUTCHAR: usize = 0x01;
const CONSOLE_GETCHAR: usize = 0x02;
const CLEAR_IPI: usize = 0x03;
const SEND_IPI: usize = 0x04;
const REMOTE_FENCE_I: usize = 0x05;
const REMOTE_SFENCE_VMA: usize = 0x06;
const REMOTE_SFENCE_VMA_ASID: usize = 0x07;
const SHUTDOWN: usize = 0x08;

/// Where the mock guest keeps its hart-mask word.
const MASK_ADDRESS: usize = 0xffff_ffc0_0010_2000;

/// Dispatches a legacy call; `a6` holds garbage since legacy calls must ignore it.
fn legacy(environment: &mut MockEnvironment, eid: usize, args: &[usize]) -> Outcome {
    let mut registers = [0; 6];
    registers[..args.len()].copy_from_slice(args);
    dispatch(&Call::new(eid, 0x5a5a_5a5a, registers), environment)
}

#[test]
fn set_timer() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        legacy(&mut environment, SET_TIMER, &[0x1_0000_0000]),
        Outcome::Legacy(0)
    );
    assert_eq!(environment.events, vec![Event::SetTimer(0x1_0000_0000)]);
}

#[test]
fn console_putchar_writes_the_low_byte() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        legacy(&mut environment, CONSOLE_PUTCHAR, &[0x141]),
        Outcome::Legacy(0)
    );
    assert_eq!(environment.events, vec![Event::ConsoleWriteByte(0x41)]);
}

#[test]
fn console_getchar_returns_the_byte_or_minus_one() {
    let mut environment = MockEnvironment::new(1);
    environment.input.extend([b'k', 0xff]);
    assert_eq!(
        legacy(&mut environment, CONSOLE_GETCHAR, &[]),
        Outcome::Legacy(b'k' as isize)
    );
    // 0xff is a byte, not the "nothing available" marker.
    assert_eq!(
        legacy(&mut environment, CONSOLE_GETCHAR, &[]),
        Outcome::Legacy(0xff)
    );
    assert_eq!(
        legacy(&mut environment, CONSOLE_GETCHAR, &[]),
        Outcome::Legacy(-1)
    );
}

#[test]
fn clear_ipi_reports_whether_one_was_pending() {
    let mut environment = MockEnvironment::new(1);
    environment.ipi_pending = true;
    assert_eq!(legacy(&mut environment, CLEAR_IPI, &[]), Outcome::Legacy(1));
    assert_eq!(legacy(&mut environment, CLEAR_IPI, &[]), Outcome::Legacy(0));
    assert_eq!(environment.events, vec![Event::ClearIpi, Event::ClearIpi]);
}

#[test]
fn send_ipi_reads_the_mask_through_the_pointer() {
    let mut environment = MockEnvironment::new(4);
    environment.guest_memory.insert(MASK_ADDRESS, 0b1010);
    assert_eq!(
        legacy(&mut environment, SEND_IPI, &[MASK_ADDRESS]),
        Outcome::Legacy(0)
    );
    assert_eq!(
        environment.events,
        vec![
            Event::ReadGuestVirtual(MASK_ADDRESS),
            Event::SendIpi(HartSet::from_bits(0b1010))
        ]
    );
}

#[test]
fn null_mask_pointer_means_all_harts() {
    let mut environment = MockEnvironment::new(3);
    assert_eq!(legacy(&mut environment, SEND_IPI, &[0]), Outcome::Legacy(0));
    assert_eq!(
        environment.events,
        vec![Event::SendIpi(HartSet::from_bits(0b111))]
    );
}

#[test]
fn unreadable_mask_is_an_error_in_a0() {
    let mut environment = MockEnvironment::new(2);
    for eid in [
        SEND_IPI,
        REMOTE_FENCE_I,
        REMOTE_SFENCE_VMA,
        REMOTE_SFENCE_VMA_ASID,
    ] {
        environment.events.clear();
        assert_eq!(
            legacy(&mut environment, eid, &[0x1000, 0, 0, 0]),
            Outcome::Legacy(SbiError::InvalidAddress.code()),
            "eid {eid}"
        );
        assert_eq!(environment.events, vec![Event::ReadGuestVirtual(0x1000)]);
    }
}

#[test]
fn mask_bits_beyond_the_vcpu_count_are_invalid() {
    let mut environment = MockEnvironment::new(2);
    environment.guest_memory.insert(MASK_ADDRESS, 0b100);
    assert_eq!(
        legacy(&mut environment, SEND_IPI, &[MASK_ADDRESS]),
        Outcome::Legacy(SbiError::InvalidParam.code())
    );
    assert_eq!(
        environment.events,
        vec![Event::ReadGuestVirtual(MASK_ADDRESS)]
    );
}

#[test]
fn zero_mask_sends_nothing() {
    let mut environment = MockEnvironment::new(2);
    environment.guest_memory.insert(MASK_ADDRESS, 0);
    assert_eq!(
        legacy(&mut environment, SEND_IPI, &[MASK_ADDRESS]),
        Outcome::Legacy(0)
    );
    assert_eq!(
        environment.events,
        vec![Event::ReadGuestVirtual(MASK_ADDRESS)]
    );
}

#[test]
fn remote_fences() {
    let mut environment = MockEnvironment::new(2);
    environment.guest_memory.insert(MASK_ADDRESS, 0b10);
    assert_eq!(
        legacy(&mut environment, REMOTE_FENCE_I, &[MASK_ADDRESS]),
        Outcome::Legacy(0)
    );
    assert_eq!(
        legacy(
            &mut environment,
            REMOTE_SFENCE_VMA,
            &[MASK_ADDRESS, 0x4000, 0x1000]
        ),
        Outcome::Legacy(0)
    );
    assert_eq!(
        legacy(&mut environment, REMOTE_SFENCE_VMA, &[0, 0, 0]),
        Outcome::Legacy(0)
    );
    assert_eq!(
        legacy(
            &mut environment,
            REMOTE_SFENCE_VMA_ASID,
            &[MASK_ADDRESS, 0x4000, usize::MAX, 9]
        ),
        Outcome::Legacy(0)
    );
    let target = HartSet::from_bits(0b10);
    assert_eq!(
        environment.events,
        vec![
            Event::ReadGuestVirtual(MASK_ADDRESS),
            Event::RemoteFenceI(target),
            Event::ReadGuestVirtual(MASK_ADDRESS),
            Event::RemoteSfenceVma {
                targets: target,
                range: FenceRange::Range {
                    start: 0x4000,
                    size: 0x1000
                },
                asid: None
            },
            Event::RemoteSfenceVma {
                targets: HartSet::from_bits(0b11),
                range: FenceRange::All,
                asid: None
            },
            Event::ReadGuestVirtual(MASK_ADDRESS),
            Event::RemoteSfenceVma {
                targets: target,
                range: FenceRange::All,
                asid: Some(9)
            },
        ]
    );
}

#[test]
fn shutdown_resets_the_capsule() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        legacy(&mut environment, SHUTDOWN, &[]),
        Outcome::Reset {
            kind: ResetKind::Shutdown,
            reason: ResetReason::NoReason
        }
    );
}

#[test]
fn every_legacy_call_returns_in_a0_only() {
    for eid in 0x00..=0x07 {
        let mut environment = MockEnvironment::new(2);
        assert!(
            matches!(
                legacy(&mut environment, eid, &[0, 0, 0, 0]),
                Outcome::Legacy(_)
            ),
            "eid {eid}"
        );
    }
}

#[test]
fn reserved_legacy_eids_are_not_supported() {
    let mut environment = MockEnvironment::new(1);
    for eid in 0x09..=0x0F {
        assert_eq!(
            legacy(&mut environment, eid, &[]),
            err(SbiError::NotSupported)
        );
    }
    assert!(environment.events.is_empty());
}
