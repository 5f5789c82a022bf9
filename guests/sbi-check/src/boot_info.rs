//! What the guest reads from the device tree it is booted with: `/chosen/bootargs` and the timebase frequency.
//!
//! The `fdt` crate does the lookups, but it indexes and unwraps freely and would panic on a malformed
//! blob. So the blob is first walked here with every offset bounds-checked, and copied into a
//! caller-supplied buffer without `FDT_NOP` tokens (which that crate accepts only in some
//! positions); only the checked copy is handed to `fdt`.

use core::fmt;

use fdt::Fdt;

/// Size of the version-17 header (Devicetree Specification, section 5.2).
pub const HEADER_SIZE: usize = 40;
/// The big-endian magic word at offset 0.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// The largest blob the guest accepts; QEMU's and Keel's trees are a few KiB.
pub const MAX_BLOB_SIZE: usize = 64 * 1024;
/// Nesting limit, well inside the `fdt` crate's fixed parent stack.
const MAX_DEPTH: usize = 32;

const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_END: u32 = 0x9;

/// Why the device tree could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTreeError {
    /// The address the boot protocol passed is null or not 8-byte aligned.
    BadAddress(usize),
    /// The first word is not `0xd00dfeed`.
    BadMagic(u32),
    /// `totalsize` is smaller than the header or larger than [`MAX_BLOB_SIZE`].
    BadTotalSize(usize),
    /// Fewer bytes are available than the header or `totalsize` needs.
    Truncated { needed: usize, available: usize },
    /// A header field points outside the blob; the name is the field's.
    HeaderFieldOutOfBounds(&'static str),
    /// The structure block is malformed at this offset within it.
    BadStructure {
        offset: usize,
        problem: &'static str,
    },
    /// The buffer for the checked copy is smaller than the blob.
    CopyBufferTooSmall { needed: usize, available: usize },
    /// The `fdt` crate rejected the checked blob.
    Rejected,
    /// Neither `/cpus` nor a `/cpus/cpu@N` node has a usable `timebase-frequency`.
    NoTimebaseFrequency,
    /// `/chosen/bootargs` is not NUL-terminated UTF-8.
    BadBootargs,
}

impl fmt::Display for DeviceTreeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceTreeError::BadAddress(address) => write!(
                formatter,
                "device tree address {address:#x} is null or not 8-byte aligned"
            ),
            DeviceTreeError::BadMagic(magic) => {
                write!(
                    formatter,
                    "device tree magic is {magic:#x}, expected {FDT_MAGIC:#x}"
                )
            }
            DeviceTreeError::BadTotalSize(size) => write!(
                formatter,
                "device tree totalsize {size} is outside {HEADER_SIZE}..={MAX_BLOB_SIZE} bytes"
            ),
            DeviceTreeError::Truncated { needed, available } => write!(
                formatter,
                "device tree needs {needed} bytes but only {available} are available"
            ),
            DeviceTreeError::HeaderFieldOutOfBounds(field) => {
                write!(
                    formatter,
                    "device tree header field {field} points outside the blob"
                )
            }
            DeviceTreeError::BadStructure { offset, problem } => write!(
                formatter,
                "device tree structure block is malformed at offset {offset:#x}: {problem}"
            ),
            DeviceTreeError::CopyBufferTooSmall { needed, available } => write!(
                formatter,
                "device tree of {needed} bytes does not fit the {available}-byte copy buffer"
            ),
            DeviceTreeError::Rejected => {
                write!(formatter, "the fdt crate rejected the checked device tree")
            }
            DeviceTreeError::NoTimebaseFrequency => write!(
                formatter,
                "device tree has no non-zero timebase-frequency in /cpus or a cpu node"
            ),
            DeviceTreeError::BadBootargs => {
                write!(
                    formatter,
                    "/chosen/bootargs is not a NUL-terminated UTF-8 string"
                )
            }
        }
    }
}

/// What the guest needs from its device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo<'a> {
    /// `/chosen/bootargs`, empty when absent.
    pub bootargs: &'a str,
    /// Ticks per second of `rdtime`.
    pub timebase_frequency: u64,
    /// The first RAM region (base, size), when the tree has a usable `/memory` node.
    pub memory: Option<(u64, u64)>,
    /// Register bases of the `virtio,mmio` nodes, in tree order (at most [`MAX_VIRTIO`]).
    pub virtio: [u64; MAX_VIRTIO],
    /// How many entries of `virtio` are used.
    pub virtio_count: usize,
}

/// The most `virtio,mmio` nodes recorded.
pub const MAX_VIRTIO: usize = 8;

