//! Capsule definitions as read from an image, and the per-capsule rules the parser and the writer share.

use core::fmt;

use crate::disk::Disks;
use crate::error::CapsuleProblem;
use crate::layout::{restart, MAC_LEN, MAX_CMDLINE_LEN, MAX_NAME_LEN, MAX_VCPUS, MEMORY_GRANULE};
use crate::mac::MacAddress;

/// What the hypervisor does when a capsule's guest stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Leave it stopped.
    #[default]
    Never,
    /// Restart it when it stopped because of a failure (not a clean power-off).
    OnFailure,
    /// Restart it whenever it stops.
    Always,
}

impl RestartPolicy {
    /// Decodes the record's restart byte.
    pub fn from_byte(value: u8) -> Option<Self> {
        match value {
            restart::NEVER => Some(Self::Never),
            restart::ON_FAILURE => Some(Self::OnFailure),
            restart::ALWAYS => Some(Self::Always),
            _ => None,
        }
    }

    /// The record's restart byte for this policy.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Never => restart::NEVER,
            Self::OnFailure => restart::ON_FAILURE,
            Self::Always => restart::ALWAYS,
        }
    }

    /// The spelling used in manifests and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the hypervisor should load a capsule's kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelFormat {
    /// A RISC-V Linux `Image`, placed according to its header.
    #[default]
    LinuxImage,
    /// A headerless binary started at its first byte.
    Flat,
}

impl fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LinuxImage => "Linux Image",
            Self::Flat => "flat binary",
        })
    }
}

/// One capsule of a parsed image; every field has been validated and the slices borrow the image.
///
/// `Debug` shows the payload sizes rather than the payload bytes, so a capsule can be logged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Capsule<'a> {
    /// Unique, non-empty name of at most 64 ASCII letters, digits, `-`, `_` or `.`.
    pub name: &'a str,
    /// Kernel bytes, non-empty, starting 4 KiB aligned relative to the image.
    pub kernel: &'a [u8],
    /// Initrd bytes, starting 4 KiB aligned relative to the image, if the capsule has one.
    pub initrd: Option<&'a [u8]>,
    /// Kernel command line (UTF-8, no NUL), possibly empty.
    pub cmdline: &'a str,
    /// Guest RAM in bytes: a non-zero multiple of 2 MiB.
    pub memory: u64,
    /// Number of vCPUs, 1 to 64.
    pub vcpus: u32,
    /// Start this capsule when the hypervisor boots.
    pub autostart: bool,
    /// This is the boot capsule (always started); an image has at most one.
    pub boot: bool,
    /// The capsule may use the management interface.
    pub may_manage: bool,
    /// What to do when the guest stops.
    pub restart: RestartPolicy,
    /// How to load [`Capsule::kernel`].
    pub kernel_format: KernelFormat,
    /// MAC address of the capsule's network card, or `None` when it has no network card (always
    /// so in images older than format version 3). A unicast address, unique within the image;
    /// [`crate::MacAddress`] shows it the usual way.
    pub mac: Option<[u8; MAC_LEN]>,
    /// The capsule's disks (at most 4), in table order: validated extents of the machine's disk that
    /// overlap no other disk of the image. Copy it to iterate.
    pub disks: Disks<'a>,
}

impl Capsule<'_> {
    /// Number of disks the capsule has, 0 to 4.
    pub fn disk_count(&self) -> usize {
        self.disks.len()
    }
}

impl fmt::Debug for Capsule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capsule")
            .field("name", &self.name)
            .field("kernel_len", &self.kernel.len())
            .field("initrd_len", &self.initrd.map(<[u8]>::len))
            .field("cmdline", &self.cmdline)
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus)
            .field("autostart", &self.autostart)
            .field("boot", &self.boot)
            .field("may_manage", &self.may_manage)
            .field("restart", &self.restart)
            .field("kernel_format", &self.kernel_format)
            .field("mac", &self.mac.map(MacAddress))
            .field("disks", &self.disks)
            .finish()
    }
}

/// A name of at most `N` bytes held inline, so errors can name capsules and disks without borrowing the image or
/// allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineName<const N: usize> {
    bytes: [u8; N],
    length: u8,
}

/// A capsule name held inline.
pub type CapsuleName = InlineName<MAX_NAME_LEN>;

