//! Fuzzes the guest device-tree builder with arbitrary configurations; every tree it writes must
//! read back through the host parser with the same memory, harts, timer and devices.
#![no_main]

use arbitrary::Arbitrary;
use keel_devicetree::{
    build_guest_tree, parse_host, GuestPlic, GuestTreeConfig, GuestUart, GuestVirtio, Region,
};
use libfuzzer_sys::fuzz_target;

/// Extensions to pick from: real names, so the `riscv,isa` string built from them is well formed.
const EXTENSIONS: [&str; 10] = [
    "i",
    "m",
    "a",
    "f",
    "d",
    "c",
    "zicsr",
    "zifencei",
    "sstc",
    "zihintpause",
];

#[derive(Debug, Arbitrary)]
struct Input {
    model: String,
    bootargs: String,
    mmu_type: String,
    extension_mask: u16,
    memory: (u64, u64),
    vcpus: u8,
    timebase_frequency: u32,
    initrd: Option<(u64, u64)>,
    uart: (u64, u64, u32, u32),
    plic: (u64, u64, u32),
    virtio: Vec<(u64, u64, u32)>,
    /// Keep addresses page-sized and apart so valid layouts are common.
    tidy: bool,
}

fuzz_target!(|input: Input| {
    let extensions: Vec<&str> = EXTENSIONS
        .iter()
        .enumerate()
        .filter(|(bit, _)| input.extension_mask & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    let mut isa = String::from("rv64");
    for name in &extensions {
        if name.len() == 1 {
            isa.push_str(name);
        }
    }
    for name in extensions.iter().filter(|name| name.len() > 1) {
        isa.push('_');
        isa.push_str(name);
    }

    let page = |value: u64, base: u64| {
        if input.tidy {
            base + (value % 16) * 0x1000
        } else {
            value
        }
    };
    let size = |value: u64| {
        if input.tidy {
            0x1000 * (1 + value % 4)
        } else {
            value
        }
    };
    let virtio: Vec<GuestVirtio> = input
        .virtio
        .iter()
        .take(8)
        .enumerate()
        .map(|(index, &(base, length, irq))| GuestVirtio {
            base: page(base, 0x1001_0000 + index as u64 * 0x1_0000),
            size: size(length),
            irq,
        })
        .collect();
    let config = GuestTreeConfig {
        model: &input.model,
        memory: Region {
            base: if input.tidy {
                0x8000_0000
            } else {
                input.memory.0
            },
            size: if input.tidy {
                (1 + input.memory.1 % 64) << 21
            } else {
                input.memory.1
            },
        },
        vcpus: u32::from(input.vcpus % 20),
        isa: &isa,
        isa_base: "rv64i",
        isa_extensions: &extensions,
        mmu_type: &input.mmu_type,
        timebase_frequency: input.timebase_frequency,
        bootargs: &input.bootargs,
        initrd: input.initrd,
        rng_seed: Some(input.model.as_bytes()),
        uart: GuestUart {
            base: page(input.uart.0, 0x1000_0000),
            size: size(input.uart.1),
            irq: input.uart.2,
            clock_frequency: input.uart.3,
        },
        plic: GuestPlic {
            base: page(input.plic.0, 0x0c00_0000),
            size: if input.tidy { 0x400_0000 } else { input.plic.1 },
            ndev: input.plic.2,
        },
        virtio_mmio: &virtio,
    };

    let Ok(blob) = build_guest_tree(&config) else {
        return;
    };
    let platform = parse_host(&blob)
        .unwrap_or_else(|error| panic!("the host parser refuses a guest tree: {error}"));
    assert_eq!(platform.memory, [config.memory]);
    assert_eq!(
        platform.timebase_frequency,
        u64::from(config.timebase_frequency)
    );
    assert_eq!(platform.harts.len(), config.vcpus as usize);
    for (index, hart) in platform.harts.iter().enumerate() {
        assert_eq!(hart.hartid, index as u64);
        assert!(hart.enabled);
        assert_eq!(hart.isa, isa);
        assert_eq!(hart.isa_extensions, extensions);
        assert_eq!(hart.mmu_type.as_deref(), Some(config.mmu_type));
    }
    let uart = platform.uart.expect("the guest tree's UART is found");
    assert_eq!(
        (uart.base, uart.size, uart.irq),
        (config.uart.base, config.uart.size, Some(config.uart.irq))
    );
    let plic = platform.plic.expect("the guest tree's PLIC is found");
    assert_eq!(
        (plic.base, plic.size, plic.ndev),
        (config.plic.base, config.plic.size, config.plic.ndev)
    );
    let contexts: Vec<(u64, u32)> = (0..config.vcpus)
        .map(|vcpu| (u64::from(vcpu), vcpu))
        .collect();
    assert_eq!(plic.s_contexts, contexts);
    let mut expected: Vec<(u64, u64, u32)> = virtio
        .iter()
        .map(|slot| (slot.base, slot.size, slot.irq))
        .collect();
    expected.sort_unstable();
    let found: Vec<(u64, u64, u32)> = platform
        .virtio_mmio
        .iter()
        .map(|slot| (slot.base, slot.size, slot.irq))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(platform.model.as_deref(), Some(config.model));
});
