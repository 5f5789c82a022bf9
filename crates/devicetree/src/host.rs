//! Owned summary of the host platform, read from the flattened device tree firmware passes in `a1`.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use fdt::node::FdtNode;
use fdt::Fdt;

use crate::structure::{self, StructureError};
use crate::Region;

/// Interrupt code of the supervisor external interrupt (privileged spec, `scause`/`mcause`).
/// A PLIC context wired to this code on a hart's local interrupt controller is that hart's
/// S-mode context.
const IRQ_S_EXT: u32 = 9;

/// Compatible strings of the UARTs the hypervisor can drive as a 16550.
const UART_COMPATIBLE: &[&str] = &["ns16550a", "ns16550"];
const PLIC_COMPATIBLE: &[&str] = &["sifive,plic-1.0.0", "riscv,plic0"];
const VIRTIO_MMIO_COMPATIBLE: &[&str] = &["virtio,mmio"];
const TEST_DEVICE_COMPATIBLE: &[&str] = &["sifive,test0"];

/// Defaults the Devicetree Specification gives when a bus omits its cell counts.
const DEFAULT_ADDRESS_CELLS: u32 = 2;
const DEFAULT_SIZE_CELLS: u32 = 1;

/// One hart (`/cpus/cpu@N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHart {
    pub hartid: u64,
    /// The `riscv,isa` string (or `riscv,isa-base` when only the newer binding is present).
    pub isa: String,
    /// `riscv,isa-extensions` when present, otherwise derived from `isa` by [`parse_isa_string`].
    pub isa_extensions: Vec<String>,
    /// `mmu-type`, such as `riscv,sv39`; absent on harts without S-mode paging.
    pub mmu_type: Option<String>,
    /// `status` is `okay` or absent.
    pub enabled: bool,
}

/// The console UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostUart {
    pub base: u64,
    pub size: u64,
    /// First cell of the interrupt specifier: the PLIC/APLIC source number.
    pub irq: Option<u32>,
    pub clock_frequency: Option<u32>,
    /// Registers are `1 << reg_shift` bytes apart (`reg-shift`, default 0).
    pub reg_shift: u32,
}

/// The platform-level interrupt controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlic {
    pub base: u64,
    pub size: u64,
    /// `riscv,ndev`: the number of interrupt sources (source IDs 1..=ndev).
    pub ndev: u32,
    /// `(hartid, context)` for every hart's S-mode context. Context `k` is the `k`-th entry of
    /// `interrupts-extended`.
    pub s_contexts: Vec<(u64, u32)>,
}

/// One virtio-mmio transport slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVirtio {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// What the hypervisor needs to know about the machine it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlatform {
    /// Non-empty `reg` ranges of every enabled memory node, in tree order.
    pub memory: Vec<Region>,
    /// Static `/reserved-memory` children first, then the memory reservation block's entries.
    pub reserved: Vec<Region>,
    pub harts: Vec<HostHart>,
    pub timebase_frequency: u64,
    pub uart: Option<HostUart>,
    pub plic: Option<HostPlic>,
    /// Enabled virtio-mmio slots sorted by base address.
    pub virtio_mmio: Vec<HostVirtio>,
    /// The SiFive test device used for power-off and reset.
    pub test_device: Option<Region>,
    pub model: Option<String>,
}

