//! Building, editing, walking and tearing down one capsule's G-stage page tables.

use crate::error::MapError;
use crate::memory::TableMemory;
use crate::mode::{
    Mode, PageSize, BASE_PAGE_BYTES, INDEX_BITS, PAGE_OFFSET_BITS, ROOT_INDEX_BITS,
    ROOT_TABLE_BYTES,
};
use crate::pte::{Perm, Pte, HPA_LIMIT};

/// Size of one page-table entry.
const PTE_BYTES: u64 = 8;
/// Largest VMID the 14-bit `hgatp.VMID` field can hold (VMIDLEN is at most 14 on RV64).
const VMID_MAX: u16 = (1 << 14) - 1;
const HGATP_MODE_SHIFT: u32 = 60;
const HGATP_VMID_SHIFT: u32 = 44;

/// Result of looking up one guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Host-physical address the GPA translates to, including the offset within the page.
    pub hpa: u64,
    /// Access rights of the mapping.
    pub perm: Perm,
    /// Size of the leaf page that maps the GPA.
    pub page_size: PageSize,
}

/// Where a walk towards a given level ended.
enum Descent {
    /// Physical address of the entry for the GPA in the table at the requested level.
    Slot(u64),
    /// A leaf at a higher level already maps the GPA.
    Leaf { level: usize, pte: Pte },
    /// An intermediate entry is invalid, so no table exists at the requested level.
    Missing,
}

/// Where a walk that creates missing tables ended.
enum AllocatedDescent {
    /// Physical address of the entry for the GPA in the table at the requested level.
    Slot(u64),
    /// A leaf at `level`, above the requested level, already maps the GPA.
    Leaf { level: usize },
}

/// The G-stage page tables of one capsule.
///
/// The value owns its tables but not the memory holding them: every method takes the
/// [`TableMemory`] the tables came from, and passing a different one is a caller bug.
/// Dropping a `GStage` without [`GStage::destroy`] leaks its tables.
#[derive(Debug)]
pub struct GStage {
    root: u64,
    mode: Mode,
    table_bytes: u64,
}

impl GStage {
    /// Allocates an empty root table (16 KiB, 16 KiB aligned) for `mode`.
    pub fn new(mem: &mut impl TableMemory, mode: Mode) -> Result<Self, MapError> {
        let root = allocate_table(mem, ROOT_TABLE_BYTES)?;
        Ok(GStage {
            root,
            mode,
            table_bytes: ROOT_TABLE_BYTES,
        })
    }

    /// Translation scheme of these tables.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Bytes of table memory currently held, root included.
    pub fn table_bytes(&self) -> u64 {
        self.table_bytes
    }

    /// The `hgatp` value that activates these tables for `vmid`: MODE in bits 63:60, VMID in
    /// bits 57:44 and the root table's PPN in bits 43:0.
    ///
    /// A VMID above 14 bits is refused rather than truncated, because truncation would make two
    /// capsules share TLB entries. The hardware may implement fewer VMID bits; the caller must
    /// stay within what it probed.
    pub fn hgatp(&self, vmid: u16) -> Result<u64, MapError> {
        if vmid > VMID_MAX {
            return Err(MapError::VmidOutOfRange { vmid });
        }
        Ok((self.mode.hgatp_mode() << HGATP_MODE_SHIFT)
            | (u64::from(vmid) << HGATP_VMID_SHIFT)
            | (self.root >> PAGE_OFFSET_BITS))
    }

