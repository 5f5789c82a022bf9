//! DBCN extension: console write, read and write-byte, including address splitting.

use keel_sbi::SbiError;

use crate::mock::{Event, MockEnvironment};
use crate::{call, err, ok};

const DBCN: usize = 0x4442_434E;
const WRITE: usize = 0;
const READ: usize = 1;
const WRITE_BYTE: usize = 2;

#[test]
fn console_write_passes_the_joined_address() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, DBCN, WRITE, &[13, 0x8020_3000, 0]),
        ok(13)
    );
    assert_eq!(
        environment.events,
        vec![Event::ConsoleWrite {
            address: 0x8020_3000,
            len: 13
        }]
    );
}

#[test]
fn console_read_passes_the_joined_address() {
    let mut environment = MockEnvironment::new(1);
    environment.console_result = Ok(3);
    assert_eq!(
        call(&mut environment, DBCN, READ, &[64, 0x8100_0000, 0]),
        ok(3)
    );
    assert_eq!(
        environment.events,
        vec![Event::ConsoleRead {
            address: 0x8100_0000,
            len: 64
        }]
    );
}

#[test]
fn partial_transfers_report_the_environment_count() {
    let mut environment = MockEnvironment::new(1);
    environment.console_result = Ok(2);
    assert_eq!(
        call(&mut environment, DBCN, WRITE, &[10, 0x8020_0000, 0]),
        ok(2)
    );
    environment.console_result = Ok(0);
    assert_eq!(
        call(&mut environment, DBCN, READ, &[10, 0x8020_0000, 0]),
        ok(0)
    );
}

#[test]
fn reported_count_never_exceeds_the_request() {
    let mut environment = MockEnvironment::new(1);
    environment.console_result = Ok(1000);
    assert_eq!(
        call(&mut environment, DBCN, WRITE, &[10, 0x8020_0000, 0]),
        ok(10)
    );
}

#[test]
fn a_nonzero_high_address_half_is_invalid_on_rv64() {
    let mut environment = MockEnvironment::new(1);
    for fid in [WRITE, READ] {
        for high in [1, 0x8000_0000, usize::MAX] {
            assert_eq!(
                call(&mut environment, DBCN, fid, &[4, 0x8020_0000, high]),
                err(SbiError::InvalidParam)
            );
        }
    }
    assert!(environment.events.is_empty());
}

#[test]
fn buffers_wrapping_past_the_address_space_are_invalid() {
    let mut environment = MockEnvironment::new(1);
    for fid in [WRITE, READ] {
        assert_eq!(
            call(&mut environment, DBCN, fid, &[3, usize::MAX - 1, 0]),
            err(SbiError::InvalidParam)
        );
        assert_eq!(
            call(&mut environment, DBCN, fid, &[usize::MAX, 2, 0]),
            err(SbiError::InvalidParam)
        );
    }
    assert!(environment.events.is_empty());
    // A buffer whose last byte is the last address is accepted.
    assert_eq!(
        call(&mut environment, DBCN, WRITE, &[2, usize::MAX - 1, 0]),
        ok(2)
    );
}

#[test]
fn zero_length_transfers_do_nothing() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, DBCN, WRITE, &[0, 0x8020_0000, 0]),
        ok(0)
    );
    assert_eq!(call(&mut environment, DBCN, READ, &[0, 0, 0]), ok(0));
    assert!(environment.events.is_empty());
    // The address halves are still validated.
    assert_eq!(
        call(&mut environment, DBCN, WRITE, &[0, 0, 1]),
        err(SbiError::InvalidParam)
    );
}

#[test]
fn environment_errors_reach_the_guest() {
    let mut environment = MockEnvironment::new(1);
    environment.console_result = Err(SbiError::Denied);
    assert_eq!(
        call(&mut environment, DBCN, WRITE, &[4, 0x8020_0000, 0]),
        err(SbiError::Denied)
    );
    environment.console_result = Err(SbiError::InvalidParam);
    assert_eq!(
        call(&mut environment, DBCN, READ, &[4, 0x10, 0]),
        err(SbiError::InvalidParam)
    );
}

#[test]
fn console_write_byte_uses_the_low_byte() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, DBCN, WRITE_BYTE, &[b'K' as usize]),
        ok(0)
    );
    assert_eq!(
        call(&mut environment, DBCN, WRITE_BYTE, &[0x1234_5641]),
        ok(0)
    );
    assert_eq!(
        environment.events,
        vec![Event::ConsoleWriteByte(b'K'), Event::ConsoleWriteByte(0x41)]
    );
}

#[test]
fn unknown_dbcn_functions_are_not_supported() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, DBCN, 3, &[1, 0x8020_0000, 0]),
        err(SbiError::NotSupported)
    );
    assert!(environment.events.is_empty());
}
