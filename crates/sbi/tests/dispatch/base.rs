//! BASE extension: versions, identity, probing.

use keel_sbi::{probe_extension, SbiError, IMPLEMENTATION_ID, IMPLEMENTATION_VERSION};

use crate::mock::MockEnvironment;
use crate::{call, err, ok};

const BASE: usize = 0x10;

#[test]
fn spec_version_is_2_0() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(call(&mut environment, BASE, 0, &[]), ok(0x0200_0000));
}

#[test]
fn implementation_id_and_version() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(call(&mut environment, BASE, 1, &[]), ok(0x4B45_454C));
    assert_eq!(IMPLEMENTATION_ID, 0x4B45_454C);
    assert_eq!(&(IMPLEMENTATION_ID as u32).to_be_bytes(), b"KEEL");
    assert_eq!(
        call(&mut environment, BASE, 2, &[]),
        ok(IMPLEMENTATION_VERSION)
    );
    // Major goes in bits 16 and up, minor in bits 8..16, patch in bits 0..8.
    let major = env!("CARGO_PKG_VERSION_MAJOR").parse::<usize>().unwrap();
    let minor = env!("CARGO_PKG_VERSION_MINOR").parse::<usize>().unwrap();
    let patch = env!("CARGO_PKG_VERSION_PATCH").parse::<usize>().unwrap();
    assert_eq!(IMPLEMENTATION_VERSION, major << 16 | minor << 8 | patch);
}

#[test]
fn machine_ids_come_from_the_environment() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(call(&mut environment, BASE, 4, &[]), ok(0x489));
    assert_eq!(
        call(&mut environment, BASE, 5, &[]),
        ok(0x8000_0000_0000_0007)
    );
    assert_eq!(call(&mut environment, BASE, 6, &[]), ok(0x2021_0427));
    assert!(environment.events.is_empty());
}

#[test]
fn probe_reports_exactly_the_implemented_extensions() {
    let mut environment = MockEnvironment::new(1);
    let implemented = [
        0x10,        // BASE
        0x5449_4D45, // TIME
        0x0073_5049, // sPI
        0x5246_4E43, // RFNC
        0x0048_534D, // HSM
        0x5352_5354, // SRST
        0x4442_434E, // DBCN
    ];
    for eid in implemented.into_iter().chain(0x00..=0x08) {
        assert_eq!(call(&mut environment, BASE, 3, &[eid]), ok(1), "{eid:#x}");
        assert_eq!(probe_extension(eid), 1);
    }
    let absent = [
        0x09,        // legacy reserved
        0x0F,        // legacy reserved
        0x11,        // just past BASE
        0x0050_4D55, // PMU
        0x5355_5350, // SUSP
        0x4350_5043, // CPPC
        0x4E41_434C, // NACL
        0x0053_5441, // STA
        0x0053_5345, // SSE
        0x4657_4654, // FWFT
        0x4442_5452, // DBTR
        0x4D50_5859, // MPXY
        0x0800_0000, // experimental
        0x0900_0000, // vendor
        0x0A00_0000, // firmware
        0x1_0000_0010,
        usize::MAX,
    ];
    for eid in absent.into_iter().chain(0x4B45_4C00..=0x4B45_4CFF) {
        assert_eq!(call(&mut environment, BASE, 3, &[eid]), ok(0), "{eid:#x}");
    }
}

#[test]
fn unknown_base_functions_are_not_supported() {
    let mut environment = MockEnvironment::new(1);
    for fid in [7, 8, 0x100, usize::MAX] {
        assert_eq!(
            call(&mut environment, BASE, fid, &[]),
            err(SbiError::NotSupported)
        );
    }
}

#[test]
fn unknown_extensions_are_not_supported() {
    let mut environment = MockEnvironment::new(2);
    for eid in [
        0x09,
        0x0F,
        0x11,
        0x0050_4D55,
        0x5355_5350,
        0x4350_5043,
        0x4B45_4C00,
        usize::MAX,
    ] {
        for fid in [0, 1, 3] {
            assert_eq!(
                call(&mut environment, eid, fid, &[1, 2, 3]),
                err(SbiError::NotSupported),
                "{eid:#x}/{fid}"
            );
        }
    }
    assert!(environment.events.is_empty());
}
