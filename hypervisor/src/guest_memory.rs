//! A capsule's RAM: host pages in 2 MiB chunks, mapped contiguously at the capsule's guest-physical base.
//!
//! Chunks need not be contiguous in host memory, which keeps allocation easy when RAM is fragmented, and 2 MiB
//! chunks let the G-stage tables use megapages. Where a whole, aligned gibibyte of the capsule's guest-physical
//! space can be backed by an aligned gibibyte of host memory, it is, so the G-stage tables map it with one
//! gigapage: every guest TLB refill then walks one G-stage level fewer for each of its reads. Every
//! guest-supplied address is checked here before Keel touches the memory behind it.

use alloc::vec::Vec;
use core::fmt;

use crate::memory;

/// Size of one chunk of guest RAM.
pub const CHUNK: u64 = 2 * 1024 * 1024;
const PAGES_PER_CHUNK: usize = (CHUNK as usize) / memory::PAGE_SIZE;
/// Size of a G-stage gigapage, the larger block guest RAM is taken in when it can be.
pub const GIGAPAGE: u64 = 1024 * 1024 * 1024;
const CHUNKS_PER_GIGAPAGE: usize = (GIGAPAGE / CHUNK) as usize;

/// The RAM of one capsule.
pub struct GuestMemory {
    base: u64,
    chunks: Vec<usize>,
    owner: u32,
}

impl GuestMemory {
    /// Allocates `size` bytes (a multiple of 2 MiB) of RAM to appear at guest-physical `base`. It is not zeroed:
    /// see [`memory::alloc_pages_unzeroed`] for why that leaks nothing between capsules.
    pub fn allocate(base: u64, size: u64, owner: u32) -> Option<Self> {
        if size == 0 || !size.is_multiple_of(CHUNK) {
            return None;
        }
        let count = (size / CHUNK) as usize;
        let mut memory = GuestMemory { base, chunks: Vec::with_capacity(count), owner };
        while memory.chunks.len() < count {
            let gpa = base + memory.chunks.len() as u64 * CHUNK;
            let whole_gigapage = gpa.is_multiple_of(GIGAPAGE) && count - memory.chunks.len() >= CHUNKS_PER_GIGAPAGE;
            // The buddy allocator aligns a block to its size, so a gigabyte block is gigapage-aligned.
            if let Some(block) = whole_gigapage.then(|| memory::alloc_pages_unzeroed(GIGAPAGE as usize / memory::PAGE_SIZE)).flatten()
            {
                for index in 0..CHUNKS_PER_GIGAPAGE {
                    let chunk = block + index * CHUNK as usize;
                    ledger::claim(chunk, owner);
                    memory.chunks.push(chunk);
                }
                continue;
            }
            match memory::alloc_pages_unzeroed(PAGES_PER_CHUNK) {
                Some(chunk) => {
                    ledger::claim(chunk, owner);
                    memory.chunks.push(chunk);
                }
                // Dropping `memory` returns what was already allocated.
                None => return None,
            }
        }
        Some(memory)
    }

    /// The capsule this RAM belongs to.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Guest-physical base.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK
    }

    /// The host-physical chunks in guest order, for mapping.
    pub fn chunks(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.chunks.iter().enumerate().map(move |(i, &hpa)| (self.base + i as u64 * CHUNK, hpa))
    }

    /// The RAM as runs of chunks that are contiguous in host memory too: `(gpa, hpa, bytes)` in guest order. Mapping
    /// a run at once lets the G-stage tables use the largest pages its alignment allows.
    pub fn extents(&self) -> impl Iterator<Item = (u64, usize, u64)> + '_ {
        let mut chunks = self.chunks().peekable();
        core::iter::from_fn(move || {
            let (gpa, hpa) = chunks.next()?;
            let mut bytes = CHUNK;
            while chunks.next_if(|&(_, next)| next == hpa + bytes as usize).is_some() {
                bytes += CHUNK;
            }
            Some((gpa, hpa, bytes))
        })
    }

    /// Whether `[gpa, gpa + len)` lies entirely inside this RAM.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        match (gpa.checked_sub(self.base), gpa.checked_add(len)) {
            (Some(offset), Some(_)) => offset.checked_add(len).is_some_and(|end| end <= self.size()),
            _ => false,
        }
    }

    /// Visits the host memory behind `[gpa, gpa + len)` piece by piece, or fails if any of it is outside this RAM.
    fn for_each_piece(&self, gpa: u64, len: usize, mut visit: impl FnMut(*mut u8, usize, usize)) -> Result<(), ()> {
        if !self.contains(gpa, len as u64) {
            return Err(());
        }
        let mut done = 0usize;
        while done < len {
            let offset = gpa - self.base + done as u64;
            let chunk = (offset / CHUNK) as usize;
            let within = (offset % CHUNK) as usize;
            let piece = (CHUNK as usize - within).min(len - done);
            visit((self.chunks[chunk] + within) as *mut u8, done, piece);
            done += piece;
        }
        Ok(())
    }

    /// Copies `data` into guest RAM at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), ()> {
        self.for_each_piece(gpa, data.len(), |host, done, piece| {
            // SAFETY: `host..host + piece` lies inside one chunk this capsule owns, and `data` is ordinary memory
            // that cannot overlap guest RAM handed out by the page allocator.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr().add(done), host, piece) };
        })
    }

    /// Copies guest RAM at `gpa` into `out`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), ()> {
        let len = out.len();
        let out_ptr = out.as_mut_ptr();
        self.for_each_piece(gpa, len, |host, done, piece| {
            // SAFETY: as in `write`, in the other direction.
            unsafe { core::ptr::copy_nonoverlapping(host, out_ptr.add(done), piece) };
        })
    }

    /// The host-physical memory behind this RAM as compact ranges, for the log (a test matches them between
    /// capsules to see that freed memory is reused, and scrubbed).
    pub fn host_ranges(&self) -> HostRanges {
        // Kept in order by inserting each chunk in its place: a few hundred at most, and no sort routine in the image.
        let mut chunks: Vec<usize> = Vec::with_capacity(self.chunks.len());
        for &chunk in &self.chunks {
            let at = chunks.partition_point(|&known| known < chunk);
            chunks.insert(at, chunk);
        }
        HostRanges(chunks)
    }

    /// Zeroes all of this RAM.
    pub fn scrub(&self) {
        for &chunk in &self.chunks {
            // SAFETY: the chunk belongs to this capsule alone.
            unsafe { core::ptr::write_bytes(chunk as *mut u8, 0, CHUNK as usize) };
        }
    }
}

