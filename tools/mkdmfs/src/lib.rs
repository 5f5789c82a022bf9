//! Turns a TOML manifest of capsules into a DMFS image, checking every kernel, initrd and size first.
//!
//! Manifest format (one `[[capsule]]` table per capsule):
//!
//! ```toml
//! [[capsule]]
//! name = "boot"                        # required, unique
//! kernel = "${images}/linux/Image"     # required; ${NAME} comes from --define NAME=VALUE
//! kernel_format = "image"              # "image" (default, a RISC-V Linux Image) or "flat"
//! initrd = "initramfs.cpio"            # optional
//! cmdline = "console=ttyS0"            # optional, default ""
//! memory = "256M"                      # required: bytes, or a number with a K, M or G suffix
//! vcpus = 1                            # 1..=64, default 1
//! autostart = true                     # default false (the boot capsule is always started)
//! boot = true                          # exactly one capsule is the boot capsule
//! manage = true                        # may use the management interface, default false
//! restart = "never"                    # never | on-failure | always, default never
//! mac = "02:00:00:00:00:01"            # optional: the capsule's network card; none without it
//!
//! [[capsule.disk]]                     # 0 to 4 per capsule, each after its [[capsule]]
//! name = "data"                        # required: 1..=20 bytes of the capsule name characters,
//!                                      # unique within the capsule; the guest's virtio-blk device ID
//! start = "64M"                        # required: byte offset into the machine's disk
//! size = "64M"                         # required: bytes, > 0
//! read-only = false                    # default false
//! ```
//!
//! Relative paths are relative to the folder holding the manifest.
//!
//! A disk is an extent of the machine's own disk. `start` and `size` take the same forms as
//! `memory` and must be multiples of 4 KiB. No two disks of a manifest may share a byte, whichever
//! capsules they belong to and whether or not they are read-only; touching (one ending where the
//! next starts) is fine. Whether the extents fit on the machine's disk is only known when Keel runs.
//!
//! `mac` gives the capsule a network card with that MAC address: six two-digit hex groups separated
//! by `:`, in either case. It must be a unicast address (the lowest bit of the first byte clear),
//! not all zero, and no other capsule of the manifest may have it. Locally administered addresses,
//! first byte `02`, are the safe choice: no hardware vendor hands them out, so they cannot clash
//! with a real card on the same network.
//!
//! An image can be signed with an Ed25519 key pair ([`Built::sign`], `mkdmfs --sign-key FILE`):
//! key files hold the 32 raw bytes of a secret seed or of a public key ([`read_key_file`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use keel_dmfs::layout::{DISK_ALIGNMENT, MAC_LEN, MAX_DISKS, SECTOR_SIZE};
use keel_dmfs::{
    BuildError, CapsuleProblem, CapsuleSpec, DiskProblem, DiskSpec, FormatError, ImageBuilder,
    KernelFormat, KeyId, MacAddress, RestartPolicy,
};
use keel_linux_boot::{ImageError, KernelKind, PlacementError};
use serde::Deserialize;

/// Smallest guest memory a capsule may have.
pub const MIN_MEMORY: u64 = 16 * MIB;

/// Guest memory sizes must be multiples of this (the hypervisor maps guest RAM in 2 MiB pages).
pub const MEMORY_GRANULE: u64 = keel_dmfs::layout::MEMORY_GRANULE;

/// Guest RAM base assumed when checking that a kernel fits; only its 2 MiB alignment matters.
pub const GUEST_RAM_BASE: u64 = 0x8000_0000;

/// Room kept for the guest device tree when checking that a kernel fits: the most Linux can map
/// early in boot, so the check holds whatever the hypervisor reserves.
pub const FDT_RESERVE: u64 = keel_linux_boot::MAX_FDT_SIZE;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `--define` values, by name.
pub type Defines = BTreeMap<String, String>;

/// A manifest as written, before any checking beyond TOML syntax and key names.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The `[[capsule]]` entries, in file order.
    #[serde(default, rename = "capsule")]
    pub capsules: Vec<CapsuleEntry>,
}

/// One `[[capsule]]` entry as written. Required keys are optional here so that a missing one is
/// reported with the entry it belongs to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleEntry {
    /// Unique capsule name.
    pub name: Option<String>,
    /// Path of the kernel file.
    pub kernel: Option<String>,
    /// `"image"` or `"flat"`.
    pub kernel_format: Option<String>,
    /// Path of the initrd file.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Guest memory: an integer byte count or a string such as `"256M"`.
    pub memory: Option<toml::Value>,
    /// Number of vCPUs.
    pub vcpus: Option<i64>,
    /// Start at hypervisor boot.
    pub autostart: Option<bool>,
    /// This is the boot capsule.
    pub boot: Option<bool>,
    /// May use the management interface.
    pub manage: Option<bool>,
    /// `"never"`, `"on-failure"` or `"always"`.
    pub restart: Option<String>,
    /// MAC address of the capsule's network card, such as `"02:00:00:00:00:01"`.
    pub mac: Option<String>,
    /// The `[[capsule.disk]]` entries, in file order.
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskEntry>,
}