/// Why a host device tree could not be summarized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostTreeError {
    #[error(transparent)]
    Structure(#[from] StructureError),
    #[error("device tree rejected by the fdt parser: {0}")]
    Parser(fdt::FdtError),
    #[error("device tree has no enabled memory node (device_type = \"memory\") under the root")]
    NoMemoryNode,
    #[error("device tree memory nodes describe no non-empty region")]
    NoMemoryRegions,
    #[error("device tree has no /cpus node")]
    NoCpusNode,
    #[error("device tree /cpus node has no cpu node")]
    NoCpus,
    #[error("device tree has no timebase-frequency in /cpus or any cpu node")]
    MissingTimebaseFrequency,
    #[error("device tree node {node} lacks the required property {property}")]
    MissingProperty {
        node: String,
        property: &'static str,
    },
    #[error("device tree node {node}: property {property} {reason}")]
    MalformedProperty {
        node: String,
        property: &'static str,
        reason: &'static str,
    },
    #[error("device tree node {node}: reg is {length} bytes, not a non-zero multiple of its {entry_size}-byte entries")]
    MalformedReg {
        node: String,
        length: usize,
        entry_size: usize,
    },
    #[error("device tree node {node}: #address-cells = {address_cells} with #size-cells = {size_cells} cannot describe 64-bit ranges")]
    UnsupportedCells {
        node: String,
        address_cells: u32,
        size_cells: u32,
    },
    #[error("device tree node {node}: property {property} refers to phandle {phandle:#x}, which no node has")]
    UnresolvedPhandle {
        node: String,
        property: &'static str,
        phandle: u32,
    },
    #[error("device tree node {node}: address {address:#x} is not covered by the ranges of its parent buses")]
    UntranslatableAddress { node: String, address: u64 },
    #[error("device tree node {node}: interrupts-extended routes an S-mode interrupt to {target}, which is not a hart's interrupt controller")]
    InterruptTargetNotCpu { node: String, target: String },
    #[error("device tree hart {hartid}: riscv,isa string {isa:?} is malformed")]
    MalformedIsa { hartid: u64, isa: String },
}

type Result<T> = core::result::Result<T, HostTreeError>;

/// Parses the host's flattened device tree.
///
/// The blob may be longer than its header's `totalsize`; the excess is ignored.
pub fn parse_host(dtb: &[u8]) -> Result<HostPlatform> {
    let checked = structure::validate(dtb)?;
    let fdt = Fdt::new(&checked.bytes).map_err(HostTreeError::Parser)?;
    let tree = Tree::new(&fdt)?;

    let memory = parse_memory(&tree)?;
    let mut reserved = parse_reserved_memory(&tree)?;
    reserved.extend(
        checked
            .reservations
            .iter()
            .copied()
            .filter(|region| region.size != 0),
    );
    let (harts, timebase_frequency) = parse_cpus(&tree)?;
    let uart = parse_uart(&tree)?;

    let plic = match tree.first_enabled_compatible(PLIC_COMPATIBLE) {
        Some(index) => Some(parse_plic(&tree, index)?),
        None => None,
    };

    let mut virtio_mmio = Vec::new();
    for index in tree.all_enabled_compatible(VIRTIO_MMIO_COMPATIBLE) {
        let region = tree.first_reg(index)?;
        let irq = tree
            .interrupt(index)?
            .ok_or_else(|| HostTreeError::MissingProperty {
                node: tree.path(index).to_owned(),
                property: "interrupts",
            })?;
        // In address order, each slot inserted in its place (a machine has a handful).
        let at = virtio_mmio.partition_point(|slot: &HostVirtio| slot.base < region.base);
        virtio_mmio.insert(
            at,
            HostVirtio {
                base: region.base,
                size: region.size,
                irq,
            },
        );
    }

    let test_device = match tree.first_enabled_compatible(TEST_DEVICE_COMPATIBLE) {
        Some(index) => Some(tree.first_reg(index)?),
        None => None,
    };
    let model = tree.string(Tree::ROOT, "model")?.map(str::to_owned);

    Ok(HostPlatform {
        memory,
        reserved,
        harts,
        timebase_frequency,
        uart,
        plic,
        virtio_mmio,
        test_device,
        model,
    })
}

