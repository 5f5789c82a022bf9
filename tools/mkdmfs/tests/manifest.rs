//! Builds images from manifests in temporary folders, and checks that every mistake is reported
//! with the capsule it belongs to.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{folder_with_kernel, linux_image, TempDir, MIB};
use keel_dmfs::{Image, KernelFormat, RestartPolicy};

fn defines(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Builds and returns the full error text, which must exist.
fn error_of(manifest: &Path, pairs: &[(&str, &str)]) -> String {
    match mkdmfs::build_from_manifest(manifest, &defines(pairs)) {
        Ok(_) => panic!("manifest {} was accepted", manifest.display()),
        Err(error) => format!("{error:#}"),
    }
}

/// A folder with a valid kernel at `boot/Image` and a manifest made of `text`.
fn setup(text: &str) -> (TempDir, PathBuf) {
    folder_with_kernel("boot/Image", text)
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "message {message:?} lacks {part:?}");
    }
}

#[test]
fn builds_a_valid_manifest() {
    let dir = TempDir::new();
    let images = TempDir::new();
    let kernel = linux_image(6 * MIB, 12_000);
    images.write("debian/Image", &kernel);
    dir.write("initrd.cpio", &[7u8; 5000]);
    dir.write("firmware/hello.bin", &[0x73, 0x00, 0x50, 0x10]);
    let manifest = dir.manifest(
        r#"
[[capsule]]
name = "boot"
kernel = "${images}/debian/Image"
initrd = "initrd.cpio"
cmdline = "console=ttyS0 quiet"
memory = "256M"
vcpus = 2
autostart = true
boot = true
manage = true
restart = "on-failure"

[[capsule]]
name = "hello"
kernel = "firmware/hello.bin"
kernel_format = "flat"
memory = 16777216
restart = "always"
"#,
    );
    let images_path = images.path().to_str().unwrap();
    let built = mkdmfs::build(
        &manifest,
        &[("images".to_string(), images_path.to_string())].into(),
    )
    .unwrap();
    assert_eq!(built.capsules.len(), 2);
    let summary = built.capsules[0].to_string();
    assert_contains(
        &summary,
        &[
            "boot: Linux Image v0.2",
            "6 MiB loaded",
            "initrd",
            "256 MiB",
            "2 vCPUs",
            "boot",
            "restart on-failure",
        ],
    );
    assert_contains(
        &built.capsules[1].to_string(),
        &[
            "hello: flat binary (4 bytes)",
            "16 MiB",
            "1 vCPU,",
            "restart always",
        ],
    );

    let bytes =
        mkdmfs::build_from_manifest(&manifest, &defines(&[("images", images_path)])).unwrap();
    assert_eq!(bytes, built.image);
    let image = Image::parse(&bytes).unwrap();
    let boot = image.boot_capsule().unwrap();
    assert_eq!(boot.name, "boot");
    assert_eq!(boot.kernel, kernel.as_slice());
    assert_eq!(boot.initrd, Some(&[7u8; 5000][..]));
    assert_eq!(boot.cmdline, "console=ttyS0 quiet");
    assert_eq!((boot.memory, boot.vcpus), (256 * MIB, 2));
    assert!(boot.autostart && boot.may_manage);
    assert_eq!(boot.restart, RestartPolicy::OnFailure);
    assert_eq!(boot.kernel_format, KernelFormat::LinuxImage);

    let hello = image.capsule("hello").unwrap();
    assert_eq!(hello.kernel, &[0x73, 0x00, 0x50, 0x10]);
    assert_eq!(hello.kernel_format, KernelFormat::Flat);
    assert_eq!(
        (
            hello.memory,
            hello.vcpus,
            hello.boot,
            hello.autostart,
            hello.may_manage
        ),
        (16 * MIB, 1, false, false, false)
    );
    assert_eq!(hello.restart, RestartPolicy::Always);
}

#[test]
fn missing_kernel_file_names_capsule_and_path() {
    let (dir, manifest) = setup(
        "[[capsule]]\nname = \"web\"\nkernel = \"nowhere/Image\"\nmemory = \"64M\"\nboot = true\n",
    );
    let message = error_of(&manifest, &[]);
    let path = dir.path().join("nowhere/Image");
    assert_contains(
        &message,
        &[
            "capsule \"web\"",
            "cannot read kernel file",
            path.to_str().unwrap(),
        ],
    );
}