/// One `[[capsule.disk]]` entry as written; like [`CapsuleEntry`], required keys are optional here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskEntry {
    /// Name, unique within the capsule; the guest sees it as the virtio-blk device ID.
    pub name: Option<String>,
    /// Byte offset into the machine's disk: an integer or a string such as `"64M"`.
    pub start: Option<toml::Value>,
    /// Length in bytes: an integer or a string such as `"64M"`.
    pub size: Option<toml::Value>,
    /// The guest may only read the disk.
    #[serde(rename = "read-only")]
    pub read_only: Option<bool>,
}

/// What is wrong with one capsule entry.
#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    /// A required key is absent.
    #[error("missing required key `{0}`")]
    MissingKey(&'static str),
    /// A path uses `${NAME}` with no `--define NAME=...`.
    #[error("`{key}` uses ${{{name}}}, which is not defined (pass --define {name}=VALUE)")]
    UndefinedVariable {
        /// The manifest key holding the path.
        key: &'static str,
        /// The variable name.
        name: String,
    },
    /// A path contains `${` without a closing `}`.
    #[error("`{key}` has an unterminated ${{...}} in {value:?}")]
    UnterminatedVariable {
        /// The manifest key holding the path.
        key: &'static str,
        /// The path as written.
        value: String,
    },
    /// The memory value cannot be read as a size.
    #[error("memory {value} is not a size: {reason}")]
    BadMemory {
        /// The value as written.
        value: String,
        /// Why it was not accepted.
        reason: &'static str,
    },
    /// The memory size is below the minimum.
    #[error("memory {} is less than the minimum of {}", Size(*memory), Size(MIN_MEMORY))]
    MemoryTooSmall {
        /// The size in bytes.
        memory: u64,
    },
    /// The memory size is not a multiple of 2 MiB.
    #[error("memory {} ({memory:#x} bytes) is not a multiple of 2 MiB", Size(*memory))]
    MemoryNotAligned {
        /// The size in bytes.
        memory: u64,
    },
    /// The vCPU count is out of range.
    #[error("vcpus = {0} is outside 1..=64")]
    BadVcpus(i64),
    /// The restart policy is not one of the known spellings.
    #[error("restart = {0:?} is not one of \"never\", \"on-failure\", \"always\"")]
    BadRestart(String),
    /// The kernel format is not one of the known spellings.
    #[error("kernel_format = {0:?} is not one of \"image\", \"flat\"")]
    BadKernelFormat(String),
    /// A file could not be read.
    #[error("cannot read {what} file {}: {error}", path.display())]
    ReadFailed {
        /// `"kernel"` or `"initrd"`.
        what: &'static str,
        /// The resolved path.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// The kernel is not what `kernel_format` says it should be.
    #[error("kernel file {} is not usable: {error}{hint}", path.display())]
    BadKernel {
        /// The resolved path.
        path: PathBuf,
        /// What the kernel check found.
        error: ImageError,
        /// Advice appended to the message, possibly empty.
        hint: &'static str,
    },
    /// The kernel carries a Linux `Image` header but the entry says it is flat.
    #[error(
        "kernel file {} is a RISC-V Linux Image but kernel_format = \"flat\"; remove kernel_format to load it as an Image",
        path.display()
    )]
    FlatIsLinuxImage {
        /// The resolved path.
        path: PathBuf,
    },
    /// The kernel, initrd and device tree do not fit in the capsule's memory.
    #[error("memory {} is too small: {error}", Size(*memory))]
    DoesNotFit {
        /// The capsule's memory in bytes.
        memory: u64,
        /// What does not fit.
        error: PlacementError,
    },
    /// The MAC address is not six `:`-separated groups.
    #[error(
        "mac {value:?} has {groups} group{}; expected six two-digit hex groups separated by ':', such as \"02:00:00:00:00:01\"",
        if *groups == 1 { "" } else { "s" }
    )]
    MacNotSixGroups {
        /// The value as written.
        value: String,
        /// How many `:`-separated groups it has.
        groups: usize,
    },
    /// A group of the MAC address is not two hex digits.
    #[error("mac {value:?}: group {position} ({group:?}) is not two hex digits")]
    MacBadGroup {
        /// The value as written.
        value: String,
        /// Position (1-based) of the group.
        position: usize,
        /// The group as written.
        group: String,
    },
    /// A rule of the image format (name characters, command line, MAC address, ...) is broken.
    #[error("{0}")]
    Format(CapsuleProblem),
    /// More `[[capsule.disk]]` entries than a capsule may have.
    #[error("has {count} [[capsule.disk]] entries; at most {MAX_DISKS} are allowed")]
    TooManyDisks {
        /// The number of entries.
        count: usize,
    },
}

