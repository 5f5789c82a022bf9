//! Dispatch tests against a recording mock environment, one module per extension.

mod base;
mod dbcn;
mod hsm;
mod ipi_rfence;
mod legacy;
mod mock;
mod robustness;
mod srst;
mod time;

use keel_sbi::{dispatch, Call, Outcome, SbiError};
use mock::MockEnvironment;

/// Dispatches an SBI v0.2+ style call.
pub fn call(environment: &mut MockEnvironment, eid: usize, fid: usize, args: &[usize]) -> Outcome {
    let mut registers = [0; 6];
    registers[..args.len()].copy_from_slice(args);
    dispatch(&Call::new(eid, fid, registers), environment)
}

pub fn ok(value: usize) -> Outcome {
    Outcome::Return { error: 0, value }
}

pub fn err(error: SbiError) -> Outcome {
    Outcome::Return {
        error: error.code(),
        value: 0,
    }
}
