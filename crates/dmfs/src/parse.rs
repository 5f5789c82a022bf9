//! Zero-copy parser: validates a whole image up front, then hands out capsules that borrow it.

use core::fmt;

use crate::capsule::{
    check_cmdline, check_memory, check_name, check_vcpus, Capsule, CapsuleName, KernelFormat,
    RestartPolicy,
};
use crate::crc::checksum;
use crate::disk::{self, DiskName, Disks};
use crate::error::{CapsuleProblem, DiskLocation, Field, FieldProblem, FormatError};
use crate::layout::{
    flags, header, record, DISK_ENTRY_SIZE, FORMAT_VERSION, HEADER_SIZE, KEY_ID_LEN, MAC_LEN,
    MAGIC, MAX_CAPSULES, MAX_DISKS, OLDEST_FORMAT_VERSION, PAYLOAD_ALIGNMENT, RECORD_SIZE,
    TABLE_ALIGNMENT,
};
use crate::mac;
use crate::signature::{KeyId, SignatureScheme, SignedMessage};

/// Reads `W` bytes at a fixed, in-bounds offset of a fixed-size array.
///
/// Callers only pass offsets from [`crate::layout`], which lie inside the array, so the fallback
/// of zeros is never observed; it exists so that no input can make this panic.
pub(crate) fn bytes_at<const N: usize, const W: usize>(array: &[u8; N], offset: usize) -> [u8; W] {
    let mut field = [0u8; W];
    if let Some(source) = offset.checked_add(W).and_then(|end| array.get(offset..end)) {
        field.copy_from_slice(source);
    }
    field
}

pub(crate) fn u16_at<const N: usize>(array: &[u8; N], offset: usize) -> u16 {
    u16::from_le_bytes(bytes_at(array, offset))
}

pub(crate) fn u32_at<const N: usize>(array: &[u8; N], offset: usize) -> u32 {
    u32::from_le_bytes(bytes_at(array, offset))
}

pub(crate) fn u64_at<const N: usize>(array: &[u8; N], offset: usize) -> u64 {
    u64::from_le_bytes(bytes_at(array, offset))
}

/// `usize` to `u64`; lossless on every supported target (pointers are at most 64 bits).
fn to_u64(value: usize) -> u64 {
    value as u64
}

/// A validated DMFS image borrowed from its bytes.
#[derive(Clone, Copy)]
pub struct Image<'a> {
    /// Exactly the image: trailing bytes of the buffer beyond the declared length are dropped.
    bytes: &'a [u8],
    /// The capsule table, `count * RECORD_SIZE` bytes.
    table: &'a [u8],
    table_offset: u64,
    table_end: u64,
    count: u32,
    version: u16,
    scheme: SignatureScheme,
}

/// Whether [`Image::parse`] sums the image to compare with its stored checksum.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checksum {
    Compute,
    #[cfg_attr(not(feature = "ed25519"), allow(dead_code, reason = "only signed images skip the sum"))]
    CoveredBySignature,
}

