//! RISC-V Linux `Image` header checks and the placement of kernel, initrd and device tree in guest RAM.
//!
//! The header layout comes from Linux's `Documentation/arch/riscv/boot-image-header.rst`; the load
//! rules (PMD-aligned kernel, initrd outside the kernel's `image_size` span) come from
//! `Documentation/arch/riscv/boot.rst`. Everything here works on untrusted bytes and sizes, so every
//! failure is reported as an error and all address arithmetic is checked.

#![cfg_attr(not(test), no_std)]

use core::fmt;

/// Size of the RISC-V Linux `Image` header in bytes.
pub const IMAGE_HEADER_SIZE: usize = 64;

/// `magic2` field value: the bytes `"RSC\x05"` read as a little-endian `u32`.
pub const IMAGE_MAGIC2: u32 = 0x0543_5352;

/// Deprecated `magic` field value: the bytes `"RISCV\0\0\0"` read as a little-endian `u64`.
pub const IMAGE_MAGIC: u64 = 0x0000_0056_4353_4952;

/// `flags` bit 0: set when the kernel is big endian. Keel only runs little-endian guests.
pub const IMAGE_FLAG_BIG_ENDIAN: u64 = 1;

/// Load offset an RV64 kernel expects when its header says 0 (the value RV64 kernels advertise).
pub const DEFAULT_TEXT_OFFSET: u64 = 0x20_0000;

/// RV64 kernels must start on a PMD boundary, i.e. 2 MiB.
pub const KERNEL_ALIGNMENT: u64 = 0x20_0000;

/// Where a flat binary is placed, relative to the start of RAM: the offset at which OpenSBI
/// starts an S-mode payload, so binaries built for that convention run unchanged.
pub const FLAT_BINARY_OFFSET: u64 = 0x20_0000;

/// Granule for the device tree and initrd addresses: page aligned so each can be mapped or
/// reserved on its own pages.
pub const PAGE_SIZE: u64 = 0x1000;

/// Largest device tree Linux maps during early boot on RISC-V (`MAX_FDT_SIZE` = `PMD_SIZE`).
pub const MAX_FDT_SIZE: u64 = 0x20_0000;

/// The ELF identification bytes; a `vmlinux` starts with them.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Why a kernel file is not a usable RISC-V Linux `Image`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The file has no bytes at all.
    Empty,
    /// The file is shorter than the 64-byte header.
    TooShort {
        /// Length of the file in bytes.
        length: usize,
    },
    /// The file is an ELF executable (a `vmlinux`), not the raw `Image` made from it.
    Elf,
    /// The `magic2` field does not hold `"RSC\x05"`.
    BadMagic2 {
        /// Value found at offset 56.
        found: u32,
    },
    /// Only the deprecated `magic` is present: a header older than version 0.2.
    LegacyHeader {
        /// Value found at offset 56 instead of `magic2`.
        found: u32,
    },
    /// Flags bit 0 says the kernel is big endian.
    BigEndian,
    /// `text_offset` is not a multiple of 2 MiB, so the kernel would not start on a PMD boundary.
    TextOffsetMisaligned {
        /// The header's `text_offset`.
        text_offset: u64,
    },
    /// `image_size` is smaller than the file itself, so the header cannot describe this file.
    ImageSizeTooSmall {
        /// The header's `image_size`.
        image_size: u64,
        /// Length of the file in bytes.
        file_length: u64,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ImageError::Empty => f.write_str("the kernel file is empty"),
            ImageError::TooShort { length } => write!(
                f,
                "not a RISC-V Linux Image: the file is {length} bytes, shorter than the {IMAGE_HEADER_SIZE}-byte Image header"
            ),
            ImageError::Elf => f.write_str(
                "the kernel file is an ELF file (vmlinux); an Image is needed (arch/riscv/boot/Image)",
            ),
            ImageError::BadMagic2 { found } => write!(
                f,
                "not a RISC-V Linux Image: magic2 is {found:#010x}, expected {IMAGE_MAGIC2:#010x}"
            ),
            ImageError::LegacyHeader { found } => write!(
                f,
                "RISC-V Linux Image header older than version 0.2: magic2 is {found:#010x}, expected {IMAGE_MAGIC2:#010x}; \
                 only the deprecated magic \"RISCV\" is present"
            ),
            ImageError::BigEndian => {
                f.write_str("the RISC-V Linux Image is big endian (flags bit 0 set); only little-endian kernels run")
            }
            ImageError::TextOffsetMisaligned { text_offset } => write!(
                f,
                "the RISC-V Linux Image asks for text_offset {text_offset:#x}, which is not a multiple of {KERNEL_ALIGNMENT:#x} (2 MiB)"
            ),
            ImageError::ImageSizeTooSmall { image_size, file_length } => write!(
                f,
                "the RISC-V Linux Image header says image_size is {image_size:#x} bytes, less than the file's {file_length:#x} bytes"
            ),
        }
    }
}

