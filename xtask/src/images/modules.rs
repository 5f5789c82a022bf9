//! Kernel modules from Debian's kernel package: found by name, their dependencies read from `.modinfo`, ordered for loading.
//!
//! Debian builds the virtio transport and drivers as modules and ships no `modules.dep` (depmod runs at install
//! time), so the dependencies come from each module's own `.modinfo` section, the same data depmod reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// The modules a Debian guest needs for Keel's and QEMU's devices; their dependencies are added to these.
pub const WANTED: &[&str] = &["virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng"];

/// ELF section type of sections without file contents (`.bss`); `.modinfo` must not be one.
const SHT_NOBITS: u32 = 8;
/// `e_shstrndx` value saying the real index is in section 0's `sh_link`; kernel modules never need it.
const SHN_XINDEX: u16 = 0xffff;
const ELF64_HEADER_LEN: usize = 64;
const ELF64_SECTION_HEADER_LEN: usize = 64;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64LittleEndian,
    #[error("the ELF header is cut short ({0} bytes, 64 needed)")]
    HeaderTruncated(usize),
    #[error("section headers are {0} bytes each, not the 64 of ELF64")]
    BadSectionHeaderSize(u16),
    #[error("the ELF file has no section headers")]
    NoSections,
    #[error("the section name table index {index} is not below the section count {count}")]
    BadNameTableIndex { index: u16, count: u16 },
    #[error(
        "the section header table (offset {offset}, {count} entries) runs past the end of the file"
    )]
    SectionTableOutOfBounds { offset: u64, count: u16 },
    #[error(
        "section {index}'s contents (offset {offset}, {size} bytes) run past the end of the file"
    )]
    SectionOutOfBounds { index: u16, offset: u64, size: u64 },
    #[error("section {index}'s name offset {offset} is outside the section name table")]
    BadNameOffset { index: u16, offset: u32 },
    #[error("no `{0}` section")]
    NoSection(String),
    #[error("section `{0}` has no contents in the file (SHT_NOBITS)")]
    NoContents(String),
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let field = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes([field[0], field[1]]))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([field[0], field[1], field[2], field[3]]))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let field = bytes.get(offset..offset.checked_add(8)?)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(field);
    Some(u64::from_le_bytes(word))
}

/// One section header's fields that locating a section by name needs.
struct SectionHeader {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
}

