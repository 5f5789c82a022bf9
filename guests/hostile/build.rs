//! Links the guest with the SBI check guest's linker script (same load address, same entry code) when building
//! for RISC-V.

use std::{env, path::PathBuf};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // Host builds (the library's unit tests) link normally; only the guest executable needs the script.
    if target_arch == "riscv64" {
        let script = manifest_dir.join("../sbi-check/linker.ld");
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        println!("cargo:rerun-if-changed={}", script.display());
    }
}