/// Checks the parts of the header that say where the image is, and returns the header and exactly
/// the image's bytes (without any trailing padding of `bytes`).
///
/// This is all that signature verification needs, so an image can be verified before the rest of
/// it (checksum, capsule table, records) is looked at.
pub(crate) fn frame(bytes: &[u8]) -> Result<(&[u8; HEADER_SIZE], &[u8]), FormatError> {
    // Look at the magic and version before insisting on a full header, so that a short foreign
    // file is reported as foreign rather than as truncated.
    if let Some(found) = bytes.get(..MAGIC.len()) {
        if found != MAGIC {
            let mut magic = [0u8; 8];
            magic.copy_from_slice(found);
            return Err(FormatError::BadMagic { found: magic });
        }
    }
    if let Some(&[low, high]) = bytes.get(header::VERSION..header::VERSION + 2) {
        let found = u16::from_le_bytes([low, high]);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
            return Err(FormatError::UnsupportedVersion { found });
        }
    }
    let head: &[u8; HEADER_SIZE] = bytes
        .get(..HEADER_SIZE)
        .and_then(|head| head.try_into().ok())
        .ok_or(FormatError::Truncated {
            length: bytes.len(),
        })?;

    let header_size = u16_at(head, header::HEADER_SIZE);
    if usize::from(header_size) != HEADER_SIZE {
        return Err(FormatError::BadHeaderSize { found: header_size });
    }
    let record_size = u32_at(head, header::RECORD_SIZE);
    if usize::try_from(record_size).ok() != Some(RECORD_SIZE) {
        return Err(FormatError::BadRecordSize { found: record_size });
    }

    let image_length = u64_at(head, header::IMAGE_LENGTH);
    if image_length < to_u64(HEADER_SIZE) {
        return Err(FormatError::ImageLengthTooSmall { image_length });
    }
    let image = usize::try_from(image_length)
        .ok()
        .and_then(|length| bytes.get(..length))
        .ok_or(FormatError::ImageTruncated {
            image_length,
            available: bytes.len(),
        })?;
    Ok((head, image))
}