    /// Maps one page of `size` at `gpa` to `hpa` with rights `perm`.
    ///
    /// Both addresses must be aligned to `size`. Fails without changing any mapping if any part
    /// of the page is already mapped; intermediate tables created before a failure to allocate a
    /// deeper one stay in place (empty) and are released by [`GStage::reclaim_empty_tables`] or
    /// [`GStage::destroy`].
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        size: PageSize,
        perm: Perm,
    ) -> Result<(), MapError> {
        let perm = checked_perm(perm)?;
        self.check_gpa_range(gpa, size.bytes())?;
        check_alignment(gpa, hpa, size.bytes())?;
        check_hpa_range(hpa, size.bytes())?;
        self.install_leaf(mem, gpa, hpa, size, perm)
    }

    /// Maps `len` bytes at `gpa` to `hpa`, using the largest pages that the alignment of both
    /// addresses and the remaining length allow at each step.
    ///
    /// Addresses and length must be 4 KiB aligned; a zero length maps nothing. The whole range
    /// is checked against the address limits first. If a page in the middle cannot be mapped,
    /// the pages already mapped by this call are unmapped again before the error is returned.
    pub fn map_range(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        len: u64,
        perm: Perm,
    ) -> Result<(), MapError> {
        let perm = checked_perm(perm)?;
        check_alignment(gpa, hpa, BASE_PAGE_BYTES)?;
        if !len.is_multiple_of(BASE_PAGE_BYTES) {
            return Err(MapError::MisalignedLength { len });
        }
        if len == 0 {
            return Ok(());
        }
        self.check_gpa_range(gpa, len)?;
        check_hpa_range(hpa, len)?;

        let mut done = 0;
        while done < len {
            // Both sums stay below the limits checked above, so they cannot overflow.
            let size = largest_fitting_page(gpa + done, hpa + done, len - done);
            if let Err(error) = self.install_leaf(mem, gpa + done, hpa + done, size, perm) {
                self.unmap_prefix(mem, gpa, hpa, done);
                return Err(error);
            }
            done += size.bytes();
        }
        Ok(())
    }

    /// Removes the page of `size` mapped at `gpa` and returns the host-physical address it
    /// mapped to. The caller must fence (`HFENCE.GVMA`) before reusing that host memory.
    ///
    /// The page must have been mapped with exactly this size; unmapping part of a larger page
    /// or a whole range of smaller pages is refused. Tables emptied by the unmap stay allocated
    /// until [`GStage::reclaim_empty_tables`] or [`GStage::destroy`].
    pub fn unmap(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        size: PageSize,
    ) -> Result<u64, MapError> {
        self.check_gpa_range(gpa, size.bytes())?;
        if !gpa.is_multiple_of(size.bytes()) {
            return Err(MapError::MisalignedGpa {
                gpa,
                alignment: size.bytes(),
            });
        }
        let slot = match self.descend_existing(mem, gpa, size.level()) {
            Descent::Slot(slot) => slot,
            Descent::Leaf { level, .. } => return Err(covered_by_larger_page(gpa, size, level)),
            Descent::Missing => return Err(MapError::NotMapped { gpa }),
        };
        let pte = Pte(mem.read_pte(slot));
        if !pte.is_valid() {
            return Err(MapError::NotMapped { gpa });
        }
        if !pte.is_leaf() {
            return Err(MapError::SplitBySmallerPages {
                gpa,
                page_size: size,
            });
        }
        mem.write_pte(slot, Pte::INVALID.0);
        Ok(pte.address())
    }

    /// Looks up `gpa` the way the hardware walker would; `None` if it is unmapped or beyond the
    /// mode's limit.
    pub fn translate(&self, mem: &impl TableMemory, gpa: u64) -> Option<Translation> {
        if gpa >= self.mode.gpa_limit() {
            return None;
        }
        match self.descend_existing(mem, gpa, 0) {
            Descent::Slot(slot) => {
                let pte = Pte(mem.read_pte(slot));
                leaf_translation(pte, 0, gpa)
            }
            Descent::Leaf { level, pte } => leaf_translation(pte, level, gpa),
            Descent::Missing => None,
        }
    }

    /// Frees every non-root table that maps nothing and returns the bytes released.
    ///
    /// Runs in three phases so that no hart can walk a table after it is handed back: first the
    /// empty tables are unhooked from their parents, then `fence` is called (it must perform
    /// `HFENCE.GVMA` for this capsule's VMID on every hart that may have cached the entries),
    /// and only then are the tables freed. While unhooked, the tables are chained through their
    /// first entry; the links are page-aligned addresses and so have V = 0, which keeps a stale
    /// walk through them harmless. `fence` is called even when nothing was unhooked.
    pub fn reclaim_empty_tables(
        &mut self,
        mem: &mut impl TableMemory,
        fence: impl FnOnce(),
    ) -> u64 {
        let mut chain = None;
        self.unhook_empty_children(mem, self.root, self.mode.root_level(), &mut chain);
        fence();
        let mut released = 0;
        while let Some(table) = chain {
            let next = mem.read_pte(table);
            // The last table links to itself; zero is no end marker, as it is a usable address.
            chain = (next != table).then_some(next);
            // Hand the table back zeroed, as it was given out.
            mem.write_pte(table, Pte::INVALID.0);
            mem.free_table(table, BASE_PAGE_BYTES as usize);
            released += BASE_PAGE_BYTES;
        }
        self.table_bytes = self.table_bytes.saturating_sub(released);
        released
    }

    /// Frees every table, root included. The mapped host memory itself is not touched. The
    /// caller must have stopped every hart using these tables and fenced their VMID first.
    pub fn destroy(self, mem: &mut impl TableMemory) {
        free_subtree(
            mem,
            self.root,
            self.mode.root_level(),
            self.mode.root_level(),
        );
    }

    // Sv39x4 guest-physical address (41 bits; bits 63:41 must be zero):
    //
    //    40            30 29          21 20          12 11              0
    //   +----------------+--------------+--------------+-----------------+
    //   | VPN[2] 11 bits | VPN[1] 9 bits| VPN[0] 9 bits| offset 12 bits  |
    //   +----------------+--------------+--------------+-----------------+
    //     index into the   index into a   index into a   byte within
    //     root table       level-1 table  level-0 table  the 4 KiB page
    //     (2048 entries,   (512 entries,  (512 entries,
    //      16 KiB)          4 KiB)         4 KiB)
    //
    // A leaf in the root table maps 1 GiB, in a level-1 table 2 MiB, in a level-0 table 4 KiB.
    // Sv48x4 puts one more level on top: its root index VPN[3] is bits 49:39 (11 bits) and its
    // VPN[2] shrinks to the usual 9 bits, so only the root's index width differs from Sv48.
    /// Walks existing tables from the root towards `target_level` without changing anything.
    fn descend_existing(&self, mem: &impl TableMemory, gpa: u64, target_level: usize) -> Descent {
        let mut table = self.root;
        for level in (target_level + 1..=self.mode.root_level()).rev() {
            let pte = Pte(mem.read_pte(self.slot(table, gpa, level)));
            if !pte.is_valid() {
                return Descent::Missing;
            }
            if pte.is_leaf() {
                return Descent::Leaf { level, pte };
            }
            table = pte.address();
        }
        Descent::Slot(self.slot(table, gpa, target_level))
    }

    /// Walks from the root towards `target_level`, creating missing tables on the way.
    fn descend_allocating(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        target_level: usize,
    ) -> Result<AllocatedDescent, MapError> {
        let mut table = self.root;
        for level in (target_level + 1..=self.mode.root_level()).rev() {
            let slot = self.slot(table, gpa, level);
            let pte = Pte(mem.read_pte(slot));
            if pte.is_leaf() {
                return Ok(AllocatedDescent::Leaf { level });
            }
            table = if pte.is_valid() {
                pte.address()
            } else {
                let child = allocate_table(mem, BASE_PAGE_BYTES)?;
                self.table_bytes += BASE_PAGE_BYTES;
                // The child arrives zeroed, so hooking it in exposes only invalid entries.
                mem.write_pte(slot, Pte::table(child).0);
                child
            };
        }
        Ok(AllocatedDescent::Slot(self.slot(table, gpa, target_level)))
    }

    /// Writes a leaf for already validated arguments, refusing any overlap.
    fn install_leaf(
        &mut self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        size: PageSize,
        perm: Perm,
    ) -> Result<(), MapError> {
        let slot = match self.descend_allocating(mem, gpa, size.level())? {
            AllocatedDescent::Slot(slot) => slot,
            AllocatedDescent::Leaf { level } => return Err(already_mapped(gpa, level)),
        };
        let existing = Pte(mem.read_pte(slot));
        if existing.is_leaf() {
            return Err(already_mapped(gpa, size.level()));
        }
        if existing.is_valid() {
            return Err(MapError::SplitBySmallerPages {
                gpa,
                page_size: size,
            });
        }
        mem.write_pte(slot, Pte::leaf(hpa, perm).0);
        Ok(())
    }

    /// Undoes the first `len` bytes that `map_range` mapped, replaying its choice of pages.
    fn unmap_prefix(&mut self, mem: &mut impl TableMemory, gpa: u64, hpa: u64, len: u64) {
        let mut done = 0;
        while done < len {
            let size = largest_fitting_page(gpa + done, hpa + done, len - done);
            // These pages were installed by the caller moments ago, so the unmap cannot fail;
            // there is nothing more useful to do with an error here than to keep going.
            let _ = self.unmap(mem, gpa + done, size);
            done += size.bytes();
        }
    }

    /// Unhooks empty subtrees below `table` and pushes them onto `chain` (a list linked through
    /// each table's first entry, its last table linking to itself); returns whether `table`
    /// itself ends up mapping nothing.
    fn unhook_empty_children(
        &self,
        mem: &mut impl TableMemory,
        table: u64,
        level: usize,
        chain: &mut Option<u64>,
    ) -> bool {
        let mut empty = true;
        for index in 0..self.entry_count(level) {
            let slot = table + index * PTE_BYTES;
            let pte = Pte(mem.read_pte(slot));
            if !pte.is_valid() {
                continue;
            }
            if pte.is_leaf() || level == 0 {
                empty = false;
                continue;
            }
            let child = pte.address();
            if self.unhook_empty_children(mem, child, level - 1, chain) {
                mem.write_pte(slot, Pte::INVALID.0);
                mem.write_pte(child, chain.unwrap_or(child));
                *chain = Some(child);
            } else {
                empty = false;
            }
        }
        empty
    }

    /// Number of entries in a table at `level`: the root has two extra index bits.
    fn entry_count(&self, level: usize) -> u64 {
        entry_count(self.mode, level)
    }

    /// Physical address of the entry that `gpa` selects in the table at `level`.
    fn slot(&self, table: u64, gpa: u64, level: usize) -> u64 {
        let shift = PAGE_OFFSET_BITS + INDEX_BITS * level as u32;
        let index = (gpa >> shift) & (self.entry_count(level) - 1);
        // `table` was checked to lie below 2^56 and the offset is below 16 KiB: no overflow.
        table + index * PTE_BYTES
    }

    fn check_gpa_range(&self, gpa: u64, len: u64) -> Result<(), MapError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.mode.gpa_limit() => Ok(()),
            _ => Err(MapError::GpaOutOfRange {
                gpa,
                len,
                mode: self.mode,
            }),
        }
    }
}

