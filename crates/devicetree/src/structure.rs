//! Bounds-checked structural validation of flattened device-tree blobs (Devicetree Specification, chapter 5).
//!
//! The `fdt` crate indexes slices and unwraps freely, so a truncated or corrupted blob would
//! panic inside it. Everything that crate later touches is checked here first: the header
//! fields, the memory reservation block, every token of the structure block, and every
//! property-name offset into the strings block. Blobs that pass are handed on unchanged,
//! except that `FDT_NOP` tokens are squeezed out, because the `fdt` crate only tolerates them
//! in some positions.

use alloc::borrow::Cow;
use alloc::vec::Vec;

use crate::Region;

/// Size of the version-17 header in bytes.
pub const HEADER_SIZE: usize = 40;
/// The big-endian magic word at offset 0 of every blob.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// The format version this module reads (and the last one compatible with it).
pub const FDT_VERSION: u32 = 17;
/// Nesting limit. Real platform trees stay below ten levels; the limit bounds the
/// recursion of the tree walkers and the `fdt` crate's fixed-size parent stack (64 entries).
pub const MAX_DEPTH: usize = 32;

const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_END: u32 = 0x9;

/// Size of one memory reservation entry: a 64-bit address and a 64-bit size.
const RESERVATION_ENTRY_SIZE: usize = 16;

// Byte offsets of the header fields.
const OFFSET_MAGIC: usize = 0;
const OFFSET_TOTALSIZE: usize = 4;
const OFFSET_OFF_DT_STRUCT: usize = 8;
const OFFSET_OFF_DT_STRINGS: usize = 12;
const OFFSET_OFF_MEM_RSVMAP: usize = 16;
const OFFSET_VERSION: usize = 20;
const OFFSET_LAST_COMP_VERSION: usize = 24;
const OFFSET_SIZE_DT_STRINGS: usize = 32;
const OFFSET_SIZE_DT_STRUCT: usize = 36;

/// Why a blob is not a well-formed flattened device tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructureError {
    #[error("device tree blob is {length} bytes, shorter than the {HEADER_SIZE}-byte header")]
    TooShortForHeader { length: usize },
    #[error("device tree magic is {found:#010x}, expected 0xd00dfeed")]
    BadMagic { found: u32 },
    #[error("device tree version {version} (last compatible {last_compatible}) is not readable as version 17")]
    UnsupportedVersion { version: u32, last_compatible: u32 },
    #[error("device tree totalsize {total_size} is smaller than the {HEADER_SIZE}-byte header")]
    TotalSizeTooSmall { total_size: usize },
    #[error("device tree totalsize {total_size} exceeds the {available} bytes available")]
    TotalSizeExceedsBuffer { total_size: usize, available: usize },
    #[error("device tree {block} block at offset {offset:#x} with size {size:#x} lies outside totalsize {total_size:#x}")]
    BlockOutOfBounds {
        block: &'static str,
        offset: usize,
        size: usize,
        total_size: usize,
    },
    #[error("device tree {block} block offset {offset:#x} is not {alignment}-byte aligned")]
    MisalignedBlock {
        block: &'static str,
        offset: usize,
        alignment: usize,
    },
    #[error("device tree memory reservation block has no terminating zero entry")]
    UnterminatedReservations,
    #[error("device tree structure block ends inside the item at offset {offset:#x}")]
    TruncatedStructure { offset: usize },
    #[error("device tree structure block has unknown token {token:#x} at offset {offset:#x}")]
    UnknownToken { token: u32, offset: usize },
    #[error("device tree node name at offset {offset:#x} has no terminating NUL")]
    UnterminatedNodeName { offset: usize },
    #[error("device tree node name at offset {offset:#x} is empty, not UTF-8, or contains '/'")]
    InvalidNodeName { offset: usize },
    #[error("device tree root node name at offset {offset:#x} is not empty")]
    NamedRootNode { offset: usize },
    #[error("device tree has a second top-level node at offset {offset:#x}")]
    MultipleRootNodes { offset: usize },
    #[error("device tree has no root node")]
    MissingRootNode,
    #[error("device tree nesting exceeds {MAX_DEPTH} levels at offset {offset:#x}")]
    TooDeep { offset: usize },
    #[error("device tree END_NODE token at offset {offset:#x} closes no open node")]
    UnexpectedEndNode { offset: usize },
    #[error("device tree END token at offset {offset:#x} appears while {open_nodes} node(s) are still open")]
    UnexpectedEnd { offset: usize, open_nodes: usize },
    #[error("device tree structure block has no END token")]
    MissingEnd,
    #[error("device tree property at offset {offset:#x} is outside any node")]
    PropertyOutsideNode { offset: usize },
    #[error("device tree property at offset {offset:#x} follows a subnode of the same node")]
    PropertyAfterSubnode { offset: usize },
    #[error("device tree property at offset {offset:#x} claims {length} value bytes beyond the structure block")]
    PropertyValueOutOfBounds { offset: usize, length: usize },
    #[error("device tree property at offset {offset:#x} has name offset {name_offset:#x} outside the strings block")]
    PropertyNameOutOfBounds { offset: usize, name_offset: usize },
    #[error(
        "device tree property at offset {offset:#x} has an empty, unterminated or non-UTF-8 name"
    )]
    InvalidPropertyName { offset: usize },
    #[error("device tree property {name} at offset {offset:#x} is {length} bytes, expected 4")]
    BadCellCount {
        name: &'static str,
        offset: usize,
        length: usize,
    },
}

