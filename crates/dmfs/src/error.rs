//! Errors reported when an image, or a capsule about to be written into one, breaks the format's rules.

use core::fmt;

use crate::capsule::CapsuleName;
use crate::disk::DiskName;
use crate::layout::{
    DISK_ALIGNMENT, FORMAT_VERSION, HEADER_SIZE, MAC_LEN, MAGIC, MAX_CAPSULES, MAX_CMDLINE_LEN,
    MAX_DISKS, MAX_DISK_NAME_LEN, MAX_NAME_LEN, MAX_VCPUS, OLDEST_FORMAT_VERSION,
    PAYLOAD_ALIGNMENT, RECORD_SIZE, SECTOR_SIZE, TABLE_ALIGNMENT,
};
use crate::mac::MacAddress;

/// A variable-length field of a capsule record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The capsule name.
    Name,
    /// The kernel payload.
    Kernel,
    /// The initrd payload.
    Initrd,
    /// The kernel command line.
    Cmdline,
    /// The table of the capsule's disks.
    DiskTable,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Name => "name",
            Field::Kernel => "kernel",
            Field::Initrd => "initrd",
            Field::Cmdline => "command line",
            Field::DiskTable => "disk table",
        })
    }
}

/// What is wrong with the (offset, length) pair locating a [`Field`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldProblem {
    /// `offset + length` does not fit in 64 bits.
    Overflows {
        /// Declared offset.
        offset: u64,
        /// Declared length.
        length: u64,
    },
    /// The field runs past the end of the image.
    OutOfRange {
        /// Declared offset.
        offset: u64,
        /// Declared length.
        length: u64,
        /// Length of the image.
        image_length: u64,
    },
    /// The field overlaps the header.
    OverlapsHeader {
        /// Declared offset.
        offset: u64,
        /// Declared length.
        length: u64,
    },
    /// The field overlaps the capsule table.
    OverlapsTable {
        /// Declared offset.
        offset: u64,
        /// Declared length.
        length: u64,
    },
    /// A kernel or initrd does not start on a 4 KiB boundary.
    Misaligned {
        /// Declared offset.
        offset: u64,
    },
    /// The length is zero but the offset is not, which no writer produces.
    OffsetWithoutLength {
        /// Declared offset.
        offset: u64,
    },
    /// A disk table does not start on an 8-byte boundary.
    TableMisaligned {
        /// Declared offset.
        offset: u64,
    },
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FieldProblem::Overflows { offset, length } => {
                write!(f, "offset {offset:#x} plus length {length:#x} overflows 64 bits")
            }
            FieldProblem::OutOfRange { offset, length, image_length } => write!(
                f,
                "{length:#x} bytes at offset {offset:#x} run past the end of the {image_length:#x}-byte image"
            ),
            FieldProblem::OverlapsHeader { offset, length } => {
                write!(f, "{length:#x} bytes at offset {offset:#x} overlap the {HEADER_SIZE}-byte header")
            }
            FieldProblem::OverlapsTable { offset, length } => {
                write!(f, "{length:#x} bytes at offset {offset:#x} overlap the capsule table")
            }
            FieldProblem::Misaligned { offset } => {
                write!(f, "offset {offset:#x} is not a multiple of {PAYLOAD_ALIGNMENT:#x}")
            }
            FieldProblem::OffsetWithoutLength { offset } => {
                write!(f, "length is zero but offset is {offset:#x} instead of zero")
            }
            FieldProblem::TableMisaligned { offset } => {
                write!(f, "offset {offset:#x} is not a multiple of {TABLE_ALIGNMENT}")
            }
        }
    }
}

