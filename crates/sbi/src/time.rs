//! TIME extension (EID "TIME"): `sbi_set_timer`.

use sbi_spec::time::SET_TIMER;

use crate::{Call, Environment, Outcome, SbiError};

pub(crate) fn handle(call: &Call, environment: &mut impl Environment) -> Outcome {
    match call.fid {
        SET_TIMER => {
            // On RV64 the whole 64-bit `stime_value` is in `a0`; `usize` is never wider than
            // 64 bits, so the conversion is lossless.
            environment.set_timer(call.args[0] as u64);
            Outcome::success(0)
        }
        _ => Outcome::failure(SbiError::NotSupported),
    }
}
