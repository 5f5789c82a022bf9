//! `cargo xtask bench`: Keel measured against native boots in the same session, alternating runs, with
//! medians and spread, printed as tables and written as JSON under target/keel/bench/.

mod elf;
mod net;
mod parse;
mod report;
mod stats;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::build;
use crate::console::Console;
use crate::images::{self, Images};
use crate::manifest;
use crate::qemu::{self, Boot, Machine, Payload, Qemu};
use crate::setup;
use crate::shell;
use crate::Workspace;

use parse::ExitCounts;
use report::{Benchmark, Figure, FootprintReport, Results, Run, Settings, Status};

pub struct Options {
    /// One repetition of everything and a short idle/busy interval: checks that the benchmarks work.
    pub quick: bool,
    /// Repetitions per variant for every benchmark, instead of the per-kernel defaults.
    pub reps: Option<u32>,
    /// Run only the benchmarks whose names contain one of these words.
    pub only: Vec<String>,
    pub qemu: QemuChoice,
    /// How long the exit benchmarks idle or stay busy.
    pub seconds: Option<u64>,
}

/// Which QEMU the benchmarks run on.
pub enum QemuChoice {
    /// `qemu-system-riscv64` from PATH (QEMU 7.2 on Debian 12).
    Machine,
    /// QEMU 10.0 from bookworm-backports, unpacked into the cache.
    Backports,
    /// A binary named on the command line.
    Binary(PathBuf),
}

/// Every benchmark, in the order they run, with what it measures.
pub const BENCHMARKS: &[(&str, &str)] = &[
    (
        "boot-small",
        "small kernel booted to its shell, Keel vs native",
    ),
    (
        "boot-debian",
        "Debian kernel booted to its shell, Keel vs native",
    ),
    (
        "sbi-mmio",
        "SBI call and UART register read from a bare-metal guest, Keel vs native",
    ),
    (
        "exits-small",
        "Keel's exits per second by cause, small kernel idle and busy",
    ),
    (
        "exits-debian",
        "Keel's exits per second by cause, Debian kernel idle and busy",
    ),
    (
        "footprint",
        "Keel's memory footprint: image sections and what it reports at boot",
    ),
    ("scale", "several capsules at once"),
    (
        "io-disk",
        "virtio-blk sequential write and read with O_DIRECT, Keel's disk (an extent of the host disk) vs QEMU's own virtio-blk natively",
    ),
    (
        "io-net",
        "virtio-net throughput to this machine (HTTP through QEMU's port forward) and capsule to capsule, Keel's switch vs native QEMU machines",
    ),
];

const DEFAULT_REPS_SMALL: u32 = 5;
const DEFAULT_REPS_DEBIAN: u32 = 3;
const DEFAULT_REPS_EXITS: u32 = 3;
const DEFAULT_INTERVAL_SECONDS: u64 = 10;
const QUICK_INTERVAL_SECONDS: u64 = 4;

/// The machine a Keel run gets; natively the guest gets exactly its capsule's memory instead.
/// Room for Keel beside a 1 GiB capsule, with a whole, aligned free gibibyte for its gigapage.
const KEEL_MACHINE_MIB: u64 = 2048;
const HARTS: u32 = 2;

const READY: &str = "keel-guest: init ready";
/// The scale benchmark's machine and capsules.
const SCALE_COUNTS: [usize; 4] = [1, 2, 4, 8];
const SCALE_HARTS: u32 = 4;
const SCALE_MACHINE_MIB: u64 = 2048;
const SCALE_CAPSULE_MIB: u64 = 96;
/// The disk benchmark: MiB moved each way, and the host disk image's size.
const IO_MIB: u64 = 32;
const IO_DISK_MIB: u64 = 256;
const PROMPT: &str = "keel-guest# ";
const BUSY_MARKER: &str = "keel-busy-done";
/// The capsule every benchmark manifest boots.
const BOOT_CAPSULE: &str = "boot";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Small,
    Debian,
}

impl Kernel {
    /// The manifest under guests/manifests/ whose boot capsule runs this kernel, as the keel-* tests use it.
    fn manifest(self) -> &'static str {
        match self {
            Kernel::Small => "small",
            Kernel::Debian => "default",
        }
    }

    /// Limits that catch a hung guest; far above the expected times, so they never cut a slow run short.
    fn boot_timeout(self, under_keel: bool) -> Duration {
        Duration::from_secs(match (self, under_keel) {
            (Kernel::Debian, true) => 300,
            (Kernel::Debian, false) => 120,
            (Kernel::Small, true) => 180,
            (Kernel::Small, false) => 60,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Keel,
    Native,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Keel => "keel",
            Variant::Native => "native",
        }
    }
}

