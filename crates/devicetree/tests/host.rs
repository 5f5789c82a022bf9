//! Host tree parsing against QEMU-dumped and hand-written trees, and against broken blobs.

use keel_devicetree::{parse_host, HostTreeError, HostUart, HostVirtio, Region, StructureError};
use vm_fdt::FdtWriter;

const QEMU_SMP4: &[u8] = include_bytes!("fixtures/qemu-virt-smp4-1g.dtb");
const QEMU_SMP1: &[u8] = include_bytes!("fixtures/qemu-virt-smp1-256m.dtb");
const QEMU_AIA: &[u8] = include_bytes!("fixtures/qemu-virt-aia.dtb");
const FIRMWARE_FIXUPS: &[u8] = include_bytes!("fixtures/firmware-fixups.dtb");

const QEMU_ISA: &str = "rv64imafdch_zicsr_zifencei_zihintpause_zba_zbb_zbc_zbs_sstc";

fn qemu_virtio_slots() -> Vec<HostVirtio> {
    (1..=8u32)
        .map(|slot| HostVirtio {
            base: 0x1000_0000 + u64::from(slot) * 0x1000,
            size: 0x1000,
            irq: slot,
        })
        .collect()
}

#[test]
fn qemu_virt_four_harts() {
    let host = parse_host(QEMU_SMP4).expect("QEMU tree parses");

    assert_eq!(host.model.as_deref(), Some("riscv-virtio,qemu"));
    assert_eq!(
        host.memory,
        [Region {
            base: 0x8000_0000,
            size: 0x4000_0000
        }]
    );
    assert!(host.reserved.is_empty());
    assert_eq!(host.timebase_frequency, 10_000_000);

    assert_eq!(host.harts.len(), 4);
    for (index, hart) in host.harts.iter().enumerate() {
        assert_eq!(hart.hartid, index as u64);
        assert!(hart.enabled);
        assert_eq!(hart.isa, QEMU_ISA);
        assert_eq!(hart.mmu_type.as_deref(), Some("riscv,sv48"));
        assert_eq!(
            hart.isa_extensions,
            [
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
            ]
        );
    }

    assert_eq!(
        host.uart,
        Some(HostUart {
            base: 0x1000_0000,
            size: 0x100,
            irq: Some(10),
            clock_frequency: Some(3_686_400),
            reg_shift: 0,
        })
    );

    let plic = host.plic.expect("QEMU virt has a PLIC");
    assert_eq!((plic.base, plic.size), (0x0c00_0000, 0x60_0000));
    // QEMU 7.2 describes 96 sources (VIRT_IRQCHIP_NUM_SOURCES).
    assert_eq!(plic.ndev, 0x60);
    assert_eq!(plic.s_contexts, [(0, 1), (1, 3), (2, 5), (3, 7)]);

    assert_eq!(host.virtio_mmio, qemu_virtio_slots());
    assert_eq!(
        host.test_device,
        Some(Region {
            base: 0x10_0000,
            size: 0x1000
        })
    );
}

#[test]
fn qemu_virt_single_hart() {
    let host = parse_host(QEMU_SMP1).expect("QEMU tree parses");
    assert_eq!(
        host.memory,
        [Region {
            base: 0x8000_0000,
            size: 0x1000_0000
        }]
    );
    assert_eq!(host.harts.len(), 1);
    assert_eq!(host.harts[0].hartid, 0);
    assert_eq!(host.timebase_frequency, 10_000_000);
    let plic = host.plic.expect("QEMU virt has a PLIC");
    assert_eq!(plic.s_contexts, [(0, 1)]);
    assert_eq!(
        host.uart.map(|uart| (uart.base, uart.irq)),
        Some((0x1000_0000, Some(10)))
    );
    assert_eq!(host.virtio_mmio.len(), 8);
}

#[test]
fn qemu_virt_with_aia_has_no_plic() {
    let host = parse_host(QEMU_AIA).expect("AIA tree parses");
    assert_eq!(host.plic, None);
    assert_eq!(host.harts.len(), 4);
    assert!(host.harts[0]
        .isa_extensions
        .iter()
        .any(|name| name == "smaia"));
    assert!(host.harts[0]
        .isa_extensions
        .iter()
        .any(|name| name == "ssaia"));
    // APLIC specifiers are <source flags>; the source is the first cell.
    assert_eq!(host.uart.and_then(|uart| uart.irq), Some(10));
    assert_eq!(host.virtio_mmio, qemu_virtio_slots());
    assert_eq!(
        host.test_device,
        Some(Region {
            base: 0x10_0000,
            size: 0x1000
        })
    );
}

