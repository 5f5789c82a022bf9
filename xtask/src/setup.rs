//! Host tools: checks for each by its program or file, and installs the missing ones with apt.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::shell;

/// How to tell whether a tool is there.
enum Probe {
    /// A program on PATH.
    Program(&'static str),
    /// A file the package installs.
    File(&'static str),
}

/// One host requirement and the Debian package that provides it.
struct Tool {
    probe: Probe,
    package: &'static str,
    why: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        probe: Probe::Program("qemu-system-riscv64"),
        package: "qemu-system-misc",
        why: "runs the RISC-V machine",
    },
    Tool {
        probe: Probe::File("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"),
        package: "opensbi",
        why: "the firmware behind `-bios default`",
    },
    Tool {
        probe: Probe::Program("dtc"),
        package: "device-tree-compiler",
        why: "reads and checks device trees",
    },
    Tool {
        probe: Probe::Program("riscv64-linux-gnu-gcc"),
        package: "gcc-riscv64-linux-gnu",
        why: "cross-compiles the small kernel",
    },
    Tool {
        probe: Probe::Program("riscv64-linux-gnu-objcopy"),
        package: "binutils-riscv64-linux-gnu",
        why: "flattens the SBI check guest to a raw binary",
    },
    Tool {
        probe: Probe::File("/usr/src/linux-source-6.1.tar.xz"),
        package: "linux-source-6.1",
        why: "source of the small kernel",
    },
    Tool {
        probe: Probe::Program("make"),
        package: "make",
        why: "kernel build",
    },
    Tool {
        probe: Probe::Program("gcc"),
        package: "gcc",
        why: "kernel build host programs",
    },
    Tool {
        probe: Probe::Program("g++"),
        package: "g++",
        why: "libFuzzer, which the fuzz targets link, is C++",
    },
    Tool {
        probe: Probe::File("/usr/include/stdio.h"),
        package: "libc6-dev",
        why: "kernel build host programs",
    },
    Tool {
        probe: Probe::Program("bc"),
        package: "bc",
        why: "kernel build",
    },
    Tool {
        probe: Probe::Program("flex"),
        package: "flex",
        why: "kernel configuration",
    },
    Tool {
        probe: Probe::Program("bison"),
        package: "bison",
        why: "kernel configuration",
    },
    Tool {
        probe: Probe::File("/usr/include/libelf.h"),
        package: "libelf-dev",
        why: "kernel build",
    },
    Tool {
        probe: Probe::File("/usr/include/openssl/ssl.h"),
        package: "libssl-dev",
        why: "kernel build",
    },
    Tool {
        probe: Probe::Program("xz"),
        package: "xz-utils",
        why: "unpacks the kernel source",
    },
    Tool {
        probe: Probe::Program("cpio"),
        package: "cpio",
        why: "inspecting initramfs archives",
    },
];

impl Tool {
    fn present(&self) -> bool {
        match self.probe {
            Probe::Program(name) => shell::which(name).is_some(),
            Probe::File(path) => Path::new(path).exists(),
        }
    }
}

/// The packages to install: one per missing tool, each named once, in table order.
fn missing_packages(present: impl Fn(&Tool) -> bool) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for tool in TOOLS.iter().filter(|tool| !present(tool)) {
        if !packages.contains(&tool.package) {
            packages.push(tool.package);
        }
    }
    packages
}

/// Installs whatever of [`TOOLS`] is missing; does nothing (and needs no network) when all are there.
pub fn ensure_host_tools() -> Result<()> {
    let missing = missing_packages(Tool::present);
    if missing.is_empty() {
        return Ok(());
    }
    for tool in TOOLS.iter().filter(|tool| !tool.present()) {
        let what = match tool.probe {
            Probe::Program(name) | Probe::File(name) => name,
        };
        println!(
            "    missing {what} ({}): package {}",
            tool.why, tool.package
        );
    }
    if shell::which("apt-get").is_none() {
        bail!(
            "missing host packages {} and no apt-get to install them: this needs a Debian machine",
            missing.join(" ")
        );
    }
    shell::step(&format!("installing host packages: {}", missing.join(" ")));
    let as_root = is_root();
    let privileged = |program: &str| {
        let mut command = if as_root {
            Command::new(program)
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg(program);
            sudo
        };
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    if !as_root && shell::which("sudo").is_none() {
        bail!(
            "installing {} needs root: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    let mut update = privileged("apt-get");
    update.args(["-q", "update"]);
    shell::run(update)?;
    let mut install = privileged("apt-get");
    install
        .args(["-q", "install", "-y", "--no-install-recommends"])
        .args(&missing);
    shell::run(install)?;

    let still_missing = missing_packages(Tool::present);
    if !still_missing.is_empty() {
        bail!(
            "installed packages still leave tools missing: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

fn is_root() -> bool {
    let mut command = Command::new("id");
    command.arg("-u");
    shell::output(command)
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_install_when_everything_is_present() {
        assert!(missing_packages(|_| true).is_empty());
    }

    #[test]
    fn every_package_is_listed_once_when_nothing_is_present() {
        let all = missing_packages(|_| false);
        assert!(all.contains(&"qemu-system-misc"));
        assert!(all.contains(&"linux-source-6.1"));
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn only_the_missing_tools_package_is_chosen() {
        let missing = missing_packages(|tool| !matches!(tool.probe, Probe::Program("dtc")));
        assert_eq!(missing, ["device-tree-compiler"]);
    }
}
