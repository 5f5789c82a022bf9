//! Standard SBI error codes (SBI v2.0 §3, "Standard SBI Errors") as a Rust enum.

use core::fmt;

use sbi_spec::binary::{
    RET_ERR_ALREADY_AVAILABLE, RET_ERR_ALREADY_STARTED, RET_ERR_ALREADY_STOPPED, RET_ERR_BAD_RANGE,
    RET_ERR_DENIED, RET_ERR_DENIED_LOCKED, RET_ERR_FAILED, RET_ERR_INVALID_ADDRESS,
    RET_ERR_INVALID_PARAM, RET_ERR_INVALID_STATE, RET_ERR_IO, RET_ERR_NOT_SUPPORTED,
    RET_ERR_NO_SHMEM, RET_ERR_TIMEOUT,
};

/// An SBI error, returned to the guest in `a0` as a negative `long`.
///
/// `SBI_SUCCESS` (0) is deliberately not a variant: success is expressed by
/// `Ok(..)` or by [`Outcome::Return`](crate::Outcome::Return) with `error == 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SbiError {
    /// `SBI_ERR_FAILED` (-1): the call failed for an unspecified reason.
    Failed,
    /// `SBI_ERR_NOT_SUPPORTED` (-2): unknown extension or function, or an unimplemented option.
    NotSupported,
    /// `SBI_ERR_INVALID_PARAM` (-3): a parameter is out of its defined range.
    InvalidParam,
    /// `SBI_ERR_DENIED` (-4): the operation is not allowed for this caller.
    Denied,
    /// `SBI_ERR_INVALID_ADDRESS` (-5): an address argument is not acceptable.
    InvalidAddress,
    /// `SBI_ERR_ALREADY_AVAILABLE` (-6): the resource (e.g. a hart) is already available.
    AlreadyAvailable,
    /// `SBI_ERR_ALREADY_STARTED` (-7): the resource is already started.
    AlreadyStarted,
    /// `SBI_ERR_ALREADY_STOPPED` (-8): the resource is already stopped.
    AlreadyStopped,
    /// `SBI_ERR_NO_SHMEM` (-9): the required shared memory is not set up.
    NoShmem,
    /// `SBI_ERR_INVALID_STATE` (-10): the resource is in the wrong state for this request.
    InvalidState,
    /// `SBI_ERR_BAD_RANGE` (-11): a range argument is invalid.
    BadRange,
    /// `SBI_ERR_TIMEOUT` (-12): the operation timed out.
    Timeout,
    /// `SBI_ERR_IO` (-13): an input/output error occurred.
    Io,
    /// `SBI_ERR_DENIED_LOCKED` (-14): denied because the resource is locked.
    DeniedLocked,
}

/// Converts one of `sbi-spec`'s two's-complement `usize` error constants to the signed value
/// the guest sees in `a0`.
const fn signed(code: usize) -> isize {
    // The constants are negative numbers stored in an unsigned register image; reinterpreting the
    // bits is exactly the intended conversion.
    code as isize
}

impl SbiError {
    /// Every error, in the order of its code (-1, -2, ...).
    pub const ALL: [SbiError; 14] = [
        SbiError::Failed,
        SbiError::NotSupported,
        SbiError::InvalidParam,
        SbiError::Denied,
        SbiError::InvalidAddress,
        SbiError::AlreadyAvailable,
        SbiError::AlreadyStarted,
        SbiError::AlreadyStopped,
        SbiError::NoShmem,
        SbiError::InvalidState,
        SbiError::BadRange,
        SbiError::Timeout,
        SbiError::Io,
        SbiError::DeniedLocked,
    ];

    /// The negative error code placed in `a0`.
    pub const fn code(self) -> isize {
        match self {
            SbiError::Failed => signed(RET_ERR_FAILED),
            SbiError::NotSupported => signed(RET_ERR_NOT_SUPPORTED),
            SbiError::InvalidParam => signed(RET_ERR_INVALID_PARAM),
            SbiError::Denied => signed(RET_ERR_DENIED),
            SbiError::InvalidAddress => signed(RET_ERR_INVALID_ADDRESS),
            SbiError::AlreadyAvailable => signed(RET_ERR_ALREADY_AVAILABLE),
            SbiError::AlreadyStarted => signed(RET_ERR_ALREADY_STARTED),
            SbiError::AlreadyStopped => signed(RET_ERR_ALREADY_STOPPED),
            SbiError::NoShmem => signed(RET_ERR_NO_SHMEM),
            SbiError::InvalidState => signed(RET_ERR_INVALID_STATE),
            SbiError::BadRange => signed(RET_ERR_BAD_RANGE),
            SbiError::Timeout => signed(RET_ERR_TIMEOUT),
            SbiError::Io => signed(RET_ERR_IO),
            SbiError::DeniedLocked => signed(RET_ERR_DENIED_LOCKED),
        }
    }