#[test]
fn missing_initrd_file_names_capsule_and_path() {
    let (_dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\ninitrd = \"gone.cpio\"\nmemory = \"64M\"\nboot = true\n");
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule \"web\"", "cannot read initrd file", "gone.cpio"],
    );
}

#[test]
fn file_that_is_not_a_kernel_is_rejected() {
    let (dir, manifest) = setup(
        "[[capsule]]\nname = \"web\"\nkernel = \"notes.txt\"\nmemory = \"64M\"\nboot = true\n",
    );
    dir.write("notes.txt", &[b'x'; 200]);
    let message = error_of(&manifest, &[]);
    assert_contains(
        &message,
        &[
            "capsule \"web\"",
            "notes.txt",
            "not a RISC-V Linux Image: magic2 is 0x78787878",
            "kernel_format = \"flat\"",
        ],
    );
}

#[test]
fn elf_kernel_is_rejected_with_a_specific_message() {
    let (dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"vmlinux\"\nmemory = \"64M\"\nboot = true\n");
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.resize(4096, 0);
    dir.write("vmlinux", &elf);
    assert_contains(
        &error_of(&manifest, &[]),
        &[
            "capsule \"web\"",
            "is an ELF file (vmlinux); an Image is needed",
        ],
    );
}

#[test]
fn flat_binary_needs_explicit_kernel_format() {
    let (dir, manifest) =
        setup("[[capsule]]\nname = \"fw\"\nkernel = \"fw.bin\"\nmemory = \"16M\"\nboot = true\n");
    dir.write("fw.bin", &[0x13; 64]);
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule \"fw\"", "not a RISC-V Linux Image"],
    );

    dir.manifest("[[capsule]]\nname = \"fw\"\nkernel = \"fw.bin\"\nkernel_format = \"flat\"\nmemory = \"16M\"\nboot = true\n");
    let image = mkdmfs::build_from_manifest(&manifest, &defines(&[])).unwrap();
    assert_eq!(
        Image::parse(&image)
            .unwrap()
            .capsule("fw")
            .unwrap()
            .kernel_format,
        KernelFormat::Flat
    );
}

#[test]
fn linux_image_declared_flat_is_rejected() {
    let (_dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nkernel_format = \"flat\"\nmemory = \"64M\"\nboot = true\n");
    assert_contains(
        &error_of(&manifest, &[]),
        &[
            "capsule \"web\"",
            "is a RISC-V Linux Image but kernel_format = \"flat\"",
        ],
    );
}

#[test]
fn unknown_kernel_format_is_rejected() {
    let (_dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nkernel_format = \"elf\"\nmemory = \"64M\"\nboot = true\n");
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule \"web\"", "kernel_format = \"elf\" is not one of"],
    );
}

#[test]
fn memory_too_small_for_the_kernel_is_rejected() {
    let (dir, manifest) = setup(
        "[[capsule]]\nname = \"big\"\nkernel = \"big/Image\"\nmemory = \"16M\"\nboot = true\n",
    );
    dir.write("big/Image", &linux_image(30 * MIB, 4096));
    assert_contains(
        &error_of(&manifest, &[]),
        &[
            "capsule \"big\"",
            "memory 16 MiB is too small",
            "kernel needs 0x1e00000 bytes from 0x80200000 but RAM ends at 0x81000000",
        ],
    );
}

#[test]
fn initrd_that_does_not_fit_is_rejected() {
    let (dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\ninitrd = \"big.cpio\"\nmemory = \"16M\"\nboot = true\n");
    dir.write("big.cpio", &vec![0u8; 9 * MIB as usize]);
    assert_contains(
        &error_of(&manifest, &[]),
        &[
            "capsule \"web\"",
            "memory 16 MiB is too small",
            "initrd of 0x900000 bytes",
        ],
    );
}

#[test]
fn memory_values_are_checked() {
    let cases = [
        (
            "\"15M\"",
            "memory 15 MiB is less than the minimum of 16 MiB",
        ),
        (
            "\"17M\"",
            "memory 17 MiB (0x1100000 bytes) is not a multiple of 2 MiB",
        ),
        ("\"64X\"", "memory \"64X\" is not a size: unknown suffix"),
        ("-5", "memory -5 is not a size: it is negative"),
        ("true", "memory true is not a size"),
    ];
    for (value, expected) in cases {
        let (_dir, manifest) = setup(&format!(
            "[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nmemory = {value}\nboot = true\n"
        ));
        assert_contains(&error_of(&manifest, &[]), &["capsule \"web\"", expected]);
    }
}