/// A rule broken by one capsule's own values (as opposed to its placement in the image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapsuleProblem {
    /// The name is empty.
    EmptyName,
    /// The name is longer than 64 bytes.
    NameTooLong {
        /// Length in bytes.
        length: usize,
    },
    /// The name is not valid UTF-8.
    NameNotUtf8,
    /// The name contains a character outside ASCII letters, digits, `-`, `_` and `.`.
    NameInvalidCharacter {
        /// The first offending character.
        character: char,
    },
    /// The command line is not valid UTF-8.
    CmdlineNotUtf8,
    /// The command line contains a NUL byte.
    CmdlineHasNul,
    /// The command line is longer than 4096 bytes.
    CmdlineTooLong {
        /// Length in bytes.
        length: usize,
    },
    /// The kernel is empty.
    EmptyKernel,
    /// An initrd is given but empty (writer only: in an image, length zero means "no initrd").
    EmptyInitrd,
    /// The vCPU count is outside 1..=64.
    BadVcpuCount {
        /// The count found.
        vcpus: u32,
    },
    /// The memory size is zero or not a multiple of 2 MiB.
    BadMemory {
        /// The size found, in bytes.
        memory: u64,
    },
    /// Flag bits this format version does not define are set.
    UnknownFlags {
        /// The whole flags word.
        flags: u32,
    },
    /// The restart policy byte has no meaning.
    UnknownRestartPolicy {
        /// The byte found.
        value: u8,
    },
    /// A reserved byte of the record is not zero.
    ReservedNotZero {
        /// Offset of the byte within the record.
        offset: usize,
    },
    /// The capsule has more than 4 disks.
    TooManyDisks {
        /// The number of disks.
        count: usize,
    },
    /// The MAC address is a multicast address (or the broadcast address), which no single network
    /// card may own.
    MulticastMac {
        /// The address.
        mac: [u8; MAC_LEN],
    },
    /// A MAC address of all zeros is given (writer only: in an image, all zeros means "no network
    /// card").
    ZeroMac,
}

impl fmt::Display for CapsuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CapsuleProblem::EmptyName => f.write_str("name is empty"),
            CapsuleProblem::NameTooLong { length } => {
                write!(f, "name is {length} bytes long, more than the limit of {MAX_NAME_LEN}")
            }
            CapsuleProblem::NameNotUtf8 => f.write_str("name is not valid UTF-8"),
            CapsuleProblem::NameInvalidCharacter { character } => write!(
                f,
                "name contains {character:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
            ),
            CapsuleProblem::CmdlineNotUtf8 => f.write_str("command line is not valid UTF-8"),
            CapsuleProblem::CmdlineHasNul => f.write_str("command line contains a NUL byte"),
            CapsuleProblem::CmdlineTooLong { length } => {
                write!(f, "command line is {length} bytes long, more than the limit of {MAX_CMDLINE_LEN}")
            }
            CapsuleProblem::EmptyKernel => f.write_str("kernel is empty"),
            CapsuleProblem::EmptyInitrd => f.write_str("initrd is empty (leave it out instead)"),
            CapsuleProblem::BadVcpuCount { vcpus } => write!(f, "vCPU count {vcpus} is outside 1..={MAX_VCPUS}"),
            CapsuleProblem::BadMemory { memory } => {
                write!(f, "memory size {memory:#x} bytes is not a non-zero multiple of 2 MiB")
            }
            CapsuleProblem::UnknownFlags { flags } => {
                write!(f, "flags {flags:#010x} set bits that format version {FORMAT_VERSION} does not define")
            }
            CapsuleProblem::UnknownRestartPolicy { value } => {
                write!(f, "restart policy byte {value} is not 0 (never), 1 (on-failure) or 2 (always)")
            }
            CapsuleProblem::ReservedNotZero { offset } => {
                write!(f, "reserved record byte at offset {offset:#x} is not zero")
            }
            CapsuleProblem::TooManyDisks { count } => {
                write!(f, "has {count} disks, more than the limit of {MAX_DISKS}")
            }
            CapsuleProblem::MulticastMac { mac } => {
                let mac = MacAddress(mac);
                let kind = if mac.is_broadcast() { "the broadcast" } else { "a multicast" };
                write!(f, "mac {mac} is {kind} address; a network card needs a unicast one")
            }
            CapsuleProblem::ZeroMac => f.write_str(
                "mac 00:00:00:00:00:00 is not a usable address (leave mac out for a capsule without a network card)",
            ),
        }
    }
}