impl core::error::Error for ImageError {}

/// The fields of a RISC-V Linux `Image` header that matter for loading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from the start of RAM at which the kernel wants to be loaded (0 in M-mode kernels).
    pub text_offset: u64,
    /// Bytes the kernel occupies once loaded, including its BSS: nothing else may live there.
    pub image_size: u64,
    /// Kernel flags; bit 0 is the endianness, and it is 0 for every header accepted here.
    pub flags: u64,
    /// Header version, major in bits 31..16 and minor in bits 15..0.
    pub version: u32,
}

impl ImageHeader {
    /// Major part of the header version.
    pub fn version_major(&self) -> u16 {
        (self.version >> 16) as u16
    }

    /// Minor part of the header version.
    pub fn version_minor(&self) -> u16 {
        (self.version & 0xffff) as u16
    }

    /// Offset from the start of RAM the kernel is loaded at, with 0 read as the RV64 default.
    pub fn load_offset(&self) -> u64 {
        if self.text_offset == 0 {
            DEFAULT_TEXT_OFFSET
        } else {
            self.text_offset
        }
    }
}

/// What kind of kernel a file holds, as decided by [`identify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A RISC-V Linux `Image` with a valid header.
    LinuxImage(ImageHeader),
    /// Raw code to be started at its first byte, with no header.
    FlatBinary,
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let field = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(&ELF_MAGIC)
}

/// Parses `bytes` (the whole kernel file) as a RISC-V Linux `Image` and checks its header.
///
/// Only an `Image` is accepted: anything else, including an ELF `vmlinux`, is an error that says
/// what the file looks like instead.
pub fn parse_image(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if is_elf(bytes) {
        return Err(ImageError::Elf);
    }
    let too_short = ImageError::TooShort {
        length: bytes.len(),
    };
    if bytes.len() < IMAGE_HEADER_SIZE {
        return Err(too_short);
    }
    let field32 = |offset| read_u32(bytes, offset).ok_or(too_short);
    let field64 = |offset| read_u64(bytes, offset).ok_or(too_short);

    let magic2 = field32(56)?;
    if magic2 != IMAGE_MAGIC2 {
        return Err(if field64(48)? == IMAGE_MAGIC {
            ImageError::LegacyHeader { found: magic2 }
        } else {
            ImageError::BadMagic2 { found: magic2 }
        });
    }
    let header = ImageHeader {
        text_offset: field64(8)?,
        image_size: field64(16)?,
        flags: field64(24)?,
        version: field32(32)?,
    };
    if header.flags & IMAGE_FLAG_BIG_ENDIAN != 0 {
        return Err(ImageError::BigEndian);
    }
    if !header.text_offset.is_multiple_of(KERNEL_ALIGNMENT) {
        return Err(ImageError::TextOffsetMisaligned {
            text_offset: header.text_offset,
        });
    }
    // `usize` is at most 64 bits on every target this builds for, so the length always fits.
    let file_length = bytes.len() as u64;
    // The loaded kernel is the file plus its BSS, so a smaller image_size means a damaged header
    // (or a file with something appended) and the kernel could overwrite whatever follows it.
    if header.image_size < file_length {
        return Err(ImageError::ImageSizeTooSmall {
            image_size: header.image_size,
            file_length,
        });
    }
    Ok(header)
}

/// Decides whether `bytes` (the whole kernel file) is a Linux `Image` or a flat binary.
///
/// A file carrying the Image magic (current or deprecated) must pass every check of
/// [`parse_image`]; an empty file and an ELF file are errors; anything else is a flat binary.
pub fn identify(bytes: &[u8]) -> Result<KernelKind, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if is_elf(bytes) {
        return Err(ImageError::Elf);
    }
    let has_magic2 = read_u32(bytes, 56) == Some(IMAGE_MAGIC2);
    let has_legacy_magic = read_u64(bytes, 48) == Some(IMAGE_MAGIC);
    if has_magic2 || has_legacy_magic {
        parse_image(bytes).map(KernelKind::LinuxImage)
    } else {
        Ok(KernelKind::FlatBinary)
    }
}