/// What is wrong with one `[[capsule.disk]]` entry.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A required key is absent.
    #[error("missing required key `{0}`")]
    MissingKey(&'static str),
    /// The name breaks a rule of the image format.
    #[error("{0}")]
    Name(DiskProblem),
    /// `start` or `size` cannot be read as a size.
    #[error("`{key}` = {value} is not a size: {reason}")]
    BadSize {
        /// `"start"` or `"size"`.
        key: &'static str,
        /// The value as written.
        value: String,
        /// Why it was not accepted.
        reason: &'static str,
    },
    /// `start` or `size` is not a multiple of 4 KiB.
    #[error("`{key}` = {} ({bytes:#x} bytes) is not a multiple of 4 KiB", Size(*bytes))]
    Misaligned {
        /// `"start"` or `"size"`.
        key: &'static str,
        /// The value in bytes.
        bytes: u64,
    },
    /// `size` is zero.
    #[error("`size` is zero")]
    Empty,
    /// `start + size` is past the largest byte offset 64 bits hold.
    #[error("`start` {start:#x} plus `size` {size:#x} ends past the largest 64-bit byte offset")]
    Overflows {
        /// Start in bytes.
        start: u64,
        /// Size in bytes.
        size: u64,
    },
    /// Another disk of the same capsule has this name.
    #[error("disk entries {first} and {second} of this capsule are both named so")]
    DuplicateName {
        /// Position (1-based) of the first disk entry with the name.
        first: usize,
        /// Position (1-based) of the second.
        second: usize,
    },
    /// The image writer refused the disk.
    #[error("{0}")]
    Format(DiskProblem),
}

/// Why a manifest could not be turned into an image.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest has no capsules.
    #[error("the manifest defines no [[capsule]] entries")]
    NoCapsules,
    /// One capsule entry is wrong.
    #[error("capsule {capsule}: {problem}")]
    Capsule {
        /// The entry, by name or by position.
        capsule: String,
        /// What is wrong with it.
        problem: CapsuleError,
    },
    /// Two entries have the same name.
    #[error("capsule entries {first} and {second} are both named {name:?}")]
    DuplicateName {
        /// The shared name.
        name: String,
        /// Position (1-based) of the first entry.
        first: usize,
        /// Position (1-based) of the second entry.
        second: usize,
    },
    /// No entry says `boot = true`.
    #[error("no capsule has boot = true; exactly one must be the boot capsule")]
    NoBootCapsule,
    /// Several entries say `boot = true`.
    #[error(
        "capsules {first} and {second} both have boot = true; exactly one may be the boot capsule"
    )]
    MultipleBootCapsules {
        /// The first boot entry.
        first: String,
        /// The second boot entry.
        second: String,
    },
    /// Two entries have the same MAC address.
    #[error("capsule {second} has the same mac {} as capsule {first}", MacAddress(*mac))]
    DuplicateMac {
        /// The shared address.
        mac: [u8; MAC_LEN],
        /// The entry written first in the manifest.
        first: String,
        /// The entry written later.
        second: String,
    },
    /// One disk entry is wrong.
    #[error("capsule {capsule} disk {disk}: {problem}")]
    Disk {
        /// The capsule, by name or by position.
        capsule: String,
        /// The disk, by name or by position.
        disk: String,
        /// What is wrong with it.
        problem: DiskError,
    },
    /// Two disks share bytes of the machine's disk.
    #[error(
        "capsule {first_capsule} disk {first_disk} overlaps capsule {second_capsule} disk {second_disk} (bytes {start:#x}..{end:#x})"
    )]
    DisksOverlap {
        /// Capsule of the disk written first in the manifest.
        first_capsule: String,
        /// That disk.
        first_disk: String,
        /// Capsule of the disk written later.
        second_capsule: String,
        /// That disk.
        second_disk: String,
        /// First byte they share.
        start: u64,
        /// The byte just past the last one they share.
        end: u64,
    },
    /// The image writer refused the result.
    #[error("cannot build the image: {0}")]
    Build(BuildError),
    /// The built image could not be signed.
    #[error("cannot sign the image: {0}")]
    Sign(FormatError),
}

/// Length of an Ed25519 key file: the secret seed, or the public key.
pub const KEY_FILE_LEN: usize = keel_dmfs::layout::KEY_LEN;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read key file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// The file does not hold exactly one key.
    #[error(
        "key file {} is {length} bytes long; a key file holds exactly {KEY_FILE_LEN} raw bytes",
        path.display()
    )]
    BadLength {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        length: usize,
    },
}

/// Reads a key file: exactly [`KEY_FILE_LEN`] raw bytes, a secret seed or a public key.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_FILE_LEN], KeyFileError> {
    let bytes = fs::read(path).map_err(|error| KeyFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyFileError::BadLength {
            path: path.to_owned(),
            length: bytes.len(),
        })
}

/// A byte count in the largest binary unit it reaches: exact (`256 MiB`) when that unit divides
/// it, to a tenth (`292.9 KiB`) otherwise.
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Size(bytes) = *self;
        for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if bytes >= unit {
                if bytes.is_multiple_of(unit) {
                    return write!(f, "{} {name}", bytes / unit);
                }
                // Truncated, not rounded, so a size just under a limit never prints as the limit.
                let tenths = u128::from(bytes) * 10 / u128::from(unit);
                return write!(f, "{}.{} {name}", tenths / 10, tenths % 10);
            }
        }
        write!(f, "{bytes} bytes")
    }
}