/// Runs the selected benchmarks, prints their tables and writes the JSON. Returns whether every run
/// succeeded.
pub fn run(workspace: &Workspace, options: &Options) -> Result<bool> {
    let selected: Vec<&str> = BENCHMARKS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            options.only.is_empty() || options.only.iter().any(|word| name.contains(word.as_str()))
        })
        .collect();
    if selected.is_empty() {
        bail!(
            "no benchmark matches {:?}; the benchmarks are: {}",
            options.only,
            BENCHMARKS
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (reps_small, reps_debian, reps_exits) = match (options.reps, options.quick) {
        (Some(reps), _) => (reps.max(1), reps.max(1), reps.max(1)),
        (None, true) => (1, 1, 1),
        (None, false) => (DEFAULT_REPS_SMALL, DEFAULT_REPS_DEBIAN, DEFAULT_REPS_EXITS),
    };
    let interval = options.seconds.unwrap_or(if options.quick {
        QUICK_INTERVAL_SECONDS
    } else {
        DEFAULT_INTERVAL_SECONDS
    });

    let qemu = match &options.qemu {
        QemuChoice::Machine => Qemu::system(),
        QemuChoice::Backports => qemu::qemu10(&workspace.cache)?,
        QemuChoice::Binary(binary) => Qemu::at(binary),
    };
    let started_unix = report::now_unix_seconds();
    let (date_utc, stamp) = report::utc_timestamps(started_unix);
    let host = report::host();
    let (git_commit, git_tree_dirty) = report::git_state(&workspace.root);
    let bench_dir = workspace.keel_dir().join("bench");
    let log_dir = bench_dir.join("logs").join(&stamp);
    fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;

    let mut context = Context {
        workspace,
        qemu,
        bench_dir: bench_dir.clone(),
        log_dir,
        images: None,
        host_ready: None,
        hypervisors: BTreeMap::new(),
    };
    let qemu_version = context.qemu_version();
    shell::step(&format!(
        "benchmarks: {} with {qemu_version}; {} x {} cores",
        selected.join(", "),
        host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        host.cores
    ));

    let mut benchmarks = Vec::new();
    for name in &selected {
        shell::step(&format!("benchmark {name}"));
        let mut benchmark = match *name {
            "boot-small" => context.boot_benchmark(name, Kernel::Small, reps_small),
            "boot-debian" => context.boot_benchmark(name, Kernel::Debian, reps_debian),
            "sbi-mmio" => context.sbi_benchmark(name, reps_small),
            "exits-small" => context.exits_benchmark(name, Kernel::Small, reps_exits, interval),
            "exits-debian" => context.exits_benchmark(name, Kernel::Debian, reps_exits, interval),
            "footprint" => context.footprint_benchmark(name),
            "scale" => context.scale_benchmark(name, reps_small.min(3)),
            "io-disk" => context.disk_benchmark(name, reps_small.min(3)),
            "io-net" => context.net_benchmark(name, reps_small.min(3)),
            other => bail!("benchmark {other} is listed but has no implementation"),
        };
        benchmark.settle_status();
        benchmarks.push(benchmark);
    }

    let mut host = host;
    host.load_average_after = report::load_average();
    let failed_runs: usize = benchmarks.iter().map(Benchmark::failed_runs).sum();
    let failed_benchmarks = benchmarks
        .iter()
        .filter(|benchmark| benchmark.status == Status::Failed)
        .count();
    let results = Results {
        schema: 1,
        date_utc,
        git_commit,
        git_tree_dirty,
        qemu: report::QemuInfo {
            binary: context.qemu.binary.display().to_string(),
            version: qemu_version,
        },
        host,
        settings: Settings {
            quick: options.quick,
            reps_small,
            reps_debian,
            interval_seconds: interval,
        },
        benchmarks,
        failed_runs,
    };

    print_results(&results);
    let json =
        serde_json::to_string_pretty(&results).context("cannot encode the results as JSON")?;
    let latest = bench_dir.join("results.json");
    let copy = bench_dir.join(format!("results-{stamp}.json"));
    for path in [&latest, &copy] {
        fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!();
    println!(
        "results: {} (this run also as {})",
        latest.display(),
        copy.display()
    );
    println!("console logs: {}", context.log_dir.display());
    if failed_benchmarks > 0 {
        println!("{failed_benchmarks} benchmark(s) failed, {failed_runs} run(s) failed");
    }
    Ok(failed_benchmarks == 0)
}

fn print_results(results: &Results) {
    println!();
    println!("# Keel benchmarks, {}", results.date_utc);
    println!(
        "QEMU:    {} ({})",
        results.qemu.version, results.qemu.binary
    );
    println!(
        "host:    {}, {} cores; load average before: {}, after: {}",
        results.host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        results.host.cores,
        results.host.load_average_before.as_deref().unwrap_or("?"),
        results.host.load_average_after.as_deref().unwrap_or("?")
    );
    println!(
        "commit:  {}{}",
        results.git_commit.as_deref().unwrap_or("unknown"),
        match results.git_tree_dirty {
            Some(true) => " with uncommitted changes",
            _ => "",
        }
    );
    println!(
        "medians of alternating runs (Keel, native, Keel, native, ...); [min..max]; spread = (max-min)/median{}",
        if results.settings.quick {
            "; --quick: one run each, figures are indicative only"
        } else {
            ""
        }
    );
    for benchmark in &results.benchmarks {
        report::print_benchmark(benchmark);
    }
}


/// What one boot to the shell measured. Times are wall-clock seconds from spawning QEMU.
#[derive(Debug, Default)]
struct Session {
    ready_s: f64,
    prompt_s: f64,
    /// From the first prompt to typing `poweroff`: the idle or busy interval.
    interval_s: f64,
    busy_iterations: Option<u64>,
    busy_loop_s: Option<f64>,
    /// From typing `poweroff` to QEMU's exit.
    poweroff_s: f64,
    exits: Option<ExitCounts>,
}

impl Session {
    fn into_record(self) -> Record {
        let values = self.values();
        (values, self.exits)
    }

    fn values(&self) -> BTreeMap<String, f64> {
        let mut values = BTreeMap::from([
            ("init_ready_s".to_string(), self.ready_s),
            ("shell_prompt_s".to_string(), self.prompt_s),
            ("interval_s".to_string(), self.interval_s),
            ("poweroff_s".to_string(), self.poweroff_s),
        ]);
        if let Some(iterations) = self.busy_iterations {
            values.insert("busy_iterations".to_string(), iterations as f64);
        }
        if let Some(seconds) = self.busy_loop_s {
            values.insert("busy_loop_s".to_string(), seconds);
        }
        values
    }
}

/// What the guest does between its first prompt and `poweroff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// `poweroff` right away.
    Nothing,
    /// The busy loop for `busy_seconds` of guest time, then `idle` at the prompt. With 0 seconds the
    /// loop's command line is still typed and echoed but the loop stops at once, so runs that differ
    /// only in their busy or idle time exit equally often for everything else.
    Loop { busy_seconds: u64, idle: Duration },
}

/// The busy loop typed at the prompt: arithmetic in the shell, a fork for `date` per round and
/// /proc reads, until `seconds` of guest time have passed; it prints the rounds it managed. Short
/// enough to type through a 16550 comfortably.
fn busy_command(seconds: u64) -> String {
    format!(
        "e=$(($(date +%s)+{seconds}));n=0;while [ $(date +%s) -lt $e ];do i=0;while [ $i -lt 300 ];do i=$((i+1));done;cat /proc/stat /proc/meminfo>/dev/null;n=$((n+1));done;echo {BUSY_MARKER} $n"
    )
}

/// Boots to the shell, does `activity`, powers off and checks QEMU's exit status. The console
/// transcript goes to `log` whatever happens.
fn boot_session(
    qemu: &Qemu,
    machine: &Machine,
    payload: &Payload,
    boot_timeout: Duration,
    activity: Activity,
    log: &Path,
) -> Result<Session> {
    let command = qemu.command(machine, payload);
    let spawned = Instant::now();
    let mut console = Console::spawn(command)?;
    let result = converse(&mut console, spawned, boot_timeout, activity);
    let transcript = console.transcript();
    let _ = fs::write(log, &transcript);
    let mut session = result.map_err(|error| {
        let tail = console.tail(15);
        error.context(format!("last console lines:\n{tail}"))
    })?;
    session.exits = parse::total_exit_counts(&transcript, BOOT_CAPSULE);
    Ok(session)
}

fn converse(
    console: &mut Console,
    spawned: Instant,
    boot_timeout: Duration,
    activity: Activity,
) -> Result<Session> {
    const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
    const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);
    let mut session = Session::default();
    console
        .expect(READY, boot_timeout)
        .context("boot to the init-ready line")?;
    session.ready_s = spawned.elapsed().as_secs_f64();
    console
        .expect(PROMPT, COMMAND_TIMEOUT)
        .context("the first shell prompt")?;
    let prompt = Instant::now();
    session.prompt_s = (prompt - spawned).as_secs_f64();

    if let Activity::Loop { busy_seconds, idle } = activity {
        let typed = Instant::now();
        console.send_line(&busy_command(busy_seconds))?;
        let line = console
            .expect_line(
                &format!("`{BUSY_MARKER} N` after the busy loop"),
                Duration::from_secs(busy_seconds) * 4 + COMMAND_TIMEOUT,
                |line| parse::busy_done(line, BUSY_MARKER).is_some(),
            )
            .context("the busy loop")?;
        session.busy_loop_s = Some(typed.elapsed().as_secs_f64());
        session.busy_iterations = parse::busy_done(&line, BUSY_MARKER);
        console
            .expect(PROMPT, COMMAND_TIMEOUT)
            .context("the prompt after the busy loop")?;
        std::thread::sleep(idle);
    }

    session.interval_s = prompt.elapsed().as_secs_f64();
    let powering_off = Instant::now();
    console.send_line("poweroff")?;
    let status = console
        .wait_exit(POWER_OFF_TIMEOUT)
        .context("poweroff ends QEMU")?;
    session.poweroff_s = powering_off.elapsed().as_secs_f64();
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff, expected exit status 0");
    }
    Ok(session)
}

