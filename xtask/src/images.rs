//! Guest images in the cache: Debian's kernel and busybox, our initramfs, and the small kernel built from source.

pub mod debian;
pub mod debian_initramfs;
pub mod initramfs;
pub mod modules;
pub mod smallkernel;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::cache;
use crate::Workspace;

/// The finished images, reachable under stable names in one directory: `${images}` in manifests.
pub struct Images {
    pub dir: PathBuf,
    pub debian_kernel: PathBuf,
    pub debian_modules: PathBuf,
    pub busybox: PathBuf,
    /// The busybox initramfs every kernel can boot with.
    pub initramfs: PathBuf,
    /// The busybox initramfs plus the virtio modules the Debian kernel does not have built in.
    pub debian_initramfs: PathBuf,
    pub small_kernel: PathBuf,
}

impl Images {
    /// The `--define`s manifests are expanded with.
    pub fn defines(&self) -> Vec<(String, String)> {
        vec![("images".to_string(), self.dir.display().to_string())]
    }

    pub fn describe(&self) {
        println!("==> guest images in {}:", self.dir.display());
        for (name, path) in [
            ("debian/Image", &self.debian_kernel),
            ("debian/modules", &self.debian_modules),
            ("busybox", &self.busybox),
            ("initramfs.cpio", &self.initramfs),
            ("initramfs-debian.cpio", &self.debian_initramfs),
            ("small/Image", &self.small_kernel),
        ] {
            let size = fs::metadata(path).map(|meta| meta.len()).unwrap_or(0);
            println!("    {name:<21} -> {} ({} KiB)", path.display(), size / 1024);
        }
    }
}

/// Fetches and builds whatever is missing, verifies every artifact and links them under `${images}`.
pub fn ensure(workspace: &Workspace) -> Result<Images> {
    let cache = &workspace.cache;
    let packages = debian::fetch(cache)?;
    verify_linux_image(&packages.kernel_image)?;
    verify_static_riscv64_elf(&packages.busybox)?;

    let initramfs = initramfs::ensure(
        workspace,
        &packages.busybox,
        &packages.busybox_record.sha256,
    )?;
    let debian_initramfs = debian_initramfs::ensure(
        workspace,
        &initramfs,
        &packages.modules,
        &packages.kernel_record.sha256,
    )?;
    let small_kernel = smallkernel::ensure(workspace)?;
    verify_linux_image(&small_kernel)?;

    let dir = cache.dir("images")?;
    let links = [
        ("debian/Image", &packages.kernel_image),
        ("debian/modules", &packages.modules),
        ("busybox", &packages.busybox),
        ("initramfs.cpio", &initramfs.path),
        ("initramfs-debian.cpio", &debian_initramfs),
        ("small/Image", &small_kernel),
    ];
    for (name, target) in links {
        cache::replace_symlink(target, &dir.join(name))?;
    }
    Ok(Images {
        debian_kernel: dir.join("debian/Image"),
        debian_modules: dir.join("debian/modules"),
        busybox: dir.join("busybox"),
        initramfs: dir.join("initramfs.cpio"),
        debian_initramfs: dir.join("initramfs-debian.cpio"),
        small_kernel: dir.join("small/Image"),
        dir,
    })
}

/// Offset and value of `magic2` in the RISC-V Linux Image header ("RSC\x05").
const IMAGE_MAGIC_OFFSET: usize = 56;
const IMAGE_MAGIC: &[u8; 4] = b"RSC\x05";

