//! What a benchmark run produces: the JSON document's shape, the plain-text tables, and the run's surroundings
//! (date, host CPU, git commit).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::elf::{Footprint, Section};
use super::parse::{ExitCounts, HostMemory};
use super::stats::{self, Summary};
use crate::shell;

/// The whole document written to target/keel/bench/results.json.
#[derive(Debug, Serialize)]
pub struct Results {
    /// Bumped when the document's shape changes incompatibly.
    pub schema: u32,
    pub date_utc: String,
    pub git_commit: Option<String>,
    /// Whether tracked files differed from the commit: the figures then describe uncommitted code.
    pub git_tree_dirty: Option<bool>,
    pub host: Host,
    pub qemu: QemuInfo,
    pub settings: Settings,
    pub benchmarks: Vec<Benchmark>,
    pub failed_runs: usize,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub cpu_model: Option<String>,
    pub cores: usize,
    /// /proc/loadavg before and after: other work on a shared machine shows up here.
    pub load_average_before: Option<String>,
    pub load_average_after: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct QemuInfo {
    pub binary: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub reps_small: u32,
    pub reps_debian: u32,
    pub interval_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

/// One benchmark's outcome: its figures (summaries with their baselines) and every run behind them.
#[derive(Debug, Serialize)]
pub struct Benchmark {
    pub name: String,
    pub status: Status,
    pub description: String,
    /// How the figures were measured and what they include; printed under the table.
    pub notes: Vec<String>,
    /// The QEMU command line of each variant (one example run each).
    pub commands: BTreeMap<String, String>,
    pub figures: Vec<Figure>,
    pub runs: Vec<Run>,
    /// Problems that stopped the benchmark before or between its runs (a failed build, say).
    pub errors: Vec<String>,
    pub footprint: Vec<FootprintReport>,
}

impl Benchmark {
    pub fn new(name: &str, description: &str) -> Benchmark {
        Benchmark {
            name: name.to_string(),
            status: Status::Ok,
            description: description.to_string(),
            notes: Vec::new(),
            commands: BTreeMap::new(),
            figures: Vec::new(),
            runs: Vec::new(),
            errors: Vec::new(),
            footprint: Vec::new(),
        }
    }

    pub fn failed_runs(&self) -> usize {
        self.runs.iter().filter(|run| !run.ok).count()
    }

    /// The value `key` of every successful run of `variant`, in run order.
    pub fn samples(&self, variant: &str, key: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|run| run.ok && run.variant == variant)
            .filter_map(|run| run.values.get(key).copied())
            .collect()
    }

    /// Ok unless skipped, or a run or a preparation step failed.
    pub fn settle_status(&mut self) {
        if self.status != Status::Skipped && (self.failed_runs() > 0 || !self.errors.is_empty()) {
            self.status = Status::Failed;
        }
    }
}

/// A measured quantity under Keel beside the same quantity measured natively in the same session,
/// when there is a native counterpart.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub keel: Option<Summary>,
    pub native: Option<Summary>,
    pub keel_over_native: Option<f64>,
}

impl Figure {
    pub fn compared(name: &str, unit: &str, keel: &[f64], native: &[f64]) -> Figure {
        let keel = Summary::of(keel);
        let native = Summary::of(native);
        let ratio = match (&keel, &native) {
            (Some(keel), Some(native)) => stats::ratio(keel, native),
            _ => None,
        };
        Figure {
            name: name.to_string(),
            unit: unit.to_string(),
            keel,
            native,
            keel_over_native: ratio,
        }
    }

    /// A Keel-only figure (exit rates, footprint): no native counterpart exists.
    pub fn keel_only(name: &str, unit: &str, keel: &[f64]) -> Figure {
        Figure {
            name: name.to_string(),
            unit: unit.to_string(),
            keel: Summary::of(keel),
            native: None,
            keel_over_native: None,
        }
    }
}

/// One QEMU run: its place in the alternation, what it measured, and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Position in the benchmark's run order, from 0.
    pub order: usize,
    pub variant: String,
    pub repetition: u32,
    pub ok: bool,
    pub error: Option<String>,
    pub log: Option<String>,
    /// Raw measurements, e.g. "init_ready_s" -> 2.81.
    pub values: BTreeMap<String, f64>,
    /// Keel's exit counts at capsule shutdown (Keel runs only).
    pub exits: Option<ExitCounts>,
}

