//! Builds the flattened device tree a guest boots with, describing only the hypervisor's virtual hardware.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use vm_fdt::FdtWriter;

use crate::Region;

/// Root `compatible` of every guest tree. Linux on RISC-V does not match on it; it names the
/// platform for tools and for guests that do.
pub const ROOT_COMPATIBLE: &str = "keel,capsule";

/// Highest PLIC interrupt source number (the PLIC specification allows sources 1..=1023).
pub const PLIC_MAX_SOURCES: u32 = 1023;
/// Number of PLIC contexts the register map has room for; each vCPU uses one.
pub const PLIC_MAX_CONTEXTS: u32 = 15872;

/// Phandle of the PLIC node; the hart interrupt controllers follow from
/// [`FIRST_CPU_INTC_PHANDLE`] on, in vCPU order.
const PLIC_PHANDLE: u32 = 1;
const FIRST_CPU_INTC_PHANDLE: u32 = 2;

/// Supervisor external interrupt code: routes a PLIC context to a hart's S-mode.
const IRQ_S_EXT: u32 = 9;

/// The virtual 16550 UART.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestUart {
    pub base: u64,
    pub size: u64,
    /// PLIC source number, 1..=ndev.
    pub irq: u32,
    pub clock_frequency: u32,
}

/// The virtual PLIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPlic {
    pub base: u64,
    pub size: u64,
    /// `riscv,ndev`: number of interrupt sources.
    pub ndev: u32,
}

/// One virtio-mmio transport slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestVirtio {
    pub base: u64,
    pub size: u64,
    /// PLIC source number, 1..=ndev.
    pub irq: u32,
}

/// Everything that varies between guest trees.
#[derive(Debug, Clone, Copy)]
pub struct GuestTreeConfig<'a> {
    /// Root `model`, for example `"keel,capsule"`.
    pub model: &'a str,
    /// Guest RAM.
    pub memory: Region,
    pub vcpus: u32,
    /// `riscv,isa`, for example `"rv64imafdc_zicsr_zifencei_sstc"`.
    pub isa: &'a str,
    /// `riscv,isa-base`, for example `"rv64i"`.
    pub isa_base: &'a str,
    /// `riscv,isa-extensions` (Linux 6.x reads this before `riscv,isa`); must not be empty.
    pub isa_extensions: &'a [&'a str],
    /// `mmu-type`, for example `"riscv,sv39"`.
    pub mmu_type: &'a str,
    pub timebase_frequency: u32,
    pub bootargs: &'a str,
    /// `(linux,initrd-start, linux,initrd-end)`: guest-physical, end exclusive.
    pub initrd: Option<(u64, u64)>,
    /// `rng-seed`: random bytes for the guest's kernel to seed its random-number generator with at boot, as
    /// QEMU and firmware give a kernel booted directly. Left out when `None` or empty.
    pub rng_seed: Option<&'a [u8]>,
    pub uart: GuestUart,
    pub plic: GuestPlic,
    pub virtio_mmio: &'a [GuestVirtio],
}

