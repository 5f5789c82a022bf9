//! Command-line front end of mkdmfs: reads a manifest, writes the image, prints what went in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mkdmfs::Defines;

/// Builds a Keel DMFS image from a TOML manifest of capsules.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Arguments {
    /// Manifest to read.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// Image file to write.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Value for ${NAME} in manifest paths; may be repeated.
    #[arg(long = "define", value_name = "NAME=VALUE", value_parser = mkdmfs::parse_define)]
    defines: Vec<(String, String)>,
}

/// Writes through a temporary file in the same folder so a failed run never leaves a partial image.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, path)
        .with_context(|| format!("cannot move {} to {}", temporary.display(), path.display()))
}

fn run(arguments: Arguments) -> anyhow::Result<()> {
    // Later definitions of the same name win, as with most command-line tools.
    let defines: Defines = arguments.defines.into_iter().collect();
    let built = mkdmfs::build(&arguments.manifest, &defines)?;
    write_atomically(&arguments.output, &built.image)?;
    for capsule in &built.capsules {
        println!("{capsule}");
    }
    println!(
        "wrote {} ({} bytes)",
        arguments.output.display(),
        built.image.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Arguments::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mkdmfs: {error:#}");
            ExitCode::FAILURE
        }
    }
}