impl BootInfo<'_> {
    /// Whether the command line selects the benchmark mode: it contains `bench`.
    pub fn wants_bench(&self) -> bool {
        self.bootargs.contains("bench")
    }
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

fn put_be32(bytes: &mut [u8], offset: usize, value: u32) {
    if let Some(word) = bytes.get_mut(offset..offset + 4) {
        word.copy_from_slice(&value.to_be_bytes());
    }
}

/// The blob's `totalsize`, read from its first eight bytes (magic and size), so the caller knows how
/// many bytes to look at. Fails unless the magic matches and the size is plausible.
pub fn blob_size(start: &[u8]) -> Result<usize, DeviceTreeError> {
    let truncated = DeviceTreeError::Truncated {
        needed: 8,
        available: start.len(),
    };
    let magic = be32(start, 0).ok_or(truncated)?;
    if magic != FDT_MAGIC {
        return Err(DeviceTreeError::BadMagic(magic));
    }
    let size = be32(start, 4).ok_or(truncated)? as usize;
    if !(HEADER_SIZE..=MAX_BLOB_SIZE).contains(&size) {
        return Err(DeviceTreeError::BadTotalSize(size));
    }
    Ok(size)
}

/// A region `[offset, offset + size)` of the blob named by two header fields, checked to lie inside it.
fn region(
    blob: &[u8],
    offset_field: usize,
    size: usize,
    name: &'static str,
) -> Result<(usize, usize), DeviceTreeError> {
    let offset =
        be32(blob, offset_field).ok_or(DeviceTreeError::HeaderFieldOutOfBounds(name))? as usize;
    match offset.checked_add(size) {
        Some(end) if offset >= HEADER_SIZE && end <= blob.len() => Ok((offset, end)),
        _ => Err(DeviceTreeError::HeaderFieldOutOfBounds(name)),
    }
}

/// Checks `blob` completely and copies it into `copy` without `FDT_NOP` tokens; returns the copy.
pub fn check_and_copy<'c>(blob: &[u8], copy: &'c mut [u8]) -> Result<&'c [u8], DeviceTreeError> {
    let total = blob_size(blob)?;
    if blob.len() < total {
        return Err(DeviceTreeError::Truncated {
            needed: total,
            available: blob.len(),
        });
    }
    let blob = &blob[..total];
    if copy.len() < total {
        return Err(DeviceTreeError::CopyBufferTooSmall {
            needed: total,
            available: copy.len(),
        });
    }
    let size = |offset| be32(blob, offset).unwrap_or(u32::MAX) as usize;
    let (struct_start, struct_end) = region(blob, 8, size(36), "size_dt_struct")?;
    let (strings_start, strings_end) = region(blob, 12, size(32), "size_dt_strings")?;
    let (reservations_start, _) = region(blob, 16, 0, "off_mem_rsvmap")?;
    let strings = &blob[strings_start..strings_end];

    // The memory reservation block: 16-byte (address, size) pairs ending with a pair of zeros.
    let mut reservations_end = reservations_start;
    loop {
        let entry = blob
            .get(reservations_end..reservations_end + 16)
            .ok_or(DeviceTreeError::HeaderFieldOutOfBounds("off_mem_rsvmap"))?;
        reservations_end += 16;
        if entry.iter().all(|&byte| byte == 0) {
            break;
        }
    }

    // The copy: header, reservations, squeezed structure block, strings.
    copy[..HEADER_SIZE].copy_from_slice(&blob[..HEADER_SIZE]);
    let reservations_len = reservations_end - reservations_start;
    copy[HEADER_SIZE..HEADER_SIZE + reservations_len]
        .copy_from_slice(&blob[reservations_start..reservations_end]);
    let new_struct_start = HEADER_SIZE + reservations_len;
    let struct_len = copy_structure(
        &blob[struct_start..struct_end],
        strings,
        &mut copy[new_struct_start..],
    )?;
    let new_strings_start = new_struct_start + struct_len;
    let new_total = new_strings_start + strings.len();
    copy.get_mut(new_strings_start..new_total)
        .ok_or(DeviceTreeError::CopyBufferTooSmall {
            needed: new_total,
            available: total,
        })?
        .copy_from_slice(strings);
    // Everything fits in u32: the blob is at most MAX_BLOB_SIZE bytes and the copy is not larger.
    put_be32(copy, 4, new_total as u32);
    put_be32(copy, 8, new_struct_start as u32);
    put_be32(copy, 12, new_strings_start as u32);
    put_be32(copy, 16, HEADER_SIZE as u32);
    put_be32(copy, 32, strings.len() as u32);
    put_be32(copy, 36, struct_len as u32);
    Ok(&copy[..new_total])
}

