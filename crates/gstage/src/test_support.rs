//! A bounds-checked fake physical memory for testing page-table code on the host.
//!
//! [`FakeRam`] hands out page-aligned blocks from a `Vec`-backed arena placed at a fake physical
//! base address, and panics on any access that is not an aligned entry inside a currently
//! allocated table, on double frees and on frees with the wrong size. Panicking is deliberate:
//! in a test, such an access is a bug in the code under test and must fail loudly.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use crate::memory::TableMemory;

const FRAME_BYTES: u64 = 4096;
const WORDS_PER_FRAME: usize = (FRAME_BYTES / 8) as usize;

/// Fake RAM made of 4 KiB frames starting at a chosen physical address.
#[derive(Debug)]
pub struct FakeRam {
    base: u64,
    words: Vec<u64>,
    frame_in_use: Vec<bool>,
    /// Start address to size in bytes of every outstanding block.
    blocks: BTreeMap<u64, u64>,
    /// Allocations still permitted before `alloc_table` reports exhaustion; `None` is no limit.
    allocation_budget: Option<usize>,
    total_allocations: usize,
}

impl FakeRam {
    /// Physical address of the first frame when none is chosen: 2 GiB, like common RISC-V
    /// boards, so that a zero address never looks like a valid table.
    pub const DEFAULT_BASE: u64 = 0x8000_0000;

    /// Creates `frames` frames of 4 KiB at [`FakeRam::DEFAULT_BASE`].
    pub fn new(frames: usize) -> Self {
        Self::with_base(Self::DEFAULT_BASE, frames)
    }

    /// Creates `frames` frames of 4 KiB starting at physical address `base`.
    ///
    /// # Panics
    /// If `base` is not 4 KiB aligned or the arena would extend past 2^64.
    pub fn with_base(base: u64, frames: usize) -> Self {
        assert!(
            base.is_multiple_of(FRAME_BYTES),
            "fake RAM base {base:#x} is not 4 KiB aligned"
        );
        let bytes = (frames as u64).checked_mul(FRAME_BYTES);
        assert!(
            bytes.and_then(|bytes| base.checked_add(bytes)).is_some(),
            "fake RAM of {frames} frames at {base:#x} overflows the address space"
        );
        FakeRam {
            base,
            words: vec![0; frames * WORDS_PER_FRAME],
            frame_in_use: vec![false; frames],
            blocks: BTreeMap::new(),
            allocation_budget: None,
            total_allocations: 0,
        }
    }

    /// Limits how many more allocations succeed; `None` removes the limit.
    pub fn set_allocation_budget(&mut self, budget: Option<usize>) {
        self.allocation_budget = budget;
    }

    /// Number of blocks allocated and not yet freed.
    pub fn outstanding_tables(&self) -> usize {
        self.blocks.len()
    }

    /// Bytes allocated and not yet freed.
    pub fn outstanding_bytes(&self) -> u64 {
        self.blocks.values().sum()
    }

    /// Number of successful allocations since creation, whether freed since or not.
    pub fn total_allocations(&self) -> usize {
        self.total_allocations
    }

    /// Whether `addr` lies inside an outstanding block.
    pub fn is_allocated(&self, addr: u64) -> bool {
        self.block_containing(addr).is_some()
    }

    fn block_containing(&self, addr: u64) -> Option<(u64, u64)> {
        let (&start, &bytes) = self.blocks.range(..=addr).next_back()?;
        (addr - start < bytes).then_some((start, bytes))
    }

    /// Index into `words` of the entry at `addr`, after checking the access is legitimate.
    fn word_index(&self, addr: u64, access: &str) -> usize {
        assert!(
            addr.is_multiple_of(8),
            "{access} of misaligned page-table entry address {addr:#x}"
        );
        assert!(
            self.block_containing(addr).is_some(),
            "{access} at {addr:#x}, which is not inside an allocated table"
        );
        ((addr - self.base) / 8) as usize
    }

    fn frame_index(&self, addr: u64) -> usize {
        ((addr - self.base) / FRAME_BYTES) as usize
    }
}

impl TableMemory for FakeRam {
    fn alloc_table(&mut self, bytes: usize, align: usize) -> Option<u64> {
        let bytes = bytes as u64;
        assert!(
            bytes > 0 && bytes.is_multiple_of(FRAME_BYTES),
            "table size {bytes} is not a positive multiple of 4 KiB"
        );
        assert!(
            align.is_power_of_two(),
            "table alignment {align} is not a power of two"
        );
        if self.allocation_budget == Some(0) {
            return None;
        }
        let frames = (bytes / FRAME_BYTES) as usize;
        let align = (align as u64).max(FRAME_BYTES);
        // First fit over aligned starting frames.
        let first = (0..self.frame_in_use.len()).find(|&frame| {
            let addr = self.base + frame as u64 * FRAME_BYTES;
            addr.is_multiple_of(align)
                && frame + frames <= self.frame_in_use.len()
                && self.frame_in_use[frame..frame + frames]
                    .iter()
                    .all(|used| !used)
        })?;
        self.frame_in_use[first..first + frames].fill(true);
        let word = first * WORDS_PER_FRAME;
        self.words[word..word + frames * WORDS_PER_FRAME].fill(0);
        let addr = self.base + first as u64 * FRAME_BYTES;
        self.blocks.insert(addr, bytes);
        self.total_allocations += 1;
        if let Some(budget) = self.allocation_budget.as_mut() {
            *budget -= 1;
        }
        Some(addr)
    }

