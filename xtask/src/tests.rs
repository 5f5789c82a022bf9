//! `cargo xtask test`: the host unit tests, then console-driven boot scenarios in QEMU, with a pass/fail count.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::build;
use crate::console::Console;
use crate::fuzz;
use crate::guests;
use crate::images::{self, Images};
use crate::qemu::{self, Boot, Machine, Payload, Qemu};
use crate::setup;
use crate::shell;
use crate::Workspace;

mod network;

pub struct Options {
    pub host: bool,
    pub qemu: bool,
    pub qemu_binary: Option<PathBuf>,
    pub filters: Vec<String>,
    pub list_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Debian,
    Small,
    /// guests/sbi-check: a bare-metal guest that checks the SBI implementation under it.
    SbiCheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QemuVersion {
    /// The machine's QEMU (7.2 on Debian 12), or `--qemu`.
    Machine,
    /// QEMU 10.0 unpacked from bookworm-backports.
    Backports,
}

/// What a scenario checks beyond booting to a shell, running commands and powering off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    /// `nproc` reports this many CPUs.
    Cpus(u32),
    /// The kernel's paging mode, as `/proc/cpuinfo`'s `mmu` line names it (`sv39`, `sv48`, `sv57`).
    Paging(&'static str),
    /// Keel's boot log says the boot capsule has this many GiB of RAM mapped with G-stage gigapages.
    Gigapages(u32),
    /// `reboot` restarts the capsule, which comes back to a shell.
    Reboot,
    /// A load from a guest-physical address that is neither the capsule's RAM nor one of its devices: Keel logs it
    /// and injects an access fault, which Linux turns into SIGSEGV for the process; the shell and Keel carry on.
    ForeignAccess,
    /// The virtio-rng driver is bound and is the kernel's current hardware RNG, and `/dev/hwrng` gives bytes. For
    /// the Debian kernel this also shows that rcS loaded the virtio modules from its initramfs.
    HardwareRng,
    /// The kernel's console is the virtio console (`hvc0`), and the shell's conversation ran over it.
    VirtioConsole,
    /// `eth0` is the capsule's virtio-net card with the MAC address its manifest gives (default.toml's).
    NetworkCard,
    /// `keel list` shows the capsule `stored` of the manifest image on the disk; `keel start stored` boots it
    /// beside the boot capsule; `keel stop stored` stops it.
    StartFromDisk,
    /// `keel start stored` is refused because the image on the disk was altered after signing.
    DiskImageRefused,
}

/// How a scenario is expected to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A shell, the standard conversation, the extras, then `poweroff` with exit status 0.
    Shell(&'static [Extra]),
    /// Keel refuses to run: it prints this text and QEMU exits with a non-zero status.
    Refusal(&'static str),
    /// The SBI check guest reports `N checks ok, 0 failed` (N > 0) and shuts down with exit status 0.
    GuestChecks,
    /// Several capsules (the boot capsule first) reach their shells; console input moves between them with
    /// the focus escape; each answers with its own `[name]`-tagged lines; `poweroff` in the boot capsule ends all.
    Capsules(&'static [(&'static str, u32)]),
    /// The trio manifest, driven from the boot capsule with `keel`: list, 20 stop/start rounds with Keel's free
    /// memory back at the same figure each time, a capsule panicking and coming back while the boot capsule's
    /// shell answers, and a capsule without the manage right refused.
    Manage,
    /// The hostile manifest (docs/hostile.md): the hostile capsule's cases all get their expected outcome while
    /// the canary beside it, on the same hart, keeps its memory and console untouched and its heartbeat going.
    Hostile,
    /// The disks manifest, over two boots of the machine with one disk image: the boot capsule formats its disk and
    /// writes a file; it and `neighbour` each find only their own extent; after a power-off and a new boot the
    /// file's checksum is unchanged. The disk image itself shows each capsule's data at its extent.
    DiskPersistence,
    /// The scrub manifest: from the boot capsule, `writer` fills its RAM with a pattern and stops, then
    /// `reader`, given the same host memory, finds only zeros.
    Scrub,
    /// The net manifest on a machine with a NIC on QEMU user networking: the capsules ping each other, a capsule
    /// sending from the other's MAC address is cut off, a 10 MiB file crosses from `web` to `boot` over HTTP with
    /// its checksum intact, and this machine fetches it too through a QEMU port forward (tests/network.rs).
    Network,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    kernel: Kernel,
    under_keel: bool,
    qemu: QemuVersion,
    /// The manifest under guests/manifests/ (Keel scenarios); by default the kernel's own.
    manifest: Option<&'static str>,
    /// QEMU `-cpu`, when not the machine's default.
    cpu: Option<&'static str>,
    /// Machine memory in MiB, when not the default for the scenario.
    memory_mib: Option<u64>,
    /// Harts of the machine, when not the default (2).
    smp: Option<u32>,
    /// A bad bundled image Keel must refuse, instead of one signed with the build's key.
    bad_image: Option<build::BadImage>,
    /// The machine's disk, if it has one.
    disk: Option<DiskSetup>,
    expect: Expect,
}

/// A fresh disk for one scenario run: target/keel/<scenario>-disk.img.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiskSetup {
    /// The manifest under guests/manifests/ whose signed image is written to the start of the disk (else it
    /// starts all zeros).
    stored_manifest: Option<&'static str>,
    /// Flip a bit of the stored image after signing.
    tampered: bool,
}

impl Scenario {
    const fn new(name: &'static str, kernel: Kernel, under_keel: bool, qemu: QemuVersion) -> Scenario {
        Scenario {
            name,
            kernel,
            under_keel,
            qemu,
            manifest: None,
            cpu: None,
            memory_mib: None,
            smp: None,
            bad_image: None,
            disk: None,
            expect: Expect::Shell(&[]),
        }
    }
}

/// The MAC address guests/manifests/default.toml gives the boot capsule's network card.
const DEFAULT_MAC: &str = "02:00:00:00:00:01";

/// Size of the disk scenarios give the machine.
const DISK_MIB: u64 = 256;