/// Reads the blob size from a raw header after checking the magic word.
///
/// Lets a caller that only has a physical address learn how many bytes to map before
/// building a slice over the whole blob. Returns `None` when the magic is wrong or the
/// claimed size cannot even hold the header.
pub fn total_size(header: &[u8; HEADER_SIZE]) -> Option<usize> {
    if be_u32(header, OFFSET_MAGIC)? != FDT_MAGIC {
        return None;
    }
    let total = usize::try_from(be_u32(header, OFFSET_TOTALSIZE)?).ok()?;
    (total >= HEADER_SIZE).then_some(total)
}

/// Header fields, already range-checked against the blob.
#[derive(Debug, Clone, Copy)]
struct Header {
    total_size: usize,
    off_dt_struct: usize,
    off_dt_strings: usize,
    off_mem_rsvmap: usize,
    size_dt_strings: usize,
    size_dt_struct: usize,
}

/// A blob that passed [`validate`], ready for the `fdt` crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBlob<'a> {
    /// The blob cut to `totalsize`: borrowed when it needed no change, a rewritten copy when
    /// its structure block held `FDT_NOP` tokens. The copy describes the same tree with the
    /// same strings and reservations.
    pub bytes: Cow<'a, [u8]>,
    /// The memory reservation block's entries, without the terminator, in blob order.
    pub reservations: Vec<Region>,
}

/// Checks every part of `blob` that a tree walk can reach.
pub fn validate(blob: &[u8]) -> Result<CheckedBlob<'_>, StructureError> {
    let header = read_header(blob)?;
    let blob = blob
        .get(..header.total_size)
        .ok_or(StructureError::TotalSizeExceedsBuffer {
            total_size: header.total_size,
            available: blob.len(),
        })?;
    let (reservations, reservations_end) = read_reservations(blob, &header)?;
    let nop_offsets = check_structure(blob, &header)?;
    let bytes = if nop_offsets.is_empty() {
        Cow::Borrowed(blob)
    } else {
        Cow::Owned(without_nops(blob, &header, reservations_end, &nop_offsets))
    };
    Ok(CheckedBlob {
        bytes,
        reservations,
    })
}

