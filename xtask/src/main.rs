//! `cargo xtask`: the one entry point that sets up the host, fetches guest images, builds, runs and tests Keel.

mod apt;
mod bench;
mod build;
mod cache;
mod console;
mod cpio;
mod fuzz;
mod guestnet;
mod guests;
mod images;
mod keys;
mod manifest;
mod qemu;
mod setup;
mod shell;
mod tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::cache::Cache;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test the Keel hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the host tools Keel needs (QEMU, OpenSBI, cross compiler, kernel source) when missing.
    Setup,
    /// Fetch and build the guest images (Debian kernel, busybox initramfs, small kernel) into the cache.
    Images,
    /// Make the key pair that signs manifest images, in <cache>/keys (outside the repository).
    Keygen(KeygenArgs),
    /// Build the manifest file-system image and the hypervisor that embeds it.
    Build(BuildArgs),
    /// Build everything and boot it in QEMU with the console on this terminal.
    Run(RunArgs),
    /// Run the host unit tests and the QEMU boot scenarios.
    Test(TestArgs),
    /// Measure Keel against native runs side by side; tables on stdout, JSON in target/keel/bench/.
    Bench(BenchArgs),
    /// Run the fuzz targets in fuzz/ for a bounded time each; a table on stdout, JSON in target/fuzz/report.json.
    Fuzz(FuzzArgs),
}

#[derive(Args)]
struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Targets run at the same time (each is one single-threaded process).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
    /// Targets to run (default: all): dmfs_image, manifest, devicetree_host, devicetree_guest,
    /// insn_decode, sbi_dispatch, virtqueue.
    targets: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// One run of each variant and a short idle/busy interval: checks that everything works.
    #[arg(long)]
    quick: bool,
    /// Runs per variant for every benchmark (default: 5 for the small kernel and the bare-metal guest,
    /// 3 for the Debian kernel and the exit counts).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    reps: Option<u32>,
    /// Run only the benchmarks whose names contain NAME (repeatable): boot-small, boot-debian,
    /// sbi-mmio, exits-small, exits-debian, footprint, scale, io-disk, io-net.
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Seconds the exit benchmarks stay idle or busy (default 10; 4 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: Option<u64>,
    /// QEMU binary to run (default: qemu-system-riscv64 from PATH).
    #[arg(long, conflicts_with = "qemu_10")]
    qemu: Option<PathBuf>,
    /// Run on QEMU 10.0 from Debian's bookworm-backports (fetched and unpacked into the cache on first use) instead
    /// of the machine's QEMU.
    #[arg(long = "qemu-10")]
    qemu_10: bool,
}

#[derive(Args)]
struct KeygenArgs {
    /// Replace an existing key pair (hypervisors built with the old public key then refuse new images).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct BuildArgs {
    /// Manifest describing the capsules to bundle (default: guests/manifests/default.toml).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Development mode: leave the image unsigned and build a hypervisor that accepts unsigned images.
    #[arg(long)]
    unsigned_dev: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Manifest describing the capsules to bundle (default: guests/manifests/default.toml).
    #[arg(long, conflicts_with = "kernel")]
    manifest: Option<PathBuf>,
    /// Boot this kernel (a Linux Image or a flat binary) instead of a manifest's capsules.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel (default: "console=ttyS0 earlycon=sbi").
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// QEMU binary to run (default: qemu-system-riscv64 from PATH).
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Number of harts of the emulated machine.
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Memory of the emulated machine (QEMU syntax: 1G, 512M; a plain number is MiB).
    #[arg(long, default_value = "2G")]
    mem: String,
    /// QEMU `-cpu` model and properties, e.g. `rv64,sstc=false` (default: the machine's CPU).
    #[arg(long)]
    cpu: Option<String>,
    /// Boot the kernel directly on the firmware, without Keel: the baseline.
    #[arg(long)]
    native: bool,
    /// Development mode: leave the image unsigned and build a hypervisor that accepts unsigned images.
    #[arg(long, conflicts_with = "native")]
    unsigned_dev: bool,
    /// Leave out the machine's virtio-net NIC (by default it has one on QEMU user networking, 10.0.2.0/24: the
    /// uplink of the capsules' switch).
    #[arg(long)]
    no_nic: bool,
    /// Forward HOST_PORT on this machine's loopback to GUEST_ADDRESS:GUEST_PORT (TCP). Repeatable.
    #[arg(long, value_name = "HOST_PORT:GUEST_ADDRESS:GUEST_PORT", conflicts_with = "no_nic")]
    forward: Vec<qemu::Forward>,
    /// Give the machine this raw disk image (made, 256 MiB and sparse, if it does not exist): Keel's host disk,
    /// whose extents are the capsules' disks.
    #[arg(long)]
    disk: Option<PathBuf>,
}

#[derive(Args)]
struct TestArgs {
    /// Only run the host unit tests (`cargo test`).
    #[arg(long, conflicts_with = "qemu_only")]
    host_only: bool,
    /// Only run the QEMU boot scenarios.
    #[arg(long)]
    qemu_only: bool,
    /// QEMU binary for the scenarios that use the machine's QEMU (default: qemu-system-riscv64 from PATH).
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Run only the scenarios whose name contains one of these words.
    filters: Vec<String>,
}

