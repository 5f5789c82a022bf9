//! Virtual devices for Keel guests, modelled as pure state machines.
//!
//! Each model is driven entirely by its caller: the hypervisor forwards trapped MMIO
//! accesses to `read`/`write`, reports external events (host console input, device
//! interrupt levels) through dedicated methods, and samples the resulting interrupt
//! state. Nothing here touches hardware, so every model is tested on the host.
//!
//! - [`Uart16550`]: a 16550A serial port for the guest console.
//! - [`Plic`]: the platform-level interrupt controller that routes device interrupts
//!   to guest harts.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod plic;
pub mod uart16550;

pub use plic::{Plic, PlicError};
pub use uart16550::Uart16550;
