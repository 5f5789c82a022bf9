//! The small guest kernel: Debian's linux-source-6.1, tinyconfig plus guests/linux-small/keel.config.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::cache::{self, Key};
use crate::shell;
use crate::Workspace;

const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
const CROSS_COMPILE: &str = "riscv64-linux-gnu-";
/// Bumped when the build steps below change in a way that changes the Image.
const RECIPE_VERSION: &[u8] = b"1";
/// One progress line per this many compiled files: enough to show life, not the whole log.
const PROGRESS_EVERY: usize = 100;

/// Builds (or reuses) the Image; returns the path of the cached Image.
pub fn ensure(workspace: &Workspace) -> Result<PathBuf> {
    let fragment_path = workspace.root.join("guests/linux-small/keel.config");
    let fragment = fs::read(&fragment_path)
        .with_context(|| format!("cannot read {}", fragment_path.display()))?;
    let source_version = installed_version(SOURCE_PACKAGE)?;
    let mut key = Key::new("linux-small");
    key.add("fragment", &fragment)
        .add("source-version", source_version.as_bytes())
        .add("recipe", RECIPE_VERSION);
    let cache_dir = workspace.cache.dir("linux-small")?;
    let destination = cache_dir.join(key.short());
    let image = destination.join("Image");
    if image.is_file() {
        return Ok(image);
    }

    shell::step(&format!(
        "building the small kernel from {SOURCE_PACKAGE} {source_version} with {} (a few minutes; log in {})",
        fragment_path.display(),
        cache_dir.display()
    ));
    let work = cache::staging_dir(&cache_dir.join(format!("work-{}", key.short())))?;
    let log_path = cache_dir.join(format!("build-{}.log", key.short()));
    let result = build(&work, &fragment_path, &fragment, &log_path);
    let outcome = result.and_then(|built| {
        let staging = cache::staging_dir(&destination)?;
        for (from, to) in [
            (built.join("arch/riscv/boot/Image"), "Image"),
            (built.join(".config"), "config"),
        ] {
            fs::copy(&from, staging.join(to))
                .with_context(|| format!("cannot copy {}", from.display()))?;
        }
        fs::rename(&log_path, staging.join("build.log")).context("cannot move the build log")?;
        cache::publish(&staging, &destination)
    });
    // The source tree is a gigabyte once built; only the Image, its config and the log are kept.
    cache::remove_any(&work)?;
    outcome.map(|()| image)
}

