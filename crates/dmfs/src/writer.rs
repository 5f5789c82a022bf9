//! Image writer: lays out capsules and payloads and seals the result with its checksum.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::capsule::{
    check_cmdline, check_memory, check_name, check_vcpus, KernelFormat, RestartPolicy,
};
use crate::crc::checksum;
use crate::disk::{check_disk_extent, check_disk_name, overlap, Disk};
use crate::error::{CapsuleProblem, DiskProblem};
use crate::layout::{
    disk, flags, header, record, DISK_ENTRY_SIZE, FORMAT_VERSION, HEADER_SIZE, MAC_LEN, MAGIC,
    MAX_CAPSULES, MAX_DISKS, PAYLOAD_ALIGNMENT, RECORD_SIZE, SIGNATURE_NONE, TABLE_ALIGNMENT,
};
use crate::mac::{check_mac, MacAddress};

/// One disk to write: an extent of the machine's disk, in 512-byte sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// 1 to 20 ASCII letters, digits, `-`, `_` or `.`, unique within the capsule.
    pub name: String,
    /// First sector: a multiple of 8 (4 KiB).
    pub start_sector: u64,
    /// Length in sectors: a non-zero multiple of 8 (4 KiB); the end in bytes must fit in 64 bits.
    pub sectors: u64,
    /// The guest may only read the disk.
    pub read_only: bool,
}

impl DiskSpec {
    fn check(&self) -> Result<(), DiskProblem> {
        check_disk_name(self.name.as_bytes())?;
        check_disk_extent(self.start_sector, self.sectors)
    }

    fn extent(&self) -> (u64, u64) {
        (self.start_sector, self.sectors)
    }
}

impl From<Disk<'_>> for DiskSpec {
    fn from(disk: Disk<'_>) -> Self {
        Self {
            name: disk.name.into(),
            start_sector: disk.start_sector,
            sectors: disk.sectors,
            read_only: disk.read_only,
        }
    }
}

/// Everything needed to write one capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapsuleSpec {
    /// Unique name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// Kernel bytes (non-empty).
    pub kernel: Vec<u8>,
    /// Initrd bytes, if any (non-empty when given).
    pub initrd: Option<Vec<u8>>,
    /// Kernel command line (no NUL, at most 4096 bytes).
    pub cmdline: String,
    /// Guest RAM in bytes: a non-zero multiple of 2 MiB.
    pub memory: u64,
    /// Number of vCPUs, 1 to 64.
    pub vcpus: u32,
    /// Start when the hypervisor boots.
    pub autostart: bool,
    /// This is the boot capsule.
    pub boot: bool,
    /// May use the management interface.
    pub may_manage: bool,
    /// What to do when the guest stops.
    pub restart: RestartPolicy,
    /// How the kernel is loaded.
    pub kernel_format: KernelFormat,
    /// MAC address of the capsule's network card, `None` for no network card. A unicast address
    /// (not all zero), unique within the image.
    pub mac: Option<[u8; MAC_LEN]>,
    /// Disks, at most 4, with names unique within the capsule; no disk of the image may overlap another.
    pub disks: Vec<DiskSpec>,
}

impl Default for CapsuleSpec {
    /// An unnamed, empty capsule with one vCPU; name, kernel and memory must still be filled in.
    fn default() -> Self {
        Self {
            name: String::new(),
            kernel: Vec::new(),
            initrd: None,
            cmdline: String::new(),
            memory: 0,
            vcpus: 1,
            autostart: false,
            boot: false,
            may_manage: false,
            restart: RestartPolicy::Never,
            kernel_format: KernelFormat::LinuxImage,
            mac: None,
            disks: Vec::new(),
        }
    }
}

impl CapsuleSpec {
    fn check(&self) -> Result<(), CapsuleProblem> {
        check_name(self.name.as_bytes())?;
        check_cmdline(self.cmdline.as_bytes())?;
        check_vcpus(self.vcpus)?;
        check_memory(self.memory)?;
        if self.kernel.is_empty() {
            return Err(CapsuleProblem::EmptyKernel);
        }
        if self.initrd.as_ref().is_some_and(Vec::is_empty) {
            return Err(CapsuleProblem::EmptyInitrd);
        }
        if self.disks.len() > usize::from(MAX_DISKS) {
            return Err(CapsuleProblem::TooManyDisks {
                count: self.disks.len(),
            });
        }
        if let Some(mac) = self.mac {
            check_mac(mac)?;
        }
        Ok(())
    }

