//! The hypervisor's footprint from its ELF section headers: what it loads into memory, by section.

use serde::Serialize;

/// The section that holds the bundled manifest image; it is reported apart from Keel's own footprint.
pub const BUNDLED_IMAGE_SECTION: &str = ".dmfs";

const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u64 = 0x1;
const SHF_ALLOC: u64 = 0x2;
const SHF_EXECINSTR: u64 = 0x4;
/// Size of one ELF64 section header.
const SECTION_HEADER_SIZE: usize = 64;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64LittleEndian,
    #[error("the ELF header is cut short: {0} bytes, 64 needed")]
    HeaderTruncated(usize),
    #[error("section header entries are {0} bytes, expected 64")]
    BadSectionHeaderSize(u16),
    #[error("section header {index} lies outside the file ({file_len} bytes)")]
    SectionHeaderOutside { index: usize, file_len: usize },
    #[error("the section-name string table index {0} is not a section")]
    BadNameTable(u16),
    #[error("section {index}'s name at offset {offset} is outside the section-name string table")]
    BadName { index: usize, offset: u64 },
}

/// One section that occupies memory when the image is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    pub name: String,
    pub address: u64,
    pub size: u64,
    pub kind: SectionKind,
}

/// The grouping `size` uses: read-only (code and constants), initialised writable data, zeroed data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    Text,
    Data,
    Bss,
}

/// The memory-occupying (SHF_ALLOC) sections of a 64-bit little-endian ELF file, in file order.
pub fn allocated_sections(bytes: &[u8]) -> Result<Vec<Section>, ElfError> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    let header = bytes
        .get(..64)
        .ok_or(ElfError::HeaderTruncated(bytes.len()))?;
    if header[4] != 2 || header[5] != 1 {
        return Err(ElfError::NotElf64LittleEndian);
    }
    let table_offset = read_u64(header, 0x28).unwrap_or(0);
    let entry_size = read_u16(header, 0x3a).unwrap_or(0);
    let count = usize::from(read_u16(header, 0x3c).unwrap_or(0));
    let names_index = read_u16(header, 0x3e).unwrap_or(0);
    if count == 0 {
        return Ok(Vec::new());
    }
    if usize::from(entry_size) != SECTION_HEADER_SIZE {
        return Err(ElfError::BadSectionHeaderSize(entry_size));
    }
    let section_header = |index: usize| -> Result<&[u8], ElfError> {
        let outside = ElfError::SectionHeaderOutside {
            index,
            file_len: bytes.len(),
        };
        let start = usize::try_from(table_offset)
            .ok()
            .and_then(|offset| offset.checked_add(index.checked_mul(SECTION_HEADER_SIZE)?))
            .ok_or_else(|| outside.clone())?;
        bytes
            .get(
                start
                    ..start
                        .checked_add(SECTION_HEADER_SIZE)
                        .ok_or_else(|| outside.clone())?,
            )
            .ok_or(outside)
    };
    if usize::from(names_index) >= count {
        return Err(ElfError::BadNameTable(names_index));
    }
    let names_header = section_header(usize::from(names_index))?;
    let names = file_range(
        bytes,
        read_u64(names_header, 24).unwrap_or(0),
        read_u64(names_header, 32).unwrap_or(0),
    )
    .ok_or(ElfError::BadNameTable(names_index))?;

    let mut sections = Vec::new();
    for index in 0..count {
        let header = section_header(index)?;
        let flags = read_u64(header, 8).unwrap_or(0);
        if flags & SHF_ALLOC == 0 {
            continue;
        }
        let name_offset = u64::from(read_u32(header, 0).unwrap_or(0));
        let name = section_name(names, name_offset).ok_or(ElfError::BadName {
            index,
            offset: name_offset,
        })?;
        let kind = if read_u32(header, 4) == Some(SHT_NOBITS) {
            SectionKind::Bss
        } else if flags & SHF_WRITE != 0 && flags & SHF_EXECINSTR == 0 {
            SectionKind::Data
        } else {
            SectionKind::Text
        };
        sections.push(Section {
            name,
            address: read_u64(header, 16).unwrap_or(0),
            size: read_u64(header, 32).unwrap_or(0),
            kind,
        });
    }
    Ok(sections)
}

/// Keel's own footprint: text, data and bss without the bundled image, plus the bundled image apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    pub text: u64,
    pub data: u64,
    pub bss: u64,
    pub bundled_image: u64,
}

impl Footprint {
    pub fn of(sections: &[Section]) -> Footprint {
        let mut footprint = Footprint::default();
        for section in sections {
            if section.name == BUNDLED_IMAGE_SECTION {
                footprint.bundled_image += section.size;
                continue;
            }
            match section.kind {
                SectionKind::Text => footprint.text += section.size,
                SectionKind::Data => footprint.data += section.size,
                SectionKind::Bss => footprint.bss += section.size,
            }
        }
        footprint
    }

    /// Keel's own memory without the bundled image.
    pub fn own_total(&self) -> u64 {
        self.text + self.data + self.bss
    }
}

fn file_range(bytes: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    bytes.get(start..end)
}