/// Native boots come first: they check the images and the harness without the hypervisor, so a
/// failure in a Keel scenario after them points at Keel.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        expect: Expect::Shell(&[Extra::HardwareRng]),
        ..Scenario::new("native-debian", Kernel::Debian, false, QemuVersion::Machine)
    },
    Scenario::new("native-small", Kernel::Small, false, QemuVersion::Machine),
    // QEMU 10's harts have Sv57, and a kernel on the firmware takes it; under Keel (below) it gets Sv39.
    Scenario {
        expect: Expect::Shell(&[Extra::Paging("sv57")]),
        ..Scenario::new("native-small-qemu10", Kernel::Small, false, QemuVersion::Backports)
    },
    // The SBI check guest straight on OpenSBI, then as Keel's boot capsule (a flat kernel, 64 MiB).
    Scenario {
        expect: Expect::GuestChecks,
        ..Scenario::new("native-sbi-check", Kernel::SbiCheck, false, QemuVersion::Machine)
    },
    Scenario {
        expect: Expect::GuestChecks,
        ..Scenario::new("keel-sbi-check", Kernel::SbiCheck, true, QemuVersion::Machine)
    },
    Scenario {
        expect: Expect::Shell(&[Extra::HardwareRng, Extra::NetworkCard, Extra::ForeignAccess, Extra::Cpus(2), Extra::Gigapages(1)]),
        // The capsule's 1 GiB plus Keel, with an aligned gibibyte free for the capsule's gigapage.
        memory_mib: Some(2048),
        ..Scenario::new("keel-debian", Kernel::Debian, true, QemuVersion::Machine)
    },
    Scenario {
        expect: Expect::Shell(&[Extra::Reboot]),
        ..Scenario::new("keel-small", Kernel::Small, true, QemuVersion::Machine)
    },
    // QEMU 10 traps satp accesses under hstatus.VTVM, so Keel's Sv39 offer is what the kernel's probe finds.
    Scenario {
        expect: Expect::Shell(&[Extra::Paging("sv39")]),
        ..Scenario::new("keel-small-qemu10", Kernel::Small, true, QemuVersion::Backports)
    },
    // Two vCPUs on two harts: HSM start of the second vCPU, IPIs and remote fences between them.
    Scenario {
        manifest: Some("small-smp2"),
        expect: Expect::Shell(&[Extra::Cpus(2)]),
        ..Scenario::new("keel-small-smp2", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        manifest: Some("small-hvc"),
        expect: Expect::Shell(&[Extra::VirtioConsole]),
        ..Scenario::new("keel-small-hvc0", Kernel::Small, true, QemuVersion::Machine)
    },
    // Without Sstc the guest's timer goes through SBI set_timer and Keel's own timer interrupt.
    Scenario {
        cpu: Some("rv64,sstc=false"),
        ..Scenario::new("keel-small-no-sstc", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        cpu: Some("rv64,h=false"),
        expect: Expect::Refusal("has no H (hypervisor) extension"),
        ..Scenario::new("keel-refuses-no-h-extension", Kernel::Small, true, QemuVersion::Machine)
    },
    // Three capsules on four harts, one with two vCPUs.
    Scenario {
        manifest: Some("trio"),
        smp: Some(4),
        expect: Expect::Capsules(&[("boot", 1), ("alpha", 2), ("beta", 1)]),
        ..Scenario::new("keel-trio", Kernel::Small, true, QemuVersion::Machine)
    },
    // The same four vCPUs on two harts: time slices, and WFI handing the hart over.
    Scenario {
        manifest: Some("trio"),
        smp: Some(2),
        expect: Expect::Capsules(&[("boot", 1), ("alpha", 2), ("beta", 1)]),
        ..Scenario::new("keel-trio-more-vcpus-than-harts", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        manifest: Some("trio"),
        smp: Some(4),
        expect: Expect::Manage,
        ..Scenario::new("keel-manage", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        manifest: Some("small"),
        disk: Some(DiskSetup { stored_manifest: Some("stored"), tampered: false }),
        expect: Expect::Shell(&[Extra::StartFromDisk]),
        ..Scenario::new("keel-capsule-from-disk", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        manifest: Some("small"),
        disk: Some(DiskSetup { stored_manifest: Some("stored"), tampered: true }),
        expect: Expect::Shell(&[Extra::DiskImageRefused]),
        ..Scenario::new("keel-refuses-tampered-disk-image", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        manifest: Some("disks"),
        disk: Some(DiskSetup { stored_manifest: None, tampered: false }),
        expect: Expect::DiskPersistence,
        ..Scenario::new("keel-disk", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        manifest: Some("net"),
        expect: Expect::Network,
        ..Scenario::new("keel-net", Kernel::Small, true, QemuVersion::Machine)
    },
    // 160 MiB of machine cannot hold the small manifest's 256 MiB capsule.
    Scenario {
        memory_mib: Some(160),
        expect: Expect::Refusal("the boot capsule 'boot' could not be created: not enough free memory"),
        ..Scenario::new("keel-refuses-too-little-memory", Kernel::Small, true, QemuVersion::Machine)
    },
    // The small manifest's image signed, then one kernel byte changed (checksum fixed up): only the
    // signature check can catch it, before anything of the image is used.
    Scenario {
        bad_image: Some(build::BadImage::Tampered),
        expect: Expect::Refusal("the bundled manifest image is refused: its signature does not verify against this build's public key"),
        ..Scenario::new("keel-refuses-tampered-image", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        bad_image: Some(build::BadImage::Unsigned),
        expect: Expect::Refusal("the bundled manifest image is refused: it is unsigned"),
        ..Scenario::new("keel-refuses-unsigned-image", Kernel::Small, true, QemuVersion::Machine)
    },
    // The hostile capsule attacking Keel case by case beside a canary; one hart, so they share it.
    Scenario {
        manifest: Some("hostile"),
        smp: Some(1),
        expect: Expect::Hostile,
        ..Scenario::new("keel-hostile", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        manifest: Some("scrub"),
        expect: Expect::Scrub,
        ..Scenario::new("keel-scrub", Kernel::Small, true, QemuVersion::Machine)
    },
];

const HOST_TESTS: &str = "host-unit-tests";
/// Every fuzz target for a few seconds: fails on any crash.
const FUZZ: &str = "fuzz";
/// How long each fuzz target runs in `cargo xtask test`, and how many run at once; with the build
/// this stays under three minutes.
const FUZZ_SECONDS: u64 = 15;
const FUZZ_JOBS: usize = 2;

/// Keel's SBI implementation ID ("KEEL" in ASCII) and OpenSBI's.
const KEEL_SBI_ID: &str = "0x4b45454c";
const OPENSBI_SBI_ID: &str = "0x1";
const PROMPT: &str = "keel-guest# ";
const READY: &str = "keel-guest: init ready";
/// The name the virtio-rng driver registers its first device under with the hw_random core.
const VIRTIO_RNG_NAME: &str = "virtio_rng.0";

fn selected(name: &str, filters: &[String]) -> bool {
    filters.is_empty() || filters.iter().any(|filter| name.contains(filter.as_str()))
}

struct Outcome {
    name: String,
    passed: bool,
    duration: Duration,
    detail: String,
}

/// Runs the selected tests; returns whether all passed. Prints `N passed, M failed` last.
pub fn run(workspace: &Workspace, options: &Options) -> Result<bool> {
    let run_host = options.host && selected(HOST_TESTS, &options.filters);
    let run_fuzz = options.host && selected(FUZZ, &options.filters);
    let scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .copied()
        .filter(|scenario| options.qemu && selected(scenario.name, &options.filters))
        .collect();
    if options.list_only {
        for name in std::iter::once(HOST_TESTS)
            .filter(|_| run_host)
            .chain(std::iter::once(FUZZ).filter(|_| run_fuzz))
            .chain(scenarios.iter().map(|s| s.name))
        {
            println!("{name}");
        }
        return Ok(true);
    }
    if !run_host && !run_fuzz && scenarios.is_empty() {
        bail!(
            "no test matches {:?}; `cargo xtask test --list` shows the names",
            options.filters
        );
    }

    let mut outcomes = Vec::new();
    if run_host {
        outcomes.push(host_tests(workspace));
    }
    if run_fuzz {
        outcomes.push(fuzz_tests(workspace));
    }
    if !scenarios.is_empty() {
        let mut context = ScenarioContext::new(workspace, options.qemu_binary.clone());
        for scenario in &scenarios {
            let started = Instant::now();
            shell::step(&format!("scenario {}", scenario.name));
            let result = context.run(scenario);
            let outcome = Outcome {
                name: scenario.name.to_string(),
                passed: result.is_ok(),
                duration: started.elapsed(),
                detail: result.unwrap_or_else(|error| format!("{error:#}")),
            };
            report(&outcome);
            outcomes.push(outcome);
        }
    }

    println!();
    println!("==> summary");
    for outcome in &outcomes {
        report(outcome);
    }
    let passed = outcomes.iter().filter(|outcome| outcome.passed).count();
    let failed = outcomes.len() - passed;
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn report(outcome: &Outcome) {
    let verdict = if outcome.passed { "PASS" } else { "FAIL" };
    let seconds = outcome.duration.as_secs_f64();
    println!(
        "{verdict} {:<20} {seconds:>7.1} s  {}",
        outcome.name,
        outcome.detail.lines().next().unwrap_or("")
    );
}

fn host_tests(workspace: &Workspace) -> Outcome {
    shell::step("host unit tests: cargo test (workspace default members, and the SBI check guest's library)");
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.current_dir(&workspace.root).arg("test");
    // The guest crates only build as binaries for RISC-V, so they are not default members; their portable
    // libraries (device-tree reading, decoding, report formatting, the hostile guest's RAM arithmetic) are tested
    // on the host on their own.
    let mut guest_library = Command::new(&cargo);
    guest_library
        .current_dir(&workspace.root)
        .args(["test", "-p", "keel-sbi-check", "-p", "keel-hostile", "--lib"]);
    let result = shell::run(command).and_then(|()| shell::run(guest_library));
    Outcome {
        name: HOST_TESTS.to_string(),
        passed: result.is_ok(),
        duration: started.elapsed(),
        detail: match result {
            Ok(()) => "cargo test passed".to_string(),
            Err(error) => format!("{error:#}"),
        },
    }
}

fn fuzz_tests(workspace: &Workspace) -> Outcome {
    shell::step(&format!(
        "fuzzing: every target for {FUZZ_SECONDS} s, {FUZZ_JOBS} at a time (`cargo xtask fuzz` runs them longer)"
    ));
    let started = Instant::now();
    let result = fuzz::build_and_run(workspace, fuzz::TARGETS, FUZZ_SECONDS, FUZZ_JOBS);
    let (passed, detail) = match result {
        Ok(reports) => {
            let passed = reports.iter().all(fuzz::TargetReport::passed);
            let executions: u64 = reports.iter().map(|report| report.executions).sum();
            let crashes: Vec<String> = reports
                .iter()
                .flat_map(|report| report.crashes.iter())
                .map(|crash| crash.display().to_string())
                .collect();
            let verdict = if passed {
                format!("{executions} executions, no crash")
            } else if crashes.is_empty() {
                "a fuzz target failed to run".to_string()
            } else {
                format!("crash inputs: {}", crashes.join(" "))
            };
            (passed, format!("{verdict}: {}", fuzz::summary(&reports)))
        }
        Err(error) => (false, format!("{error:#}")),
    };
    Outcome {
        name: FUZZ.to_string(),
        passed,
        duration: started.elapsed(),
        detail,
    }
}

/// What scenarios share, prepared once on first use; a failure is remembered and reported by
/// every scenario that needs it instead of being retried.
struct ScenarioContext<'a> {
    workspace: &'a Workspace,
    machine_qemu: Qemu,
    images: Option<Result<Images, String>>,
    qemu10: Option<Result<Qemu, String>>,
    hypervisors: HashMap<&'static str, Result<PathBuf, String>>,
    host_ready: Option<Result<(), String>>,
    sbi_check: Option<Result<PathBuf, String>>,
    hostile: Option<Result<PathBuf, String>>,
}

impl<'a> ScenarioContext<'a> {
    fn new(workspace: &'a Workspace, qemu_binary: Option<PathBuf>) -> ScenarioContext<'a> {
        let machine_qemu = qemu_binary
            .as_deref()
            .map(Qemu::at)
            .unwrap_or_else(Qemu::system);
        ScenarioContext {
            workspace,
            machine_qemu,
            images: None,
            qemu10: None,
            hypervisors: HashMap::new(),
            host_ready: None,
            sbi_check: None,
            hostile: None,
        }
    }

    fn images(&mut self) -> Result<&Images> {
        let host_ready = self
            .host_ready
            .get_or_insert_with(|| setup::ensure_host_tools().map_err(|e| format!("{e:#}")));
        if let Err(error) = host_ready {
            bail!("host setup failed: {error}");
        }
        let workspace = self.workspace;
        match self
            .images
            .get_or_insert_with(|| images::ensure(workspace).map_err(|e| format!("{e:#}")))
        {
            Ok(images) => Ok(images),
            Err(error) => bail!("guest images unavailable: {error}"),
        }
    }

    fn qemu(&mut self, version: QemuVersion) -> Result<Qemu> {
        match version {
            QemuVersion::Machine => Ok(self.machine_qemu.clone()),
            QemuVersion::Backports => {
                let cache = &self.workspace.cache;
                match self
                    .qemu10
                    .get_or_insert_with(|| qemu::qemu10(cache).map_err(|e| format!("{e:#}")))
                {
                    Ok(qemu) => Ok(qemu.clone()),
                    Err(error) => bail!("QEMU 10 unavailable: {error}"),
                }
            }
        }
    }

    /// The hypervisor built around a manifest, copied to target/keel/keel-<manifest>.elf so that
    /// building for the next manifest does not replace it.
    fn hypervisor(&mut self, manifest: &'static str) -> Result<PathBuf> {
        if !self.hypervisors.contains_key(manifest) {
            let built = self
                .build_hypervisor(manifest)
                .map_err(|e| format!("{e:#}"));
            self.hypervisors.insert(manifest, built);
        }
        match &self.hypervisors[manifest] {
            Ok(path) => Ok(path.clone()),
            Err(error) => bail!("{error}"),
        }
    }

    fn build_hypervisor(&mut self, manifest: &'static str) -> Result<PathBuf> {
        let workspace = self.workspace;
        let mut defines = self.images()?.defines();
        // `${guests}`: where the flat test guests are (manifests that use it need `hostile_guest` first).
        defines.push(("guests".to_string(), workspace.keel_dir().display().to_string()));
        let manifest_path = workspace
            .root
            .join("guests/manifests")
            .join(format!("{manifest}.toml"));
        let built = build::build_dmfs_and_hypervisor(workspace, &manifest_path, &defines)?;
        let copy = workspace.keel_dir().join(format!("keel-{manifest}.elf"));
        fs::copy(&built, &copy)
            .with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
        Ok(copy)
    }

    /// Keel around a bad image of a manifest, built for one scenario and copied to
    /// target/keel/<scenario>.elf.
    fn hypervisor_around_bad_image(
        &mut self,
        scenario: &str,
        manifest: &str,
        bad: build::BadImage,
    ) -> Result<PathBuf> {
        let workspace = self.workspace;
        let defines = self.images()?.defines();
        let manifest_path = workspace
            .root
            .join("guests/manifests")
            .join(format!("{manifest}.toml"));
        let built = build::build_hypervisor_around_bad_image(workspace, &manifest_path, &defines, bad)?;
        let copy = workspace.keel_dir().join(format!("{scenario}.elf"));
        fs::copy(&built, &copy)
            .with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
        Ok(copy)
    }

    fn run(&mut self, scenario: &Scenario) -> Result<String> {
        if scenario.kernel == Kernel::SbiCheck {
            return self.run_sbi_check(scenario);
        }
        if matches!(scenario.expect, Expect::Hostile | Expect::Scrub) {
            self.hostile_guest()?;
        }
        let images = self.images()?;
        let (kernel, default_manifest, memory_mib) = match scenario.kernel {
            Kernel::Debian => (images.debian_kernel.clone(), "default", 1024),
            Kernel::Small => (images.small_kernel.clone(), "small", 256),
            // Handled by `run_sbi_check` before the images are needed.
            Kernel::SbiCheck => bail!("the SBI check guest is not a Linux kernel from the images"),
        };
        let manifest = scenario.manifest.unwrap_or(default_manifest);
        // Native boots take the initrd the kernel's capsule gets in its manifest: Debian's carries its virtio modules.
        let initrd = match scenario.kernel {
            Kernel::Debian => images.debian_initramfs.clone(),
            _ => images.initramfs.clone(),
        };
        let qemu = self.qemu(scenario.qemu)?;
        let qemu_version = qemu
            .version()
            .unwrap_or_else(|error| format!("unknown QEMU version ({error:#})"));
        let cpu = scenario.cpu.map(str::to_string);
        // Natively the kernel gets what its capsule would get; under Keel the machine has room
        // for the hypervisor besides the capsule.
        let (payload, machine, expected_id) = if scenario.under_keel {
            let hypervisor = match scenario.bad_image {
                None => self.hypervisor(manifest)?,
                Some(bad) => self.hypervisor_around_bad_image(scenario.name, manifest, bad)?,
            };
            (
                Payload::Hypervisor(hypervisor),
                Machine {
                    smp: scenario.smp.unwrap_or(2),
                    memory_mib: scenario.memory_mib.unwrap_or(1024),
                    cpu,
                },
                KEEL_SBI_ID,
            )
        } else {
            let boot = Boot {
                kernel,
                initrd: Some(initrd),
                append: build::DEFAULT_CMDLINE.to_string(),
            };
            (
                Payload::Native(boot),
                Machine {
                    smp: scenario.smp.unwrap_or(2),
                    memory_mib: scenario.memory_mib.unwrap_or(memory_mib),
                    cpu,
                },
                OPENSBI_SBI_ID,
            )
        };
        let mut command = qemu.command(&machine, &payload);
        if let Some(disk) = scenario.disk {
            let path = self.workspace.keel_dir().join(format!("{}-disk.img", scenario.name));
            match disk.stored_manifest {
                Some(stored) => {
                    let manifest = self.workspace.root.join("guests/manifests").join(format!("{stored}.toml"));
                    let defines = self.images()?.defines();
                    build::write_disk_with_image(self.workspace, &path, DISK_MIB, &manifest, &defines, disk.tampered)?;
                }
                None => {
                    if path.exists() {
                        fs::remove_file(&path).with_context(|| format!("cannot remove the old {}", path.display()))?;
                    }
                    qemu::ensure_disk_image(&path, DISK_MIB)?;
                }
            }
            command.args(qemu::disk_args(&path));
            if scenario.expect == Expect::DiskPersistence {
                let first = self.converse(scenario, &qemu_version, command, expected_id)?;
                check_disk_image(&path)?;
                let mut again = qemu.command(&machine, &payload);
                again.args(qemu::disk_args(&path));
                let second = self.converse_with(scenario, "second-boot", &qemu_version, again, |console, timeouts| {
                    disk_second_boot(console, &first, timeouts)
                })?;
                return Ok(format!("{}; {second}", first.split(" | ").nth(1).unwrap_or(&first)));
            }
        }
        if scenario.expect == Expect::Network {
            let port = crate::guestnet::free_loopback_port()?;
            command.args(qemu::net_args(&[network::web_forward(port)]));
            return self.converse_with(scenario, "", &qemu_version, command, |console, timeouts| {
                network::drive_network(console, port, timeouts)
            });
        }
        self.converse(scenario, &qemu_version, command, expected_id)
    }

    /// The hostile test guest's flat binary (target/keel/hostile.bin, `${guests}/hostile.bin` in manifests), built
    /// once.
    fn hostile_guest(&mut self) -> Result<PathBuf> {
        let workspace = self.workspace;
        match self
            .hostile
            .get_or_insert_with(|| guests::build_hostile(workspace).map_err(|e| format!("{e:#}")))
        {
            Ok(binary) => Ok(binary.clone()),
            Err(error) => bail!("the hostile guest could not be built: {error}"),
        }
    }

    /// The SBI check guest, built once: the flat binary for native scenarios, or Keel around a
    /// generated manifest (as `run --kernel` writes it) whose boot capsule is that binary.
    fn run_sbi_check(&mut self, scenario: &Scenario) -> Result<String> {
        let host_ready = self
            .host_ready
            .get_or_insert_with(|| setup::ensure_host_tools().map_err(|e| format!("{e:#}")));
        if let Err(error) = host_ready {
            bail!("host setup failed: {error}");
        }
        let workspace = self.workspace;
        let binary = match self
            .sbi_check
            .get_or_insert_with(|| guests::build_sbi_check(workspace).map_err(|e| format!("{e:#}")))
        {
            Ok(binary) => binary.clone(),
            Err(error) => bail!("the SBI check guest could not be built: {error}"),
        };
        let boot = Boot {
            kernel: binary,
            initrd: None,
            append: build::DEFAULT_CMDLINE.to_string(),
        };
        // The capsule gets half the machine (64 MiB of 128); natively the guest gets what the capsule would.
        let (payload, memory_mib, expected_id) = if scenario.under_keel {
            if !self.hypervisors.contains_key(SBI_CHECK_HYPERVISOR) {
                let built = build_sbi_check_hypervisor(workspace, &boot).map_err(|e| format!("{e:#}"));
                self.hypervisors.insert(SBI_CHECK_HYPERVISOR, built);
            }
            match &self.hypervisors[SBI_CHECK_HYPERVISOR] {
                Ok(hypervisor) => (Payload::Hypervisor(hypervisor.clone()), 128, KEEL_SBI_ID),
                Err(error) => bail!("{error}"),
            }
        } else {
            (Payload::Native(boot), 64, OPENSBI_SBI_ID)
        };
        let machine = Machine {
            smp: scenario.smp.unwrap_or(2),
            memory_mib: scenario.memory_mib.unwrap_or(memory_mib),
            cpu: scenario.cpu.map(str::to_string),
        };
        let qemu = self.qemu(scenario.qemu)?;
        let qemu_version = qemu
            .version()
            .unwrap_or_else(|error| format!("unknown QEMU version ({error:#})"));
        let command = qemu.command(&machine, &payload);
        self.converse(scenario, &qemu_version, command, expected_id)
    }

    /// Starts QEMU, holds the scenario's conversation, and keeps the console log; on failure the
    /// last console lines are printed.
    fn converse(
        &mut self,
        scenario: &Scenario,
        qemu_version: &str,
        command: Command,
        expected_id: &str,
    ) -> Result<String> {
        self.converse_with(scenario, "", qemu_version, command, |console, timeouts| match scenario.expect {
            Expect::Shell(extras) => drive(console, expected_id, extras, timeouts),
            Expect::Refusal(text) => expect_refusal(console, text, timeouts),
            Expect::GuestChecks => guests::expect_sbi_check_report(
                console,
                expected_id,
                timeouts.boot,
                timeouts.command,
                timeouts.power_off,
            ),
            Expect::Capsules(capsules) => drive_capsules(console, capsules, timeouts),
            Expect::Manage => drive_management(console, timeouts),
            Expect::Hostile => drive_hostile(console, timeouts),
            Expect::Scrub => drive_scrub(console, timeouts),
            Expect::DiskPersistence => disk_first_boot(console, timeouts),
            Expect::Network => bail!("the network scenario needs its port forward: see `ScenarioContext::run`"),
        })
    }

    /// Starts QEMU with `command`, holds the conversation `talk`, and keeps the console log (named after the
    /// scenario, plus `-part` when a scenario boots more than once); on failure the last lines are shown.
    fn converse_with(
        &mut self,
        scenario: &Scenario,
        part: &str,
        qemu_version: &str,
        command: Command,
        talk: impl FnOnce(&mut Console, &Timeouts) -> Result<String>,
    ) -> Result<String> {
        println!("    {qemu_version}");
        println!("    {}", shell::describe(&command));
        let timeouts = Timeouts::for_scenario(scenario);
        let mut console = Console::spawn(command)?;
        let result = talk(&mut console, &timeouts);
        let suffix = if part.is_empty() { String::new() } else { format!("-{part}") };
        let log = self
            .workspace
            .keel_dir()
            .join("test-logs")
            .join(format!("{}{suffix}.log", scenario.name));
        let _ = fs::create_dir_all(log.parent().unwrap_or(&log))
            .and_then(|()| fs::write(&log, console.transcript()));
        match result {
            Ok(summary) => Ok(summary),
            Err(error) => {
                println!(
                    "    --- last 60 console lines ({} has all) ---",
                    log.display()
                );
                for line in console.tail(60).lines() {
                    println!("    | {line}");
                }
                println!("    ---");
                Err(error)
            }
        }
    }
}

/// The key of the Keel build around the SBI check guest among the context's hypervisors.
const SBI_CHECK_HYPERVISOR: &str = "sbi-check";

/// Keel with the SBI check guest as its only capsule, through the manifest `run --kernel` generates,
/// copied to target/keel/keel-sbi-check.elf so later builds do not replace it.
fn build_sbi_check_hypervisor(workspace: &Workspace, boot: &Boot) -> Result<PathBuf> {
    let manifest = build::write_generated_manifest(workspace, boot, 128)?;
    let built = build::build_dmfs_and_hypervisor(workspace, &manifest, &[])?;
    let copy = workspace.keel_dir().join("keel-sbi-check.elf");
    fs::copy(&built, &copy)
        .with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

struct Timeouts {
    boot: Duration,
    command: Duration,
    power_off: Duration,
}

impl Timeouts {
    /// Generous next to the native baselines (Debian 6.12 is up in ~4-8 s, the small kernel in ~1 s):
    /// these catch hangs, they do not measure speed.
    fn for_scenario(scenario: &Scenario) -> Timeouts {
        let boot = match (scenario.kernel, scenario.under_keel) {
            (Kernel::Debian, true) => 300,
            (Kernel::Debian, false) => 120,
            (Kernel::Small, true) => 180,
            (Kernel::Small, false) => 60,
            // Up to the guest's first line; its checks then get `command` to finish.
            (Kernel::SbiCheck, true) => 60,
            (Kernel::SbiCheck, false) => 30,
        };
        Timeouts {
            boot: Duration::from_secs(boot),
            command: Duration::from_secs(if scenario.under_keel { 60 } else { 30 }),
            power_off: Duration::from_secs(60),
        }
    }
}

/// The console conversation every scenario has; each step's error says which step failed.
fn drive(
    console: &mut Console,
    expected_sbi_id: &str,
    extras: &[Extra],
    timeouts: &Timeouts,
) -> Result<String> {
    let started = Instant::now();
    console
        .expect(READY, timeouts.boot)
        .context("boot to the init-ready line")?;
    let booted = started.elapsed();
    console
        .expect(PROMPT, timeouts.command)
        .context("shell prompt")?;

    shell_answers(console, "echo $((6*7))", "42", "shell arithmetic `echo $((6*7))`", timeouts)?;

    let sbi_line = shell_line(
        console,
        "dmesg | grep -i 'SBI implementation ID'",
        "the kernel's `SBI implementation ID=` line",
        timeouts,
        |line| sbi_implementation_id(line).is_some(),
    )
    .context("SBI implementation ID in dmesg")?;
    let found_id = sbi_implementation_id(&sbi_line).unwrap_or_default();
    if found_id != expected_sbi_id {
        bail!("SBI implementation ID is {found_id}, expected {expected_sbi_id} (line: {sbi_line})");
    }

    let isa = shell_line(console, "cat /proc/cpuinfo", "an `isa : rv64...` line", timeouts, |line| {
        line.starts_with("isa") && line.contains("rv64")
    })
    .context("/proc/cpuinfo names the CPU")?;

    let mut notes = Vec::new();
    for extra in extras {
        notes.push(run_extra(console, *extra, timeouts)?);
    }

    console.send_line("poweroff")?;
    let status = console
        .wait_exit(timeouts.power_off)
        .context("poweroff ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff, expected exit status 0");
    }
    let isa = isa.split(':').nth(1).unwrap_or("").trim().to_string();
    let mut summary = format!(
        "init ready after {:.1} s; SBI ID {found_id}; {isa}",
        booted.as_secs_f64()
    );
    for note in notes {
        summary.push_str("; ");
        summary.push_str(&note);
    }
    Ok(summary)
}

/// Types `command`, expects a line that is exactly `answer`, then the next prompt; errors name `step`.
fn shell_answers(console: &mut Console, command: &str, answer: &str, step: &str, timeouts: &Timeouts) -> Result<()> {
    shell_line(console, command, &format!("a line `{answer}`"), timeouts, |line| line.trim() == answer)
        .with_context(|| step.to_string())?;
    Ok(())
}

/// Types `command`, waits for the first line `accept` takes (described as `what`), then for the next prompt;
/// returns that line.
fn shell_line(
    console: &mut Console,
    command: &str,
    what: &str,
    timeouts: &Timeouts,
    accept: impl Fn(&str) -> bool,
) -> Result<String> {
    console.send_line(command)?;
    let line = console.expect_line(what, timeouts.command, accept)?;
    console
        .expect(PROMPT, timeouts.command)
        .with_context(|| format!("prompt after `{command}`"))?;
    Ok(line)
}

/// One extra check, run at the shell prompt; leaves the console at a fresh prompt.
fn run_extra(console: &mut Console, extra: Extra, timeouts: &Timeouts) -> Result<String> {
    match extra {
        Extra::Cpus(expected) => {
            let line = shell_line(console, "nproc", "a number from `nproc`", timeouts, |line| {
                line.trim().parse::<u32>().is_ok()
            })
            .context("`nproc`")?;
            let cpus: u32 = line.trim().parse().unwrap_or(0);
            if cpus != expected {
                bail!("`nproc` says {cpus} CPUs, expected {expected}");
            }
            Ok(format!("{cpus} CPUs online"))
        }
        Extra::Paging(expected) => {
            let line = shell_line(
                console,
                "grep -m1 '^mmu' /proc/cpuinfo",
                "the `mmu` line of /proc/cpuinfo",
                timeouts,
                |line| line.starts_with("mmu"),
            )
            .context("`grep mmu /proc/cpuinfo`")?;
            let mode = line.split(':').nth(1).map(str::trim).unwrap_or_default().to_string();
            if mode != expected {
                bail!("the kernel pages with `{mode}`, expected {expected}");
            }
            Ok(format!("paging {mode}"))
        }
        Extra::Gigapages(expected) => {
            let transcript = console.transcript();
            let report = transcript
                .lines()
                .find(|line| line.contains("capsule 1 'boot': G-stage tables use"))
                .context("Keel's G-stage report for the boot capsule")?;
            let wanted = format!("({expected} GiB of RAM in gigapages)");
            if !report.contains(&wanted) {
                bail!("Keel's G-stage report `{}` does not say {wanted}", report.trim());
            }
            Ok(format!("{expected} GiB in gigapages"))
        }
        Extra::Reboot => {
            let started = Instant::now();
            console.send_line("reboot")?;
            console
                .expect(READY, timeouts.boot)
                .context("`reboot`: the capsule comes back to the init-ready line")?;
            console
                .expect(PROMPT, timeouts.command)
                .context("shell prompt after reboot")?;
            shell_answers(console, "echo rebooted-$((1+1))", "rebooted-2", "shell after reboot", timeouts)?;
            Ok(format!(
                "rebooted to a shell in {:.1} s",
                started.elapsed().as_secs_f64()
            ))
        }
        Extra::StartFromDisk => {
            let list = run_in_boot(console, "keel list", timeouts.command)?;
            if !list.iter().any(|line| line.contains("stored") && line.contains("on-disk")) {
                bail!("`keel list` does not show the disk's capsule 'stored' as on-disk: {list:?}");
            }
            let started = Instant::now();
            console.send_line("keel start stored")?;
            console
                .expect_line("the stored capsule's init-ready line", timeouts.boot, |line| {
                    line.trim() == format!("[stored] {READY}")
                })
                .context("`keel start stored` boots the capsule from the disk's image")?;
            let booted = started.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs(1));
            let stop = run_in(console, "boot", "keel stop stored", timeouts.command)?;
            if stop.last().map(String::as_str) != Some("exit status 0") {
                bail!("`keel stop stored` failed: {stop:?}");
            }
            Ok(format!("capsule from the disk's signed image started ({booted:.1} s to init) and stopped"))
        }
        Extra::DiskImageRefused => {
            let start = run_in_boot(console, "keel start stored", timeouts.command)?;
            let refused = start.iter().any(|line| line.contains("refused") && line.contains("signature does not verify"));
            if !refused || start.last().map(String::as_str) == Some("exit status 0") {
                bail!("`keel start stored` from an altered image was not refused for its signature: {start:?}");
            }
            shell_answers(console, "echo alive-$((3+4))", "alive-7", "shell after the refusal", timeouts)?;
            Ok("the altered image on the disk was refused; the boot capsule runs on".to_string())
        }
        Extra::ForeignAccess => {
            // 0x4000_0000 is neither the capsule's RAM (0x8000_0000..) nor one of its devices.
            console.send_line("devmem 0x40000000 32; echo devmem-status-$?")?;
            console
                .expect_line("Keel's log line about the access", timeouts.command, |line| {
                    line.contains("[keel") && line.contains("0x40000000") && line.contains("injecting an access fault")
                })
                .context("Keel reports the foreign access")?;
            let line = console
                .expect_line("`devmem-status-N`", timeouts.command, |line| {
                    line.trim().starts_with("devmem-status-")
                })
                .context("read of foreign memory with devmem")?;
            let status = line.trim().trim_start_matches("devmem-status-").to_string();
            // 139 = 128 + SIGSEGV: RISC-V Linux signals a load access fault in user mode with SIGSEGV.
            if status != "139" {
                bail!("devmem of foreign memory ended with status {status}, expected 139 (SIGSEGV from the injected access fault)");
            }
            console
                .expect(PROMPT, timeouts.command)
                .context("prompt after foreign access")?;
            shell_answers(console, "echo still-$((2*3))", "still-6", "shell after foreign access", timeouts)?;
            Ok("foreign access faulted only the process (SIGSEGV)".to_string())
        }
        Extra::HardwareRng => {
            shell_answers(
                console,
                "cat /sys/class/misc/hw_random/rng_current",
                VIRTIO_RNG_NAME,
                "the current hardware RNG is virtio-rng",
                timeouts,
            )?;
            shell_answers(
                console,
                "head -c 16 /dev/hwrng | wc -c",
                "16",
                "16 bytes read from /dev/hwrng",
                timeouts,
            )?;
            Ok(format!("hardware RNG {VIRTIO_RNG_NAME} gave 16 bytes"))
        }
        Extra::VirtioConsole => {
            shell_answers(
                console,
                "cat /sys/class/tty/console/active",
                "hvc0",
                "the kernel's console is the virtio console hvc0",
                timeouts,
            )?;
            Ok("console on the virtio console hvc0".to_string())
        }
        Extra::NetworkCard => {
            shell_answers(
                console,
                "cat /sys/class/net/eth0/address",
                DEFAULT_MAC,
                "eth0 has the manifest's MAC address",
                timeouts,
            )?;
            Ok(format!("eth0 is the virtio-net card {DEFAULT_MAC}"))
        }
    }
}

/// Waits for the tagged init-ready line of every named capsule; capsules boot side by side, so in any order.
fn wait_all_ready<'n>(console: &mut Console, names: impl Iterator<Item = &'n str>, timeout: Duration) -> Result<()> {
    let mut waiting: Vec<String> = names.map(|name| format!("[{name}] {READY}")).collect();
    while !waiting.is_empty() {
        let line = console
            .expect_line(&format!("one of {waiting:?}"), timeout, |line| {
                waiting.iter().any(|ready| line.trim() == ready)
            })
            .with_context(|| format!("capsules boot to their init-ready lines; still waiting for {waiting:?}"))?;
        waiting.retain(|ready| line.trim() != ready);
    }
    Ok(())
}

/// Several capsules at once: all reach their shells; each, given console focus in turn, answers with lines
/// tagged with its name and reports its own vCPU count; `poweroff` in the boot capsule (focused again) ends QEMU.
fn drive_capsules(console: &mut Console, capsules: &[(&str, u32)], timeouts: &Timeouts) -> Result<String> {
    let started = Instant::now();
    wait_all_ready(console, capsules.iter().map(|(name, _)| *name), timeouts.boot)?;
    let all_ready = started.elapsed();
    // Let the shells print their prompts before typing.
    std::thread::sleep(Duration::from_secs(1));
    for (position, (name, vcpus)) in capsules.iter().enumerate() {
        if position > 0 {
            // Ctrl-] n: console input to the next capsule.
            console.send_bytes(b"\x1dn")?;
            console
                .expect_line(&format!("Keel's focus line naming {name}"), timeouts.command, |line| {
                    line.contains("console input now goes to capsule") && line.contains(&format!("'{name}'"))
                })
                .with_context(|| format!("focus moves to {name}"))?;
        }
        console.send_line(&format!("echo {name}-$((6*7)); nproc"))?;
        let answer = format!("[{name}] {name}-42");
        console
            .expect_line(&format!("`{answer}`"), timeouts.command, |line| line.trim() == answer)
            .with_context(|| format!("{name} answers its own shell"))?;
        let prefix = format!("[{name}] ");
        let cpus = console
            .expect_line(&format!("`{prefix}N` from nproc"), timeouts.command, |line| {
                line.trim().strip_prefix(&prefix).is_some_and(|rest| rest.trim().parse::<u32>().is_ok())
            })
            .with_context(|| format!("nproc in {name}"))?;
        let cpus: u32 = cpus.trim().rsplit(' ').next().unwrap_or("").parse().unwrap_or(0);
        if cpus != *vcpus {
            bail!("capsule {name} has {cpus} CPUs online, expected {vcpus}");
        }
    }
    // Back to the boot capsule (the first, capsule id 1), which powers the machine off.
    console.send_bytes(b"\x1d1")?;
    let boot = capsules.first().map_or("boot", |(name, _)| *name);
    console
        .expect_line("focus back on the boot capsule", timeouts.command, |line| {
            line.contains("console input now goes to capsule") && line.contains(&format!("'{boot}'"))
        })
        .context("focus returns to the boot capsule")?;
    console.send_line("poweroff")?;
    let status = console
        .wait_exit(timeouts.power_off)
        .context("poweroff in the boot capsule ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff, expected exit status 0");
    }
    Ok(format!(
        "{} capsules ready after {:.1} s; each answered in its own tagged lines with its vCPU count",
        capsules.len(),
        all_ready.as_secs_f64()
    ))
}

/// Types `command` into the focused capsule and returns the lines tagged `[capsule]` up to its marker line.
fn run_in(console: &mut Console, capsule: &str, command: &str, timeout: Duration) -> Result<Vec<String>> {
    let prefix = format!("[{capsule}] ");
    run_collecting(console, command, capsule, timeout, |line| {
        line.trim().strip_prefix(&prefix).map(str::to_string)
    })
}

/// Like [`run_in`] for the boot capsule while it may be the only capsule, whose lines are then not tagged.
fn run_in_boot(console: &mut Console, command: &str, timeout: Duration) -> Result<Vec<String>> {
    run_collecting(console, command, "boot", timeout, |line| {
        let line = line.trim();
        match line.strip_prefix("[boot] ") {
            Some(text) => Some(text.to_string()),
            None if !line.starts_with('[') => Some(line.to_string()),
            None => None,
        }
    })
}

/// Types `command` followed by an exit-status marker and collects the output lines `own` accepts (returning their
/// text without any tag) until the marker, which becomes the last line, `exit status N`.
fn run_collecting(
    console: &mut Console,
    command: &str,
    capsule: &str,
    timeout: Duration,
    own: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let marker = format!("end-of-{}", command.len());
    console.send_line(&format!("{command}; echo {marker}-$?"))?;
    let mut lines = Vec::new();
    loop {
        let line = console
            .expect_line(&format!("`{marker}-N` from {capsule}"), timeout, |line| own(line).is_some())
            .with_context(|| format!("`{command}` in {capsule}"))?;
        let text = own(&line).unwrap_or_default();
        if let Some(status) = text.strip_prefix(&format!("{marker}-")) {
            lines.push(format!("exit status {status}"));
            return Ok(lines);
        }
        lines.push(text);
    }
}

/// Where the capsules' disks lie on the machine's disk (guests/manifests/disks.toml), and what each writes.
const BOOT_DISK_START: u64 = 64 << 20;
const NEIGHBOUR_DISK_START: u64 = 128 << 20;
const DISK_SECTORS: u64 = (64 << 20) / 512;
const NEIGHBOUR_MARK: &str = "NEIGHBOUR-SECRET-42";
/// The sector of its own disk where `neighbour` writes its mark.
const NEIGHBOUR_MARK_SECTOR: u64 = 1000;

/// The one line of `command`'s output (in the boot capsule) that `pick` accepts, and a zero exit status.
fn boot_answer(console: &mut Console, command: &str, timeouts: &Timeouts, pick: impl Fn(&str) -> bool) -> Result<String> {
    let lines = run_in_boot(console, command, timeouts.boot)?;
    if lines.last().map(String::as_str) != Some("exit status 0") {
        bail!("`{command}` failed: {lines:?}");
    }
    lines
        .iter()
        .find(|line| pick(line))
        .cloned()
        .with_context(|| format!("`{command}` printed no expected line: {lines:?}"))
}

/// The first boot of keel-disk; returns the payload's checksum as its summary's first part.
fn disk_first_boot(console: &mut Console, timeouts: &Timeouts) -> Result<String> {
    console.expect(READY, timeouts.boot).context("boot to the init-ready line")?;
    console.expect(PROMPT, timeouts.command).context("shell prompt")?;
    let size = boot_answer(console, "cat /sys/block/vda/size", timeouts, |l| l.trim().parse::<u64>().is_ok())?;
    if size.trim() != DISK_SECTORS.to_string() {
        bail!("the boot capsule's disk has {} sectors, expected {DISK_SECTORS} (its 64 MiB extent)", size.trim());
    }
    let serial = boot_answer(console, "echo serial=$(cat /sys/block/vda/serial)", timeouts, |l| l.starts_with("serial="))?;
    let serial = serial.trim_start_matches("serial=");
    if serial.trim() != "data" {
        bail!("the disk's serial is {:?}, expected the manifest's disk name \"data\"", serial.trim());
    }
    let sum = boot_answer(
        console,
        "mke2fs -q /dev/vda && mkdir -p /mnt && mount -t ext2 /dev/vda /mnt && head -c 1048576 /dev/hwrng > /mnt/payload && sha256sum /mnt/payload && umount /mnt",
        timeouts,
        |l| l.ends_with("/mnt/payload") && l.len() > 64,
    )?;
    let sum = sum.split_whitespace().next().unwrap_or_default().to_string();
    let past_end = boot_answer(
        console,
        &format!("dd if=/dev/vda of=/dev/null bs=512 skip={DISK_SECTORS} count=1 2>&1"),
        timeouts,
        |l| l.contains("records in"),
    )?;
    if !past_end.starts_with("0+0") {
        bail!("reading past the end of the boot capsule's disk gave {past_end:?}, expected nothing (0+0 records)");
    }

    // The neighbour writes its mark and must not see the boot capsule's file system.
    let list = run_in_boot(console, "keel start neighbour", timeouts.command)?;
    if list.last().map(String::as_str) != Some("exit status 0") {
        bail!("`keel start neighbour` failed: {list:?}");
    }
    wait_all_ready(console, ["neighbour"].into_iter(), timeouts.boot)?;
    console.send_bytes(b"\x1d2")?;
    console
        .expect_line("focus on neighbour", timeouts.command, |line| line.contains("console input now goes to capsule 2"))
        .context("focus moves to neighbour")?;
    let seen = run_in(
        console,
        "neighbour",
        &format!(
            "echo size=$(cat /sys/block/vda/size) fs=$(grep -c lost+found /dev/vda); printf {NEIGHBOUR_MARK} | dd of=/dev/vda bs=512 seek={NEIGHBOUR_MARK_SECTOR} conv=sync 2>/dev/null; sync; true"
        ),
        timeouts.boot,
    )?;
    if !seen.iter().any(|l| l.trim() == format!("size={DISK_SECTORS} fs=0")) {
        bail!("the neighbour's disk should be {DISK_SECTORS} sectors without the boot capsule's file system: {seen:?}");
    }
    console.send_bytes(b"\x1d1")?;
    console
        .expect_line("focus back on boot", timeouts.command, |line| line.contains("console input now goes to capsule 1"))
        .context("focus moves back to the boot capsule")?;
    let found = run_in(console, "boot", &format!("echo marks=$(grep -c {NEIGHBOUR_MARK} /dev/vda)"), timeouts.boot)?;
    if !found.iter().any(|l| l.trim() == "marks=0") {
        bail!("the boot capsule's disk shows the neighbour's mark: {found:?}");
    }
    console.send_line("poweroff")?;
    let status = console.wait_exit(timeouts.power_off).context("poweroff ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff");
    }
    Ok(format!("{sum} | payload written; disks {DISK_SECTORS} sectors each, neither sees the other's"))
}

/// The disk image after the first boot: the boot capsule's ext2 superblock at its extent, the neighbour's mark at
/// its own.
fn check_disk_image(path: &std::path::Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 2];
    file.seek(SeekFrom::Start(BOOT_DISK_START + 1080))?;
    file.read_exact(&mut magic)?;
    if magic != [0x53, 0xef] {
        bail!("no ext2 superblock at the boot capsule's extent (offset {BOOT_DISK_START:#x} of the disk image)");
    }
    let mut mark = vec![0u8; NEIGHBOUR_MARK.len()];
    file.seek(SeekFrom::Start(NEIGHBOUR_DISK_START + NEIGHBOUR_MARK_SECTOR * 512))?;
    file.read_exact(&mut mark)?;
    if mark != NEIGHBOUR_MARK.as_bytes() {
        bail!("the neighbour's mark is not at its extent's sector {NEIGHBOUR_MARK_SECTOR} in the disk image");
    }
    Ok(())
}

/// The second boot of keel-disk, on the same disk image: the file is there with the first boot's checksum.
fn disk_second_boot(console: &mut Console, first: &str, timeouts: &Timeouts) -> Result<String> {
    let expected = first.split(" | ").next().unwrap_or_default();
    console.expect(READY, timeouts.boot).context("second boot to the init-ready line")?;
    console.expect(PROMPT, timeouts.command).context("shell prompt")?;
    let sum = boot_answer(
        console,
        "mkdir -p /mnt && mount -t ext2 /dev/vda /mnt && sha256sum /mnt/payload && umount /mnt",
        timeouts,
        |l| l.ends_with("/mnt/payload") && l.len() > 64,
    )?;
    let sum = sum.split_whitespace().next().unwrap_or_default();
    if sum != expected {
        bail!("after a power-off the file's checksum is {sum}, not {expected} as written");
    }
    console.send_line("poweroff")?;
    let status = console.wait_exit(timeouts.power_off).context("poweroff ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff");
    }
    Ok(format!("after a power-off and a new boot the file's sha256 matches ({})", &sum[..12.min(sum.len())]))
}

/// The free-memory figure in `keel list` output.
fn free_memory(lines: &[String]) -> Option<u64> {
    lines.iter().find_map(|line| {
        line.strip_prefix("free memory: ")?.strip_suffix(" KiB")?.trim().parse().ok()
    })
}

fn drive_management(console: &mut Console, timeouts: &Timeouts) -> Result<String> {
    wait_all_ready(console, ["boot", "alpha", "beta"].into_iter(), timeouts.boot)?;
    std::thread::sleep(Duration::from_secs(1));

    let list = run_in(console, "boot", "keel list", timeouts.command)?;
    for name in ["boot", "alpha", "beta"] {
        if !list.iter().any(|line| line.contains(name) && line.contains("running")) {
            bail!("`keel list` does not show {name} running: {list:?}");
        }
    }
    let stop = run_in(console, "boot", "keel stop beta", timeouts.command)?;
    if stop.last().map(String::as_str) != Some("exit status 0") {
        bail!("`keel stop beta` failed: {stop:?}");
    }
    let baseline = free_memory(&run_in(console, "boot", "keel list", timeouts.command)?)
        .context("`keel list` shows no free-memory line")?;

    const ROUNDS: usize = 20;
    let rounds = run_in(
        console,
        "boot",
        &format!(
            "for i in $(seq {ROUNDS}); do keel start beta >/dev/null && keel stop beta >/dev/null && keel list | grep 'free memory'; done"
        ),
        timeouts.boot,
    )?;
    let figures: Vec<u64> = rounds.iter().filter_map(|line| free_memory(std::slice::from_ref(line))).collect();
    if figures.len() != ROUNDS {
        bail!("expected {ROUNDS} stop/start rounds with a free-memory figure each, got {}: {rounds:?}", figures.len());
    }
    if let Some(different) = figures.iter().find(|&&figure| figure != baseline) {
        bail!("free memory after a stop/start round was {different} KiB, not the {baseline} KiB before: {figures:?}");
    }

    // A capsule without the right is refused.
    console.send_bytes(b"\x1d2")?;
    console
        .expect_line("focus on alpha", timeouts.command, |line| line.contains("console input now goes to capsule 2"))
        .context("focus moves to alpha")?;
    let denied = run_in(console, "alpha", "keel list", timeouts.command)?;
    if denied.last().map(String::as_str) != Some("exit status 1") {
        bail!("`keel list` in alpha (no manage right) did not fail: {denied:?}");
    }

    // alpha panics; the boot capsule keeps answering while alpha comes back.
    console.send_line("echo c > /proc/sysrq-trigger")?;
    console.send_bytes(b"\x1d1")?;
    console
        .expect_line("focus on boot", timeouts.command, |line| line.contains("console input now goes to capsule 1"))
        .context("focus returns to boot")?;
    let alive = run_in(console, "boot", "echo boot-alive-$((3*3))", timeouts.command)?;
    if !alive.iter().any(|line| line == "boot-alive-9") {
        bail!("the boot capsule did not answer while alpha panicked: {alive:?}");
    }
    console
        .expect_line("Keel restarting alpha", timeouts.boot, |line| {
            line.contains("[keel") && line.contains("'alpha' reboots")
        })
        .context("alpha's panic restarts it")?;
    let ready = format!("[alpha] {READY}");
    console
        .expect_line(&format!("`{ready}`"), timeouts.boot, |line| line.trim() == ready)
        .context("alpha boots again after its panic")?;

    console.send_line("poweroff")?;
    let status = console.wait_exit(timeouts.power_off).context("poweroff in the boot capsule ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff, expected exit status 0");
    }
    Ok(format!(
        "keel list/stop/start: {ROUNDS} rounds, free memory {baseline} KiB each time; alpha denied; alpha panicked and came back"
    ))
}

/// What the keel-hostile transcript shows (docs/hostile.md), read line by line.
#[derive(Debug, Default, PartialEq, Eq)]
struct HostileReport {
    /// N from `hostile: N cases; ...`.
    announced: Option<u32>,
    /// Cases from `hostile: ok <case>: ...` lines.
    ok: Vec<String>,
    /// Whole `hostile: FAILED ...` lines.
    failed: Vec<String>,
    /// (ok, failed) from `hostile: done, N ok, M failed`.
    done: Option<(u32, u32)>,
    /// Whether `canary: watching` came before the first case's line.
    canary_watching_before_cases: bool,
    /// Canary heartbeats between `hostile: spinning` and `hostile: spun`.
    heartbeats_during_spin: usize,
    /// Canary heartbeats after the done line.
    heartbeats_after_done: usize,
    /// `canary: CHANGED` and `canary: unexpected input` lines.
    canary_alarms: Vec<String>,
    /// Any line that mentions a panic.
    panics: Vec<String>,
    /// Keel's log lines about the hostile capsule's accesses outside its memory (loads, stores, fetches).
    foreign_access_logs: usize,
    /// Keel's log line about the hostile capsule using the management device without the right.
    management_refusal_logged: bool,
}

impl HostileReport {
    fn read(transcript: &str) -> HostileReport {
        let mut report = HostileReport::default();
        let mut spinning = false;
        for line in transcript.lines().map(str::trim) {
            if line.to_ascii_lowercase().contains("panic") {
                report.panics.push(line.to_string());
            }
            if line.contains("[keel") && line.contains("'hostile'") && line.contains("injecting an access fault") {
                report.foreign_access_logs += 1;
            }
            if line.contains("[keel") && line.contains("'hostile' used the management device without the right") {
                report.management_refusal_logged = true;
            }
            if line.contains("canary: watching") && report.ok.is_empty() && report.failed.is_empty() {
                report.canary_watching_before_cases = true;
            }
            if line.contains("canary: CHANGED") || line.contains("canary: unexpected input") {
                report.canary_alarms.push(line.to_string());
            }
            if line.contains("canary: intact round") {
                if spinning {
                    report.heartbeats_during_spin += 1;
                }
                if report.done.is_some() {
                    report.heartbeats_after_done += 1;
                }
            }
            let Some((_, text)) = line.split_once("hostile: ") else { continue };
            if let Some(rest) = text.strip_prefix("ok ") {
                report.ok.push(rest.split(':').next().unwrap_or(rest).to_string());
            } else if text.starts_with("FAILED ") {
                report.failed.push(line.to_string());
            } else if text == "spinning" {
                spinning = true;
            } else if text == "spun" {
                spinning = false;
            } else if let Some(rest) = text.strip_prefix("done, ") {
                let mut numbers = rest.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty());
                let ok = numbers.next().and_then(|n| n.parse().ok());
                let failed = numbers.next().and_then(|n| n.parse().ok());
                report.done = ok.zip(failed);
            } else if let Some((count, _)) = text.split_once(" cases") {
                report.announced = count.trim().parse().ok();
            }
        }
        report
    }

    /// Every case ok and announced, the canary untouched and alive throughout, Keel unshaken.
    fn verdict(&self) -> Result<String> {
        if !self.panics.is_empty() {
            bail!("a panic was reported: {:?}", self.panics);
        }
        if !self.failed.is_empty() {
            bail!("{} hostile case(s) failed: {:?}", self.failed.len(), self.failed);
        }
        let announced = self.announced.context("the hostile guest never announced its case count")?;
        let Some((ok, failed)) = self.done else { bail!("the hostile guest never printed its done line") };
        if failed != 0 || ok != announced || self.ok.len() != announced as usize {
            bail!(
                "the hostile guest announced {announced} cases, printed {} ok lines and `done, {ok} ok, {failed} failed`",
                self.ok.len()
            );
        }
        if !self.canary_alarms.is_empty() {
            bail!("the canary saw its memory or console touched: {:?}", self.canary_alarms);
        }
        if !self.canary_watching_before_cases {
            bail!("the hostile guest's first case ran before the canary watched its memory (`canary: watching`)");
        }
        if self.heartbeats_during_spin < 2 {
            bail!(
                "the canary printed {} heartbeat(s) while the hostile capsule spun 3 s with interrupts masked; the hart was not shared",
                self.heartbeats_during_spin
            );
        }
        if self.heartbeats_after_done < 2 {
            bail!("the canary stopped beating after the hostile capsule powered off");
        }
        if self.foreign_access_logs == 0 {
            bail!("Keel logged none of the hostile capsule's accesses outside its memory");
        }
        if !self.management_refusal_logged {
            bail!("Keel did not log the hostile capsule's use of the management device");
        }
        Ok(format!(
            "{announced} hostile cases ok; canary intact ({} heartbeats during the masked spin); {} foreign accesses logged",
            self.heartbeats_during_spin, self.foreign_access_logs
        ))
    }
}

/// The hostile capsule beside the canary: waits for the hostile guest's verdict and a few canary heartbeats after
/// it powered off, then reads the whole transcript. The canary never stops, so dropping the console ends QEMU.
fn drive_hostile(console: &mut Console, timeouts: &Timeouts) -> Result<String> {
    console
        .expect_line("the canary's first heartbeat", timeouts.boot, |line| line.contains("canary: intact round"))
        .context("the canary fills its RAM and starts watching")?;
    // The cases take a few seconds of floods and the 3 s masked spin, on a hart shared with the canary.
    console
        .expect_line("`hostile: done, N ok, M failed`", timeouts.boot, |line| line.contains("hostile: done, "))
        .context("the hostile guest runs all its cases")?;
    console
        .expect_line("Keel stopping the hostile capsule", timeouts.command, |line| {
            line.contains("[keel") && line.contains("'hostile'") && line.contains("stopped")
        })
        .context("the hostile capsule's power-off stops only it")?;
    for _ in 0..2 {
        console
            .expect_line("a canary heartbeat after the hostile capsule stopped", timeouts.command, |line| {
                line.contains("canary: intact round")
            })
            .context("the canary keeps running")?;
    }
    HostileReport::read(&console.transcript()).verdict()
}

/// A line `accept` takes: already in the transcript (a quick capsule may print it while the command that started
/// it is still being answered), or else the next one to arrive.
fn seen_or_awaited(
    console: &mut Console,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&str) -> bool,
) -> Result<String> {
    let transcript = console.transcript();
    match transcript.lines().map(str::trim).find(|line| accept(line)) {
        Some(line) => Ok(line.to_string()),
        None => console.expect_line(what, timeout, accept),
    }
}