    /// Checks each disk on its own and the names against each other.
    fn check_disks(&self) -> Result<(), BuildError> {
        for (index, disk) in self.disks.iter().enumerate() {
            disk.check().map_err(|problem| BuildError::Disk {
                capsule: self.name.clone(),
                disk: disk.name.clone(),
                problem,
            })?;
            if self.disks[..index]
                .iter()
                .any(|earlier| earlier.name == disk.name)
            {
                return Err(BuildError::DuplicateDiskName {
                    capsule: self.name.clone(),
                    disk: disk.name.clone(),
                });
            }
        }
        Ok(())
    }

    fn flag_bits(&self) -> u32 {
        let mut bits = 0;
        if self.autostart {
            bits |= flags::AUTOSTART;
        }
        if self.boot {
            bits |= flags::BOOT;
        }
        if self.may_manage {
            bits |= flags::MAY_MANAGE;
        }
        if self.kernel_format == KernelFormat::Flat {
            bits |= flags::FLAT_KERNEL;
        }
        bits
    }
}

/// Why a capsule was refused or an image could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// A capsule breaks a per-capsule rule.
    Capsule {
        /// The capsule's name as given (possibly empty or invalid).
        name: String,
        /// What is wrong.
        problem: CapsuleProblem,
    },
    /// A capsule with this name was already added.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A second capsule is marked as the boot capsule.
    MultipleBootCapsules {
        /// The boot capsule added first.
        first: String,
        /// The one added later.
        second: String,
    },
    /// A disk breaks a per-disk rule.
    Disk {
        /// The capsule's name.
        capsule: String,
        /// The disk's name as given (possibly empty or invalid).
        disk: String,
        /// What is wrong.
        problem: DiskProblem,
    },
    /// Two disks of one capsule have the same name.
    DuplicateDiskName {
        /// The capsule's name.
        capsule: String,
        /// The shared disk name.
        disk: String,
    },
    /// A capsule has the MAC address of a capsule added before it.
    DuplicateMac {
        /// The shared address.
        mac: [u8; MAC_LEN],
        /// The capsule added first.
        first: String,
        /// The one added later.
        second: String,
    },
    /// Two disks (of one capsule or of two) share bytes of the machine's disk.
    DisksOverlap {
        /// Capsule of the disk added first.
        first_capsule: String,
        /// The disk added first.
        first_disk: String,
        /// Capsule of the disk added later.
        second_capsule: String,
        /// The disk added later.
        second_disk: String,
        /// First shared byte of the machine's disk.
        start: u64,
        /// The byte just past the last shared one.
        end: u64,
    },
    /// Adding the capsule would exceed [`MAX_CAPSULES`].
    TooManyCapsules,
    /// The image would not fit in the address space.
    ImageTooLarge,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Capsule { name, problem } => write!(f, "capsule {name:?}: {problem}"),
            BuildError::DuplicateName { name } => write!(f, "two capsules are named {name:?}"),
            BuildError::MultipleBootCapsules { first, second } => {
                write!(
                    f,
                    "capsules {first:?} and {second:?} are both marked as the boot capsule"
                )
            }
            BuildError::Disk {
                capsule,
                disk,
                problem,
            } => write!(f, "capsule {capsule:?} disk {disk:?}: {problem}"),
            BuildError::DuplicateMac { mac, first, second } => write!(
                f,
                "capsules {first:?} and {second:?} both have mac {}",
                MacAddress(*mac)
            ),
            BuildError::DuplicateDiskName { capsule, disk } => {
                write!(f, "capsule {capsule:?} has two disks named {disk:?}")
            }
            BuildError::DisksOverlap {
                first_capsule,
                first_disk,
                second_capsule,
                second_disk,
                start,
                end,
            } => write!(
                f,
                "capsule {first_capsule:?} disk {first_disk:?} overlaps capsule {second_capsule:?} disk {second_disk:?} (bytes {start:#x}..{end:#x})"
            ),
            BuildError::TooManyCapsules => {
                write!(f, "an image holds at most {MAX_CAPSULES} capsules")
            }
            BuildError::ImageTooLarge => {
                f.write_str("the image would be larger than the address space")
            }
        }
    }
}

impl core::error::Error for BuildError {}

/// Collects capsules and writes them out as an image.
#[derive(Clone, Debug, Default)]
pub struct ImageBuilder {
    capsules: Vec<CapsuleSpec>,
}

fn put(image: &mut [u8], offset: usize, bytes: &[u8]) -> Result<(), BuildError> {
    let end = offset
        .checked_add(bytes.len())
        .ok_or(BuildError::ImageTooLarge)?;
    image
        .get_mut(offset..end)
        .ok_or(BuildError::ImageTooLarge)?
        .copy_from_slice(bytes);
    Ok(())
}

fn align_up(value: usize, alignment: usize) -> Result<usize, BuildError> {
    value
        .checked_next_multiple_of(alignment)
        .ok_or(BuildError::ImageTooLarge)
}

