//! The bare-metal test guests `guests/sbi-check` and `guests/hostile`: building their flat binaries, and reading the
//! verdict the SBI check guest prints.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::build::HYPERVISOR_TARGET;
use crate::console::Console;
use crate::images;
use crate::setup;
use crate::shell;
use crate::Workspace;

const SBI_CHECK_PACKAGE: &str = "keel-sbi-check";
const SBI_CHECK_EXECUTABLE: &str = "sbi-check";
const HOSTILE_PACKAGE: &str = "keel-hostile";
const HOSTILE_EXECUTABLE: &str = "hostile";
/// From binutils-riscv64-linux-gnu, which `cargo xtask setup` installs.
const OBJCOPY: &str = "riscv64-linux-gnu-objcopy";

/// The prefix of every line the guest prints about its checks.
const PREFIX: &str = "sbi-check: ";

/// Builds the SBI check guest in release mode for RISC-V and flattens it to target/keel/sbi-check.bin,
/// which loads at 0x80200000 both natively (`-kernel` with `-bios default`) and as a capsule's
/// `kernel_format = "flat"` kernel. Returns the binary's path.
pub fn build_sbi_check(workspace: &Workspace) -> Result<PathBuf> {
    build_flat_guest(workspace, SBI_CHECK_PACKAGE, SBI_CHECK_EXECUTABLE, "the SBI check guest")
}

/// Builds the hostile test guest (guests/hostile, docs/hostile.md), which shares the SBI check guest's runtime
/// and load address, and flattens it to target/keel/hostile.bin the same way.
pub fn build_hostile(workspace: &Workspace) -> Result<PathBuf> {
    build_flat_guest(workspace, HOSTILE_PACKAGE, HOSTILE_EXECUTABLE, "the hostile guest")
}