fn read_header(blob: &[u8]) -> Result<Header, StructureError> {
    let too_short = StructureError::TooShortForHeader { length: blob.len() };
    let field = |offset: usize| be_u32(blob, offset).ok_or(too_short.clone());
    let as_size = |value: u32| usize::try_from(value).unwrap_or(usize::MAX);

    let magic = field(OFFSET_MAGIC)?;
    if blob.len() < HEADER_SIZE {
        return Err(too_short);
    }
    if magic != FDT_MAGIC {
        return Err(StructureError::BadMagic { found: magic });
    }
    let version = field(OFFSET_VERSION)?;
    let last_compatible = field(OFFSET_LAST_COMP_VERSION)?;
    // size_dt_struct only exists from version 17 on, and the fdt crate relies on it.
    if version < FDT_VERSION || last_compatible > FDT_VERSION {
        return Err(StructureError::UnsupportedVersion {
            version,
            last_compatible,
        });
    }
    let header = Header {
        total_size: as_size(field(OFFSET_TOTALSIZE)?),
        off_dt_struct: as_size(field(OFFSET_OFF_DT_STRUCT)?),
        off_dt_strings: as_size(field(OFFSET_OFF_DT_STRINGS)?),
        off_mem_rsvmap: as_size(field(OFFSET_OFF_MEM_RSVMAP)?),
        size_dt_strings: as_size(field(OFFSET_SIZE_DT_STRINGS)?),
        size_dt_struct: as_size(field(OFFSET_SIZE_DT_STRUCT)?),
    };
    if header.total_size < HEADER_SIZE {
        return Err(StructureError::TotalSizeTooSmall {
            total_size: header.total_size,
        });
    }
    if header.total_size > blob.len() {
        return Err(StructureError::TotalSizeExceedsBuffer {
            total_size: header.total_size,
            available: blob.len(),
        });
    }
    check_block(
        &header,
        "structure",
        header.off_dt_struct,
        header.size_dt_struct,
        4,
    )?;
    check_block(
        &header,
        "strings",
        header.off_dt_strings,
        header.size_dt_strings,
        1,
    )?;
    // The reservation block's size is implied by its terminator; at least the terminator must fit.
    // Entries are read byte-wise, so the 8-byte alignment the specification asks for is not enforced.
    check_block(
        &header,
        "memory reservation",
        header.off_mem_rsvmap,
        RESERVATION_ENTRY_SIZE,
        1,
    )?;
    Ok(header)
}

fn check_block(
    header: &Header,
    block: &'static str,
    offset: usize,
    size: usize,
    alignment: usize,
) -> Result<(), StructureError> {
    let out_of_bounds = StructureError::BlockOutOfBounds {
        block,
        offset,
        size,
        total_size: header.total_size,
    };
    let end = offset.checked_add(size).ok_or(out_of_bounds.clone())?;
    // No block may overlap the header.
    if offset < HEADER_SIZE || end > header.total_size {
        return Err(out_of_bounds);
    }
    if !offset.is_multiple_of(alignment) {
        return Err(StructureError::MisalignedBlock {
            block,
            offset,
            alignment,
        });
    }
    Ok(())
}

/// Reads the reservation entries up to the all-zero terminator; also returns the offset just past it.
fn read_reservations(blob: &[u8], header: &Header) -> Result<(Vec<Region>, usize), StructureError> {
    let mut offset = header.off_mem_rsvmap;
    let mut entries = Vec::new();
    loop {
        let address = be_u64(blob, offset).ok_or(StructureError::UnterminatedReservations)?;
        let size = offset
            .checked_add(8)
            .and_then(|size_offset| be_u64(blob, size_offset))
            .ok_or(StructureError::UnterminatedReservations)?;
        offset += RESERVATION_ENTRY_SIZE;
        if address == 0 && size == 0 {
            return Ok((entries, offset));
        }
        entries.push(Region {
            base: address,
            size,
        });
    }
}

/// Per-open-node state while walking the structure block.
#[derive(Clone, Copy, Default)]
struct OpenNode {
    has_subnode: bool,
}

