//! Helpers the integration tests share: temporary folders, stand-in kernels, checking manifests.

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mkdmfs::{check_manifest, parse_manifest, Built, Defines, ManifestError};

pub const MIB: u64 = 1 << 20;

/// A folder under the system temporary folder, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty folder named after the test file, so a folder left behind by a crash says
    /// where it came from; the process id and a counter keep parallel tests apart.
    pub fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "mkdmfs-{}-test-{}-{unique}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to `name` below the folder, creating the folders on the way.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes `text` as the folder's `keel.toml`.
    pub fn manifest(&self, text: &str) -> PathBuf {
        self.write("keel.toml", text.as_bytes())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A RISC-V Linux Image: a valid 64-byte header asking for `image_size` bytes, followed by
/// `file_len - 64` bytes of filler.
pub fn linux_image(image_size: u64, file_len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[0..4].copy_from_slice(&0x0400_006fu32.to_le_bytes());
    bytes[8..16].copy_from_slice(&0x20_0000u64.to_le_bytes());
    bytes[16..24].copy_from_slice(&image_size.to_le_bytes());
    bytes[32..36].copy_from_slice(&2u32.to_le_bytes());
    bytes[48..56].copy_from_slice(b"RISCV\0\0\0");
    bytes[56..60].copy_from_slice(b"RSC\x05");
    bytes.resize(file_len, 0x13);
    bytes
}

/// Runs the file-less checks over a manifest text that must be valid TOML.
pub fn check(text: &str) -> Result<(), ManifestError> {
    let manifest = parse_manifest(text).expect("valid TOML");
    check_manifest(&manifest, Path::new("/nonexistent"), &Defines::new())
}

/// A folder with a valid kernel (asking for 4 MiB) at `kernel` and a manifest made of `text`.
pub fn folder_with_kernel(kernel: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    dir.write(kernel, &linux_image(4 * MIB, 8192));
    let manifest = dir.manifest(text);
    (dir, manifest)
}

/// Builds the manifest `text` next to a valid kernel named `Image`; the build must succeed.
pub fn build_next_to_kernel(text: &str) -> Built {
    let (_dir, path) = folder_with_kernel("Image", text);
    mkdmfs::build(&path, &Defines::new()).unwrap()
}

/// The message of the error `text` must produce; the full build, next to a valid kernel named
/// `Image`, gives the same one.
pub fn refusal(text: &str) -> String {
    let error = check(text).expect_err("the manifest was accepted");
    let (_dir, path) = folder_with_kernel("Image", text);
    let built = mkdmfs::build_from_manifest(&path, &[]).expect_err("the build was accepted");
    assert!(
        format!("{built:#}").ends_with(&error.to_string()),
        "{built:#} / {error}"
    );
    error.to_string()
}