#[test]
fn firmware_adjusted_tree() {
    let host = parse_host(FIRMWARE_FIXUPS).expect("hand-written tree parses");
    assert_eq!(host.model.as_deref(), Some("Keel test board"));
    assert_eq!(
        host.memory,
        [
            Region {
                base: 0x8000_0000,
                size: 0x2000_0000
            },
            Region {
                base: 0x1_0000_0000,
                size: 0x1000_0000
            },
        ]
    );
    // /reserved-memory's static child, then the /memreserve/ entry; the size-only child is skipped.
    assert_eq!(
        host.reserved,
        [
            Region {
                base: 0x8000_0000,
                size: 0x4_0000
            },
            Region {
                base: 0x9ff0_0000,
                size: 0x10_0000
            },
        ]
    );
    // Only given per cpu node here.
    assert_eq!(host.timebase_frequency, 1_000_000);

    assert_eq!(host.harts.len(), 2);
    let monitor = &host.harts[0];
    assert_eq!(monitor.hartid, 0);
    assert!(!monitor.enabled);
    assert_eq!(monitor.mmu_type, None);
    assert_eq!(monitor.isa_extensions, ["i", "m", "a", "c"]);
    let application = &host.harts[1];
    assert_eq!(application.hartid, 1);
    assert!(application.enabled);
    assert_eq!(application.isa, "rv64gc_zba_sstc");
    // The riscv,isa-extensions list wins over the string.
    assert_eq!(
        application.isa_extensions,
        ["i", "m", "a", "f", "d", "c", "zicsr", "zifencei", "zba", "sstc"]
    );

    // stdout-path names an alias with options; the UART sits behind a bus mapping 0 -> 0x20000000.
    assert_eq!(
        host.uart,
        Some(HostUart {
            base: 0x2000_1000,
            size: 0x100,
            irq: Some(7),
            clock_frequency: Some(24_000_000),
            reg_shift: 2,
        })
    );

    let plic = host.plic.expect("tree has a PLIC");
    assert_eq!(plic.ndev, 53);
    // Context 0 is hart 0's M-mode, 1 hart 1's M-mode, 2 hart 1's S-mode.
    assert_eq!(plic.s_contexts, [(1, 2)]);

    // The disabled slot is left out.
    assert_eq!(
        host.virtio_mmio,
        [HostVirtio {
            base: 0x1000_1000,
            size: 0x1000,
            irq: 1
        }]
    );
    assert_eq!(host.test_device, None);
}

#[test]
fn bytes_after_total_size_are_ignored() {
    let mut padded = QEMU_SMP4.to_vec();
    padded.resize(QEMU_SMP4.len() + 4096, 0xff);
    assert_eq!(parse_host(&padded), parse_host(QEMU_SMP4));
}

#[test]
fn truncated_blobs_are_errors() {
    for length in 0..QEMU_SMP4.len() {
        let result = parse_host(&QEMU_SMP4[..length]);
        assert!(result.is_err(), "a blob cut to {length} bytes parsed");
    }
}

/// Header fields the corruption tests rewrite.
const OFFSET_TOTALSIZE: usize = 4;
const OFFSET_OFF_DT_STRUCT: usize = 8;
const OFFSET_SIZE_DT_STRUCT: usize = 36;

fn header_field(blob: &[u8], offset: usize) -> usize {
    u32::from_be_bytes(blob[offset..offset + 4].try_into().expect("4 bytes")) as usize
}

#[test]
fn structure_block_cut_short_is_an_error() {
    let size = header_field(QEMU_SMP4, OFFSET_SIZE_DT_STRUCT);
    for shorter in (0..size).step_by(4) {
        let mut blob = QEMU_SMP4.to_vec();
        blob[OFFSET_SIZE_DT_STRUCT..OFFSET_SIZE_DT_STRUCT + 4]
            .copy_from_slice(&(shorter as u32).to_be_bytes());
        assert!(
            matches!(parse_host(&blob), Err(HostTreeError::Structure(_))),
            "structure block cut to {shorter} bytes was accepted"
        );
    }
}

