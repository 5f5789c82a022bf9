//! Capsule disks: extents of the machine's disk as read from an image, and the rules the parser and the writer share.

use core::fmt;
use core::ops::Range;

use crate::error::DiskProblem;
use crate::layout::{disk, DISK_ALIGNMENT, DISK_ENTRY_SIZE, MAX_DISK_NAME_LEN, SECTOR_SIZE};
use crate::parse::{u32_at, u64_at};

/// Sectors per [`DISK_ALIGNMENT`]: extents start and end at multiples of this many sectors.
const SECTORS_PER_ALIGNMENT: u64 = DISK_ALIGNMENT / SECTOR_SIZE;

/// One disk of a capsule: a validated extent of the machine's disk that the guest sees as a virtio-blk device.
///
/// The image cannot know how large the machine's disk is, so whoever attaches the disk must still check that
/// `start_sector + sectors` does not run past its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Disk<'a> {
    /// 1 to 20 ASCII letters, digits, `-`, `_` or `.`, unique within the capsule. The guest sees it as the
    /// device's virtio-blk ID (Linux: `/sys/block/vdX/serial`).
    pub name: &'a str,
    /// First sector of the extent on the machine's disk, in 512-byte sectors; a multiple of 8 (4 KiB).
    pub start_sector: u64,
    /// Length of the extent in 512-byte sectors: a non-zero multiple of 8 (4 KiB).
    pub sectors: u64,
    /// The guest may read the disk but not write it.
    pub read_only: bool,
}

impl Disk<'_> {
    /// The sector just past the extent. For a disk from a parsed image this never overflows, nor does it
    /// in bytes; for a hand-made `Disk` it saturates.
    pub fn end_sector(&self) -> u64 {
        self.start_sector.saturating_add(self.sectors)
    }

    /// The extent in bytes of the machine's disk (saturating, as [`Disk::end_sector`]).
    pub fn byte_range(&self) -> Range<u64> {
        self.start_sector.saturating_mul(SECTOR_SIZE)..self.end_sector().saturating_mul(SECTOR_SIZE)
    }

    /// Length of the extent in bytes (saturating, as [`Disk::end_sector`]).
    pub fn size_bytes(&self) -> u64 {
        self.sectors.saturating_mul(SECTOR_SIZE)
    }
}

/// Iterator over the disks of a [`crate::Capsule`], in table order. Each `Capsule` holds one that starts
/// at its first disk; copy it to iterate more than once.
#[derive(Clone, Copy)]
pub struct Disks<'a> {
    /// The validated disk table: whole entries only.
    table: &'a [u8],
}

impl<'a> Disks<'a> {
    /// A capsule without disks.
    pub const EMPTY: Disks<'static> = Disks { table: &[] };

    /// Iterates over the entries of `table`, which the parser has validated entry by entry.
    pub(crate) fn new(table: &'a [u8]) -> Self {
        Self { table }
    }

    /// Number of disks left to iterate over (all of them, for the capsule's own copy).
    pub fn len(&self) -> usize {
        self.table.len() / DISK_ENTRY_SIZE
    }

    /// Whether no disks are left to iterate over (for the capsule's own copy: it has none).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> Iterator for Disks<'a> {
    type Item = Disk<'a>;

    fn next(&mut self) -> Option<Disk<'a>> {
        while let Some((entry, rest)) = self.table.split_first_chunk::<DISK_ENTRY_SIZE>() {
            self.table = rest;
            // `parse` decoded every entry successfully, so this never skips anything.
            if let Ok(disk) = decode(entry) {
                return Some(disk);
            }
        }
        self.table = &[];
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.len()))
    }
}

impl PartialEq for Disks<'_> {
    /// Two lists are equal when they hold equal disks in the same order, wherever their bytes lie.
    fn eq(&self, other: &Self) -> bool {
        (*self).eq(*other)
    }
}

impl Eq for Disks<'_> {}

impl fmt::Debug for Disks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(*self).finish()
    }
}

/// A disk name held inline, so errors can name disks without borrowing the image or allocating.
pub type DiskName = crate::capsule::InlineName<MAX_DISK_NAME_LEN>;