/// Walks a structure block token by token, copying all but `FDT_NOP` into `out`; returns the bytes written.
fn copy_structure(block: &[u8], strings: &[u8], out: &mut [u8]) -> Result<usize, DeviceTreeError> {
    let bad = |offset, problem| DeviceTreeError::BadStructure { offset, problem };
    let mut offset = 0;
    let mut written = 0;
    let mut depth = 0usize;
    let mut seen_root = false;
    loop {
        let token = be32(block, offset).ok_or(bad(offset, "the block ends without FDT_END"))?;
        let token_start = offset;
        offset += 4;
        match token {
            FDT_BEGIN_NODE => {
                if depth == 0 && seen_root {
                    return Err(bad(token_start, "a second root node"));
                }
                seen_root = true;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(bad(token_start, "nodes nest too deeply"));
                }
                let name = block.get(offset..).unwrap_or(&[]);
                let name_len = name
                    .iter()
                    .position(|&byte| byte == 0)
                    .ok_or(bad(offset, "a node name has no NUL terminator"))?;
                if core::str::from_utf8(&name[..name_len]).is_err() {
                    return Err(bad(offset, "a node name is not UTF-8"));
                }
                offset = align4(offset + name_len + 1);
            }
            FDT_END_NODE => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(bad(token_start, "FDT_END_NODE without a node"))?;
            }
            FDT_PROP => {
                if depth == 0 {
                    return Err(bad(token_start, "a property outside any node"));
                }
                let len = be32(block, offset).ok_or(bad(offset, "a property header is cut off"))?
                    as usize;
                let name_offset = be32(block, offset + 4)
                    .ok_or(bad(offset, "a property header is cut off"))?
                    as usize;
                let value_start = offset + 8;
                let value_end = value_start
                    .checked_add(len)
                    .filter(|&end| end <= block.len())
                    .ok_or(bad(offset, "a property value runs past the block"))?;
                let name = strings
                    .get(name_offset..)
                    .and_then(|tail| {
                        tail.iter()
                            .position(|&byte| byte == 0)
                            .map(|end| &tail[..end])
                    })
                    .ok_or(bad(
                        offset,
                        "a property name offset is outside the strings block",
                    ))?;
                // The `fdt` crate reads cell counts as exactly four bytes.
                if (name == b"#address-cells" || name == b"#size-cells") && len != 4 {
                    return Err(bad(offset, "a cell-count property is not 4 bytes"));
                }
                offset = align4(value_end);
            }
            FDT_NOP => continue,
            FDT_END => {
                if depth != 0 || !seen_root {
                    return Err(bad(token_start, "FDT_END before the root node is closed"));
                }
            }
            _ => return Err(bad(token_start, "an unknown token")),
        }
        let piece = block
            .get(token_start..offset)
            .ok_or(bad(token_start, "a token runs past the block"))?;
        let destination = out
            .get_mut(written..written + piece.len())
            .ok_or(bad(token_start, "the copy buffer is full"))?;
        destination.copy_from_slice(piece);
        written += piece.len();
        if token == FDT_END {
            return Ok(written);
        }
    }
}

const fn align4(offset: usize) -> usize {
    (offset + 3) & !3
}

/// A 32- or 64-bit big-endian cell value.
fn cells_value(value: &[u8]) -> Option<u64> {
    match *value {
        [a, b, c, d] => Some(u64::from(u32::from_be_bytes([a, b, c, d]))),
        [a, b, c, d, e, f, g, h] => Some(u64::from_be_bytes([a, b, c, d, e, f, g, h])),
        _ => None,
    }
}