    /// The error with the given code, or `None` for 0 (success) and codes the spec does not define.
    pub fn from_code(code: isize) -> Option<SbiError> {
        SbiError::ALL.into_iter().find(|error| error.code() == code)
    }

    /// The specification's symbolic name, e.g. `SBI_ERR_INVALID_PARAM`.
    pub const fn spec_name(self) -> &'static str {
        match self {
            SbiError::Failed => "SBI_ERR_FAILED",
            SbiError::NotSupported => "SBI_ERR_NOT_SUPPORTED",
            SbiError::InvalidParam => "SBI_ERR_INVALID_PARAM",
            SbiError::Denied => "SBI_ERR_DENIED",
            SbiError::InvalidAddress => "SBI_ERR_INVALID_ADDRESS",
            SbiError::AlreadyAvailable => "SBI_ERR_ALREADY_AVAILABLE",
            SbiError::AlreadyStarted => "SBI_ERR_ALREADY_STARTED",
            SbiError::AlreadyStopped => "SBI_ERR_ALREADY_STOPPED",
            SbiError::NoShmem => "SBI_ERR_NO_SHMEM",
            SbiError::InvalidState => "SBI_ERR_INVALID_STATE",
            SbiError::BadRange => "SBI_ERR_BAD_RANGE",
            SbiError::Timeout => "SBI_ERR_TIMEOUT",
            SbiError::Io => "SBI_ERR_IO",
            SbiError::DeniedLocked => "SBI_ERR_DENIED_LOCKED",
        }
    }

    const fn description(self) -> &'static str {
        match self {
            SbiError::Failed => "the call failed for an unspecified reason",
            SbiError::NotSupported => "the extension or function is not supported",
            SbiError::InvalidParam => "a parameter is invalid",
            SbiError::Denied => "the operation is denied",
            SbiError::InvalidAddress => "an address parameter is invalid",
            SbiError::AlreadyAvailable => "the resource is already available",
            SbiError::AlreadyStarted => "the resource is already started",
            SbiError::AlreadyStopped => "the resource is already stopped",
            SbiError::NoShmem => "the required shared memory is not available",
            SbiError::InvalidState => "the resource is in an invalid state for this request",
            SbiError::BadRange => "a range parameter is invalid",
            SbiError::Timeout => "the operation timed out",
            SbiError::Io => "an input/output error occurred",
            SbiError::DeniedLocked => "the operation is denied because the resource is locked",
        }
    }
}

impl fmt::Display for SbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.spec_name(),
            self.code(),
            self.description()
        )
    }
}

impl core::error::Error for SbiError {}

#[cfg(test)]
mod tests {
    use super::SbiError;

    #[test]
    fn codes_match_the_specification_table() {
        let expected: [(SbiError, isize); 14] = [
            (SbiError::Failed, -1),
            (SbiError::NotSupported, -2),
            (SbiError::InvalidParam, -3),
            (SbiError::Denied, -4),
            (SbiError::InvalidAddress, -5),
            (SbiError::AlreadyAvailable, -6),
            (SbiError::AlreadyStarted, -7),
            (SbiError::AlreadyStopped, -8),
            (SbiError::NoShmem, -9),
            (SbiError::InvalidState, -10),
            (SbiError::BadRange, -11),
            (SbiError::Timeout, -12),
            (SbiError::Io, -13),
            (SbiError::DeniedLocked, -14),
        ];
        for (error, code) in expected {
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(SbiError::from_code(code), Some(error));
        }
    }

    #[test]
    fn success_and_undefined_codes_are_not_errors() {
        assert_eq!(SbiError::from_code(0), None);
        assert_eq!(SbiError::from_code(1), None);
        assert_eq!(SbiError::from_code(-15), None);
        assert_eq!(SbiError::from_code(isize::MIN), None);
    }

    #[test]
    fn display_names_the_error_and_its_code() {
        let text = SbiError::InvalidParam.to_string();
        assert_eq!(text, "SBI_ERR_INVALID_PARAM (-3): a parameter is invalid");
        assert!(SbiError::DeniedLocked.to_string().contains("(-14)"));
    }
}