/// Sorted host chunk addresses; shown as `0x88000000..0x89000000 0x8a000000..0x8a200000`, adjacent chunks merged.
pub struct HostRanges(Vec<usize>);

impl fmt::Display for HostRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chunk = CHUNK as usize;
        let mut chunks = self.0.iter().copied();
        let Some(mut start) = chunks.next() else { return f.write_str("none") };
        let mut end = start + chunk;
        for next in chunks {
            if next != end {
                write!(f, "{start:#x}..{end:#x} ")?;
                start = next;
            }
            end = next + chunk;
        }
        write!(f, "{start:#x}..{end:#x}")
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for &chunk in &self.chunks {
            ledger::release(chunk, self.owner);
            memory::free_pages(chunk, PAGES_PER_CHUNK);
        }
    }
}

/// Which capsule owns each chunk of guest RAM, kept and checked in every build. The invariants: a chunk is handed
/// to one capsule at a time, only its owner's G-stage maps it, only its owner frees it, and Keel's own pages
/// (G-stage tables) are never guest RAM. The checks run when RAM is allocated, mapped or freed, never on the exit
/// path, so they cost nothing that matters; a broken invariant stops Keel rather than let a page leak between
/// capsules.
pub mod ledger {
    use alloc::vec::Vec;

    use spin::Mutex;

    use super::CHUNK;

    /// `(chunk, owner)` pairs sorted by chunk address: a few hundred at most (1 GiB is 512 chunks), so a sorted
    /// vector serves as well as a tree and costs far less code.
    static OWNERS: Mutex<Vec<(usize, u32)>> = Mutex::new(Vec::new());

    fn owner_of(owners: &[(usize, u32)], chunk: usize) -> Option<u32> {
        owners.binary_search_by_key(&chunk, |&(start, _)| start).ok().map(|index| owners[index].1)
    }

    /// Records that `chunk` now belongs to capsule `owner`; it must have belonged to nobody.
    pub fn claim(chunk: usize, owner: u32) {
        let mut owners = OWNERS.lock();
        match owners.binary_search_by_key(&chunk, |&(start, _)| start) {
            Ok(index) => {
                let previous = owners[index].1;
                panic!("RAM chunk {chunk:#x} handed to capsule {owner} while capsule {previous} owns it");
            }
            Err(index) => owners.insert(index, (chunk, owner)),
        }
    }

    /// Records that `owner` gave `chunk` back; it must have been `owner`'s.
    pub fn release(chunk: usize, owner: u32) {
        let mut owners = OWNERS.lock();
        let found = owners.binary_search_by_key(&chunk, |&(start, _)| start).ok();
        let previous = found.map(|index| owners[index].1);
        assert_eq!(previous, Some(owner), "RAM chunk {chunk:#x} freed by capsule {owner} but owned by {previous:?}");
        if let Some(index) = found {
            owners.remove(index);
        }
    }

    /// Checks that the chunk holding host address `address` belongs to `owner` (before mapping it for `owner`).
    pub fn assert_owned_by(address: usize, owner: u32) {
        let chunk = address & !(CHUNK as usize - 1);
        let found = owner_of(&OWNERS.lock(), chunk);
        assert_eq!(found, Some(owner), "host {address:#x} mapped into capsule {owner} but owned by {found:?}");
    }

    /// Checks that host address `address` is not guest RAM of any capsule (Keel's own pages).
    pub fn assert_not_guest_ram(address: usize) {
        let chunk = address & !(CHUNK as usize - 1);
        let found = owner_of(&OWNERS.lock(), chunk);
        assert!(found.is_none(), "Keel page {address:#x} lies in RAM of capsule {found:?}");
    }
}