/// Walks every token of the structure block; returns the block-relative offsets of NOP tokens.
fn check_structure(blob: &[u8], header: &Header) -> Result<Vec<usize>, StructureError> {
    // Both slices were bounds-checked by `read_header`.
    let block = blob
        .get(header.off_dt_struct..header.off_dt_struct + header.size_dt_struct)
        .ok_or(StructureError::MissingEnd)?;
    let strings = blob
        .get(header.off_dt_strings..header.off_dt_strings + header.size_dt_strings)
        .ok_or(StructureError::MissingEnd)?;

    let mut open: Vec<OpenNode> = Vec::new();
    let mut seen_root = false;
    let mut nops = Vec::new();
    let mut offset = 0usize;

    loop {
        let token = be_u32(block, offset).ok_or(if offset >= block.len() {
            StructureError::MissingEnd
        } else {
            StructureError::TruncatedStructure { offset }
        })?;
        match token {
            FDT_BEGIN_NODE => {
                if open.is_empty() && seen_root {
                    return Err(StructureError::MultipleRootNodes { offset });
                }
                let name_start = offset + 4;
                let name_bytes = block.get(name_start..).unwrap_or_default();
                let name_length = name_bytes
                    .iter()
                    .position(|&byte| byte == 0)
                    .ok_or(StructureError::UnterminatedNodeName { offset })?;
                let name = core::str::from_utf8(&name_bytes[..name_length])
                    .map_err(|_| StructureError::InvalidNodeName { offset })?;
                if open.is_empty() {
                    if !name.is_empty() {
                        return Err(StructureError::NamedRootNode { offset });
                    }
                } else if name.is_empty() || name.contains('/') {
                    return Err(StructureError::InvalidNodeName { offset });
                }
                if let Some(parent) = open.last_mut() {
                    parent.has_subnode = true;
                }
                if open.len() >= MAX_DEPTH {
                    return Err(StructureError::TooDeep { offset });
                }
                open.push(OpenNode::default());
                offset = align4(name_start + name_length + 1);
            }
            FDT_END_NODE => {
                if open.pop().is_none() {
                    return Err(StructureError::UnexpectedEndNode { offset });
                }
                if open.is_empty() {
                    seen_root = true;
                }
                offset += 4;
            }
            FDT_PROP => {
                let node = open
                    .last()
                    .ok_or(StructureError::PropertyOutsideNode { offset })?;
                if node.has_subnode {
                    return Err(StructureError::PropertyAfterSubnode { offset });
                }
                let truncated = StructureError::TruncatedStructure { offset };
                let length = be_u32(block, offset + 4).ok_or(truncated.clone())?;
                let name_offset = be_u32(block, offset + 8).ok_or(truncated)?;
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                let name_offset = usize::try_from(name_offset).unwrap_or(usize::MAX);
                let value_start = offset + 12;
                let value_end = value_start
                    .checked_add(length)
                    .filter(|&end| end <= block.len())
                    .ok_or(StructureError::PropertyValueOutOfBounds { offset, length })?;
                let name = property_name(strings, name_offset, offset)?;
                if let Some(cells_name) = CELL_COUNT_PROPERTIES.iter().find(|&&cells| cells == name)
                {
                    // The fdt crate expects these to be exactly one cell.
                    if length != 4 {
                        return Err(StructureError::BadCellCount {
                            name: cells_name,
                            offset,
                            length,
                        });
                    }
                }
                offset = align4(value_end);
            }
            FDT_NOP => {
                nops.push(offset);
                offset += 4;
            }
            FDT_END => {
                if !open.is_empty() {
                    return Err(StructureError::UnexpectedEnd {
                        offset,
                        open_nodes: open.len(),
                    });
                }
                if !seen_root {
                    return Err(StructureError::MissingRootNode);
                }
                return Ok(nops);
            }
            token => return Err(StructureError::UnknownToken { token, offset }),
        }
    }
}

/// Properties whose value the `fdt` crate reads as a single big-endian cell without checking the length.
const CELL_COUNT_PROPERTIES: [&str; 3] = ["#address-cells", "#size-cells", "#interrupt-cells"];

