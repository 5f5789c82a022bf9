//! Building the manifest file-system image (with mkdmfs as a library) and the hypervisor that embeds it.
//!
//! Images are signed with the key pair in the cache (see `keys`), and the hypervisor is built with that
//! pair's public key (`KEEL_PUBLIC_KEY`), so it boots only images signed with it. The development mode
//! (`--unsigned-dev`) builds unsigned images and a hypervisor that accepts them (`KEEL_ALLOW_UNSIGNED=1`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cache;
use crate::images;
use crate::keys::{self, KeyPair};
use crate::qemu::Boot;
use crate::shell;
use crate::Workspace;

/// The guest command line when the user brings a kernel without `--append`.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlycon=sbi";
pub const HYPERVISOR_TARGET: &str = "riscv64gc-unknown-none-elf";

pub fn default_manifest(workspace: &Workspace) -> PathBuf {
    workspace.root.join("guests/manifests/default.toml")
}

/// How images are signed, and which images the hypervisor build accepts.
pub enum Signing {
    /// Images are signed with this key pair, and the hypervisor embeds its public key.
    Key(KeyPair),
    /// Development mode: images are unsigned and the hypervisor, built without a key, accepts them
    /// (and says so loudly at boot).
    UnsignedDev,
}

impl Signing {
    /// The cache's key pair (made and announced when missing), or the development mode.
    pub fn choose(workspace: &Workspace, unsigned_dev: bool) -> Result<Signing> {
        if unsigned_dev {
            shell::step(
                "development mode (--unsigned-dev): the image is not signed, and this hypervisor build accepts unsigned images",
            );
            return Ok(Signing::UnsignedDev);
        }
        let pair = keys::ensure(&keys::key_dir(&workspace.cache)?)?;
        Ok(Signing::Key(pair))
    }

    pub fn secret_key(&self) -> Option<&[u8; mkdmfs::KEY_FILE_LEN]> {
        match self {
            Signing::Key(pair) => Some(&pair.secret),
            Signing::UnsignedDev => None,
        }
    }
}

/// Writes target/keel/<manifest-stem>.dmfs signed with the cache's key and builds the hypervisor
/// around it; returns the ELF's path.
pub fn build_dmfs_and_hypervisor(
    workspace: &Workspace,
    manifest: &Path,
    defines: &[(String, String)],
) -> Result<PathBuf> {
    let signing = Signing::choose(workspace, false)?;
    build_dmfs_and_hypervisor_with(workspace, manifest, defines, &signing)
}

/// Like [`build_dmfs_and_hypervisor`], signing as `signing` says.
pub fn build_dmfs_and_hypervisor_with(
    workspace: &Workspace,
    manifest: &Path,
    defines: &[(String, String)],
    signing: &Signing,
) -> Result<PathBuf> {
    let image = build_dmfs(workspace, manifest, defines, signing.secret_key(), "")?;
    build_hypervisor(workspace, &image, signing)
}

/// Writes target/keel/<manifest-stem><suffix>.dmfs, signed when `secret_key` is given.
pub fn build_dmfs(
    workspace: &Workspace,
    manifest: &Path,
    defines: &[(String, String)],
    secret_key: Option<&[u8; mkdmfs::KEY_FILE_LEN]>,
    suffix: &str,
) -> Result<PathBuf> {
    let manifest = std::path::absolute(manifest)
        .with_context(|| format!("bad manifest path {}", manifest.display()))?;
    let stem = manifest
        .file_stem()
        .and_then(|stem| stem.to_str())
        .with_context(|| format!("manifest {} has no usable file name", manifest.display()))?;
    let output = workspace.keel_dir().join(format!("{stem}{suffix}.dmfs"));
    let signed = match secret_key {
        Some(key) => format!(
            "signed with key {}",
            keel_dmfs::KeyId::of(&keel_dmfs::public_key(key))
        ),
        None => "unsigned".to_string(),
    };
    shell::step(&format!(
        "building the manifest image {} from {} ({signed})",
        output.display(),
        manifest.display()
    ));
    let bytes = match secret_key {
        Some(key) => mkdmfs::build_signed_from_manifest(&manifest, defines, key),
        None => mkdmfs::build_from_manifest(&manifest, defines),
    }
    .with_context(|| format!("mkdmfs could not build {}", manifest.display()))?;
    cache::write_atomically(&output, &bytes)?;
    Ok(output)
}