/// What the benchmarks share: the QEMU, images and hypervisors, each prepared once; a failure is
/// remembered and reported by every benchmark that needs it.
struct Context<'a> {
    workspace: &'a Workspace,
    qemu: Qemu,
    bench_dir: PathBuf,
    log_dir: PathBuf,
    images: Option<Result<Images, String>>,
    host_ready: Option<Result<(), String>>,
    hypervisors: BTreeMap<String, Result<PathBuf, String>>,
}

impl Context<'_> {
    fn qemu_version(&self) -> String {
        self.qemu
            .version()
            .unwrap_or_else(|error| format!("unknown QEMU version ({error:#})"))
    }

    fn host_tools(&mut self) -> Result<()> {
        match self
            .host_ready
            .get_or_insert_with(|| setup::ensure_host_tools().map_err(|e| format!("{e:#}")))
        {
            Ok(()) => Ok(()),
            Err(error) => bail!("host setup failed: {error}"),
        }
    }

    fn images(&mut self) -> Result<&Images> {
        self.host_tools()?;
        let workspace = self.workspace;
        match self
            .images
            .get_or_insert_with(|| images::ensure(workspace).map_err(|e| format!("{e:#}")))
        {
            Ok(images) => Ok(images),
            Err(error) => bail!("guest images unavailable: {error}"),
        }
    }

    /// The hypervisor built around a manifest of guests/manifests/, copied to
    /// target/keel/bench/keel-<manifest>.elf so the next build does not replace it.
    fn hypervisor(&mut self, manifest: &str) -> Result<PathBuf> {
        if !self.hypervisors.contains_key(manifest) {
            let built = self
                .build_hypervisor(manifest)
                .map_err(|e| format!("{e:#}"));
            self.hypervisors.insert(manifest.to_string(), built);
        }
        match &self.hypervisors[manifest] {
            Ok(path) => Ok(path.clone()),
            Err(error) => bail!("{error}"),
        }
    }

    fn build_hypervisor(&mut self, manifest: &str) -> Result<PathBuf> {
        let defines = self.images()?.defines();
        let path = self.manifest_path(manifest);
        let built = build::build_dmfs_and_hypervisor(self.workspace, &path, &defines)?;
        self.keep_copy(&built, &format!("keel-{manifest}.elf"))
    }

    fn keep_copy(&self, built: &Path, name: &str) -> Result<PathBuf> {
        let copy = self.bench_dir.join(name);
        fs::copy(built, &copy)
            .with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
        Ok(copy)
    }

    fn manifest_path(&self, manifest: &str) -> PathBuf {
        self.workspace
            .root
            .join("guests/manifests")
            .join(format!("{manifest}.toml"))
    }

    /// The same kernel, initrd and command line as the manifest's boot capsule, directly on the firmware.
    fn native_boot(&mut self, kernel: Kernel) -> Result<Boot> {
        let defines = self.images()?.defines();
        manifest::boot_capsule(&self.manifest_path(kernel.manifest()), &defines)
    }

    /// The machine a kernel booted without Keel gets when it stands in for the boot capsule of `manifest`: the
    /// capsule's memory, and as many harts as the capsule has vCPUs.
    fn native_machine(&mut self, manifest: &str) -> Result<Machine> {
        let defines = self.images()?.defines();
        let (memory_mib, vcpus) = manifest::boot_capsule_machine(&self.manifest_path(manifest), &defines)?;
        Ok(Machine { smp: vcpus, memory_mib, cpu: None })
    }

    fn log_path(&self, benchmark: &str, variant: &str, repetition: u32) -> PathBuf {
        self.log_dir
            .join(format!("{benchmark}-{variant}-{}.log", repetition + 1))
    }

    /// The two ways one kernel boots: under Keel (1 GiB machine) and natively (the capsule's memory).
    fn boot_variants(&mut self, kernel: Kernel) -> Result<[(Variant, Machine, Payload); 2]> {
        let hypervisor = self.hypervisor(kernel.manifest())?;
        let native = self.native_boot(kernel)?;
        let native_machine = self.native_machine(kernel.manifest())?;
        Ok([
            (
                Variant::Keel,
                Machine {
                    smp: HARTS,
                    memory_mib: KEEL_MACHINE_MIB,
                    cpu: None,
                },
                Payload::Hypervisor(hypervisor),
            ),
            (Variant::Native, native_machine, Payload::Native(native)),
        ])
    }

    fn boot_benchmark(&mut self, name: &str, kernel: Kernel, reps: u32) -> Benchmark {
        let description = BENCHMARKS
            .iter()
            .find(|(known, _)| *known == name)
            .map_or("", |(_, description)| description);
        let mut benchmark = Benchmark::new(name, description);
        benchmark.notes.push(format!(
            "wall time from spawning QEMU to the `{READY}` line and to the first `{PROMPT}` prompt after it; both include QEMU start-up and OpenSBI, and under Keel Keel's own boot and the capsule's loading"
        ));
        benchmark.notes.push(
            "poweroff to QEMU exit is mostly busybox init's own waits between SIGTERM and SIGKILL, the same both ways".to_string(),
        );
        let variants = match self.boot_variants(kernel) {
            Ok(variants) => variants,
            Err(error) => {
                benchmark.errors.push(format!("{error:#}"));
                return benchmark;
            }
        };
        benchmark.notes.push(machines_note(kernel, &variants[1].1));
        benchmark.notes.push(PAGING_NOTE.to_string());
        for (variant, machine, payload) in &variants {
            benchmark.commands.insert(
                variant.label().to_string(),
                shell::describe(&self.qemu.command(machine, payload)),
            );
        }
        let labels = variants.each_ref().map(|(variant, _, _)| variant.label().to_string());
        self.alternate(&mut benchmark, &labels, reps, |index, log| {
            let (variant, machine, payload) = &variants[index];
            boot_session(
                &self.qemu,
                machine,
                payload,
                kernel.boot_timeout(*variant == Variant::Keel),
                Activity::Nothing,
                log,
            )
            .map(Session::into_record)
        });
        let figures = [
            ("init ready", "init_ready_s"),
            ("shell prompt", "shell_prompt_s"),
            ("poweroff to QEMU exit", "poweroff_s"),
        ]
        .map(|(label, key)| {
            Figure::compared(
                label,
                "s",
                &benchmark.samples(Variant::Keel.label(), key),
                &benchmark.samples(Variant::Native.label(), key),
            )
        });
        benchmark.figures.extend(figures);
        benchmark
    }

    /// Runs `reps` repetitions of each variant in alternation (A B A B ...), each with its console log under the
    /// run's log directory, and records them in `benchmark`. `run` gets the variant's index and its log path.
    fn alternate(
        &self,
        benchmark: &mut Benchmark,
        labels: &[String],
        reps: u32,
        mut run: impl FnMut(usize, &Path) -> Result<Record>,
    ) {
        for (order, (index, repetition)) in stats::alternation(labels.len(), reps).into_iter().enumerate() {
            let label = &labels[index];
            let log = self.log_path(&benchmark.name, label, repetition);
            let result = run(index, &log);
            benchmark.runs.push(record_run(order, label, repetition, result, &log));
        }
    }

    /// A manifest of `count` small-kernel capsules that all start at boot (the first is the boot capsule),
    /// written under the bench directory.
    fn scale_manifest(&self, count: usize) -> Result<PathBuf> {
        let mut text = format!(
            "# {count} small-kernel capsules booting at once, for `cargo xtask bench scale` (generated).\n"
        );
        for index in 0..count {
            let name = scale_capsule_name(index);
            text.push_str(&format!(
                "\n[[capsule]]\nname = \"{name}\"\nkernel = \"${{images}}/small/Image\"\ninitrd = \"${{images}}/initramfs.cpio\"\ncmdline = \"console=ttyS0\"\nmemory = \"{SCALE_CAPSULE_MIB}M\"\nvcpus = 1\n{}\n",
                if index == 0 { "boot = true" } else { "autostart = true" }
            ));
        }
        let path = self.bench_dir.join(format!("scale-{count}.toml"));
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    fn scale_hypervisor(&mut self, count: usize) -> Result<PathBuf> {
        let defines = self.images()?.defines();
        let manifest = self.scale_manifest(count)?;
        let built = build::build_dmfs_and_hypervisor(self.workspace, &manifest, &defines)?;
        self.keep_copy(&built, &format!("keel-scale-{count}.elf"))
    }

    /// 1, 2, 4 and 8 capsules booting at once on a 4-hart machine: the time until every one of them has
    /// reached its shell, against one capsule alone, in alternating runs.
    fn scale_benchmark(&mut self, name: &str, reps: u32) -> Benchmark {
        let mut benchmark = Benchmark::new(name, "several capsules at once");
        benchmark.notes.push(format!(
            "{SCALE_HARTS} harts, {SCALE_MACHINE_MIB} MiB machine; every capsule runs the small kernel with {SCALE_CAPSULE_MIB} MiB and 1 vCPU and starts at boot. Time from spawning QEMU until the `{READY}` line of the last capsule. The baseline column is one capsule alone on the same machine, not a native run"
        ));
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let lanes = cores.min(SCALE_HARTS as usize);
        benchmark.notes.push(format!(
            "QEMU emulates {SCALE_HARTS} harts on this host's {cores} core(s): at most {lanes} capsule(s) can make progress at once, so N capsules cannot be ready in less than about N/{lanes} times one capsule's time (8 capsules: {:.1}x) whatever the hypervisor does",
            8.0 / lanes as f64
        ));
        let mut hypervisors = Vec::new();
        for count in SCALE_COUNTS {
            match self.scale_hypervisor(count) {
                Ok(path) => hypervisors.push((count, path)),
                Err(error) => {
                    benchmark.errors.push(format!("{count} capsules: {error:#}"));
                    return benchmark;
                }
            }
        }
        let machine = Machine { smp: SCALE_HARTS, memory_mib: SCALE_MACHINE_MIB, cpu: None };
        for (count, hypervisor) in &hypervisors {
            benchmark.commands.insert(
                format!("{count} capsules"),
                shell::describe(&self.qemu.command(&machine, &Payload::Hypervisor(hypervisor.clone()))),
            );
        }
        let labels: Vec<String> = hypervisors.iter().map(|(count, _)| format!("{count}-capsules")).collect();
        self.alternate(&mut benchmark, &labels, reps, |index, log| {
            let (count, hypervisor) = &hypervisors[index];
            scale_session(&self.qemu, &machine, hypervisor, *count, log)
        });
        let ready = |count: usize| benchmark.samples(&format!("{count}-capsules"), "all_ready_s");
        let alone = ready(1);
        let figures: Vec<Figure> = SCALE_COUNTS
            .iter()
            .skip(1)
            .map(|&count| Figure::compared(&format!("{count} capsules all ready (vs 1 alone)"), "s", &ready(count), &alone))
            .collect();
        benchmark.figures.push(Figure::compared("1 capsule ready", "s", &alone, &[]));
        benchmark.figures.extend(figures);
        benchmark
    }

    /// virtio-blk throughput: the small kernel writes and then reads IO_MIB MiB of its disk with O_DIRECT in 1 MiB
    /// blocks. Under Keel the disk is the boot capsule's 64 MiB extent (guests/manifests/disks.toml); natively the
    /// kernel gets QEMU's virtio-blk on the same kind of raw image.
    fn disk_benchmark(&mut self, name: &str, reps: u32) -> Benchmark {
        let mut benchmark = Benchmark::new(name, "virtio-blk sequential write and read");
        benchmark.notes.push(format!(
            "`dd bs=1M count={IO_MIB}` with oflag=direct / iflag=direct on /dev/vda, timed with the guest's /proc/uptime (10 ms resolution); under Keel every request is served synchronously on the hart that notified, through Keel's own polled driver of the host disk"
        ));
        let variants = match self.disk_variants() {
            Ok(variants) => variants,
            Err(error) => {
                benchmark.errors.push(format!("{error:#}"));
                return benchmark;
            }
        };
        for (variant, machine, payload, _) in &variants {
            benchmark
                .commands
                .insert(variant.label().to_string(), shell::describe(&self.qemu.command(machine, payload)));
        }
        let labels = variants.each_ref().map(|(variant, _, _, _)| variant.label().to_string());
        self.alternate(&mut benchmark, &labels, reps, |index, log| {
            let (_, machine, payload, disk) = &variants[index];
            disk_session(&self.qemu, machine, payload, disk, log)
        });
        for (label, key) in [("sequential write", "write_mb_s"), ("sequential read", "read_mb_s")] {
            let keel = benchmark.samples(Variant::Keel.label(), key);
            let native = benchmark.samples(Variant::Native.label(), key);
            benchmark.figures.push(Figure::compared(label, "MB/s", &keel, &native));
        }
        benchmark
    }

    fn disk_variants(&mut self) -> Result<[(Variant, Machine, Payload, PathBuf); 2]> {
        let hypervisor = self.hypervisor("disks")?;
        let native = self.native_boot(Kernel::Small)?;
        let native_machine = self.native_machine("disks")?;
        let keel_disk = self.bench_dir.join("io-disk-keel.img");
        let native_disk = self.bench_dir.join("io-disk-native.img");
        for disk in [&keel_disk, &native_disk] {
            if disk.exists() {
                fs::remove_file(disk).with_context(|| format!("cannot remove {}", disk.display()))?;
            }
            qemu::ensure_disk_image(disk, IO_DISK_MIB)?;
        }
        Ok([
            (
                Variant::Keel,
                Machine { smp: HARTS, memory_mib: KEEL_MACHINE_MIB, cpu: None },
                Payload::Hypervisor(hypervisor),
                keel_disk,
            ),
            (
                Variant::Native,
                native_machine,
                Payload::Native(native),
                native_disk,
            ),
        ])
    }

    fn sbi_benchmark(&mut self, name: &str, reps: u32) -> Benchmark {
        let mut benchmark = Benchmark::new(
            name,
            "SBI call and UART register read from a bare-metal guest, Keel vs native",
        );
        benchmark.notes.push(
            "the guest `guests/sbi-check` with bootargs `bench` times 100000 sbi_get_spec_version calls and 100000 reads of the 16550's LSR with rdtime and prints ns per operation: natively OpenSBI answers the call and QEMU's device model the read; under Keel each is an exit (ecall from VS, emulated MMIO)".to_string(),
        );
        benchmark.notes.push(format!(
            "memory: under Keel the machine has {KEEL_MACHINE_MIB} MiB and the capsule half of it (a generated manifest like `run --kernel`); natively {} MiB. {HARTS} harts both ways",
            KEEL_MACHINE_MIB / 2
        ));
        let variants = match self.sbi_variants() {
            Ok(variants) => variants,
            Err(error) => {
                benchmark.errors.push(format!("{error:#}"));
                return benchmark;
            }
        };
        for (variant, machine, payload) in &variants {
            benchmark.commands.insert(
                variant.label().to_string(),
                shell::describe(&self.qemu.command(machine, payload)),
            );
        }
        let labels = variants.each_ref().map(|(variant, _, _)| variant.label().to_string());
        self.alternate(&mut benchmark, &labels, reps, |index, log| {
            let (_, machine, payload) = &variants[index];
            bench_guest_session(&self.qemu, machine, payload, log).map(|values| (values, None))
        });
        for (label, key) in [
            ("SBI call (sbi_get_spec_version)", "sbi-call-ns"),
            ("UART LSR read (MMIO)", "mmio-read-ns"),
        ] {
            let pick = |variant: Variant| benchmark.samples(variant.label(), key);
            let figure =
                Figure::compared(label, "ns", &pick(Variant::Keel), &pick(Variant::Native));
            benchmark.figures.push(figure);
        }
        benchmark
    }

    fn sbi_variants(&mut self) -> Result<[(Variant, Machine, Payload); 2]> {
        self.host_tools()?;
        let binary = crate::guests::build_sbi_check(self.workspace)?;
        let boot = Boot {
            kernel: binary,
            initrd: None,
            append: "bench".to_string(),
        };
        // The same generated manifest `run --kernel` writes: a flat kernel with half the machine's memory.
        let generated = build::write_generated_manifest(self.workspace, &boot, KEEL_MACHINE_MIB)?;
        let built = build::build_dmfs_and_hypervisor(self.workspace, &generated, &[])?;
        let hypervisor = self.keep_copy(&built, "keel-sbi-check.elf")?;
        Ok([
            (
                Variant::Keel,
                Machine {
                    smp: HARTS,
                    memory_mib: KEEL_MACHINE_MIB,
                    cpu: None,
                },
                Payload::Hypervisor(hypervisor),
            ),
            (
                Variant::Native,
                Machine {
                    smp: HARTS,
                    memory_mib: KEEL_MACHINE_MIB / 2,
                    cpu: None,
                },
                Payload::Native(boot),
            ),
        ])
    }

    fn exits_benchmark(
        &mut self,
        name: &str,
        kernel: Kernel,
        reps: u32,
        seconds: u64,
    ) -> Benchmark {
        let description = BENCHMARKS
            .iter()
            .find(|(known, _)| *known == name)
            .map_or("", |(_, description)| description);
        let mut benchmark = Benchmark::new(name, description);
        benchmark.notes.push(format!(
            "method: Keel logs a vCPU's exit counts only at capsule shutdown, so each round boots three times under Keel and types the same shell loop (arithmetic, a fork of `date` per round, /proc reads) each time: for 0 s then poweroff (base), for 0 s then {seconds} s idle at the prompt (idle), for {seconds} s of guest time (busy). Rate = (exits of the run - exits of the round's base run) / (its prompt-to-poweroff wall time - the base run's), so boot, typing and shutdown cancel out"
        ));
        benchmark.notes.push(
            "rates are differences between separate boots: boot-to-boot variation of a few exits shows up as a rate of about +-1/s (even slightly negative); treat idle rates that small as zero".to_string(),
        );
        benchmark.notes.push(
            "`host timer` counts Keel's own timer interrupts (time slices, the guest's timer when it has no Sstc, and with Sstc a once-a-second watchdog against lost guest timer interrupts); with Sstc the guest's ticks need no exit, so an idle guest shows about 1/s, the watchdog. A guest that programs its timer with SBI set_timer instead of Sstc shows it under SBI".to_string(),
        );
        let variants = match self.boot_variants(kernel) {
            Ok(variants) => variants,
            Err(error) => {
                benchmark.errors.push(format!("{error:#}"));
                return benchmark;
            }
        };
        benchmark.notes.push(format!(
            "busy loop rounds per second: the same loop natively in the same round, a CPU and syscall throughput comparison. {}",
            machines_note(kernel, &variants[1].1)
        ));
        let plan = exit_plan(seconds);
        for (variant, machine, payload) in &variants {
            benchmark.commands.insert(
                variant.label().to_string(),
                shell::describe(&self.qemu.command(machine, payload)),
            );
        }
        let labels: Vec<String> = plan.iter().map(|(_, label, _)| label.clone()).collect();
        self.alternate(&mut benchmark, &labels, reps, |index, log| {
            let (variant_index, _, activity) = &plan[index];
            let (variant, machine, payload) = &variants[*variant_index];
            boot_session(
                &self.qemu,
                machine,
                payload,
                kernel.boot_timeout(*variant == Variant::Keel),
                *activity,
                log,
            )
            .and_then(|session| {
                if *variant == Variant::Keel && session.exits.is_none() {
                    bail!("Keel logged no exit counts for capsule '{BOOT_CAPSULE}' at shutdown");
                }
                Ok(session)
            })
            .map(Session::into_record)
        });
        benchmark.figures = exit_rate_figures(&benchmark.runs, &plan, reps);
        // Rounds per wall second of the loop: `date +%s` has whole seconds, so a loop of N seconds
        // runs between N-1 and N; dividing by the time it took keeps Keel and native comparable.
        let throughput = |label: &str| -> Vec<f64> {
            benchmark
                .runs
                .iter()
                .filter(|run| run.ok && run.variant == label)
                .filter_map(|run| {
                    Some(run.values.get("busy_iterations")? / run.values.get("busy_loop_s")?)
                })
                .collect()
        };
        benchmark.figures.push(Figure::compared(
            "busy loop rounds per second",
            "1/s",
            &throughput(&plan[2].1),
            &throughput(&plan[3].1),
        ));
        benchmark
    }

    fn footprint_benchmark(&mut self, name: &str) -> Benchmark {
        let mut benchmark = Benchmark::new(
            name,
            "Keel's memory footprint: image sections and what it reports at boot",
        );
        benchmark.notes.push(
            "text = code and read-only data, data = initialised writable data, bss = zeroed data including the boot stack; from the ELF section headers. The bundled manifest image (.dmfs) is the guests' kernels and initrds and is not counted in Keel's own size".to_string(),
        );
        benchmark.notes.push(format!(
            "at boot Keel reports free memory after its image, heap and hart stacks; the machine has {KEEL_MACHINE_MIB} MiB, of which OpenSBI keeps the first 2 MiB"
        ));
        for (order, kernel) in [Kernel::Small, Kernel::Debian].into_iter().enumerate() {
            let log = self.log_path(name, kernel.manifest(), 0);
            let result = self.footprint_of(kernel, &log);
            let values = result
                .as_ref()
                .map(|footprint| (footprint_values(footprint), None))
                .map_err(|error| anyhow::anyhow!("{error:#}"));
            benchmark
                .runs
                .push(record_run(order, kernel.manifest(), 0, values, &log));
            if let Ok(footprint) = result {
                benchmark.footprint.push(footprint);
            }
        }
        for footprint in &benchmark.footprint {
            let manifest = &footprint.manifest;
            let totals = &footprint.totals;
            let kib = |bytes: u64| bytes as f64 / 1024.0;
            benchmark.figures.extend([
                Figure::keel_only(&format!("{manifest}: text"), "KiB", &[kib(totals.text)]),
                Figure::keel_only(&format!("{manifest}: data"), "KiB", &[kib(totals.data)]),
                Figure::keel_only(&format!("{manifest}: bss"), "KiB", &[kib(totals.bss)]),
                Figure::keel_only(
                    &format!("{manifest}: Keel without bundled image"),
                    "KiB",
                    &[kib(totals.own_total())],
                ),
                Figure::keel_only(
                    &format!("{manifest}: bundled image (.dmfs)"),
                    "KiB",
                    &[kib(totals.bundled_image)],
                ),
            ]);
            if let Some(memory) = &footprint.host_memory {
                benchmark.figures.push(Figure::keel_only(
                    &format!("{manifest}: free at boot of {} MiB", memory.total_mib),
                    "MiB",
                    &[memory.free_mib as f64],
                ));
            }
            for (capsule, kib) in &footprint.gstage_tables_kib {
                benchmark.figures.push(Figure::keel_only(
                    &format!("{manifest}: capsule '{capsule}' G-stage tables"),
                    "KiB",
                    &[*kib as f64],
                ));
            }
        }
        benchmark
    }

    /// The sections of the hypervisor built for the kernel's manifest, and Keel's boot report from a
    /// run that stops as soon as the capsule is created (the guest's own boot is not needed).
    fn footprint_of(&mut self, kernel: Kernel, log: &Path) -> Result<FootprintReport> {
        let hypervisor = self.hypervisor(kernel.manifest())?;
        let bytes = fs::read(&hypervisor)
            .with_context(|| format!("cannot read {}", hypervisor.display()))?;
        let sections = elf::allocated_sections(&bytes)
            .with_context(|| format!("cannot read the sections of {}", hypervisor.display()))?;
        let totals = elf::Footprint::of(&sections);

        let machine = Machine {
            smp: HARTS,
            memory_mib: KEEL_MACHINE_MIB,
            cpu: None,
        };
        let command = self
            .qemu
            .command(&machine, &Payload::Hypervisor(hypervisor.clone()));
        let mut console = Console::spawn(command)?;
        let seen = console.expect_line(
            "Keel's `G-stage tables use` line",
            kernel.boot_timeout(true),
            |line| parse::gstage_tables(line).is_some(),
        );
        // The measurement is the log text; the guest need not boot, so QEMU is stopped here (on drop).
        let transcript = console.transcript();
        drop(console);
        let _ = fs::write(log, &transcript);
        seen.context("Keel's boot report")?;
        let host_memory = transcript.lines().find_map(parse::host_memory);
        if host_memory.is_none() {
            bail!("Keel's `N harts online; F of T MiB free` line is missing from its boot log");
        }
        let gstage_tables_kib = transcript
            .lines()
            .filter_map(parse::gstage_tables)
            .collect();
        Ok(FootprintReport {
            manifest: kernel.manifest().to_string(),
            elf: hypervisor.display().to_string(),
            sections,
            totals,
            host_memory,
            gstage_tables_kib,
        })
    }
}

