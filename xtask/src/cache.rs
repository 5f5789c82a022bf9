//! The cache outside the repository for everything downloaded or built from outside it, keyed by its inputs.

use std::ffi::OsString;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

/// The cache directory: `$KEEL_CACHE_DIR`, else `$XDG_CACHE_HOME/keel`, else `$HOME/.cache/keel`.
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn locate() -> Result<Cache> {
        let root = resolve_root(
            std::env::var_os("KEEL_CACHE_DIR"),
            std::env::var_os("XDG_CACHE_HOME"),
            std::env::var_os("HOME"),
        )?;
        fs::create_dir_all(&root)
            .with_context(|| format!("cannot create the cache directory {}", root.display()))?;
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory of the cache, created if missing.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

/// Picks the cache root; an empty or relative XDG_CACHE_HOME is ignored, as the XDG base directory spec asks.
pub fn resolve_root(
    keel: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf> {
    if let Some(dir) = keel.filter(|dir| !dir.is_empty()) {
        return std::path::absolute(PathBuf::from(&dir)).with_context(|| {
            format!(
                "KEEL_CACHE_DIR={} cannot be made absolute",
                PathBuf::from(&dir).display()
            )
        });
    }
    if let Some(dir) = xdg.map(PathBuf::from).filter(|dir| dir.is_absolute()) {
        return Ok(dir.join("keel"));
    }
    if let Some(home) = home.map(PathBuf::from).filter(|dir| dir.is_absolute()) {
        return Ok(home.join(".cache").join("keel"));
    }
    bail!("no cache directory: set KEEL_CACHE_DIR, XDG_CACHE_HOME or HOME")
}

/// A content key: a SHA-256 over labelled inputs, so two different sets of inputs never share an entry.
pub struct Key {
    hasher: Sha256,
}

impl Key {
    pub fn new(kind: &str) -> Key {
        let mut key = Key {
            hasher: Sha256::new(),
        };
        key.add(kind, kind.as_bytes());
        key
    }

    /// Adds one input; the label and length prefix keep ("ab","c") and ("a","bc") apart.
    pub fn add(&mut self, label: &str, bytes: &[u8]) -> &mut Key {
        self.hasher.update((label.len() as u64).to_le_bytes());
        self.hasher.update(label.as_bytes());
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    /// The first 16 hex digits: plenty to tell cache entries apart, short enough for directory names.
    pub fn short(&self) -> String {
        let mut hex = to_hex(&self.hasher.clone().finalize());
        hex.truncate(16);
        hex
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    Ok(to_hex(&hasher.finalize()))
}

/// A fresh directory next to `destination` to build in; [`publish`] renames it into place.
///
/// Building beside the destination keeps the final rename on one file system, which is what makes
/// it atomic: a reader sees either no entry or a complete one, never a half-written one.
pub fn staging_dir(destination: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = destination
        .file_name()
        .context("a cache entry needs a file name")?
        .to_string_lossy();
    let parent = destination
        .parent()
        .context("a cache entry needs a parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = parent.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    Ok(staging)
}

/// Moves a finished staging directory or file to its final name.
///
/// When another run published the same entry meanwhile, that entry is kept: both were built
/// from the same inputs, so they are interchangeable.
pub fn publish(staging: &Path, destination: &Path) -> Result<()> {
    if destination.exists() {
        remove_any(staging)?;
        return Ok(());
    }
    fs::rename(staging, destination).with_context(|| {
        format!(
            "cannot rename {} to {}",
            staging.display(),
            destination.display()
        )
    })
}

/// Writes a file atomically: to a temporary sibling first, then renamed over the destination.
pub fn write_atomically(destination: &Path, bytes: &[u8]) -> Result<()> {
    let parent = destination
        .parent()
        .context("a file needs a parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = destination
        .file_name()
        .context("a file needs a name")?
        .to_string_lossy();
    let temporary = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, destination).with_context(|| {
        format!(
            "cannot rename {} to {}",
            temporary.display(),
            destination.display()
        )
    })
}

/// Points `link` at `target`, replacing whatever `link` was, atomically.
pub fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let parent = link.parent().context("a link needs a parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = link
        .file_name()
        .context("a link needs a name")?
        .to_string_lossy();
    let temporary = parent.join(format!(".{name}.link-{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary)
        .with_context(|| format!("cannot create a symlink at {}", temporary.display()))?;
    fs::rename(&temporary, link).with_context(|| {
        format!(
            "cannot rename {} to {}",
            temporary.display(),
            link.display()
        )
    })
}

pub fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.with_context(|| format!("cannot remove {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        to_hex(&Sha256::digest(bytes))
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-cache-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cache_root_precedence() {
        let some = |text: &str| Some(OsString::from(text));
        assert_eq!(
            resolve_root(some("/c"), some("/x"), some("/h")).unwrap(),
            PathBuf::from("/c")
        );
        assert_eq!(
            resolve_root(None, some("/x"), some("/h")).unwrap(),
            PathBuf::from("/x/keel")
        );
        assert_eq!(
            resolve_root(some(""), some(""), some("/h")).unwrap(),
            PathBuf::from("/h/.cache/keel")
        );
        // A relative XDG_CACHE_HOME is invalid by the spec and must not put the cache inside the repo.
        assert_eq!(
            resolve_root(None, some("rel"), some("/h")).unwrap(),
            PathBuf::from("/h/.cache/keel")
        );
        assert!(resolve_root(None, None, None).is_err());
    }

    #[test]
    fn keys_depend_on_every_input_and_its_boundaries() {
        let key = |parts: &[(&str, &[u8])]| {
            let mut key = Key::new("test");
            for (label, bytes) in parts {
                key.add(label, bytes);
            }
            key.short()
        };
        let base = key(&[("a", b"xy"), ("b", b"z")]);
        assert_eq!(base.len(), 16);
        assert_eq!(base, key(&[("a", b"xy"), ("b", b"z")]));
        assert_ne!(base, key(&[("a", b"x"), ("b", b"yz")]));
        assert_ne!(base, key(&[("a", b"xy"), ("b", b"Z")]));
        assert_ne!(
            base,
            Key::new("other").add("a", b"xy").add("b", b"z").short()
        );
    }

    #[test]
    fn sha256_matches_known_vectors() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = scratch("sha");
        let file = dir.join("f");
        fs::write(&file, b"abc").unwrap();
        assert_eq!(sha256_file(&file).unwrap(), sha256_hex(b"abc"));
        assert!(sha256_file(&dir.join("missing")).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn staging_then_publish_keeps_the_first_complete_entry() {
        let dir = scratch("publish");
        let destination = dir.join("entry");
        let first = staging_dir(&destination).unwrap();
        fs::write(first.join("data"), b"one").unwrap();
        publish(&first, &destination).unwrap();
        assert_eq!(fs::read(destination.join("data")).unwrap(), b"one");
        assert!(!first.exists());

        let second = staging_dir(&destination).unwrap();
        fs::write(second.join("data"), b"two").unwrap();
        publish(&second, &destination).unwrap();
        assert_eq!(fs::read(destination.join("data")).unwrap(), b"one");
        assert!(!second.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_files_and_links_replace_old_ones() {
        let dir = scratch("links");
        let file = dir.join("sub/file");
        write_atomically(&file, b"1").unwrap();
        write_atomically(&file, b"2").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"2");

        let link = dir.join("link");
        replace_symlink(Path::new("sub/file"), &link).unwrap();
        replace_symlink(Path::new("elsewhere"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("elsewhere"));
        fs::remove_dir_all(dir).unwrap();
    }
}