/// Builds the hypervisor around `dmfs`, with the public key of `signing` or in development mode.
pub fn build_hypervisor(workspace: &Workspace, dmfs: &Path, signing: &Signing) -> Result<PathBuf> {
    let dmfs = std::path::absolute(dmfs)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace.root)
        .args([
            "build",
            "--release",
            "-p",
            "keel-hypervisor",
            "--target",
            HYPERVISOR_TARGET,
        ])
        .env("KEEL_DMFS_IMAGE", &dmfs);
    // Set one of the two and clear the other, so nothing leaks in from the caller's environment.
    let key = match signing {
        Signing::Key(pair) => {
            command
                .env("KEEL_PUBLIC_KEY", &pair.public_path)
                .env_remove("KEEL_ALLOW_UNSIGNED");
            format!("KEEL_PUBLIC_KEY={}", pair.public_path.display())
        }
        Signing::UnsignedDev => {
            command
                .env("KEEL_ALLOW_UNSIGNED", "1")
                .env_remove("KEEL_PUBLIC_KEY");
            "KEEL_ALLOW_UNSIGNED=1".to_string()
        }
    };
    shell::step(&format!(
        "building the hypervisor for {HYPERVISOR_TARGET} with KEEL_DMFS_IMAGE={} {key}",
        dmfs.display()
    ));
    shell::run(command)?;
    let elf = workspace
        .target
        .join(HYPERVISOR_TARGET)
        .join("release/keel");
    images::require_file(&elf, "the hypervisor executable")?;
    Ok(elf)
}

/// A deliberately bad image for the scenarios in which Keel must refuse to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadImage {
    /// Not signed at all.
    Unsigned,
    /// Signed, then one kernel byte flipped and the checksum recomputed: only the signature can tell.
    Tampered,
}

/// Builds a hypervisor with the cache's public key around a `bad` image of `manifest`.
pub fn build_hypervisor_around_bad_image(
    workspace: &Workspace,
    manifest: &Path,
    defines: &[(String, String)],
    bad: BadImage,
) -> Result<PathBuf> {
    let signing = Signing::choose(workspace, false)?;
    let image = match bad {
        BadImage::Unsigned => build_dmfs(workspace, manifest, defines, None, "-unsigned")?,
        BadImage::Tampered => {
            let path = build_dmfs(
                workspace,
                manifest,
                defines,
                signing.secret_key(),
                "-tampered",
            )?;
            let mut bytes =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let at = flip_kernel_byte(&mut bytes)?;
            shell::step(&format!(
                "flipped the byte at offset {at:#x} of {} after signing (checksum recomputed)",
                path.display()
            ));
            cache::write_atomically(&path, &bytes)?;
            path
        }
    };
    build_hypervisor(workspace, &image, &signing)
}

