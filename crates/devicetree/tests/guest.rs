//! Guest tree building: read every generated property back with the `fdt` crate, and reject bad configurations.

use fdt::node::FdtNode;
use fdt::Fdt;
use keel_devicetree::{
    build_guest_tree, parse_host, GuestPlic, GuestTreeConfig, GuestTreeError, GuestUart,
    GuestVirtio, Region,
};

const EXTENSIONS: &[&str] = &["i", "m", "a", "f", "d", "c", "zicsr", "zifencei", "sstc"];
const VIRTIO: &[GuestVirtio] = &[
    GuestVirtio {
        base: 0x1000_1000,
        size: 0x1000,
        irq: 1,
    },
    GuestVirtio {
        base: 0x1000_2000,
        size: 0x1000,
        irq: 2,
    },
];

const SEED: [u8; 8] = [0x5e, 0xed, 0x00, 0x01, 0x02, 0x03, 0xfe, 0xff];

fn config(vcpus: u32) -> GuestTreeConfig<'static> {
    GuestTreeConfig {
        model: "keel,capsule",
        memory: Region {
            base: 0x8000_0000,
            size: 0x1000_0000,
        },
        vcpus,
        isa: "rv64imafdc_zicsr_zifencei_sstc",
        isa_base: "rv64i",
        isa_extensions: EXTENSIONS,
        mmu_type: "riscv,sv39",
        timebase_frequency: 10_000_000,
        bootargs: "console=ttyS0 earlycon",
        initrd: Some((0x8800_0000, 0x8820_0000)),
        rng_seed: Some(&SEED),
        uart: GuestUart {
            base: 0x1000_0000,
            size: 0x100,
            irq: 10,
            clock_frequency: 3_686_400,
        },
        plic: GuestPlic {
            base: 0x0c00_0000,
            size: 0x400_0000,
            ndev: 31,
        },
        virtio_mmio: VIRTIO,
    }
}

fn u32_prop(node: FdtNode<'_, '_>, name: &str) -> u32 {
    let value = node
        .property(name)
        .unwrap_or_else(|| panic!("{} lacks {name}", node.name))
        .value;
    u32::from_be_bytes(
        value
            .try_into()
            .unwrap_or_else(|_| panic!("{name} is not one cell")),
    )
}

fn u64_prop(node: FdtNode<'_, '_>, name: &str) -> u64 {
    let value = node
        .property(name)
        .unwrap_or_else(|| panic!("{} lacks {name}", node.name))
        .value;
    u64::from_be_bytes(
        value
            .try_into()
            .unwrap_or_else(|_| panic!("{name} is not two cells")),
    )
}

fn str_prop<'a>(node: FdtNode<'_, 'a>, name: &str) -> &'a str {
    let value = node
        .property(name)
        .unwrap_or_else(|| panic!("{} lacks {name}", node.name))
        .value;
    let text = value.strip_suffix(&[0]).expect("NUL-terminated");
    std::str::from_utf8(text).expect("UTF-8")
}

fn str_list<'a>(node: FdtNode<'_, 'a>, name: &str) -> Vec<&'a str> {
    str_prop(node, name).split('\0').collect()
}

fn cells(node: FdtNode<'_, '_>, name: &str) -> Vec<u32> {
    let value = node
        .property(name)
        .unwrap_or_else(|| panic!("{} lacks {name}", node.name))
        .value;
    assert_eq!(value.len() % 4, 0, "{name} is whole cells");
    value
        .chunks_exact(4)
        .map(|cell| u32::from_be_bytes(cell.try_into().unwrap()))
        .collect()
}

fn reg(node: FdtNode<'_, '_>) -> (u64, u64) {
    let value = node.property("reg").expect("reg").value;
    assert_eq!(value.len(), 16, "{}: one 2+2-cell reg entry", node.name);
    (
        u64::from_be_bytes(value[..8].try_into().unwrap()),
        u64::from_be_bytes(value[8..].try_into().unwrap()),
    )
}

fn is_empty_flag(node: FdtNode<'_, '_>, name: &str) -> bool {
    node.property(name)
        .is_some_and(|property| property.value.is_empty())
}

