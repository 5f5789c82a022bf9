//! G-stage page tables (Sv39x4, Sv48x4) that translate a capsule's guest-physical addresses to host-physical ones.
//!
//! The RISC-V hypervisor extension translates every guest-physical address (GPA) through a second
//! set of page tables rooted at `hgatp`. This crate builds and edits those tables. It never touches
//! memory directly: the caller supplies a [`TableMemory`] that allocates table pages and reads or
//! writes individual entries, so the same code runs in the hypervisor (identity-mapped RAM) and in
//! host unit tests (a bounds-checked fake RAM, see `test_support`).
//!
//! The caller is responsible for TLB maintenance: after [`GStage::unmap`] (or any change that
//! removes or narrows a translation) it must execute `HFENCE.GVMA` for the capsule's VMID before
//! the unmapped host memory is reused.
#![cfg_attr(not(test), no_std)]

mod error;
mod gstage;
mod memory;
mod mode;
mod pte;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use error::MapError;
pub use gstage::{GStage, Translation};
pub use memory::TableMemory;
pub use mode::{Mode, PageSize};
pub use pte::Perm;