#[test]
fn vcpu_and_restart_values_are_checked() {
    for (line, expected) in [
        ("vcpus = 0", "vcpus = 0 is outside 1..=64"),
        ("vcpus = 65", "vcpus = 65 is outside 1..=64"),
        (
            "restart = \"sometimes\"",
            "restart = \"sometimes\" is not one of",
        ),
    ] {
        let (_dir, manifest) =
            setup(&format!("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n{line}\n"));
        assert_contains(&error_of(&manifest, &[]), &["capsule \"web\"", expected]);
    }
}

#[test]
fn duplicate_names_are_rejected() {
    let (_dir, manifest) = setup(
        "[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n\
         [[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\n",
    );
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule entries 1 and 2 are both named \"web\""],
    );
}

#[test]
fn invalid_name_is_rejected_with_the_format_rule() {
    let (_dir, manifest) = setup(
        "[[capsule]]\nname = \"my web\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n",
    );
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule \"my web\"", "name contains ' '"],
    );
}

#[test]
fn unknown_key_is_named() {
    let (_dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\ncpus = 4\n");
    assert_contains(
        &error_of(&manifest, &[]),
        &["unknown field `cpus`", "keel.toml"],
    );
}

#[test]
fn boot_capsule_count_is_checked() {
    let (_dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\n");
    assert_contains(&error_of(&manifest, &[]), &["no capsule has boot = true"]);

    let (_dir, manifest) = setup(
        "[[capsule]]\nname = \"a\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n\
         [[capsule]]\nname = \"b\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n",
    );
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsules \"a\" and \"b\" both have boot = true"],
    );
}

#[test]
fn empty_manifest_is_rejected() {
    let (_dir, manifest) = setup("# nothing here\n");
    assert_contains(
        &error_of(&manifest, &[]),
        &["defines no [[capsule]] entries"],
    );
}

#[test]
fn missing_keys_name_the_entry_by_position() {
    let (_dir, manifest) = setup(
        "[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n\
         [[capsule]]\nkernel = \"boot/Image\"\nmemory = \"64M\"\n",
    );
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule entry 2 (unnamed): missing required key `name`"],
    );

    let (_dir, manifest) = setup("[[capsule]]\nname = \"web\"\nmemory = \"64M\"\nboot = true\n");
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule \"web\": missing required key `kernel`"],
    );

    let (_dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"boot/Image\"\nboot = true\n");
    assert_contains(
        &error_of(&manifest, &[]),
        &["capsule \"web\": missing required key `memory`"],
    );
}

#[test]
fn undefined_variable_is_named() {
    let (_dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"${images}/Image\"\nmemory = \"64M\"\nboot = true\n");
    assert_contains(
        &error_of(&manifest, &[("other", "x")]),
        &["capsule \"web\"", "${images}, which is not defined"],
    );
}

#[test]
fn missing_manifest_is_reported() {
    let dir = TempDir::new();
    let message = error_of(&dir.path().join("absent.toml"), &[]);
    assert_contains(&message, &["cannot read manifest", "absent.toml"]);
}