/// Builds the tree for `vcpus` and checks every property the guest relies on.
fn check_tree(vcpus: u32) {
    let config = config(vcpus);
    let blob = build_guest_tree(&config).expect("valid configuration");
    let fdt = Fdt::new(&blob).expect("blob parses");

    let root = fdt.find_node("/").expect("root");
    assert_eq!(u32_prop(root, "#address-cells"), 2);
    assert_eq!(u32_prop(root, "#size-cells"), 2);
    assert_eq!(str_prop(root, "compatible"), "keel,capsule");
    assert_eq!(str_prop(root, "model"), "keel,capsule");

    let chosen = fdt.find_node("/chosen").expect("/chosen");
    assert_eq!(str_prop(chosen, "bootargs"), "console=ttyS0 earlycon");
    assert_eq!(str_prop(chosen, "stdout-path"), "/soc/serial@10000000");
    assert_eq!(u64_prop(chosen, "linux,initrd-start"), 0x8800_0000);
    assert_eq!(u64_prop(chosen, "linux,initrd-end"), 0x8820_0000);
    assert_eq!(chosen.property("rng-seed").expect("rng-seed").value, SEED);
    assert_eq!(
        fdt.chosen().stdout().map(|node| node.name),
        Some("serial@10000000")
    );

    let cpus = fdt.find_node("/cpus").expect("/cpus");
    assert_eq!(u32_prop(cpus, "#address-cells"), 1);
    assert_eq!(u32_prop(cpus, "#size-cells"), 0);
    assert_eq!(u32_prop(cpus, "timebase-frequency"), 10_000_000);
    assert_eq!(fdt.cpus().count(), vcpus as usize);

    let mut intc_phandles = Vec::new();
    for vcpu in 0..vcpus {
        let cpu = fdt
            .find_node(&format!("/cpus/cpu@{vcpu:x}"))
            .expect("cpu node");
        assert_eq!(str_prop(cpu, "device_type"), "cpu");
        assert_eq!(u32_prop(cpu, "reg"), vcpu);
        assert_eq!(str_prop(cpu, "compatible"), "riscv");
        assert_eq!(str_prop(cpu, "status"), "okay");
        assert_eq!(str_prop(cpu, "riscv,isa"), "rv64imafdc_zicsr_zifencei_sstc");
        assert_eq!(str_prop(cpu, "riscv,isa-base"), "rv64i");
        assert_eq!(str_list(cpu, "riscv,isa-extensions"), EXTENSIONS);
        assert_eq!(str_prop(cpu, "mmu-type"), "riscv,sv39");

        let intc = cpu
            .children()
            .find(|child| child.name == "interrupt-controller")
            .expect("intc");
        assert_eq!(str_prop(intc, "compatible"), "riscv,cpu-intc");
        assert_eq!(u32_prop(intc, "#interrupt-cells"), 1);
        assert_eq!(u32_prop(intc, "#address-cells"), 0);
        assert!(is_empty_flag(intc, "interrupt-controller"));
        intc_phandles.push(u32_prop(intc, "phandle"));
    }

    let memory = fdt.find_node("/memory@80000000").expect("memory node");
    assert_eq!(str_prop(memory, "device_type"), "memory");
    assert_eq!(reg(memory), (0x8000_0000, 0x1000_0000));

    let soc = fdt.find_node("/soc").expect("/soc");
    assert_eq!(str_prop(soc, "compatible"), "simple-bus");
    assert!(is_empty_flag(soc, "ranges"));
    assert_eq!(u32_prop(soc, "#address-cells"), 2);
    assert_eq!(u32_prop(soc, "#size-cells"), 2);

    let plic = fdt.find_compatible(&["riscv,plic0"]).expect("PLIC node");
    assert_eq!(
        str_list(plic, "compatible"),
        ["sifive,plic-1.0.0", "riscv,plic0"]
    );
    assert_eq!(reg(plic), (0x0c00_0000, 0x400_0000));
    assert_eq!(u32_prop(plic, "#interrupt-cells"), 1);
    assert!(is_empty_flag(plic, "interrupt-controller"));
    assert_eq!(u32_prop(plic, "riscv,ndev"), 31);
    let routing = cells(plic, "interrupts-extended");
    assert_eq!(routing.len(), 2 * vcpus as usize);
    for (vcpu, entry) in routing.chunks_exact(2).enumerate() {
        // Context N is vCPU N's S-mode external interrupt.
        assert_eq!(
            entry[0], intc_phandles[vcpu],
            "context {vcpu} targets vCPU {vcpu}"
        );
        assert_eq!(entry[1], 9, "context {vcpu} is an S-mode context");
        let target = fdt.find_phandle(entry[0]).expect("phandle resolves");
        assert_eq!(target.name, "interrupt-controller");
        assert_eq!(str_prop(target, "compatible"), "riscv,cpu-intc");
    }
    let plic_phandle = u32_prop(plic, "phandle");
    assert!(
        !intc_phandles.contains(&plic_phandle),
        "phandles are unique"
    );

    let uart = fdt.find_node("/soc/serial@10000000").expect("UART node");
    assert_eq!(str_prop(uart, "compatible"), "ns16550a");
    assert_eq!(reg(uart), (0x1000_0000, 0x100));
    assert_eq!(u32_prop(uart, "interrupts"), 10);
    assert_eq!(u32_prop(uart, "interrupt-parent"), plic_phandle);
    assert_eq!(u32_prop(uart, "clock-frequency"), 3_686_400);

    let slots: Vec<_> = fdt
        .find_node("/soc")
        .expect("/soc")
        .children()
        .filter(|node| {
            node.compatible()
                .is_some_and(|c| c.all().any(|s| s == "virtio,mmio"))
        })
        .map(|node| {
            (
                node.name,
                reg(node),
                u32_prop(node, "interrupts"),
                u32_prop(node, "interrupt-parent"),
            )
        })
        .collect();
    assert_eq!(
        slots,
        [
            (
                "virtio_mmio@10001000",
                (0x1000_1000, 0x1000),
                1,
                plic_phandle
            ),
            (
                "virtio_mmio@10002000",
                (0x1000_2000, 0x1000),
                2,
                plic_phandle
            ),
        ]
    );
}