/// Writes a fresh sparse disk image of `size_mib` MiB at `path` with the signed manifest image of `manifest` at its
/// start, where Keel looks for capsules it does not have bundled (docs/management.md). With `tampered`, one bit of
/// the stored image is flipped after signing, so Keel must refuse it.
pub fn write_disk_with_image(
    workspace: &Workspace,
    path: &Path,
    size_mib: u64,
    manifest: &Path,
    defines: &[(String, String)],
    tampered: bool,
) -> Result<()> {
    let signing = Signing::choose(workspace, false)?;
    let image = build_dmfs(workspace, manifest, defines, signing.secret_key(), "-disk")?;
    let mut bytes = fs::read(&image).with_context(|| format!("cannot read {}", image.display()))?;
    if tampered {
        let at = flip_kernel_byte(&mut bytes)?;
        shell::step(&format!("flipped one bit of the stored image at offset {at:#x}, after signing"));
    }
    if bytes.len() as u64 > size_mib << 20 {
        bail!("the manifest image ({} bytes) does not fit a {size_mib} MiB disk", bytes.len());
    }
    if path.exists() {
        fs::remove_file(path).with_context(|| format!("cannot remove the old {}", path.display()))?;
    }
    crate::qemu::ensure_disk_image(path, size_mib)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    std::io::Write::write_all(&mut file, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Flips one bit in the middle of the boot capsule's kernel and recomputes the checksum, as someone
/// altering the image on purpose would; returns the byte's offset.
fn flip_kernel_byte(image: &mut [u8]) -> Result<usize> {
    let parsed =
        keel_dmfs::Image::parse(image).context("the image to tamper with does not parse")?;
    let kernel = parsed
        .boot_capsule()
        .context("the image to tamper with has no boot capsule")?
        .kernel;
    let at = (kernel.as_ptr() as usize - image.as_ptr() as usize) + kernel.len() / 2;
    let length = parsed.len();
    image[at] ^= 0x01;
    let sum = keel_dmfs::checksum(&image[..length]);
    let field = keel_dmfs::layout::header::CHECKSUM;
    image[field..field + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(at)
}

/// The manifest `run --kernel` boots: one boot capsule with the user's kernel, written to target/keel/.
pub fn write_generated_manifest(
    workspace: &Workspace,
    boot: &Boot,
    machine_memory_mib: u64,
) -> Result<PathBuf> {
    let kernel = fs::read(&boot.kernel)
        .with_context(|| format!("cannot read kernel {}", boot.kernel.display()))?;
    let format = if images::check_linux_image(&kernel).is_ok() {
        "image"
    } else {
        "flat"
    };
    let text = generated_manifest_text(boot, format, machine_memory_mib)?;
    let path = workspace.keel_dir().join("custom.toml");
    cache::write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Capsule memory must be a multiple of 2 MiB, so half the machine is rounded down to one.
pub fn generated_manifest_text(
    boot: &Boot,
    kernel_format: &str,
    machine_memory_mib: u64,
) -> Result<String> {
    let memory_mib = (machine_memory_mib / 2) & !1;
    let mut capsule = toml::Table::new();
    capsule.insert("name".into(), "boot".into());
    capsule.insert("kernel".into(), path_value(&boot.kernel)?);
    capsule.insert("kernel_format".into(), kernel_format.into());
    if let Some(initrd) = &boot.initrd {
        capsule.insert("initrd".into(), path_value(initrd)?);
    }
    capsule.insert("cmdline".into(), boot.append.clone().into());
    capsule.insert("memory".into(), format!("{memory_mib}M").into());
    capsule.insert("vcpus".into(), 1.into());
    capsule.insert("boot".into(), true.into());
    capsule.insert("manage".into(), true.into());
    let mut manifest = toml::Table::new();
    manifest.insert(
        "capsule".into(),
        toml::Value::Array(vec![toml::Value::Table(capsule)]),
    );
    let body = toml::to_string(&manifest).context("cannot write the generated manifest")?;
    Ok(format!(
        "# Generated by `cargo xtask run --kernel`; rewritten on every such run.\n{body}"
    ))
}

fn path_value(path: &Path) -> Result<toml::Value> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_kernel_byte_passes_the_checksum_but_not_the_signature() {
        let kernel = vec![0x13u8; 10_000];
        let mut image = keel_dmfs::ImageBuilder::new()
            .capsule(keel_dmfs::CapsuleSpec {
                name: "boot".into(),
                kernel: kernel.clone(),
                memory: 64 << 20,
                boot: true,
                kernel_format: keel_dmfs::KernelFormat::Flat,
                ..keel_dmfs::CapsuleSpec::default()
            })
            .unwrap()
            .build()
            .unwrap();
        let secret = [3u8; 32];
        keel_dmfs::sign(&mut image, &secret).unwrap();
        let at = flip_kernel_byte(&mut image).unwrap();
        let parsed = keel_dmfs::Image::parse(&image).expect("the checksum was recomputed");
        let tampered_kernel = parsed.boot_capsule().unwrap().kernel;
        let differing: Vec<usize> = (0..kernel.len())
            .filter(|&index| tampered_kernel[index] != kernel[index])
            .collect();
        assert_eq!(differing, vec![kernel.len() / 2]);
        assert_eq!(at % 4096, kernel.len() / 2 % 4096);
        assert_eq!(
            keel_dmfs::verify(&image, &keel_dmfs::public_key(&secret)),
            Err(keel_dmfs::SignatureError::BadSignature)
        );
    }

    #[test]
    fn generated_manifest_has_the_kernel_and_half_the_memory() {
        let boot = Boot {
            kernel: "/k/Image".into(),
            initrd: Some("/k/initrd \"x\"".into()),
            append: "console=ttyS0 quiet".into(),
        };
        let text = generated_manifest_text(&boot, "flat", 1025).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let capsule = parsed["capsule"].as_array().unwrap()[0].as_table().unwrap();
        assert_eq!(capsule["kernel"].as_str(), Some("/k/Image"));
        assert_eq!(capsule["initrd"].as_str(), Some("/k/initrd \"x\""));
        assert_eq!(capsule["kernel_format"].as_str(), Some("flat"));
        assert_eq!(capsule["cmdline"].as_str(), Some("console=ttyS0 quiet"));
        // 1025 / 2 = 512.5 MiB, rounded down to the 2 MiB multiple below.
        assert_eq!(capsule["memory"].as_str(), Some("512M"));
        assert_eq!(capsule["boot"].as_bool(), Some(true));
    }

    #[test]
    fn generated_manifest_without_initrd_omits_it() {
        let boot = Boot {
            kernel: "/k".into(),
            initrd: None,
            append: String::new(),
        };
        let text = generated_manifest_text(&boot, "image", 1024).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let capsule = parsed["capsule"].as_array().unwrap()[0].as_table().unwrap();
        assert!(!capsule.contains_key("initrd"));
        assert_eq!(capsule["memory"].as_str(), Some("512M"));
    }
}