/// Lists the extensions named by a `riscv,isa` string such as `rv64imafdch_zicsr_sstc`.
///
/// Single-letter extensions follow the `rv32`/`rv64`/`rv128` prefix, optionally with version
/// suffixes (`i2p1`), and are returned one per letter; `g` is expanded to the extensions it
/// abbreviates so callers can test for `f` or `zicsr` directly. Multi-letter extensions follow,
/// separated by `_`, and are returned whole. Everything is lower-cased. Returns `None` when the
/// string lacks the base prefix or contains anything but letters, digits and `_`.
pub fn parse_isa_string(isa: &str) -> Option<Vec<String>> {
    let lower = isa.to_ascii_lowercase();
    let rest = ["rv32", "rv64", "rv128"]
        .iter()
        .find_map(|base| lower.strip_prefix(base))?;
    let mut parts = rest.split('_');
    let single_letters = parts.next().unwrap_or_default();

    let mut extensions: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !extensions.iter().any(|known| known == name) {
            extensions.push(name.to_owned());
        }
    };

    let bytes = single_letters.as_bytes();
    let mut position = 0;
    while let Some(&letter) = bytes.get(position) {
        // z, s and x begin multi-letter names; some strings omit the `_` before the first one.
        if matches!(letter, b'z' | b's' | b'x') {
            let glued = single_letters.get(position..)?;
            if !glued.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
                return None;
            }
            add(glued);
            break;
        }
        if !letter.is_ascii_lowercase() {
            return None;
        }
        if letter == b'g' {
            for implied in ["i", "m", "a", "f", "d", "zicsr", "zifencei"] {
                add(implied);
            }
        } else {
            add(core::str::from_utf8(core::slice::from_ref(&letter)).ok()?);
        }
        position += 1;
        // Skip a version such as `2` or `2p1`; a `p` only counts as part of it between digits.
        while let Some(&next) = bytes.get(position) {
            let after_digit =
                position > 0 && bytes.get(position - 1).is_some_and(u8::is_ascii_digit);
            let before_digit = bytes.get(position + 1).is_some_and(u8::is_ascii_digit);
            if next.is_ascii_digit() || (next == b'p' && after_digit && before_digit) {
                position += 1;
            } else {
                break;
            }
        }
    }

    for part in parts {
        if part.is_empty() {
            continue;
        }
        if !part.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
            return None;
        }
        add(part);
    }
    Some(extensions)
}

fn parse_memory(tree: &Tree<'_, '_>) -> Result<Vec<Region>> {
    let nodes: Vec<usize> = tree
        .children(Tree::ROOT)
        .filter(|&index| tree.device_type(index) == Some("memory") && tree.is_enabled(index))
        .collect();
    if nodes.is_empty() {
        return Err(HostTreeError::NoMemoryNode);
    }
    let mut memory = Vec::new();
    for index in nodes {
        memory.extend(
            tree.regs(index)?
                .into_iter()
                .filter(|region| region.size != 0),
        );
    }
    if memory.is_empty() {
        return Err(HostTreeError::NoMemoryRegions);
    }
    Ok(memory)
}

fn parse_reserved_memory(tree: &Tree<'_, '_>) -> Result<Vec<Region>> {
    let mut reserved = Vec::new();
    let Some(parent) = tree.child_named(Tree::ROOT, "reserved-memory") else {
        return Ok(reserved);
    };
    // Children with only a `size` are allocated by the OS later; they reserve nothing yet.
    for index in tree
        .children(parent)
        .filter(|&index| tree.is_enabled(index))
    {
        reserved.extend(
            tree.regs(index)?
                .into_iter()
                .filter(|region| region.size != 0),
        );
    }
    Ok(reserved)
}

fn parse_cpus(tree: &Tree<'_, '_>) -> Result<(Vec<HostHart>, u64)> {
    let cpus = tree
        .child_named(Tree::ROOT, "cpus")
        .ok_or(HostTreeError::NoCpusNode)?;
    let cpu_nodes: Vec<usize> = tree
        .children(cpus)
        .filter(|&index| tree.is_cpu(index))
        .collect();
    if cpu_nodes.is_empty() {
        return Err(HostTreeError::NoCpus);
    }

    let mut harts = Vec::with_capacity(cpu_nodes.len());
    for &index in &cpu_nodes {
        let hartid = tree.hartid(index)?;
        let isa = match tree.string(index, "riscv,isa")? {
            Some(isa) => isa,
            None => tree.string(index, "riscv,isa-base")?.ok_or_else(|| {
                HostTreeError::MissingProperty {
                    node: tree.path(index).to_owned(),
                    property: "riscv,isa",
                }
            })?,
        };
        let isa_extensions = match tree.string_list(index, "riscv,isa-extensions")? {
            Some(list) => list.into_iter().map(str::to_owned).collect(),
            None => parse_isa_string(isa).ok_or_else(|| HostTreeError::MalformedIsa {
                hartid,
                isa: isa.to_owned(),
            })?,
        };
        harts.push(HostHart {
            hartid,
            isa: isa.to_owned(),
            isa_extensions,
            mmu_type: tree.string(index, "mmu-type")?.map(str::to_owned),
            enabled: tree.is_enabled(index),
        });
    }

    // The binding puts timebase-frequency in /cpus; older trees repeat it in each cpu node.
    let mut timebase = tree
        .number(cpus, "timebase-frequency")?
        .map(|value| (cpus, value));
    for &index in &cpu_nodes {
        if timebase.is_some() {
            break;
        }
        timebase = tree
            .number(index, "timebase-frequency")?
            .map(|value| (index, value));
    }
    let (timebase_node, timebase_frequency) =
        timebase.ok_or(HostTreeError::MissingTimebaseFrequency)?;
    if timebase_frequency == 0 {
        return Err(HostTreeError::MalformedProperty {
            node: tree.path(timebase_node).to_owned(),
            property: "timebase-frequency",
            reason: "is zero",
        });
    }
    Ok((harts, timebase_frequency))
}