#[test]
fn one_vcpu() {
    check_tree(1);
}

#[test]
fn two_vcpus() {
    check_tree(2);
}

#[test]
fn eight_vcpus() {
    check_tree(8);
}

#[test]
fn guest_tree_reads_back_as_a_host_tree() {
    let blob = build_guest_tree(&config(4)).expect("valid configuration");
    let summary = parse_host(&blob).expect("the host parser accepts guest trees");
    assert_eq!(
        summary.memory,
        [Region {
            base: 0x8000_0000,
            size: 0x1000_0000
        }]
    );
    assert_eq!(summary.timebase_frequency, 10_000_000);
    assert_eq!(summary.harts.len(), 4);
    assert!(summary
        .harts
        .iter()
        .all(|hart| hart.enabled && hart.isa_extensions == EXTENSIONS));
    assert_eq!(
        summary.uart.map(|uart| (uart.base, uart.irq)),
        Some((0x1000_0000, Some(10)))
    );
    let plic = summary.plic.expect("PLIC");
    assert_eq!(plic.s_contexts, [(0, 0), (1, 1), (2, 2), (3, 3)]);
    assert_eq!(plic.ndev, 31);
    assert_eq!(summary.virtio_mmio.len(), 2);
    assert_eq!(summary.model.as_deref(), Some("keel,capsule"));
}

#[test]
fn no_initrd_and_no_virtio() {
    let config = GuestTreeConfig {
        initrd: None,
        virtio_mmio: &[],
        ..config(1)
    };
    let blob = build_guest_tree(&config).expect("valid configuration");
    let fdt = Fdt::new(&blob).expect("blob parses");
    let chosen = fdt.find_node("/chosen").expect("/chosen");
    assert!(chosen.property("linux,initrd-start").is_none());
    assert!(chosen.property("linux,initrd-end").is_none());
    assert!(fdt.find_compatible(&["virtio,mmio"]).is_none());
}

#[test]
fn no_entropy_means_no_rng_seed() {
    for rng_seed in [None, Some(&[][..])] {
        let blob = build_guest_tree(&GuestTreeConfig { rng_seed, ..config(1) }).expect("valid configuration");
        let fdt = Fdt::new(&blob).expect("blob parses");
        assert!(fdt.find_node("/chosen").expect("/chosen").property("rng-seed").is_none());
    }
}

#[test]
fn highest_source_number_is_usable() {
    let base = config(1);
    let uart = GuestUart {
        irq: base.plic.ndev,
        ..base.uart
    };
    assert!(build_guest_tree(&GuestTreeConfig { uart, ..base }).is_ok());
}