/// Builds `executable` of `package` in release mode for RISC-V and flattens it to target/keel/<executable>.bin.
fn build_flat_guest(workspace: &Workspace, package: &str, executable: &str, what: &str) -> Result<PathBuf> {
    if shell::which(OBJCOPY).is_none() {
        setup::ensure_host_tools()?;
    }
    let binary = workspace.keel_dir().join(format!("{executable}.bin"));
    shell::step(&format!(
        "building {what} for {HYPERVISOR_TARGET} and flattening it to {}",
        binary.display()
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(&workspace.root).args([
        "build",
        "--release",
        "-p",
        package,
        "--bin",
        executable,
        "--target",
        HYPERVISOR_TARGET,
    ]);
    shell::run(command)?;
    let elf = workspace
        .target
        .join(HYPERVISOR_TARGET)
        .join("release")
        .join(executable);
    images::require_file(&elf, &format!("{what}'s executable"))?;

    std::fs::create_dir_all(workspace.keel_dir())
        .with_context(|| format!("cannot create {}", workspace.keel_dir().display()))?;
    let mut objcopy = Command::new(OBJCOPY);
    objcopy.arg("-O").arg("binary").arg(&elf).arg(&binary);
    shell::run(objcopy)?;
    let size = std::fs::metadata(&binary)
        .with_context(|| format!("cannot read {}", binary.display()))?
        .len();
    if size == 0 {
        bail!("{OBJCOPY} wrote an empty {}", binary.display());
    }
    Ok(binary)
}

/// The counts in the guest's last line, `sbi-check: done, N checks ok, M failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub ok: u32,
    pub failed: u32,
}

/// Reads a `sbi-check: done, N checks ok, M failed` line (anything before the prefix is ignored, so a
/// console that shares the line with other output still counts).
pub fn parse_done_line(line: &str) -> Option<Verdict> {
    let (_, rest) = line.split_once("sbi-check: done, ")?;
    let (ok, rest) = rest.split_once(" checks ok, ")?;
    let failed = rest.trim_end().strip_suffix(" failed")?;
    Some(Verdict {
        ok: ok.trim().parse().ok()?,
        failed: failed.trim().parse().ok()?,
    })
}

/// The implementation ID in the guest's opening line, e.g. `0x4b45454c` from
/// `sbi-check: SBI v2.0 from Keel (implementation ID 0x4b45454c, version 0x100); ...`.
pub fn implementation_id(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("implementation ID ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (id.starts_with("0x") && id.len() > 2).then_some(id)
}

/// The `sbi-check: FAILED ...` lines of a transcript, in order.
pub fn failed_lines(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter(|line| line.contains("sbi-check: FAILED "))
        .map(|line| line.trim().to_string())
        .collect()
}

/// Follows the guest's run on the console: its opening line must name `expected_sbi_id`, its verdict
/// must be `N checks ok, 0 failed` with N > 0, and QEMU must then exit with status 0. On failure the
/// guest's FAILED lines are printed and the first one is in the error.
pub fn expect_sbi_check_report(
    console: &mut Console,
    expected_sbi_id: &str,
    start_timeout: Duration,
    run_timeout: Duration,
    exit_timeout: Duration,
) -> Result<String> {
    let opening = console
        .expect_line(
            "the guest's `sbi-check: SBI v...` line",
            start_timeout,
            |line| line.contains("sbi-check: SBI v"),
        )
        .context("the SBI check guest starts")?;
    let found_id = implementation_id(&opening).unwrap_or_default();
    if found_id != expected_sbi_id {
        bail!(
            "the guest runs on SBI implementation {found_id}, expected {expected_sbi_id} (line: {})",
            opening.trim()
        );
    }
    let done = console
        .expect_line(
            "`sbi-check: done, N checks ok, M failed`",
            run_timeout,
            |line| parse_done_line(line).is_some(),
        )
        .context("the SBI check guest finishes its checks")?;
    let verdict = parse_done_line(&done).unwrap_or(Verdict { ok: 0, failed: 0 });
    let transcript = console.transcript();
    let failures = failed_lines(&transcript);
    for line in &failures {
        println!("    {line}");
    }
    if verdict.failed > 0 || !failures.is_empty() {
        bail!(
            "{} of {} checks failed; first: {}",
            verdict.failed.max(failures.len() as u32),
            verdict.ok + verdict.failed,
            failures
                .first()
                .map(String::as_str)
                .unwrap_or("(no FAILED line printed)")
        );
    }
    if verdict.ok == 0 {
        bail!("the guest ran no check (`{}`)", done.trim());
    }
    let status = console
        .wait_exit(exit_timeout)
        .context("the guest's SRST shutdown ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after the guest's shutdown, expected exit status 0");
    }
    let skipped = transcript
        .lines()
        .filter(|line| line.contains(&format!("{PREFIX}skipped ")))
        .count();
    Ok(format!(
        "{} checks ok, {skipped} skipped; SBI ID {found_id}",
        verdict.ok
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_lines_are_parsed() {
        assert_eq!(
            parse_done_line("sbi-check: done, 25 checks ok, 0 failed"),
            Some(Verdict { ok: 25, failed: 0 })
        );
        assert_eq!(
            parse_done_line("[keel] x sbi-check: done, 3 checks ok, 2 failed\r"),
            Some(Verdict { ok: 3, failed: 2 })
        );
        assert_eq!(
            parse_done_line("sbi-check: done, many checks ok, 0 failed"),
            None
        );
        assert_eq!(
            parse_done_line("sbi-check: done, 3 checks ok, 0 failed later"),
            None
        );
        assert_eq!(parse_done_line("sbi-check: ok base: probe TIME is 1"), None);
    }

    #[test]
    fn implementation_id_is_read_from_the_opening_line() {
        let line =
            "sbi-check: SBI v2.0 from Keel (implementation ID 0x4b45454c, version 0x100); hart 0";
        assert_eq!(implementation_id(line).as_deref(), Some("0x4b45454c"));
        let line =
            "sbi-check: SBI v1.0 from OpenSBI (implementation ID 0x1, version 0x10001); hart 1";
        assert_eq!(implementation_id(line).as_deref(), Some("0x1"));
        assert_eq!(implementation_id("implementation ID ,"), None);
        assert_eq!(implementation_id("no id here"), None);
    }

    #[test]
    fn failed_lines_are_collected_in_order() {
        let transcript = "sbi-check: ok a\nsbi-check: FAILED b: 1, expected 0\nnoise\n  sbi-check: FAILED c: x\n";
        assert_eq!(
            failed_lines(transcript),
            [
                "sbi-check: FAILED b: 1, expected 0",
                "sbi-check: FAILED c: x"
            ]
        );
        assert!(failed_lines("sbi-check: ok a\n").is_empty());
    }

    fn fake_guest(script: &str) -> Console {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Console::spawn(command).unwrap()
    }

    fn check(script: &str, expected_id: &str) -> Result<String> {
        let mut console = fake_guest(script);
        let second = Duration::from_secs(5);
        expect_sbi_check_report(&mut console, expected_id, second, second, second)
    }

    #[test]
    fn a_clean_run_passes_and_a_failed_check_does_not() {
        let opening = "echo 'sbi-check: SBI v2.0 from Keel (implementation ID 0x4b45454c, version 0x100); hart 0'";
        let summary = check(
            &format!("{opening}; echo 'sbi-check: ok a'; echo 'sbi-check: skipped b: why'; echo 'sbi-check: done, 1 checks ok, 0 failed'"),
            "0x4b45454c",
        )
        .unwrap();
        assert_eq!(summary, "1 checks ok, 1 skipped; SBI ID 0x4b45454c");

        let error = check(
            &format!("{opening}; echo 'sbi-check: FAILED b: 1, expected 0'; echo 'sbi-check: done, 4 checks ok, 1 failed'"),
            "0x4b45454c",
        )
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("1 of 5 checks failed; first: sbi-check: FAILED b: 1, expected 0"),
            "{message}"
        );
    }

    #[test]
    fn wrong_implementation_no_checks_and_bad_exit_fail() {
        let native =
            "echo 'sbi-check: SBI v1.0 from OpenSBI (implementation ID 0x1, version 0x10001)'";
        let error = check(
            &format!("{native}; echo 'sbi-check: done, 3 checks ok, 0 failed'"),
            "0x4b45454c",
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("implementation 0x1, expected 0x4b45454c"),
            "{error:#}"
        );

        let error = check(
            &format!("{native}; echo 'sbi-check: done, 0 checks ok, 0 failed'"),
            "0x1",
        )
        .unwrap_err();
        assert!(format!("{error:#}").contains("ran no check"), "{error:#}");

        let error = check(
            &format!("{native}; echo 'sbi-check: done, 2 checks ok, 0 failed'; exit 3"),
            "0x1",
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("expected exit status 0"),
            "{error:#}"
        );

        let error = check(&format!("{native}; echo 'sbi-check: ok a'"), "0x1").unwrap_err();
        assert!(
            format!("{error:#}").contains("finishes its checks"),
            "{error:#}"
        );
    }
}
