//! `check_manifest`: every check that needs no file, without touching the file system.

use std::path::Path;

use mkdmfs::{check_manifest, parse_manifest, CapsuleError, Defines, ManifestError};

/// A folder that does not exist: any attempt to read a kernel under it would fail.
const NOWHERE: &str = "/nonexistent/keel-mkdmfs-check";

fn check(text: &str, defines: &[(&str, &str)]) -> Result<(), ManifestError> {
    let manifest = parse_manifest(text).expect("valid TOML");
    let defines: Defines = defines
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    check_manifest(&manifest, Path::new(NOWHERE), &defines)
}

#[test]
fn a_valid_manifest_passes_without_its_files() {
    let text = r#"
        [[capsule]]
        name = "boot"
        kernel = "${images}/Image"
        memory = "64M"
        boot = true

        [[capsule]]
        name = "other"
        kernel = "flat.bin"
        kernel_format = "flat"
        memory = 33554432
        vcpus = 2
    "#;
    assert!(check(text, &[("images", "/cache")]).is_ok());
    // Building the same manifest has to read the kernels, which are not there.
    let manifest = parse_manifest(text).expect("valid TOML");
    let defines: Defines = [("images".to_string(), "/cache".to_string())].into();
    let Err(error) = mkdmfs::build_manifest(&manifest, Path::new(NOWHERE), &defines) else {
        panic!("built an image without its kernels");
    };
    assert!(matches!(
        error,
        ManifestError::Capsule {
            problem: CapsuleError::ReadFailed { .. },
            ..
        }
    ));
}

#[test]
fn manifest_wide_mistakes_are_found_without_files() {
    assert!(matches!(check("", &[]), Err(ManifestError::NoCapsules)));
    let no_boot = "[[capsule]]\nname = \"a\"\nkernel = \"k\"\nmemory = \"16M\"\n";
    assert!(matches!(
        check(no_boot, &[]),
        Err(ManifestError::NoBootCapsule)
    ));
    let twice = format!(
        "{no_boot}boot = true\n[[capsule]]\nname = \"a\"\nkernel = \"k\"\nmemory = \"16M\"\n"
    );
    assert!(matches!(
        check(&twice, &[]),
        Err(ManifestError::DuplicateName {
            first: 1,
            second: 2,
            ..
        })
    ));
    let undefined =
        "[[capsule]]\nname = \"a\"\nkernel = \"${nope}/k\"\nmemory = \"16M\"\nboot = true\n";
    let error = check(undefined, &[]).expect_err("undefined variable");
    assert!(error.to_string().contains("nope"), "{error}");
}

#[test]
fn the_boot_capsule_machine_is_its_memory_and_vcpus() {
    let machine = |text: &str| {
        let manifest = parse_manifest(text).expect("valid TOML");
        mkdmfs::boot_capsule_machine(&manifest, Path::new(NOWHERE), &Defines::new())
    };
    let text = r#"
        [[capsule]]
        name = "other"
        kernel = "k"
        memory = "64M"
        vcpus = 3

        [[capsule]]
        name = "boot"
        kernel = "k"
        memory = "1G"
        vcpus = 2
        boot = true
    "#;
    assert_eq!(machine(text).unwrap(), (1 << 30, 2));
    // vcpus defaults to 1, as in the image.
    let one = "[[capsule]]\nname = \"b\"\nkernel = \"k\"\nmemory = 67108864\nboot = true\n";
    assert_eq!(machine(one).unwrap(), (64 << 20, 1));
    // The manifest's mistakes are reported as for a build.
    let bad = "[[capsule]]\nname = \"b\"\nkernel = \"k\"\nmemory = \"1X\"\nboot = true\n";
    assert!(matches!(machine(bad), Err(ManifestError::Capsule { .. })));
}