fn footprint_values(footprint: &FootprintReport) -> BTreeMap<String, f64> {
    let totals = &footprint.totals;
    let mut values = BTreeMap::from([
        ("text_bytes".to_string(), totals.text as f64),
        ("data_bytes".to_string(), totals.data as f64),
        ("bss_bytes".to_string(), totals.bss as f64),
        (
            "bundled_image_bytes".to_string(),
            totals.bundled_image as f64,
        ),
    ]);
    if let Some(memory) = &footprint.host_memory {
        values.insert("free_mib".to_string(), memory.free_mib as f64);
        values.insert("total_mib".to_string(), memory.total_mib as f64);
    }
    values
}

/// Runs the bare-metal guest in bench mode: it prints its two figures and shuts the machine down.
fn bench_guest_session(
    qemu: &Qemu,
    machine: &Machine,
    payload: &Payload,
    log: &Path,
) -> Result<BTreeMap<String, f64>> {
    const TIMEOUT: Duration = Duration::from_secs(120);
    let mut console = Console::spawn(qemu.command(machine, payload))?;
    let mut values = BTreeMap::new();
    let result = (|| -> Result<()> {
        for key in ["sbi-call-ns", "mmio-read-ns"] {
            let line =
                console.expect_line(&format!("`keel-bench {key} <ns>`"), TIMEOUT, |line| {
                    parse::bench_value(line).is_some_and(|(name, _)| name == key)
                })?;
            if let Some((_, value)) = parse::bench_value(&line) {
                values.insert(key.to_string(), value);
            }
        }
        let status = console
            .wait_exit(Duration::from_secs(60))
            .context("the guest shuts the machine down after its figures")?;
        if !status.success() {
            bail!("QEMU exited with {status} after the benchmark guest, expected exit status 0");
        }
        Ok(())
    })();
    let _ = fs::write(log, console.transcript());
    result.map_err(|error| error.context(format!("last console lines:\n{}", console.tail(15))))?;
    Ok(values)
}