fn parse_uart(tree: &Tree<'_, '_>) -> Result<Option<HostUart>> {
    let usable =
        |index: usize| tree.is_enabled(index) && tree.is_compatible(index, UART_COMPATIBLE);
    let from_stdout_path = match tree.child_named(Tree::ROOT, "chosen") {
        Some(chosen) => {
            let path = match tree.string(chosen, "stdout-path")? {
                Some(path) => Some(path),
                None => tree.string(chosen, "linux,stdout-path")?,
            };
            // Anything after ':' is console options such as "115200n8".
            path.map(|path| path.split(':').next().unwrap_or_default())
                .and_then(|path| tree.resolve(path))
                .filter(|&index| usable(index))
        }
        None => None,
    };
    let Some(index) = from_stdout_path.or_else(|| tree.all().find(|&index| usable(index))) else {
        return Ok(None);
    };

    let region = tree.first_reg(index)?;
    let clock_frequency = match tree.number(index, "clock-frequency")? {
        Some(frequency) => {
            Some(
                u32::try_from(frequency).map_err(|_| HostTreeError::MalformedProperty {
                    node: tree.path(index).to_owned(),
                    property: "clock-frequency",
                    reason: "does not fit in 32 bits",
                })?,
            )
        }
        None => None,
    };
    Ok(Some(HostUart {
        base: region.base,
        size: region.size,
        irq: tree.interrupt(index)?,
        clock_frequency,
        reg_shift: tree.cell(index, "reg-shift")?.unwrap_or(0),
    }))
}

fn parse_plic(tree: &Tree<'_, '_>, index: usize) -> Result<HostPlic> {
    let node = || tree.path(index).to_owned();
    let region = tree.first_reg(index)?;
    let ndev = tree
        .cell(index, "riscv,ndev")?
        .ok_or_else(|| HostTreeError::MissingProperty {
            node: node(),
            property: "riscv,ndev",
        })?;
    let cells = tree.cells(index, "interrupts-extended")?.ok_or_else(|| {
        HostTreeError::MissingProperty {
            node: node(),
            property: "interrupts-extended",
        }
    })?;

    // Each entry is <phandle specifier...>, the specifier as long as the target's
    // #interrupt-cells; entry k describes context k.
    let mut s_contexts = Vec::new();
    let mut position = 0;
    let mut context: u32 = 0;
    while let Some(&phandle) = cells.get(position) {
        let target = tree
            .by_phandle(phandle)
            .ok_or_else(|| HostTreeError::UnresolvedPhandle {
                node: node(),
                property: "interrupts-extended",
                phandle,
            })?;
        let specifier_cells = tree.cell(target, "#interrupt-cells")?.ok_or_else(|| {
            HostTreeError::MissingProperty {
                node: tree.path(target).to_owned(),
                property: "#interrupt-cells",
            }
        })?;
        let specifier_cells = usize::try_from(specifier_cells).unwrap_or(usize::MAX);
        let start = position + 1;
        let specifier = start
            .checked_add(specifier_cells)
            .and_then(|end| cells.get(start..end))
            .ok_or_else(|| HostTreeError::MalformedProperty {
                node: node(),
                property: "interrupts-extended",
                reason: "ends inside an interrupt specifier",
            })?;
        if specifier.first() == Some(&IRQ_S_EXT) {
            let hart = tree
                .parent(target)
                .filter(|&parent| tree.is_cpu(parent))
                .ok_or_else(|| HostTreeError::InterruptTargetNotCpu {
                    node: node(),
                    target: tree.path(target).to_owned(),
                })?;
            s_contexts.push((tree.hartid(hart)?, context));
        }
        position = start + specifier.len();
        // Cannot overflow: there are fewer entries than cells, and cells came from a 32-bit length.
        context = context.saturating_add(1);
    }
    Ok(HostPlic {
        base: region.base,
        size: region.size,
        ndev,
        s_contexts,
    })
}

