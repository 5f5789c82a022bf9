//! Manifest images on the machine's disk: more capsules than the bundled image holds.
//!
//! A DMFS image may sit at the very start of the host disk (sector 0 holds its header). The first time a capsule
//! is asked for that the bundled image does not have, Keel reads that image into memory, checks its signature with
//! the same key and rules as the bundled image's, parses it and keeps it. Nothing of it is used before the
//! signature check; a refused image is reported and not retried, and the bundled capsules run on regardless.
//! Capsule disks are extents of the same disk, so manifests place them after the image.

use alloc::{format, string::String};

use spin::Once;

use crate::{hostdev, memory, verify};

/// Bytes in a disk sector.
const SECTOR: usize = 512;
/// The largest storage image Keel reads.
const MAX_IMAGE_BYTES: u64 = 256 << 20;
/// `magic` and `image_length` in the DMFS header (crates/dmfs/FORMAT.md).
const MAGIC: &[u8; 8] = b"KEELDMFS";
const IMAGE_LENGTH_OFFSET: usize = 0x10;

/// The outcome of the first look at the disk, kept so it is done once.
static STORAGE: Once<Result<keel_dmfs::Image<'static>, String>> = Once::new();

/// The image on the host disk, reading and checking it on first use; `Err` says why there is none.
pub fn image() -> Result<&'static keel_dmfs::Image<'static>, &'static str> {
    match STORAGE.call_once(load) {
        Ok(image) => Ok(image),
        Err(why) => Err(why.as_str()),
    }
}

/// The length the DMFS header at sector 0 declares, or `None` when sector 0 holds no DMFS header.
fn header_length() -> Result<Option<u64>, String> {
    let mut first = [0u8; SECTOR];
    hostdev::disk_read(0, &mut first).map_err(|error| format!("the disk's first sector cannot be read ({error:?})"))?;
    if &first[..MAGIC.len()] != MAGIC {
        return Ok(None);
    }
    let mut length_bytes = [0u8; 8];
    length_bytes.copy_from_slice(&first[IMAGE_LENGTH_OFFSET..IMAGE_LENGTH_OFFSET + 8]);
    Ok(Some(u64::from_le_bytes(length_bytes)))
}

fn load() -> Result<keel_dmfs::Image<'static>, String> {
    let sectors = hostdev::disk_sectors().ok_or_else(|| String::from("the machine has no disk"))?;
    let length = header_length()?
        .ok_or_else(|| String::from("the disk holds no manifest image (no DMFS header in its first sector)"))?;
    let disk_bytes = sectors * SECTOR as u64;
    if length == 0 || length > MAX_IMAGE_BYTES || length > disk_bytes {
        return Err(format!(
            "the disk's manifest image claims {length} bytes; at most {MAX_IMAGE_BYTES} (and the disk's {disk_bytes}) are allowed"
        ));
    }
    // Whole pages from the page allocator, not the heap: an image can be far larger than Keel's heap.
    let pages = (length as usize).div_ceil(memory::PAGE_SIZE);
    let address = memory::alloc_pages_unzeroed(pages)
        .ok_or_else(|| format!("there is not enough free memory to read the disk's {length}-byte manifest image"))?;
    // SAFETY: the allocator gave these pages to this function alone; Keel addresses RAM physically.
    let buffer = unsafe { core::slice::from_raw_parts_mut(address as *mut u8, pages * memory::PAGE_SIZE) };
    let result = read_and_check(buffer, length as usize);
    match result {
        Ok(image) => {
            log::info!(
                "manifest image on the disk: {} KiB, {} capsule(s), signature verified",
                length >> 10,
                image.capsules().count()
            );
            Ok(image)
        }
        Err(why) => {
            memory::free_pages(address, pages);
            Err(why)
        }
    }
}

/// Reads the image into `buffer` (whole sectors, a megabyte per request), checks its signature and parses it. The
/// buffer is kept for as long as Keel runs when this succeeds: capsules started from the image borrow their
/// kernels and command lines from it.
fn read_and_check(buffer: &'static mut [u8], length: usize) -> Result<keel_dmfs::Image<'static>, String> {
    const CHUNK: usize = 1 << 20;
    let padded = length.next_multiple_of(SECTOR);
    for (index, piece) in buffer[..padded].chunks_mut(CHUNK).enumerate() {
        let sector = (index * CHUNK / SECTOR) as u64;
        hostdev::disk_read(sector, piece)
            .map_err(|error| format!("the disk's manifest image cannot be read at sector {sector} ({error:?})"))?;
    }
    let bytes: &'static [u8] = &buffer[..length];
    verify::check_image(bytes).map(|(image, _)| image).map_err(|why| format!("the disk's manifest image is refused: {why}"))
}

/// Sectors at the start of the machine's disk that a manifest image there occupies, by its header (0 when there is
/// no disk or no image). Capsule disks may not overlap them, whether or not the image was loaded yet.
pub fn sectors_in_use() -> u64 {
    if let Some(Ok(image)) = STORAGE.get() {
        return (image.len() as u64).div_ceil(SECTOR as u64);
    }
    match header_length() {
        Ok(Some(length)) => length.div_ceil(SECTOR as u64),
        _ => 0,
    }
}