fn entry_count(mode: Mode, level: usize) -> u64 {
    let bits = if level == mode.root_level() {
        ROOT_INDEX_BITS
    } else {
        INDEX_BITS
    };
    1 << bits
}

/// Frees `table` and every table below it, children first.
fn free_subtree(mem: &mut impl TableMemory, table: u64, level: usize, root_level: usize) {
    let root = level == root_level;
    let entries = if root {
        1 << ROOT_INDEX_BITS
    } else {
        1 << INDEX_BITS
    };
    if level > 0 {
        for index in 0..entries {
            let pte = Pte(mem.read_pte(table + index * PTE_BYTES));
            if pte.is_valid() && !pte.is_leaf() {
                free_subtree(mem, pte.address(), level - 1, root_level);
            }
        }
    }
    let bytes = if root {
        ROOT_TABLE_BYTES
    } else {
        BASE_PAGE_BYTES
    };
    mem.free_table(table, bytes as usize);
}

/// Obtains a zeroed table and verifies the provider's address can be placed in a PTE.
fn allocate_table(mem: &mut impl TableMemory, bytes: u64) -> Result<u64, MapError> {
    // Both table sizes are powers of two and each table is aligned to its own size.
    let size = bytes as usize;
    let addr = mem
        .alloc_table(size, size)
        .ok_or(MapError::OutOfTableMemory { bytes: size })?;
    let fits = addr.checked_add(bytes).is_some_and(|end| end <= HPA_LIMIT);
    if !addr.is_multiple_of(bytes) || !fits {
        mem.free_table(addr, size);
        return Err(MapError::BadTableAddress { addr, bytes: size });
    }
    Ok(addr)
}