/// Why a guest tree could not be built.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestTreeError {
    #[error("guest needs at least one vCPU")]
    NoVcpus,
    #[error("{vcpus} vCPUs exceed the {PLIC_MAX_CONTEXTS} PLIC contexts available")]
    TooManyVcpus { vcpus: u32 },
    #[error("guest memory region at {base:#x} is empty")]
    EmptyMemory { base: u64 },
    #[error(
        "{device} region at {base:#x} with size {size:#x} is empty or wraps the address space"
    )]
    InvalidRegion {
        device: &'static str,
        base: u64,
        size: u64,
    },
    #[error("{first} region at {first_base:#x} overlaps {second} region at {second_base:#x}")]
    OverlappingRegions {
        first: &'static str,
        first_base: u64,
        second: &'static str,
        second_base: u64,
    },
    #[error("PLIC riscv,ndev {ndev} is outside 1..={PLIC_MAX_SOURCES}")]
    InvalidSourceCount { ndev: u32 },
    #[error("{device} interrupt {irq} is outside the PLIC's sources 1..={ndev}")]
    IrqOutOfRange {
        device: &'static str,
        irq: u32,
        ndev: u32,
    },
    #[error("interrupt {irq} is assigned to more than one device")]
    IrqConflict { irq: u32 },
    #[error("timebase-frequency must be non-zero")]
    ZeroTimebaseFrequency,
    #[error("property {property} must not be empty")]
    EmptyProperty { property: &'static str },
    #[error("property {property} contains a NUL character")]
    EmbeddedNul { property: &'static str },
    #[error("initrd {start:#x}..{end:#x} is empty, reversed, or outside guest memory")]
    InvalidInitrd { start: u64, end: u64 },
    #[error("device tree writer failed: {0}")]
    Writer(vm_fdt::Error),
}

impl From<vm_fdt::Error> for GuestTreeError {
    fn from(error: vm_fdt::Error) -> Self {
        GuestTreeError::Writer(error)
    }
}

type Result<T> = core::result::Result<T, GuestTreeError>;

/// Checks `config` and writes the guest's device tree blob.
///
/// Layout: `/cpus/cpu@N` with a `riscv,cpu-intc` child each, `/memory@<base>`, `/chosen`, and
/// `/soc` holding the PLIC, the UART and the virtio-mmio slots. The PLIC's
/// `interrupts-extended` lists `<&cpuN_intc 9>` in vCPU order, so PLIC context N is vCPU N's
/// S-mode context.
pub fn build_guest_tree(config: &GuestTreeConfig<'_>) -> Result<Vec<u8>> {
    check(config)?;

    let mut writer = FdtWriter::new()?;
    let root = writer.begin_node("")?;
    writer.property_u32("#address-cells", 2)?;
    writer.property_u32("#size-cells", 2)?;
    writer.property_string("compatible", ROOT_COMPATIBLE)?;
    writer.property_string("model", config.model)?;

    write_chosen(&mut writer, config)?;
    write_cpus(&mut writer, config)?;

    let memory = writer.begin_node(&format!("memory@{:x}", config.memory.base))?;
    writer.property_string("device_type", "memory")?;
    writer.property_array_u64("reg", &[config.memory.base, config.memory.size])?;
    writer.end_node(memory)?;

    write_soc(&mut writer, config)?;

    writer.end_node(root)?;
    Ok(writer.finish()?)
}

/// Path of the UART node, which `/chosen/stdout-path` points at.
pub fn uart_path(uart: &GuestUart) -> String {
    format!("/soc/serial@{:x}", uart.base)
}

fn check(config: &GuestTreeConfig<'_>) -> Result<()> {
    if config.vcpus == 0 {
        return Err(GuestTreeError::NoVcpus);
    }
    if config.vcpus > PLIC_MAX_CONTEXTS {
        return Err(GuestTreeError::TooManyVcpus {
            vcpus: config.vcpus,
        });
    }
    if config.memory.size == 0 {
        return Err(GuestTreeError::EmptyMemory {
            base: config.memory.base,
        });
    }
    if config.timebase_frequency == 0 {
        return Err(GuestTreeError::ZeroTimebaseFrequency);
    }
    let ndev = config.plic.ndev;
    if ndev == 0 || ndev > PLIC_MAX_SOURCES {
        return Err(GuestTreeError::InvalidSourceCount { ndev });
    }

    let texts: [(&'static str, &str, bool); 5] = [
        ("model", config.model, false),
        ("riscv,isa", config.isa, true),
        ("riscv,isa-base", config.isa_base, true),
        ("mmu-type", config.mmu_type, true),
        ("bootargs", config.bootargs, false),
    ];
    for (property, text, required) in texts {
        if required && text.is_empty() {
            return Err(GuestTreeError::EmptyProperty { property });
        }
        if text.contains('\0') {
            return Err(GuestTreeError::EmbeddedNul { property });
        }
    }
    // An empty list would be written as a zero-length property: not a string list at all, and
    // Linux, finding the property, would not fall back to `riscv,isa` and see no extensions.
    if config.isa_extensions.is_empty() {
        return Err(GuestTreeError::EmptyProperty {
            property: "riscv,isa-extensions",
        });
    }
    for extension in config.isa_extensions {
        // An empty entry would read as a list terminator to some parsers.
        if extension.is_empty() {
            return Err(GuestTreeError::EmptyProperty {
                property: "riscv,isa-extensions",
            });
        }
        if extension.contains('\0') {
            return Err(GuestTreeError::EmbeddedNul {
                property: "riscv,isa-extensions",
            });
        }
    }

    let mut regions: Vec<(&'static str, Region)> = Vec::with_capacity(3 + config.virtio_mmio.len());
    regions.push(("memory", config.memory));
    regions.push((
        "PLIC",
        Region {
            base: config.plic.base,
            size: config.plic.size,
        },
    ));
    regions.push((
        "UART",
        Region {
            base: config.uart.base,
            size: config.uart.size,
        },
    ));
    regions.extend(config.virtio_mmio.iter().map(|slot| {
        (
            "virtio-mmio",
            Region {
                base: slot.base,
                size: slot.size,
            },
        )
    }));
    for (index, &(device, region)) in regions.iter().enumerate() {
        if region.size == 0 || region.end().is_none() {
            return Err(GuestTreeError::InvalidRegion {
                device,
                base: region.base,
                size: region.size,
            });
        }
        for &(other, other_region) in &regions[..index] {
            if region.overlaps(&other_region) {
                return Err(GuestTreeError::OverlappingRegions {
                    first: other,
                    first_base: other_region.base,
                    second: device,
                    second_base: region.base,
                });
            }
        }
    }

    let mut irqs: Vec<(&'static str, u32)> = Vec::with_capacity(1 + config.virtio_mmio.len());
    irqs.push(("UART", config.uart.irq));
    irqs.extend(
        config
            .virtio_mmio
            .iter()
            .map(|slot| ("virtio-mmio", slot.irq)),
    );
    for (index, &(device, irq)) in irqs.iter().enumerate() {
        // Source 0 means "no interrupt" in the PLIC.
        if irq == 0 || irq > ndev {
            return Err(GuestTreeError::IrqOutOfRange { device, irq, ndev });
        }
        if irqs[..index].iter().any(|&(_, earlier)| earlier == irq) {
            return Err(GuestTreeError::IrqConflict { irq });
        }
    }

    if let Some((start, end)) = config.initrd {
        let inside_memory = config
            .memory
            .end()
            .is_some_and(|memory_end| start >= config.memory.base && end <= memory_end);
        if start >= end || !inside_memory {
            return Err(GuestTreeError::InvalidInitrd { start, end });
        }
    }
    Ok(())
}

fn write_chosen(writer: &mut FdtWriter, config: &GuestTreeConfig<'_>) -> Result<()> {
    let chosen = writer.begin_node("chosen")?;
    writer.property_string("bootargs", config.bootargs)?;
    writer.property_string("stdout-path", &uart_path(&config.uart))?;
    if let Some((start, end)) = config.initrd {
        writer.property_u64("linux,initrd-start", start)?;
        writer.property_u64("linux,initrd-end", end)?;
    }
    if let Some(seed) = config.rng_seed.filter(|seed| !seed.is_empty()) {
        writer.property("rng-seed", seed)?;
    }
    writer.end_node(chosen)?;
    Ok(())
}

fn write_cpus(writer: &mut FdtWriter, config: &GuestTreeConfig<'_>) -> Result<()> {
    let cpus = writer.begin_node("cpus")?;
    writer.property_u32("#address-cells", 1)?;
    writer.property_u32("#size-cells", 0)?;
    writer.property_u32("timebase-frequency", config.timebase_frequency)?;
    let extensions: Vec<String> = config
        .isa_extensions
        .iter()
        .map(|name| name.to_string())
        .collect();
    for vcpu in 0..config.vcpus {
        let cpu = writer.begin_node(&format!("cpu@{vcpu:x}"))?;
        writer.property_string("device_type", "cpu")?;
        writer.property_u32("reg", vcpu)?;
        writer.property_string("compatible", "riscv")?;
        writer.property_string("status", "okay")?;
        writer.property_string("riscv,isa", config.isa)?;
        writer.property_string("riscv,isa-base", config.isa_base)?;
        writer.property_string_list("riscv,isa-extensions", extensions.clone())?;
        writer.property_string("mmu-type", config.mmu_type)?;

        let intc = writer.begin_node("interrupt-controller")?;
        writer.property_string("compatible", "riscv,cpu-intc")?;
        // Interrupt providers declare #address-cells so interrupt-map parsers need not guess.
        writer.property_u32("#address-cells", 0)?;
        writer.property_u32("#interrupt-cells", 1)?;
        writer.property_null("interrupt-controller")?;
        writer.property_phandle(cpu_intc_phandle(vcpu))?;
        writer.end_node(intc)?;

        writer.end_node(cpu)?;
    }
    writer.end_node(cpus)?;
    Ok(())
}

fn write_soc(writer: &mut FdtWriter, config: &GuestTreeConfig<'_>) -> Result<()> {
    let soc = writer.begin_node("soc")?;
    writer.property_string("compatible", "simple-bus")?;
    writer.property_u32("#address-cells", 2)?;
    writer.property_u32("#size-cells", 2)?;
    // Empty ranges: bus addresses are guest-physical addresses.
    writer.property_null("ranges")?;

    let plic = config.plic;
    let node = writer.begin_node(&format!("interrupt-controller@{:x}", plic.base))?;
    writer.property_string_list(
        "compatible",
        ["sifive,plic-1.0.0", "riscv,plic0"]
            .map(String::from)
            .to_vec(),
    )?;
    writer.property_array_u64("reg", &[plic.base, plic.size])?;
    writer.property_u32("#address-cells", 0)?;
    writer.property_u32("#interrupt-cells", 1)?;
    writer.property_null("interrupt-controller")?;
    writer.property_u32("riscv,ndev", plic.ndev)?;
    let routing: Vec<u32> = (0..config.vcpus)
        .flat_map(|vcpu| [cpu_intc_phandle(vcpu), IRQ_S_EXT])
        .collect();
    writer.property_array_u32("interrupts-extended", &routing)?;
    writer.property_phandle(PLIC_PHANDLE)?;
    writer.end_node(node)?;

    let uart = config.uart;
    let node = writer.begin_node(&format!("serial@{:x}", uart.base))?;
    writer.property_string("compatible", "ns16550a")?;
    writer.property_array_u64("reg", &[uart.base, uart.size])?;
    writer.property_u32("clock-frequency", uart.clock_frequency)?;
    writer.property_u32("interrupt-parent", PLIC_PHANDLE)?;
    writer.property_u32("interrupts", uart.irq)?;
    writer.end_node(node)?;

    for slot in config.virtio_mmio {
        let node = writer.begin_node(&format!("virtio_mmio@{:x}", slot.base))?;
        writer.property_string("compatible", "virtio,mmio")?;
        writer.property_array_u64("reg", &[slot.base, slot.size])?;
        writer.property_u32("interrupt-parent", PLIC_PHANDLE)?;
        writer.property_u32("interrupts", slot.irq)?;
        writer.end_node(node)?;
    }

    writer.end_node(soc)?;
    Ok(())
}

/// `check` caps `vcpu` at [`PLIC_MAX_CONTEXTS`], so this cannot overflow.
fn cpu_intc_phandle(vcpu: u32) -> u32 {
    FIRST_CPU_INTC_PHANDLE + vcpu
}