/// What was put into the image for one capsule, for the one-line summary.
#[derive(Clone, Debug)]
pub struct CapsuleSummary {
    /// Capsule name.
    pub name: String,
    /// Resolved kernel path.
    pub kernel: PathBuf,
    /// What the kernel is.
    pub kind: KernelKind,
    /// Kernel file length.
    pub kernel_len: u64,
    /// Resolved initrd path and its length.
    pub initrd: Option<(PathBuf, u64)>,
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPU count.
    pub vcpus: u32,
    /// Boot capsule.
    pub boot: bool,
    /// Started at hypervisor boot.
    pub autostart: bool,
    /// May use the management interface.
    pub manage: bool,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// MAC address of the network card, if the capsule has one.
    pub mac: Option<[u8; MAC_LEN]>,
    /// Disks, in manifest order.
    pub disks: Vec<DiskSpec>,
}

impl fmt::Display for CapsuleSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        match self.kind {
            KernelKind::LinuxImage(header) => write!(
                f,
                "Linux Image v{}.{} ({} loaded) from {}",
                header.version_major(),
                header.version_minor(),
                Size(header.image_size.max(self.kernel_len)),
                self.kernel.display()
            )?,
            KernelKind::FlatBinary => write!(
                f,
                "flat binary ({}) from {}",
                Size(self.kernel_len),
                self.kernel.display()
            )?,
        }
        if let Some((path, length)) = &self.initrd {
            write!(f, ", initrd {} from {}", Size(*length), path.display())?;
        }
        write!(
            f,
            ", {}, {} vCPU{}",
            Size(self.memory),
            self.vcpus,
            if self.vcpus == 1 { "" } else { "s" }
        )?;
        for (set, label) in [
            (self.boot, "boot"),
            (self.autostart, "autostart"),
            (self.manage, "manage"),
        ] {
            if set {
                write!(f, ", {label}")?;
            }
        }
        write!(f, ", restart {}", self.restart)?;
        if let Some(mac) = self.mac {
            write!(f, ", mac {}", MacAddress(mac))?;
        }
        for disk in &self.disks {
            write!(
                f,
                ", disk {} {} at {}{}",
                disk.name,
                Size(disk.sectors.saturating_mul(SECTOR_SIZE)),
                Size(disk.start_sector.saturating_mul(SECTOR_SIZE)),
                if disk.read_only { " read-only" } else { "" }
            )?;
        }
        Ok(())
    }
}

/// A built image and what went into it.
#[derive(Clone, Debug)]
pub struct Built {
    /// The image bytes.
    pub image: Vec<u8>,
    /// One summary per capsule, in manifest order.
    pub capsules: Vec<CapsuleSummary>,
}

impl Built {
    /// Signs the image with the key pair whose secret seed is `secret_key`; returns the key's id.
    pub fn sign(&mut self, secret_key: &[u8; KEY_FILE_LEN]) -> Result<KeyId, ManifestError> {
        keel_dmfs::sign(&mut self.image, secret_key).map_err(ManifestError::Sign)?;
        Ok(KeyId::of(&keel_dmfs::public_key(secret_key)))
    }
}

/// Parses manifest text. Only TOML syntax, key names and value types are checked here.
pub fn parse_manifest(text: &str) -> Result<Manifest, toml::de::Error> {
    toml::from_str(text)
}

/// Parses a `NAME=VALUE` argument of `--define`.
pub fn parse_define(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("--define {text:?} is not of the form NAME=VALUE"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "--define name {name:?} must be non-empty ASCII letters, digits or '_'"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Parses a memory size: a plain byte count or a number with a `K`, `M` or `G` suffix (binary
/// multiples; `KiB`, `MiB`, `GiB` and lower case are accepted too).
pub fn parse_size(text: &str) -> Result<u64, &'static str> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err("expected a number, optionally followed by K, M or G");
    }
    let multiplier = match suffix.trim_start().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => GIB,
        _ => return Err("unknown suffix; use K, M or G"),
    };
    let number: u64 = digits.parse().map_err(|_| "number is too large")?;
    number.checked_mul(multiplier).ok_or("size is too large")
}

/// Parses a MAC address written as six two-digit hex groups separated by `:`, in either case
/// (`02:00:00:00:00:01`, `02:AB:cd:00:00:01`), and checks that a network card can use it: not
/// all zero and not multicast ([`keel_dmfs::check_mac`]).
pub fn parse_mac(text: &str) -> Result<[u8; MAC_LEN], CapsuleError> {
    let groups = text.split(':').count();
    if groups != MAC_LEN {
        return Err(CapsuleError::MacNotSixGroups {
            value: text.to_owned(),
            groups,
        });
    }
    let mut mac = [0u8; MAC_LEN];
    for (index, (byte, group)) in mac.iter_mut().zip(text.split(':')).enumerate() {
        // Checked digit by digit: `from_str_radix` alone would also take "+f" or a lone digit.
        let bad = || CapsuleError::MacBadGroup {
            value: text.to_owned(),
            position: index + 1,
            group: group.to_owned(),
        };
        let &[high, low] = group.as_bytes() else {
            return Err(bad());
        };
        let digit = |character: u8| char::from(character).to_digit(16);
        let (Some(high), Some(low)) = (digit(high), digit(low)) else {
            return Err(bad());
        };
        // Two hex digits are at most 0xff.
        *byte = (high * 16 + low) as u8;
    }
    keel_dmfs::check_mac(mac).map_err(CapsuleError::Format)?;
    Ok(mac)
}

