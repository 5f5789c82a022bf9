//! Legacy SBI v0.1 calls (EIDs 0x00..=0x08): one function per EID, result in `a0` only.
//!
//! Errors are reported as the same negative codes the v0.2+ calls use, which the spec allows
//! ("an implementation specific negative error code").

use sbi_spec::legacy::{
    LEGACY_CLEAR_IPI, LEGACY_CONSOLE_GETCHAR, LEGACY_CONSOLE_PUTCHAR, LEGACY_REMOTE_FENCE_I,
    LEGACY_REMOTE_SFENCE_VMA, LEGACY_REMOTE_SFENCE_VMA_ASID, LEGACY_SEND_IPI, LEGACY_SET_TIMER,
    LEGACY_SHUTDOWN,
};

use crate::{ipi, rfence, Call, Environment, HartSet, Outcome, ResetKind, ResetReason, SbiError};

/// `a0` value for a successful legacy call.
const LEGACY_SUCCESS: isize = 0;
/// `sbi_console_getchar` result when no byte is available.
const LEGACY_NO_CHARACTER: isize = -1;
/// `sbi_clear_ipi` result when an IPI had been pending (any positive value is allowed).
const LEGACY_IPI_WAS_PENDING: isize = 1;

pub(crate) fn handle(call: &Call, environment: &mut impl Environment) -> Outcome {
    let [first, second, third, fourth, ..] = call.args;
    let result = match call.eid {
        LEGACY_SET_TIMER => {
            // RV64 passes the whole 64-bit `stime_value` in `a0`; the conversion is lossless.
            environment.set_timer(first as u64);
            Ok(LEGACY_SUCCESS)
        }
        LEGACY_CONSOLE_PUTCHAR => {
            // `ch` is an `int`; the console takes its low byte.
            environment.console_write_byte(first as u8);
            Ok(LEGACY_SUCCESS)
        }
        LEGACY_CONSOLE_GETCHAR => Ok(environment
            .console_getchar()
            .map_or(LEGACY_NO_CHARACTER, isize::from)),
        LEGACY_CLEAR_IPI => Ok(if environment.clear_ipi() {
            LEGACY_IPI_WAS_PENDING
        } else {
            LEGACY_SUCCESS
        }),
        LEGACY_SEND_IPI => read_hart_mask(first, environment).map(|targets| {
            ipi::send_to(targets, environment);
            LEGACY_SUCCESS
        }),
        LEGACY_REMOTE_FENCE_I => read_hart_mask(first, environment).map(|targets| {
            rfence::fence_i(targets, environment);
            LEGACY_SUCCESS
        }),
        LEGACY_REMOTE_SFENCE_VMA => read_hart_mask(first, environment).map(|targets| {
            rfence::sfence_vma(targets, second, third, None, environment);
            LEGACY_SUCCESS
        }),
        LEGACY_REMOTE_SFENCE_VMA_ASID => read_hart_mask(first, environment).map(|targets| {
            rfence::sfence_vma(targets, second, third, Some(fourth), environment);
            LEGACY_SUCCESS
        }),
        LEGACY_SHUTDOWN => {
            return Outcome::Reset {
                kind: ResetKind::Shutdown,
                reason: ResetReason::NoReason,
            }
        }
        // `Extension::from_eid` routes only EIDs 0x00..=0x08 here; answer anything else the
        // way an unknown extension is answered rather than trusting that invariant blindly.
        _ => return Outcome::failure(SbiError::NotSupported),
    };
    match result {
        Ok(value) => Outcome::Legacy(value),
        Err(error) => Outcome::Legacy(error.code()),
    }
}

/// Loads the hart mask a legacy call passes by guest-virtual pointer.
///
/// A null pointer selects every vCPU: the spec does not define it, but widely used firmware
/// and hypervisors treat it that way, so guests written against them work here too. Only the first
/// `unsigned long` is read, since a capsule has at most 64 vCPUs; a set bit naming a vCPU the
/// capsule does not have is `SBI_ERR_INVALID_PARAM`, as in the v0.2+ calls.
fn read_hart_mask(
    hart_mask_address: usize,
    environment: &mut impl Environment,
) -> Result<HartSet, SbiError> {
    let vcpu_count = environment.vcpu_count();
    if hart_mask_address == 0 {
        return Ok(HartSet::all(vcpu_count));
    }
    let hart_mask = environment.read_guest_virtual_usize(hart_mask_address)?;
    HartSet::from_legacy_mask(hart_mask, vcpu_count)
}