/// The contents of the section called `name` in a 64-bit little-endian ELF file, found through the section
/// header table and its name string table (`e_shstrndx`), every offset checked against the file's length.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Result<&'a [u8], ElfError> {
    if elf.len() < 4 || &elf[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if elf.len() < ELF64_HEADER_LEN {
        return Err(ElfError::HeaderTruncated(elf.len()));
    }
    // EI_CLASS 2 = ELFCLASS64, EI_DATA 1 = ELFDATA2LSB.
    if elf[4] != 2 || elf[5] != 1 {
        return Err(ElfError::NotElf64LittleEndian);
    }
    let header_field = |offset| u16_at(elf, offset).ok_or(ElfError::HeaderTruncated(elf.len()));
    let table_offset = u64_at(elf, 0x28).ok_or(ElfError::HeaderTruncated(elf.len()))?;
    let entry_size = header_field(0x3a)?;
    let count = header_field(0x3c)?;
    let names_index = header_field(0x3e)?;
    if count == 0 {
        return Err(ElfError::NoSections);
    }
    if usize::from(entry_size) != ELF64_SECTION_HEADER_LEN {
        return Err(ElfError::BadSectionHeaderSize(entry_size));
    }
    if names_index == SHN_XINDEX || names_index >= count {
        return Err(ElfError::BadNameTableIndex {
            index: names_index,
            count,
        });
    }
    let out_of_table = ElfError::SectionTableOutOfBounds {
        offset: table_offset,
        count,
    };
    let table_start = usize::try_from(table_offset).map_err(|_| out_of_table.clone())?;
    let table_len = usize::from(count) * ELF64_SECTION_HEADER_LEN;
    let table = table_start
        .checked_add(table_len)
        .and_then(|end| elf.get(table_start..end))
        .ok_or(out_of_table)?;
    let header = |index: u16| {
        let entry =
            &table[usize::from(index) * ELF64_SECTION_HEADER_LEN..][..ELF64_SECTION_HEADER_LEN];
        // The entry is 64 bytes, so every field below is inside it.
        SectionHeader {
            name: u32_at(entry, 0).unwrap_or(0),
            kind: u32_at(entry, 4).unwrap_or(0),
            offset: u64_at(entry, 24).unwrap_or(0),
            size: u64_at(entry, 32).unwrap_or(0),
        }
    };
    let contents = |index: u16, header: &SectionHeader| -> Result<&'a [u8], ElfError> {
        let out_of_file = ElfError::SectionOutOfBounds {
            index,
            offset: header.offset,
            size: header.size,
        };
        let start = usize::try_from(header.offset).map_err(|_| out_of_file.clone())?;
        let size = usize::try_from(header.size).map_err(|_| out_of_file.clone())?;
        start
            .checked_add(size)
            .and_then(|end| elf.get(start..end))
            .ok_or(out_of_file)
    };
    let names = contents(names_index, &header(names_index))?;
    for index in 0..count {
        let candidate = header(index);
        let bad_name = ElfError::BadNameOffset {
            index,
            offset: candidate.name,
        };
        let start = usize::try_from(candidate.name).map_err(|_| bad_name.clone())?;
        let rest = names.get(start..).ok_or(bad_name.clone())?;
        let end = rest.iter().position(|&byte| byte == 0).ok_or(bad_name)?;
        if &rest[..end] != name.as_bytes() {
            continue;
        }
        if candidate.kind == SHT_NOBITS {
            return Err(ElfError::NoContents(name.to_string()));
        }
        return contents(index, &candidate);
    }
    Err(ElfError::NoSection(name.to_string()))
}

/// What loading needs from a module's `.modinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleInfo {
    /// `name=`: the name the kernel knows the module by (absent in very old modules).
    pub name: Option<String>,
    /// `depends=`: the modules that must be loaded first, comma-separated in the section.
    pub depends: Vec<String>,
    /// `vermagic=`: the kernel release and build options the module was built for.
    pub vermagic: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModinfoError {
    #[error("a .modinfo entry `{0}` has no `=` between key and value")]
    NotKeyValue(String),
    #[error("the .modinfo `{0}=` entry is not UTF-8")]
    NotUtf8(String),
    #[error("the .modinfo has several `{0}=` entries")]
    Repeated(String),
    #[error("the .modinfo names an empty dependency in `depends={0}`")]
    EmptyDependency(String),
}

/// Parses a `.modinfo` section: NUL-terminated `key=value` strings, with NUL padding between some of them.
/// Keys other than `name`, `depends` and `vermagic` (licence, aliases, parameters) are skipped.
pub fn parse_modinfo(section: &[u8]) -> Result<ModuleInfo, ModinfoError> {
    let mut info = ModuleInfo::default();
    let mut seen_depends = false;
    for entry in section
        .split(|&byte| byte == 0)
        .filter(|entry| !entry.is_empty())
    {
        let Some(equals) = entry.iter().position(|&byte| byte == b'=') else {
            return Err(ModinfoError::NotKeyValue(
                String::from_utf8_lossy(entry).into_owned(),
            ));
        };
        let (key, value) = (&entry[..equals], &entry[equals + 1..]);
        let wanted = match key {
            b"name" | b"depends" | b"vermagic" => key,
            _ => continue,
        };
        let key = String::from_utf8_lossy(wanted).into_owned();
        let value = std::str::from_utf8(value).map_err(|_| ModinfoError::NotUtf8(key.clone()))?;
        let repeated = match wanted {
            b"name" => info.name.replace(value.to_string()).is_some(),
            b"vermagic" => info.vermagic.replace(value.to_string()).is_some(),
            _ => {
                if !value.is_empty() {
                    for dependency in value.split(',') {
                        if dependency.is_empty() {
                            return Err(ModinfoError::EmptyDependency(value.to_string()));
                        }
                        info.depends.push(canonical_name(dependency));
                    }
                }
                std::mem::replace(&mut seen_depends, true)
            }
        };
        if repeated {
            return Err(ModinfoError::Repeated(key));
        }
    }
    Ok(info)
}

