//! Embeds the manifest file-system image named by `KEEL_DMFS_IMAGE` and passes the linker script.

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
}
