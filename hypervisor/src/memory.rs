//! Host physical memory: the page allocator that capsules, page tables and stacks come from, and Keel's heap.
//!
//! Keel runs with address translation off (`satp` = Bare), so a physical address is also a pointer.
//!
//! ```text
//!  0x8000_0000  +---------------------------+
//!               | SBI firmware (OpenSBI)    |  reserved by the firmware (PMP-protected)
//!  0x8020_0000  +---------------------------+
//!               | Keel: text, rodata        |
//!               | bundled manifest image    |
//!               | data, bss, boot stack     |
//!  __image_end  +---------------------------+
//!               | free pages: heap, capsule |  buddy allocator, 4 KiB frames
//!               | RAM, G-stage tables, ...  |
//!               +---------------------------+
//!               | host device tree          |  left untouched (QEMU puts it near the top)
//!  RAM end      +---------------------------+
//! ```

use core::sync::atomic::{AtomicUsize, Ordering};

use buddy_system_allocator::{FrameAllocator, LockedHeap};
use keel_devicetree::Region;
use spin::Mutex;

/// The size of a base page.
pub const PAGE_SIZE: usize = 4096;
const PAGE_SHIFT: usize = 12;

/// Heap available before the device tree is parsed.
const EARLY_HEAP: usize = 512 * 1024;
/// Heap added once free memory is known.
const MAIN_HEAP: usize = 8 * 1024 * 1024;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

static FRAMES: Mutex<FrameAllocator<32>> = Mutex::new(FrameAllocator::new());
static FREE_BYTES: AtomicUsize = AtomicUsize::new(0);
static TOTAL_BYTES: AtomicUsize = AtomicUsize::new(0);

#[repr(C, align(4096))]
struct EarlyHeap([u8; EARLY_HEAP]);
static mut EARLY_HEAP_SPACE: EarlyHeap = EarlyHeap([0; EARLY_HEAP]);

/// Gives the heap its first memory (from `.bss`), enough to parse the device tree.
pub fn init_early_heap() {
    // SAFETY: called once on the boot hart before anything allocates; the array is never used any other way.
    unsafe {
        let start = core::ptr::addr_of_mut!(EARLY_HEAP_SPACE) as usize;
        HEAP.lock().init(start, EARLY_HEAP);
    }
}

/// The extent of Keel's own image in memory.
pub fn image_range() -> (usize, usize) {
    unsafe extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }
    (core::ptr::addr_of!(__image_start) as usize, core::ptr::addr_of!(__image_end) as usize)
}

/// Subtracts `holes` from `ranges` (all half-open [start, end)), writing the pieces that remain into `out`.
fn subtract(ranges: &[(usize, usize)], holes: &[(usize, usize)], out: &mut alloc::vec::Vec<(usize, usize)>) {
    out.clear();
    out.extend_from_slice(ranges);
    for &(hole_start, hole_end) in holes {
        let mut next = alloc::vec::Vec::with_capacity(out.len() + 1);
        for &(start, end) in out.iter() {
            if hole_end <= start || hole_start >= end {
                next.push((start, end));
                continue;
            }
            if start < hole_start {
                next.push((start, hole_start));
            }
            if hole_end < end {
                next.push((hole_end, end));
            }
        }
        *out = next;
    }
}

/// Hands every free page of RAM to the page allocator: RAM minus the firmware and Keel (everything below the end
/// of Keel's image), reserved regions and the device tree. Then grows the heap.
pub fn init(memory: &[Region], reserved: &[Region], fdt: (usize, usize)) {
    let (_, image_end) = image_range();
    let ram: alloc::vec::Vec<(usize, usize)> =
        memory.iter().map(|r| (r.base as usize, (r.base + r.size) as usize)).collect();
    let mut holes: alloc::vec::Vec<(usize, usize)> =
        reserved.iter().map(|r| (r.base as usize, (r.base + r.size) as usize)).collect();
    holes.push(fdt);
    for &(start, _) in &ram {
        if start < image_end {
            holes.push((start, image_end));
        }
    }
    let mut free = alloc::vec::Vec::new();
    subtract(&ram, &holes, &mut free);

    let mut frames = FRAMES.lock();
    let mut total = 0;
    for (start, end) in free {
        let first = start.div_ceil(PAGE_SIZE);
        let last = end / PAGE_SIZE;
        if last > first {
            frames.add_frame(first, last);
            total += (last - first) * PAGE_SIZE;
        }
    }
    drop(frames);
    TOTAL_BYTES.store(total, Ordering::Release);
    FREE_BYTES.store(total, Ordering::Release);

    if let Some(heap) = alloc_pages(MAIN_HEAP / PAGE_SIZE) {
        // SAFETY: the pages were just taken from the allocator and belong to nobody else.
        unsafe { HEAP.lock().add_to_heap(heap, heap + MAIN_HEAP) };
    }
}

/// Allocates `count` contiguous pages, aligned to the next power of two of `count` pages, zeroed.
pub fn alloc_pages(count: usize) -> Option<usize> {
    let address = alloc_pages_unzeroed(count)?;
    // SAFETY: the allocator handed these pages out to us alone; Keel addresses RAM physically.
    unsafe { core::ptr::write_bytes(address as *mut u8, 0, count * PAGE_SIZE) };
    Some(address)
}

/// Allocates like [`alloc_pages`] without zeroing, for memory whose user overwrites or does not care about what
/// was there: guest RAM. This leaks nothing between capsules because every page is scrubbed when it is freed
/// ([`free_pages`]); a page never freed since boot holds only what was in RAM before Keel started. Skipping the
/// zeroing saves writing a capsule's whole RAM on the boot path.
pub fn alloc_pages_unzeroed(count: usize) -> Option<usize> {
    let frame = FRAMES.lock().alloc(count)?;
    let bytes = count.next_power_of_two() * PAGE_SIZE;
    FREE_BYTES.fetch_sub(bytes, Ordering::AcqRel);
    Some(frame << PAGE_SHIFT)
}

/// Returns pages from `alloc_pages`, scrubbing them first so nothing of their last owner remains.
pub fn free_pages(address: usize, count: usize) {
    // SAFETY: the caller owned the pages and no longer uses them.
    unsafe { core::ptr::write_bytes(address as *mut u8, 0, count * PAGE_SIZE) };
    FRAMES.lock().dealloc(address >> PAGE_SHIFT, count);
    FREE_BYTES.fetch_add(count.next_power_of_two() * PAGE_SIZE, Ordering::AcqRel);
}

/// Bytes of RAM the page allocator has free now.
pub fn free_bytes() -> usize {
    FREE_BYTES.load(Ordering::Acquire)
}

/// Bytes of RAM the page allocator managed at boot.
pub fn total_bytes() -> usize {
    TOTAL_BYTES.load(Ordering::Acquire)
}
