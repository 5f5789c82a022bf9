//! Embeds the manifest file-system image named by `KEEL_DMFS_IMAGE` and the public key named by
//! `KEEL_PUBLIC_KEY` (or, with `KEEL_ALLOW_UNSIGNED=1`, no key), and passes the linker script.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();

    if target_arch == "riscv64" {
        let script = manifest_dir.join("linker.ld");
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        println!("cargo:rerun-if-changed={}", script.display());
    }

    // The bundled image is optional: without it the hypervisor boots and reports that there is
    // nothing to run, which keeps `cargo build -p keel-hypervisor` useful on its own.
    println!("cargo:rerun-if-env-changed=KEEL_DMFS_IMAGE");
    let image = match env::var_os("KEEL_DMFS_IMAGE") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            if !path.is_file() {
                panic!("KEEL_DMFS_IMAGE names {}, which is not a file", path.display());
            }
            path
        }
        None => {
            let empty = out_dir.join("empty.dmfs");
            fs::write(&empty, b"").expect("write empty image");
            empty
        }
    };
    let image = image.canonicalize().expect("canonical image path");
    let path = format!("{:?}", image.display().to_string());
    let generated = format!(
        "/// The manifest file-system image bundled into this executable, page aligned in its own section.\n\
         #[link_section = \".dmfs\"]\n\
         static BUNDLED: Aligned<[u8; include_bytes!({path}).len()]> = Aligned(*include_bytes!({path}));\n"
    );
    fs::write(out_dir.join("bundled.rs"), generated).expect("write bundled.rs");

    // Which images the hypervisor accepts (see src/verify.rs): those signed with the secret half of
    // the public key file, or, in the development mode, any image without a check.
    println!("cargo:rerun-if-env-changed=KEEL_PUBLIC_KEY");
    println!("cargo:rerun-if-env-changed=KEEL_ALLOW_UNSIGNED");
    let allow_unsigned = match env::var_os("KEEL_ALLOW_UNSIGNED") {
        None => false,
        Some(value) if value == "1" => true,
        Some(value) if value.is_empty() || value == "0" => false,
        Some(value) => panic!("KEEL_ALLOW_UNSIGNED is {value:?}; set it to 1 (development mode) or leave it unset"),
    };
    let policy = match env::var_os("KEEL_PUBLIC_KEY").filter(|path| !path.is_empty()) {
        _ if allow_unsigned => {
            println!("cargo:warning=KEEL_ALLOW_UNSIGNED=1: this hypervisor does not check manifest image signatures (development mode)");
            String::from("KeyPolicy::AllowUnsigned")
        }
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            let key = fs::read(&path)
                .unwrap_or_else(|error| panic!("KEEL_PUBLIC_KEY names {}, which cannot be read: {error}", path.display()));
            if key.len() != 32 {
                panic!(
                    "KEEL_PUBLIC_KEY names {}, which is {} bytes long; an Ed25519 public key file holds exactly 32 bytes",
                    path.display(),
                    key.len()
                );
            }
            format!("KeyPolicy::Key({key:?})")
        }
        None => {
            if env::var_os("KEEL_DMFS_IMAGE").is_some() {
                println!("cargo:warning=KEEL_PUBLIC_KEY is not set: this hypervisor will refuse every manifest image (build with `cargo xtask build`)");
            }
            String::from("KeyPolicy::NoKey")
        }
    };
    let generated = format!(
        "/// Which manifest images this build accepts, chosen by build.rs.\n\
         static KEY_POLICY: KeyPolicy = {policy};\n"
    );
    fs::write(out_dir.join("key_policy.rs"), generated).expect("write key_policy.rs");
}
