//! Translation modes (`hgatp.MODE`) and the page sizes a leaf entry can map.

use core::fmt;

/// Size of one page-table page below the root, and of the smallest mapping.
pub(crate) const BASE_PAGE_BYTES: u64 = 4096;
/// Size of the root table of every `x4` mode: four times a normal table, for two extra GPA bits.
pub(crate) const ROOT_TABLE_BYTES: u64 = 16 * 1024;
/// Index bits of a non-root table (512 entries).
pub(crate) const INDEX_BITS: u32 = 9;
/// Index bits of the root table (2048 entries), two more than a normal table.
pub(crate) const ROOT_INDEX_BITS: u32 = 11;
/// Bits of the in-page offset.
pub(crate) const PAGE_OFFSET_BITS: u32 = 12;

/// A G-stage translation scheme, selected by the `hgatp.MODE` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 41-bit guest-physical addresses, three levels (`hgatp.MODE` = 8).
    Sv39x4,
    /// 50-bit guest-physical addresses, four levels (`hgatp.MODE` = 9).
    Sv48x4,
}

impl Mode {
    /// Number of page-table levels walked for a 4 KiB page.
    pub const fn levels(self) -> usize {
        match self {
            Mode::Sv39x4 => 3,
            Mode::Sv48x4 => 4,
        }
    }

    /// Width of a guest-physical address; bits above it must be zero.
    pub const fn gpa_bits(self) -> u32 {
        // Each non-root level resolves 9 bits and the root resolves 11.
        PAGE_OFFSET_BITS + INDEX_BITS * (self.levels() as u32 - 1) + ROOT_INDEX_BITS
    }

    /// First guest-physical address that this mode cannot translate (the size of the GPA space).
    pub const fn gpa_limit(self) -> u64 {
        1 << self.gpa_bits()
    }

    /// Value of the `hgatp.MODE` field.
    pub const fn hgatp_mode(self) -> u64 {
        match self {
            Mode::Sv39x4 => 8,
            Mode::Sv48x4 => 9,
        }
    }

    /// Level of the root table, counting the 4 KiB leaf level as 0.
    pub(crate) const fn root_level(self) -> usize {
        self.levels() - 1
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Mode::Sv39x4 => "Sv39x4",
            Mode::Sv48x4 => "Sv48x4",
        })
    }
}

/// Amount of guest-physical space one leaf entry maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, a leaf in a level-0 table.
    Size4K,
    /// 2 MiB "megapage", a leaf in a level-1 table.
    Size2M,
    /// 1 GiB "gigapage", a leaf in a level-2 table (the root table in Sv39x4).
    Size1G,
}

impl PageSize {
    /// Every page size, largest first; the order `map_range` tries them in.
    pub const DESCENDING: [PageSize; 3] = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K];

    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << (PAGE_OFFSET_BITS + INDEX_BITS * self.level() as u32)
    }

    /// Table level whose leaf entries map pages of this size.
    pub(crate) const fn level(self) -> usize {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
            PageSize::Size1G => 2,
        }
    }

    /// Page size of a leaf found at `level`, or `None` for levels this crate never maps at
    /// (a 512 GiB leaf in the Sv48x4 root).
    pub(crate) const fn from_level(level: usize) -> Option<PageSize> {
        match level {
            0 => Some(PageSize::Size4K),
            1 => Some(PageSize::Size2M),
            2 => Some(PageSize::Size1G),
            _ => None,
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            PageSize::Size4K => "4 KiB",
            PageSize::Size2M => "2 MiB",
            PageSize::Size1G => "1 GiB",
        })
    }
}