#[test]
fn command_line_tool_writes_image_and_summaries() {
    let (dir, manifest) =
        setup("[[capsule]]\nname = \"web\"\nkernel = \"${kernels}/Image\"\nmemory = \"64M\"\nboot = true\n");
    let output = dir.path().join("out.dmfs");
    let kernels = dir.path().join("boot");
    let run = Command::new(env!("CARGO_BIN_EXE_mkdmfs"))
        .arg("--manifest")
        .arg(&manifest)
        .arg("--output")
        .arg(&output)
        .arg("--define")
        .arg(format!("kernels={}", kernels.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .starts_with("web: Linux Image v0.2"),
        "{stdout}"
    );
    let bytes = fs::read(&output).unwrap();
    assert_eq!(
        Image::parse(&bytes).unwrap().capsule("web").unwrap().memory,
        64 * MIB
    );

    let failed = Command::new(env!("CARGO_BIN_EXE_mkdmfs"))
        .arg("--manifest")
        .arg(&manifest)
        .arg("--output")
        .arg(dir.path().join("never.dmfs"))
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert_contains(
        &String::from_utf8_lossy(&failed.stderr),
        &["mkdmfs:", "${kernels}, which is not defined"],
    );
    assert!(!dir.path().join("never.dmfs").exists());

    let malformed = Command::new(env!("CARGO_BIN_EXE_mkdmfs"))
        .args([
            "--manifest",
            "x",
            "--output",
            "y",
            "--define",
            "no-equals-sign",
        ])
        .output()
        .unwrap();
    assert!(!malformed.status.success());
    assert_contains(&String::from_utf8_lossy(&malformed.stderr), &["NAME=VALUE"]);
}

const SECRET_KEY: [u8; 32] = [7; 32];

#[test]
fn signed_build_verifies_with_the_matching_public_key_only() {
    let (_dir, manifest) = setup(
        "[[capsule]]\nname = \"boot\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n",
    );
    let public = keel_dmfs::public_key(&SECRET_KEY);
    let signed = mkdmfs::build_signed_from_manifest(&manifest, &[], &SECRET_KEY).unwrap();
    assert_eq!(keel_dmfs::verify(&signed, &public), Ok(()));
    let image = Image::parse(&signed).unwrap();
    assert_eq!(image.key_id(), Some(keel_dmfs::KeyId::of(&public)));

    let other = keel_dmfs::public_key(&[8; 32]);
    assert!(matches!(
        keel_dmfs::verify(&signed, &other),
        Err(keel_dmfs::SignatureError::WrongKey { .. })
    ));

    let unsigned = mkdmfs::build_from_manifest(&manifest, &[]).unwrap();
    assert_eq!(
        keel_dmfs::verify(&unsigned, &public),
        Err(keel_dmfs::SignatureError::Unsigned)
    );
    // Only the header differs between the signed and the unsigned image.
    assert_eq!(signed.len(), unsigned.len());
    assert_eq!(signed[128..], unsigned[128..]);

    let mut tampered = signed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    assert_eq!(
        keel_dmfs::verify(&tampered, &public),
        Err(keel_dmfs::SignatureError::BadSignature)
    );
}

#[test]
fn key_files_must_hold_exactly_one_key() {
    let dir = TempDir::new();
    let good = dir.write("good.secret", &SECRET_KEY);
    assert_eq!(mkdmfs::read_key_file(&good).unwrap(), SECRET_KEY);

    let short = dir.write("short.secret", &[1; 31]);
    let message = mkdmfs::read_key_file(&short).unwrap_err().to_string();
    assert_contains(
        &message,
        &["short.secret", "is 31 bytes long", "exactly 32 raw bytes"],
    );
    let message = mkdmfs::read_key_file(&dir.path().join("absent.secret"))
        .unwrap_err()
        .to_string();
    assert_contains(&message, &["cannot read key file", "absent.secret"]);
}

#[test]
fn command_line_tool_signs_with_sign_key() {
    let (dir, manifest) = setup(
        "[[capsule]]\nname = \"boot\"\nkernel = \"boot/Image\"\nmemory = \"64M\"\nboot = true\n",
    );
    let key = dir.write("keel-signing.secret", &SECRET_KEY);
    let public = keel_dmfs::public_key(&SECRET_KEY);
    let run = |sign_key: Option<&Path>, output: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mkdmfs"));
        command
            .arg("--manifest")
            .arg(&manifest)
            .arg("--output")
            .arg(output);
        if let Some(key) = sign_key {
            command.arg("--sign-key").arg(key);
        }
        command.output().unwrap()
    };

    let signed_path = dir.path().join("signed.dmfs");
    let signed = run(Some(&key), &signed_path);
    assert!(
        signed.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let id = keel_dmfs::KeyId::of(&public).to_string();
    assert_contains(
        &String::from_utf8_lossy(&signed.stdout),
        &["wrote", &format!("signed with key {id}")],
    );
    assert_eq!(
        keel_dmfs::verify(&fs::read(&signed_path).unwrap(), &public),
        Ok(())
    );

    let unsigned_path = dir.path().join("unsigned.dmfs");
    let unsigned = run(None, &unsigned_path);
    assert!(unsigned.status.success());
    assert_contains(&String::from_utf8_lossy(&unsigned.stdout), &["unsigned)"]);
    assert_eq!(
        keel_dmfs::verify(&fs::read(&unsigned_path).unwrap(), &public),
        Err(keel_dmfs::SignatureError::Unsigned)
    );

    let bad_key = dir.write("bad.secret", b"not a key");
    let never = dir.path().join("never.dmfs");
    let refused = run(Some(&bad_key), &never);
    assert!(!refused.status.success());
    assert_contains(
        &String::from_utf8_lossy(&refused.stderr),
        &["mkdmfs:", "bad.secret", "is 9 bytes long"],
    );
    assert!(!never.exists());
}