/// One node of the flattened tree with the context the `fdt` crate does not keep.
struct TreeNode<'b, 'a> {
    node: FdtNode<'b, 'a>,
    path: String,
    parent: Option<usize>,
}

/// All nodes in document order, addressed by index, with phandles resolved.
struct Tree<'b, 'a> {
    nodes: Vec<TreeNode<'b, 'a>>,
    /// `(phandle, node)` pairs, the first node with each phandle; a tree has a few dozen, so a vector is enough.
    phandles: Vec<(u32, usize)>,
}

impl<'b, 'a> Tree<'b, 'a> {
    const ROOT: usize = 0;

    fn new(fdt: &'b Fdt<'a>) -> Result<Self> {
        let root = fdt.find_node("/").ok_or(StructureError::MissingRootNode)?;
        let mut tree = Tree {
            nodes: Vec::new(),
            phandles: Vec::new(),
        };
        tree.nodes.push(TreeNode {
            node: root,
            path: String::from("/"),
            parent: None,
        });
        // Recursion depth is bounded by structure::MAX_DEPTH.
        tree.add_children(Self::ROOT);
        for index in 0..tree.nodes.len() {
            // A phandle of the wrong size is treated as absent; references to it then fail to resolve.
            let phandle = ["phandle", "linux,phandle"].iter().find_map(|name| {
                tree.raw(index, name)
                    .and_then(|value| be_u32(value, 0).filter(|_| value.len() == 4))
            });
            if let Some(phandle) = phandle {
                if !tree.phandles.iter().any(|&(known, _)| known == phandle) {
                    tree.phandles.push((phandle, index));
                }
            }
        }
        Ok(tree)
    }

    fn add_children(&mut self, parent: usize) {
        let node = self.nodes[parent].node;
        for child in node.children() {
            let path = if parent == Self::ROOT {
                alloc::format!("/{}", child.name)
            } else {
                alloc::format!("{}/{}", self.nodes[parent].path, child.name)
            };
            self.nodes.push(TreeNode {
                node: child,
                path,
                parent: Some(parent),
            });
            let index = self.nodes.len() - 1;
            self.add_children(index);
        }
    }

    fn path(&self, index: usize) -> &str {
        &self.nodes[index].path
    }

    fn parent(&self, index: usize) -> Option<usize> {
        self.nodes[index].parent
    }

