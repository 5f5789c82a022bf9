//! IPI extension (EID "sPI"): `sbi_send_ipi`.

use sbi_spec::spi::SEND_IPI;

use crate::{Call, Environment, HartSet, Outcome, SbiError};

pub(crate) fn handle(call: &Call, environment: &mut impl Environment) -> Outcome {
    match call.fid {
        SEND_IPI => {
            let [hart_mask, hart_mask_base, ..] = call.args;
            match HartSet::from_mask_and_base(hart_mask, hart_mask_base, environment.vcpu_count()) {
                Ok(targets) => {
                    send_to(targets, environment);
                    Outcome::success(0)
                }
                Err(error) => Outcome::failure(error),
            }
        }
        _ => Outcome::failure(SbiError::NotSupported),
    }
}

/// Asks the environment to interrupt `targets`, skipping the request when there is no target.
/// Shared with the legacy call.
pub(crate) fn send_to(targets: HartSet, environment: &mut impl Environment) {
    if !targets.is_empty() {
        environment.send_ipi(targets);
    }
}