impl<'a> Image<'a> {
    /// Validates `bytes` as an image and returns a view of it.
    ///
    /// `bytes` may be longer than the image (for example rounded up to whole pages); the extra
    /// bytes are ignored. Every rule in `FORMAT.md` is checked here, so the accessors cannot fail.
    /// The signature is not: that needs a public key (`verify`, feature `ed25519`), and should be
    /// done first when the image comes from anywhere untrusted.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        Self::parse_checking(bytes, Checksum::Compute)
    }

    /// Validates `bytes` like [`Image::parse`], except that the checksum is not summed again.
    ///
    /// Only for an image whose signature was verified just before (see `verify_and_parse`): the
    /// signature covers the checksum field and every byte the checksum covers, so the sum adds
    /// nothing but a second pass over the whole image.
    #[cfg(feature = "ed25519")]
    pub(crate) fn parse_signed(bytes: &'a [u8]) -> Result<Self, FormatError> {
        Self::parse_checking(bytes, Checksum::CoveredBySignature)
    }

    fn parse_checking(bytes: &'a [u8], checksum_rule: Checksum) -> Result<Self, FormatError> {
        let (head, bytes) = frame(bytes)?;
        let image_length = to_u64(bytes.len());

        if checksum_rule == Checksum::Compute {
            let stored = u32_at(head, header::CHECKSUM);
            let computed = checksum(bytes);
            if stored != computed {
                return Err(FormatError::ChecksumMismatch { stored, computed });
            }
        }

        // Reserved bytes are zero whatever the scheme. An unsigned image also has a zero key id and
        // signature area, so that "unsigned" has exactly one encoding.
        let signature_scheme = u32_at(head, header::SIGNATURE_SCHEME);
        let scheme = SignatureScheme::from_value(signature_scheme).ok_or(
            FormatError::UnknownSignatureScheme {
                scheme: signature_scheme,
            },
        )?;
        let must_be_zero = match scheme {
            SignatureScheme::Unsigned => header::KEY_ID..HEADER_SIZE,
            SignatureScheme::Ed25519 | SignatureScheme::Ed25519Chunks => {
                header::RESERVED..header::SIGNATURE
            }
        };
        let zeros = head.get(must_be_zero.clone()).unwrap_or_default();
        if let Some(position) = zeros.iter().position(|&byte| byte != 0) {
            return Err(FormatError::ReservedHeaderByte {
                offset: must_be_zero.start + position,
            });
        }

        let count = u32_at(head, header::CAPSULE_COUNT);
        if count > MAX_CAPSULES {
            return Err(FormatError::TooManyCapsules { count });
        }
        let table_offset = u64_at(head, header::TABLE_OFFSET);
        if !table_offset.is_multiple_of(TABLE_ALIGNMENT) {
            return Err(FormatError::TableMisaligned {
                offset: table_offset,
            });
        }
        if table_offset < to_u64(HEADER_SIZE) {
            return Err(FormatError::TableOverlapsHeader {
                offset: table_offset,
            });
        }
        let out_of_range = FormatError::TableOutOfRange {
            offset: table_offset,
            count,
            image_length,
        };
        let table_end = u64::from(count)
            .checked_mul(to_u64(RECORD_SIZE))
            .and_then(|size| table_offset.checked_add(size))
            .filter(|&end| end <= image_length)
            .ok_or(out_of_range)?;
        let table = usize::try_from(table_offset)
            .ok()
            .zip(usize::try_from(table_end).ok())
            .and_then(|(start, end)| bytes.get(start..end))
            .ok_or(out_of_range)?;

        let image = Image {
            bytes,
            table,
            table_offset,
            table_end,
            count,
            // `frame` accepted the version.
            version: u16_at(head, header::VERSION),
            scheme,
        };
        image.check_capsules()?;
        Ok(image)
    }

    /// Checks every record, name uniqueness, the single boot capsule, that no disks overlap and
    /// that no two capsules share a MAC address.
    fn check_capsules(&self) -> Result<(), FormatError> {
        let mut boot: Option<u32> = None;
        for index in 0..self.count {
            let capsule = self.decode(index)?;
            self.check_disk_overlaps(index, capsule.disks)?;
            // Earlier names are already validated, so comparing raw bytes is enough; this keeps the
            // quadratic part cheap even with the maximum number of capsules.
            for earlier in 0..index {
                if self.raw_name(earlier) == Some(capsule.name.as_bytes()) {
                    return Err(FormatError::DuplicateName {
                        name: CapsuleName::new(capsule.name),
                        first: earlier,
                        second: index,
                    });
                }
            }
            if capsule.boot {
                if let Some(first) = boot {
                    return Err(FormatError::MultipleBootCapsules {
                        first,
                        second: index,
                    });
                }
                boot = Some(index);
            }
            if let Some(address) = capsule.mac {
                // Like names: earlier records are validated, so their raw bytes are their MACs.
                if let Some(earlier) = (0..index).find(|&earlier| self.raw_mac(earlier) == address)
                {
                    return Err(FormatError::DuplicateMac {
                        mac: address,
                        first: earlier,
                        second: index,
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks the disks of capsule `index` against every disk before them in the image: the earlier
    /// disks of the same capsule and those of all earlier capsules.
    ///
    /// This is quadratic in the number of disks (at most 1024), but each step only reads two `u64`s of
    /// an already validated entry, so even the largest image is checked quickly and without allocating.
    fn check_disk_overlaps(&self, index: u32, disks: Disks<'a>) -> Result<(), FormatError> {
        for (disk_index, disk) in (0u8..).zip(disks) {
            let extent = (disk.start_sector, disk.sectors);
            for earlier in 0..=index {
                let (entries, _) = self.raw_disk_table(earlier).as_chunks::<DISK_ENTRY_SIZE>();
                let entries = if earlier == index {
                    entries.get(..usize::from(disk_index)).unwrap_or_default()
                } else {
                    entries
                };
                for (earlier_index, entry) in (0u8..).zip(entries) {
                    let earlier_extent = (
                        u64_at(entry, crate::layout::disk::START_SECTOR),
                        u64_at(entry, crate::layout::disk::SECTOR_COUNT),
                    );
                    if let Some(shared) = disk::overlap(earlier_extent, extent) {
                        let earlier_name = disk::decode(entry)
                            .map(|disk| disk.name)
                            .unwrap_or_default();
                        return Err(FormatError::DisksOverlap {
                            first: DiskLocation {
                                capsule: earlier,
                                disk: earlier_index,
                                name: DiskName::new(earlier_name),
                            },
                            second: DiskLocation {
                                capsule: index,
                                disk: disk_index,
                                name: DiskName::new(disk.name),
                            },
                            start: shared.start,
                            end: shared.end,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The format version of the image.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Length of the image in bytes (the declared length, not that of the buffer given to `parse`).
    #[allow(
        clippy::len_without_is_empty,
        reason = "an image always holds at least its header"
    )]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The image's bytes, without any trailing padding of the buffer it was parsed from.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// How the image is signed.
    pub fn signature_scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// The id of the key that signed the image, or `None` when it is unsigned.
    pub fn key_id(&self) -> Option<KeyId> {
        let head = self.header();
        match self.scheme {
            SignatureScheme::Unsigned => None,
            SignatureScheme::Ed25519 | SignatureScheme::Ed25519Chunks => Some(KeyId(
                bytes_at::<HEADER_SIZE, KEY_ID_LEN>(head, header::KEY_ID),
            )),
        }
    }

    /// The signature stored in the header, or `None` when the image is unsigned.
    pub fn signature(&self) -> Option<[u8; header::SIGNATURE_LEN]> {
        match self.scheme {
            SignatureScheme::Unsigned => None,
            SignatureScheme::Ed25519 | SignatureScheme::Ed25519Chunks => {
                Some(bytes_at(self.header(), header::SIGNATURE))
            }
        }
    }

    /// The bytes a signature covers: the whole image with the signature area read as zeros.
    pub fn signed_message(&self) -> SignedMessage<'a> {
        SignedMessage::of(self.bytes)
    }

    /// The header; `parse` made sure the image holds one.
    fn header(&self) -> &'a [u8; HEADER_SIZE] {
        const EMPTY: [u8; HEADER_SIZE] = [0; HEADER_SIZE];
        self.bytes
            .get(..HEADER_SIZE)
            .and_then(|head| head.try_into().ok())
            .unwrap_or(&EMPTY)
    }

    /// Number of capsules in the image.
    pub fn capsule_count(&self) -> usize {
        // At most MAX_CAPSULES, so this always fits.
        self.count as usize
    }

    /// All capsules, in table order.
    pub fn capsules(&self) -> Capsules<'a> {
        Capsules {
            image: *self,
            next: 0,
        }
    }

    /// The capsule named `name`, if there is one.
    pub fn capsule(&self, name: &str) -> Option<Capsule<'a>> {
        self.capsules().find(|capsule| capsule.name == name)
    }

    /// The capsule marked as the boot capsule, if there is one.
    pub fn boot_capsule(&self) -> Option<Capsule<'a>> {
        self.capsules().find(|capsule| capsule.boot)
    }

    fn record(&self, index: u32) -> Option<&'a [u8; RECORD_SIZE]> {
        let start = usize::try_from(index).ok()?.checked_mul(RECORD_SIZE)?;
        let end = start.checked_add(RECORD_SIZE)?;
        self.table.get(start..end)?.try_into().ok()
    }

    /// The name bytes of an already validated record.
    fn raw_name(&self, index: u32) -> Option<&'a [u8]> {
        let record = self.record(index)?;
        let offset = usize::try_from(u64_at(record, record::NAME)).ok()?;
        let length = usize::try_from(u64_at(record, record::NAME + 8)).ok()?;
        self.bytes.get(offset..offset.checked_add(length)?)
    }

    /// The MAC bytes of a record: all zero when it has no network card or the image predates
    /// format version 3 (where those bytes are reserved, whatever they hold).
    fn raw_mac(&self, index: u32) -> [u8; MAC_LEN] {
        match self.record(index) {
            Some(record) if self.version >= 3 => bytes_at(record, record::MAC),
            _ => [0; MAC_LEN],
        }
    }

    /// The disk table bytes of an already validated record (empty when it has no disks).
    fn raw_disk_table(&self, index: u32) -> &'a [u8] {
        let Some(record) = self.record(index) else {
            return &[];
        };
        if self.version < 2 {
            return &[];
        }
        let count = usize::from(record.get(record::DISK_COUNT).copied().unwrap_or_default());
        usize::try_from(u64_at(record, record::DISK_TABLE))
            .ok()
            .and_then(|offset| Some((offset, offset.checked_add(count * DISK_ENTRY_SIZE)?)))
            .and_then(|(start, end)| self.bytes.get(start..end))
            .unwrap_or_default()
    }

    /// Finds the bytes of one field from its `(offset, length)` pair in the record.
    fn locate(
        &self,
        capsule: u32,
        field: Field,
        record: &[u8; RECORD_SIZE],
        at: usize,
    ) -> Result<&'a [u8], FormatError> {
        self.locate_range(capsule, field, u64_at(record, at), u64_at(record, at + 8))
    }

    /// Finds the bytes of one field, checking that they lie in the data area of the image.
    fn locate_range(
        &self,
        capsule: u32,
        field: Field,
        offset: u64,
        length: u64,
    ) -> Result<&'a [u8], FormatError> {
        let fail = |problem| FormatError::Field {
            capsule,
            field,
            problem,
        };
        if length == 0 {
            return if offset == 0 {
                Ok(&[])
            } else {
                Err(fail(FieldProblem::OffsetWithoutLength { offset }))
            };
        }
        let end = offset
            .checked_add(length)
            .ok_or(fail(FieldProblem::Overflows { offset, length }))?;
        let image_length = to_u64(self.bytes.len());
        if end > image_length {
            return Err(fail(FieldProblem::OutOfRange {
                offset,
                length,
                image_length,
            }));
        }
        if offset < to_u64(HEADER_SIZE) {
            return Err(fail(FieldProblem::OverlapsHeader { offset, length }));
        }
        if offset < self.table_end && end > self.table_offset {
            return Err(fail(FieldProblem::OverlapsTable { offset, length }));
        }
        if matches!(field, Field::Kernel | Field::Initrd)
            && !offset.is_multiple_of(PAYLOAD_ALIGNMENT)
        {
            return Err(fail(FieldProblem::Misaligned { offset }));
        }
        if field == Field::DiskTable && !offset.is_multiple_of(TABLE_ALIGNMENT) {
            return Err(fail(FieldProblem::TableMisaligned { offset }));
        }
        usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(start, end)| self.bytes.get(start..end))
            .ok_or(fail(FieldProblem::OutOfRange {
                offset,
                length,
                image_length,
            }))
    }

    /// Decodes and validates one record.
    fn decode(&self, index: u32) -> Result<Capsule<'a>, FormatError> {
        let record = self.record(index).ok_or(FormatError::TableOutOfRange {
            offset: self.table_offset,
            count: self.count,
            image_length: to_u64(self.bytes.len()),
        })?;
        let fail = |problem| FormatError::Capsule {
            capsule: index,
            problem,
        };

        let flag_bits = u32_at(record, record::FLAGS);
        if flag_bits & !flags::ALL != 0 {
            return Err(fail(CapsuleProblem::UnknownFlags { flags: flag_bits }));
        }
        let restart_byte = record.get(record::RESTART).copied().unwrap_or_default();
        let restart = RestartPolicy::from_byte(restart_byte).ok_or(fail(
            CapsuleProblem::UnknownRestartPolicy {
                value: restart_byte,
            },
        ))?;
        // Older versions gave no meaning to the newer fields, so there those bytes are reserved:
        // the disk fields and the MAC in version 1, the MAC in version 2. Version 3 has none left.
        let reserved = match self.version {
            ..=1 => record::VERSION_1_RESERVED..RECORD_SIZE,
            2 => record::VERSION_2_RESERVED..record::DISK_TABLE,
            _ => RECORD_SIZE..RECORD_SIZE,
        };
        let reserved_bytes = record.get(reserved.clone()).unwrap_or_default();
        if let Some(position) = reserved_bytes.iter().position(|&byte| byte != 0) {
            return Err(fail(CapsuleProblem::ReservedNotZero {
                offset: reserved.start + position,
            }));
        }
        let vcpus = u32_at(record, record::VCPUS);
        check_vcpus(vcpus).map_err(fail)?;
        let memory = u64_at(record, record::MEMORY);
        check_memory(memory).map_err(fail)?;

        let name =
            check_name(self.locate(index, Field::Name, record, record::NAME)?).map_err(fail)?;
        if u64_at(record, record::KERNEL + 8) == 0 {
            return Err(fail(CapsuleProblem::EmptyKernel));
        }
        let kernel = self.locate(index, Field::Kernel, record, record::KERNEL)?;
        let initrd = self.locate(index, Field::Initrd, record, record::INITRD)?;
        let initrd = (!initrd.is_empty()).then_some(initrd);
        let cmdline = check_cmdline(self.locate(index, Field::Cmdline, record, record::CMDLINE)?)
            .map_err(fail)?;
        let mac = mac::decode(self.raw_mac(index)).map_err(fail)?;
        let disks = self.decode_disks(index, record)?;

        Ok(Capsule {
            name,
            kernel,
            initrd,
            cmdline,
            memory,
            vcpus,
            autostart: flag_bits & flags::AUTOSTART != 0,
            boot: flag_bits & flags::BOOT != 0,
            may_manage: flag_bits & flags::MAY_MANAGE != 0,
            restart,
            kernel_format: if flag_bits & flags::FLAT_KERNEL != 0 {
                KernelFormat::Flat
            } else {
                KernelFormat::LinuxImage
            },
            mac,
            disks,
        })
    }

    /// Locates and validates the disk table of one record: its placement, each entry, and names
    /// unique within the capsule. Overlaps are checked over the whole image by `check_capsules`.
    fn decode_disks(
        &self,
        index: u32,
        record: &[u8; RECORD_SIZE],
    ) -> Result<Disks<'a>, FormatError> {
        if self.version < 2 {
            return Ok(Disks::new(&[]));
        }
        let count = record.get(record::DISK_COUNT).copied().unwrap_or_default();
        if count > MAX_DISKS {
            return Err(FormatError::Capsule {
                capsule: index,
                problem: CapsuleProblem::TooManyDisks {
                    count: usize::from(count),
                },
            });
        }
        let length = u64::from(count) * to_u64(DISK_ENTRY_SIZE);
        let table = self.locate_range(
            index,
            Field::DiskTable,
            u64_at(record, record::DISK_TABLE),
            length,
        )?;
        let (entries, _) = table.as_chunks::<DISK_ENTRY_SIZE>();
        for (disk_index, entry) in (0u8..).zip(entries) {
            let disk = disk::decode(entry).map_err(|problem| FormatError::Disk {
                capsule: index,
                disk: disk_index,
                problem,
            })?;
            let earlier_entries = entries.get(..usize::from(disk_index)).unwrap_or_default();
            if let Some(first) = (0u8..)
                .zip(earlier_entries)
                .find(|(_, earlier)| {
                    disk::decode(earlier).is_ok_and(|earlier| earlier.name == disk.name)
                })
                .map(|(first, _)| first)
            {
                return Err(FormatError::DuplicateDiskName {
                    capsule: index,
                    name: DiskName::new(disk.name),
                    first,
                    second: disk_index,
                });
            }
        }
        Ok(Disks::new(table))
    }
}

impl fmt::Debug for Image<'_> {
    /// Shows the image's shape, not its (possibly very large) contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .field("capsule_count", &self.count)
            .field("signature_scheme", &self.scheme)
            .finish()
    }
}

/// Iterator over the capsules of an [`Image`], in table order.
#[derive(Clone, Debug)]
pub struct Capsules<'a> {
    image: Image<'a>,
    next: u32,
}

impl<'a> Iterator for Capsules<'a> {
    type Item = Capsule<'a>;

    fn next(&mut self) -> Option<Capsule<'a>> {
        while self.next < self.image.count {
            let index = self.next;
            self.next += 1;
            // `parse` decoded every record successfully, so this never skips anything.
            if let Ok(capsule) = self.image.decode(index) {
                return Some(capsule);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.image.count.saturating_sub(self.next) as usize;
        (0, Some(remaining))
    }
}
