//! The portable half of the SBI check guest: reports, device-tree reading, timing arithmetic and instruction lengths.
//!
//! Everything here is plain computation, so it builds and is unit-tested on the host; the executable
//! (`src/main.rs`) adds the RISC-V entry point, the trap handler and the SBI calls themselves.
#![cfg_attr(not(test), no_std)]
// A check's failure is a fixed-size text buffer ([`Failure`]) because the guest has no heap; it is
// returned by value only on the failure path, so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod boot_info;
pub mod decode;
pub mod report;
pub mod sbi_codes;
pub mod timing;

pub use boot_info::{BootInfo, DeviceTreeError};
pub use decode::instruction_length;
pub use report::{Failure, LineBuffer, Tally};
pub use sbi_codes::{SbiResult, KEEL_IMPLEMENTATION_ID};
pub use timing::NanosPerOperation;