/// The kernel treats `-` and `_` in module names alike; file names use either (`virtio-rng.ko`).
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderError {
    #[error("modules depend on each other in a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("module `{0}` is needed but its dependencies are not known")]
    Unknown(String),
}

/// The load order for `wanted` and everything it depends on: each module after all of its dependencies, otherwise
/// in the order the modules are first named, so the same graph always gives the same order.
pub fn load_order(
    wanted: &[&str],
    depends: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, OrderError> {
    fn visit(
        name: &str,
        depends: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        placed: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), OrderError> {
        if placed.contains(name) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|on_path| on_path == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name.to_string());
            return Err(OrderError::Cycle(cycle));
        }
        let dependencies = depends
            .get(name)
            .ok_or_else(|| OrderError::Unknown(name.to_string()))?;
        path.push(name.to_string());
        for dependency in dependencies {
            visit(dependency, depends, path, placed, order)?;
        }
        path.pop();
        placed.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }

    let mut order = Vec::new();
    let mut placed = BTreeSet::new();
    for name in wanted {
        visit(
            &canonical_name(name),
            depends,
            &mut Vec::new(),
            &mut placed,
            &mut order,
        )?;
    }
    Ok(order)
}

/// A module ready for the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The kernel's name for it (`virtio_rng`).
    pub name: String,
    /// Where it goes below `lib/modules/<release>/`: its path in the package without `.xz`
    /// (`kernel/drivers/char/hw_random/virtio-rng.ko`).
    pub path: String,
    /// The uncompressed ELF object.
    pub bytes: Vec<u8>,
}

/// The modules of one kernel release: `<modules>/kernel/**/*.ko[.xz]`, by canonical name.
pub struct ModuleTree {
    root: PathBuf,
    /// Paths relative to `root`; more than one for a name is only an error if that name is needed.
    files: BTreeMap<String, Vec<String>>,
}

impl ModuleTree {
    pub fn scan(root: &Path) -> Result<ModuleTree> {
        let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut pending = vec![root.join("kernel")];
        while let Some(dir) = pending.pop() {
            for entry in
                fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let Some(file_name) = path.file_name().and_then(|name| name.to_str()) else {
                    continue;
                };
                let Some(stem) = file_name
                    .strip_suffix(".ko.xz")
                    .or_else(|| file_name.strip_suffix(".ko"))
                else {
                    continue;
                };
                let relative = path
                    .strip_prefix(root)
                    .context("module file outside its tree")?
                    .to_str()
                    .with_context(|| format!("{} is not UTF-8", path.display()))?
                    .to_string();
                files
                    .entry(canonical_name(stem))
                    .or_default()
                    .push(relative);
            }
        }
        if files.is_empty() {
            bail!(
                "no kernel modules (*.ko, *.ko.xz) under {}",
                root.join("kernel").display()
            );
        }
        Ok(ModuleTree {
            root: root.to_path_buf(),
            files,
        })
    }

    /// Reads one module by name, decompressing it if it is xz-compressed.
    pub fn read(&self, name: &str) -> Result<Module> {
        let name = canonical_name(name);
        let relative = match self.files.get(&name).map(Vec::as_slice) {
            Some([one]) => one,
            Some(several) => bail!(
                "module {name} is in several files under {}: {several:?}",
                self.root.display()
            ),
            None => bail!(
                "module {name} is not in {} (built into the kernel, or not built at all?)",
                self.root.display()
            ),
        };
        let path = self.root.join(relative);
        let stored = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let (path_in_archive, bytes) = match relative.strip_suffix(".xz") {
            Some(plain) => {
                let mut bytes = Vec::new();
                lzma_rs::xz_decompress(&mut stored.as_slice(), &mut bytes)
                    .map_err(|error| anyhow::anyhow!("{error:?}"))
                    .with_context(|| format!("cannot decompress {}", path.display()))?;
                (plain.to_string(), bytes)
            }
            None => (relative.clone(), stored),
        };
        Ok(Module {
            name,
            path: path_in_archive,
            bytes,
        })
    }

    /// The wanted modules and all they depend on, in load order, each checked to be a RISC-V module built for
    /// `release` whose `name=` matches the name it was found by.
    pub fn collect(&self, wanted: &[&str], release: &str) -> Result<Vec<Module>> {
        let mut modules: BTreeMap<String, Module> = BTreeMap::new();
        let mut depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut pending: Vec<String> = wanted.iter().map(|name| canonical_name(name)).collect();
        while let Some(name) = pending.pop() {
            if depends.contains_key(&name) {
                continue;
            }
            let module = self.read(&name)?;
            let info = module_info(&module.bytes)
                .with_context(|| format!("module {name} ({})", module.path))?;
            if let Some(own_name) = &info.name {
                if canonical_name(own_name) != name {
                    bail!("{} calls itself `{own_name}`, not {name}", module.path);
                }
            }
            // vermagic starts with the release the module was built for, then build options.
            let built_for = info
                .vermagic
                .as_deref()
                .and_then(|magic| magic.split(' ').next());
            if built_for != Some(release) {
                bail!(
                    "{} was built for kernel {built_for:?}, not {release}",
                    module.path
                );
            }
            pending.extend(info.depends.iter().cloned());
            depends.insert(name.clone(), info.depends);
            modules.insert(name, module);
        }
        let order = load_order(wanted, &depends)?;
        order
            .into_iter()
            .map(|name| {
                modules
                    .remove(&name)
                    .with_context(|| format!("module {name} was ordered but never read"))
            })
            .collect()
    }
}

