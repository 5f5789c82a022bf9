//! The key pair that signs manifest images: where it lives (the cache, outside the repository), making it,
//! and checking that its two halves belong together.
//!
//! Both files hold 32 raw bytes: `keel-signing.secret` the Ed25519 secret seed (mode 0600, in a 0700
//! folder), `keel-signing.public` the public key that hypervisor builds embed (`KEEL_PUBLIC_KEY`).

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use keel_dmfs::KeyId;
use mkdmfs::KEY_FILE_LEN;

use crate::cache::Cache;
use crate::shell;

pub const SECRET_FILE: &str = "keel-signing.secret";
pub const PUBLIC_FILE: &str = "keel-signing.public";

/// A loaded key pair and the files it came from.
pub struct KeyPair {
    pub secret_path: PathBuf,
    pub public_path: PathBuf,
    pub secret: [u8; KEY_FILE_LEN],
    pub public: [u8; KEY_FILE_LEN],
}

impl KeyPair {
    /// The id signed images carry in their header.
    pub fn id(&self) -> KeyId {
        KeyId::of(&self.public)
    }
}

/// `<cache>/keys`, created with mode 0700 when missing.
pub fn key_dir(cache: &Cache) -> Result<PathBuf> {
    let dir = cache.root().join("keys");
    create_private_dir(&dir)?;
    Ok(dir)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    }
    Ok(())
}

/// `cargo xtask keygen`: makes a new key pair in `dir`; an existing one is only replaced with `force`.
pub fn generate(dir: &Path, force: bool) -> Result<KeyPair> {
    let secret_path = dir.join(SECRET_FILE);
    if secret_path.exists() && !force {
        let existing = load(dir)
            .map(|pair| format!(" (key {})", pair.id()))
            .unwrap_or_default();
        bail!(
            "a signing key already exists at {}{existing}; `cargo xtask keygen --force` replaces it, after which \
             hypervisors built with the old public key refuse newly signed images",
            secret_path.display()
        );
    }
    create_private_dir(dir)?;
    let secret = random_seed()?;
    let public = keel_dmfs::public_key(&secret);
    let public_path = dir.join(PUBLIC_FILE);
    write_secret(&secret_path, &secret)?;
    crate::cache::write_atomically(&public_path, &public)?;
    Ok(KeyPair {
        secret_path,
        public_path,
        secret,
        public,
    })
}

/// The key pair in `dir`; both files must be there and belong together.
pub fn load(dir: &Path) -> Result<KeyPair> {
    let secret_path = dir.join(SECRET_FILE);
    let public_path = dir.join(PUBLIC_FILE);
    let secret = mkdmfs::read_key_file(&secret_path)?;
    let public = mkdmfs::read_key_file(&public_path)?;
    if keel_dmfs::public_key(&secret) != public {
        bail!(
            "{} is not the public key of {}; make a new pair with `cargo xtask keygen --force`",
            public_path.display(),
            secret_path.display()
        );
    }
    Ok(KeyPair {
        secret_path,
        public_path,
        secret,
        public,
    })
}

/// The key pair in `dir` for build, run and test: made (and announced) when there is none, the public
/// half rewritten when only it is missing.
pub fn ensure(dir: &Path) -> Result<KeyPair> {
    let secret_path = dir.join(SECRET_FILE);
    let public_path = dir.join(PUBLIC_FILE);
    if !secret_path.exists() {
        shell::step(&format!(
            "no image signing key yet: creating a key pair in {}",
            dir.display()
        ));
        let pair = generate(dir, true)?;
        describe(&pair);
        return Ok(pair);
    }
    warn_if_exposed(&secret_path);
    if !public_path.exists() {
        let secret = mkdmfs::read_key_file(&secret_path)?;
        let public = keel_dmfs::public_key(&secret);
        shell::step(&format!(
            "writing the missing public key {}",
            public_path.display()
        ));
        crate::cache::write_atomically(&public_path, &public)?;
    }
    load(dir)
}