#[test]
fn bad_configurations_are_rejected() {
    let base = config(2);
    let with = |change: &dyn Fn(&mut GuestTreeConfig<'static>)| {
        let mut config = base;
        change(&mut config);
        build_guest_tree(&config).expect_err("configuration must be rejected")
    };

    assert_eq!(with(&|c| c.vcpus = 0), GuestTreeError::NoVcpus);
    assert_eq!(
        with(&|c| c.vcpus = 20_000),
        GuestTreeError::TooManyVcpus { vcpus: 20_000 }
    );
    assert_eq!(
        with(&|c| c.memory.size = 0),
        GuestTreeError::EmptyMemory { base: 0x8000_0000 }
    );
    assert_eq!(
        with(&|c| c.uart.irq = 0),
        GuestTreeError::IrqOutOfRange {
            device: "UART",
            irq: 0,
            ndev: 31
        }
    );
    assert_eq!(
        with(&|c| c.uart.irq = 32),
        GuestTreeError::IrqOutOfRange {
            device: "UART",
            irq: 32,
            ndev: 31
        }
    );
    assert_eq!(
        with(&|c| c.uart.irq = 2),
        GuestTreeError::IrqConflict { irq: 2 }
    );
    assert_eq!(
        with(&|c| c.plic.ndev = 0),
        GuestTreeError::InvalidSourceCount { ndev: 0 }
    );
    assert_eq!(
        with(&|c| c.plic.ndev = 1024),
        GuestTreeError::InvalidSourceCount { ndev: 1024 }
    );
    assert_eq!(
        with(&|c| c.timebase_frequency = 0),
        GuestTreeError::ZeroTimebaseFrequency
    );
    assert_eq!(
        with(&|c| c.isa = ""),
        GuestTreeError::EmptyProperty {
            property: "riscv,isa"
        }
    );
    assert_eq!(
        with(&|c| c.bootargs = "console=ttyS0\0root=/dev/vda"),
        GuestTreeError::EmbeddedNul {
            property: "bootargs"
        }
    );
    // Found by the devicetree_guest fuzz target: an empty list became an empty property that
    // the host parser (and Linux) cannot read as a string list.
    assert_eq!(
        with(&|c| c.isa_extensions = &[]),
        GuestTreeError::EmptyProperty {
            property: "riscv,isa-extensions"
        }
    );
    assert_eq!(
        with(&|c| c.isa_extensions = &["i", ""]),
        GuestTreeError::EmptyProperty {
            property: "riscv,isa-extensions"
        }
    );
    assert_eq!(
        with(&|c| c.uart.base = 0x0c00_1000),
        GuestTreeError::OverlappingRegions {
            first: "PLIC",
            first_base: 0x0c00_0000,
            second: "UART",
            second_base: 0x0c00_1000
        }
    );
    assert_eq!(
        with(&|c| c.uart.size = 0),
        GuestTreeError::InvalidRegion {
            device: "UART",
            base: 0x1000_0000,
            size: 0
        }
    );
    assert_eq!(
        with(&|c| c.memory = Region {
            base: u64::MAX - 0xfff,
            size: 0x2000
        }),
        GuestTreeError::InvalidRegion {
            device: "memory",
            base: u64::MAX - 0xfff,
            size: 0x2000
        }
    );
    assert_eq!(
        with(&|c| c.initrd = Some((0x8820_0000, 0x8800_0000))),
        GuestTreeError::InvalidInitrd {
            start: 0x8820_0000,
            end: 0x8800_0000
        }
    );
    assert_eq!(
        with(&|c| c.initrd = Some((0x8ff0_0000, 0x9010_0000))),
        GuestTreeError::InvalidInitrd {
            start: 0x8ff0_0000,
            end: 0x9010_0000
        }
    );
}

#[test]
fn error_messages_name_the_problem() {
    assert_eq!(
        GuestTreeError::IrqOutOfRange {
            device: "UART",
            irq: 40,
            ndev: 31
        }
        .to_string(),
        "UART interrupt 40 is outside the PLIC's sources 1..=31"
    );
    assert_eq!(
        GuestTreeError::NoVcpus.to_string(),
        "guest needs at least one vCPU"
    );
}

/// Cross-checks the blob with the reference device-tree compiler when it is installed.
#[test]
fn dtc_decompiles_the_tree() {
    let blob = build_guest_tree(&config(2)).expect("valid configuration");
    let path = std::env::temp_dir().join(format!("keel-guest-{}.dtb", std::process::id()));
    std::fs::write(&path, &blob).expect("write temporary blob");
    let output = std::process::Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts", "-o", "-"])
        .arg(&path)
        .output();
    std::fs::remove_file(&path).ok();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!("note: dtc is not installed; skipping the dtc cross-check (apt-get install device-tree-compiler)");
            return;
        }
        Err(error) => panic!("running dtc failed: {error}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dtc rejected the blob: {stderr}");
    assert!(!stderr.contains("ERROR"), "dtc reported errors: {stderr}");
    assert!(
        !stderr.contains("Warning"),
        "dtc reported warnings: {stderr}"
    );
    let source = String::from_utf8(output.stdout).expect("dtc prints UTF-8");
    for expected in [
        "compatible = \"keel,capsule\";",
        "stdout-path = \"/soc/serial@10000000\";",
        "riscv,isa-extensions = \"i\\0m\\0a\\0f\\0d\\0c\\0zicsr\\0zifencei\\0sstc\";",
        "interrupts-extended = <0x02 0x09 0x03 0x09>;",
        "compatible = \"sifive,plic-1.0.0\\0riscv,plic0\";",
        "virtio_mmio@10002000 {",
        "memory@80000000 {",
    ] {
        assert!(
            source.contains(expected),
            "dtc output lacks {expected:?}:\n{source}"
        );
    }
}