impl<const N: usize> InlineName<N> {
    /// Copies `name`, cutting it at `N` bytes (on a character boundary).
    pub fn new(name: &str) -> Self {
        const { assert!(N <= u8::MAX as usize, "the length must fit in a u8") };
        let mut length = name.len().min(N);
        while !name.is_char_boundary(length) {
            length -= 1;
        }
        let mut bytes = [0u8; N];
        let source = name.as_bytes().get(..length).unwrap_or_default();
        if let Some(target) = bytes.get_mut(..length) {
            target.copy_from_slice(source);
        }
        // `length` is at most N, which the assertion above keeps within a u8.
        Self {
            bytes,
            length: length as u8,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        let bytes = self
            .bytes
            .get(..usize::from(self.length))
            .unwrap_or_default();
        // Always valid: `new` copies a whole-character prefix of a `str`.
        core::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Debug for InlineName<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for InlineName<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a name's bytes and returns it as a `str`.
///
/// Names are restricted to a small ASCII set because they are typed at the management interface
/// and printed on the console, where spaces or control characters would be ambiguous or harmful.
pub(crate) fn check_name(bytes: &[u8]) -> Result<&str, CapsuleProblem> {
    if bytes.is_empty() {
        return Err(CapsuleProblem::EmptyName);
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err(CapsuleProblem::NameTooLong {
            length: bytes.len(),
        });
    }
    let name = core::str::from_utf8(bytes).map_err(|_| CapsuleProblem::NameNotUtf8)?;
    if let Some(character) = name.chars().find(|character| {
        !(character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.'))
    }) {
        return Err(CapsuleProblem::NameInvalidCharacter { character });
    }
    Ok(name)
}

/// Checks a command line's bytes and returns it as a `str`.
///
/// NUL is refused because the command line ends up as a NUL-terminated device-tree string.
pub(crate) fn check_cmdline(bytes: &[u8]) -> Result<&str, CapsuleProblem> {
    if bytes.len() > MAX_CMDLINE_LEN {
        return Err(CapsuleProblem::CmdlineTooLong {
            length: bytes.len(),
        });
    }
    let cmdline = core::str::from_utf8(bytes).map_err(|_| CapsuleProblem::CmdlineNotUtf8)?;
    if cmdline.contains('\0') {
        return Err(CapsuleProblem::CmdlineHasNul);
    }
    Ok(cmdline)
}

/// Checks the vCPU count.
pub(crate) fn check_vcpus(vcpus: u32) -> Result<(), CapsuleProblem> {
    if (1..=MAX_VCPUS).contains(&vcpus) {
        Ok(())
    } else {
        Err(CapsuleProblem::BadVcpuCount { vcpus })
    }
}

/// Checks the guest memory size.
pub(crate) fn check_memory(memory: u64) -> Result<(), CapsuleProblem> {
    if memory != 0 && memory.is_multiple_of(MEMORY_GRANULE) {
        Ok(())
    } else {
        Err(CapsuleProblem::BadMemory { memory })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_bytes_round_trip() {
        for policy in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            assert_eq!(RestartPolicy::from_byte(policy.to_byte()), Some(policy));
        }
        assert_eq!(RestartPolicy::from_byte(3), None);
        assert_eq!(RestartPolicy::OnFailure.to_string(), "on-failure");
    }

    #[test]
    fn name_rules() {
        assert_eq!(check_name(b"web-1.v2_a"), Ok("web-1.v2_a"));
        assert_eq!(check_name(b""), Err(CapsuleProblem::EmptyName));
        assert_eq!(
            check_name(&[b'a'; 65]),
            Err(CapsuleProblem::NameTooLong { length: 65 })
        );
        assert_eq!(check_name(&[b'a'; 64]).map(str::len), Ok(64));
        assert_eq!(check_name(&[0xff, b'a']), Err(CapsuleProblem::NameNotUtf8));
        assert_eq!(
            check_name(b"has space"),
            Err(CapsuleProblem::NameInvalidCharacter { character: ' ' })
        );
        assert_eq!(
            check_name("caf\u{e9}".as_bytes()),
            Err(CapsuleProblem::NameInvalidCharacter {
                character: '\u{e9}'
            })
        );
    }

    #[test]
    fn cmdline_rules() {
        assert_eq!(check_cmdline(b""), Ok(""));
        assert_eq!(
            check_cmdline(b"console=ttyS0 root=/dev/vda"),
            Ok("console=ttyS0 root=/dev/vda")
        );
        assert_eq!(check_cmdline(b"a\0b"), Err(CapsuleProblem::CmdlineHasNul));
        assert_eq!(check_cmdline(&[0xc3]), Err(CapsuleProblem::CmdlineNotUtf8));
        assert_eq!(
            check_cmdline(&[b'x'; 4097]),
            Err(CapsuleProblem::CmdlineTooLong { length: 4097 })
        );
    }

    #[test]
    fn vcpu_and_memory_rules() {
        assert!(check_vcpus(1).is_ok() && check_vcpus(64).is_ok());
        assert_eq!(
            check_vcpus(0),
            Err(CapsuleProblem::BadVcpuCount { vcpus: 0 })
        );
        assert_eq!(
            check_vcpus(65),
            Err(CapsuleProblem::BadVcpuCount { vcpus: 65 })
        );
        assert!(check_memory(MEMORY_GRANULE).is_ok());
        assert_eq!(
            check_memory(0),
            Err(CapsuleProblem::BadMemory { memory: 0 })
        );
        assert_eq!(
            check_memory(MEMORY_GRANULE + 4096),
            Err(CapsuleProblem::BadMemory {
                memory: MEMORY_GRANULE + 4096
            })
        );
    }

    #[test]
    fn capsule_name_truncates_on_character_boundary() {
        assert_eq!(CapsuleName::new("boot").as_str(), "boot");
        let long: std::string::String = core::iter::repeat_n('\u{e9}', 40).collect();
        let name = CapsuleName::new(&long);
        assert_eq!(name.as_str().len(), 64);
        assert!(long.starts_with(name.as_str()));
    }
}
