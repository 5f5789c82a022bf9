//! SBI v2.0 call dispatch for guests: decode an `ecall`, validate it, and drive an `Environment`.
//!
//! A guest's `ecall` from VS-mode traps to the hypervisor, which packs `a0..a7` into a [`Call`]
//! and passes it to [`dispatch`] together with an [`Environment`] for the calling vCPU. The
//! crate decides what the call means; the hypervisor applies the returned [`Outcome`] (write
//! `a0`/`a1`, advance `sepc`, stop or suspend the vCPU, reset the capsule). Side effects on
//! other vCPUs (IPIs, remote fences, hart start) go through the environment.
//!
//! Implemented extensions, and exactly the ones `sbi_probe_extension` reports as available:
//! BASE, TIME, IPI, RFENCE (without the `HFENCE` functions, since guests have no H extension),
//! HSM, SRST, DBCN, and the legacy v0.1 calls (EIDs 0x00..=0x08). Every other EID or FID
//! returns `SBI_ERR_NOT_SUPPORTED`.
#![cfg_attr(not(test), no_std)]

mod base;
mod dbcn;
mod environment;
mod error;
mod extension;
mod hart_set;
mod hsm;
mod ipi;
mod legacy;
mod rfence;
mod srst;
mod time;

pub use base::{probe_extension, IMPLEMENTATION_ID, IMPLEMENTATION_VERSION, SPEC_VERSION};
pub use environment::{Environment, FenceRange, HartState, MachineIds};
pub use error::SbiError;
pub use extension::{extension_name, CallStats, Extension};
pub use hart_set::{HartSet, HartSetIter};
pub use srst::{ResetKind, ResetReason};

/// One SBI call as read from the calling vCPU's registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Extension ID, from `a7`.
    pub eid: usize,
    /// Function ID, from `a6` (ignored by the legacy extensions).
    pub fid: usize,
    /// Arguments `a0..a5`.
    pub args: [usize; 6],
}

impl Call {
    /// A call with the given extension, function and arguments.
    pub const fn new(eid: usize, fid: usize, args: [usize; 6]) -> Call {
        Call { eid, fid, args }
    }

    /// The call described by the argument registers `a0..a7`, in that order.
    pub const fn from_registers(registers: [usize; 8]) -> Call {
        let [a0, a1, a2, a3, a4, a5, a6, a7] = registers;
        Call {
            eid: a7,
            fid: a6,
            args: [a0, a1, a2, a3, a4, a5],
        }
    }
}

/// The suspend type a valid `sbi_hart_suspend` requested, which decides how the vCPU resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HartSuspend {
    /// Default retentive suspend (type 0): on wake-up the `ecall` returns with `a0 = 0`,
    /// `a1 = 0` and `sepc` advanced past it, all other state preserved.
    Retentive,
    /// Default non-retentive suspend (type 0x8000_0000): on wake-up the vCPU continues in
    /// VS-mode at `resume_addr` with `a0` = its vCPU id, `a1 = opaque`, `satp = 0` and
    /// `sstatus.SIE = 0`. `resume_addr` has already passed
    /// [`Environment::validate_resume_address`].
    NonRetentive {
        /// Guest-physical address to resume at.
        resume_addr: usize,
        /// Value for `a1` on resume.
        opaque: usize,
    },
}

/// What the hypervisor must do to complete a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The normal SBI v0.2+ return: write `a0 = error` (0 on success) and `a1 = value`, then
    /// advance `sepc` by 4 past the `ecall`.
    Return {
        /// `SBI_SUCCESS` (0) or an [`SbiError::code`].
        error: isize,
        /// The function's return value (0 on error).
        value: usize,
    },
    /// A legacy v0.1 return: write `a0` only, leave `a1` untouched, advance `sepc` by 4.
    Legacy(isize),
    /// Shut down or reboot the whole capsule; the call does not return to the guest.
    Reset {
        /// Shutdown, cold reboot or warm reboot.
        kind: ResetKind,
        /// Why the guest asked for the reset.
        reason: ResetReason,
    },
    /// Stop the calling vCPU (HSM `STOPPED`); the call does not return to the guest.
    HartStop,
    /// Suspend the calling vCPU until an interrupt is pending for it.
    Suspend(HartSuspend),
}

impl Outcome {
    /// A successful SBI v0.2+ return with `value` in `a1`.
    pub const fn success(value: usize) -> Outcome {
        Outcome::Return { error: 0, value }
    }

    /// A failed SBI v0.2+ return: `a0 = error.code()`, `a1 = 0`.
    pub const fn failure(error: SbiError) -> Outcome {
        Outcome::Return {
            error: error.code(),
            value: 0,
        }
    }

    /// The error of a [`Outcome::Return`], if it carries one the spec defines.
    pub fn error(&self) -> Option<SbiError> {
        match *self {
            Outcome::Return { error, .. } => SbiError::from_code(error),
            _ => None,
        }
    }
}

impl From<Result<usize, SbiError>> for Outcome {
    fn from(result: Result<usize, SbiError>) -> Outcome {
        match result {
            Ok(value) => Outcome::success(value),
            Err(error) => Outcome::failure(error),
        }
    }
}

/// Decodes and executes one SBI call for the vCPU that `environment` represents.
///
/// Never panics, whatever the register contents. Unknown extensions and functions produce
/// `SBI_ERR_NOT_SUPPORTED`. Call counting is left to the caller: see [`CallStats`].
pub fn dispatch(call: &Call, environment: &mut impl Environment) -> Outcome {
    match Extension::from_eid(call.eid) {
        Some(Extension::Base) => base::handle(call, environment),
        Some(Extension::Timer) => time::handle(call, environment),
        Some(Extension::Ipi) => ipi::handle(call, environment),
        Some(Extension::RemoteFence) => rfence::handle(call, environment),
        Some(Extension::HartStateManagement) => hsm::handle(call, environment),
        Some(Extension::SystemReset) => srst::handle(call),
        Some(Extension::DebugConsole) => dbcn::handle(call, environment),
        Some(Extension::Legacy) => legacy::handle(call, environment),
        None => Outcome::failure(SbiError::NotSupported),
    }
}

#[cfg(test)]
mod tests {
    use super::{Call, Outcome, SbiError};

    #[test]
    fn registers_map_to_eid_fid_and_arguments() {
        let call = Call::from_registers([10, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(call, Call::new(17, 16, [10, 11, 12, 13, 14, 15]));
    }

    #[test]
    fn outcome_from_result() {
        assert_eq!(Outcome::from(Ok(7)), Outcome::Return { error: 0, value: 7 });
        assert_eq!(
            Outcome::from(Err(SbiError::Denied)),
            Outcome::Return {
                error: -4,
                value: 0
            }
        );
        assert_eq!(
            Outcome::failure(SbiError::Denied).error(),
            Some(SbiError::Denied)
        );
        assert_eq!(Outcome::success(1).error(), None);
        assert_eq!(Outcome::Legacy(-3).error(), None);
    }
}
