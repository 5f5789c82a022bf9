//! Running host commands with clear progress lines and errors that name the command that failed.

use std::ffi::OsStr;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context as _, Result};

/// Announces a step the way every xtask step is announced, so a long log is easy to skim.
pub fn step(message: &str) {
    println!("==> {message}");
}

/// A shell-like rendering of a command, for progress lines and error messages.
pub fn describe(command: &Command) -> String {
    let mut words = vec![quote(command.get_program())];
    words.extend(command.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited output and fails unless it exits successfully.
pub fn run(mut command: Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start `{}`", describe(&command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&command));
    }
    Ok(())
}

/// Runs a command and returns its standard output; on failure the error carries its standard error.
pub fn output(mut command: Command) -> Result<String> {
    let result = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(&command)))?;
    if !result.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(&command),
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    String::from_utf8(result.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8 output", describe(&command)))
}

/// Runs a command attached to this terminal and returns its exit status whatever it is.
pub fn run_interactive(mut command: Command) -> Result<ExitStatus> {
    command
        .status()
        .with_context(|| format!("cannot start `{}`", describe(&command)))
}

/// Finds an executable on PATH, like `which`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_only_words_that_need_it() {
        let mut command = Command::new("qemu-system-riscv64");
        command.args([
            "-m",
            "512M",
            "-append",
            "console=ttyS0 earlycon=sbi",
            "it's",
        ]);
        assert_eq!(
            describe(&command),
            r"qemu-system-riscv64 -m 512M -append 'console=ttyS0 earlycon=sbi' 'it'\''s'"
        );
    }

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("definitely-not-a-real-program-name").is_none());
    }

    #[test]
    fn output_reports_the_failing_command() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo oops >&2; exit 3"]);
        let message = format!("{:#}", output(command).unwrap_err());
        assert!(message.contains("sh -c"), "{message}");
        assert!(message.contains("oops"), "{message}");
    }
}
