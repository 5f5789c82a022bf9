//! Byte offsets, sizes and limits of format version 3, shared by the parser, the writer and tests.
//!
//! All multi-byte integers are little endian. `FORMAT.md` describes the same layout in prose.

/// The eight bytes every image starts with.
pub const MAGIC: [u8; 8] = *b"KEELDMFS";
/// The format version this crate writes, and the newest it reads.
pub const FORMAT_VERSION: u16 = 3;
/// The oldest format version this crate reads. Versions 1 and 2 lay out everything they define
/// exactly as version 3 does and keep the newer fields' bytes reserved (zero): a version 1 image
/// reads as one whose capsules have no disks and no network card, a version 2 image as one whose
/// capsules have no network card.
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// Size of the header in bytes (the same in every version).
pub const HEADER_SIZE: usize = 128;
/// Size of one capsule record in bytes (the same in every version).
pub const RECORD_SIZE: usize = 96;
/// Size of one entry of a capsule's disk table in bytes.
pub const DISK_ENTRY_SIZE: usize = 48;
/// Most disks one capsule may have.
pub const MAX_DISKS: u8 = 4;
/// Longest disk name in bytes: the length of a virtio-blk device ID, which is how the guest sees it.
pub const MAX_DISK_NAME_LEN: usize = 20;
/// Disk extents are counted in sectors of this many bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Disk extents start and end at multiples of this many bytes (so of `DISK_ALIGNMENT / SECTOR_SIZE`
/// sectors): whole pages of the machine's disk, whatever its own block size up to 4 KiB.
pub const DISK_ALIGNMENT: u64 = 4096;
/// Kernels and initrds start at multiples of this, relative to the start of the image.
pub const PAYLOAD_ALIGNMENT: u64 = 4096;
/// The capsule table starts at a multiple of this, so its `u64` fields are naturally aligned.
pub const TABLE_ALIGNMENT: u64 = 8;
/// Upper bound on the number of capsules; it keeps validation cost bounded on hostile input.
pub const MAX_CAPSULES: u32 = 256;
/// Longest capsule name in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest kernel command line in bytes.
pub const MAX_CMDLINE_LEN: usize = 4096;
/// Largest vCPU count a capsule may ask for.
pub const MAX_VCPUS: u32 = 64;
/// Guest memory sizes are multiples of this, so RAM can be mapped with 2 MiB G-stage pages.
pub const MEMORY_GRANULE: u64 = 2 * 1024 * 1024;
/// `signature_scheme` value meaning "unsigned": the key id and the signature area are zero.
pub const SIGNATURE_NONE: u32 = 0;
/// `signature_scheme` value meaning "Ed25519 (RFC 8032, pure) over the signed message".
pub const SIGNATURE_ED25519: u32 = 1;
/// `signature_scheme` value meaning "Ed25519 (RFC 8032, pure) over the SHA-512 digests of the signed
/// message's chunks": the chunks can be hashed on several processors at once.
pub const SIGNATURE_ED25519_CHUNKS: u32 = 2;
/// Scheme 2 hashes the signed message in chunks of this many bytes (the last one may be shorter).
pub const SIGNATURE_CHUNK_SIZE: usize = 256 * 1024;
/// Scheme 2's digest list starts with this tag, which no scheme-1 message can be mistaken for (those
/// start with [`MAGIC`]).
pub const SIGNATURE_CHUNKS_TAG: [u8; 8] = *b"DMFSCHK1";
/// Length of a SHA-512 digest: one per chunk in scheme 2's digest list.
pub const CHUNK_DIGEST_LEN: usize = 64;
/// Length of an Ed25519 public key, and of the secret seed a key pair is derived from.
pub const KEY_LEN: usize = 32;
/// Length of the key id stored in a signed image's header: the first bytes of the public key.
pub const KEY_ID_LEN: usize = 8;
/// Length of a capsule's MAC address (an IEEE 802 EUI-48).
pub const MAC_LEN: usize = 6;

/// Header field offsets.
pub mod header {
    /// `[u8; 8]`: [`super::MAGIC`].
    pub const MAGIC: usize = 0x00;
    /// `u16`: format version.
    pub const VERSION: usize = 0x08;
    /// `u16`: header size in bytes.
    pub const HEADER_SIZE: usize = 0x0a;
    /// `u32`: CRC-32 of the image (see [`crate::checksum`]).
    pub const CHECKSUM: usize = 0x0c;
    /// `u64`: length of the whole image in bytes.
    pub const IMAGE_LENGTH: usize = 0x10;
    /// `u64`: offset of the capsule table.
    pub const TABLE_OFFSET: usize = 0x18;
    /// `u32`: number of capsule records.
    pub const CAPSULE_COUNT: usize = 0x20;
    /// `u32`: size of one capsule record.
    pub const RECORD_SIZE: usize = 0x24;
    /// `u32`: signature scheme, [`super::SIGNATURE_NONE`], [`super::SIGNATURE_ED25519`] or
    /// [`super::SIGNATURE_ED25519_CHUNKS`].
    pub const SIGNATURE_SCHEME: usize = 0x28;
    /// `[u8; 8]`: id of the key that signed the image (the first 8 bytes of its public key), zero
    /// while unsigned.
    pub const KEY_ID: usize = 0x2c;
    /// 12 reserved bytes, zero.
    pub const RESERVED: usize = 0x34;
    /// 64 bytes: the Ed25519 signature over the image, zero while unsigned.
    pub const SIGNATURE: usize = 0x40;
    /// Length of the signature area.
    pub const SIGNATURE_LEN: usize = 64;
}

