//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` on the stable toolchain and runs each for a bounded time.
//!
//! libFuzzer's own instrumentation needs no nightly compiler: cargo-fuzz only asks for `-Zsanitizer`
//! when a sanitizer is chosen, so the targets are built with `--sanitizer none` and the coverage
//! passes (`-Cpasses=sancov-module`, plain `-C` flags) work on stable. Working corpora and crash
//! artifacts live in the cache (`<cache>/fuzz/<target>/`), never in the repository; the committed
//! seeds in `fuzz/seeds/<target>/` are copied into the corpus before every run.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::shell;
use crate::Workspace;

/// Every fuzz target in `fuzz/fuzz_targets/`, in the order they run.
pub const TARGETS: &[&str] = &[
    "dmfs_image",
    "manifest",
    "devicetree_host",
    "devicetree_guest",
    "insn_decode",
    "sbi_dispatch",
    "virtqueue",
];

/// The cargo-fuzz release installed when it is missing; 0.13 builds with `--sanitizer none` on stable.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Per-input time limit in seconds: a slower input is reported as a hang (a `timeout-` artifact).
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// Memory limit of one fuzzing process in MiB: more is reported as an `oom-` artifact.
const RSS_LIMIT_MB: u32 = 2048;

pub struct Options {
    /// How long each target runs.
    pub seconds: u64,
    /// Targets to run; empty means all of [`TARGETS`].
    pub targets: Vec<String>,
    /// How many targets run at the same time.
    pub jobs: usize,
}

/// What one target's run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub seconds: f64,
    pub executions: u64,
    pub executions_per_second: f64,
    pub corpus_files: usize,
    /// Crash, hang, leak and out-of-memory inputs written during this run.
    pub crashes: Vec<PathBuf>,
    /// libFuzzer's full output.
    pub log: PathBuf,
    /// Set when libFuzzer exited with an error yet left no artifact (it could not even start).
    pub failure: Option<String>,
}

impl TargetReport {
    pub fn passed(&self) -> bool {
        self.crashes.is_empty() && self.failure.is_none()
    }
}

#[derive(Serialize)]
struct Report<'a> {
    seconds_per_target: u64,
    targets: &'a [TargetReport],
}

/// Runs `cargo xtask fuzz`: install, build, run, print the table and write `target/fuzz/report.json`.
/// Returns whether every target ran without a crash.
pub fn run(workspace: &Workspace, options: &Options) -> Result<bool> {
    let targets = select(&options.targets)?;
    let reports = build_and_run(workspace, &targets, options.seconds, options.jobs)?;
    print_table(&reports);
    let report_path = report_dir(workspace).join("report.json");
    let json = serde_json::to_string_pretty(&Report {
        seconds_per_target: options.seconds,
        targets: &reports,
    })
    .context("cannot encode the fuzzing report as JSON")?;
    fs::write(&report_path, json + "\n")
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    println!("report: {}", report_path.display());
    print_crashes(&reports);
    Ok(reports.iter().all(TargetReport::passed))
}

/// Installs cargo-fuzz if needed, builds every target and runs `targets` for `seconds` each.
pub fn build_and_run(
    workspace: &Workspace,
    targets: &[&str],
    seconds: u64,
    jobs: usize,
) -> Result<Vec<TargetReport>> {
    check_targets_exist(workspace)?;
    crate::setup::ensure_host_tools()?;
    ensure_cargo_fuzz()?;
    build(workspace)?;
    let binaries = binary_dir(workspace)?;
    let mut reports = Vec::with_capacity(targets.len());
    // A few targets at a time, each in its own process: libFuzzer is single-threaded.
    for batch in targets.chunks(jobs.max(1)) {
        let results: Vec<Result<TargetReport>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&target| {
                    let binaries = &binaries;
                    scope.spawn(move || run_target(workspace, binaries, target, seconds))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle.join().unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("the thread running a fuzz target panicked"))
                    })
                })
                .collect()
        });
        for result in results {
            let report = result?;
            println!(
                "    {}: {} executions in {:.0} s{}",
                report.target,
                report.executions,
                report.seconds,
                if report.passed() { "" } else { ", FAILED" }
            );
            reports.push(report);
        }
    }
    Ok(reports)
}