/// Reads the boot information from a blob already passed through [`check_and_copy`].
pub fn read(checked: &[u8]) -> Result<BootInfo<'_>, DeviceTreeError> {
    let tree = Fdt::new(checked).map_err(|_| DeviceTreeError::Rejected)?;
    let bootargs = match tree
        .find_node("/chosen")
        .and_then(|chosen| chosen.property("bootargs"))
    {
        Some(property) => {
            let text = property
                .value
                .strip_suffix(&[0])
                .ok_or(DeviceTreeError::BadBootargs)?;
            core::str::from_utf8(text).map_err(|_| DeviceTreeError::BadBootargs)?
        }
        None => "",
    };
    // The binding allows the frequency on /cpus or on each cpu node; take /cpus first.
    let cpus = tree
        .find_node("/cpus")
        .ok_or(DeviceTreeError::NoTimebaseFrequency)?;
    let timebase_frequency = core::iter::once(cpus)
        .chain(
            cpus.children()
                .filter(|child| child.name.split('@').next() == Some("cpu")),
        )
        .find_map(|node| {
            node.property("timebase-frequency")
                .and_then(|p| cells_value(p.value))
        })
        .filter(|&frequency| frequency != 0)
        .ok_or(DeviceTreeError::NoTimebaseFrequency)?;
    let memory = tree.memory().regions().find_map(|region| {
        let size = region.size? as u64;
        (size > 0).then_some((region.starting_address as u64, size))
    });
    let mut virtio = [0u64; MAX_VIRTIO];
    let mut virtio_count = 0;
    for node in tree.all_nodes() {
        let is_virtio = node
            .compatible()
            .is_some_and(|compatible| compatible.all().any(|name| name == "virtio,mmio"));
        if !is_virtio || virtio_count == MAX_VIRTIO {
            continue;
        }
        if let Some(region) = node.reg().and_then(|mut regions| regions.next()) {
            virtio[virtio_count] = region.starting_address as u64;
            virtio_count += 1;
        }
    }
    Ok(BootInfo {
        bootargs,
        timebase_frequency,
        memory,
        virtio,
        virtio_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::{FdtReserveEntry, FdtWriter};

    /// A small tree like QEMU's: timebase on /cpus, bootargs in /chosen.
    fn tree(bootargs: Option<&str>, timebase_on_cpus: bool, timebase: u32) -> Vec<u8> {
        let reservation = FdtReserveEntry::new(0x8000_0000, 0x20_0000).unwrap();
        let mut writer = FdtWriter::new_with_mem_reserv(&[reservation]).unwrap();
        let root = writer.begin_node("").unwrap();
        writer.property_u32("#address-cells", 2).unwrap();
        writer.property_u32("#size-cells", 2).unwrap();
        let chosen = writer.begin_node("chosen").unwrap();
        if let Some(bootargs) = bootargs {
            writer.property_string("bootargs", bootargs).unwrap();
        }
        writer.end_node(chosen).unwrap();
        let cpus = writer.begin_node("cpus").unwrap();
        writer.property_u32("#address-cells", 1).unwrap();
        writer.property_u32("#size-cells", 0).unwrap();
        if timebase_on_cpus {
            writer.property_u32("timebase-frequency", timebase).unwrap();
        }
        let cpu = writer.begin_node("cpu@0").unwrap();
        writer.property_u32("reg", 0).unwrap();
        if !timebase_on_cpus {
            writer.property_u32("timebase-frequency", timebase).unwrap();
        }
        writer.end_node(cpu).unwrap();
        writer.end_node(cpus).unwrap();
        let memory = writer.begin_node("memory@80000000").unwrap();
        writer.property_string("device_type", "memory").unwrap();
        writer
            .property_array_u64("reg", &[0x8000_0000, 0x100_0000])
            .unwrap();
        writer.end_node(memory).unwrap();
        let soc = writer.begin_node("soc").unwrap();
        writer.property_u32("#address-cells", 2).unwrap();
        writer.property_u32("#size-cells", 2).unwrap();
        for base in [0x1000_1000u64, 0x1000_2000] {
            let node = writer.begin_node(&format!("virtio_mmio@{base:x}")).unwrap();
            writer.property_string("compatible", "virtio,mmio").unwrap();
            writer.property_array_u64("reg", &[base, 0x1000]).unwrap();
            writer.end_node(node).unwrap();
        }
        writer.end_node(soc).unwrap();
        writer.end_node(root).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn reads_memory_and_virtio_slots() {
        let blob = tree(None, true, 10_000_000);
        let mut copy = vec![0u8; MAX_BLOB_SIZE];
        let info = read(check_and_copy(&blob, &mut copy).unwrap()).unwrap();
        assert_eq!(info.memory, Some((0x8000_0000, 0x100_0000)));
        assert_eq!(info.virtio_count, 2);
        assert_eq!(&info.virtio[..2], &[0x1000_1000, 0x1000_2000]);
    }

    fn read_tree(blob: &[u8]) -> Result<(String, u64), DeviceTreeError> {
        let mut copy = vec![0u8; MAX_BLOB_SIZE];
        let checked = check_and_copy(blob, &mut copy)?;
        let info = read(checked)?;
        Ok((info.bootargs.to_string(), info.timebase_frequency))
    }

    #[test]
    fn reads_bootargs_and_timebase_from_either_place() {
        let blob = tree(Some("console=ttyS0 bench"), true, 10_000_000);
        assert_eq!(blob_size(&blob), Ok(blob.len()));
        assert_eq!(
            read_tree(&blob),
            Ok(("console=ttyS0 bench".into(), 10_000_000))
        );
        let blob = tree(Some(""), false, 1_000_000);
        assert_eq!(read_tree(&blob), Ok((String::new(), 1_000_000)));
        let blob = tree(None, true, 10_000_000);
        assert_eq!(read_tree(&blob), Ok((String::new(), 10_000_000)));
    }

    #[test]
    fn bench_is_selected_by_the_command_line() {
        let info = BootInfo {
            bootargs: "console=ttyS0 bench",
            timebase_frequency: 1,
            memory: None,
            virtio: [0; MAX_VIRTIO],
            virtio_count: 0,
        };
        assert!(info.wants_bench());
        let info = BootInfo {
            bootargs: "console=ttyS0 earlycon=sbi",
            timebase_frequency: 1,
            memory: None,
            virtio: [0; MAX_VIRTIO],
            virtio_count: 0,
        };
        assert!(!info.wants_bench());
    }

    #[test]
    fn nops_are_squeezed_out() {
        let mut blob = tree(Some("x"), true, 10_000_000);
        // Turn the blob's structure block into one with a NOP right after the root's name: move
        // everything after it down by four bytes and grow the block and the blob.
        let struct_offset = be32(&blob, 8).unwrap() as usize;
        let insert_at = struct_offset + 8; // FDT_BEGIN_NODE + the empty, padded root name
        blob.splice(insert_at..insert_at, FDT_NOP.to_be_bytes());
        let grow = |blob: &mut Vec<u8>, field: usize| {
            let value = be32(blob, field).unwrap() + 4;
            put_be32(blob, field, value);
        };
        grow(&mut blob, 4); // totalsize
        grow(&mut blob, 12); // off_dt_strings
        grow(&mut blob, 36); // size_dt_struct
        let mut copy = vec![0u8; MAX_BLOB_SIZE];
        let checked = check_and_copy(&blob, &mut copy).unwrap();
        assert_eq!(checked.len(), blob.len() - 4);
        assert_eq!(read(checked).unwrap().bootargs, "x");
    }

    #[test]
    fn malformed_blobs_are_errors() {
        let good = tree(Some("x"), true, 10_000_000);
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        assert_eq!(
            read_tree(&bad_magic),
            Err(DeviceTreeError::BadMagic(0x000d_feed))
        );
        assert!(matches!(
            read_tree(&good[..good.len() - 8]),
            Err(DeviceTreeError::Truncated { .. })
        ));
        assert!(matches!(
            blob_size(&good[..6]),
            Err(DeviceTreeError::Truncated { needed: 8, .. })
        ));
        let mut huge = good.clone();
        put_be32(&mut huge, 4, (MAX_BLOB_SIZE + 1) as u32);
        assert_eq!(
            read_tree(&huge),
            Err(DeviceTreeError::BadTotalSize(MAX_BLOB_SIZE + 1))
        );
        let mut bad_strings = good.clone();
        put_be32(&mut bad_strings, 32, 0x10_0000);
        assert_eq!(
            read_tree(&bad_strings),
            Err(DeviceTreeError::HeaderFieldOutOfBounds("size_dt_strings"))
        );
        // A corrupted first token of the structure block.
        let mut bad_token = good.clone();
        let struct_offset = be32(&good, 8).unwrap() as usize;
        put_be32(&mut bad_token, struct_offset, 0x77);
        assert!(matches!(
            read_tree(&bad_token),
            Err(DeviceTreeError::BadStructure {
                offset: 0,
                problem: "an unknown token"
            })
        ));
        // A property length running past the block.
        let mut long_property = good.clone();
        put_be32(&mut long_property, struct_offset + 12, 0x7fff_0000);
        assert!(matches!(
            read_tree(&long_property),
            Err(DeviceTreeError::BadStructure { .. })
        ));
        let mut small = [0u8; 16];
        assert!(matches!(
            check_and_copy(&good, &mut small),
            Err(DeviceTreeError::CopyBufferTooSmall { .. })
        ));
    }

    #[test]
    fn a_missing_or_zero_timebase_is_an_error() {
        let blob = tree(Some("x"), true, 0);
        assert_eq!(read_tree(&blob), Err(DeviceTreeError::NoTimebaseFrequency));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            DeviceTreeError::BadAddress(0x3).to_string(),
            "device tree address 0x3 is null or not 8-byte aligned"
        );
        assert_eq!(
            DeviceTreeError::BadMagic(7).to_string(),
            "device tree magic is 0x7, expected 0xd00dfeed"
        );
        assert_eq!(
            DeviceTreeError::NoTimebaseFrequency.to_string(),
            "device tree has no non-zero timebase-frequency in /cpus or a cpu node"
        );
    }
}