/// Where one capsule's fields ended up.
#[derive(Clone, Copy, Default)]
struct Placed {
    name: (usize, usize),
    kernel: (usize, usize),
    initrd: (usize, usize),
    cmdline: (usize, usize),
    disks: usize,
}

/// Gives `bytes` a page-aligned offset at `cursor`, or reuses the offset of an identical payload.
fn place_payload<'s>(
    payloads: &mut Vec<(&'s [u8], usize)>,
    bytes: &'s [u8],
    cursor: &mut usize,
) -> Result<(usize, usize), BuildError> {
    if let Some(&(_, offset)) = payloads.iter().find(|(existing, _)| *existing == bytes) {
        return Ok((offset, bytes.len()));
    }
    let offset = align_up(*cursor, PAYLOAD_ALIGNMENT as usize)?;
    *cursor = offset
        .checked_add(bytes.len())
        .ok_or(BuildError::ImageTooLarge)?;
    payloads.push((bytes, offset));
    Ok((offset, bytes.len()))
}

/// Writes one disk table entry at `entry`.
fn write_disk_entry(image: &mut [u8], entry: usize, disk: &DiskSpec) -> Result<(), BuildError> {
    put(
        image,
        entry + disk::START_SECTOR,
        &disk.start_sector.to_le_bytes(),
    )?;
    put(
        image,
        entry + disk::SECTOR_COUNT,
        &disk.sectors.to_le_bytes(),
    )?;
    put(image, entry + disk::NAME, disk.name.as_bytes())?;
    // The name was checked to be at most MAX_DISK_NAME_LEN (20) bytes.
    put(image, entry + disk::NAME_LENGTH, &[disk.name.len() as u8])?;
    let flag_bits = if disk.read_only {
        disk::flags::READ_ONLY
    } else {
        0
    };
    put(image, entry + disk::FLAGS, &flag_bits.to_le_bytes())
}