fn select(requested: &[String]) -> Result<Vec<&'static str>> {
    if requested.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    requested
        .iter()
        .map(|name| {
            TARGETS
                .iter()
                .copied()
                .find(|target| target == name)
                .with_context(|| {
                    format!(
                        "no fuzz target {name:?}; the targets are {}",
                        TARGETS.join(", ")
                    )
                })
        })
        .collect()
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Installs the pinned cargo-fuzz when `cargo fuzz` is missing or a different version.
fn ensure_cargo_fuzz() -> Result<()> {
    let mut probe = Command::new(cargo());
    probe.args(["fuzz", "--version"]).stderr(Stdio::null());
    let installed = shell::output(probe).ok();
    // `cargo fuzz --version` prints "cargo-fuzz 0.13.2".
    if installed
        .as_deref()
        .is_some_and(|text| text.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION))
    {
        return Ok(());
    }
    shell::step(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (found: {})",
        installed.as_deref().map_or("none", str::trim)
    ));
    let mut install = Command::new(cargo());
    install.args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]);
    shell::run(install)
}

fn fuzz_dir(workspace: &Workspace) -> PathBuf {
    workspace.root.join("fuzz")
}

/// Cargo's target directory for the fuzz build; beside it the report.
fn report_dir(workspace: &Workspace) -> PathBuf {
    workspace.target.join("fuzz")
}

fn build_dir(workspace: &Workspace) -> PathBuf {
    report_dir(workspace).join("build")
}

fn build(workspace: &Workspace) -> Result<()> {
    shell::step("building the fuzz targets: cargo fuzz build --sanitizer none (stable toolchain)");
    let mut command = Command::new(cargo());
    command
        .current_dir(fuzz_dir(workspace))
        .args(["fuzz", "build", "--sanitizer", "none", "--target-dir"])
        .arg(build_dir(workspace));
    shell::run(command)
}

/// Where cargo-fuzz put the binaries: `<target-dir>/<host triple>/release`.
fn binary_dir(workspace: &Workspace) -> Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut command = Command::new(rustc);
    command.current_dir(fuzz_dir(workspace)).arg("-vV");
    let version = shell::output(command)?;
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .context("`rustc -vV` names no host triple")?;
    Ok(build_dir(workspace).join(host.trim()).join("release"))
}