/// A run's raw measurements and, for Keel runs, its exit counts.
type Record = (BTreeMap<String, f64>, Option<ExitCounts>);

/// Turns a run's outcome into its record and prints a progress line for it.
/// The name of the scale manifest's capsule `index` (the first is the boot capsule).
/// What the machines of a boot or exits comparison are: `native` stands in for the capsule of `kernel`'s manifest.
fn machines_note(kernel: Kernel, native: &Machine) -> String {
    format!(
        "machines: under Keel {HARTS} harts and {KEEL_MACHINE_MIB} MiB, with the boot capsule of {}.toml; natively the kernel gets what that capsule gets: {} MiB and {} hart(s) for its {} vCPU(s)",
        kernel.manifest(),
        native.memory_mib,
        native.smp,
        native.smp
    )
}

/// How the guest's paging mode differs between the two ways it boots.
const PAGING_NOTE: &str = "paging: Keel offers capsules Sv39 and answers their kernel's satp probe itself; natively the kernel takes the hart's widest mode, Sv57. QEMU 7.2 does not trap satp accesses under hstatus.VTVM, so there the capsule's kernel finds Sv57 as well; QEMU 10 does, and the capsule pages with Sv39";

fn scale_capsule_name(index: usize) -> String {
    if index == 0 { BOOT_CAPSULE.to_string() } else { format!("c{index}") }
}