#[test]
fn blob_whose_tail_is_cut_but_header_adjusted_is_an_error() {
    // Claim a smaller totalsize so the strings block no longer fits.
    let mut blob = QEMU_SMP4.to_vec();
    let smaller = (QEMU_SMP4.len() - 64) as u32;
    blob[OFFSET_TOTALSIZE..OFFSET_TOTALSIZE + 4].copy_from_slice(&smaller.to_be_bytes());
    blob.truncate(smaller as usize);
    assert!(matches!(
        parse_host(&blob),
        Err(HostTreeError::Structure(StructureError::BlockOutOfBounds {
            block: "strings",
            ..
        }))
    ));
}

/// Overwrites every word of the structure block in turn with values that tend to confuse
/// parsers (tokens, huge lengths, zero). Each result must be an error or a summary: never a panic.
#[test]
fn corrupted_structure_words_never_panic() {
    let start = header_field(QEMU_SMP1, OFFSET_OFF_DT_STRUCT);
    let size = header_field(QEMU_SMP1, OFFSET_SIZE_DT_STRUCT);
    let mut errors = 0;
    for offset in (start..start + size).step_by(4) {
        for value in [0, 1, 2, 3, 4, 9, 0xffff_ffff, 0x0000_1000] {
            let mut blob = QEMU_SMP1.to_vec();
            blob[offset..offset + 4].copy_from_slice(&u32::to_be_bytes(value));
            if parse_host(&blob).is_err() {
                errors += 1;
            }
        }
    }
    // Most corruptions break the structure; the test's point is that none of them panicked.
    assert!(errors > size / 4, "only {errors} corruptions were detected");
}

#[test]
fn corrupted_bytes_never_panic() {
    let mut errors = 0;
    for offset in 0..QEMU_SMP1.len() {
        for flip in [0xff, 0x01] {
            let mut blob = QEMU_SMP1.to_vec();
            blob[offset] ^= flip;
            let result = parse_host(&blob);
            let bad_magic = matches!(
                result,
                Err(HostTreeError::Structure(StructureError::BadMagic { .. }))
            );
            assert_eq!(
                bad_magic,
                offset < 4,
                "flipping byte {offset} gave {result:?}"
            );
            match result {
                Err(_) => errors += 1,
                Ok(host) => assert!(!host.harts.is_empty() && !host.memory.is_empty()),
            }
        }
    }
    assert!(errors > 0);
}

/// Inserts an FDT_NOP before every token of a well-formed blob's structure block.
fn with_nop_before_every_token(blob: &[u8]) -> Vec<u8> {
    let start = header_field(blob, OFFSET_OFF_DT_STRUCT);
    let size = header_field(blob, OFFSET_SIZE_DT_STRUCT);
    let strings_offset = header_field(blob, 12);
    let structure = &blob[start..start + size];
    let word =
        |offset: usize| u32::from_be_bytes(structure[offset..offset + 4].try_into().unwrap());

    let mut rebuilt = Vec::new();
    let mut offset = 0;
    loop {
        rebuilt.extend_from_slice(&4u32.to_be_bytes());
        let token = word(offset);
        let length = match token {
            1 => {
                let name_length = structure[offset + 4..]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap();
                4 + (name_length + 1).div_ceil(4) * 4
            }
            2 | 4 | 9 => 4,
            3 => 12 + (word(offset + 4) as usize).div_ceil(4) * 4,
            other => panic!("unexpected token {other} in a fixture"),
        };
        rebuilt.extend_from_slice(&structure[offset..offset + length]);
        offset += length;
        if token == 9 {
            break;
        }
    }
    assert!(
        strings_offset >= start + size,
        "fixture keeps strings after the structure block"
    );
    let added = rebuilt.len() - size;
    let mut out = blob[..start].to_vec();
    out.extend_from_slice(&rebuilt);
    out.extend_from_slice(&blob[start + size..]);
    let set = |out: &mut Vec<u8>, field: usize, value: usize| {
        out[field..field + 4].copy_from_slice(&(value as u32).to_be_bytes());
    };
    set(&mut out, OFFSET_SIZE_DT_STRUCT, rebuilt.len());
    set(&mut out, 12, strings_offset + added);
    set(
        &mut out,
        OFFSET_TOTALSIZE,
        header_field(blob, OFFSET_TOTALSIZE) + added,
    );
    out
}