/// The corpus and artifact folders of `target` in the cache, with the seeds copied in.
fn prepare_dirs(workspace: &Workspace, target: &str) -> Result<(PathBuf, PathBuf)> {
    let base = workspace.cache.dir(&format!("fuzz/{target}"))?;
    let corpus = base.join("corpus");
    let artifacts = base.join("artifacts");
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let seeds = fuzz_dir(workspace).join("seeds").join(target);
    if seeds.is_dir() {
        for entry in
            fs::read_dir(&seeds).with_context(|| format!("cannot list {}", seeds.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let destination =
                    corpus.join(format!("seed-{}", entry.file_name().to_string_lossy()));
                fs::copy(entry.path(), &destination).with_context(|| {
                    format!(
                        "cannot copy {} to {}",
                        entry.path().display(),
                        destination.display()
                    )
                })?;
            }
        }
    }
    Ok((corpus, artifacts))
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn run_target(
    workspace: &Workspace,
    binaries: &Path,
    target: &str,
    seconds: u64,
) -> Result<TargetReport> {
    let (corpus, artifacts) = prepare_dirs(workspace, target)?;
    let before = list_files(&artifacts)?;
    let log = artifacts.parent().map_or_else(
        || artifacts.join("last-run.log"),
        |base| base.join("last-run.log"),
    );
    let binary = binaries.join(target);

    let mut command = Command::new(&binary);
    command
        .arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        // The trailing slash matters: libFuzzer prepends the prefix to the file name as it is.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    shell::step(&format!(
        "fuzzing {target} for {seconds} s: {}",
        shell::describe(&command)
    ));
    let output_file =
        fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let started = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(output_file.try_clone()?)
        .stderr(output_file)
        .status()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let elapsed = started.elapsed().as_secs_f64();

    let text = read_log(&log)?;
    let executions = parse_executions(&text).unwrap_or(0);
    let crashes: Vec<PathBuf> = list_files(&artifacts)?
        .into_iter()
        .filter(|path| !before.contains(path))
        .collect();
    let failure = (!status.success() && crashes.is_empty()).then(|| {
        format!(
            "libFuzzer exited with {status} and wrote no artifact; see {}",
            log.display()
        )
    });
    let seconds_run = parse_seconds(&text).map_or(elapsed, |s| s as f64).max(1.0);
    Ok(TargetReport {
        target: target.to_string(),
        seconds: elapsed,
        executions,
        executions_per_second: executions as f64 / seconds_run,
        corpus_files: list_files(&corpus)?.len(),
        crashes,
        log,
        failure,
    })
}

fn read_log(path: &Path) -> Result<String> {
    let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // libFuzzer output is ASCII, but a crashing input's bytes can be echoed into it.
    let mut text = String::new();
    for line in BufReader::new(file).split(b'\n') {
        text.push_str(&String::from_utf8_lossy(&line?));
        text.push('\n');
    }
    Ok(text)
}