/// Why the kernel, initrd and device tree cannot be laid out in the given RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementError {
    /// RAM does not start on a 2 MiB boundary, so the kernel cannot either.
    RamBaseMisaligned {
        /// Guest physical address of the start of RAM.
        ram_base: u64,
    },
    /// `ram_base + ram_size` does not fit in 64 bits.
    RamEndOverflows {
        /// Guest physical address of the start of RAM.
        ram_base: u64,
        /// Size of RAM in bytes.
        ram_size: u64,
    },
    /// The kernel file is empty.
    EmptyKernel,
    /// An initrd was given but it is empty.
    EmptyInitrd,
    /// The device tree reservation is zero or larger than Linux can map early in boot.
    BadFdtSize {
        /// Bytes reserved for the device tree.
        fdt_max: u64,
    },
    /// The kernel's start or end address does not fit in 64 bits.
    KernelAddressOverflows {
        /// Guest physical address of the start of RAM.
        ram_base: u64,
        /// Offset of the kernel from the start of RAM.
        offset: u64,
        /// Bytes the kernel occupies.
        span: u64,
    },
    /// The kernel does not fit between its load address and the end of RAM.
    KernelDoesNotFit {
        /// Bytes the kernel occupies.
        needed: u64,
        /// Guest physical address the kernel is loaded at.
        start: u64,
        /// First address past the end of RAM.
        ram_end: u64,
    },
    /// The device tree, placed at the top of RAM, would overlap the kernel.
    FdtOverlapsKernel {
        /// Bytes reserved for the device tree.
        fdt_max: u64,
        /// Address the device tree would start at, or `None` if RAM is smaller than the reservation.
        fdt_addr: Option<u64>,
        /// First address past the kernel's span.
        kernel_end: u64,
    },
    /// The initrd, placed just below the device tree, would overlap the kernel.
    InitrdOverlapsKernel {
        /// Size of the initrd in bytes.
        initrd_len: u64,
        /// Address the initrd would start at, or `None` if it is larger than the room below the
        /// device tree.
        initrd_start: Option<u64>,
        /// First address past the kernel's span.
        kernel_end: u64,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlacementError::RamBaseMisaligned { ram_base } => write!(
                f,
                "RAM starts at {ram_base:#x}, which is not a multiple of {KERNEL_ALIGNMENT:#x} (2 MiB) as the kernel needs"
            ),
            PlacementError::RamEndOverflows { ram_base, ram_size } => {
                write!(f, "RAM of {ram_size:#x} bytes from {ram_base:#x} runs past the end of the 64-bit address space")
            }
            PlacementError::EmptyKernel => f.write_str("the kernel is empty"),
            PlacementError::EmptyInitrd => f.write_str("the initrd is empty"),
            PlacementError::BadFdtSize { fdt_max } => write!(
                f,
                "the device tree reservation of {fdt_max:#x} bytes must be non-zero and at most {MAX_FDT_SIZE:#x} bytes"
            ),
            PlacementError::KernelAddressOverflows { ram_base, offset, span } => write!(
                f,
                "kernel of {span:#x} bytes at offset {offset:#x} from {ram_base:#x} runs past the end of the 64-bit address space"
            ),
            PlacementError::KernelDoesNotFit { needed, start, ram_end } => {
                write!(f, "kernel needs {needed:#x} bytes from {start:#x} but RAM ends at {ram_end:#x}")
            }
            PlacementError::FdtOverlapsKernel { fdt_max, fdt_addr: Some(fdt_addr), kernel_end } => write!(
                f,
                "device tree of up to {fdt_max:#x} bytes at the top of RAM would start at {fdt_addr:#x}, inside the kernel which ends at {kernel_end:#x}"
            ),
            PlacementError::FdtOverlapsKernel { fdt_max, fdt_addr: None, kernel_end } => write!(
                f,
                "device tree of up to {fdt_max:#x} bytes does not fit in RAM alongside the kernel which ends at {kernel_end:#x}"
            ),
            PlacementError::InitrdOverlapsKernel { initrd_len, initrd_start: Some(start), kernel_end } => write!(
                f,
                "initrd of {initrd_len:#x} bytes below the device tree would start at {start:#x}, inside the kernel which ends at {kernel_end:#x}"
            ),
            PlacementError::InitrdOverlapsKernel { initrd_len, initrd_start: None, kernel_end } => write!(
                f,
                "initrd of {initrd_len:#x} bytes does not fit in RAM below the device tree alongside the kernel which ends at {kernel_end:#x}"
            ),
        }
    }
}