/// Whose `init ready` line `line` is: with several capsules Keel tags each line `[name] `; alone, the line is
/// untagged and belongs to the boot capsule.
fn ready_capsule(line: &str) -> Option<String> {
    let at = line.find(READY)?;
    let before = line[..at].trim_end();
    match before.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        Some(name) => Some(name.to_string()),
        None if before.is_empty() => Some(BOOT_CAPSULE.to_string()),
        None => None,
    }
}

/// Boots a scale system and times until every capsule has said it is ready; then powers the machine off
/// through the boot capsule.
fn scale_session(qemu: &Qemu, machine: &Machine, hypervisor: &Path, count: usize, log: &Path) -> Result<Record> {
    const TIMEOUT: Duration = Duration::from_secs(300);
    let command = qemu.command(machine, &Payload::Hypervisor(hypervisor.to_path_buf()));
    let spawned = Instant::now();
    console_session(command, log, |console| {
        let mut waiting: std::collections::BTreeSet<String> = (0..count).map(scale_capsule_name).collect();
        let mut values = BTreeMap::new();
        while !waiting.is_empty() {
            let remaining = TIMEOUT.saturating_sub(spawned.elapsed());
            let line = console
                .expect_line(&format!("`{READY}` from {}", waiting.iter().cloned().collect::<Vec<_>>().join(", ")), remaining, |line| {
                    ready_capsule(line).is_some_and(|name| waiting.contains(&name))
                })?;
            if let Some(name) = ready_capsule(&line) {
                waiting.remove(&name);
            }
        }
        values.insert("all_ready_s".to_string(), spawned.elapsed().as_secs_f64());
        console.expect(PROMPT, Duration::from_secs(60)).context("the boot capsule's prompt")?;
        power_off(console)?;
        Ok((values, None))
    })
}