fn property_name(
    strings: &[u8],
    name_offset: usize,
    offset: usize,
) -> Result<&str, StructureError> {
    let tail = strings
        .get(name_offset..)
        .filter(|tail| !tail.is_empty())
        .ok_or(StructureError::PropertyNameOutOfBounds {
            offset,
            name_offset,
        })?;
    let length = tail
        .iter()
        .position(|&byte| byte == 0)
        .ok_or(StructureError::InvalidPropertyName { offset })?;
    match core::str::from_utf8(&tail[..length]) {
        Ok(name) if !name.is_empty() => Ok(name),
        _ => Err(StructureError::InvalidPropertyName { offset }),
    }
}

/// Lays the blob out anew as header, reservations, NOP-free structure block, strings block.
fn without_nops(
    blob: &[u8],
    header: &Header,
    reservations_end: usize,
    nop_offsets: &[usize],
) -> Vec<u8> {
    let structure = &blob[header.off_dt_struct..header.off_dt_struct + header.size_dt_struct];
    let strings = &blob[header.off_dt_strings..header.off_dt_strings + header.size_dt_strings];
    let reservations = &blob[header.off_mem_rsvmap..reservations_end];

    let mut out = Vec::with_capacity(blob.len());
    out.extend_from_slice(&blob[..HEADER_SIZE]);
    // HEADER_SIZE is a multiple of 8, so the reservation block stays 8-byte aligned.
    let off_mem_rsvmap = out.len();
    out.extend_from_slice(reservations);
    let off_dt_struct = out.len();
    let mut previous = 0;
    for &nop in nop_offsets {
        out.extend_from_slice(&structure[previous..nop]);
        previous = nop + 4;
    }
    out.extend_from_slice(&structure[previous..]);
    let size_dt_struct = out.len() - off_dt_struct;
    let off_dt_strings = out.len();
    out.extend_from_slice(strings);
    let total_size = out.len();

    // Every value is at most the original blob's length, which came from a 32-bit field.
    let mut put = |field: usize, value: usize| {
        let value = u32::try_from(value).unwrap_or(u32::MAX);
        out[field..field + 4].copy_from_slice(&value.to_be_bytes());
    };
    put(OFFSET_TOTALSIZE, total_size);
    put(OFFSET_OFF_DT_STRUCT, off_dt_struct);
    put(OFFSET_OFF_DT_STRINGS, off_dt_strings);
    put(OFFSET_OFF_MEM_RSVMAP, off_mem_rsvmap);
    put(OFFSET_SIZE_DT_STRINGS, header.size_dt_strings);
    put(OFFSET_SIZE_DT_STRUCT, size_dt_struct);
    out
}

fn align4(offset: usize) -> usize {
    offset.saturating_add(3) & !3
}

fn be_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let word: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

