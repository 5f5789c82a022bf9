//! SBI return values as the guest sees them, with the spec's error names for messages.

use core::fmt;

/// `sbi_get_impl_id` of Keel: "KEEL" in ASCII.
pub const KEEL_IMPLEMENTATION_ID: usize = 0x4B45_454C;

/// `SBI_SUCCESS`.
pub const SUCCESS: isize = 0;
/// `SBI_ERR_FAILED`.
pub const ERR_FAILED: isize = -1;
/// `SBI_ERR_NOT_SUPPORTED`.
pub const ERR_NOT_SUPPORTED: isize = -2;
/// `SBI_ERR_INVALID_PARAM`.
pub const ERR_INVALID_PARAM: isize = -3;
/// `SBI_ERR_DENIED`.
pub const ERR_DENIED: isize = -4;
/// `SBI_ERR_INVALID_ADDRESS`.
pub const ERR_INVALID_ADDRESS: isize = -5;
/// `SBI_ERR_ALREADY_AVAILABLE`.
pub const ERR_ALREADY_AVAILABLE: isize = -6;
/// `SBI_ERR_ALREADY_STARTED`.
pub const ERR_ALREADY_STARTED: isize = -7;
/// `SBI_ERR_ALREADY_STOPPED`.
pub const ERR_ALREADY_STOPPED: isize = -8;

/// The spec's name for an SBI error code, or `None` for codes it does not define.
pub const fn error_name(code: isize) -> Option<&'static str> {
    match code {
        SUCCESS => Some("SBI_SUCCESS"),
        ERR_FAILED => Some("SBI_ERR_FAILED"),
        ERR_NOT_SUPPORTED => Some("SBI_ERR_NOT_SUPPORTED"),
        ERR_INVALID_PARAM => Some("SBI_ERR_INVALID_PARAM"),
        ERR_DENIED => Some("SBI_ERR_DENIED"),
        ERR_INVALID_ADDRESS => Some("SBI_ERR_INVALID_ADDRESS"),
        ERR_ALREADY_AVAILABLE => Some("SBI_ERR_ALREADY_AVAILABLE"),
        ERR_ALREADY_STARTED => Some("SBI_ERR_ALREADY_STARTED"),
        ERR_ALREADY_STOPPED => Some("SBI_ERR_ALREADY_STOPPED"),
        -9 => Some("SBI_ERR_NO_SHMEM"),
        -10 => Some("SBI_ERR_INVALID_STATE"),
        -11 => Some("SBI_ERR_BAD_RANGE"),
        -12 => Some("SBI_ERR_TIMEOUT"),
        -13 => Some("SBI_ERR_IO"),
        _ => None,
    }
}

/// An SBI error code written with its name, e.g. `SBI_ERR_NOT_SUPPORTED (-2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub isize);

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match error_name(self.0) {
            Some(name) => write!(formatter, "{name} ({})", self.0),
            None => write!(formatter, "undefined error code {}", self.0),
        }
    }
}

/// What an SBI v0.2+ call returned: `a0` (error) and `a1` (value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbiResult {
    pub error: isize,
    pub value: usize,
}

impl SbiResult {
    /// Whether `a0` is `SBI_SUCCESS`.
    pub const fn is_success(&self) -> bool {
        self.error == SUCCESS
    }
}

impl fmt::Display for SbiResult {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "error {}, value {:#x}",
            ErrorCode(self.error),
            self.value
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_name_their_error() {
        let result = SbiResult {
            error: -2,
            value: 0,
        };
        assert_eq!(
            result.to_string(),
            "error SBI_ERR_NOT_SUPPORTED (-2), value 0x0"
        );
        assert!(!result.is_success());
        let result = SbiResult {
            error: 0,
            value: 0x4b45454c,
        };
        assert_eq!(
            result.to_string(),
            "error SBI_SUCCESS (0), value 0x4b45454c"
        );
        assert!(result.is_success());
    }

    #[test]
    fn undefined_codes_are_called_that() {
        assert_eq!(ErrorCode(-99).to_string(), "undefined error code -99");
        assert_eq!(ErrorCode(5).to_string(), "undefined error code 5");
        assert_eq!(
            ErrorCode(ERR_ALREADY_AVAILABLE).to_string(),
            "SBI_ERR_ALREADY_AVAILABLE (-6)"
        );
    }

    #[test]
    fn keel_id_spells_keel() {
        assert_eq!(KEEL_IMPLEMENTATION_ID.to_be_bytes()[4..], *b"KEEL");
    }
}
