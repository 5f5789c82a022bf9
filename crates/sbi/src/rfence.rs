//! RFENCE extension (EID "RFNC"): remote `FENCE.I` and `SFENCE.VMA` on a capsule's vCPUs.
//!
//! The `HFENCE.*` functions are only meaningful for callers that have the H extension; guests
//! of this hypervisor do not, so those functions report `SBI_ERR_NOT_SUPPORTED` as the spec
//! allows.

use sbi_spec::rfnc::{REMOTE_FENCE_I, REMOTE_SFENCE_VMA, REMOTE_SFENCE_VMA_ASID};

use crate::{Call, Environment, FenceRange, HartSet, Outcome, SbiError};

pub(crate) fn handle(call: &Call, environment: &mut impl Environment) -> Outcome {
    let [hart_mask, hart_mask_base, start, size, asid, _] = call.args;
    let result = match call.fid {
        REMOTE_FENCE_I => remote_fence_i(hart_mask, hart_mask_base, environment),
        REMOTE_SFENCE_VMA => {
            remote_sfence_vma(hart_mask, hart_mask_base, start, size, None, environment)
        }
        REMOTE_SFENCE_VMA_ASID => remote_sfence_vma(
            hart_mask,
            hart_mask_base,
            start,
            size,
            Some(asid),
            environment,
        ),
        // Includes REMOTE_HFENCE_GVMA_VMID..=REMOTE_HFENCE_VVMA.
        _ => Err(SbiError::NotSupported),
    };
    result.map(|()| 0).into()
}

fn remote_fence_i(
    hart_mask: usize,
    hart_mask_base: usize,
    environment: &mut impl Environment,
) -> Result<(), SbiError> {
    let targets = HartSet::from_mask_and_base(hart_mask, hart_mask_base, environment.vcpu_count())?;
    fence_i(targets, environment);
    Ok(())
}

fn remote_sfence_vma(
    hart_mask: usize,
    hart_mask_base: usize,
    start: usize,
    size: usize,
    asid: Option<usize>,
    environment: &mut impl Environment,
) -> Result<(), SbiError> {
    let targets = HartSet::from_mask_and_base(hart_mask, hart_mask_base, environment.vcpu_count())?;
    sfence_vma(targets, start, size, asid, environment);
    Ok(())
}

/// Asks the environment for a `FENCE.I` on `targets`, skipping the request when there is no
/// target. Shared with the legacy calls.
pub(crate) fn fence_i(targets: HartSet, environment: &mut impl Environment) {
    if !targets.is_empty() {
        environment.remote_fence_i(targets);
    }
}

/// Asks the environment for an `SFENCE.VMA` on `targets`, skipping the request when there is
/// no target or the range is empty. Shared with the legacy calls.
pub(crate) fn sfence_vma(
    targets: HartSet,
    start: usize,
    size: usize,
    asid: Option<usize>,
    environment: &mut impl Environment,
) {
    if targets.is_empty() {
        return;
    }
    if let Some(range) = FenceRange::new(start, size) {
        environment.remote_sfence_vma(targets, range, asid);
    }
}