/// Replaces each `${NAME}` in `value` with its definition.
fn expand(key: &'static str, value: &str, defines: &Defines) -> Result<String, CapsuleError> {
    let mut output = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| CapsuleError::UnterminatedVariable {
                key,
                value: value.to_owned(),
            })?;
        let name = &after[..end];
        let definition = defines
            .get(name)
            .ok_or_else(|| CapsuleError::UndefinedVariable {
                key,
                name: name.to_owned(),
            })?;
        output.push_str(definition);
        rest = &after[end + 1..];
    }
    output.push_str(rest);
    Ok(output)
}

/// A capsule entry whose values have been checked, before any file is read.
struct Resolved {
    disks: Vec<DiskSpec>,
    name: String,
    kernel: PathBuf,
    kernel_format: KernelFormat,
    initrd: Option<PathBuf>,
    cmdline: String,
    memory: u64,
    vcpus: u32,
    autostart: bool,
    boot: bool,
    manage: bool,
    restart: RestartPolicy,
    mac: Option<[u8; MAC_LEN]>,
}

/// Reads a size value: an integer byte count or a string such as `"64M"`.
fn size_of_value(value: &toml::Value) -> Result<u64, &'static str> {
    match value {
        toml::Value::Integer(bytes) => u64::try_from(*bytes).map_err(|_| "it is negative"),
        toml::Value::String(text) => parse_size(text),
        _ => Err("expected a byte count or a string such as \"64M\""),
    }
}

/// Checks one `[[capsule.disk]]` entry on its own and converts it to sectors.
fn resolve_disk(entry: &DiskEntry) -> Result<DiskSpec, DiskError> {
    let name = entry.name.clone().ok_or(DiskError::MissingKey("name"))?;
    keel_dmfs::check_disk_name(name.as_bytes()).map_err(DiskError::Name)?;
    let bytes = |key| -> Result<u64, DiskError> {
        let value = match key {
            "start" => entry.start.as_ref(),
            _ => entry.size.as_ref(),
        }
        .ok_or(DiskError::MissingKey(key))?;
        let bytes = size_of_value(value).map_err(|reason| DiskError::BadSize {
            key,
            value: value.to_string(),
            reason,
        })?;
        if bytes.is_multiple_of(DISK_ALIGNMENT) {
            Ok(bytes)
        } else {
            Err(DiskError::Misaligned { key, bytes })
        }
    };
    let start = bytes("start")?;
    let size = bytes("size")?;
    if size == 0 {
        return Err(DiskError::Empty);
    }
    if start.checked_add(size).is_none() {
        return Err(DiskError::Overflows { start, size });
    }
    Ok(DiskSpec {
        name,
        start_sector: start / SECTOR_SIZE,
        sectors: size / SECTOR_SIZE,
        read_only: entry.read_only.unwrap_or(false),
    })
}

/// How a disk entry is named in messages: by its name, or by its 1-based position if it has none.
fn disk_label(entry: &DiskEntry, index: usize) -> String {
    match entry.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => format!("entry {} (unnamed)", index + 1),
    }
}

/// Checks the disks of one capsule entry: each on its own, their number and their names.
fn resolve_disks(entry: &CapsuleEntry, capsule: &str) -> Result<Vec<DiskSpec>, ManifestError> {
    let mut disks: Vec<DiskSpec> = Vec::with_capacity(entry.disks.len());
    for (index, disk_entry) in entry.disks.iter().enumerate() {
        let fail = |problem| ManifestError::Disk {
            capsule: capsule.to_owned(),
            disk: disk_label(disk_entry, index),
            problem,
        };
        let disk = resolve_disk(disk_entry).map_err(fail)?;
        if let Some(first) = disks.iter().position(|earlier| earlier.name == disk.name) {
            return Err(fail(DiskError::DuplicateName {
                first: first + 1,
                second: index + 1,
            }));
        }
        disks.push(disk);
    }
    // Counted after the entries are checked, so a fifth disk that is also wrong in itself is
    // reported for what is wrong with it first.
    if disks.len() > usize::from(MAX_DISKS) {
        return Err(ManifestError::Capsule {
            capsule: capsule.to_owned(),
            problem: CapsuleError::TooManyDisks { count: disks.len() },
        });
    }
    Ok(disks)
}

