//! `cargo xtask test`: the host unit tests, then console-driven boot scenarios in QEMU, with a pass/fail count.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::build;
use crate::console::Console;
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QemuVersion {
    /// The machine's QEMU (7.2 on Debian 12), or `--qemu`.
    Machine,
    /// QEMU 10.0 unpacked from bookworm-backports.
    Backports,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    kernel: Kernel,
    under_keel: bool,
    qemu: QemuVersion,
}

/// Native boots come first: they check the images and the harness without the hypervisor, so a
/// failure in a Keel scenario after them points at Keel.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "native-debian",
        kernel: Kernel::Debian,
        under_keel: false,
        qemu: QemuVersion::Machine,
    },
    Scenario {
        name: "native-small",
        kernel: Kernel::Small,
        under_keel: false,
        qemu: QemuVersion::Machine,
    },
    Scenario {
        name: "native-small-qemu10",
        kernel: Kernel::Small,
        under_keel: false,
        qemu: QemuVersion::Backports,
    },
    Scenario {
        name: "keel-debian",
        kernel: Kernel::Debian,
        under_keel: true,
        qemu: QemuVersion::Machine,
    },
    Scenario {
        name: "keel-small",
        kernel: Kernel::Small,
        under_keel: true,
        qemu: QemuVersion::Machine,
    },
    Scenario {
        name: "keel-small-qemu10",
        kernel: Kernel::Small,
        under_keel: true,
        qemu: QemuVersion::Backports,
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
    shell::step("host unit tests: cargo test (workspace default members)");
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(&workspace.root).arg("test");
    let result = shell::run(command);
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

    fn run(&mut self, scenario: &Scenario) -> Result<String> {
        let images = self.images()?;
        let (kernel, manifest, memory_mib) = match scenario.kernel {
            Kernel::Debian => (images.debian_kernel.clone(), "default", 512),
            Kernel::Small => (images.small_kernel.clone(), "small", 256),
        };
        let initrd = images.initramfs.clone();
        let qemu = self.qemu(scenario.qemu)?;
        let qemu_version = qemu
            .version()
            .unwrap_or_else(|error| format!("unknown QEMU version ({error:#})"));
        // Natively the kernel gets what its capsule would get; under Keel the machine has room
        // for the hypervisor besides the capsule.
        let (payload, machine, expected_id) = if scenario.under_keel {
            let hypervisor = self.hypervisor(manifest)?;
            (
                Payload::Hypervisor(hypervisor),
                Machine {
                    smp: 2,
                    memory_mib: 1024,
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
                Machine { smp: 2, memory_mib },
                OPENSBI_SBI_ID,
            )
        };
        let command = qemu.command(&machine, &payload);
        println!("    {qemu_version}");
        println!("    {}", shell::describe(&command));
        let timeouts = Timeouts::for_scenario(scenario);
        let mut console = Console::spawn(command)?;
        let result = drive(&mut console, expected_id, &timeouts);
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
        };
        Timeouts {
            boot: Duration::from_secs(boot),
            command: Duration::from_secs(if scenario.under_keel { 60 } else { 30 }),
            power_off: Duration::from_secs(60),
        }
    }
}

/// The console conversation every scenario has; each step's error says which step failed.
fn drive(console: &mut Console, expected_sbi_id: &str, timeouts: &Timeouts) -> Result<String> {
    let started = Instant::now();
    console
        .expect(READY, timeouts.boot)
        .context("step 1/6: boot to the init-ready line")?;
    let booted = started.elapsed();
    console
        .expect(PROMPT, timeouts.command)
        .context("step 2/6: shell prompt")?;

    console.send_line("echo $((6*7))")?;
    console
        .expect_line("a line `42`", timeouts.command, |line| line.trim() == "42")
        .context("step 3/6: shell arithmetic `echo $((6*7))`")?;
    console
        .expect(PROMPT, timeouts.command)
        .context("step 3/6: prompt after arithmetic")?;

    console.send_line("dmesg | grep -i 'SBI implementation ID'")?;
    let sbi_line = console
        .expect_line(
            "the kernel's `SBI implementation ID=` line",
            timeouts.command,
            |line| sbi_implementation_id(line).is_some(),
        )
        .context("step 4/6: SBI implementation ID in dmesg")?;
    let found_id = sbi_implementation_id(&sbi_line).unwrap_or_default();
    if found_id != expected_sbi_id {
        bail!("step 4/6: SBI implementation ID is {found_id}, expected {expected_sbi_id} (line: {sbi_line})");
    }
    console
        .expect(PROMPT, timeouts.command)
        .context("step 4/6: prompt after dmesg")?;

    console.send_line("cat /proc/cpuinfo")?;
    let isa = console
        .expect_line("an `isa : rv64...` line", timeouts.command, |line| {
            line.starts_with("isa") && line.contains("rv64")
        })
        .context("step 5/6: /proc/cpuinfo names the CPU")?;
    console
        .expect(PROMPT, timeouts.command)
        .context("step 5/6: prompt after cpuinfo")?;

    console.send_line("poweroff")?;
    let status = console
        .wait_exit(timeouts.power_off)
        .context("step 6/6: poweroff ends QEMU")?;
    if !status.success() {
        bail!("step 6/6: QEMU exited with {status} after poweroff, expected exit status 0");
    }
    let isa = isa.split(':').nth(1).unwrap_or("").trim().to_string();
    Ok(format!(
        "init ready after {:.1} s; SBI ID {found_id}; {isa}",
        booted.as_secs_f64()
    ))
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
        let summary = drive(&mut console, OPENSBI_SBI_ID, &timeouts).unwrap();
        assert!(summary.contains("rv64imafdch"), "{summary}");

        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let mut console = Console::spawn(command).unwrap();
        let error = drive(&mut console, KEEL_SBI_ID, &timeouts).unwrap_err();
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
        let error = drive(&mut console, OPENSBI_SBI_ID, &timeouts).unwrap_err();
        assert!(format!("{error:#}").contains("step 3/6"), "{error:#}");
    }
}