/// The hypervisor image built for one manifest, and what Keel said about memory when it booted.
#[derive(Debug, Clone, Serialize)]
pub struct FootprintReport {
    pub manifest: String,
    pub elf: String,
    pub sections: Vec<Section>,
    pub totals: Footprint,
    pub host_memory: Option<HostMemory>,
    /// Capsule name -> KiB its G-stage tables take.
    pub gstage_tables_kib: BTreeMap<String, u64>,
}

/// A plain-text table with columns sized to fit; numeric-looking cells are right-aligned.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|header| header.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in self.rows.iter().chain([&self.headers]) {
            for (index, cell) in row.iter().enumerate() {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
        for (number, row) in [&self.headers, &rule]
            .into_iter()
            .chain(self.rows.iter())
            .enumerate()
        {
            let mut line = String::new();
            for (index, width) in widths.iter().enumerate() {
                let cell = row.get(index).map(String::as_str).unwrap_or("");
                if index > 0 {
                    line.push_str("  ");
                }
                // Headers and the first column read left to right; figures line up on the right.
                if number > 1 && index > 0 && looks_numeric(cell) {
                    let _ = write!(line, "{cell:>width$}");
                } else {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

fn looks_numeric(cell: &str) -> bool {
    cell.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '[')
        && cell.chars().any(|c| c.is_ascii_digit())
}

/// A number with about three significant digits, without exponent notation.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || magnitude == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// `median [min..max] ±spread%` for a table cell, or a dash.
pub fn format_summary(summary: Option<&Summary>) -> String {
    match summary {
        None => "-".to_string(),
        Some(summary) if summary.samples.len() == 1 => format_value(summary.median),
        Some(summary) => format!(
            "{} [{}..{}]",
            format_value(summary.median),
            format_value(summary.min),
            format_value(summary.max)
        ),
    }
}

pub fn format_spread(summary: Option<&Summary>) -> String {
    match summary.and_then(|summary| summary.spread_percent) {
        Some(spread) if summary.is_some_and(|s| s.samples.len() > 1) => format!("{spread:.0}%"),
        _ => "-".to_string(),
    }
}

/// The figures of one benchmark as a table.
pub fn figure_table(figures: &[Figure]) -> Table {
    let mut table = Table::new(&[
        "figure",
        "unit",
        "Keel median [min..max]",
        "spread",
        "native median [min..max]",
        "spread",
        "Keel/native",
        "runs",
    ]);
    for figure in figures {
        let count = |summary: &Option<Summary>| summary.as_ref().map_or(0, |s| s.samples.len());
        let runs = if figure.native.is_some() {
            format!("{}+{}", count(&figure.keel), count(&figure.native))
        } else {
            count(&figure.keel).to_string()
        };
        table.row(vec![
            figure.name.clone(),
            figure.unit.clone(),
            format_summary(figure.keel.as_ref()),
            format_spread(figure.keel.as_ref()),
            format_summary(figure.native.as_ref()),
            format_spread(figure.native.as_ref()),
            figure
                .keel_over_native
                .map_or_else(|| "-".to_string(), |ratio| format!("{ratio:.2}x")),
            runs,
        ]);
    }
    table
}

/// Prints one benchmark: heading, figure table, footprint sections, notes, failed runs.
pub fn print_benchmark(benchmark: &Benchmark) {
    let status = match benchmark.status {
        Status::Ok => "",
        Status::Failed => "  [FAILED]",
        Status::Skipped => "  [skipped]",
    };
    println!();
    println!("## {}: {}{status}", benchmark.name, benchmark.description);
    if !benchmark.figures.is_empty() {
        print!("{}", figure_table(&benchmark.figures).render());
    }
    for footprint in &benchmark.footprint {
        println!(
            "hypervisor built for {} ({}):",
            footprint.manifest, footprint.elf
        );
        let mut table = Table::new(&["section", "kind", "address", "bytes"]);
        for section in &footprint.sections {
            table.row(vec![
                section.name.clone(),
                format!("{:?}", section.kind).to_lowercase(),
                format!("{:#x}", section.address),
                section.size.to_string(),
            ]);
        }
        for line in table.render().lines() {
            println!("    {line}");
        }
    }
    for note in &benchmark.notes {
        println!("  * {note}");
    }
    for error in &benchmark.errors {
        println!("  ! {error}");
    }
    for run in benchmark.runs.iter().filter(|run| !run.ok) {
        println!(
            "  ! run {} ({} #{}) failed: {}{}",
            run.order,
            run.variant,
            run.repetition + 1,
            run.error.as_deref().unwrap_or("unknown error"),
            run.log
                .as_deref()
                .map(|log| format!(" (console log: {log})"))
                .unwrap_or_default()
        );
    }
}

/// The host CPU's model name from /proc/cpuinfo text ("model name : ..."; other architectures use other keys).
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        matches!(
            key.trim(),
            "model name" | "Model Name" | "uarch" | "cpu model"
        )
        .then(|| value.trim().to_string())
        .filter(|value| !value.is_empty())
    })
}