/// Checks that no two disks of the manifest share a byte.
fn check_disk_overlaps(resolved: &[Resolved]) -> Result<(), ManifestError> {
    let extent = |disk: &DiskSpec| {
        (
            // `resolve_disk` made sure the end fits in 64 bits; saturating keeps that a non-issue.
            disk.start_sector.saturating_mul(SECTOR_SIZE),
            disk.start_sector
                .saturating_add(disk.sectors)
                .saturating_mul(SECTOR_SIZE),
        )
    };
    let all: Vec<(&Resolved, &DiskSpec)> = resolved
        .iter()
        .flat_map(|capsule| capsule.disks.iter().map(move |disk| (capsule, disk)))
        .collect();
    for (index, &(capsule, disk)) in all.iter().enumerate() {
        let (start, end) = extent(disk);
        for &(earlier_capsule, earlier) in &all[..index] {
            let (earlier_start, earlier_end) = extent(earlier);
            let shared = start.max(earlier_start)..end.min(earlier_end);
            if !shared.is_empty() {
                return Err(ManifestError::DisksOverlap {
                    first_capsule: format!("{:?}", earlier_capsule.name),
                    first_disk: format!("{:?}", earlier.name),
                    second_capsule: format!("{:?}", capsule.name),
                    second_disk: format!("{:?}", disk.name),
                    start: shared.start,
                    end: shared.end,
                });
            }
        }
    }
    Ok(())
}

fn memory_of(value: &toml::Value) -> Result<u64, CapsuleError> {
    let bad = |reason| CapsuleError::BadMemory {
        value: value.to_string(),
        reason,
    };
    let memory = match value {
        toml::Value::Integer(bytes) => u64::try_from(*bytes).map_err(|_| bad("it is negative"))?,
        toml::Value::String(text) => parse_size(text).map_err(bad)?,
        _ => return Err(bad("expected a byte count or a string such as \"256M\"")),
    };
    if memory < MIN_MEMORY {
        return Err(CapsuleError::MemoryTooSmall { memory });
    }
    if !memory.is_multiple_of(MEMORY_GRANULE) {
        return Err(CapsuleError::MemoryNotAligned { memory });
    }
    Ok(memory)
}

fn resolve(entry: &CapsuleEntry, base: &Path, defines: &Defines) -> Result<Resolved, CapsuleError> {
    let name = entry.name.clone().ok_or(CapsuleError::MissingKey("name"))?;
    let path = |key, value: &str| expand(key, value, defines).map(|path| base.join(path));
    let kernel = path(
        "kernel",
        entry
            .kernel
            .as_deref()
            .ok_or(CapsuleError::MissingKey("kernel"))?,
    )?;
    let initrd = entry
        .initrd
        .as_deref()
        .map(|initrd| path("initrd", initrd))
        .transpose()?;
    let kernel_format = match entry.kernel_format.as_deref() {
        None | Some("image") => KernelFormat::LinuxImage,
        Some("flat") => KernelFormat::Flat,
        Some(other) => return Err(CapsuleError::BadKernelFormat(other.to_owned())),
    };
    let memory = memory_of(
        entry
            .memory
            .as_ref()
            .ok_or(CapsuleError::MissingKey("memory"))?,
    )?;
    let vcpus = entry.vcpus.unwrap_or(1);
    let vcpus = u32::try_from(vcpus)
        .ok()
        .filter(|count| (1..=keel_dmfs::layout::MAX_VCPUS).contains(count))
        .ok_or(CapsuleError::BadVcpus(vcpus))?;
    let restart = match entry.restart.as_deref() {
        None | Some("never") => RestartPolicy::Never,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("always") => RestartPolicy::Always,
        Some(other) => return Err(CapsuleError::BadRestart(other.to_owned())),
    };
    let mac = entry.mac.as_deref().map(parse_mac).transpose()?;
    Ok(Resolved {
        disks: Vec::new(),
        name,
        kernel,
        kernel_format,
        initrd,
        cmdline: entry.cmdline.clone().unwrap_or_default(),
        memory,
        vcpus,
        autostart: entry.autostart.unwrap_or(false),
        boot: entry.boot.unwrap_or(false),
        manage: entry.manage.unwrap_or(false),
        restart,
        mac,
    })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, CapsuleError> {
    fs::read(path).map_err(|error| CapsuleError::ReadFailed {
        what,
        path: path.to_owned(),
        error,
    })
}

/// Reads a capsule's files and checks that the kernel is what it claims and that it fits.
fn load(capsule: Resolved) -> Result<(CapsuleSpec, CapsuleSummary), CapsuleError> {
    let kernel = read("kernel", &capsule.kernel)?;
    let initrd = capsule
        .initrd
        .as_deref()
        .map(|path| read("initrd", path))
        .transpose()?;
    let bad_kernel = |error, hint| CapsuleError::BadKernel {
        path: capsule.kernel.clone(),
        error,
        hint,
    };
    let kind = match capsule.kernel_format {
        KernelFormat::LinuxImage => keel_linux_boot::parse_image(&kernel)
            .map(KernelKind::LinuxImage)
            .map_err(|error| {
                let hint = match error {
                    ImageError::BadMagic2 { .. } | ImageError::TooShort { .. } => {
                        "; set kernel_format = \"flat\" if it is a flat binary"
                    }
                    _ => "",
                };
                bad_kernel(error, hint)
            })?,
        KernelFormat::Flat => match keel_linux_boot::identify(&kernel) {
            Ok(KernelKind::FlatBinary) => KernelKind::FlatBinary,
            Ok(KernelKind::LinuxImage(_)) => {
                return Err(CapsuleError::FlatIsLinuxImage {
                    path: capsule.kernel.clone(),
                })
            }
            Err(error) => return Err(bad_kernel(error, "")),
        },
    };
    let kernel_len = kernel.len() as u64;
    let initrd_len = initrd.as_ref().map(|bytes| bytes.len() as u64);
    keel_linux_boot::place(
        GUEST_RAM_BASE,
        capsule.memory,
        &kind,
        kernel_len,
        initrd_len,
        FDT_RESERVE,
    )
    .map_err(|error| CapsuleError::DoesNotFit {
        memory: capsule.memory,
        error,
    })?;

    let summary = CapsuleSummary {
        name: capsule.name.clone(),
        kernel: capsule.kernel,
        kind,
        kernel_len,
        initrd: capsule.initrd.zip(initrd_len),
        memory: capsule.memory,
        vcpus: capsule.vcpus,
        boot: capsule.boot,
        autostart: capsule.autostart,
        manage: capsule.manage,
        restart: capsule.restart,
        mac: capsule.mac,
        disks: capsule.disks.clone(),
    };
    let spec = CapsuleSpec {
        name: capsule.name,
        kernel,
        initrd,
        cmdline: capsule.cmdline,
        memory: capsule.memory,
        vcpus: capsule.vcpus,
        autostart: capsule.autostart,
        boot: capsule.boot,
        may_manage: capsule.manage,
        restart: capsule.restart,
        kernel_format: capsule.kernel_format,
        mac: capsule.mac,
        disks: capsule.disks,
    };
    Ok((spec, summary))
}

/// How an entry is named in messages: by its name, or by its 1-based position if it has none.
fn label(entry: &CapsuleEntry, index: usize) -> String {
    match entry.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => format!("entry {} (unnamed)", index + 1),
    }
}