/// Capsule record field offsets, relative to the start of the record.
pub mod record {
    /// `u64` offset and `u64` length of the name.
    pub const NAME: usize = 0x00;
    /// `u64` offset and `u64` length of the kernel.
    pub const KERNEL: usize = 0x10;
    /// `u64` offset and `u64` length of the initrd (both zero: no initrd).
    pub const INITRD: usize = 0x20;
    /// `u64` offset and `u64` length of the command line (both zero: empty).
    pub const CMDLINE: usize = 0x30;
    /// `u64`: guest memory in bytes.
    pub const MEMORY: usize = 0x40;
    /// `u32`: vCPU count.
    pub const VCPUS: usize = 0x48;
    /// `u32`: flag bits, see [`super::flags`].
    pub const FLAGS: usize = 0x4c;
    /// `u8`: restart policy (0 never, 1 on failure, 2 always).
    pub const RESTART: usize = 0x50;
    /// `u8`: number of entries in the capsule's disk table (versions 2 and 3; reserved in version 1).
    pub const DISK_COUNT: usize = 0x51;
    /// `[u8; 6]`: MAC address of the capsule's network card, all zero when it has none (version 3;
    /// reserved in versions 1 and 2).
    pub const MAC: usize = 0x52;
    /// `u64`: offset of the capsule's disk table, zero when it has no disks (versions 2 and 3;
    /// reserved in version 1).
    pub const DISK_TABLE: usize = 0x58;
    /// Bytes from [`DISK_COUNT`] to the end of the record: all reserved, so all zero, in version 1.
    pub const VERSION_1_RESERVED: usize = DISK_COUNT;
    /// Start of the 6 bytes before [`DISK_TABLE`] that version 2 reserves (zero) and version 3
    /// holds the [`MAC`] in.
    pub const VERSION_2_RESERVED: usize = MAC;
}

/// Disk table entry field offsets, relative to the start of the entry.
pub mod disk {
    /// `u64`: first sector of the extent on the machine's disk (512-byte sectors).
    pub const START_SECTOR: usize = 0x00;
    /// `u64`: length of the extent in sectors.
    pub const SECTOR_COUNT: usize = 0x08;
    /// `[u8; 20]`: the name, padded with zero bytes.
    pub const NAME: usize = 0x10;
    /// `u8`: length of the name in bytes.
    pub const NAME_LENGTH: usize = 0x24;
    /// 3 reserved bytes, zero.
    pub const RESERVED_1: usize = 0x25;
    /// `u32`: flag bits, see [`flags`].
    pub const FLAGS: usize = 0x28;
    /// 4 reserved bytes, zero.
    pub const RESERVED_2: usize = 0x2c;

    /// Disk entry flag bits.
    pub mod flags {
        /// The guest may read the disk but not write it.
        pub const READ_ONLY: u32 = 1 << 0;
        /// Every bit versions 2 and 3 define; the others must be zero.
        pub const ALL: u32 = READ_ONLY;
    }
}

/// Capsule record flag bits.
pub mod flags {
    /// Start the capsule when the hypervisor boots.
    pub const AUTOSTART: u32 = 1 << 0;
    /// The boot capsule, which is always started; at most one per image.
    pub const BOOT: u32 = 1 << 1;
    /// The capsule may use the management interface.
    pub const MAY_MANAGE: u32 = 1 << 2;
    /// The kernel is a flat binary rather than a Linux `Image`.
    pub const FLAT_KERNEL: u32 = 1 << 3;
    /// Every bit versions 1 to 3 define; the others must be zero.
    pub const ALL: u32 = AUTOSTART | BOOT | MAY_MANAGE | FLAT_KERNEL;
}

/// Restart policy byte values.
pub mod restart {
    /// Never restart.
    pub const NEVER: u8 = 0;
    /// Restart when the guest stops with a failure.
    pub const ON_FAILURE: u8 = 1;
    /// Restart whenever the guest stops.
    pub const ALWAYS: u8 = 2;
}