#[test]
fn nop_tokens_anywhere_give_the_same_summary() {
    for fixture in [QEMU_SMP4, QEMU_AIA, FIRMWARE_FIXUPS] {
        let with_nops = with_nop_before_every_token(fixture);
        assert!(with_nops.len() > fixture.len());
        assert_eq!(parse_host(&with_nops), parse_host(fixture));
    }
}

/// Knobs for a small synthetic host tree; the defaults describe a valid one-hart machine.
struct Spec {
    memory_node: bool,
    memory_reg: Vec<u8>,
    cpus_node: bool,
    cpu_node: bool,
    timebase: Option<Vec<u8>>,
    isa: &'static str,
    plic_routing: Vec<u32>,
    virtio_interrupts: bool,
    soc_ranges: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            memory_node: true,
            memory_reg: cells64(&[0x8000_0000, 0x1000_0000]),
            cpus_node: true,
            cpu_node: true,
            timebase: Some(10_000_000u32.to_be_bytes().to_vec()),
            isa: "rv64imafdch_zicsr",
            plic_routing: vec![INTC_PHANDLE, 11, INTC_PHANDLE, 9],
            virtio_interrupts: true,
            soc_ranges: true,
        }
    }
}

const INTC_PHANDLE: u32 = 1;
const PLIC_PHANDLE: u32 = 2;

fn cells64(values: &[u64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect()
}

fn build(spec: &Spec) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    if spec.memory_node {
        let memory = w.begin_node("memory@80000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property("reg", &spec.memory_reg).unwrap();
        w.end_node(memory).unwrap();
    }
    if spec.cpus_node {
        let cpus = w.begin_node("cpus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 0).unwrap();
        if let Some(timebase) = &spec.timebase {
            w.property("timebase-frequency", timebase).unwrap();
        }
        if spec.cpu_node {
            let cpu = w.begin_node("cpu@0").unwrap();
            w.property_string("device_type", "cpu").unwrap();
            w.property_u32("reg", 0).unwrap();
            w.property_string("riscv,isa", spec.isa).unwrap();
            let intc = w.begin_node("interrupt-controller").unwrap();
            w.property_string("compatible", "riscv,cpu-intc").unwrap();
            w.property_u32("#interrupt-cells", 1).unwrap();
            w.property_null("interrupt-controller").unwrap();
            w.property_phandle(INTC_PHANDLE).unwrap();
            w.end_node(intc).unwrap();
            w.end_node(cpu).unwrap();
        }
        w.end_node(cpus).unwrap();
    }
    let soc = w.begin_node("soc").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    if spec.soc_ranges {
        w.property_null("ranges").unwrap();
    }
    let plic = w.begin_node("plic@c000000").unwrap();
    w.property_string("compatible", "riscv,plic0").unwrap();
    w.property("reg", &cells64(&[0xc00_0000, 0x400_0000]))
        .unwrap();
    w.property_u32("riscv,ndev", 31).unwrap();
    w.property_u32("#interrupt-cells", 1).unwrap();
    w.property_null("interrupt-controller").unwrap();
    w.property_array_u32("interrupts-extended", &spec.plic_routing)
        .unwrap();
    w.property_phandle(PLIC_PHANDLE).unwrap();
    w.end_node(plic).unwrap();
    let virtio = w.begin_node("virtio_mmio@10001000").unwrap();
    w.property_string("compatible", "virtio,mmio").unwrap();
    w.property("reg", &cells64(&[0x1000_1000, 0x1000])).unwrap();
    if spec.virtio_interrupts {
        w.property_u32("interrupt-parent", PLIC_PHANDLE).unwrap();
        w.property_u32("interrupts", 1).unwrap();
    }
    w.end_node(virtio).unwrap();
    w.end_node(soc).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

#[test]
fn synthetic_baseline_parses() {
    let host = parse_host(&build(&Spec::default())).expect("baseline is valid");
    assert_eq!(
        host.memory,
        [Region {
            base: 0x8000_0000,
            size: 0x1000_0000
        }]
    );
    assert_eq!(host.plic.map(|plic| plic.s_contexts), Some(vec![(0, 1)]));
    assert_eq!(
        host.virtio_mmio,
        [HostVirtio {
            base: 0x1000_1000,
            size: 0x1000,
            irq: 1
        }]
    );
    assert_eq!(host.uart, None);
    assert_eq!(host.model, None);
}

#[test]
fn sixty_four_bit_timebase_is_accepted() {
    let spec = Spec {
        timebase: Some(10_000_000u64.to_be_bytes().to_vec()),
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&spec)).map(|host| host.timebase_frequency),
        Ok(10_000_000)
    );
}

#[test]
fn missing_nodes_are_named() {
    let no_memory = Spec {
        memory_node: false,
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&no_memory)),
        Err(HostTreeError::NoMemoryNode)
    );

    let zero_memory = Spec {
        memory_reg: cells64(&[0x8000_0000, 0]),
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&zero_memory)),
        Err(HostTreeError::NoMemoryRegions)
    );

    let no_cpus = Spec {
        cpus_node: false,
        ..Spec::default()
    };
    assert_eq!(parse_host(&build(&no_cpus)), Err(HostTreeError::NoCpusNode));

    let empty_cpus = Spec {
        cpu_node: false,
        ..Spec::default()
    };
    assert_eq!(parse_host(&build(&empty_cpus)), Err(HostTreeError::NoCpus));

    let no_timebase = Spec {
        timebase: None,
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&no_timebase)),
        Err(HostTreeError::MissingTimebaseFrequency)
    );
}

