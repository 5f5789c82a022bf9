//! Reading the boot capsule out of a manifest, so `run --native` can boot the same kernel without Keel.
//!
//! mkdmfs does the full validation when it builds the image; this only needs the boot capsule's
//! kernel, initrd and command line, and expands `${NAME}` the same way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::qemu::Boot;

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    capsule: Vec<Capsule>,
}

#[derive(Deserialize)]
struct Capsule {
    name: Option<String>,
    kernel: String,
    initrd: Option<String>,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    boot: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpandError {
    #[error("`${{{0}}}` is not defined (defined: images)")]
    Undefined(String),
    #[error("`${{` without a closing `}}` in `{0}`")]
    Unclosed(String),
}

/// Replaces every `${NAME}` with its definition.
pub fn expand(text: &str, defines: &[(String, String)]) -> Result<String, ExpandError> {
    let mut result = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        result.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ExpandError::Unclosed(text.to_string()))?;
        let name = &after[..end];
        let value = defines
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .ok_or_else(|| ExpandError::Undefined(name.to_string()))?;
        result.push_str(value);
        rest = &after[end + 1..];
    }
    result.push_str(rest);
    Ok(result)
}

/// The boot capsule's kernel, initrd and command line, with paths made absolute.
pub fn boot_capsule(manifest_path: &Path, defines: &[(String, String)]) -> Result<Boot> {
    let text = std::fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read manifest {}", manifest_path.display()))?;
    boot_capsule_from_text(
        &text,
        manifest_path.parent().unwrap_or(Path::new(".")),
        defines,
    )
    .with_context(|| format!("in manifest {}", manifest_path.display()))
}

/// The boot capsule's memory in MiB and its vCPU count, checked as mkdmfs checks them for a build.
pub fn boot_capsule_machine(manifest_path: &Path, defines: &[(String, String)]) -> Result<(u64, u32)> {
    let text = std::fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read manifest {}", manifest_path.display()))?;
    let manifest = mkdmfs::parse_manifest(&text)
        .with_context(|| format!("manifest {} is not valid TOML", manifest_path.display()))?;
    let defines: mkdmfs::Defines = defines.iter().cloned().collect();
    let (memory, vcpus) = mkdmfs::boot_capsule_machine(
        &manifest,
        manifest_path.parent().unwrap_or(Path::new(".")),
        &defines,
    )
    .with_context(|| format!("in manifest {}", manifest_path.display()))?;
    Ok((memory >> 20, vcpus))
}

fn boot_capsule_from_text(text: &str, base: &Path, defines: &[(String, String)]) -> Result<Boot> {
    let manifest: Manifest = toml::from_str(text).context("not a valid manifest")?;
    let mut boot = manifest.capsule.iter().filter(|capsule| capsule.boot);
    let (Some(capsule), None) = (boot.next(), boot.next()) else {
        bail!("the manifest must have exactly one capsule with `boot = true`");
    };
    let path = |value: &str| -> Result<PathBuf> {
        let expanded = PathBuf::from(expand(value, defines)?);
        Ok(if expanded.is_absolute() {
            expanded
        } else {
            base.join(expanded)
        })
    };
    let name = capsule.name.as_deref().unwrap_or("(unnamed)");
    Ok(Boot {
        kernel: path(&capsule.kernel).with_context(|| format!("capsule {name}: kernel"))?,
        initrd: capsule
            .initrd
            .as_deref()
            .map(path)
            .transpose()
            .with_context(|| format!("capsule {name}: initrd"))?,
        append: capsule.cmdline.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defines() -> Vec<(String, String)> {
        vec![("images".to_string(), "/cache/images".to_string())]
    }

    #[test]
    fn expansion_replaces_defined_names_only() {
        assert_eq!(
            expand("${images}/a/${images}", &defines()).unwrap(),
            "/cache/images/a//cache/images"
        );
        assert_eq!(expand("plain", &defines()).unwrap(), "plain");
        assert_eq!(
            expand("${nope}/x", &defines()),
            Err(ExpandError::Undefined("nope".into()))
        );
        assert_eq!(
            expand("${images", &defines()),
            Err(ExpandError::Unclosed("${images".into()))
        );
    }

    #[test]
    fn boot_capsule_is_found_and_paths_resolved() {
        let text = r#"
            [[capsule]]
            name = "other"
            kernel = "k2"
            memory = "64M"

            [[capsule]]
            name = "boot"
            kernel = "${images}/debian/Image"
            initrd = "rel/initrd"
            cmdline = "console=ttyS0"
            memory = "512M"
            boot = true
        "#;
        let boot =
            boot_capsule_from_text(text, Path::new("/repo/guests/manifests"), &defines()).unwrap();
        assert_eq!(boot.kernel, PathBuf::from("/cache/images/debian/Image"));
        assert_eq!(
            boot.initrd,
            Some(PathBuf::from("/repo/guests/manifests/rel/initrd"))
        );
        assert_eq!(boot.append, "console=ttyS0");
    }

    #[test]
    fn manifests_without_exactly_one_boot_capsule_are_refused() {
        let none = "[[capsule]]\nname = \"a\"\nkernel = \"k\"\n";
        assert!(boot_capsule_from_text(none, Path::new("/"), &defines()).is_err());
        let two =
            "[[capsule]]\nkernel = \"k\"\nboot = true\n[[capsule]]\nkernel = \"k\"\nboot = true\n";
        assert!(boot_capsule_from_text(two, Path::new("/"), &defines()).is_err());
        assert!(boot_capsule_from_text("not toml [", Path::new("/"), &defines()).is_err());
        let undefined = "[[capsule]]\nkernel = \"${x}/k\"\nboot = true\n";
        let message = format!(
            "{:#}",
            boot_capsule_from_text(undefined, Path::new("/"), &defines()).unwrap_err()
        );
        assert!(message.contains("`${x}` is not defined"), "{message}");
    }

    #[test]
    fn the_repository_manifests_name_a_boot_capsule() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/manifests");
        for name in ["default.toml", "small.toml"] {
            let boot = boot_capsule(&dir.join(name), &defines()).unwrap();
            assert!(
                boot.kernel.starts_with("/cache/images"),
                "{name}: {}",
                boot.kernel.display()
            );
            assert!(boot.append.contains("console=ttyS0"), "{name}");
            assert!(boot.initrd.is_some(), "{name}");
            let (memory_mib, vcpus) = boot_capsule_machine(&dir.join(name), &defines()).unwrap();
            assert!(memory_mib >= 64 && vcpus >= 1, "{name}: {memory_mib} MiB, {vcpus} vCPUs");
        }
    }
}
