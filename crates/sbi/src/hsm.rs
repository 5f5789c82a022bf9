//! HSM extension (EID "HSM"): start, stop, query and suspend a capsule's vCPUs.

use sbi_spec::hsm::{suspend_type, HART_GET_STATUS, HART_START, HART_STOP, HART_SUSPEND};

use crate::{Call, Environment, HartSet, HartSuspend, Outcome, SbiError};

pub(crate) fn handle(call: &Call, environment: &mut impl Environment) -> Outcome {
    let [first, second, third, ..] = call.args;
    match call.fid {
        HART_START => hart_start(first, second, third, environment)
            .map(|()| 0)
            .into(),
        HART_STOP => Outcome::HartStop,
        HART_GET_STATUS => hart_get_status(first, environment).into(),
        HART_SUSPEND => match hart_suspend(first, second, third, environment) {
            Ok(suspend) => Outcome::Suspend(suspend),
            Err(error) => Outcome::failure(error),
        },
        _ => Outcome::failure(SbiError::NotSupported),
    }
}

/// Fails with `SBI_ERR_INVALID_PARAM` unless `hartid` names one of the capsule's vCPUs.
fn check_hartid(hartid: usize, environment: &impl Environment) -> Result<(), SbiError> {
    let vcpu_count = environment.vcpu_count().min(HartSet::MAX_HARTS);
    if hartid < vcpu_count {
        Ok(())
    } else {
        Err(SbiError::InvalidParam)
    }
}

fn hart_start(
    hartid: usize,
    start_addr: usize,
    opaque: usize,
    environment: &mut impl Environment,
) -> Result<(), SbiError> {
    check_hartid(hartid, environment)?;
    // The caller is running, so it is by definition already started; answering here spares
    // the environment from having to recognise a vCPU starting itself.
    if hartid == environment.current_vcpu() {
        return Err(SbiError::AlreadyAvailable);
    }
    environment.hart_start(hartid, start_addr, opaque)
}

fn hart_get_status(hartid: usize, environment: &impl Environment) -> Result<usize, SbiError> {
    check_hartid(hartid, environment)?;
    Ok(environment.hart_status(hartid).id())
}

fn hart_suspend(
    suspend_type_register: usize,
    resume_addr: usize,
    opaque: usize,
    environment: &impl Environment,
) -> Result<HartSuspend, SbiError> {
    // `suspend_type` is a `uint32_t`: the spec has the callee use only the low 32 bits.
    let requested_type = suspend_type_register as u32;
    match requested_type {
        suspend_type::RETENTIVE => Ok(HartSuspend::Retentive),
        suspend_type::NON_RETENTIVE => {
            environment.validate_resume_address(resume_addr)?;
            Ok(HartSuspend::NonRetentive {
                resume_addr,
                opaque,
            })
        }
        // Reserved types and platform-specific types, none of which are implemented.
        _ => Err(SbiError::InvalidParam),
    }
}