    fn name(&self, index: usize) -> &'a str {
        self.nodes[index].node.name
    }

    fn all(&self) -> impl Iterator<Item = usize> {
        0..self.nodes.len()
    }

    fn children(&self, parent: usize) -> impl Iterator<Item = usize> + '_ {
        self.all()
            .filter(move |&index| self.nodes[index].parent == Some(parent))
    }

    /// A child by full name, or by name without unit address when `name` has none.
    fn child_named(&self, parent: usize, name: &str) -> Option<usize> {
        self.children(parent)
            .find(|&index| self.name(index) == name)
            .or_else(|| {
                if name.contains('@') {
                    return None;
                }
                self.children(parent)
                    .find(|&index| base_name(self.name(index)) == name)
            })
    }

    /// Resolves an absolute path or an alias from /aliases.
    fn resolve(&self, path_or_alias: &str) -> Option<usize> {
        let path = if path_or_alias.starts_with('/') {
            path_or_alias
        } else {
            let aliases = self.child_named(Self::ROOT, "aliases")?;
            let value = self.raw(aliases, path_or_alias)?;
            core::str::from_utf8(value.strip_suffix(&[0])?).ok()?
        };
        path.split('/')
            .filter(|component| !component.is_empty())
            .try_fold(Self::ROOT, |index, component| {
                self.child_named(index, component)
            })
    }

    fn by_phandle(&self, phandle: u32) -> Option<usize> {
        self.phandles.iter().find(|&&(known, _)| known == phandle).map(|&(_, index)| index)
    }

    fn first_enabled_compatible(&self, compatible: &[&str]) -> Option<usize> {
        self.all_enabled_compatible(compatible).next()
    }

    fn all_enabled_compatible<'s>(
        &'s self,
        compatible: &'s [&str],
    ) -> impl Iterator<Item = usize> + 's {
        self.all()
            .filter(move |&index| self.is_enabled(index) && self.is_compatible(index, compatible))
    }

    fn raw(&self, index: usize, name: &str) -> Option<&'a [u8]> {
        self.nodes[index]
            .node
            .property(name)
            .map(|property| property.value)
    }

    fn malformed(
        &self,
        index: usize,
        property: &'static str,
        reason: &'static str,
    ) -> HostTreeError {
        HostTreeError::MalformedProperty {
            node: self.path(index).to_owned(),
            property,
            reason,
        }
    }

    /// A single NUL-terminated UTF-8 string.
    fn string(&self, index: usize, name: &'static str) -> Result<Option<&'a str>> {
        let Some(value) = self.raw(index, name) else {
            return Ok(None);
        };
        let text = value
            .strip_suffix(&[0])
            .filter(|text| !text.contains(&0))
            .ok_or_else(|| self.malformed(index, name, "is not a single NUL-terminated string"))?;
        core::str::from_utf8(text)
            .map(Some)
            .map_err(|_| self.malformed(index, name, "is not valid UTF-8"))
    }

    /// A list of NUL-terminated UTF-8 strings.
    fn string_list(&self, index: usize, name: &'static str) -> Result<Option<Vec<&'a str>>> {
        let Some(value) = self.raw(index, name) else {
            return Ok(None);
        };
        let body = value
            .strip_suffix(&[0])
            .ok_or_else(|| self.malformed(index, name, "does not end with NUL"))?;
        let text = core::str::from_utf8(body)
            .map_err(|_| self.malformed(index, name, "is not valid UTF-8"))?;
        if text.is_empty() {
            return Ok(Some(Vec::new()));
        }
        Ok(Some(text.split('\0').collect()))
    }

    /// A property made of whole 32-bit cells.
    fn cells(&self, index: usize, name: &'static str) -> Result<Option<Vec<u32>>> {
        let Some(value) = self.raw(index, name) else {
            return Ok(None);
        };
        if value.len() % 4 != 0 {
            return Err(self.malformed(index, name, "is not a whole number of 32-bit cells"));
        }
        Ok(Some(
            value
                .chunks_exact(4)
                .filter_map(|cell| be_u32(cell, 0))
                .collect(),
        ))
    }

    /// A property that is exactly one 32-bit cell.
    fn cell(&self, index: usize, name: &'static str) -> Result<Option<u32>> {
        match self.raw(index, name) {
            None => Ok(None),
            Some(value) if value.len() == 4 => Ok(be_u32(value, 0)),
            Some(_) => Err(self.malformed(index, name, "is not a single 32-bit cell")),
        }
    }

    /// A number given as one or two cells (frequencies may be either).
    fn number(&self, index: usize, name: &'static str) -> Result<Option<u64>> {
        match self.raw(index, name) {
            None => Ok(None),
            Some(value) if value.len() == 4 || value.len() == 8 => Ok(Some(be_cells(value))),
            Some(_) => Err(self.malformed(index, name, "is neither one nor two 32-bit cells")),
        }
    }

    fn device_type(&self, index: usize) -> Option<&'a str> {
        self.string(index, "device_type").ok().flatten()
    }

    /// `status` absent, `okay`, or the older `ok`. An unreadable status counts as disabled.
    fn is_enabled(&self, index: usize) -> bool {
        match self.raw(index, "status") {
            None => true,
            Some(_) => matches!(self.string(index, "status"), Ok(Some("okay" | "ok"))),
        }
    }

    /// Whether any `compatible` entry is in `any_of`. Used only for searching, so entries that
    /// are not valid UTF-8 simply do not match.
    fn is_compatible(&self, index: usize, any_of: &[&str]) -> bool {
        self.raw(index, "compatible").is_some_and(|value| {
            value
                .split(|&byte| byte == 0)
                .filter_map(|entry| core::str::from_utf8(entry).ok())
                .any(|entry| any_of.contains(&entry))
        })
    }

    fn is_cpu(&self, index: usize) -> bool {
        let under_cpus = self.parent(index).is_some_and(|parent| {
            self.parent(parent) == Some(Self::ROOT) && base_name(self.name(parent)) == "cpus"
        });
        under_cpus
            && match self.device_type(index) {
                Some(device_type) => device_type == "cpu",
                None => base_name(self.name(index)) == "cpu",
            }
    }

    fn address_cells(&self, index: usize) -> Result<u32> {
        Ok(self
            .cell(index, "#address-cells")?
            .unwrap_or(DEFAULT_ADDRESS_CELLS))
    }

    fn size_cells(&self, index: usize) -> Result<u32> {
        Ok(self
            .cell(index, "#size-cells")?
            .unwrap_or(DEFAULT_SIZE_CELLS))
    }

    fn hartid(&self, cpu: usize) -> Result<u64> {
        let cpus = self.parent(cpu).unwrap_or(Self::ROOT);
        let address_cells = self.address_cells(cpus)?;
        if !(1..=2).contains(&address_cells) {
            return Err(HostTreeError::UnsupportedCells {
                node: self.path(cpus).to_owned(),
                address_cells,
                size_cells: self.size_cells(cpus)?,
            });
        }
        let value = self
            .raw(cpu, "reg")
            .ok_or_else(|| HostTreeError::MissingProperty {
                node: self.path(cpu).to_owned(),
                property: "reg",
            })?;
        let id_bytes = value
            .get(..address_cells as usize * 4)
            .ok_or_else(|| self.malformed(cpu, "reg", "is shorter than #address-cells of /cpus"))?;
        Ok(be_cells(id_bytes))
    }

    /// The `reg` ranges of a node, translated to CPU physical addresses. Empty when absent.
    fn regs(&self, index: usize) -> Result<Vec<Region>> {
        let Some(value) = self.raw(index, "reg") else {
            return Ok(Vec::new());
        };
        let bus = self.parent(index).unwrap_or(Self::ROOT);
        let (address_cells, size_cells) = (self.address_cells(bus)?, self.size_cells(bus)?);
        if !(1..=2).contains(&address_cells) || size_cells > 2 {
            return Err(HostTreeError::UnsupportedCells {
                node: self.path(bus).to_owned(),
                address_cells,
                size_cells,
            });
        }
        let address_bytes = address_cells as usize * 4;
        let entry_size = address_bytes + size_cells as usize * 4;
        if value.is_empty() || value.len() % entry_size != 0 {
            return Err(HostTreeError::MalformedReg {
                node: self.path(index).to_owned(),
                length: value.len(),
                entry_size,
            });
        }
        value
            .chunks_exact(entry_size)
            .map(|entry| {
                let (address, size) = entry.split_at(address_bytes);
                let base = self.translate(index, be_cells(address))?;
                Ok(Region {
                    base,
                    size: be_cells(size),
                })
            })
            .collect()
    }

    /// The first `reg` range; a device node without one is malformed.
    fn first_reg(&self, index: usize) -> Result<Region> {
        self.regs(index)?
            .first()
            .copied()
            .ok_or_else(|| HostTreeError::MissingProperty {
                node: self.path(index).to_owned(),
                property: "reg",
            })
    }

    /// Maps a bus address of `index`'s parent bus up through every `ranges` to the root.
    fn translate(&self, index: usize, bus_address: u64) -> Result<u64> {
        let untranslatable = || HostTreeError::UntranslatableAddress {
            node: self.path(index).to_owned(),
            address: bus_address,
        };
        let mut address = bus_address;
        let mut bus = self.parent(index);
        while let Some(bus_index) = bus {
            // The root's address space is the CPU's physical address space.
            let Some(upper) = self.parent(bus_index) else {
                break;
            };
            let ranges = self.raw(bus_index, "ranges").ok_or_else(untranslatable)?;
            // An empty `ranges` is an identity mapping.
            if !ranges.is_empty() {
                address = self
                    .translate_one(bus_index, upper, ranges, address)?
                    .ok_or_else(untranslatable)?;
            }
            bus = Some(upper);
        }
        Ok(address)
    }

    /// Applies one bus's `ranges`; `None` when no entry covers `address`.
    fn translate_one(
        &self,
        bus: usize,
        upper: usize,
        ranges: &[u8],
        address: u64,
    ) -> Result<Option<u64>> {
        let child_cells = self.address_cells(bus)?;
        let size_cells = self.size_cells(bus)?;
        let parent_cells = self.address_cells(upper)?;
        if ![child_cells, size_cells, parent_cells]
            .iter()
            .all(|cells| (1..=2).contains(cells))
        {
            return Err(HostTreeError::UnsupportedCells {
                node: self.path(bus).to_owned(),
                address_cells: child_cells,
                size_cells,
            });
        }
        let (child_bytes, parent_bytes) = (child_cells as usize * 4, parent_cells as usize * 4);
        let entry_size = child_bytes + parent_bytes + size_cells as usize * 4;
        if !ranges.len().is_multiple_of(entry_size) {
            return Err(self.malformed(
                bus,
                "ranges",
                "is not a whole number of (child address, parent address, length) entries",
            ));
        }
        for entry in ranges.chunks_exact(entry_size) {
            let (child, rest) = entry.split_at(child_bytes);
            let (parent, length) = rest.split_at(parent_bytes);
            let offset = address.wrapping_sub(be_cells(child));
            if address >= be_cells(child) && offset < be_cells(length) {
                return Ok(be_cells(parent).checked_add(offset));
            }
        }
        Ok(None)
    }

    /// The source number: first cell of `interrupts`, or of the first `interrupts-extended` specifier.
    fn interrupt(&self, index: usize) -> Result<Option<u32>> {
        if let Some(cells) = self.cells(index, "interrupts")? {
            return match cells.first() {
                Some(&irq) => Ok(Some(irq)),
                None => Err(self.malformed(index, "interrupts", "is empty")),
            };
        }
        if let Some(cells) = self.cells(index, "interrupts-extended")? {
            return match cells.get(1) {
                Some(&irq) => Ok(Some(irq)),
                None => {
                    Err(self.malformed(index, "interrupts-extended", "has no interrupt specifier"))
                }
            };
        }
        Ok(None)
    }
}