/// A rule broken by one disk's own values (as opposed to its relation to other disks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskProblem {
    /// The name is empty.
    EmptyName,
    /// The name is longer than 20 bytes.
    NameTooLong {
        /// Length in bytes.
        length: usize,
    },
    /// The name is not valid UTF-8.
    NameNotUtf8,
    /// The name contains a character outside ASCII letters, digits, `-`, `_` and `.`.
    NameInvalidCharacter {
        /// The first offending character.
        character: char,
    },
    /// A byte of the name field past the name's length is not zero.
    NamePaddingNotZero {
        /// Offset of the byte within the disk entry.
        offset: usize,
    },
    /// The first sector is not a multiple of 8 (4 KiB).
    StartMisaligned {
        /// The first sector.
        start_sector: u64,
    },
    /// The sector count is zero or not a multiple of 8 (4 KiB).
    BadSectorCount {
        /// The sector count.
        sectors: u64,
    },
    /// The end of the extent, in bytes, does not fit in 64 bits.
    EndOverflows {
        /// The first sector.
        start_sector: u64,
        /// The sector count.
        sectors: u64,
    },
    /// Flag bits this format version does not define are set.
    UnknownFlags {
        /// The whole flags word.
        flags: u32,
    },
    /// A reserved byte of the disk entry is not zero.
    ReservedNotZero {
        /// Offset of the byte within the disk entry.
        offset: usize,
    },
}

impl fmt::Display for DiskProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DiskProblem::EmptyName => f.write_str("name is empty"),
            DiskProblem::NameTooLong { length } => write!(
                f,
                "name is {length} bytes long, more than the limit of {MAX_DISK_NAME_LEN} (a virtio-blk device ID)"
            ),
            DiskProblem::NameNotUtf8 => f.write_str("name is not valid UTF-8"),
            DiskProblem::NameInvalidCharacter { character } => write!(
                f,
                "name contains {character:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
            ),
            DiskProblem::NamePaddingNotZero { offset } => {
                write!(f, "name padding byte at offset {offset:#x} of the disk entry is not zero")
            }
            DiskProblem::StartMisaligned { start_sector } => write!(
                f,
                "start sector {start_sector:#x} (byte {:#x}) is not a multiple of {DISK_ALIGNMENT} bytes",
                u128::from(start_sector) * u128::from(SECTOR_SIZE)
            ),
            DiskProblem::BadSectorCount { sectors } => write!(
                f,
                "size of {sectors:#x} sectors ({:#x} bytes) is not a non-zero multiple of {DISK_ALIGNMENT} bytes",
                u128::from(sectors) * u128::from(SECTOR_SIZE)
            ),
            DiskProblem::EndOverflows { start_sector, sectors } => write!(
                f,
                "start sector {start_sector:#x} plus {sectors:#x} sectors ends past the last byte a 64-bit offset reaches"
            ),
            DiskProblem::UnknownFlags { flags } => {
                write!(f, "disk flags {flags:#010x} set bits that format version {FORMAT_VERSION} does not define")
            }
            DiskProblem::ReservedNotZero { offset } => {
                write!(f, "reserved byte at offset {offset:#x} of the disk entry is not zero")
            }
        }
    }
}

/// One disk of a parsed image, for error messages: its capsule's index, its index in that capsule's
/// disk table and its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLocation {
    /// Index of the capsule in the capsule table.
    pub capsule: u32,
    /// Index of the disk in the capsule's disk table.
    pub disk: u8,
    /// The disk's name.
    pub name: DiskName,
}

impl fmt::Display for DiskLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "capsule #{} disk #{} ({:?})",
            self.capsule,
            self.disk,
            self.name.as_str()
        )
    }
}