/// Rejects permissions the PTE cannot encode and drops bits that are not R, W or X, so a
/// caller cannot set V, U or PPN bits through a hand-built `Perm`.
fn checked_perm(perm: Perm) -> Result<Perm, MapError> {
    let perm = Perm::from_bits_truncate(perm.bits());
    if perm.is_empty() {
        return Err(MapError::EmptyPermission);
    }
    if perm.contains(Perm::WRITE) && !perm.contains(Perm::READ) {
        return Err(MapError::WriteWithoutRead);
    }
    Ok(perm)
}

fn check_alignment(gpa: u64, hpa: u64, alignment: u64) -> Result<(), MapError> {
    if !gpa.is_multiple_of(alignment) {
        return Err(MapError::MisalignedGpa { gpa, alignment });
    }
    if !hpa.is_multiple_of(alignment) {
        return Err(MapError::MisalignedHpa { hpa, alignment });
    }
    Ok(())
}

fn check_hpa_range(hpa: u64, len: u64) -> Result<(), MapError> {
    match hpa.checked_add(len) {
        Some(end) if end <= HPA_LIMIT => Ok(()),
        _ => Err(MapError::HpaOutOfRange { hpa, len }),
    }
}

/// Largest page that starts at `gpa` and `hpa` (both aligned to it) and fits in `remaining`.
fn largest_fitting_page(gpa: u64, hpa: u64, remaining: u64) -> PageSize {
    PageSize::DESCENDING
        .into_iter()
        .find(|size| {
            let bytes = size.bytes();
            gpa.is_multiple_of(bytes) && hpa.is_multiple_of(bytes) && remaining >= bytes
        })
        // Callers pass 4 KiB aligned values, which the smallest size always satisfies.
        .unwrap_or(PageSize::Size4K)
}

/// Builds the translation for a leaf found at `level`; `None` for anything else.
fn leaf_translation(pte: Pte, level: usize, gpa: u64) -> Option<Translation> {
    if !pte.is_leaf() {
        return None;
    }
    let page_size = PageSize::from_level(level)?;
    let offset = gpa & (page_size.bytes() - 1);
    Some(Translation {
        hpa: pte.address() | offset,
        perm: pte.perm(),
        page_size,
    })
}

/// The error for a request overlapping the leaf at `level` that covers `gpa`.
fn already_mapped(gpa: u64, level: usize) -> MapError {
    let existing_size = PageSize::from_level(level).unwrap_or(PageSize::Size1G);
    MapError::AlreadyMapped {
        gpa,
        existing_gpa: gpa & !(existing_size.bytes() - 1),
        existing_size,
    }
}

fn covered_by_larger_page(gpa: u64, requested: PageSize, level: usize) -> MapError {
    let existing_size = PageSize::from_level(level).unwrap_or(PageSize::Size1G);
    MapError::CoveredByLargerPage {
        gpa,
        requested,
        existing_gpa: gpa & !(existing_size.bytes() - 1),
        existing_size,
    }
}