impl core::error::Error for PlacementError {}

/// Where everything goes in guest RAM, as computed by [`place`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Guest physical address the kernel file is copied to.
    pub kernel_addr: u64,
    /// Bytes from `kernel_addr` that belong to the kernel (file plus BSS for an `Image`).
    pub kernel_span: u64,
    /// Guest physical address the first vCPU starts executing at.
    pub entry: u64,
    /// Start and end (exclusive) of the initrd, if there is one.
    pub initrd: Option<(u64, u64)>,
    /// Guest physical address of the device tree; `fdt_max` bytes from here are reserved for it.
    pub fdt_addr: u64,
}

fn align_down(value: u64, alignment: u64) -> u64 {
    // `alignment` is always one of this crate's power-of-two constants.
    value & !(alignment - 1)
}

/// Lays out a kernel, an optional initrd and a device tree in RAM `[ram_base, ram_base + ram_size)`.
///
/// The kernel goes at `ram_base + text_offset` (a Linux `Image`) or `ram_base + 0x200000` (a flat
/// binary). The device tree takes the top `fdt_max` bytes of RAM, page aligned down, and the
/// initrd sits just below it, page aligned down. Nothing may overlap the kernel's span.
pub fn place(
    ram_base: u64,
    ram_size: u64,
    kind: &KernelKind,
    kernel_len: u64,
    initrd_len: Option<u64>,
    fdt_max: u64,
) -> Result<Placement, PlacementError> {
    if !ram_base.is_multiple_of(KERNEL_ALIGNMENT) {
        return Err(PlacementError::RamBaseMisaligned { ram_base });
    }
    let ram_end = ram_base
        .checked_add(ram_size)
        .ok_or(PlacementError::RamEndOverflows { ram_base, ram_size })?;
    if kernel_len == 0 {
        return Err(PlacementError::EmptyKernel);
    }
    if initrd_len == Some(0) {
        return Err(PlacementError::EmptyInitrd);
    }
    if fdt_max == 0 || fdt_max > MAX_FDT_SIZE {
        return Err(PlacementError::BadFdtSize { fdt_max });
    }

    let (offset, span) = match kind {
        KernelKind::LinuxImage(header) => (header.load_offset(), header.image_size.max(kernel_len)),
        KernelKind::FlatBinary => (FLAT_BINARY_OFFSET, kernel_len),
    };
    let overflow = PlacementError::KernelAddressOverflows {
        ram_base,
        offset,
        span,
    };
    let kernel_addr = ram_base.checked_add(offset).ok_or(overflow)?;
    let kernel_end = kernel_addr.checked_add(span).ok_or(overflow)?;
    if kernel_end > ram_end {
        return Err(PlacementError::KernelDoesNotFit {
            needed: span,
            start: kernel_addr,
            ram_end,
        });
    }

    let fdt_addr = ram_end
        .checked_sub(fdt_max)
        .map(|top| align_down(top, PAGE_SIZE));
    let fdt_addr = match fdt_addr {
        Some(address) if address >= kernel_end => address,
        _ => {
            return Err(PlacementError::FdtOverlapsKernel {
                fdt_max,
                fdt_addr,
                kernel_end,
            })
        }
    };

    let initrd = match initrd_len {
        None => None,
        Some(length) => {
            let start = fdt_addr
                .checked_sub(length)
                .map(|start| align_down(start, PAGE_SIZE));
            match start {
                // Linux only requires the initrd to stay clear of the kernel's image_size span.
                Some(start) if start >= kernel_end => {
                    // start + length <= fdt_addr, which is a valid address, so this cannot overflow.
                    let end =
                        start
                            .checked_add(length)
                            .ok_or(PlacementError::InitrdOverlapsKernel {
                                initrd_len: length,
                                initrd_start: Some(start),
                                kernel_end,
                            })?;
                    Some((start, end))
                }
                _ => {
                    return Err(PlacementError::InitrdOverlapsKernel {
                        initrd_len: length,
                        initrd_start: start,
                        kernel_end,
                    })
                }
            }
        }
    };

    Ok(Placement {
        kernel_addr,
        kernel_span: span,
        entry: kernel_addr,
        initrd,
        fdt_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const RAM_BASE: u64 = 0x8000_0000;

    /// Builds a header the way Linux's head.S lays it out, followed by `padding` bytes of code.
    fn image(text_offset: u64, image_size: u64, flags: u64, padding: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; IMAGE_HEADER_SIZE];
        // code0/code1: "j _start_kernel; nop"-like filler, never interpreted here.
        bytes[0..4].copy_from_slice(&0x0400_006fu32.to_le_bytes());
        bytes[4..8].copy_from_slice(&0x0000_0013u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&text_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&image_size.to_le_bytes());
        bytes[24..32].copy_from_slice(&flags.to_le_bytes());
        bytes[32..36].copy_from_slice(&0x0000_0002u32.to_le_bytes());
        bytes[48..56].copy_from_slice(b"RISCV\0\0\0");
        bytes[56..60].copy_from_slice(b"RSC\x05");
        bytes.extend(std::iter::repeat_n(0xa5, padding));
        bytes
    }

    #[test]
    fn magic_constants_match_their_byte_strings() {
        assert_eq!(IMAGE_MAGIC2, u32::from_le_bytes(*b"RSC\x05"));
        assert_eq!(IMAGE_MAGIC, u64::from_le_bytes(*b"RISCV\0\0\0"));
    }

    #[test]
    fn parses_a_well_formed_header() {
        let bytes = image(0x20_0000, 0x140_0000, 0, 4096);
        let header = parse_image(&bytes).expect("valid header");
        assert_eq!(header.text_offset, 0x20_0000);
        assert_eq!(header.image_size, 0x140_0000);
        assert_eq!(header.flags, 0);
        assert_eq!((header.version_major(), header.version_minor()), (0, 2));
        assert_eq!(identify(&bytes), Ok(KernelKind::LinuxImage(header)));
    }

    #[test]
    fn zero_text_offset_means_two_mebibytes() {
        let header = parse_image(&image(0, 0x10_0000, 0, 0)).expect("valid header");
        assert_eq!(header.load_offset(), DEFAULT_TEXT_OFFSET);
    }

    #[test]
    fn rejects_empty_and_truncated_files() {
        assert_eq!(parse_image(&[]), Err(ImageError::Empty));
        assert_eq!(identify(&[]), Err(ImageError::Empty));
        let bytes = image(0x20_0000, 0x10_0000, 0, 0);
        for length in [1, 8, 40, 63] {
            assert_eq!(
                parse_image(&bytes[..length]),
                Err(ImageError::TooShort { length })
            );
        }
        assert!(ImageError::TooShort { length: 63 }
            .to_string()
            .contains("63 bytes"));
    }

    #[test]
    fn short_headerless_file_is_a_flat_binary() {
        assert_eq!(
            identify(&[0x73, 0x00, 0x50, 0x10]),
            Ok(KernelKind::FlatBinary)
        );
    }

    #[test]
    fn rejects_elf_with_a_specific_message() {
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        elf.resize(256, 0);
        assert_eq!(parse_image(&elf), Err(ImageError::Elf));
        assert_eq!(identify(&elf), Err(ImageError::Elf));
        assert!(ImageError::Elf
            .to_string()
            .contains("is an ELF file (vmlinux); an Image is needed"));
    }

    #[test]
    fn rejects_bad_magic2() {
        let mut bytes = image(0x20_0000, 0x10_0000, 0, 0);
        bytes[48..64].fill(0);
        bytes[56..60].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(
            parse_image(&bytes),
            Err(ImageError::BadMagic2 { found: 0xdead_beef })
        );
        assert_eq!(
            ImageError::BadMagic2 { found: 0xdead_beef }.to_string(),
            "not a RISC-V Linux Image: magic2 is 0xdeadbeef, expected 0x05435352"
        );
        // Without either magic the file is not claimed to be an Image at all.
        assert_eq!(identify(&bytes), Ok(KernelKind::FlatBinary));
    }

    #[test]
    fn rejects_header_with_only_the_deprecated_magic() {
        let mut bytes = image(0x20_0000, 0x10_0000, 0, 0);
        bytes[56..60].fill(0);
        assert_eq!(
            parse_image(&bytes),
            Err(ImageError::LegacyHeader { found: 0 })
        );
        assert_eq!(identify(&bytes), Err(ImageError::LegacyHeader { found: 0 }));
    }

    #[test]
    fn rejects_big_endian_kernels() {
        let bytes = image(0x20_0000, 0x10_0000, IMAGE_FLAG_BIG_ENDIAN, 0);
        assert_eq!(parse_image(&bytes), Err(ImageError::BigEndian));
        assert_eq!(identify(&bytes), Err(ImageError::BigEndian));
    }

    #[test]
    fn rejects_misaligned_text_offset() {
        let bytes = image(0x1000, 0x10_0000, 0, 0);
        assert_eq!(
            parse_image(&bytes),
            Err(ImageError::TextOffsetMisaligned {
                text_offset: 0x1000
            })
        );
    }

    #[test]
    fn rejects_image_size_smaller_than_file() {
        let bytes = image(0x20_0000, 100, 0, 100);
        assert_eq!(
            parse_image(&bytes),
            Err(ImageError::ImageSizeTooSmall {
                image_size: 100,
                file_length: 164
            })
        );
        assert_eq!(
            identify(&bytes),
            Err(ImageError::ImageSizeTooSmall {
                image_size: 100,
                file_length: 164
            })
        );
    }

    fn linux(image_size: u64) -> KernelKind {
        KernelKind::LinuxImage(ImageHeader {
            text_offset: 0x20_0000,
            image_size,
            flags: 0,
            version: 2,
        })
    }

    #[test]
    fn places_image_initrd_and_fdt() {
        let placement = place(
            RAM_BASE,
            256 * MIB,
            &linux(20 * MIB),
            15 * MIB,
            Some(10 * MIB + 5),
            64 * 1024,
        )
        .expect("fits");
        assert_eq!(placement.kernel_addr, RAM_BASE + 0x20_0000);
        assert_eq!(placement.entry, placement.kernel_addr);
        assert_eq!(placement.kernel_span, 20 * MIB);
        let ram_end = RAM_BASE + 256 * MIB;
        assert_eq!(placement.fdt_addr, ram_end - 64 * 1024);
        let (start, end) = placement.initrd.expect("initrd placed");
        assert_eq!(start % PAGE_SIZE, 0);
        assert_eq!(end - start, 10 * MIB + 5);
        assert!(end <= placement.fdt_addr);
        assert!(start >= placement.kernel_addr + placement.kernel_span);
    }

    #[test]
    fn fdt_address_is_page_aligned_down() {
        let placement = place(RAM_BASE, 64 * MIB, &linux(MIB), MIB, None, 0x1234).expect("fits");
        assert_eq!(placement.fdt_addr, RAM_BASE + 64 * MIB - 0x2000);
        assert_eq!(placement.initrd, None);
    }

    #[test]
    fn kernel_span_is_the_larger_of_image_size_and_file_length() {
        let placement = place(RAM_BASE, 64 * MIB, &linux(MIB), 3 * MIB, None, 4096).expect("fits");
        assert_eq!(placement.kernel_span, 3 * MIB);
    }

    #[test]
    fn places_flat_binary_at_the_payload_offset() {
        let placement = place(
            RAM_BASE,
            32 * MIB,
            &KernelKind::FlatBinary,
            4096,
            None,
            4096,
        )
        .expect("fits");
        assert_eq!(placement.kernel_addr, RAM_BASE + FLAT_BINARY_OFFSET);
        assert_eq!(placement.kernel_span, 4096);
    }

    #[test]
    fn zero_text_offset_places_at_two_mebibytes() {
        let kind = KernelKind::LinuxImage(ImageHeader {
            text_offset: 0,
            image_size: MIB,
            flags: 0,
            version: 2,
        });
        let placement = place(RAM_BASE, 16 * MIB, &kind, MIB, None, 4096).expect("fits");
        assert_eq!(placement.kernel_addr, RAM_BASE + 0x20_0000);
    }

    #[test]
    fn initrd_overlapping_kernel_is_rejected() {
        let error = place(
            RAM_BASE,
            32 * MIB,
            &linux(20 * MIB),
            MIB,
            Some(10 * MIB),
            64 * 1024,
        )
        .unwrap_err();
        let PlacementError::InitrdOverlapsKernel {
            initrd_len,
            initrd_start: Some(start),
            kernel_end,
        } = error
        else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(initrd_len, 10 * MIB);
        assert_eq!(kernel_end, RAM_BASE + 22 * MIB);
        assert!(start < kernel_end);
        assert!(error.to_string().contains("inside the kernel"));
    }

    #[test]
    fn initrd_larger_than_ram_is_rejected() {
        let error = place(RAM_BASE, 32 * MIB, &linux(MIB), MIB, Some(u64::MAX), 4096).unwrap_err();
        assert!(matches!(
            error,
            PlacementError::InitrdOverlapsKernel {
                initrd_start: None,
                ..
            }
        ));
    }

    #[test]
    fn empty_initrd_and_kernel_are_rejected() {
        assert_eq!(
            place(RAM_BASE, 32 * MIB, &linux(MIB), MIB, Some(0), 4096),
            Err(PlacementError::EmptyInitrd)
        );
        assert_eq!(
            place(RAM_BASE, 32 * MIB, &KernelKind::FlatBinary, 0, None, 4096),
            Err(PlacementError::EmptyKernel)
        );
    }

    #[test]
    fn tiny_ram_is_rejected_with_sizes() {
        let error = place(RAM_BASE, 4 * MIB, &linux(20 * MIB), MIB, None, 4096).unwrap_err();
        assert_eq!(
            error,
            PlacementError::KernelDoesNotFit {
                needed: 20 * MIB,
                start: RAM_BASE + 0x20_0000,
                ram_end: RAM_BASE + 4 * MIB
            }
        );
        assert_eq!(
            error.to_string(),
            "kernel needs 0x1400000 bytes from 0x80200000 but RAM ends at 0x80400000"
        );
        // RAM smaller than the load offset itself.
        assert!(matches!(
            place(RAM_BASE, MIB, &KernelKind::FlatBinary, 16, None, 4096),
            Err(PlacementError::KernelDoesNotFit { .. })
        ));
    }

    #[test]
    fn fdt_that_does_not_fit_beside_kernel_is_rejected() {
        // Kernel ends exactly at the end of RAM: no room for the device tree.
        let error = place(RAM_BASE, 4 * MIB, &linux(2 * MIB), MIB, None, 4096).unwrap_err();
        assert!(matches!(
            error,
            PlacementError::FdtOverlapsKernel {
                fdt_addr: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn bad_fdt_reservation_is_rejected() {
        assert_eq!(
            place(RAM_BASE, 64 * MIB, &linux(MIB), MIB, None, 0),
            Err(PlacementError::BadFdtSize { fdt_max: 0 })
        );
        assert_eq!(
            place(RAM_BASE, 64 * MIB, &linux(MIB), MIB, None, MAX_FDT_SIZE + 1),
            Err(PlacementError::BadFdtSize {
                fdt_max: MAX_FDT_SIZE + 1
            })
        );
    }

    #[test]
    fn misaligned_ram_and_overflows_are_rejected() {
        assert_eq!(
            place(RAM_BASE + 0x1000, 64 * MIB, &linux(MIB), MIB, None, 4096),
            Err(PlacementError::RamBaseMisaligned {
                ram_base: RAM_BASE + 0x1000
            })
        );
        let top = align_down(u64::MAX, KERNEL_ALIGNMENT);
        assert_eq!(
            place(top, 4 * MIB, &linux(MIB), MIB, None, 4096),
            Err(PlacementError::RamEndOverflows {
                ram_base: top,
                ram_size: 4 * MIB
            })
        );
        assert!(matches!(
            place(top, 0, &linux(u64::MAX), MIB, None, 4096),
            Err(PlacementError::KernelAddressOverflows { .. })
        ));
    }

    #[test]
    fn messages_name_the_sizes_involved() {
        assert_eq!(
            ImageError::ImageSizeTooSmall { image_size: 0x100, file_length: 0x200 }.to_string(),
            "the RISC-V Linux Image header says image_size is 0x100 bytes, less than the file's 0x200 bytes"
        );
        assert_eq!(
            PlacementError::InitrdOverlapsKernel { initrd_len: 0x1000, initrd_start: Some(0x8010_0000), kernel_end: 0x8020_0000 }
                .to_string(),
            "initrd of 0x1000 bytes below the device tree would start at 0x80100000, inside the kernel which ends at 0x80200000"
        );
        assert_eq!(
            PlacementError::RamBaseMisaligned { ram_base: 0x8000_1000 }.to_string(),
            "RAM starts at 0x80001000, which is not a multiple of 0x200000 (2 MiB) as the kernel needs"
        );
    }
}