/// Checks everything about a parsed manifest that does not need its files: each entry's keys and
/// values, `${NAME}` expansion, unique names, unique MAC addresses, exactly one boot capsule, and
/// disks that are valid and share no byte. Reads nothing.
pub fn check_manifest(
    manifest: &Manifest,
    base: &Path,
    defines: &Defines,
) -> Result<(), ManifestError> {
    resolve_all(manifest, base, defines).map(|_| ())
}

/// The boot capsule's memory in bytes and its vCPU count, after the checks of [`check_manifest`]: what a kernel
/// booted without Keel gets as its whole machine when it stands in for that capsule.
pub fn boot_capsule_machine(
    manifest: &Manifest,
    base: &Path,
    defines: &Defines,
) -> Result<(u64, u32), ManifestError> {
    let resolved = resolve_all(manifest, base, defines)?;
    // resolve_all has checked that exactly one capsule boots.
    let boot = resolved
        .iter()
        .find(|capsule| capsule.boot)
        .ok_or(ManifestError::NoBootCapsule)?;
    Ok((boot.memory, boot.vcpus))
}

/// The checks of [`check_manifest`], keeping the resolved entries for the build.
fn resolve_all(
    manifest: &Manifest,
    base: &Path,
    defines: &Defines,
) -> Result<Vec<Resolved>, ManifestError> {
    if manifest.capsules.is_empty() {
        return Err(ManifestError::NoCapsules);
    }
    let mut resolved = Vec::with_capacity(manifest.capsules.len());
    for (index, entry) in manifest.capsules.iter().enumerate() {
        let mut capsule =
            resolve(entry, base, defines).map_err(|problem| ManifestError::Capsule {
                capsule: label(entry, index),
                problem,
            })?;
        capsule.disks = resolve_disks(entry, &label(entry, index))?;
        resolved.push(capsule);
    }
    for (second, capsule) in resolved.iter().enumerate() {
        if let Some(first) = resolved[..second]
            .iter()
            .position(|earlier| earlier.name == capsule.name)
        {
            return Err(ManifestError::DuplicateName {
                name: capsule.name.clone(),
                first: first + 1,
                second: second + 1,
            });
        }
        if let Some(mac) = capsule.mac {
            if let Some(first) = resolved[..second]
                .iter()
                .find(|earlier| earlier.mac == Some(mac))
            {
                return Err(ManifestError::DuplicateMac {
                    mac,
                    first: format!("{:?}", first.name),
                    second: format!("{:?}", capsule.name),
                });
            }
        }
    }
    check_disk_overlaps(&resolved)?;
    let mut boot = resolved.iter().filter(|capsule| capsule.boot);
    match (boot.next(), boot.next()) {
        (None, _) => Err(ManifestError::NoBootCapsule),
        (Some(first), Some(second)) => Err(ManifestError::MultipleBootCapsules {
            first: format!("{:?}", first.name),
            second: format!("{:?}", second.name),
        }),
        (Some(_), None) => Ok(resolved),
    }
}