/// Spawns QEMU with `command`, holds the conversation `talk`, and keeps the transcript in `log`; a failure carries
/// the last console lines.
fn console_session(command: std::process::Command, log: &Path, talk: impl FnOnce(&mut Console) -> Result<Record>) -> Result<Record> {
    let mut console = Console::spawn(command)?;
    let result = talk(&mut console);
    let _ = fs::write(log, console.transcript());
    result.map_err(|error| error.context(format!("last console lines:\n{}", console.tail(15))))
}

/// Types `poweroff` and requires QEMU to exit with status 0.
fn power_off(console: &mut Console) -> Result<()> {
    console.send_line("poweroff")?;
    let status = console.wait_exit(Duration::from_secs(60)).context("poweroff ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff, expected exit status 0");
    }
    Ok(())
}

/// The guest's `/proc/uptime` before and after a command, from the line `io-uptime BEFORE AFTER`.
fn uptime_span(line: &str) -> Option<f64> {
    let mut words = line.trim().strip_prefix("io-uptime ")?.split_whitespace();
    let before: f64 = words.next()?.parse().ok()?;
    let after: f64 = words.next()?.parse().ok()?;
    (after >= before).then_some(after - before)
}

/// Boots with `disk` attached, writes and reads /dev/vda with dd, powers off.
fn disk_session(qemu: &Qemu, machine: &Machine, payload: &Payload, disk: &Path, log: &Path) -> Result<Record> {
    const TIMEOUT: Duration = Duration::from_secs(180);
    let mut command = qemu.command(machine, payload);
    command.args(qemu::disk_args(disk));
    console_session(command, log, |console| {
        console.expect(READY, TIMEOUT).context("boot to the init-ready line")?;
        console.expect(PROMPT, TIMEOUT).context("the first shell prompt")?;
        let mut values = BTreeMap::new();
        // busybox dd prints no rate, so the guest's own clock (/proc/uptime, 10 ms resolution) times it.
        for (key, dd) in [
            ("write_mb_s", format!("dd if=/dev/zero of=/dev/vda bs=1M count={IO_MIB} oflag=direct")),
            ("read_mb_s", format!("dd if=/dev/vda of=/dev/null bs=1M count={IO_MIB} iflag=direct")),
        ] {
            let command = format!(
                "a=$(cut -d' ' -f1 /proc/uptime); {dd} 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo io-uptime $a $b"
            );
            console.send_line(&command)?;
            let line = console
                .expect_line(&format!("`io-uptime` after `{dd}`"), TIMEOUT, |line| uptime_span(line).is_some())
                .with_context(|| format!("`{dd}`"))?;
            let seconds = uptime_span(&line).unwrap_or_default().max(0.01);
            values.insert(key.to_string(), (IO_MIB << 20) as f64 / 1e6 / seconds);
            console.expect(PROMPT, TIMEOUT).context("the prompt after dd")?;
        }
        power_off(console)?;
        Ok((values, None))
    })
}

fn record_run(
    order: usize,
    variant: &str,
    repetition: u32,
    result: Result<Record>,
    log: &Path,
) -> Run {
    let log = Some(log.display().to_string());
    match result {
        Ok((values, exits)) => {
            let run = Run {
                order,
                variant: variant.to_string(),
                repetition,
                ok: true,
                error: None,
                log,
                values,
                exits,
            };
            println!(
                "    {order:>2} {variant:<18} #{}  ok  {}",
                repetition + 1,
                describe_values(&run.values)
            );
            run
        }
        Err(error) => {
            let message = format!("{error:#}");
            println!(
                "    {order:>2} {variant:<18} #{}  FAILED  {}",
                repetition + 1,
                message.lines().next().unwrap_or("")
            );
            Run {
                order,
                variant: variant.to_string(),
                repetition,
                ok: false,
                error: Some(message),
                log,
                values: BTreeMap::new(),
                exits: None,
            }
        }
    }
}

