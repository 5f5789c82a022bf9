//! What Keel learned about the machine at boot, and the guest-visible platform it derives from it.

use alloc::{format, string::String, vec::Vec};

use keel_devicetree::{GuestPlic, GuestTreeConfig, GuestUart, HostPlatform, Region};

use crate::capsule::{self, Capsule};

/// Extensions a guest may be told about: ones that need no hypervisor help, plus `sstc` when Keel can hand the
/// guest its own timer compare register.
const GUEST_SAFE_EXTENSIONS: &[&str] = &[
    "i", "m", "a", "f", "d", "c", "zicsr", "zifencei", "zihintpause", "zicntr", "zba", "zbb", "zbc", "zbs", "zicond",
];

/// The widest paging mode a capsule is offered (`satp.MODE`), whatever the harts have. Capsules here are far
/// smaller than Sv39's 256 GiB of virtual space, and every level a guest's page tables do not have saves a
/// guest-physical walk on every TLB refill: under the H extension each level of the guest's walk is itself
/// translated through the G-stage tables. A capsule's vCPUs learn this from its device tree (`mmu-type`) and from
/// `satp` itself, which Keel answers while they probe it ([`crate::run`]).
pub const GUEST_PAGING: u64 = keel_insn::translation::satp_mode::SV39;
/// [`GUEST_PAGING`] as the device tree spells it.
const GUEST_MMU_TYPE: &str = match keel_insn::translation::mmu_type(GUEST_PAGING) {
    Some(name) => name,
    None => panic!("GUEST_PAGING is not a paging mode"),
};

/// The machine as Keel drives it.
pub struct Platform {
    pub host: HostPlatform,
    /// Harts running Keel, boot hart first.
    pub online_harts: Vec<usize>,
    /// Guests can use Sstc (`henvcfg.STCE` sticks).
    pub sstc: bool,
    /// The guest's ISA: the host's, minus what Keel does not virtualise.
    pub guest_isa_extensions: Vec<String>,
    /// Width of `hgatp.VMID` in bits.
    pub vmid_bits: u32,
}

impl Platform {
    /// Works out the guest ISA from the boot hart's.
    pub fn guest_isa(host: &HostPlatform, boot_hart: usize, sstc: bool) -> Vec<String> {
        let hart = host.harts.iter().find(|h| h.hartid as usize == boot_hart).or(host.harts.first());
        let mut extensions: Vec<String> = Vec::new();
        if let Some(hart) = hart {
            for ext in GUEST_SAFE_EXTENSIONS {
                if hart.isa_extensions.iter().any(|e| e == ext) {
                    extensions.push(String::from(*ext));
                }
            }
        }
        if sstc {
            extensions.push(String::from("sstc"));
        }
        extensions
    }

    /// The `riscv,isa` string for the guest, e.g. `rv64imafdc_zicsr_zifencei_sstc`.
    pub fn guest_isa_string(&self) -> String {
        let mut isa = String::from("rv64");
        for ext in self.guest_isa_extensions.iter().filter(|e| e.len() == 1) {
            isa.push_str(ext);
        }
        for ext in self.guest_isa_extensions.iter().filter(|e| e.len() > 1) {
            isa.push('_');
            isa.push_str(ext);
        }
        isa
    }
}

/// Bytes of `/chosen/rng-seed` a capsule's tree gets (QEMU gives a kernel booted directly 32).
const RNG_SEED_BYTES: usize = 64;

/// Builds the device tree a capsule sees.
pub fn guest_tree(platform: &Platform, capsule: &Capsule, initrd: Option<(u64, u64)>) -> Result<Vec<u8>, String> {
    let isa = platform.guest_isa_string();
    let virtio = crate::vdev::tree_nodes(&capsule.devices.lock().virtio);
    let extensions: Vec<&str> = platform.guest_isa_extensions.iter().map(String::as_str).collect();
    // Fresh bytes from the machine's entropy device for every boot of every capsule, so the guest's kernel has a
    // seeded random-number generator from its first instruction on (without a device, the guest waits for one).
    let mut seed = [0u8; RNG_SEED_BYTES];
    let seeded = crate::hostdev::fill_entropy(&mut seed);
    let config = GuestTreeConfig {
        model: "Keel capsule",
        memory: Region { base: capsule.memory.base(), size: capsule.memory.size() },
        vcpus: capsule.vcpus.len() as u32,
        isa: &isa,
        isa_base: "rv64i",
        isa_extensions: &extensions,
        mmu_type: GUEST_MMU_TYPE,
        timebase_frequency: platform.host.timebase_frequency as u32,
        bootargs: capsule.definition.cmdline,
        initrd,
        rng_seed: seeded.then_some(&seed[..]),
        uart: GuestUart {
            base: capsule::UART_BASE,
            size: capsule::UART_SIZE,
            irq: capsule::UART_IRQ,
            clock_frequency: capsule::UART_CLOCK,
        },
        plic: GuestPlic { base: capsule::PLIC_BASE, size: capsule::PLIC_SIZE, ndev: capsule::PLIC_SOURCES - 1 },
        virtio_mmio: &virtio,
    };
    keel_devicetree::build_guest_tree(&config).map_err(|error| format!("{error}"))
}