/// The number of inputs libFuzzer ran: its final statistics, else the `Done N runs` line, else the
/// last status line (`#N<TAB>NEW ...`), which is all there is when a crash ends the run early.
pub fn parse_executions(log: &str) -> Option<u64> {
    let from_stats = log.lines().find_map(|line| {
        line.strip_prefix("stat::number_of_executed_units:")
            .and_then(|value| value.trim().parse().ok())
    });
    let from_done = || {
        log.lines().find_map(|line| {
            let rest = line.strip_prefix("Done ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
    };
    let from_status = || {
        log.lines().rev().find_map(|line| {
            let rest = line.strip_prefix('#')?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let after = rest.get(digits.len()..)?;
            if digits.is_empty() || !after.starts_with(['\t', ' ']) {
                return None;
            }
            digits.parse().ok()
        })
    };
    from_stats.or_else(from_done).or_else(from_status)
}

/// The run time libFuzzer reports in `Done N runs in S second(s)`.
pub fn parse_seconds(log: &str) -> Option<u64> {
    log.lines().find_map(|line| {
        let rest = line.strip_prefix("Done ")?;
        let (_, after) = rest.split_once(" runs in ")?;
        after.split_whitespace().next()?.parse().ok()
    })
}

fn print_table(reports: &[TargetReport]) {
    println!();
    println!(
        "{:<18} {:>8} {:>13} {:>10} {:>12} {:>8}",
        "target", "seconds", "executions", "exec/s", "corpus size", "crashes"
    );
    for report in reports {
        println!(
            "{:<18} {:>8.0} {:>13} {:>10.0} {:>12} {:>8}",
            report.target,
            report.seconds,
            report.executions,
            report.executions_per_second,
            report.corpus_files,
            report.crashes.len()
        );
    }
    let executions: u64 = reports.iter().map(|report| report.executions).sum();
    let crashes: usize = reports.iter().map(|report| report.crashes.len()).sum();
    println!("total: {executions} executions, {crashes} crashes");
}

fn print_crashes(reports: &[TargetReport]) {
    for report in reports {
        for crash in &report.crashes {
            println!();
            println!("CRASH in {}: {}", report.target, crash.display());
            println!("  log:        {}", report.log.display());
            println!(
                "  reproduce:  (cd fuzz && cargo fuzz run --sanitizer none {} {})",
                report.target,
                crash.display()
            );
            println!(
                "  minimise:   (cd fuzz && cargo fuzz tmin --sanitizer none {} {})",
                report.target,
                crash.display()
            );
        }
        if let Some(failure) = &report.failure {
            println!();
            println!("FAILED {}: {failure}", report.target);
        }
    }
}

/// A one-line summary for `cargo xtask test`: executions per target.
pub fn summary(reports: &[TargetReport]) -> String {
    reports
        .iter()
        .map(|report| {
            let verdict = if report.passed() {
                String::new()
            } else if report.crashes.is_empty() {
                " (failed to run)".to_string()
            } else {
                format!(" ({} crash(es))", report.crashes.len())
            };
            format!("{} {}{verdict}", report.target, report.executions)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that the table of targets and the folder of target sources agree.
pub fn check_targets_exist(workspace: &Workspace) -> Result<()> {
    for target in TARGETS {
        let source = fuzz_dir(workspace)
            .join("fuzz_targets")
            .join(format!("{target}.rs"));
        if !source.is_file() {
            bail!("fuzz target {target} has no source {}", source.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_the_final_statistics_first() {
        let log = "#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #65536\tpulse  cov: 50 ft: 60 corp: 5/40b lim: 4 exec/s: 32768 rss: 31Mb\n\
                   Done 70001 runs in 3 second(s)\n\
                   stat::number_of_executed_units: 70002\n\
                   stat::average_exec_per_sec:     23333\n";
        assert_eq!(parse_executions(log), Some(70002));
        assert_eq!(parse_seconds(log), Some(3));
    }

    #[test]
    fn executions_fall_back_to_done_then_to_the_last_status_line() {
        assert_eq!(
            parse_executions("Done 1234 runs in 15 second(s)\n"),
            Some(1234)
        );
        let crashed = "#1024\tNEW    cov: 5 ft: 5 corp: 2/3b\n\
                       #4096\tREDUCE cov: 6 ft: 7 corp: 3/4b\n\
                       thread '<unnamed>' panicked at fuzz_targets/x.rs:1:1:\n\
                       ==1== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(parse_executions(crashed), Some(4096));
        assert_eq!(parse_seconds(crashed), None);
        assert_eq!(parse_executions("#notanumber\n"), None);
        assert_eq!(parse_executions(""), None);
    }

    #[test]
    fn unknown_targets_are_refused_by_name() {
        assert_eq!(select(&[]).expect("all"), TARGETS);
        assert_eq!(
            select(&["virtqueue".to_string()]).expect("one"),
            ["virtqueue"]
        );
        let error = select(&["nope".to_string()]).expect_err("unknown");
        assert!(error.to_string().contains("no fuzz target \"nope\""));
    }

    #[test]
    fn every_target_has_a_source_and_a_manifest_entry() {
        let workspace = Workspace::locate().expect("workspace");
        check_targets_exist(&workspace).expect("sources");
        let manifest =
            fs::read_to_string(workspace.root.join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} missing from fuzz/Cargo.toml"
            );
        }
    }

    #[test]
    fn summary_names_each_target_and_its_executions() {
        let report = |target: &str, executions, crashes: Vec<PathBuf>| TargetReport {
            target: target.to_string(),
            seconds: 15.0,
            executions,
            executions_per_second: executions as f64 / 15.0,
            corpus_files: 3,
            crashes,
            log: PathBuf::from("log"),
            failure: None,
        };
        let reports = [
            report("a", 10, vec![]),
            report("b", 20, vec![PathBuf::from("crash-1")]),
        ];
        assert_eq!(summary(&reports), "a 10, b 20 (1 crash(es))");
        assert!(reports[0].passed() && !reports[1].passed());
    }
}