fn describe_values(values: &BTreeMap<String, f64>) -> String {
    values
        .iter()
        .filter(|(_, value)| **value != 0.0)
        .map(|(key, value)| format!("{key} {}", report::format_value(*value)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The exit benchmark's runs in each round: (index into the Keel/native variants, label, activity).
/// The first is the baseline the next two are measured against; the last is the busy loop natively.
fn exit_plan(seconds: u64) -> [(usize, String, Activity); 4] {
    let idle = Duration::from_secs(seconds);
    let none = Duration::ZERO;
    [
        (
            0,
            "keel-base".to_string(),
            Activity::Loop {
                busy_seconds: 0,
                idle: none,
            },
        ),
        (
            0,
            format!("keel-idle-{seconds}s"),
            Activity::Loop {
                busy_seconds: 0,
                idle,
            },
        ),
        (
            0,
            format!("keel-busy-{seconds}s"),
            Activity::Loop {
                busy_seconds: seconds,
                idle: none,
            },
        ),
        (
            1,
            format!("native-busy-{seconds}s"),
            Activity::Loop {
                busy_seconds: seconds,
                idle: none,
            },
        ),
    ]
}

/// Per round, the idle and busy runs' exits minus the round's baseline run, over the difference of
/// their prompt-to-poweroff times; one figure per (activity, cause).
fn exit_rate_figures(
    runs: &[Run],
    plan: &[(usize, String, Activity); 4],
    reps: u32,
) -> Vec<Figure> {
    let baseline_label = &plan[0].1;
    let measured = [("idle", &plan[1].1), ("busy", &plan[2].1)];
    let find = |label: &str, repetition: u32| {
        runs.iter()
            .find(|run| run.ok && run.variant == label && run.repetition == repetition)
    };
    // (activity, cause) -> rates, in the order causes first appear.
    let mut rates: Vec<((&str, String), Vec<f64>)> = Vec::new();
    for repetition in 0..reps {
        let Some(baseline) = find(baseline_label, repetition) else {
            continue;
        };
        for (activity, label) in &measured {
            let Some(run) = find(label, repetition) else {
                continue;
            };
            let Some(rate) = exit_rates(run, baseline) else {
                continue;
            };
            for (cause, value) in rate {
                let key = (*activity, cause);
                match rates.iter_mut().find(|(known, _)| *known == key) {
                    Some((_, values)) => values.push(value),
                    None => rates.push((key, vec![value])),
                }
            }
        }
    }
    rates
        .into_iter()
        .map(|((activity, cause), values)| {
            Figure::keel_only(&format!("{activity}: {cause} exits"), "1/s", &values)
        })
        .collect()
}

/// Exits per second by cause of `run` over `baseline`; `None` without counts on both or without a
/// longer interval than the baseline's.
fn exit_rates(run: &Run, baseline: &Run) -> Option<Vec<(String, f64)>> {
    let difference = parse::exit_difference(run.exits.as_ref()?, baseline.exits.as_ref()?)?;
    let seconds = run.values.get("interval_s")? - baseline.values.get("interval_s")?;
    if seconds <= 0.0 {
        return None;
    }
    Some(
        difference
            .into_iter()
            .map(|(cause, count)| (cause, count as f64 / seconds))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_run(
        variant: &str,
        repetition: u32,
        interval_s: f64,
        total: u64,
        sbi: u64,
        timer: u64,
    ) -> Run {
        let line = format!(
            "capsule 'boot' vCPU 0: {total} exits (SBI {sbi}, MMIO {}, host timer {timer})",
            total - sbi - timer
        );
        Run {
            order: 0,
            variant: variant.to_string(),
            repetition,
            ok: true,
            error: None,
            log: None,
            values: BTreeMap::from([("interval_s".to_string(), interval_s)]),
            exits: parse::exit_counts(&line),
        }
    }

    #[test]
    fn exit_rates_subtract_the_boot_and_divide_by_the_extra_time() {
        let baseline = exit_run("keel-base", 0, 0.5, 9_000, 100, 0);
        let idle = exit_run("keel-idle-10s", 0, 10.5, 9_500, 300, 0);
        let rates = exit_rates(&idle, &baseline).unwrap();
        assert_eq!(rates[0], ("total".to_string(), 50.0));
        assert!(rates.contains(&("SBI".to_string(), 20.0)));
        assert!(rates.contains(&("MMIO".to_string(), 30.0)));
        assert!(rates.contains(&("host timer".to_string(), 0.0)));
        // No longer than the baseline: no rate rather than a division by zero or a negative time.
        let same = exit_run("keel-idle-10s", 0, 0.5, 9_500, 300, 0);
        assert_eq!(exit_rates(&same, &baseline), None);
    }

    #[test]
    fn exit_rate_figures_pair_runs_of_the_same_round() {
        let runs = vec![
            exit_run("keel-base", 0, 0.0, 1_000, 10, 0),
            exit_run("keel-idle-4s", 0, 4.0, 1_400, 10, 4),
            exit_run("keel-busy-4s", 0, 5.0, 6_000, 10, 8),
            exit_run("keel-base", 1, 0.0, 2_000, 10, 0),
            exit_run("keel-idle-4s", 1, 4.0, 2_800, 10, 0),
            // Round 1's busy run failed: it contributes nothing.
            Run {
                ok: false,
                ..exit_run("keel-busy-4s", 1, 5.0, 9_999, 10, 0)
            },
        ];
        let figures = exit_rate_figures(&runs, &exit_plan(4), 2);
        let total_idle = figures
            .iter()
            .find(|figure| figure.name == "idle: total exits")
            .unwrap();
        assert_eq!(
            total_idle.keel.as_ref().unwrap().samples,
            vec![100.0, 200.0]
        );
        let busy_timer = figures
            .iter()
            .find(|figure| figure.name == "busy: host timer exits")
            .unwrap();
        assert_eq!(busy_timer.keel.as_ref().unwrap().samples, vec![1.6]);
        assert!(figures.iter().all(|figure| figure.native.is_none()));
    }

    #[test]
    fn busy_command_ends_with_the_marker_and_stays_short() {
        let command = busy_command(10);
        assert!(command.contains("+10))"), "{command}");
        assert!(command.ends_with(&format!("echo {BUSY_MARKER} $n")));
        assert!(command.len() < 200, "{} characters", command.len());
    }

    #[test]
    fn benchmark_names_are_unique() {
        let mut names: Vec<&str> = BENCHMARKS.iter().map(|(name, _)| *name).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }

    #[test]
    fn uptime_spans_are_read_from_the_marker_line() {
        assert_eq!(uptime_span("io-uptime 12.50 14.00"), Some(1.5));
        assert_eq!(uptime_span("keel-guest# a=$(cut -d' ' -f1 /proc/uptime); echo io-uptime $a $b"), None);
        assert_eq!(uptime_span("io-uptime 3.00 2.00"), None);
    }

    #[test]
    fn ready_lines_are_attributed_to_their_capsule() {
        assert_eq!(ready_capsule("keel-guest: init ready").as_deref(), Some("boot"));
        assert_eq!(ready_capsule("[c3] keel-guest: init ready").as_deref(), Some("c3"));
        assert_eq!(ready_capsule("[boot] keel-guest: init ready").as_deref(), Some("boot"));
        assert_eq!(ready_capsule("[c3] something else"), None);
        assert_eq!(ready_capsule("echo keel-guest: init ready"), None);
    }

    /// A fake guest that answers like the busybox shell: the session measures, idles or runs the
    /// busy loop, and powers off.
    #[test]
    fn session_times_the_boot_and_runs_the_activity() {
        let script = r#"
            echo "keel-guest: init ready"
            while printf 'keel-guest# ' && read -r line; do
              case "$line" in
                *keel-busy-done*) echo "keel-busy-done 17" ;;
                poweroff) echo "[keel h0] INFO  capsule 'boot' vCPU 0: 12 exits (SBI 2, MMIO 10)"; exit 0 ;;
              esac
            done
        "#;
        let mut command = std::process::Command::new("sh");
        command.args(["-c", script]);
        let spawned = Instant::now();
        let mut console = Console::spawn(command).unwrap();
        let session = converse(
            &mut console,
            spawned,
            Duration::from_secs(10),
            Activity::Loop {
                busy_seconds: 1,
                idle: Duration::ZERO,
            },
        )
        .unwrap();
        assert!(session.ready_s <= session.prompt_s);
        assert_eq!(session.busy_iterations, Some(17));
        assert!(session.busy_loop_s.unwrap() <= session.interval_s);
        let counts = parse::total_exit_counts(&console.transcript(), BOOT_CAPSULE).unwrap();
        assert_eq!(counts.total, 12);

        let mut command = std::process::Command::new("sh");
        command.args(["-c", script]);
        let spawned = Instant::now();
        let mut console = Console::spawn(command).unwrap();
        let session = converse(
            &mut console,
            spawned,
            Duration::from_secs(10),
            Activity::Loop {
                busy_seconds: 0,
                idle: Duration::from_millis(300),
            },
        )
        .unwrap();
        assert!(session.interval_s >= 0.3, "{}", session.interval_s);
        assert!(session.busy_loop_s.unwrap() < session.interval_s);
    }

    #[test]
    fn session_reports_a_failed_poweroff() {
        let mut command = std::process::Command::new("sh");
        command.args([
            "-c",
            "echo 'keel-guest: init ready'; printf 'keel-guest# '; read -r line; exit 3",
        ]);
        let mut console = Console::spawn(command).unwrap();
        let error = converse(
            &mut console,
            Instant::now(),
            Duration::from_secs(10),
            Activity::Nothing,
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("expected exit status 0"),
            "{error:#}"
        );
    }
}