impl ImageBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a capsule, refusing anything the parser would refuse.
    pub fn capsule(mut self, spec: CapsuleSpec) -> Result<Self, BuildError> {
        spec.check().map_err(|problem| BuildError::Capsule {
            name: spec.name.clone(),
            problem,
        })?;
        spec.check_disks()?;
        if self
            .capsules
            .iter()
            .any(|existing| existing.name == spec.name)
        {
            return Err(BuildError::DuplicateName { name: spec.name });
        }
        self.check_disk_overlaps(&spec)?;
        if let Some(mac) = spec.mac {
            if let Some(first) = self
                .capsules
                .iter()
                .find(|existing| existing.mac == Some(mac))
            {
                return Err(BuildError::DuplicateMac {
                    mac,
                    first: first.name.clone(),
                    second: spec.name,
                });
            }
        }
        if spec.boot {
            if let Some(first) = self.capsules.iter().find(|existing| existing.boot) {
                return Err(BuildError::MultipleBootCapsules {
                    first: first.name.clone(),
                    second: spec.name,
                });
            }
        }
        if self.capsules.len() >= MAX_CAPSULES as usize {
            return Err(BuildError::TooManyCapsules);
        }
        self.capsules.push(spec);
        Ok(self)
    }

    /// Checks that no disk of `spec` overlaps an earlier disk of `spec` or a disk of a capsule
    /// already added.
    fn check_disk_overlaps(&self, spec: &CapsuleSpec) -> Result<(), BuildError> {
        for (index, disk) in spec.disks.iter().enumerate() {
            let earlier = self
                .capsules
                .iter()
                .flat_map(|capsule| capsule.disks.iter().map(move |disk| (capsule, disk)))
                .chain(spec.disks[..index].iter().map(|disk| (spec, disk)));
            for (capsule, earlier) in earlier {
                if let Some(shared) = overlap(earlier.extent(), disk.extent()) {
                    return Err(BuildError::DisksOverlap {
                        first_capsule: capsule.name.clone(),
                        first_disk: earlier.name.clone(),
                        second_capsule: spec.name.clone(),
                        second_disk: disk.name.clone(),
                        start: shared.start,
                        end: shared.end,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes the image.
    ///
    /// Layout: header, capsule table, disk tables, names and command lines, then kernels and
    /// initrds each on a 4 KiB boundary; identical payloads are stored once. The total is padded
    /// to 4 KiB.
    pub fn build(&self) -> Result<Vec<u8>, BuildError> {
        let page = PAYLOAD_ALIGNMENT as usize;
        let table_offset = HEADER_SIZE;
        let mut cursor = self
            .capsules
            .len()
            .checked_mul(RECORD_SIZE)
            .and_then(|size| size.checked_add(table_offset))
            .ok_or(BuildError::ImageTooLarge)?;

        // First pass: assign offsets.
        let mut placed = alloc::vec![Placed::default(); self.capsules.len()];
        for (spec, place) in self.capsules.iter().zip(placed.iter_mut()) {
            if !spec.disks.is_empty() {
                place.disks = align_up(cursor, TABLE_ALIGNMENT as usize)?;
                cursor = spec
                    .disks
                    .len()
                    .checked_mul(DISK_ENTRY_SIZE)
                    .and_then(|size| place.disks.checked_add(size))
                    .ok_or(BuildError::ImageTooLarge)?;
            }
        }
        for (spec, place) in self.capsules.iter().zip(placed.iter_mut()) {
            place.name = (cursor, spec.name.len());
            cursor = cursor
                .checked_add(spec.name.len())
                .ok_or(BuildError::ImageTooLarge)?;
            if !spec.cmdline.is_empty() {
                place.cmdline = (cursor, spec.cmdline.len());
                cursor = cursor
                    .checked_add(spec.cmdline.len())
                    .ok_or(BuildError::ImageTooLarge)?;
            }
        }
        // Each distinct payload once, with its offset: identical kernels or initrds share bytes.
        let mut payloads: Vec<(&[u8], usize)> = Vec::new();
        for (spec, place) in self.capsules.iter().zip(placed.iter_mut()) {
            place.kernel = place_payload(&mut payloads, &spec.kernel, &mut cursor)?;
            if let Some(initrd) = &spec.initrd {
                place.initrd = place_payload(&mut payloads, initrd, &mut cursor)?;
            }
        }
        let image_length = align_up(cursor, page)?;

        // Second pass: write everything.
        let mut image = alloc::vec![0u8; image_length];
        put(&mut image, header::MAGIC, &MAGIC)?;
        put(&mut image, header::VERSION, &FORMAT_VERSION.to_le_bytes())?;
        put(
            &mut image,
            header::HEADER_SIZE,
            &(HEADER_SIZE as u16).to_le_bytes(),
        )?;
        put(
            &mut image,
            header::IMAGE_LENGTH,
            &(image_length as u64).to_le_bytes(),
        )?;
        put(
            &mut image,
            header::TABLE_OFFSET,
            &(table_offset as u64).to_le_bytes(),
        )?;
        put(
            &mut image,
            header::CAPSULE_COUNT,
            &(self.capsules.len() as u32).to_le_bytes(),
        )?;
        put(
            &mut image,
            header::RECORD_SIZE,
            &(RECORD_SIZE as u32).to_le_bytes(),
        )?;
        put(
            &mut image,
            header::SIGNATURE_SCHEME,
            &SIGNATURE_NONE.to_le_bytes(),
        )?;

        for (index, (spec, place)) in self.capsules.iter().zip(placed.iter()).enumerate() {
            let base = table_offset + index * RECORD_SIZE;
            for (at, (offset, length)) in [
                (record::NAME, place.name),
                (record::KERNEL, place.kernel),
                (record::INITRD, place.initrd),
                (record::CMDLINE, place.cmdline),
            ] {
                put(&mut image, base + at, &(offset as u64).to_le_bytes())?;
                put(&mut image, base + at + 8, &(length as u64).to_le_bytes())?;
            }
            put(
                &mut image,
                base + record::MEMORY,
                &spec.memory.to_le_bytes(),
            )?;
            put(&mut image, base + record::VCPUS, &spec.vcpus.to_le_bytes())?;
            put(
                &mut image,
                base + record::FLAGS,
                &spec.flag_bits().to_le_bytes(),
            )?;
            put(
                &mut image,
                base + record::RESTART,
                &[spec.restart.to_byte()],
            )?;
            // `capsule` allowed at most MAX_DISKS (4) disks, so the count fits in a byte.
            put(
                &mut image,
                base + record::DISK_COUNT,
                &[spec.disks.len() as u8],
            )?;
            // No network card is encoded as all zeros, which `check` keeps a real MAC from being.
            put(
                &mut image,
                base + record::MAC,
                &spec.mac.unwrap_or_default(),
            )?;
            put(
                &mut image,
                base + record::DISK_TABLE,
                &(place.disks as u64).to_le_bytes(),
            )?;
            for (index, disk) in spec.disks.iter().enumerate() {
                let entry = place.disks + index * DISK_ENTRY_SIZE;
                write_disk_entry(&mut image, entry, disk)?;
            }

            put(&mut image, place.name.0, spec.name.as_bytes())?;
            put(&mut image, place.cmdline.0, spec.cmdline.as_bytes())?;
        }
        for (bytes, offset) in payloads {
            put(&mut image, offset, bytes)?;
        }

        let sum = checksum(&image);
        put(&mut image, header::CHECKSUM, &sum.to_le_bytes())?;
        Ok(image)
    }
}