fn be_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let end = offset.checked_add(8)?;
    let word: [u8; 8] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u64::from_be_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::{FdtReserveEntry, FdtWriter};

    /// A small valid tree: root with two properties and one child node.
    fn small_tree() -> Vec<u8> {
        let mut writer =
            FdtWriter::new_with_mem_reserv(&[
                FdtReserveEntry::new(0x8000_0000, 0x1000).expect("reservation")
            ])
            .expect("writer");
        let root = writer.begin_node("").expect("root");
        writer.property_u32("#address-cells", 2).expect("property");
        writer.property_string("model", "test").expect("property");
        let child = writer.begin_node("child@1").expect("child");
        writer.property_u32("value", 7).expect("property");
        writer.end_node(child).expect("end child");
        writer.end_node(root).expect("end root");
        writer.finish().expect("finish")
    }

    fn read_field(blob: &[u8], offset: usize) -> usize {
        be_u32(blob, offset).expect("header field") as usize
    }

    fn write_field(blob: &mut [u8], offset: usize, value: u32) {
        blob[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
    }

    /// Overwrites a 32-bit word at a structure-block-relative offset.
    fn write_struct_word(blob: &mut [u8], struct_offset: usize, value: u32) {
        let base = read_field(blob, OFFSET_OFF_DT_STRUCT);
        write_field(blob, base + struct_offset, value);
    }

    #[test]
    fn total_size_reads_header() {
        let blob = small_tree();
        let header: [u8; HEADER_SIZE] = blob[..HEADER_SIZE].try_into().expect("header");
        assert_eq!(total_size(&header), Some(blob.len()));
    }

    #[test]
    fn total_size_rejects_bad_magic_and_tiny_sizes() {
        let mut header = [0u8; HEADER_SIZE];
        assert_eq!(total_size(&header), None);
        header[..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
        header[4..8].copy_from_slice(&39u32.to_be_bytes());
        assert_eq!(total_size(&header), None);
        header[4..8].copy_from_slice(&40u32.to_be_bytes());
        assert_eq!(total_size(&header), Some(40));
    }

    #[test]
    fn valid_tree_is_borrowed_and_reservations_are_read() {
        let blob = small_tree();
        let checked = validate(&blob).expect("valid");
        assert!(matches!(checked.bytes, Cow::Borrowed(_)));
        assert_eq!(&*checked.bytes, &blob[..]);
        assert_eq!(
            checked.reservations,
            [Region {
                base: 0x8000_0000,
                size: 0x1000
            }]
        );
    }

    #[test]
    fn trailing_bytes_beyond_total_size_are_cut() {
        let mut blob = small_tree();
        let original_length = blob.len();
        blob.extend_from_slice(&[0xa5; 64]);
        let checked = validate(&blob).expect("valid");
        assert_eq!(checked.bytes.len(), original_length);
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            validate(&[0xd0, 0x0d]),
            Err(StructureError::TooShortForHeader { length: 2 })
        );

        let blob = small_tree();
        assert_eq!(
            validate(&blob[..39]),
            Err(StructureError::TooShortForHeader { length: 39 })
        );
        assert_eq!(
            validate(&blob[..blob.len() - 1]),
            Err(StructureError::TotalSizeExceedsBuffer {
                total_size: blob.len(),
                available: blob.len() - 1
            })
        );

        let mut bad = blob.clone();
        write_field(&mut bad, OFFSET_MAGIC, 0xfeed_d00d);
        assert_eq!(
            validate(&bad),
            Err(StructureError::BadMagic { found: 0xfeed_d00d })
        );

        let mut old = blob.clone();
        write_field(&mut old, OFFSET_VERSION, 16);
        assert_eq!(
            validate(&old),
            Err(StructureError::UnsupportedVersion {
                version: 16,
                last_compatible: 16
            })
        );

        let mut tiny = blob.clone();
        write_field(&mut tiny, OFFSET_TOTALSIZE, 8);
        assert_eq!(
            validate(&tiny),
            Err(StructureError::TotalSizeTooSmall { total_size: 8 })
        );

        let mut wild = blob.clone();
        write_field(&mut wild, OFFSET_OFF_DT_STRINGS, 0xffff_fff0);
        assert!(matches!(
            validate(&wild),
            Err(StructureError::BlockOutOfBounds {
                block: "strings",
                ..
            })
        ));

        let mut misaligned = blob.clone();
        let struct_offset = read_field(&misaligned, OFFSET_OFF_DT_STRUCT);
        write_field(
            &mut misaligned,
            OFFSET_OFF_DT_STRUCT,
            struct_offset as u32 + 2,
        );
        write_field(&mut misaligned, OFFSET_SIZE_DT_STRUCT, 4);
        assert!(matches!(
            validate(&misaligned),
            Err(StructureError::MisalignedBlock {
                block: "structure",
                ..
            })
        ));
    }

    #[test]
    fn unterminated_reservation_block_is_rejected() {
        // Move the reservation block to the end of the blob and give it one non-zero entry
        // with no terminator after it.
        let mut blob = small_tree();
        let old_length = blob.len();
        blob.extend_from_slice(&0x8000_0000u64.to_be_bytes());
        blob.extend_from_slice(&0x1000u64.to_be_bytes());
        let length = blob.len() as u32;
        write_field(&mut blob, OFFSET_TOTALSIZE, length);
        write_field(&mut blob, OFFSET_OFF_MEM_RSVMAP, old_length as u32);
        assert_eq!(
            validate(&blob),
            Err(StructureError::UnterminatedReservations)
        );

        // The same entry followed by a terminator is fine.
        blob.extend_from_slice(&[0; 16]);
        let length = blob.len() as u32;
        write_field(&mut blob, OFFSET_TOTALSIZE, length);
        let checked = validate(&blob).expect("terminated");
        assert_eq!(
            checked.reservations,
            [Region {
                base: 0x8000_0000,
                size: 0x1000
            }]
        );
    }

    #[test]
    fn structure_errors() {
        let blob = small_tree();
        let size_dt_struct = read_field(&blob, OFFSET_SIZE_DT_STRUCT);
        // Layout: BEGIN_NODE "" (8) | PROP #address-cells (16) | PROP model (20) | BEGIN_NODE child@1 (12)
        //         | PROP value (16) | END_NODE (4) | END_NODE (4) | END (4)
        let child_offset = 8 + 16 + 20;

        let mut unknown = blob.clone();
        write_struct_word(&mut unknown, 0, 0x7);
        assert_eq!(
            validate(&unknown),
            Err(StructureError::UnknownToken {
                token: 7,
                offset: 0
            })
        );

        let mut no_end = blob.clone();
        write_field(
            &mut no_end,
            OFFSET_SIZE_DT_STRUCT,
            (size_dt_struct - 4) as u32,
        );
        assert_eq!(validate(&no_end), Err(StructureError::MissingEnd));

        let mut early_end = blob.clone();
        write_struct_word(&mut early_end, child_offset, FDT_END);
        assert_eq!(
            validate(&early_end),
            Err(StructureError::UnexpectedEnd {
                offset: child_offset,
                open_nodes: 1
            })
        );

        let mut extra_end_node = blob.clone();
        write_struct_word(&mut extra_end_node, size_dt_struct - 4, FDT_END_NODE);
        assert_eq!(
            validate(&extra_end_node),
            Err(StructureError::UnexpectedEndNode {
                offset: size_dt_struct - 4
            })
        );

        let mut second_root = blob.clone();
        write_struct_word(&mut second_root, size_dt_struct - 4, FDT_BEGIN_NODE);
        assert!(validate(&second_root).is_err());

        let mut prop_outside = blob.clone();
        write_struct_word(&mut prop_outside, size_dt_struct - 4, FDT_PROP);
        assert!(matches!(
            validate(&prop_outside),
            Err(StructureError::PropertyOutsideNode { .. })
                | Err(StructureError::TruncatedStructure { .. })
        ));

        let mut huge_value = blob.clone();
        write_struct_word(&mut huge_value, 8 + 4, 0xffff_fff0);
        assert_eq!(
            validate(&huge_value),
            Err(StructureError::PropertyValueOutOfBounds {
                offset: 8,
                length: 0xffff_fff0
            })
        );

        let mut bad_name = blob.clone();
        write_struct_word(&mut bad_name, 8 + 8, 0x10_0000);
        assert_eq!(
            validate(&bad_name),
            Err(StructureError::PropertyNameOutOfBounds {
                offset: 8,
                name_offset: 0x10_0000
            })
        );

        let mut long_cells = blob.clone();
        write_struct_word(&mut long_cells, 8 + 4, 2);
        assert_eq!(
            validate(&long_cells),
            Err(StructureError::BadCellCount {
                name: "#address-cells",
                offset: 8,
                length: 2
            })
        );

        let mut named_root = blob.clone();
        write_struct_word(&mut named_root, 4, u32::from_be_bytes(*b"ab\0\0"));
        assert_eq!(
            validate(&named_root),
            Err(StructureError::NamedRootNode { offset: 0 })
        );

        let mut empty_child_name = blob.clone();
        write_struct_word(&mut empty_child_name, child_offset + 4, 0);
        assert_eq!(
            validate(&empty_child_name),
            Err(StructureError::InvalidNodeName {
                offset: child_offset
            })
        );

        let mut non_utf8_name = blob.clone();
        write_struct_word(&mut non_utf8_name, child_offset + 4, 0xff00_0000);
        assert_eq!(
            validate(&non_utf8_name),
            Err(StructureError::InvalidNodeName {
                offset: child_offset
            })
        );

        // Move the child's property behind the child's END_NODE, where it belongs to the root
        // but follows the root's subnode.
        let mut late_property = blob.clone();
        let base = read_field(&late_property, OFFSET_OFF_DT_STRUCT);
        let value_prop = base + child_offset + 12;
        late_property.copy_within(value_prop..value_prop + 16, value_prop + 4);
        write_field(&mut late_property, value_prop, FDT_END_NODE);
        assert_eq!(
            validate(&late_property),
            Err(StructureError::PropertyAfterSubnode {
                offset: child_offset + 12 + 4
            })
        );
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_rejected() {
        let build = |depth: usize| {
            let mut writer = FdtWriter::new().expect("writer");
            let mut open = Vec::new();
            open.push(writer.begin_node("").expect("root"));
            for level in 1..depth {
                open.push(
                    writer
                        .begin_node(&alloc::format!("n{level}"))
                        .expect("node"),
                );
            }
            while let Some(node) = open.pop() {
                writer.end_node(node).expect("end");
            }
            writer.finish().expect("finish")
        };
        assert!(validate(&build(MAX_DEPTH)).is_ok());
        assert!(matches!(
            validate(&build(MAX_DEPTH + 1)),
            Err(StructureError::TooDeep { .. })
        ));
    }

    #[test]
    fn nops_are_removed_without_changing_the_tree() {
        let blob = small_tree();
        let struct_base = read_field(&blob, OFFSET_OFF_DT_STRUCT);
        let struct_size = read_field(&blob, OFFSET_SIZE_DT_STRUCT);
        // Token boundaries of `small_tree`: before root, before each property, before the
        // child, between the child's END_NODE and the root's, and before END.
        let boundaries = [0, 8, 24, 44, 56, 72, 76, 80];
        let mut with_nops = blob[..struct_base].to_vec();
        let mut previous = 0;
        for boundary in boundaries {
            with_nops.extend_from_slice(&blob[struct_base + previous..struct_base + boundary]);
            with_nops.extend_from_slice(&FDT_NOP.to_be_bytes());
            previous = boundary;
        }
        with_nops.extend_from_slice(&blob[struct_base + previous..]);
        let added = boundaries.len() * 4;
        write_field(
            &mut with_nops,
            OFFSET_SIZE_DT_STRUCT,
            (struct_size + added) as u32,
        );
        let strings = read_field(&blob, OFFSET_OFF_DT_STRINGS);
        write_field(
            &mut with_nops,
            OFFSET_OFF_DT_STRINGS,
            (strings + added) as u32,
        );
        write_field(
            &mut with_nops,
            OFFSET_TOTALSIZE,
            (blob.len() + added) as u32,
        );

        let checked = validate(&with_nops).expect("NOPs are valid tokens");
        assert!(matches!(checked.bytes, Cow::Owned(_)));
        let normalized = validate(&checked.bytes).expect("rewritten blob is valid");
        assert!(
            matches!(normalized.bytes, Cow::Borrowed(_)),
            "no NOP survives"
        );
        assert_eq!(normalized.reservations, checked.reservations);
        // Same structure block as the original, token for token.
        let new_struct = read_field(&checked.bytes, OFFSET_OFF_DT_STRUCT);
        assert_eq!(
            read_field(&checked.bytes, OFFSET_SIZE_DT_STRUCT),
            struct_size
        );
        assert_eq!(
            &checked.bytes[new_struct..new_struct + struct_size],
            &blob[struct_base..struct_base + struct_size]
        );
    }
}