/// Checks a parsed manifest and builds the image. Relative paths are resolved against `base`.
pub fn build_manifest(
    manifest: &Manifest,
    base: &Path,
    defines: &Defines,
) -> Result<Built, ManifestError> {
    // Check every entry's values first, so a mistake is reported before large files are read.
    let resolved = resolve_all(manifest, base, defines)?;

    let mut builder = ImageBuilder::new();
    let mut summaries = Vec::with_capacity(resolved.len());
    for capsule in resolved {
        let name = capsule.name.clone();
        let (spec, summary) = load(capsule).map_err(|problem| ManifestError::Capsule {
            capsule: format!("{name:?}"),
            problem,
        })?;
        builder = builder.capsule(spec).map_err(|error| match error {
            BuildError::Capsule { name, problem } => ManifestError::Capsule {
                capsule: format!("{name:?}"),
                problem: CapsuleError::Format(problem),
            },
            BuildError::Disk {
                capsule,
                disk,
                problem,
            } => ManifestError::Disk {
                capsule: format!("{capsule:?}"),
                disk: format!("{disk:?}"),
                problem: DiskError::Format(problem),
            },
            BuildError::DuplicateMac { mac, first, second } => ManifestError::DuplicateMac {
                mac,
                first: format!("{first:?}"),
                second: format!("{second:?}"),
            },
            other => ManifestError::Build(other),
        })?;
        summaries.push(summary);
    }
    let image = builder.build().map_err(ManifestError::Build)?;
    Ok(Built {
        image,
        capsules: summaries,
    })
}

/// Reads the manifest at `manifest_path` and builds the image, with summaries of its capsules.
pub fn build(manifest_path: &Path, defines: &Defines) -> anyhow::Result<Built> {
    let text = fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read manifest {}", manifest_path.display()))?;
    let manifest = parse_manifest(&text)
        .with_context(|| format!("manifest {} is not valid", manifest_path.display()))?;
    let base = manifest_path.parent().unwrap_or_else(|| Path::new("."));
    build_manifest(&manifest, base, defines)
        .with_context(|| format!("in manifest {}", manifest_path.display()))
}

/// Reads the manifest at `manifest_path`, expands `${NAME}` from `defines` (later pairs win), and
/// returns the image bytes.
pub fn build_from_manifest(
    manifest_path: &Path,
    defines: &[(String, String)],
) -> anyhow::Result<Vec<u8>> {
    let defines: Defines = defines.iter().cloned().collect();
    build(manifest_path, &defines).map(|built| built.image)
}

/// Like [`build_from_manifest`], then signs the image with the secret seed `secret_key`.
pub fn build_signed_from_manifest(
    manifest_path: &Path,
    defines: &[(String, String)],
    secret_key: &[u8; KEY_FILE_LEN],
) -> anyhow::Result<Vec<u8>> {
    let defines: Defines = defines.iter().cloned().collect();
    let mut built = build(manifest_path, &defines)?;
    built
        .sign(secret_key)
        .with_context(|| format!("in manifest {}", manifest_path.display()))?;
    Ok(built.image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("64 KiB"), Ok(64 * KIB));
        assert_eq!(parse_size("2m"), Ok(2 * MIB));
        assert_eq!(parse_size("16777216"), Ok(16 * MIB));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-5M").is_err());
        assert_eq!(
            parse_size("99999999999999999999G"),
            Err("number is too large")
        );
        assert_eq!(parse_size("17179869184G"), Err("size is too large"));
    }

    #[test]
    fn size_display() {
        assert_eq!(Size(256 * MIB).to_string(), "256 MiB");
        assert_eq!(Size(3 * GIB).to_string(), "3 GiB");
        assert_eq!(Size(6 * KIB).to_string(), "6 KiB");
        assert_eq!(Size(1000).to_string(), "1000 bytes");
        assert_eq!(Size(300_000).to_string(), "292.9 KiB");
        assert_eq!(Size(GIB - 1).to_string(), "1023.9 MiB");
    }

    #[test]
    fn defines() {
        assert_eq!(
            parse_define("images=/srv/img"),
            Ok(("images".into(), "/srv/img".into()))
        );
        assert_eq!(parse_define("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_define("novalue").is_err());
        assert!(parse_define("=x").is_err());
        assert!(parse_define("bad name=x").is_err());
    }

    #[test]
    fn expansion() {
        let defines: Defines = [
            ("images".to_owned(), "/srv".to_owned()),
            ("v".to_owned(), "6.1".to_owned()),
        ]
        .into();
        assert_eq!(
            expand("kernel", "${images}/linux-${v}/Image", &defines).unwrap(),
            "/srv/linux-6.1/Image"
        );
        assert_eq!(
            expand("kernel", "plain/$HOME/path", &defines).unwrap(),
            "plain/$HOME/path"
        );
        let error = expand("initrd", "${nope}/x", &defines).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`initrd` uses ${nope}, which is not defined (pass --define nope=VALUE)"
        );
        assert!(matches!(
            expand("kernel", "${images", &defines),
            Err(CapsuleError::UnterminatedVariable { .. })
        ));
    }
}