fn build(work: &Path, fragment_path: &Path, fragment: &[u8], log_path: &Path) -> Result<PathBuf> {
    let started = Instant::now();
    let mut log = fs::File::create(log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut unpack = Command::new("tar");
    unpack.arg("-xf").arg(SOURCE_TARBALL).arg("-C").arg(work);
    println!("    unpacking {SOURCE_TARBALL}");
    shell::output(unpack)?;
    let tree = work.join("linux-source-6.1");

    let jobs = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .to_string();
    let make = |targets: &[&str]| {
        let mut command = Command::new("make");
        command
            .current_dir(&tree)
            .arg("ARCH=riscv")
            .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
            .arg(format!("-j{jobs}"))
            .args(targets);
        command
    };
    println!("    configuring: tinyconfig + {}", fragment_path.display());
    run_logged(make(&["tinyconfig"]), &mut log, log_path, false)?;
    let mut merge = Command::new("scripts/kconfig/merge_config.sh");
    merge
        .current_dir(&tree)
        .env("ARCH", "riscv")
        .env("CROSS_COMPILE", CROSS_COMPILE)
        .args(["-m", ".config"])
        .arg(fragment_path);
    run_logged(merge, &mut log, log_path, false)?;
    run_logged(make(&["olddefconfig"]), &mut log, log_path, false)?;

    let config =
        fs::read_to_string(tree.join(".config")).context("cannot read the merged .config")?;
    let unmet = unmet_options(&String::from_utf8_lossy(fragment), &config);
    if !unmet.is_empty() {
        bail!(
            "these options of {} did not survive `make olddefconfig` (missing dependency or unknown symbol): {}",
            fragment_path.display(),
            unmet.join(", ")
        );
    }

    println!("    compiling with {jobs} jobs");
    let compiled = run_logged(make(&["Image"]), &mut log, log_path, true)?;
    println!(
        "    done: {compiled} files in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    log.flush().context("cannot write the build log")?;
    Ok(tree)
}

/// Runs a build step with its output going to the log; with `progress`, prints a line every
/// [`PROGRESS_EVERY`] compiled files. On failure, shows the end of the log. Returns the file count.
fn run_logged(
    mut command: Command,
    log: &mut fs::File,
    log_path: &Path,
    progress: bool,
) -> Result<usize> {
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    let writer_for_errors = writer.try_clone().context("cannot duplicate a pipe")?;
    command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_for_errors);
    let description = shell::describe(&command);
    writeln!(log, "$ {description}").context("cannot write the build log")?;
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start `{description}`"))?;
    // The command holds the pipe's write ends; drop ours so the reader sees the end of output.
    drop(command);
    let mut compiled = 0usize;
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap_or_default();
        writeln!(log, "{line}").context("cannot write the build log")?;
        let trimmed = line.trim_start();
        if progress && (trimmed.starts_with("CC ") || trimmed.starts_with("AS ")) {
            compiled += 1;
            if compiled.is_multiple_of(PROGRESS_EVERY) {
                let object = trimmed.split_whitespace().nth(1).unwrap_or("");
                println!("    ... {compiled} files compiled (now {object})");
            }
        }
        tail.push(line);
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{description}`"))?;
    if !status.success() {
        println!("    last lines of {}:", log_path.display());
        for line in &tail {
            println!("    | {line}");
        }
        bail!(
            "`{description}` failed ({status}); full log: {}",
            log_path.display()
        );
    }
    Ok(compiled)
}

/// The fragment's settings that the final .config does not have, as `CONFIG_X=value` or
/// `CONFIG_X not set` texts.
pub fn unmet_options(fragment: &str, config: &str) -> Vec<String> {
    let config_lines: Vec<&str> = config.lines().map(str::trim).collect();
    let mut unmet = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|rest| rest.strip_suffix(" is not set"))
        {
            let prefix = format!("{name}=");
            if config_lines
                .iter()
                .any(|config_line| config_line.starts_with(&prefix))
            {
                unmet.push(format!("{name} not set"));
            }
        } else if line.starts_with("CONFIG_") && !config_lines.contains(&line) {
            unmet.push(line.to_string());
        }
    }
    unmet
}

/// The installed version of a Debian package, which keys the cache entry built from it.
fn installed_version(package: &str) -> Result<String> {
    let mut command = Command::new("dpkg-query");
    command.args(["-W", "-f=${Version}", package]);
    let version = shell::output(command)
        .with_context(|| format!("{package} is not installed (run `cargo xtask setup`)"))?;
    if version.trim().is_empty() {
        bail!("{package} is not installed (run `cargo xtask setup`)");
    }
    Ok(version.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmet_options_reports_dropped_and_unwanted_settings() {
        let fragment = "# comment\nCONFIG_SMP=y\nCONFIG_NR_CPUS=8\nCONFIG_TMPFS=y\n# CONFIG_MODULES is not set\n\n";
        let config =
            "CONFIG_SMP=y\nCONFIG_NR_CPUS=8\n# CONFIG_TMPFS is not set\nCONFIG_MODULES=y\n";
        assert_eq!(
            unmet_options(fragment, config),
            ["CONFIG_TMPFS=y", "CONFIG_MODULES not set"]
        );
        let satisfied =
            "CONFIG_SMP=y\nCONFIG_NR_CPUS=8\nCONFIG_TMPFS=y\n# CONFIG_MODULES is not set\n";
        assert!(unmet_options(fragment, satisfied).is_empty());
        // A different value is not the asked-for value.
        assert_eq!(
            unmet_options("CONFIG_NR_CPUS=8", "CONFIG_NR_CPUS=64"),
            ["CONFIG_NR_CPUS=8"]
        );
    }

    #[test]
    fn the_repository_fragment_names_the_essentials() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/linux-small/keel.config");
        let fragment = fs::read_to_string(path).unwrap();
        for option in [
            "CONFIG_SMP=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_BLK_DEV_INITRD=y",
            "CONFIG_RISCV_SBI=y",
        ] {
            assert!(
                fragment.lines().any(|line| line == option),
                "{option} missing"
            );
        }
    }
}