fn section_name(names: &[u8], offset: u64) -> Option<String> {
    let rest = names.get(usize::try_from(offset).ok()?..)?;
    let end = rest.iter().position(|&byte| byte == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHT_PROGBITS: u32 = 1;
    const SHT_STRTAB: u32 = 3;

    /// (name, type, flags, size) -> a minimal ELF64 file with those sections after a null section
    /// and a trailing .shstrtab.
    fn elf(sections: &[(&str, u32, u64, u64)]) -> Vec<u8> {
        let mut names = vec![0u8];
        let mut name_offsets = Vec::new();
        for (name, ..) in sections {
            name_offsets.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let shstrtab_name = names.len() as u32;
        names.extend_from_slice(b".shstrtab\0");

        let names_offset = 64u64;
        let table_offset = names_offset + names.len() as u64;
        let count = sections.len() + 2;
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x28..0x30].copy_from_slice(&table_offset.to_le_bytes());
        bytes[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        bytes[0x3c..0x3e].copy_from_slice(&(count as u16).to_le_bytes());
        bytes[0x3e..0x40].copy_from_slice(&((count - 1) as u16).to_le_bytes());
        bytes.extend_from_slice(&names);

        let header = |name: u32, kind: u32, flags: u64, address: u64, offset: u64, size: u64| {
            let mut entry = vec![0u8; 64];
            entry[0..4].copy_from_slice(&name.to_le_bytes());
            entry[4..8].copy_from_slice(&kind.to_le_bytes());
            entry[8..16].copy_from_slice(&flags.to_le_bytes());
            entry[16..24].copy_from_slice(&address.to_le_bytes());
            entry[24..32].copy_from_slice(&offset.to_le_bytes());
            entry[32..40].copy_from_slice(&size.to_le_bytes());
            entry
        };
        bytes.extend(header(0, 0, 0, 0, 0, 0));
        let mut address = 0x8020_0000;
        for ((_, kind, flags, size), name) in sections.iter().zip(&name_offsets) {
            bytes.extend(header(*name, *kind, *flags, address, 0, *size));
            address += size;
        }
        bytes.extend(header(
            shstrtab_name,
            SHT_STRTAB,
            0,
            0,
            names_offset,
            names.len() as u64,
        ));
        bytes
    }

    fn keel_like() -> Vec<u8> {
        elf(&[
            (".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, 40_000),
            (".rodata", SHT_PROGBITS, SHF_ALLOC, 9_000),
            (".dmfs", SHT_PROGBITS, SHF_ALLOC, 5_000_000),
            (".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, 300),
            (".bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 70_000),
            (".comment", SHT_PROGBITS, 0, 50),
        ])
    }

    #[test]
    fn sections_are_read_with_names_and_kinds() {
        let sections = allocated_sections(&keel_like()).unwrap();
        let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".rodata", ".dmfs", ".data", ".bss"]);
        assert_eq!(sections[0].kind, SectionKind::Text);
        assert_eq!(sections[0].address, 0x8020_0000);
        assert_eq!(sections[1].kind, SectionKind::Text);
        assert_eq!(sections[3].kind, SectionKind::Data);
        assert_eq!(sections[4].kind, SectionKind::Bss);
        assert_eq!(sections[4].size, 70_000);
    }

    #[test]
    fn footprint_keeps_the_bundled_image_apart() {
        let footprint = Footprint::of(&allocated_sections(&keel_like()).unwrap());
        assert_eq!(
            footprint,
            Footprint {
                text: 49_000,
                data: 300,
                bss: 70_000,
                bundled_image: 5_000_000
            }
        );
        assert_eq!(footprint.own_total(), 119_300);
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        assert_eq!(allocated_sections(b"#!/bin/sh"), Err(ElfError::NotElf));
        assert_eq!(
            allocated_sections(b"\x7fELF\x02\x01"),
            Err(ElfError::HeaderTruncated(6))
        );
        let mut thirty_two = keel_like();
        thirty_two[4] = 1;
        assert_eq!(
            allocated_sections(&thirty_two),
            Err(ElfError::NotElf64LittleEndian)
        );

        let good = keel_like();
        let cut = &good[..good.len() - 10];
        assert!(matches!(
            allocated_sections(cut),
            Err(ElfError::SectionHeaderOutside { .. })
        ));

        let mut far = keel_like();
        far[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            allocated_sections(&far),
            Err(ElfError::SectionHeaderOutside { .. })
        ));

        let mut odd_entries = keel_like();
        odd_entries[0x3a..0x3c].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(
            allocated_sections(&odd_entries),
            Err(ElfError::BadSectionHeaderSize(40))
        );

        let mut bad_names = keel_like();
        bad_names[0x3e..0x40].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(
            allocated_sections(&bad_names),
            Err(ElfError::BadNameTable(500))
        );

        // A section whose name offset points past the string table.
        let mut bad_name = keel_like();
        let table = u64::from_le_bytes(bad_name[0x28..0x30].try_into().unwrap()) as usize;
        let text_header = table + 64;
        bad_name[text_header..text_header + 4].copy_from_slice(&9_999u32.to_le_bytes());
        assert_eq!(
            allocated_sections(&bad_name),
            Err(ElfError::BadName {
                index: 1,
                offset: 9_999
            })
        );
    }

    #[test]
    fn a_file_without_sections_has_no_footprint() {
        let mut bytes = keel_like();
        bytes[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(allocated_sections(&bytes), Ok(Vec::new()));
        assert_eq!(Footprint::of(&[]).own_total(), 0);
    }
}