/// A node name without its `@unit-address`.
fn base_name(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

fn be_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(offset..offset.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

/// Joins big-endian cells into one number; callers pass at most two cells.
fn be_cells(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |value, &byte| (value << 8) | u64::from(byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| String::from(*name)).collect()
    }

    #[test]
    fn isa_string_with_multi_letter_extensions() {
        assert_eq!(
            parse_isa_string("rv64imafdch_zicsr_zifencei_zihintpause_zba_zbb_zbc_zbs_sstc"),
            Some(names(&[
                "i",
                "m",
                "a",
                "f",
                "d",
                "c",
                "h",
                "zicsr",
                "zifencei",
                "zihintpause",
                "zba",
                "zbb",
                "zbc",
                "zbs",
                "sstc"
            ]))
        );
    }

    #[test]
    fn isa_string_expands_g_and_skips_versions() {
        assert_eq!(
            parse_isa_string("RV64GC_Zba"),
            Some(names(&[
                "i", "m", "a", "f", "d", "zicsr", "zifencei", "c", "zba"
            ]))
        );
        assert_eq!(
            parse_isa_string("rv64i2p1m2a2p1c_zicsr2p0"),
            Some(names(&["i", "m", "a", "c", "zicsr2p0"]))
        );
        // `p` right after a letter is the packed-SIMD extension, not a version separator.
        assert_eq!(
            parse_isa_string("rv32imcp"),
            Some(names(&["i", "m", "c", "p"]))
        );
    }

    #[test]
    fn isa_string_with_glued_multi_letter_extension() {
        assert_eq!(
            parse_isa_string("rv64imaczicsr_sstc"),
            Some(names(&["i", "m", "a", "c", "zicsr", "sstc"]))
        );
    }

    #[test]
    fn malformed_isa_strings() {
        assert_eq!(parse_isa_string(""), None);
        assert_eq!(parse_isa_string("imafdc"), None);
        assert_eq!(parse_isa_string("rv64ima-fdc"), None);
        assert_eq!(parse_isa_string("rv64imafdc_zi csr"), None);
        assert_eq!(parse_isa_string("rv64i_\u{e9}"), None);
    }

    #[test]
    fn base_name_strips_unit_address() {
        assert_eq!(base_name("serial@10000000"), "serial");
        assert_eq!(base_name("cpus"), "cpus");
    }
}