    fn free_table(&mut self, addr: u64, bytes: usize) {
        let recorded = self.blocks.get(&addr).copied();
        assert!(
            recorded.is_some(),
            "free of {addr:#x}, which is not the start of an allocated table"
        );
        assert_eq!(
            recorded,
            Some(bytes as u64),
            "free of table {addr:#x} with a size different from its allocation"
        );
        self.blocks.remove(&addr);
        let first = self.frame_index(addr);
        let frames = bytes / FRAME_BYTES as usize;
        self.frame_in_use[first..first + frames].fill(false);
        // Poison freed memory so a stale pointer that slipped past the bounds checks reads junk.
        let word = first * WORDS_PER_FRAME;
        self.words[word..word + frames * WORDS_PER_FRAME].fill(0xdead_beef_dead_beef);
    }

    fn read_pte(&self, addr: u64) -> u64 {
        self.words[self.word_index(addr, "read")]
    }

    fn write_pte(&mut self, addr: u64, pte: u64) {
        let index = self.word_index(addr, "write");
        self.words[index] = pte;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_zeroed_and_tracked() {
        let mut ram = FakeRam::with_base(0x8000_1000, 16);
        let small = ram.alloc_table(4096, 4096).expect("4 KiB table");
        assert_eq!(small, 0x8000_1000);
        let root = ram.alloc_table(16384, 16384).expect("16 KiB table");
        assert_eq!(root % 16384, 0);
        assert_eq!(ram.outstanding_tables(), 2);
        assert_eq!(ram.outstanding_bytes(), 4096 + 16384);
        for offset in (0..16384).step_by(8) {
            assert_eq!(ram.read_pte(root + offset), 0);
        }
        ram.write_pte(small + 8, 0x1234);
        assert_eq!(ram.read_pte(small + 8), 0x1234);
        ram.free_table(small, 4096);
        // The freed frame is handed out again, zeroed.
        let again = ram.alloc_table(4096, 4096).expect("reused table");
        assert_eq!(again, small);
        assert_eq!(ram.read_pte(again + 8), 0);
        assert_eq!(ram.total_allocations(), 3);
    }

    #[test]
    fn exhaustion_and_budget_return_none() {
        let mut ram = FakeRam::new(2);
        assert!(
            ram.alloc_table(16384, 16384).is_none(),
            "4 frames requested from 2"
        );
        ram.set_allocation_budget(Some(1));
        assert!(ram.alloc_table(4096, 4096).is_some());
        assert!(ram.alloc_table(4096, 4096).is_none(), "budget spent");
        ram.set_allocation_budget(None);
        assert!(ram.alloc_table(4096, 4096).is_some());
        assert!(ram.alloc_table(4096, 4096).is_none(), "arena full");
    }

    #[test]
    #[should_panic(expected = "not inside an allocated table")]
    fn read_outside_a_table_panics() {
        let mut ram = FakeRam::new(4);
        let table = ram.alloc_table(4096, 4096).expect("table");
        ram.read_pte(table + 4096);
    }

    #[test]
    #[should_panic(expected = "not inside an allocated table")]
    fn write_after_free_panics() {
        let mut ram = FakeRam::new(4);
        let table = ram.alloc_table(4096, 4096).expect("table");
        ram.free_table(table, 4096);
        ram.write_pte(table, 1);
    }

    #[test]
    #[should_panic(expected = "misaligned")]
    fn misaligned_access_panics() {
        let mut ram = FakeRam::new(4);
        let table = ram.alloc_table(4096, 4096).expect("table");
        ram.read_pte(table + 4);
    }

    #[test]
    #[should_panic(expected = "not the start of an allocated table")]
    fn double_free_panics() {
        let mut ram = FakeRam::new(4);
        let table = ram.alloc_table(4096, 4096).expect("table");
        ram.free_table(table, 4096);
        ram.free_table(table, 4096);
    }

    #[test]
    #[should_panic(expected = "different from its allocation")]
    fn free_with_wrong_size_panics() {
        let mut ram = FakeRam::new(8);
        let table = ram.alloc_table(16384, 16384).expect("table");
        ram.free_table(table, 4096);
    }
}