/// Prints where the key pair is and its id.
pub fn describe(pair: &KeyPair) {
    println!(
        "    secret key: {} (keep it private)",
        pair.secret_path.display()
    );
    println!("    public key: {}", pair.public_path.display());
    println!("    key id:     {}", pair.id());
}

/// 32 bytes from the operating system's random-number generator.
fn random_seed() -> Result<[u8; KEY_FILE_LEN]> {
    let mut seed = [0u8; KEY_FILE_LEN];
    fs::File::open("/dev/urandom")
        .and_then(|mut source| source.read_exact(&mut seed))
        .context("cannot read random bytes from /dev/urandom")?;
    Ok(seed)
}

/// Writes the secret through a new file that is mode 0600 from the start, so it is never readable by
/// others, not even briefly.
fn write_secret(path: &Path, secret: &[u8; KEY_FILE_LEN]) -> Result<()> {
    let parent = path.parent().context("a key file needs a folder")?;
    let temporary = parent.join(format!(".{SECRET_FILE}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(secret)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| {
        format!(
            "cannot rename {} to {}",
            temporary.display(),
            path.display()
        )
    })
}

/// A secret key others can read is still used, but not silently.
fn warn_if_exposed(path: &Path) {
    if let Ok(metadata) = fs::metadata(path) {
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            println!(
                "warning: the signing key {} has mode {:o}; other users may read it (chmod 600 it)",
                path.display(),
                mode & 0o777
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-keys-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn generate_writes_a_matching_private_pair() {
        let dir = temporary_dir("generate");
        let pair = generate(&dir, false).unwrap();
        assert_eq!(pair.public, keel_dmfs::public_key(&pair.secret));
        assert_eq!(fs::read(dir.join(SECRET_FILE)).unwrap(), pair.secret);
        assert_eq!(fs::read(dir.join(PUBLIC_FILE)).unwrap(), pair.public);
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(SECRET_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);

        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.secret, pair.secret);
        assert_eq!(loaded.id(), KeyId::of(&pair.public));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn generate_refuses_to_replace_without_force() {
        let dir = temporary_dir("force");
        let first = generate(&dir, false).unwrap();
        let error = format!("{:#}", generate(&dir, false).err().unwrap());
        assert!(error.contains("already exists"), "{error}");
        assert!(error.contains(&first.id().to_string()), "{error}");
        assert!(error.contains("--force"), "{error}");
        assert_eq!(load(&dir).unwrap().secret, first.secret);

        let second = generate(&dir, true).unwrap();
        assert_ne!(second.secret, first.secret);
        assert_eq!(load(&dir).unwrap().secret, second.secret);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ensure_creates_once_and_then_reuses() {
        let dir = temporary_dir("ensure");
        let created = ensure(&dir).unwrap();
        let again = ensure(&dir).unwrap();
        assert_eq!(created.secret, again.secret);

        // A lost public half is derived again from the secret.
        fs::remove_file(dir.join(PUBLIC_FILE)).unwrap();
        let restored = ensure(&dir).unwrap();
        assert_eq!(restored.public, created.public);
        assert_eq!(fs::read(dir.join(PUBLIC_FILE)).unwrap(), created.public);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn mismatched_or_damaged_halves_are_refused() {
        let dir = temporary_dir("mismatch");
        generate(&dir, false).unwrap();
        fs::write(dir.join(PUBLIC_FILE), keel_dmfs::public_key(&[9; 32])).unwrap();
        let error = format!("{:#}", load(&dir).err().unwrap());
        assert!(error.contains("is not the public key of"), "{error}");
        assert!(ensure(&dir).is_err());

        fs::write(dir.join(SECRET_FILE), [1u8; 5]).unwrap();
        let error = format!("{:#}", load(&dir).err().unwrap());
        assert!(error.contains("is 5 bytes long"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
