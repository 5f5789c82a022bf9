//! SRST extension (EID "SRST"): `sbi_system_reset` and its type and reason values.

use sbi_spec::srst::{
    RESET_REASON_NO_REASON, RESET_REASON_SYSTEM_FAILURE, RESET_TYPE_COLD_REBOOT,
    RESET_TYPE_SHUTDOWN, RESET_TYPE_WARM_REBOOT, SYSTEM_RESET,
};

use crate::{Call, Outcome, SbiError};

/// The kind of capsule reset requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetKind {
    /// Power the capsule off (type 0).
    Shutdown,
    /// Restart the capsule as from power-on (type 1).
    ColdReboot,
    /// Restart the capsule's processors, keeping the rest of its state where possible (type 2).
    WarmReboot,
}

impl ResetKind {
    /// The kind for an SRST `reset_type`, or `None` for reserved and vendor-specific values,
    /// none of which are implemented.
    pub const fn from_reset_type(reset_type: u32) -> Option<ResetKind> {
        match reset_type {
            RESET_TYPE_SHUTDOWN => Some(ResetKind::Shutdown),
            RESET_TYPE_COLD_REBOOT => Some(ResetKind::ColdReboot),
            RESET_TYPE_WARM_REBOOT => Some(ResetKind::WarmReboot),
            _ => None,
        }
    }

    /// The SRST `reset_type` value.
    pub const fn reset_type(self) -> u32 {
        match self {
            ResetKind::Shutdown => RESET_TYPE_SHUTDOWN,
            ResetKind::ColdReboot => RESET_TYPE_COLD_REBOOT,
            ResetKind::WarmReboot => RESET_TYPE_WARM_REBOOT,
        }
    }
}

/// Why the guest requested a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetReason {
    /// No reason given (reason 0).
    NoReason,
    /// The guest detected a system failure (reason 1).
    SystemFailure,
}

impl ResetReason {
    /// The reason for an SRST `reset_reason`, or `None` for reserved, SBI-implementation-specific
    /// and vendor-specific values, none of which are implemented.
    pub const fn from_reset_reason(reset_reason: u32) -> Option<ResetReason> {
        match reset_reason {
            RESET_REASON_NO_REASON => Some(ResetReason::NoReason),
            RESET_REASON_SYSTEM_FAILURE => Some(ResetReason::SystemFailure),
            _ => None,
        }
    }

    /// The SRST `reset_reason` value.
    pub const fn reset_reason(self) -> u32 {
        match self {
            ResetReason::NoReason => RESET_REASON_NO_REASON,
            ResetReason::SystemFailure => RESET_REASON_SYSTEM_FAILURE,
        }
    }
}

pub(crate) fn handle(call: &Call) -> Outcome {
    match call.fid {
        SYSTEM_RESET => {
            // Both parameters are `uint32_t`: the spec has the callee use only the low 32 bits.
            let reset_type = call.args[0] as u32;
            let reset_reason = call.args[1] as u32;
            // The spec answers SBI_ERR_INVALID_PARAM both for reserved values and for
            // platform-specific values the implementation does not provide.
            match (
                ResetKind::from_reset_type(reset_type),
                ResetReason::from_reset_reason(reset_reason),
            ) {
                (Some(kind), Some(reason)) => Outcome::Reset { kind, reason },
                _ => Outcome::failure(SbiError::InvalidParam),
            }
        }
        _ => Outcome::failure(SbiError::NotSupported),
    }
}
