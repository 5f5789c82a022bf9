//! Device trees for Keel: a summary of the host platform's tree and a generated tree for each guest.
//!
//! The host side ([`parse_host`]) reads the flattened device tree that firmware hands the
//! hypervisor and turns it into owned data the rest of the hypervisor can use without keeping
//! the blob around. Every blob is checked structurally ([`structure`]) before the `fdt` crate
//! walks it, because that crate assumes well-formed input and would panic otherwise.
//!
//! The guest side ([`build_guest_tree`]) writes the tree a Linux guest boots with, describing
//! only the virtual hardware the hypervisor emulates.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod guest;
pub mod host;
pub mod structure;

pub use guest::{
    build_guest_tree, uart_path, GuestPlic, GuestTreeConfig, GuestTreeError, GuestUart, GuestVirtio,
};
pub use host::{
    parse_host, parse_isa_string, HostHart, HostPlatform, HostPlic, HostTreeError, HostUart,
    HostVirtio,
};
pub use structure::{total_size, StructureError};

/// A physical (or guest-physical) address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region {
    pub base: u64,
    pub size: u64,
}

impl Region {
    /// One past the last byte, or `None` when the range wraps the 64-bit address space.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }

    /// Whether the two ranges share at least one byte. A range that wraps counts as
    /// reaching the top of the address space.
    pub fn overlaps(&self, other: &Region) -> bool {
        if self.size == 0 || other.size == 0 {
            return false;
        }
        let self_last = self.base.saturating_add(self.size - 1);
        let other_last = other.base.saturating_add(other.size - 1);
        self.base <= other_last && other.base <= self_last
    }
}
