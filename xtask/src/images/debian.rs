//! Debian trixie riscv64 packages for the guests: the kernel `linux-image-riscv64` points at, and `busybox-static`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::apt::{self, PackageRecord, PrivateApt};
use crate::cache::Cache;
use crate::shell;

/// What the guest images are made of, unpacked in the cache.
pub struct DebianPackages {
    /// The kernel's RISC-V Linux Image (`boot/vmlinux-*`).
    pub kernel_image: PathBuf,
    /// `usr/lib/modules/<release>`, kept for guests that load virtio modules.
    pub modules: PathBuf,
    /// The kernel package: its hash keys what is built from its modules.
    pub kernel_record: PackageRecord,
    pub busybox_record: PackageRecord,
    /// The static riscv64 busybox binary.
    pub busybox: PathBuf,
}

pub fn fetch(cache: &Cache) -> Result<DebianPackages> {
    let apt = PrivateApt::prepare(cache, "trixie-riscv64", "riscv64", &["trixie"])?;
    // The metapackage only names the current kernel package; the kernel itself is what we unpack.
    let depends = apt.depends("linux-image-riscv64")?;
    let kernel_package = apt::first_dependency_with_prefix(&depends, "linux-image-")
        .context("linux-image-riscv64 depends on no linux-image-* package in the trixie index")?;
    let kernel_record = apt.show(&kernel_package)?;
    let busybox_record = apt.show("busybox-static")?;
    let names = format!(
        "{} {}, {} {}",
        kernel_record.package,
        kernel_record.version,
        busybox_record.package,
        busybox_record.version
    );
    let cached = [&kernel_record, &busybox_record]
        .iter()
        .all(|record| apt::extracted_dir(cache, record).is_ok_and(|dir| dir.is_dir()));
    if cached {
        shell::step(&format!("Debian riscv64 packages (cached): {names}"));
    } else {
        shell::step(&format!("fetching Debian riscv64 packages: {names}"));
    }
    let kernel_root = unpack(cache, &apt, &kernel_record)?;
    let busybox_root = unpack(cache, &apt, &busybox_record)?;

    let kernel_image = single_match(&kernel_root.join("boot"), "vmlinux-")?;
    let release = kernel_image
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinux-"))
        .context("kernel image name has no release suffix")?
        .to_string();
    let modules = kernel_root.join("usr/lib/modules").join(&release);
    if !modules.join("modules.dep").is_file() && !modules.join("kernel").is_dir() {
        bail!(
            "{} has no modules tree for {release} at {}",
            kernel_record.deb_name(),
            modules.display()
        );
    }
    let busybox = busybox_root.join("usr/bin/busybox");
    if !busybox.is_file() {
        bail!("{} holds no usr/bin/busybox", busybox_record.deb_name());
    }
    Ok(DebianPackages {
        kernel_image,
        modules,
        kernel_record,
        busybox_record,
        busybox,
    })
}

fn unpack(cache: &Cache, apt: &PrivateApt, record: &PackageRecord) -> Result<PathBuf> {
    // The unpacked entry is named after the verified hash, so its presence means the package was
    // verified when it was fetched; hashing tens of megabytes again on every run is not needed.
    let unpacked = apt::extracted_dir(cache, record)?;
    if unpacked.is_dir() {
        return Ok(unpacked);
    }
    let deb = apt.fetch(cache, record)?;
    apt::extract(cache, &deb, record)
}

/// The one file in `dir` whose name starts with `prefix`; zero or several is an error naming them.
fn single_match(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut matches: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => bail!("no {prefix}* in {}", dir.display()),
        _ => bail!("several {prefix}* in {}: {matches:?}", dir.display()),
    }
}