/// Why [`crate::Image::parse`] rejected an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The buffer is shorter than the fixed header.
    Truncated {
        /// Length of the buffer.
        length: usize,
    },
    /// The first eight bytes are not `KEELDMFS`.
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The format version is not one this parser reads.
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// The header size field does not match the version's header size.
    BadHeaderSize {
        /// The size found.
        found: u16,
    },
    /// The record size field does not match the version's record size.
    BadRecordSize {
        /// The size found.
        found: u32,
    },
    /// The declared image length is smaller than the header.
    ImageLengthTooSmall {
        /// The declared length.
        image_length: u64,
    },
    /// The buffer holds fewer bytes than the declared image length.
    ImageTruncated {
        /// The declared length.
        image_length: u64,
        /// Bytes actually present.
        available: usize,
    },
    /// The stored checksum does not match the image's contents.
    ChecksumMismatch {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum computed over the image.
        computed: u32,
    },
    /// The signature scheme is not one this parser knows.
    UnknownSignatureScheme {
        /// The scheme found.
        scheme: u32,
    },
    /// A reserved header byte (or the key id or signature area of an unsigned image) is not zero.
    ReservedHeaderByte {
        /// Offset of the byte in the header.
        offset: usize,
    },
    /// More capsules than [`crate::layout::MAX_CAPSULES`].
    TooManyCapsules {
        /// The count found.
        count: u32,
    },
    /// The capsule table does not start on an 8-byte boundary.
    TableMisaligned {
        /// The table offset.
        offset: u64,
    },
    /// The capsule table starts inside the header.
    TableOverlapsHeader {
        /// The table offset.
        offset: u64,
    },
    /// The capsule table runs past the end of the image.
    TableOutOfRange {
        /// The table offset.
        offset: u64,
        /// The number of records.
        count: u32,
        /// Length of the image.
        image_length: u64,
    },
    /// A variable-length field of a capsule is badly placed.
    Field {
        /// Index of the capsule in the table.
        capsule: u32,
        /// Which field.
        field: Field,
        /// What is wrong.
        problem: FieldProblem,
    },
    /// A capsule breaks one of the per-capsule rules.
    Capsule {
        /// Index of the capsule in the table.
        capsule: u32,
        /// What is wrong.
        problem: CapsuleProblem,
    },
    /// Two capsules have the same name.
    DuplicateName {
        /// The shared name.
        name: CapsuleName,
        /// Index of the first capsule with it.
        first: u32,
        /// Index of the second capsule with it.
        second: u32,
    },
    /// More than one capsule is marked as the boot capsule.
    MultipleBootCapsules {
        /// Index of the first boot capsule.
        first: u32,
        /// Index of the second boot capsule.
        second: u32,
    },
    /// A disk of a capsule breaks one of the per-disk rules.
    Disk {
        /// Index of the capsule in the capsule table.
        capsule: u32,
        /// Index of the disk in the capsule's disk table.
        disk: u8,
        /// What is wrong.
        problem: DiskProblem,
    },
    /// Two disks of one capsule have the same name.
    DuplicateDiskName {
        /// Index of the capsule in the capsule table.
        capsule: u32,
        /// The shared name.
        name: DiskName,
        /// Index of the first disk with it.
        first: u8,
        /// Index of the second disk with it.
        second: u8,
    },
    /// Two capsules have the same MAC address: their network cards could not be told apart.
    ///
    /// The capsules are named by index, as in [`FormatError::DuplicateName`]: two inline names
    /// would double the size of every `FormatError`.
    DuplicateMac {
        /// The shared address.
        mac: [u8; MAC_LEN],
        /// Index of the first capsule with it.
        first: u32,
        /// Index of the second capsule with it.
        second: u32,
    },
    /// Two disks, of one capsule or of two, share bytes of the machine's disk.
    DisksOverlap {
        /// The disk that comes first in the image.
        first: DiskLocation,
        /// The disk that comes later.
        second: DiskLocation,
        /// First byte (of the machine's disk) the two share.
        start: u64,
        /// The byte just past the last one they share.
        end: u64,
    },
}

/// Shows bytes as text when they are printable ASCII, as hex otherwise.
struct MagicBytes<'a>(&'a [u8]);

