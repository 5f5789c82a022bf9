//! The busybox initramfs: an uncompressed newc cpio with busybox as /init and the files from guests/initramfs/.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::cache::{self, Key};
use crate::cpio::{self, CpioWriter, EntryKind};
use crate::shell;
use crate::Workspace;

/// Bumped whenever the archive layout below changes, so cached archives of the old layout are not reused.
const LAYOUT_VERSION: &[u8] = b"1";

/// A file from guests/initramfs/, by its path inside the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayFile {
    pub path: String,
    pub contents: Vec<u8>,
}

/// A built archive in the cache and the key it is stored under, which archives built from it include in theirs.
pub struct Archive {
    pub path: PathBuf,
    pub key: String,
}

/// Builds (or reuses) the archive; it is keyed by the overlay files and the busybox package hash.
pub fn ensure(workspace: &Workspace, busybox: &Path, busybox_sha256: &str) -> Result<Archive> {
    let overlay_root = workspace.root.join("guests/initramfs");
    let overlay = read_overlay(&overlay_root)?;
    let mut key = Key::new("initramfs");
    key.add("layout", LAYOUT_VERSION)
        .add("busybox-deb-sha256", busybox_sha256.as_bytes());
    for file in &overlay {
        key.add(&file.path, &file.contents);
    }
    let destination = workspace.cache.dir("initramfs")?.join(key.short());
    let archive = Archive {
        path: destination.join("initramfs.cpio"),
        key: key.short(),
    };
    if archive.path.is_file() {
        return Ok(archive);
    }
    shell::step(&format!(
        "writing the busybox initramfs from {}",
        overlay_root.display()
    ));
    let busybox_bytes =
        fs::read(busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    let bytes = build(busybox_bytes, &overlay)?;
    check(&bytes)?;
    let staging = cache::staging_dir(&destination)?;
    fs::write(staging.join("initramfs.cpio"), &bytes).context("cannot write the initramfs")?;
    cache::publish(&staging, &destination)?;
    Ok(archive)
}

/// Reads every file under `root`, sorted by path so the archive (and its key) does not depend on
/// directory listing order.
pub fn read_overlay(root: &Path) -> Result<Vec<OverlayFile>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .context("overlay file outside its root")?;
                let relative = relative
                    .to_str()
                    .with_context(|| format!("{} is not UTF-8", path.display()))?;
                let contents =
                    fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                files.push(OverlayFile {
                    path: relative.to_string(),
                    contents,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if !files.iter().any(|file| file.path == "etc/inittab") {
        bail!("{} has no etc/inittab", root.display());
    }
    Ok(files)
}

/// The archive's bytes: directories, the device nodes init needs before devtmpfs is mounted,
/// busybox, /init, and the overlay.
pub fn build(busybox: Vec<u8>, overlay: &[OverlayFile]) -> Result<Vec<u8>> {
    let mut archive = CpioWriter::new();
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "etc", "root", "mnt",
        "run",
    ] {
        archive.directory(dir, 0o755)?;
    }
    archive.directory("tmp", 0o1777)?;
    // The kernel opens /dev/console for init before any file system is mounted.
    archive.char_device("dev/console", 0o600, 5, 1)?;
    archive.char_device("dev/null", 0o666, 1, 3)?;
    archive.char_device("dev/ttyS0", 0o660, 4, 64)?;
    archive.file("bin/busybox", 0o755, busybox)?;
    // /init is what the kernel runs from an initramfs; named "init", busybox runs its init applet.
    archive.symlink("init", "/bin/busybox")?;
    // rcS is a shell script, so a shell must exist before `busybox --install` creates the rest.
    archive.symlink("bin/sh", "busybox")?;
    for file in overlay {
        add_parents(&mut archive, &file.path)?;
        // Scripts must be executable whatever mode the checkout gave them.
        let mode = if file.contents.starts_with(b"#!") {
            0o755
        } else {
            0o644
        };
        archive.file(&file.path, mode, file.contents.clone())?;
    }
    Ok(archive.finish())
}

/// Adds the directories above `path` that the archive does not have yet (mode 0755), outermost first.
pub fn add_parents(archive: &mut CpioWriter, path: &str) -> Result<(), cpio::CpioError> {
    let Some((parents, _)) = path.rsplit_once('/') else {
        return Ok(());
    };
    let mut parent = String::new();
    for part in parents.split('/') {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(part);
        match archive.directory(&parent, 0o755) {
            Ok(_) | Err(cpio::CpioError::Duplicate(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads the archive back and checks the entries booting depends on.
pub fn check(bytes: &[u8]) -> Result<()> {
    let entries = cpio::read(bytes).context("the initramfs does not read back")?;
    let find = |path: &str| {
        entries
            .iter()
            .find(|entry| entry.path == path)
            .map(|entry| &entry.kind)
    };
    match find("init") {
        Some(EntryKind::Symlink(target)) if target == "/bin/busybox" => {}
        other => bail!("initramfs /init should link to /bin/busybox, found {other:?}"),
    }
    if !matches!(find("bin/busybox"), Some(EntryKind::File(data)) if data.starts_with(b"\x7fELF")) {
        bail!("initramfs has no /bin/busybox program");
    }
    if !matches!(
        find("dev/console"),
        Some(EntryKind::CharDevice { major: 5, minor: 1 })
    ) {
        bail!("initramfs has no /dev/console (c 5 1)");
    }
    for path in ["etc/inittab", "etc/init.d/rcS"] {
        if !matches!(find(path), Some(EntryKind::File(_))) {
            bail!("initramfs has no /{path}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay() -> Vec<OverlayFile> {
        vec![
            OverlayFile {
                path: "etc/init.d/rcS".into(),
                contents: b"#!/bin/sh\necho hi\n".to_vec(),
            },
            OverlayFile {
                path: "etc/inittab".into(),
                contents: b"::sysinit:/etc/init.d/rcS\n".to_vec(),
            },
        ]
    }

    #[test]
    fn archive_has_init_busybox_devices_and_overlay() {
        let bytes = build(b"\x7fELFbusybox".to_vec(), &overlay()).unwrap();
        check(&bytes).unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let get = |path: &str| entries.iter().find(|entry| entry.path == path).unwrap();
        assert_eq!(
            get("dev/null").kind,
            EntryKind::CharDevice { major: 1, minor: 3 }
        );
        assert_eq!(
            get("dev/ttyS0").kind,
            EntryKind::CharDevice {
                major: 4,
                minor: 64
            }
        );
        assert_eq!(get("etc/init.d/rcS").mode, 0o755);
        assert_eq!(get("etc/inittab").mode, 0o644);
        assert_eq!(get("tmp").mode, 0o1777);
        assert_eq!(get("etc/init.d").kind, EntryKind::Directory);
    }

    #[test]
    fn check_rejects_archives_missing_essentials() {
        let without_rcs = &overlay()[1..];
        let bytes = build(b"\x7fELF".to_vec(), without_rcs).unwrap();
        let message = format!("{:#}", check(&bytes).unwrap_err());
        assert!(message.contains("etc/init.d/rcS"), "{message}");

        let not_a_program = build(b"#!/bin/sh".to_vec(), &overlay()).unwrap();
        assert!(check(&not_a_program).is_err());
        assert!(check(b"garbage").is_err());
    }

    #[test]
    fn overlay_is_read_sorted_and_requires_an_inittab() {
        let root = std::env::temp_dir().join(format!("xtask-overlay-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("etc/init.d")).unwrap();
        fs::write(root.join("etc/init.d/rcS"), b"#!/bin/sh\n").unwrap();
        assert!(read_overlay(&root).is_err());
        fs::write(root.join("etc/inittab"), b"x").unwrap();
        fs::write(root.join("etc/a"), b"y").unwrap();
        let paths: Vec<String> = read_overlay(&root)
            .unwrap()
            .into_iter()
            .map(|file| file.path)
            .collect();
        assert_eq!(paths, ["etc/a", "etc/init.d/rcS", "etc/inittab"]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_repository_overlay_builds_a_valid_archive() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/initramfs");
        let overlay = read_overlay(&root).unwrap();
        let bytes = build(b"\x7fELF".to_vec(), &overlay).unwrap();
        check(&bytes).unwrap();
        let inittab = &overlay
            .iter()
            .find(|file| file.path == "etc/inittab")
            .unwrap()
            .contents;
        let inittab = String::from_utf8_lossy(inittab);
        assert!(inittab.contains("::sysinit:/etc/init.d/rcS"));
        assert!(inittab.contains("::shutdown:"));
    }
}
