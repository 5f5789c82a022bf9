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
    /// Sign the image with this Ed25519 secret key (32 raw bytes, as `cargo xtask keygen` writes
    /// it); without it the image is unsigned.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
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
    // Read the key before building, so a bad key path fails fast.
    let secret_key = arguments
        .sign_key
        .as_deref()
        .map(mkdmfs::read_key_file)
        .transpose()?;
    let mut built = mkdmfs::build(&arguments.manifest, &defines)?;
    let key_id = secret_key.map(|key| built.sign(&key)).transpose()?;
    write_atomically(&arguments.output, &built.image)?;
    for capsule in &built.capsules {
        println!("{capsule}");
    }
    let signed = match key_id {
        Some(id) => format!("signed with key {id}"),
        None => "unsigned".to_owned(),
    };
    println!(
        "wrote {} ({} bytes, {signed})",
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
