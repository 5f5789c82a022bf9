//! Bit layout of a G-stage page-table entry: the Sv39/Sv48 PTE format under G-stage rules.
//!
//! ```text
//!  63  62 61  60    54 53                    10 9   8 7 6 5 4 3 2 1 0
//! +---+------+--------+------------------------+-----+-+-+-+-+-+-+-+-+
//! | N | PBMT |reserved|   PPN (44 bits)        | RSW |D|A|G|U|X|W|R|V|
//! +---+------+--------+------------------------+-----+-+-+-+-+-+-+-+-+
//! ```
//!
//! G-stage specifics: every access is checked as if made from U-mode, so leaves need U = 1; the
//! G bit is unused and must be written as 0; on a non-leaf entry D, A and U are reserved and must
//! be 0. We write A = D = 1 in every leaf because hardware may fault instead of setting them.

use bitflags::bitflags;

bitflags! {
    /// Access rights of a guest-physical mapping. The bit values are the PTE's R, W and X bits,
    /// so a permission can be placed into an entry without translation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perm: u64 {
        /// Loads are allowed (PTE.R).
        const READ = 1 << 1;
        /// Stores are allowed (PTE.W); requires `READ`, since W without R is a reserved encoding.
        const WRITE = 1 << 2;
        /// Instruction fetches are allowed (PTE.X).
        const EXEC = 1 << 3;
    }
}

/// PTE.V: the entry is valid.
pub(crate) const PTE_V: u64 = 1 << 0;
/// PTE.U: accessible from U-mode; every G-stage access counts as U-mode.
pub(crate) const PTE_U: u64 = 1 << 4;
/// PTE.G: global mapping; unused by G-stage and must be written as 0.
#[cfg(test)]
pub(crate) const PTE_G: u64 = 1 << 5;
/// PTE.A: the page has been accessed.
pub(crate) const PTE_A: u64 = 1 << 6;
/// PTE.D: the page has been written.
pub(crate) const PTE_D: u64 = 1 << 7;
/// Position of the physical page number field.
pub(crate) const PPN_SHIFT: u32 = 10;
/// Width of the physical page number field.
pub(crate) const PPN_BITS: u32 = 44;
/// First host-physical address that a 44-bit PPN cannot express (2^56).
pub(crate) const HPA_LIMIT: u64 = 1 << (PPN_BITS + 12);

const PPN_MASK: u64 = ((1 << PPN_BITS) - 1) << PPN_SHIFT;

/// One page-table entry value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pte(pub(crate) u64);

impl Pte {
    /// The all-zero, invalid entry.
    pub(crate) const INVALID: Pte = Pte(0);

    /// An entry pointing to the next-level table at `table` (4 KiB aligned, below 2^56).
    pub(crate) const fn table(table: u64) -> Pte {
        Pte((((table >> 12) << PPN_SHIFT) & PPN_MASK) | PTE_V)
    }

    /// A leaf mapping to `hpa` (aligned, below 2^56) with rights `perm`.
    pub(crate) const fn leaf(hpa: u64, perm: Perm) -> Pte {
        let rights = perm.bits() & Perm::all().bits();
        Pte((((hpa >> 12) << PPN_SHIFT) & PPN_MASK) | rights | PTE_V | PTE_U | PTE_A | PTE_D)
    }

    pub(crate) const fn is_valid(self) -> bool {
        self.0 & PTE_V != 0
    }

    /// A valid entry with any of R, W, X set maps memory; with none set it points to a table.
    pub(crate) const fn is_leaf(self) -> bool {
        self.is_valid() && self.0 & Perm::all().bits() != 0
    }

    /// Physical address held in the PPN field.
    pub(crate) const fn address(self) -> u64 {
        ((self.0 & PPN_MASK) >> PPN_SHIFT) << 12
    }

    pub(crate) const fn perm(self) -> Perm {
        Perm::from_bits_truncate(self.0)
    }
}
