//! The portable half of the SBI check guest: reports, device-tree reading, timing arithmetic and instruction lengths.
//!
//! Everything here except the bare-metal runtime is plain computation, so it builds and is unit-tested on the
//! host. The runtime (`arch`, `trap`, `console`, `sbi`: the RISC-V entry point, the trap handler, the console and
//! the SBI calls) builds only for the bare-metal RISC-V target; it is shared by this package's executable
//! (`src/main.rs`) and by the hostile test guest (guests/hostile), which provide `sbi_check_main`.
#![cfg_attr(not(test), no_std)]
// A check's failure is a fixed-size text buffer ([`Failure`]) because the guest has no heap; it is
// returned by value only on the failure path, so its size does not matter.
#![allow(clippy::result_large_err)]

/// Bare-metal RISC-V only: the guest runtime.
#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub mod arch;
#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub mod console;
#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub mod sbi;
#[cfg(all(target_arch = "riscv64", target_os = "none"))]
pub mod trap;

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
