//! `cargo xtask test`: the host unit tests, then console-driven boot scenarios in QEMU, with a pass/fail count.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::build;
use crate::console::Console;
use crate::guests;
use crate::images::{self, Images};
use crate::qemu::{self, Boot, Machine, Payload, Qemu};
use crate::setup;
use crate::shell;
use crate::Workspace;

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
    /// `reboot` restarts the capsule, which comes back to a shell.
    Reboot,
    /// A load from a guest-physical address that is neither the capsule's RAM nor one of its devices: Keel logs it
    /// and injects an access fault, which Linux turns into SIGSEGV for the process; the shell and Keel carry on.
    ForeignAccess,
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
    expect: Expect,
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
            expect: Expect::Shell(&[]),
        }
    }
}

/// Native boots come first: they check the images and the harness without the hypervisor, so a
/// failure in a Keel scenario after them points at Keel.
const SCENARIOS: &[Scenario] = &[
    Scenario::new("native-debian", Kernel::Debian, false, QemuVersion::Machine),
    Scenario::new("native-small", Kernel::Small, false, QemuVersion::Machine),
    Scenario::new("native-small-qemu10", Kernel::Small, false, QemuVersion::Backports),
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
        expect: Expect::Shell(&[Extra::ForeignAccess]),
        ..Scenario::new("keel-debian", Kernel::Debian, true, QemuVersion::Machine)
    },
    Scenario {
        expect: Expect::Shell(&[Extra::Reboot]),
        ..Scenario::new("keel-small", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario::new("keel-small-qemu10", Kernel::Small, true, QemuVersion::Backports),
    // Two vCPUs on two harts: HSM start of the second vCPU, IPIs and remote fences between them.
    Scenario {
        manifest: Some("small-smp2"),
        expect: Expect::Shell(&[Extra::Cpus(2)]),
        ..Scenario::new("keel-small-smp2", Kernel::Small, true, QemuVersion::Machine)
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
        expect: Expect::Refusal("the bundled manifest image's signature does not verify against this build's public key"),
        ..Scenario::new("keel-refuses-tampered-image", Kernel::Small, true, QemuVersion::Machine)
    },
    Scenario {
        bad_image: Some(build::BadImage::Unsigned),
        expect: Expect::Refusal("the bundled manifest image is unsigned"),
        ..Scenario::new("keel-refuses-unsigned-image", Kernel::Small, true, QemuVersion::Machine)
    },
];

const HOST_TESTS: &str = "host-unit-tests";

/// Keel's SBI implementation ID ("KEEL" in ASCII) and OpenSBI's.
const KEEL_SBI_ID: &str = "0x4b45454c";
const OPENSBI_SBI_ID: &str = "0x1";
const PROMPT: &str = "keel-guest# ";
const READY: &str = "keel-guest: init ready";

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
    let scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .copied()
        .filter(|scenario| options.qemu && selected(scenario.name, &options.filters))
        .collect();
    if options.list_only {
        for name in std::iter::once(HOST_TESTS)
            .filter(|_| run_host)
            .chain(scenarios.iter().map(|s| s.name))
        {
            println!("{name}");
        }
        return Ok(true);
    }
    if !run_host && scenarios.is_empty() {
        bail!(
            "no test matches {:?}; `cargo xtask test --list` shows the names",
            options.filters
        );
    }

    let mut outcomes = Vec::new();
    if run_host {
        outcomes.push(host_tests(workspace));
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
    // The guest crate only builds as a binary for RISC-V, so it is not a default member; its portable library
    // (device-tree reading, decoding, report formatting) is tested on the host on its own.
    let mut guest_library = Command::new(&cargo);
    guest_library
        .current_dir(&workspace.root)
        .args(["test", "-p", "keel-sbi-check", "--lib"]);
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
        let defines = self.images()?.defines();
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
        let images = self.images()?;
        let (kernel, default_manifest, memory_mib) = match scenario.kernel {
            Kernel::Debian => (images.debian_kernel.clone(), "default", 512),
            Kernel::Small => (images.small_kernel.clone(), "small", 256),
            // Handled by `run_sbi_check` before the images are needed.
            Kernel::SbiCheck => bail!("the SBI check guest is not a Linux kernel from the images"),
        };
        let manifest = scenario.manifest.unwrap_or(default_manifest);
        let initrd = images.initramfs.clone();
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
        let command = qemu.command(&machine, &payload);
        self.converse(scenario, &qemu_version, command, expected_id)
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
        println!("    {qemu_version}");
        println!("    {}", shell::describe(&command));
        let timeouts = Timeouts::for_scenario(scenario);
        let mut console = Console::spawn(command)?;
        let result = match scenario.expect {
            Expect::Shell(extras) => drive(&mut console, expected_id, extras, &timeouts),
            Expect::Refusal(text) => expect_refusal(&mut console, text, &timeouts),
            Expect::GuestChecks => guests::expect_sbi_check_report(
                &mut console,
                expected_id,
                timeouts.boot,
                timeouts.command,
                timeouts.power_off,
            ),
            Expect::Capsules(capsules) => drive_capsules(&mut console, capsules, &timeouts),
            Expect::Manage => drive_management(&mut console, &timeouts),
        };
        let log = self
            .workspace
            .keel_dir()
            .join("test-logs")
            .join(format!("{}.log", scenario.name));
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

    console.send_line("dmesg | grep -i 'SBI implementation ID'")?;
    let sbi_line = console
        .expect_line(
            "the kernel's `SBI implementation ID=` line",
            timeouts.command,
            |line| sbi_implementation_id(line).is_some(),
        )
        .context("SBI implementation ID in dmesg")?;
    let found_id = sbi_implementation_id(&sbi_line).unwrap_or_default();
    if found_id != expected_sbi_id {
        bail!("SBI implementation ID is {found_id}, expected {expected_sbi_id} (line: {sbi_line})");
    }
    console
        .expect(PROMPT, timeouts.command)
        .context("prompt after dmesg")?;

    console.send_line("cat /proc/cpuinfo")?;
    let isa = console
        .expect_line("an `isa : rv64...` line", timeouts.command, |line| {
            line.starts_with("isa") && line.contains("rv64")
        })
        .context("/proc/cpuinfo names the CPU")?;
    console
        .expect(PROMPT, timeouts.command)
        .context("prompt after cpuinfo")?;

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
    console.send_line(command)?;
    console
        .expect_line(&format!("a line `{answer}`"), timeouts.command, |line| line.trim() == answer)
        .with_context(|| step.to_string())?;
    console
        .expect(PROMPT, timeouts.command)
        .with_context(|| format!("prompt after: {step}"))?;
    Ok(())
}

/// One extra check, run at the shell prompt; leaves the console at a fresh prompt.
fn run_extra(console: &mut Console, extra: Extra, timeouts: &Timeouts) -> Result<String> {
    match extra {
        Extra::Cpus(expected) => {
            console.send_line("nproc")?;
            let line = console
                .expect_line("a number from `nproc`", timeouts.command, |line| {
                    line.trim().parse::<u32>().is_ok()
                })
                .context("`nproc`")?;
            let cpus: u32 = line.trim().parse().unwrap_or(0);
            if cpus != expected {
                bail!("`nproc` says {cpus} CPUs, expected {expected}");
            }
            console
                .expect(PROMPT, timeouts.command)
                .context("prompt after nproc")?;
            Ok(format!("{cpus} CPUs online"))
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
    let marker = format!("end-of-{}", command.len());
    console.send_line(&format!("{command}; echo {marker}-$?"))?;
    let prefix = format!("[{capsule}] ");
    let mut lines = Vec::new();
    loop {
        let line = console
            .expect_line(&format!("`{prefix}{marker}-N`"), timeout, |line| line.trim().starts_with(&prefix))
            .with_context(|| format!("`{command}` in {capsule}"))?;
        let text = line.trim().trim_start_matches(&prefix).to_string();
        if let Some(status) = text.strip_prefix(&format!("{marker}-")) {
            lines.push(format!("exit status {status}"));
            return Ok(lines);
        }
        lines.push(text);
    }
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
}