/// Paths every subcommand needs: the repository, its target directory and the cache.
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
    pub cache: Cache,
}

impl Workspace {
    fn locate() -> Result<Workspace> {
        // xtask lives one level below the workspace root; this holds wherever cargo was started from.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ => root.join("target"),
        };
        Ok(Workspace {
            root,
            target,
            cache: Cache::locate()?,
        })
    }

    /// Where xtask keeps what it generates inside the target directory (.dmfs images, manifests).
    pub fn keel_dir(&self) -> PathBuf {
        self.target.join("keel")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    let workspace = Workspace::locate()?;
    match command {
        Command::Setup => {
            setup::ensure_host_tools()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Images => {
            setup::ensure_host_tools()?;
            let images = images::ensure(&workspace)?;
            images.describe();
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen(args) => {
            let dir = keys::key_dir(&workspace.cache)?;
            let pair = keys::generate(&dir, args.force)?;
            shell::step(&format!("made a new image signing key pair in {}", dir.display()));
            keys::describe(&pair);
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(args) => {
            setup::ensure_host_tools()?;
            let images = images::ensure(&workspace)?;
            let manifest = args
                .manifest
                .unwrap_or_else(|| build::default_manifest(&workspace));
            let signing = build::Signing::choose(&workspace, args.unsigned_dev)?;
            let hypervisor = build::build_dmfs_and_hypervisor_with(
                &workspace,
                &manifest,
                &images.defines(),
                &signing,
            )?;
            println!("==> hypervisor ready: {}", hypervisor.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(&workspace, args),
        Command::Fuzz(args) => {
            let options = fuzz::Options {
                seconds: args.seconds,
                targets: args.targets,
                jobs: usize::try_from(args.jobs).unwrap_or(1),
            };
            let no_crash = fuzz::run(&workspace, &options)?;
            Ok(if no_crash {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench(args) => {
            let options = bench::Options {
                quick: args.quick,
                reps: args.reps,
                only: args.only,
                qemu: match (args.qemu, args.qemu_10) {
                    (Some(binary), _) => bench::QemuChoice::Binary(binary),
                    (None, true) => bench::QemuChoice::Backports,
                    (None, false) => bench::QemuChoice::Machine,
                },
                seconds: args.seconds,
            };
            let all_ok = bench::run(&workspace, &options)?;
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Test(args) => {
            let options = tests::Options {
                host: !args.qemu_only,
                qemu: !args.host_only,
                qemu_binary: args.qemu,
                filters: args.filters,
                list_only: args.list,
            };
            let all_passed = tests::run(&workspace, &options)?;
            Ok(if all_passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn run(workspace: &Workspace, args: RunArgs) -> Result<ExitCode> {
    let machine = qemu::Machine {
        smp: args.smp,
        memory_mib: qemu::parse_memory_mib(&args.mem)?,
        cpu: args.cpu.clone(),
    };
    setup::ensure_host_tools()?;
    let qemu = match &args.qemu {
        Some(path) => qemu::Qemu::at(path),
        None => qemu::Qemu::system(),
    };

    // Either the user's own kernel, or the boot capsule of a manifest.
    let (manifest, boot) = match &args.kernel {
        Some(kernel) => {
            let boot = qemu::Boot {
                kernel: absolute(kernel)?,
                initrd: args.initrd.as_deref().map(absolute).transpose()?,
                append: args
                    .append
                    .clone()
                    .unwrap_or_else(|| build::DEFAULT_CMDLINE.to_string()),
            };
            (None, boot)
        }
        None => {
            let images = images::ensure(workspace)?;
            let manifest = args
                .manifest
                .clone()
                .unwrap_or_else(|| build::default_manifest(workspace));
            let boot = manifest::boot_capsule(&manifest, &images.defines())?;
            (Some((images, manifest)), boot)
        }
    };

    let kernel_to_load = if args.native {
        None
    } else {
        let signing = build::Signing::choose(workspace, args.unsigned_dev)?;
        let hypervisor = match &manifest {
            Some((images, manifest)) => build::build_dmfs_and_hypervisor_with(
                workspace,
                manifest,
                &images.defines(),
                &signing,
            )?,
            None => {
                let generated =
                    build::write_generated_manifest(workspace, &boot, machine.memory_mib)?;
                build::build_dmfs_and_hypervisor_with(workspace, &generated, &[], &signing)?
            }
        };
        Some(hypervisor)
    };

    let mut command = match &kernel_to_load {
        Some(hypervisor) => qemu.command(&machine, &qemu::Payload::Hypervisor(hypervisor.clone())),
        None => qemu.command(&machine, &qemu::Payload::Native(boot.clone())),
    };
    if !args.no_nic {
        command.args(qemu::net_args(&args.forward));
    }
    if let Some(disk) = &args.disk {
        qemu::ensure_disk_image(disk, RUN_DISK_MIB)?;
        command.args(qemu::disk_args(&absolute(disk)?));
    }
    shell::step(&format!(
        "starting {} (leave with `poweroff` in the guest shell, or Ctrl-A X)",
        shell::describe(&command)
    ));
    let status = shell::run_interactive(command)?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|code| u8::try_from(code).ok())
            .unwrap_or(1),
    ))
}

/// Size of a disk image `run --disk` makes.
const RUN_DISK_MIB: u64 = 256;

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}