/// Checks that the bytes are a RISC-V Linux Image (not, say, an ELF vmlinux or a compressed kernel).
pub fn check_linux_image(bytes: &[u8]) -> Result<(), ImageCheckError> {
    let magic = bytes
        .get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4)
        .ok_or(ImageCheckError::TooShort(bytes.len()))?;
    if magic != IMAGE_MAGIC {
        if bytes.starts_with(b"\x7fELF") {
            return Err(ImageCheckError::Elf);
        }
        return Err(ImageCheckError::BadMagic([
            magic[0], magic[1], magic[2], magic[3],
        ]));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageCheckError {
    #[error("{0} bytes is too short for a RISC-V Linux Image header (64 bytes)")]
    TooShort(usize),
    #[error("an ELF file, not a RISC-V Linux Image")]
    Elf,
    #[error("bytes 56..60 are {0:02x?}, not the RISC-V Image magic \"RSC\\x05\"")]
    BadMagic([u8; 4]),
}

fn verify_linux_image(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    check_linux_image(&bytes).with_context(|| format!("{} is not a usable kernel", path.display()))
}

/// Checks that the bytes are a 64-bit little-endian RISC-V ELF executable without a program interpreter.
pub fn check_static_riscv64_elf(bytes: &[u8]) -> Result<(), ElfCheckError> {
    const EM_RISCV: u16 = 243;
    const PT_INTERP: u32 = 3;
    let header = bytes.get(..64).ok_or(ElfCheckError::NotElf)?;
    if &header[..4] != b"\x7fELF" {
        return Err(ElfCheckError::NotElf);
    }
    if header[4] != 2 || header[5] != 1 {
        return Err(ElfCheckError::NotElf64LittleEndian);
    }
    let u16_at = |offset: usize| u16::from_le_bytes([header[offset], header[offset + 1]]);
    let machine = u16_at(18);
    if machine != EM_RISCV {
        return Err(ElfCheckError::WrongMachine(machine));
    }
    let mut program_headers = [0u8; 8];
    program_headers.copy_from_slice(&header[32..40]);
    let table = u64::from_le_bytes(program_headers);
    let entry_size = u64::from(u16_at(54));
    let count = u64::from(u16_at(56));
    for index in 0..count {
        let start = index
            .checked_mul(entry_size)
            .and_then(|offset| offset.checked_add(table))
            .and_then(|offset| usize::try_from(offset).ok())
            .ok_or(ElfCheckError::Truncated)?;
        let kind = bytes
            .get(start..start + 4)
            .ok_or(ElfCheckError::Truncated)?;
        if u32::from_le_bytes([kind[0], kind[1], kind[2], kind[3]]) == PT_INTERP {
            return Err(ElfCheckError::Dynamic);
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfCheckError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64LittleEndian,
    #[error("ELF machine is {0}, not RISC-V (243)")]
    WrongMachine(u16),
    #[error("the ELF program headers run past the end of the file")]
    Truncated,
    #[error(
        "dynamically linked (has a PT_INTERP program header); the initramfs needs a static binary"
    )]
    Dynamic,
}

fn verify_static_riscv64_elf(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    check_static_riscv64_elf(&bytes)
        .with_context(|| format!("{} is not a static riscv64 program", path.display()))
}

/// Refuses to go on when a path that must exist does not.
pub fn require_file(path: &Path, what: &str) -> Result<()> {
    if !path.is_file() {
        bail!("{what} not found at {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_header() -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[48..56].copy_from_slice(b"RISCV\0\0\0");
        bytes[56..60].copy_from_slice(b"RSC\x05");
        bytes
    }

    #[test]
    fn linux_image_magic_is_checked() {
        assert_eq!(check_linux_image(&image_header()), Ok(()));
        assert_eq!(
            check_linux_image(&[0; 10]),
            Err(ImageCheckError::TooShort(10))
        );
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        assert_eq!(check_linux_image(&elf), Err(ImageCheckError::Elf));
        let mut wrong = image_header();
        wrong[59] = 4;
        assert_eq!(
            check_linux_image(&wrong),
            Err(ImageCheckError::BadMagic(*b"RSC\x04"))
        );
    }

    fn elf(machine: u16, interp: bool) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 2 * 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[18..20].copy_from_slice(&machine.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&2u16.to_le_bytes());
        bytes[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        if interp {
            bytes[120..124].copy_from_slice(&3u32.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn static_riscv64_elf_is_recognised() {
        assert_eq!(check_static_riscv64_elf(&elf(243, false)), Ok(()));
        assert_eq!(
            check_static_riscv64_elf(&elf(243, true)),
            Err(ElfCheckError::Dynamic)
        );
        assert_eq!(
            check_static_riscv64_elf(&elf(62, false)),
            Err(ElfCheckError::WrongMachine(62))
        );
        assert_eq!(
            check_static_riscv64_elf(b"#!/bin/sh\n"),
            Err(ElfCheckError::NotElf)
        );
        let mut thirty_two = elf(243, false);
        thirty_two[4] = 1;
        assert_eq!(
            check_static_riscv64_elf(&thirty_two),
            Err(ElfCheckError::NotElf64LittleEndian)
        );
        let full = elf(243, false);
        assert_eq!(
            check_static_riscv64_elf(&full[..100]),
            Err(ElfCheckError::Truncated)
        );
    }
}