#[test]
fn malformed_properties_are_named() {
    let short_reg = Spec {
        memory_reg: vec![0; 20],
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&short_reg)),
        Err(HostTreeError::MalformedReg {
            node: "/memory@80000000".into(),
            length: 20,
            entry_size: 16
        })
    );

    let odd_timebase = Spec {
        timebase: Some(vec![0, 1, 2]),
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&odd_timebase)),
        Err(HostTreeError::MalformedProperty {
            node: "/cpus".into(),
            property: "timebase-frequency",
            reason: "is neither one nor two 32-bit cells"
        })
    );

    let zero_timebase = Spec {
        timebase: Some(vec![0; 4]),
        ..Spec::default()
    };
    assert!(matches!(
        parse_host(&build(&zero_timebase)),
        Err(HostTreeError::MalformedProperty {
            property: "timebase-frequency",
            ..
        })
    ));

    let bad_isa = Spec {
        isa: "x86_64",
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&bad_isa)),
        Err(HostTreeError::MalformedIsa {
            hartid: 0,
            isa: "x86_64".into()
        })
    );

    let no_virtio_irq = Spec {
        virtio_interrupts: false,
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&no_virtio_irq)),
        Err(HostTreeError::MissingProperty {
            node: "/soc/virtio_mmio@10001000".into(),
            property: "interrupts"
        })
    );

    let no_ranges = Spec {
        soc_ranges: false,
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&no_ranges)),
        Err(HostTreeError::UntranslatableAddress {
            node: "/soc/plic@c000000".into(),
            address: 0xc00_0000
        })
    );
}

#[test]
fn plic_routing_errors_are_named() {
    let dangling = Spec {
        plic_routing: vec![INTC_PHANDLE, 11, 0x77, 9],
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&dangling)),
        Err(HostTreeError::UnresolvedPhandle {
            node: "/soc/plic@c000000".into(),
            property: "interrupts-extended",
            phandle: 0x77
        })
    );

    let truncated = Spec {
        plic_routing: vec![INTC_PHANDLE, 11, INTC_PHANDLE],
        ..Spec::default()
    };
    assert!(matches!(
        parse_host(&build(&truncated)),
        Err(HostTreeError::MalformedProperty {
            property: "interrupts-extended",
            ..
        })
    ));

    // The PLIC itself is not a hart's interrupt controller.
    let not_a_hart = Spec {
        plic_routing: vec![PLIC_PHANDLE, 9],
        ..Spec::default()
    };
    assert_eq!(
        parse_host(&build(&not_a_hart)),
        Err(HostTreeError::InterruptTargetNotCpu {
            node: "/soc/plic@c000000".into(),
            target: "/soc/plic@c000000".into()
        })
    );
}

#[test]
fn error_messages_name_the_problem() {
    let message = HostTreeError::MissingProperty {
        node: "/soc/plic".into(),
        property: "riscv,ndev",
    }
    .to_string();
    assert_eq!(
        message,
        "device tree node /soc/plic lacks the required property riscv,ndev"
    );
    let message = parse_host(&[0u8; 64])
        .expect_err("zeros are no tree")
        .to_string();
    assert_eq!(
        message,
        "device tree magic is 0x00000000, expected 0xd00dfeed"
    );
}