/// Checks a disk name and returns it as a `str`.
///
/// The character rules are those of capsule names (the name is typed and printed the same way); the
/// length limit is that of a virtio-blk device ID, which the guest reads it as.
pub fn check_disk_name(bytes: &[u8]) -> Result<&str, DiskProblem> {
    if bytes.is_empty() {
        return Err(DiskProblem::EmptyName);
    }
    if bytes.len() > MAX_DISK_NAME_LEN {
        return Err(DiskProblem::NameTooLong {
            length: bytes.len(),
        });
    }
    let name = core::str::from_utf8(bytes).map_err(|_| DiskProblem::NameNotUtf8)?;
    if let Some(character) = name.chars().find(|character| {
        !(character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.'))
    }) {
        return Err(DiskProblem::NameInvalidCharacter { character });
    }
    Ok(name)
}

/// Checks an extent: 4 KiB aligned at both ends, not empty, and its end in bytes fits in 64 bits (so
/// whoever attaches the disk can compute byte offsets without overflow).
pub fn check_disk_extent(start_sector: u64, sectors: u64) -> Result<(), DiskProblem> {
    if !start_sector.is_multiple_of(SECTORS_PER_ALIGNMENT) {
        return Err(DiskProblem::StartMisaligned { start_sector });
    }
    if sectors == 0 || !sectors.is_multiple_of(SECTORS_PER_ALIGNMENT) {
        return Err(DiskProblem::BadSectorCount { sectors });
    }
    start_sector
        .checked_add(sectors)
        .and_then(|end| end.checked_mul(SECTOR_SIZE))
        .map(|_| ())
        .ok_or(DiskProblem::EndOverflows {
            start_sector,
            sectors,
        })
}

/// The bytes two extents share, if any. Extents that only touch (one ends where the other starts) share none.
pub(crate) fn overlap(first: (u64, u64), second: (u64, u64)) -> Option<Range<u64>> {
    let (first_start, first_sectors) = first;
    let (second_start, second_sectors) = second;
    let start = first_start.max(second_start);
    let end = first_start
        .saturating_add(first_sectors)
        .min(second_start.saturating_add(second_sectors));
    (start < end).then(|| start.saturating_mul(SECTOR_SIZE)..end.saturating_mul(SECTOR_SIZE))
}

/// Decodes and validates one disk table entry.
pub(crate) fn decode(entry: &[u8; DISK_ENTRY_SIZE]) -> Result<Disk<'_>, DiskProblem> {
    let flag_bits = u32_at(entry, disk::FLAGS);
    if flag_bits & !disk::flags::ALL != 0 {
        return Err(DiskProblem::UnknownFlags { flags: flag_bits });
    }
    for reserved in [
        disk::RESERVED_1..disk::FLAGS,
        disk::RESERVED_2..DISK_ENTRY_SIZE,
    ] {
        let bytes = entry.get(reserved.clone()).unwrap_or_default();
        if let Some(position) = bytes.iter().position(|&byte| byte != 0) {
            return Err(DiskProblem::ReservedNotZero {
                offset: reserved.start + position,
            });
        }
    }
    let length = usize::from(entry.get(disk::NAME_LENGTH).copied().unwrap_or_default());
    let field = entry
        .get(disk::NAME..disk::NAME + MAX_DISK_NAME_LEN)
        .unwrap_or_default();
    if length > MAX_DISK_NAME_LEN {
        return Err(DiskProblem::NameTooLong { length });
    }
    let (name, padding) = field.split_at(length);
    // Padding is zero so that a name has exactly one encoding.
    if let Some(position) = padding.iter().position(|&byte| byte != 0) {
        return Err(DiskProblem::NamePaddingNotZero {
            offset: disk::NAME + length + position,
        });
    }
    let name = check_disk_name(name)?;
    let start_sector = u64_at(entry, disk::START_SECTOR);
    let sectors = u64_at(entry, disk::SECTOR_COUNT);
    check_disk_extent(start_sector, sectors)?;
    Ok(Disk {
        name,
        start_sector,
        sectors,
        read_only: flag_bits & disk::flags::READ_ONLY != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert_eq!(check_disk_name(b"data-1.v_2"), Ok("data-1.v_2"));
        assert_eq!(check_disk_name(&[b'd'; 20]).map(str::len), Ok(20));
        assert_eq!(check_disk_name(b""), Err(DiskProblem::EmptyName));
        assert_eq!(
            check_disk_name(&[b'd'; 21]),
            Err(DiskProblem::NameTooLong { length: 21 })
        );
        assert_eq!(
            check_disk_name(&[b'a', 0x80]),
            Err(DiskProblem::NameNotUtf8)
        );
        assert_eq!(
            check_disk_name(b"da/ta"),
            Err(DiskProblem::NameInvalidCharacter { character: '/' })
        );
    }

    #[test]
    fn extent_rules() {
        assert_eq!(check_disk_extent(0, 8), Ok(()));
        assert_eq!(check_disk_extent(131_072, 131_072), Ok(()));
        assert_eq!(
            check_disk_extent(4, 8),
            Err(DiskProblem::StartMisaligned { start_sector: 4 })
        );
        assert_eq!(
            check_disk_extent(8, 0),
            Err(DiskProblem::BadSectorCount { sectors: 0 })
        );
        assert_eq!(
            check_disk_extent(8, 12),
            Err(DiskProblem::BadSectorCount { sectors: 12 })
        );
        // The largest extent whose end still fits in 64 bits as a byte offset.
        let last = u64::MAX / SECTOR_SIZE / 8 * 8;
        assert_eq!(check_disk_extent(last - 8, 8), Ok(()));
        assert_eq!(
            check_disk_extent(last, 8),
            Err(DiskProblem::EndOverflows {
                start_sector: last,
                sectors: 8
            })
        );
        let top = !7u64; // the largest multiple of 8
        assert_eq!(
            check_disk_extent(top, top),
            Err(DiskProblem::EndOverflows {
                start_sector: top,
                sectors: top
            })
        );
    }

    #[test]
    fn overlap_is_strict_about_touching() {
        assert_eq!(overlap((0, 8), (8, 8)), None);
        assert_eq!(overlap((16, 8), (8, 8)), None);
        assert_eq!(overlap((0, 16), (8, 16)), Some(4096..8192));
        assert_eq!(overlap((8, 8), (0, 32)), Some(4096..8192));
        assert_eq!(overlap((0, 8), (0, 8)), Some(0..4096));
    }

    #[test]
    fn disk_name_truncates_on_character_boundary() {
        assert_eq!(DiskName::new("data").as_str(), "data");
        let long: std::string::String = core::iter::repeat_n('\u{e9}', 15).collect();
        let name = DiskName::new(&long);
        assert_eq!(name.as_str().len(), 20);
        assert!(long.starts_with(name.as_str()));
    }

    #[test]
    fn byte_helpers() {
        let disk = Disk {
            name: "data",
            start_sector: 16,
            sectors: 8,
            read_only: false,
        };
        assert_eq!(disk.end_sector(), 24);
        assert_eq!(disk.byte_range(), 8192..12288);
        assert_eq!(disk.size_bytes(), 4096);
        let huge = Disk {
            start_sector: u64::MAX,
            sectors: u64::MAX,
            ..disk
        };
        assert_eq!(huge.byte_range(), u64::MAX..u64::MAX);
    }
}
