//! Manifest images on the machine's disk: more capsules than the bundled image holds.
//!
//! A DMFS image may sit at the very start of the host disk (sector 0 holds its header). The first time a capsule
//! is asked for that the bundled image does not have, Keel reads that image into memory, checks its signature with
//! the same key and rules as the bundled image's, parses it and keeps it. Nothing of it is used before the
//! signature check; a refused image is reported and not retried, and the bundled capsules run on regardless.
//! Capsule disks are extents of the same disk, so manifests place them after the image.

use alloc::{boxed::Box, format, string::String, vec};

use spin::Once;

use crate::{hostdev, verify};

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

fn load() -> Result<keel_dmfs::Image<'static>, String> {
    let sectors = hostdev::disk_sectors().ok_or_else(|| String::from("the machine has no disk"))?;
    let mut first = [0u8; SECTOR];
    hostdev::disk_read(0, &mut first).map_err(|error| format!("the disk's first sector cannot be read ({error:?})"))?;
    if &first[..MAGIC.len()] != MAGIC {
        return Err(String::from("the disk holds no manifest image (no DMFS header in its first sector)"));
    }
    let mut length_bytes = [0u8; 8];
    length_bytes.copy_from_slice(&first[IMAGE_LENGTH_OFFSET..IMAGE_LENGTH_OFFSET + 8]);
    let length = u64::from_le_bytes(length_bytes);
    let disk_bytes = sectors * SECTOR as u64;
    if length == 0 || length > MAX_IMAGE_BYTES || length > disk_bytes {
        return Err(format!(
            "the disk's manifest image claims {length} bytes; at most {} (and the disk's {disk_bytes}) are allowed",
            MAX_IMAGE_BYTES
        ));
    }
    let mut bytes = vec![0u8; (length as usize).next_multiple_of(SECTOR)].into_boxed_slice();
    hostdev::disk_read(0, &mut bytes).map_err(|error| format!("the disk's manifest image cannot be read ({error:?})"))?;
    // Kept for as long as Keel runs: capsules started from it borrow their kernels and command lines from it.
    let bytes: &'static [u8] = Box::leak(bytes);
    verify::check_image(bytes).map_err(|why| format!("the disk's manifest image is refused: {why}"))?;
    let image = keel_dmfs::Image::parse(bytes).map_err(|error| format!("the disk's manifest image is unusable: {error}"))?;
    log::info!(
        "manifest image on the disk: {} KiB, {} capsule(s), signature verified",
        length >> 10,
        image.capsules().count()
    );
    Ok(image)
}

/// Sectors at the start of the machine's disk that a manifest image there occupies, by its header (0 when there is
/// no disk or no image). Capsule disks may not overlap them, whether or not the image was loaded yet.
pub fn sectors_in_use() -> u64 {
    if let Some(Ok(image)) = STORAGE.get() {
        return (image.len() as u64).div_ceil(SECTOR as u64);
    }
    let mut first = [0u8; SECTOR];
    if hostdev::disk_read(0, &mut first).is_err() || &first[..MAGIC.len()] != MAGIC {
        return 0;
    }
    let mut length_bytes = [0u8; 8];
    length_bytes.copy_from_slice(&first[IMAGE_LENGTH_OFFSET..IMAGE_LENGTH_OFFSET + 8]);
    u64::from_le_bytes(length_bytes).div_ceil(SECTOR as u64)
}
