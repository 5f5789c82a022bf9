//! BASE extension (EID 0x10): versions, implementation identity and extension probing.

use sbi_spec::base::{
    GET_MARCHID, GET_MIMPID, GET_MVENDORID, GET_SBI_IMPL_ID, GET_SBI_IMPL_VERSION,
    GET_SBI_SPEC_VERSION, PROBE_EXTENSION, UNAVAILABLE_EXTENSION,
};

use crate::{Call, Environment, Extension, Outcome, SbiError};

/// Major version of the SBI specification implemented.
const SPEC_VERSION_MAJOR: usize = 2;
/// Minor version of the SBI specification implemented.
const SPEC_VERSION_MINOR: usize = 0;

/// `sbi_get_spec_version` result: SBI v2.0, minor in bits 0..24, major in bits 24..31.
pub const SPEC_VERSION: usize = (SPEC_VERSION_MAJOR << 24) | SPEC_VERSION_MINOR;

/// `sbi_get_impl_id` result: "KEEL" in ASCII.
///
/// Registered implementation IDs are small integers (0 = BBL, 1 = OpenSBI, ...); an
/// ASCII tag this large cannot collide with any of them.
pub const IMPLEMENTATION_ID: usize = u32::from_be_bytes(*b"KEEL") as usize;

/// `sbi_get_impl_version` result: this crate's version packed as
/// `major << 16 | minor << 8 | patch`.
pub const IMPLEMENTATION_VERSION: usize =
    (VERSION_MAJOR << 16) | (VERSION_MINOR << 8) | VERSION_PATCH;

const VERSION_MAJOR: usize = parse_decimal(env!("CARGO_PKG_VERSION_MAJOR"));
const VERSION_MINOR: usize = parse_decimal(env!("CARGO_PKG_VERSION_MINOR"));
const VERSION_PATCH: usize = parse_decimal(env!("CARGO_PKG_VERSION_PATCH"));

// Each component must fit its 8-bit field; a larger crate version would need a different
// packing, so refuse to build rather than report a wrong version to guests.
const _: () = assert!(VERSION_MINOR < 256 && VERSION_PATCH < 256 && VERSION_MAJOR < 256);

/// Value `sbi_probe_extension` returns for an available extension.
const AVAILABLE_EXTENSION: usize = 1;

/// Parses a decimal version component at compile time. Only ever evaluated in constants, so a
/// malformed crate version stops the build instead of failing at run time.
const fn parse_decimal(text: &str) -> usize {
    let bytes = text.as_bytes();
    assert!(!bytes.is_empty(), "empty crate version component");
    let mut value: usize = 0;
    let mut index = 0;
    while index < bytes.len() {
        let digit = bytes[index];
        assert!(
            digit.is_ascii_digit(),
            "crate version component is not decimal"
        );
        value = value * 10 + (digit - b'0') as usize;
        index += 1;
    }
    value
}

/// `sbi_probe_extension(eid)`: 1 for the implemented extensions, 0 for everything else.
pub const fn probe_extension(eid: usize) -> usize {
    match Extension::from_eid(eid) {
        Some(_) => AVAILABLE_EXTENSION,
        None => UNAVAILABLE_EXTENSION,
    }
}

pub(crate) fn handle(call: &Call, environment: &mut impl Environment) -> Outcome {
    match call.fid {
        GET_SBI_SPEC_VERSION => Outcome::success(SPEC_VERSION),
        GET_SBI_IMPL_ID => Outcome::success(IMPLEMENTATION_ID),
        GET_SBI_IMPL_VERSION => Outcome::success(IMPLEMENTATION_VERSION),
        PROBE_EXTENSION => Outcome::success(probe_extension(call.args[0])),
        GET_MVENDORID => Outcome::success(environment.machine_ids().mvendorid),
        GET_MARCHID => Outcome::success(environment.machine_ids().marchid),
        GET_MIMPID => Outcome::success(environment.machine_ids().mimpid),
        _ => Outcome::failure(SbiError::NotSupported),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_decimal, IMPLEMENTATION_ID, IMPLEMENTATION_VERSION, SPEC_VERSION};

    #[test]
    fn constants_have_the_documented_encoding() {
        assert_eq!(SPEC_VERSION, 0x0200_0000);
        assert_eq!(IMPLEMENTATION_ID, 0x4B45_454C);
        let expected = env!("CARGO_PKG_VERSION")
            .split(['.', '-', '+'])
            .take(3)
            .map(|part| part.parse::<usize>().unwrap())
            .fold(0, |packed, part| (packed << 8) | part);
        assert_eq!(IMPLEMENTATION_VERSION, expected);
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal("0"), 0);
        assert_eq!(parse_decimal("17"), 17);
        assert_eq!(parse_decimal("255"), 255);
    }
}