impl fmt::Display for MagicBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|byte| byte.is_ascii_graphic()) {
            f.write_str("\"")?;
            for &byte in self.0 {
                write!(f, "{}", char::from(byte))?;
            }
            f.write_str("\"")
        } else {
            for &byte in self.0 {
                write!(f, "{byte:02x}")?;
            }
            Ok(())
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FormatError::Truncated { length } => {
                write!(f, "DMFS image is {length} bytes, shorter than the {HEADER_SIZE}-byte header")
            }
            FormatError::BadMagic { found } => write!(
                f,
                "not a DMFS image: magic is {}, expected {}",
                MagicBytes(&found),
                MagicBytes(&MAGIC)
            ),
            FormatError::UnsupportedVersion { found } => write!(
                f,
                "DMFS format version {found} is not supported; this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
            ),
            FormatError::BadHeaderSize { found } => write!(
                f,
                "DMFS header size field is {found}, expected {HEADER_SIZE} for format version {FORMAT_VERSION}"
            ),
            FormatError::BadRecordSize { found } => write!(
                f,
                "DMFS capsule record size field is {found}, expected {RECORD_SIZE} for format version {FORMAT_VERSION}"
            ),
            FormatError::ImageLengthTooSmall { image_length } => write!(
                f,
                "DMFS header declares an image length of {image_length:#x} bytes, less than the {HEADER_SIZE}-byte header"
            ),
            FormatError::ImageTruncated { image_length, available } => write!(
                f,
                "DMFS header declares an image length of {image_length:#x} bytes but only {available:#x} bytes are present"
            ),
            FormatError::ChecksumMismatch { stored, computed } => write!(
                f,
                "DMFS checksum mismatch: header says {stored:#010x}, contents give {computed:#010x}"
            ),
            FormatError::UnknownSignatureScheme { scheme } => {
                write!(f, "DMFS signature scheme {scheme} is not supported; only 0 (unsigned) and 1 (Ed25519) are")
            }
            FormatError::ReservedHeaderByte { offset } => {
                write!(f, "DMFS reserved header byte at offset {offset:#x} is not zero")
            }
            FormatError::TooManyCapsules { count } => {
                write!(f, "DMFS image declares {count} capsules, more than the limit of {MAX_CAPSULES}")
            }
            FormatError::TableMisaligned { offset } => write!(
                f,
                "DMFS capsule table offset {offset:#x} is not a multiple of {TABLE_ALIGNMENT}"
            ),
            FormatError::TableOverlapsHeader { offset } => {
                write!(f, "DMFS capsule table offset {offset:#x} lies inside the {HEADER_SIZE}-byte header")
            }
            FormatError::TableOutOfRange { offset, count, image_length } => write!(
                f,
                "DMFS capsule table of {count} records at offset {offset:#x} runs past the end of the {image_length:#x}-byte image"
            ),
            FormatError::Field { capsule, field, problem } => write!(f, "DMFS capsule #{capsule}: {field}: {problem}"),
            FormatError::Capsule { capsule, problem } => write!(f, "DMFS capsule #{capsule}: {problem}"),
            FormatError::DuplicateName { name, first, second } => {
                write!(f, "DMFS capsules #{first} and #{second} are both named {:?}", name.as_str())
            }
            FormatError::MultipleBootCapsules { first, second } => {
                write!(f, "DMFS capsules #{first} and #{second} are both marked as the boot capsule")
            }
            FormatError::Disk { capsule, disk, problem } => write!(f, "DMFS capsule #{capsule} disk #{disk}: {problem}"),
            FormatError::DuplicateDiskName { capsule, name, first, second } => write!(
                f,
                "DMFS capsule #{capsule}: disks #{first} and #{second} are both named {:?}",
                name.as_str()
            ),
            FormatError::DuplicateMac { mac, first, second } => {
                write!(f, "DMFS capsules #{first} and #{second} both have mac {}", MacAddress(mac))
            }
            FormatError::DisksOverlap { first, second, start, end } => {
                write!(f, "DMFS {second} overlaps {first} (bytes {start:#x}..{end:#x})")
            }
        }
    }
}

impl core::error::Error for FormatError {}