/// Host-physical ranges from Keel's line `capsule 'NAME' RAM at host 0x..-0x.. 0x..-0x..`, the last such line for
/// the capsule.
fn host_ranges(transcript: &str, capsule: &str) -> Vec<(u64, u64)> {
    let needle = format!("capsule '{capsule}' RAM at host ");
    let Some(line) = transcript.lines().rev().find(|line| line.contains(&needle)) else { return Vec::new() };
    let (_, ranges) = line.split_once(&needle).unwrap_or_default();
    ranges
        .split_whitespace()
        .filter_map(|range| {
            let (start, end) = range.split_once("..")?;
            let parse = |text: &str| u64::from_str_radix(text.trim_start_matches("0x"), 16).ok();
            Some((parse(start)?, parse(end)?))
        })
        .collect()
}

/// Bytes that two range lists have in common.
fn overlap(first: &[(u64, u64)], second: &[(u64, u64)]) -> u64 {
    first
        .iter()
        .flat_map(|&(a_start, a_end)| {
            second.iter().map(move |&(b_start, b_end)| a_end.min(b_end).saturating_sub(a_start.max(b_start)))
        })
        .sum()
}

/// `writer` fills its RAM and powers off; `reader`, started after it is gone, must find only zeros, in host
/// memory that (Keel's allocation log shows) was the writer's.
fn drive_scrub(console: &mut Console, timeouts: &Timeouts) -> Result<String> {
    // The boot capsule runs alone, so its lines are not tagged yet.
    console.expect(READY, timeouts.boot).context("the boot capsule boots to its init-ready line")?;
    console.expect(PROMPT, timeouts.command).context("the boot capsule's shell prompt")?;

    let start = run_in_boot(console, "keel start writer", timeouts.command)?;
    if start.last().map(String::as_str) != Some("exit status 0") {
        bail!("`keel start writer` failed: {start:?}");
    }
    let wrote = seen_or_awaited(console, "the writer's pattern line", timeouts.command, |line| {
        line.contains("[writer] scrub: wrote pattern over")
    })
    .context("the writer fills its RAM")?;
    let mut stopped = false;
    for _ in 0..20 {
        let list = run_in_boot(console, "keel list", timeouts.command)?;
        if list.iter().any(|line| line.contains("writer") && line.contains("stopped")) {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !stopped {
        bail!("the writer did not stop after powering off");
    }

    let start = run_in_boot(console, "keel start reader", timeouts.command)?;
    if start.last().map(String::as_str) != Some("exit status 0") {
        bail!("`keel start reader` failed: {start:?}");
    }
    let read = seen_or_awaited(console, "the reader's count line", timeouts.command, |line| {
        line.contains("[reader] scrub: ") && line.contains(" nonzero")
    })
    .context("the reader checks its RAM")?;
    let transcript = console.transcript();
    let writer = host_ranges(&transcript, "writer");
    let reader = host_ranges(&transcript, "reader");
    let shared = overlap(&writer, &reader);
    if !read.trim_end().ends_with(" 0 nonzero") {
        bail!("the reader found the writer's data: {}", read.trim());
    }
    if shared == 0 {
        bail!(
            "the reader's host memory {reader:x?} does not overlap the writer's {writer:x?}: the test shows nothing"
        );
    }

    console.send_line("poweroff")?;
    let status = console.wait_exit(timeouts.power_off).context("poweroff in the boot capsule ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff, expected exit status 0");
    }
    let wrote = wrote.split_once("scrub: ").map_or(wrote.as_str(), |(_, text)| text).trim().to_string();
    let read = read.split_once("scrub: ").map_or(read.as_str(), |(_, text)| text).trim().to_string();
    Ok(format!("{wrote}; reader: {read}, in {} MiB of the writer's host memory", shared >> 20))
}

/// Keel must refuse to run with a message containing `text`, and QEMU must exit non-zero.
fn expect_refusal(console: &mut Console, text: &str, timeouts: &Timeouts) -> Result<String> {
    let line = console
        .expect_line(&format!("Keel's refusal containing {text:?}"), timeouts.boot, |line| {
            line.contains(text)
        })
        .context("Keel's refusal message")?;
    let status = console
        .wait_exit(timeouts.power_off)
        .context("QEMU stops after the refusal")?;
    if status.success() {
        bail!("QEMU exited with status 0 after the refusal; a failure status was expected");
    }
    Ok(format!("refused ({status}): {}", line.trim()))
}

/// The value in a kernel line like `[    0.000000] SBI implementation ID=0x1 Version=0x10001`.
fn sbi_implementation_id(line: &str) -> Option<String> {
    let (_, after) = line.split_once("SBI implementation ID=")?;
    let id = after.split_whitespace().next()?;
    id.starts_with("0x").then(|| id.to_string())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn sbi_implementation_id_is_read_from_the_kernel_line() {
        let line = "[    0.000000] SBI implementation ID=0x4b45454c Version=0x10000";
        assert_eq!(sbi_implementation_id(line).as_deref(), Some(KEEL_SBI_ID));
        assert_eq!(
            sbi_implementation_id("SBI implementation ID=0x1 Version=0x10001").as_deref(),
            Some("0x1")
        );
        // The typed command echoes back without a value; it must not count as the answer.
        assert_eq!(
            sbi_implementation_id("keel-guest# dmesg | grep -i 'SBI implementation ID'"),
            None
        );
        assert_eq!(sbi_implementation_id("SBI implementation ID="), None);
    }

    #[test]
    fn filters_select_by_substring() {
        assert!(selected("native-small", &[]));
        assert!(selected("native-small", &["small".to_string()]));
        assert!(!selected(
            "keel-debian",
            &["small".to_string(), "qemu10".to_string()]
        ));
    }

    #[test]
    fn scenario_names_are_unique_and_cover_both_kernels_and_qemus() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|scenario| scenario.name).collect();
        names.push(HOST_TESTS);
        names.push(FUZZ);
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        assert!(SCENARIOS
            .iter()
            .any(|s| s.under_keel && s.kernel == Kernel::Debian));
        assert!(SCENARIOS
            .iter()
            .any(|s| s.under_keel && s.qemu == QemuVersion::Backports));
        assert!(SCENARIOS
            .iter()
            .any(|s| !s.under_keel && s.kernel == Kernel::Debian));
    }

    /// The whole conversation against a fake guest: a shell script that answers like busybox would.
    #[test]
    fn drive_passes_against_a_well_behaved_fake_guest() {
        let script = r#"
            echo "[    0.0] SBI implementation ID=0x1 Version=0x10001"
            echo "keel-guest: init ready"
            while printf 'keel-guest# ' && read -r line; do
              echo "$line"
              case "$line" in
                'echo $((6*7))') echo 42 ;;
                dmesg*) echo "[    0.0] SBI implementation ID=0x1 Version=0x10001" ;;
                'cat /proc/cpuinfo') printf 'processor\t: 0\nisa\t\t: rv64imafdch\n' ;;
                poweroff) exit 0 ;;
              esac
            done
        "#;
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let mut console = Console::spawn(command).unwrap();
        let timeouts = Timeouts {
            boot: Duration::from_secs(10),
            command: Duration::from_secs(10),
            power_off: Duration::from_secs(10),
        };
        let summary = drive(&mut console, OPENSBI_SBI_ID, &[], &timeouts).unwrap();
        assert!(summary.contains("rv64imafdch"), "{summary}");

        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let mut console = Console::spawn(command).unwrap();
        let error = drive(&mut console, KEEL_SBI_ID, &[], &timeouts).unwrap_err();
        assert!(
            format!("{error:#}").contains("SBI implementation ID is 0x1, expected 0x4b45454c"),
            "{error:#}"
        );
    }

    #[test]
    fn drive_names_the_failing_step() {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "echo 'keel-guest: init ready'; printf 'keel-guest# '; read -r line; echo 41; sleep 5",
        ]);
        let mut console = Console::spawn(command).unwrap();
        let timeouts = Timeouts {
            boot: Duration::from_secs(10),
            command: Duration::from_millis(500),
            power_off: Duration::from_secs(1),
        };
        let error = drive(&mut console, OPENSBI_SBI_ID, &[], &timeouts).unwrap_err();
        assert!(
            format!("{error:#}").contains("shell arithmetic `echo $((6*7))`"),
            "{error:#}"
        );
    }

    #[test]
    fn extras_check_cpus_and_foreign_access() {
        let script = r#"
            echo "keel-guest: init ready"
            while printf 'keel-guest# ' && read -r line; do
              case "$line" in
                'echo $((6*7))') echo 42 ;;
                dmesg*) echo "[    0.0] SBI implementation ID=0x4b45454c Version=0x100" ;;
                'cat /proc/cpuinfo') printf 'isa\t\t: rv64imafdc\n' ;;
                nproc) echo 2 ;;
                devmem*) echo "[keel h0] WARN  capsule 'boot' vCPU 0: load of 4 bytes at 0x40000000 (pc 0x1) is outside its memory and devices; injecting an access fault"; echo devmem-status-139 ;;
                'echo still-$((2*3))') echo still-6 ;;
                poweroff) exit 0 ;;
              esac
            done
        "#;
        let timeouts = Timeouts {
            boot: Duration::from_secs(10),
            command: Duration::from_secs(10),
            power_off: Duration::from_secs(10),
        };
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let mut console = Console::spawn(command).unwrap();
        let summary = drive(
            &mut console,
            KEEL_SBI_ID,
            &[Extra::Cpus(2), Extra::ForeignAccess],
            &timeouts,
        )
        .unwrap();
        assert!(summary.contains("2 CPUs online"), "{summary}");
        assert!(summary.contains("SIGSEGV"), "{summary}");

        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let mut console = Console::spawn(command).unwrap();
        let error = drive(&mut console, KEEL_SBI_ID, &[Extra::Cpus(4)], &timeouts).unwrap_err();
        assert!(
            format!("{error:#}").contains("`nproc` says 2 CPUs, expected 4"),
            "{error:#}"
        );
    }

    #[test]
    fn hardware_rng_extra_needs_virtio_rng_and_sixteen_bytes() {
        let script = |rng: &str, count: &str| {
            format!(
                r#"
            echo "keel-guest: init ready"
            while printf 'keel-guest# ' && read -r line; do
              case "$line" in
                'echo $((6*7))') echo 42 ;;
                dmesg*) echo "[    0.0] SBI implementation ID=0x1 Version=0x10004" ;;
                'cat /proc/cpuinfo') printf 'isa\t\t: rv64imafdc\n' ;;
                'cat /sys/class/misc/hw_random/rng_current') echo {rng} ;;
                'head -c 16 /dev/hwrng | wc -c') echo '{count}' ;;
                poweroff) exit 0 ;;
              esac
            done
        "#
            )
        };
        let timeouts = Timeouts {
            boot: Duration::from_secs(10),
            command: Duration::from_secs(2),
            power_off: Duration::from_secs(10),
        };
        let run = |script: String| {
            let mut command = Command::new("sh");
            command.args(["-c", &script]);
            let mut console = Console::spawn(command).unwrap();
            drive(&mut console, OPENSBI_SBI_ID, &[Extra::HardwareRng], &timeouts)
        };
        let summary = run(script("virtio_rng.0", "      16")).unwrap();
        assert!(summary.contains("virtio_rng.0 gave 16 bytes"), "{summary}");
        let error = run(script("none", "16")).unwrap_err();
        assert!(format!("{error:#}").contains("the current hardware RNG is virtio-rng"), "{error:#}");
        let error = run(script("virtio_rng.0", "0")).unwrap_err();
        assert!(format!("{error:#}").contains("16 bytes read from /dev/hwrng"), "{error:#}");
    }

    #[test]
    fn refusal_needs_the_message_and_a_failure_status() {
        let timeouts = Timeouts {
            boot: Duration::from_secs(5),
            command: Duration::from_secs(5),
            power_off: Duration::from_secs(5),
        };
        let mut command = Command::new("sh");
        command.args(["-c", "echo '[keel] FATAL: no way'; exit 1"]);
        let mut console = Console::spawn(command).unwrap();
        assert!(expect_refusal(&mut console, "no way", &timeouts).is_ok());

        let mut command = Command::new("sh");
        command.args(["-c", "echo '[keel] FATAL: no way'; exit 0"]);
        let mut console = Console::spawn(command).unwrap();
        let error = expect_refusal(&mut console, "no way", &timeouts).unwrap_err();
        assert!(format!("{error:#}").contains("status 0"), "{error:#}");
    }

    fn hostile_transcript(spin_beats: usize, extra: &str) -> String {
        let mut text = String::from(
            "[keel h0] INFO  capsule 'canary' RAM at host 0x80800000..0x81800000\n\
             [canary] canary: watching 15000 KiB of RAM and the UART\n\
             [hostile] hostile: 3 cases; RAM 0x80000000..0x81000000, free 0x80260000..0x80ffe000\n\
             [keel h0] WARN  capsule 'hostile' vCPU 0: load of 4 bytes at 0x81000000 (pc 0x80200100) is outside its memory and devices; injecting an access fault\n\
             [hostile] hostile: ok load-store-past-ram: load and store access faults injected\n\
             [keel h0] WARN  capsule 1 'hostile' used the management device without the right to\n\
             [hostile] hostile: ok management-stop-canary-denied: stop command refused with DENIED\n\
             [canary] canary: intact round 1\n\
             [hostile] hostile: spinning\n",
        );
        for round in 0..spin_beats {
            text.push_str(&format!("[canary] canary: intact round {}\n", round + 2));
        }
        text.push_str("[hostile] hostile: spun\n[hostile] hostile: ok masked-spin: 3 s\n");
        text.push_str(extra);
        text.push_str(
            "[hostile] hostile: done, 3 ok, 0 failed\n\
             [keel h0] INFO  capsule 2 'hostile' shut down; stopped (restart policy never)\n\
             [canary] canary: intact round 20\n[canary] canary: intact round 21\n",
        );
        text
    }

    #[test]
    fn hostile_report_passes_a_clean_run() {
        let report = HostileReport::read(&hostile_transcript(4, ""));
        assert_eq!(report.announced, Some(3));
        assert_eq!(report.ok, ["load-store-past-ram", "management-stop-canary-denied", "masked-spin"]);
        assert_eq!(report.done, Some((3, 0)));
        assert!(report.canary_watching_before_cases);
        assert_eq!(report.heartbeats_during_spin, 4);
        assert_eq!(report.heartbeats_after_done, 2);
        assert_eq!(report.foreign_access_logs, 1);
        assert!(report.management_refusal_logged);
        let summary = report.verdict().unwrap();
        assert!(summary.contains("3 hostile cases ok"), "{summary}");
    }

    #[test]
    fn hostile_report_fails_on_each_problem() {
        let message = |spin_beats, extra: &str| {
            format!("{:#}", HostileReport::read(&hostile_transcript(spin_beats, extra)).verdict().unwrap_err())
        };
        assert!(message(0, "").contains("heartbeat"));
        let changed = message(4, "[canary] canary: CHANGED at 0x80300000 expected 0x1 found 0x2\n");
        assert!(changed.contains("canary saw"), "{changed}");
        assert!(message(4, "[canary] canary: unexpected input 0x41\n").contains("canary saw"));
        let failed = message(4, "[hostile] hostile: FAILED fetch-past-ram: 0 trap(s)\n");
        assert!(failed.contains("fetch-past-ram"), "{failed}");
        assert!(message(4, "[keel h0] ERROR panicked at run.rs:1\n").contains("panic"));
        // One case announced but never reported: the counts disagree.
        let missing = hostile_transcript(4, "").replace("hostile: 3 cases", "hostile: 4 cases");
        let missing = format!("{:#}", HostileReport::read(&missing).verdict().unwrap_err());
        assert!(missing.contains("announced 4 cases"), "{missing}");
        let late = hostile_transcript(4, "").replace(
            "[canary] canary: watching 15000 KiB of RAM and the UART\n",
            "",
        ) + "[canary] canary: watching 15000 KiB of RAM and the UART\n";
        let late = format!("{:#}", HostileReport::read(&late).verdict().unwrap_err());
        assert!(late.contains("before the canary watched"), "{late}");
        let unlogged = hostile_transcript(4, "").replace("injecting an access fault", "");
        assert!(HostileReport::read(&unlogged).verdict().is_err());
    }

    #[test]
    fn host_ranges_and_overlap() {
        let transcript = "[keel h0] INFO  capsule 'writer' RAM at host 0x82000000..0x83000000 0x84000000..0x84200000\n\
                          [keel h0] INFO  capsule 'reader' RAM at host 0x82e00000..0x84000000\n";
        let writer = host_ranges(transcript, "writer");
        assert_eq!(writer, [(0x8200_0000, 0x8300_0000), (0x8400_0000, 0x8420_0000)]);
        let reader = host_ranges(transcript, "reader");
        assert_eq!(reader, [(0x82e0_0000, 0x8400_0000)]);
        assert_eq!(overlap(&writer, &reader), 0x20_0000);
        assert_eq!(overlap(&writer, &[(0x9000_0000, 0x9100_0000)]), 0);
        assert!(host_ranges(transcript, "nobody").is_empty());
    }
}