pub fn host() -> Host {
    Host {
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text)),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        load_average_before: load_average(),
        load_average_after: None,
    }
}

pub fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| text.trim().to_string())
}

/// The commit checked out, and whether tracked files differ from it. Read-only git commands;
/// `--no-optional-locks` keeps `status` from refreshing the index.
pub fn git_state(root: &Path) -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        let mut command = Command::new("git");
        command.current_dir(root).args(args);
        shell::output(command).ok()
    };
    let commit = run(&["rev-parse", "HEAD"]).map(|text| text.trim().to_string());
    let dirty = run(&[
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])
    .map(|text| !text.trim().is_empty());
    (commit, dirty)
}

/// Seconds since 1970 as (`2026-11-21T15:39:49Z`, `20261121T153949Z`): the document's date and the copy's name.
pub fn utc_timestamps(unix_seconds: u64) -> (String, String) {
    let days = unix_seconds / 86_400;
    let seconds_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_date(days);
    let (hour, minute, second) = (
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
    );
    (
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
        format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z"),
    )
}

pub fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar. Counts in
/// 400-year eras starting on March 1st, so the leap day falls at the end of each computed year.
fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    let days = days_since_epoch + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_timestamps(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_timestamps(951_782_400),
            (
                "2000-02-29T00:00:00Z".to_string(),
                "20000229T000000Z".to_string()
            )
        );
        assert_eq!(utc_timestamps(1_709_251_199).0, "2024-02-29T23:59:59Z");
        assert_eq!(utc_timestamps(1_798_761_600).0, "2027-01-01T00:00:00Z");
        assert_eq!(utc_timestamps(4_107_542_400).0, "2100-03-01T00:00:00Z");
    }

    #[test]
    fn cpu_model_is_read_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\nmodel name :\n"), None);
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn values_keep_about_three_significant_digits() {
        assert_eq!(format_value(2.8134), "2.81");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(1234.6), "1235");
        assert_eq!(format_value(0.04567), "0.046");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(-3.5), "-3.50");
    }

    #[test]
    fn figures_show_median_range_spread_and_ratio() {
        let figure = Figure::compared("init ready", "s", &[3.0, 2.0, 4.0], &[1.0, 1.0, 1.0]);
        assert_eq!(figure.keel_over_native, Some(3.0));
        let text = figure_table(&[figure]).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("figure"));
        assert!(lines[1].starts_with("------"));
        assert!(lines[2].contains("3.00 [2.00..4.00]"), "{text}");
        assert!(lines[2].contains("67%"), "{text}");
        assert!(lines[2].contains("3.00x"), "{text}");
        assert!(lines[2].ends_with("3+3"), "{text}");

        let alone = Figure::keel_only("SBI exits", "1/s", &[]);
        assert!(alone.keel.is_none());
        let text = figure_table(&[alone]).render();
        assert!(text.lines().nth(2).unwrap().ends_with('0'), "{text}");
    }

    #[test]
    fn table_columns_line_up() {
        let mut table = Table::new(&["name", "value"]);
        table.row(vec!["a".into(), "1".into()]);
        table.row(vec!["longer name".into(), "12345".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "name         value");
        assert_eq!(lines[1], "-----------  -----");
        assert_eq!(lines[2], "a                1");
        assert_eq!(lines[3], "longer name  12345");
    }

    #[test]
    fn benchmark_status_follows_its_runs() {
        let mut benchmark = Benchmark::new("boot-small", "test");
        benchmark.settle_status();
        assert_eq!(benchmark.status, Status::Ok);
        benchmark.runs.push(Run {
            order: 0,
            variant: "keel".into(),
            repetition: 0,
            ok: false,
            error: Some("timed out".into()),
            log: None,
            values: BTreeMap::new(),
            exits: None,
        });
        benchmark.settle_status();
        assert_eq!(benchmark.status, Status::Failed);
        assert_eq!(benchmark.failed_runs(), 1);

        let mut skipped = Benchmark::new("scale", "test");
        skipped.status = Status::Skipped;
        skipped.settle_status();
        assert_eq!(skipped.status, Status::Skipped);
    }
}
