//! The Debian kernel's initramfs: the shared busybox archive plus the virtio modules that kernel builds as modules.
//!
//! The modules go to `lib/modules/<release>/` with their package paths (decompressed), and
//! `lib/modules/<release>/load-order` lists them dependencies-first for rcS to `insmod`. The small kernel has
//! these drivers built in, and its archive has no such file, so rcS loads nothing there.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::initramfs;
use super::modules::{self, Module, ModuleTree};
use crate::cache::{self, Key};
use crate::cpio::{self, CpioWriter, EntryKind};
use crate::shell;
use crate::Workspace;

/// Bumped whenever the layout below changes, so cached archives of the old layout are not reused.
const LAYOUT_VERSION: &[u8] = b"1";

/// The file listing the modules to load, one path (relative to its directory) a line; rcS looks for it.
pub const LOAD_ORDER_FILE: &str = "load-order";

/// Builds (or reuses) the archive. Its key covers the shared archive (by that archive's key), the kernel
/// package (by its hash, which fixes every module's bytes), the release, the wanted modules and the layout.
pub fn ensure(
    workspace: &Workspace,
    shared: &initramfs::Archive,
    modules_dir: &Path,
    kernel_sha256: &str,
) -> Result<PathBuf> {
    let release = release_of(modules_dir)?;
    let mut key = Key::new("initramfs-debian");
    key.add("layout", LAYOUT_VERSION)
        .add("shared-initramfs", shared.key.as_bytes())
        .add("kernel-deb-sha256", kernel_sha256.as_bytes())
        .add("release", release.as_bytes())
        .add("modules", modules::WANTED.join(",").as_bytes());
    let destination = workspace.cache.dir("initramfs-debian")?.join(key.short());
    let archive = destination.join("initramfs-debian.cpio");
    if archive.is_file() {
        return Ok(archive);
    }
    shell::step(&format!(
        "writing the Debian initramfs: the busybox initramfs plus {} and their dependencies from {}",
        modules::WANTED.join(", "),
        modules_dir.display()
    ));
    let tree = ModuleTree::scan(modules_dir)?;
    let modules = tree.collect(modules::WANTED, &release)?;
    println!(
        "    load order: {}",
        modules
            .iter()
            .map(|module| module.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let shared_bytes =
        fs::read(&shared.path).with_context(|| format!("cannot read {}", shared.path.display()))?;
    let bytes = build(&shared_bytes, &release, &modules)?;
    check(&bytes, &release)?;
    let staging = cache::staging_dir(&destination)?;
    fs::write(staging.join("initramfs-debian.cpio"), &bytes)
        .context("cannot write the Debian initramfs")?;
    cache::publish(&staging, &destination)?;
    Ok(archive)
}

/// The kernel release a modules directory is for: its own name (`usr/lib/modules/<release>`), resolving links.
fn release_of(modules_dir: &Path) -> Result<String> {
    let resolved = fs::canonicalize(modules_dir)
        .with_context(|| format!("cannot resolve {}", modules_dir.display()))?;
    let release = resolved
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} names no kernel release", resolved.display()))?;
    if release.is_empty() || release.contains(char::is_whitespace) {
        bail!("{} is not a kernel release name", resolved.display());
    }
    Ok(release.to_string())
}

/// The shared archive's entries, in their order, then the modules and the load-order file.
pub fn build(shared: &[u8], release: &str, modules: &[Module]) -> Result<Vec<u8>> {
    let entries = cpio::read(shared).context("the shared initramfs does not read back")?;
    let mut archive = CpioWriter::new();
    for entry in entries {
        archive
            .add(&entry.path, entry.mode, entry.kind)
            .with_context(|| format!("copying {} from the shared initramfs", entry.path))?;
    }
    let directory = format!("lib/modules/{release}");
    let mut order = String::new();
    for module in modules {
        if module.path.contains('\n') {
            bail!(
                "module path {:?} cannot be a line of the load order",
                module.path
            );
        }
        let path = format!("{directory}/{}", module.path);
        initramfs::add_parents(&mut archive, &path)?;
        archive.file(&path, 0o644, module.bytes.clone())?;
        order.push_str(&module.path);
        order.push('\n');
    }
    let order_path = format!("{directory}/{LOAD_ORDER_FILE}");
    initramfs::add_parents(&mut archive, &order_path)?;
    archive.file(&order_path, 0o644, order.into_bytes())?;
    Ok(archive.finish())
}

/// Reads the archive back: the shared archive's essentials, a load order, and an ELF object for each line of it.
pub fn check(bytes: &[u8], release: &str) -> Result<()> {
    initramfs::check(bytes)?;
    let entries = cpio::read(bytes).context("the Debian initramfs does not read back")?;
    let file = |path: &str| {
        entries.iter().find_map(|entry| match &entry.kind {
            EntryKind::File(data) if entry.path == path => Some(data),
            _ => None,
        })
    };
    let directory = format!("lib/modules/{release}");
    let order_path = format!("{directory}/{LOAD_ORDER_FILE}");
    let order =
        file(&order_path).with_context(|| format!("the Debian initramfs has no /{order_path}"))?;
    let order =
        std::str::from_utf8(order).with_context(|| format!("/{order_path} is not UTF-8"))?;
    let mut count = 0;
    for line in order.lines() {
        let path = format!("{directory}/{line}");
        match file(&path) {
            Some(data) if data.starts_with(b"\x7fELF") => count += 1,
            Some(_) => bail!("/{path} in the Debian initramfs is not an ELF object"),
            None => bail!("/{order_path} names {line}, which the Debian initramfs does not hold"),
        }
    }
    if count == 0 {
        bail!("/{order_path} in the Debian initramfs lists no modules");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::modules::tests::tiny_module;

    fn shared() -> Vec<u8> {
        let overlay = [
            initramfs::OverlayFile {
                path: "etc/init.d/rcS".into(),
                contents: b"#!/bin/sh\necho hi\n".to_vec(),
            },
            initramfs::OverlayFile {
                path: "etc/inittab".into(),
                contents: b"::sysinit:/etc/init.d/rcS\n".to_vec(),
            },
        ];
        initramfs::build(b"\x7fELFbusybox".to_vec(), &overlay).unwrap()
    }

    fn module(name: &str, path: &str) -> Module {
        Module {
            name: name.into(),
            path: path.into(),
            bytes: tiny_module(format!("name={name}\0").as_bytes()),
        }
    }

    #[test]
    fn archive_is_the_shared_one_plus_modules_and_their_order() {
        let modules = [
            module("failover", "kernel/net/core/failover.ko"),
            module("virtio_net", "kernel/drivers/net/virtio_net.ko"),
        ];
        let bytes = build(&shared(), "6.12.1", &modules).unwrap();
        check(&bytes, "6.12.1").unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let shared_entries = cpio::read(&shared()).unwrap();
        // Everything of the shared archive comes first, unchanged.
        assert_eq!(&entries[..shared_entries.len()], &shared_entries[..]);
        let get = |path: &str| {
            entries
                .iter()
                .find(|entry| entry.path == path)
                .map(|entry| &entry.kind)
        };
        assert_eq!(
            get("lib/modules/6.12.1/load-order"),
            Some(&EntryKind::File(
                b"kernel/net/core/failover.ko\nkernel/drivers/net/virtio_net.ko\n".to_vec()
            ))
        );
        assert_eq!(
            get("lib/modules/6.12.1/kernel/drivers"),
            Some(&EntryKind::Directory)
        );
        assert_eq!(
            get("lib/modules/6.12.1/kernel/drivers/net/virtio_net.ko"),
            Some(&EntryKind::File(modules[1].bytes.clone()))
        );
        // A kernel of another release finds no load order, as the small kernel does not.
        assert!(check(&bytes, "6.1.0").is_err());
    }

    #[test]
    fn check_refuses_missing_or_broken_modules() {
        let mut broken = module("virtio_rng", "kernel/virtio-rng.ko");
        broken.bytes = b"not an object".to_vec();
        let bytes = build(&shared(), "6.12.1", &[broken]).unwrap();
        let message = format!("{:#}", check(&bytes, "6.12.1").unwrap_err());
        assert!(message.contains("is not an ELF object"), "{message}");

        let empty = build(&shared(), "6.12.1", &[]).unwrap();
        let message = format!("{:#}", check(&empty, "6.12.1").unwrap_err());
        assert!(message.contains("lists no modules"), "{message}");

        // A load order naming a file the archive does not hold.
        let mut archive = CpioWriter::new();
        for entry in cpio::read(&shared()).unwrap() {
            archive.add(&entry.path, entry.mode, entry.kind).unwrap();
        }
        initramfs::add_parents(&mut archive, "lib/modules/6.12.1/load-order").unwrap();
        archive
            .file(
                "lib/modules/6.12.1/load-order",
                0o644,
                b"kernel/gone.ko\n".to_vec(),
            )
            .unwrap();
        let message = format!("{:#}", check(&archive.finish(), "6.12.1").unwrap_err());
        assert!(
            message.contains("names kernel/gone.ko, which the Debian initramfs does not hold"),
            "{message}"
        );

        assert!(build(b"not a cpio archive", "6.12.1", &[]).is_err());
        let newline = module("odd", "kernel/odd\n.ko");
        assert!(build(&shared(), "6.12.1", &[newline]).is_err());
    }
}