/// Checks that the bytes are a RISC-V ELF object and reads its `.modinfo`.
pub fn module_info(bytes: &[u8]) -> Result<ModuleInfo> {
    super::check_static_riscv64_elf(bytes).context("not a 64-bit RISC-V ELF object")?;
    let section = section(bytes, ".modinfo")?;
    Ok(parse_modinfo(section)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 little-endian RISC-V relocatable file: a null section, `.text`, a `.modinfo`
    /// holding `modinfo`, a `.bss` and the section name table, section headers last.
    pub(crate) fn tiny_module(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.text\0.modinfo\0.bss\0.shstrtab\0";
        let name_offsets = [0u32, 1, 7, 16, 21];
        let text = [0x13u8, 0, 0, 0]; // nop
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2; // ELFCLASS64
        bytes[5] = 1; // ELFDATA2LSB
        bytes[6] = 1; // EV_CURRENT
        bytes[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        bytes[18..20].copy_from_slice(&243u16.to_le_bytes()); // EM_RISCV
        bytes[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        let mut place = |data: &[u8]| {
            let offset = bytes.len() as u64;
            bytes.extend_from_slice(data);
            (offset, data.len() as u64)
        };
        let text_at = place(&text);
        let modinfo_at = place(modinfo);
        let names_at = place(names);
        while !bytes.len().is_multiple_of(8) {
            bytes.push(0);
        }
        let table = bytes.len() as u64;
        // (name, type, offset, size): SHT_NULL, SHT_PROGBITS, SHT_PROGBITS, SHT_NOBITS, SHT_STRTAB.
        let sections = [
            (name_offsets[0], 0u32, 0u64, 0u64),
            (name_offsets[1], 1, text_at.0, text_at.1),
            (name_offsets[2], 1, modinfo_at.0, modinfo_at.1),
            (name_offsets[3], 8, 0, 64),
            (name_offsets[4], 3, names_at.0, names_at.1),
        ];
        for (name, kind, offset, size) in sections {
            let mut entry = [0u8; 64];
            entry[0..4].copy_from_slice(&name.to_le_bytes());
            entry[4..8].copy_from_slice(&kind.to_le_bytes());
            entry[24..32].copy_from_slice(&offset.to_le_bytes());
            entry[32..40].copy_from_slice(&size.to_le_bytes());
            bytes.extend_from_slice(&entry);
        }
        bytes[0x28..0x30].copy_from_slice(&table.to_le_bytes()); // e_shoff
        bytes[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        bytes[0x3c..0x3e].copy_from_slice(&5u16.to_le_bytes()); // e_shnum
        bytes[0x3e..0x40].copy_from_slice(&4u16.to_le_bytes()); // e_shstrndx
        bytes
    }

    const MODINFO: &[u8] =
        b"license=GPL\0\0\0description=Virtio network driver\0depends=net_failover\0retpoline=Y\0intree=Y\0name=virtio_net\0vermagic=6.12.1 SMP mod_unload riscv\0";

    #[test]
    fn modinfo_is_found_by_section_name_and_parsed() {
        let module = tiny_module(MODINFO);
        assert_eq!(section(&module, ".modinfo").unwrap(), MODINFO);
        assert_eq!(section(&module, ".text").unwrap(), [0x13, 0, 0, 0]);
        let info = module_info(&module).unwrap();
        assert_eq!(
            info,
            ModuleInfo {
                name: Some("virtio_net".into()),
                depends: vec!["net_failover".into()],
                vermagic: Some("6.12.1 SMP mod_unload riscv".into()),
            }
        );
    }

    #[test]
    fn depends_lists_are_split_and_canonicalised() {
        let info = parse_modinfo(b"depends=\0name=virtio_mmio\0").unwrap();
        assert!(info.depends.is_empty());
        let info = parse_modinfo(b"depends=failover,virtio-ring\0").unwrap();
        assert_eq!(info.depends, ["failover", "virtio_ring"]);
        assert_eq!(parse_modinfo(b"").unwrap(), ModuleInfo::default());
    }

    #[test]
    fn malformed_modinfo_is_refused() {
        assert_eq!(
            parse_modinfo(b"license=GPL\0garbage\0"),
            Err(ModinfoError::NotKeyValue("garbage".into()))
        );
        assert_eq!(
            parse_modinfo(b"depends=a\0depends=b\0"),
            Err(ModinfoError::Repeated("depends".into()))
        );
        assert_eq!(
            parse_modinfo(b"name=a\0name=b\0"),
            Err(ModinfoError::Repeated("name".into()))
        );
        assert_eq!(
            parse_modinfo(b"depends=a,,b\0"),
            Err(ModinfoError::EmptyDependency("a,,b".into()))
        );
        assert_eq!(
            parse_modinfo(b"name=\xff\0"),
            Err(ModinfoError::NotUtf8("name".into()))
        );
        // Bytes that are not UTF-8 in keys the loader ignores are fine.
        assert!(parse_modinfo(b"author=\xff\0name=x\0").is_ok());
    }

    #[test]
    fn missing_and_contentless_sections_are_errors() {
        let module = tiny_module(MODINFO);
        assert_eq!(
            section(&module, ".data"),
            Err(ElfError::NoSection(".data".into()))
        );
        assert_eq!(
            section(&module, ".bss"),
            Err(ElfError::NoContents(".bss".into()))
        );
    }

    #[test]
    fn damaged_elf_files_are_reported_not_panicked_on() {
        let module = tiny_module(MODINFO);
        assert_eq!(section(b"\x7fEL", ".modinfo"), Err(ElfError::NotElf));
        assert_eq!(section(b"#!/bin/sh\n", ".modinfo"), Err(ElfError::NotElf));
        assert_eq!(
            section(&module[..40], ".modinfo"),
            Err(ElfError::HeaderTruncated(40))
        );
        let mut big_endian = module.clone();
        big_endian[5] = 2;
        assert_eq!(
            section(&big_endian, ".modinfo"),
            Err(ElfError::NotElf64LittleEndian)
        );
        let mut no_sections = module.clone();
        no_sections[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(section(&no_sections, ".modinfo"), Err(ElfError::NoSections));
        let mut bad_entry_size = module.clone();
        bad_entry_size[0x3a..0x3c].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(
            section(&bad_entry_size, ".modinfo"),
            Err(ElfError::BadSectionHeaderSize(40))
        );
        let mut bad_names = module.clone();
        bad_names[0x3e..0x40].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(
            section(&bad_names, ".modinfo"),
            Err(ElfError::BadNameTableIndex { index: 9, count: 5 })
        );
        let mut far_table = module.clone();
        far_table[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            section(&far_table, ".modinfo"),
            Err(ElfError::SectionTableOutOfBounds { .. })
        ));
        // The .modinfo header (section 2) claims more bytes than the file has.
        let table = module.len() - 5 * 64;
        let mut long_section = module.clone();
        long_section[table + 2 * 64 + 32..table + 2 * 64 + 40]
            .copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            section(&long_section, ".modinfo"),
            Err(ElfError::SectionOutOfBounds { index: 2, .. })
        ));
        let mut bad_name = module.clone();
        bad_name[table + 64..table + 68].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            section(&bad_name, ".modinfo"),
            Err(ElfError::BadNameOffset {
                index: 1,
                offset: 1000
            })
        );
        // Every truncation gives an error, never a panic.
        for end in 0..module.len() {
            assert!(section(&module[..end], ".modinfo").is_err(), "cut at {end}");
        }
    }

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(name, depends)| {
                (
                    name.to_string(),
                    depends.iter().map(|name| name.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn dependencies_come_first_each_module_once() {
        let depends = graph(&[
            ("virtio_mmio", &[]),
            ("virtio_blk", &[]),
            ("virtio_net", &["net_failover"]),
            ("net_failover", &["failover"]),
            ("failover", &[]),
            ("virtio_rng", &[]),
        ]);
        let order = load_order(WANTED, &depends).unwrap();
        assert_eq!(
            order,
            [
                "virtio_mmio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_rng"
            ]
        );
        // A shared dependency is loaded once, before the first module that needs it.
        let diamond = graph(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])]);
        assert_eq!(load_order(&["a"], &diamond).unwrap(), ["d", "b", "c", "a"]);
        assert_eq!(
            load_order(&["c", "a"], &diamond).unwrap(),
            ["d", "c", "b", "a"]
        );
        // Names with dashes are the same modules.
        let dashed = graph(&[("virtio_rng", &[])]);
        assert_eq!(
            load_order(&["virtio-rng"], &dashed).unwrap(),
            ["virtio_rng"]
        );
    }

    #[test]
    fn cycles_and_unknown_modules_are_errors() {
        let cycle = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let error = load_order(&["a"], &cycle).unwrap_err();
        assert_eq!(
            error,
            OrderError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(
            error.to_string(),
            "modules depend on each other in a cycle: a -> b -> c -> a"
        );
        let own = graph(&[("a", &["a"])]);
        assert!(matches!(
            load_order(&["a"], &own),
            Err(OrderError::Cycle(_))
        ));
        let missing = graph(&[("a", &["b"])]);
        assert_eq!(
            load_order(&["a"], &missing),
            Err(OrderError::Unknown("b".into()))
        );
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-modules-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn modinfo(name: &str, depends: &str) -> Vec<u8> {
        format!("license=GPL\0depends={depends}\0name={name}\0vermagic=6.12.1 SMP riscv\0")
            .into_bytes()
    }

    #[test]
    fn a_module_tree_is_collected_in_load_order() {
        let root = scratch("tree");
        for (path, name, depends) in [
            (
                "kernel/drivers/net/virtio_net.ko",
                "virtio_net",
                "net_failover",
            ),
            (
                "kernel/drivers/net/net_failover.ko",
                "net_failover",
                "failover",
            ),
            ("kernel/net/core/failover.ko", "failover", ""),
            (
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "virtio_rng",
                "",
            ),
        ] {
            let file = root.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, tiny_module(&modinfo(name, depends))).unwrap();
        }
        fs::write(root.join("kernel/drivers/net/README"), b"not a module").unwrap();
        let tree = ModuleTree::scan(&root).unwrap();
        let modules = tree
            .collect(&["virtio_net", "virtio_rng"], "6.12.1")
            .unwrap();
        let names: Vec<&str> = modules.iter().map(|module| module.name.as_str()).collect();
        assert_eq!(
            names,
            ["failover", "net_failover", "virtio_net", "virtio_rng"]
        );
        assert_eq!(
            modules[3].path,
            "kernel/drivers/char/hw_random/virtio-rng.ko"
        );
        assert!(modules[0].bytes.starts_with(b"\x7fELF"));

        let wrong_release = format!("{:#}", tree.collect(&["virtio_rng"], "6.1.0").unwrap_err());
        assert!(
            wrong_release.contains("built for kernel Some(\"6.12.1\"), not 6.1.0"),
            "{wrong_release}"
        );
        let absent = format!("{:#}", tree.collect(&["virtio_blk"], "6.12.1").unwrap_err());
        assert!(absent.contains("module virtio_blk is not in"), "{absent}");

        // A module whose own name differs from its file name is refused.
        fs::write(
            root.join("kernel/net/core/failover.ko"),
            tiny_module(&modinfo("something_else", "")),
        )
        .unwrap();
        let renamed = format!("{:#}", tree.collect(&["virtio_net"], "6.12.1").unwrap_err());
        assert!(
            renamed.contains("calls itself `something_else`"),
            "{renamed}"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn xz_compressed_modules_are_decompressed() {
        // `printf 'hello' | xz --check=crc64 | xxd -i`: a real xz stream, so the decoder is tested on the format.
        const HELLO_XZ: &[u8] = &[
            0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00, 0x04, 0xe6, 0xd6, 0xb4, 0x46, 0x02, 0x00,
            0x21, 0x01, 0x16, 0x00, 0x00, 0x00, 0x74, 0x2f, 0xe5, 0xa3, 0x01, 0x00, 0x04, 0x68,
            0x65, 0x6c, 0x6c, 0x6f, 0x00, 0x00, 0x00, 0x00, 0xb1, 0x37, 0xb9, 0xdb, 0xe5, 0xda,
            0x1e, 0x9b, 0x00, 0x01, 0x1d, 0x05, 0xb8, 0x2d, 0x80, 0xaf, 0x1f, 0xb6, 0xf3, 0x7d,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x04, 0x59, 0x5a,
        ];
        let root = scratch("xz");
        fs::create_dir_all(root.join("kernel/drivers")).unwrap();
        fs::write(root.join("kernel/drivers/hello.ko.xz"), HELLO_XZ).unwrap();
        fs::write(root.join("kernel/drivers/broken.ko.xz"), &HELLO_XZ[..30]).unwrap();
        let tree = ModuleTree::scan(&root).unwrap();
        let hello = tree.read("hello").unwrap();
        assert_eq!(hello.bytes, b"hello");
        assert_eq!(hello.path, "kernel/drivers/hello.ko");
        let broken = format!("{:#}", tree.read("broken").unwrap_err());
        assert!(broken.contains("cannot decompress"), "{broken}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_real_debian_modules_parse_when_present() {
        // Only where `cargo xtask images` has unpacked the kernel package; the hand-made tests above always run.
        let Some(home) = std::env::var_os("HOME") else {
            return;
        };
        let modules = Path::new(&home).join(".cache/keel/images/debian/modules");
        let Ok(release) = fs::canonicalize(&modules) else {
            return;
        };
        let Some(release) = release
            .file_name()
            .and_then(|name| name.to_str())
            .map(str::to_string)
        else {
            return;
        };
        let tree = ModuleTree::scan(&modules).unwrap();
        let collected = tree.collect(WANTED, &release).unwrap();
        let names: Vec<&str> = collected
            .iter()
            .map(|module| module.name.as_str())
            .collect();
        for wanted in WANTED {
            assert!(names.contains(wanted), "{names:?}");
        }
        let position = |name: &str| names.iter().position(|found| *found == name);
        if let (Some(failover), Some(net)) = (position("net_failover"), position("virtio_net")) {
            assert!(failover < net, "{names:?}");
        }
    }
}
