//! Errors reported by G-stage table operations.

use core::fmt;

use crate::mode::{Mode, PageSize};

/// Why a G-stage table operation was refused. No operation leaves a half-written entry behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// A guest-physical address is not aligned to the page size it is used with.
    MisalignedGpa { gpa: u64, alignment: u64 },
    /// A host-physical address is not aligned to the page size it is used with.
    MisalignedHpa { hpa: u64, alignment: u64 },
    /// A range length is not a multiple of 4 KiB.
    MisalignedLength { len: u64 },
    /// The guest-physical range `gpa .. gpa + len` does not fit below the mode's limit.
    GpaOutOfRange { gpa: u64, len: u64, mode: Mode },
    /// The host-physical range `hpa .. hpa + len` does not fit in a 44-bit PPN (below 2^56).
    HpaOutOfRange { hpa: u64, len: u64 },
    /// Part of the requested range is already mapped by the leaf at `existing_gpa`.
    AlreadyMapped {
        gpa: u64,
        existing_gpa: u64,
        existing_size: PageSize,
    },
    /// A page of `page_size` at `gpa` was requested, but that range is already split by a
    /// lower-level table (it holds smaller pages, or is empty and awaits reclaiming).
    SplitBySmallerPages { gpa: u64, page_size: PageSize },
    /// Nothing is mapped at `gpa`.
    NotMapped { gpa: u64 },
    /// `gpa` is mapped by a larger leaf than the page size given to unmap.
    CoveredByLargerPage {
        gpa: u64,
        requested: PageSize,
        existing_gpa: u64,
        existing_size: PageSize,
    },
    /// Write permission without read permission: W = 1, R = 0 is a reserved PTE encoding.
    WriteWithoutRead,
    /// A mapping needs at least one of read, write or execute.
    EmptyPermission,
    /// The table memory provider could not supply a table of `bytes`.
    OutOfTableMemory { bytes: usize },
    /// The table memory provider returned an address that is misaligned or not expressible
    /// in a PTE; the table was handed back.
    BadTableAddress { addr: u64, bytes: usize },
    /// A VMID wider than the 14 bits of `hgatp.VMID`.
    VmidOutOfRange { vmid: u16 },
}

impl fmt::Display for MapError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MapError::MisalignedGpa { gpa, alignment } => write!(
                formatter,
                "guest-physical address {gpa:#x} is not aligned to {alignment:#x} bytes"
            ),
            MapError::MisalignedHpa { hpa, alignment } => write!(
                formatter,
                "host-physical address {hpa:#x} is not aligned to {alignment:#x} bytes"
            ),
            MapError::MisalignedLength { len } => {
                write!(formatter, "range length {len:#x} is not a multiple of 4 KiB")
            }
            MapError::GpaOutOfRange { gpa, len, mode } => write!(
                formatter,
                "guest-physical range {gpa:#x} + {len:#x} exceeds the {mode} limit of {:#x}",
                mode.gpa_limit()
            ),
            MapError::HpaOutOfRange { hpa, len } => write!(
                formatter,
                "host-physical range {hpa:#x} + {len:#x} exceeds the 56-bit physical address space"
            ),
            MapError::AlreadyMapped { gpa, existing_gpa, existing_size } => write!(
                formatter,
                "guest-physical address {gpa:#x} is already mapped by the {existing_size} page at {existing_gpa:#x}"
            ),
            MapError::SplitBySmallerPages { gpa, page_size } => write!(
                formatter,
                "cannot use a {page_size} page at guest-physical address {gpa:#x}: a lower-level table already covers that range"
            ),
            MapError::NotMapped { gpa } => {
                write!(formatter, "guest-physical address {gpa:#x} is not mapped")
            }
            MapError::CoveredByLargerPage { gpa, requested, existing_gpa, existing_size } => write!(
                formatter,
                "cannot unmap a {requested} page at guest-physical address {gpa:#x}: it lies inside the {existing_size} page at {existing_gpa:#x}"
            ),
            MapError::WriteWithoutRead => {
                formatter.write_str("write permission without read permission is a reserved PTE encoding")
            }
            MapError::EmptyPermission => {
                formatter.write_str("a mapping needs at least one of read, write or execute permission")
            }
            MapError::OutOfTableMemory { bytes } => {
                write!(formatter, "out of memory for a {bytes}-byte page table")
            }
            MapError::BadTableAddress { addr, bytes } => write!(
                formatter,
                "table memory returned {addr:#x} for a {bytes}-byte table, which is misaligned or beyond the 56-bit physical address space"
            ),
            MapError::VmidOutOfRange { vmid } => {
                write!(formatter, "VMID {vmid:#x} does not fit in the 14-bit hgatp.VMID field")
            }
        }
    }
}

impl core::error::Error for MapError {}
