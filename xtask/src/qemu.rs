//! QEMU command lines for Keel and native boots, and QEMU 10.0 unpacked from Debian's bookworm-backports.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::apt::{self, PrivateApt};
use crate::cache::{self, Cache, Key};
use crate::shell;

/// The emulated machine's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub smp: u32,
    pub memory_mib: u64,
    /// `-cpu` model and properties, e.g. `rv64,sstc=false`; the machine's default CPU when `None`.
    pub cpu: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemorySizeError {
    #[error("memory size `{0}` is not a number with an optional K, M, G or T suffix")]
    Syntax(String),
    #[error("memory size `{0}` is not a whole number of MiB of at least 16 MiB")]
    Unusable(String),
}

/// Parses a memory size the way QEMU's `-m` does: a plain number is MiB; K, M, G, T suffixes.
pub fn parse_memory_mib(text: &str) -> Result<u64, MemorySizeError> {
    let syntax = || MemorySizeError::Syntax(text.to_string());
    let trimmed = text.trim();
    let (digits, unit_kib) = match trimmed.char_indices().last() {
        Some((index, suffix)) if suffix.is_ascii_alphabetic() => {
            let unit = match suffix.to_ascii_uppercase() {
                'K' => 1u64,
                'M' => 1 << 10,
                'G' => 1 << 20,
                'T' => 1 << 30,
                _ => return Err(syntax()),
            };
            (&trimmed[..index], unit)
        }
        _ => (trimmed, 1 << 10),
    };
    let number: u64 = digits.parse().map_err(|_| syntax())?;
    let kib = number.checked_mul(unit_kib).ok_or_else(syntax)?;
    if kib % 1024 != 0 || kib / 1024 < 16 {
        return Err(MemorySizeError::Unusable(text.to_string()));
    }
    Ok(kib / 1024)
}

/// A kernel to boot directly on the firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

/// What QEMU's `-kernel` gets: Keel (with its capsules inside), or a guest kernel directly.
#[derive(Debug, Clone)]
pub enum Payload {
    Hypervisor(PathBuf),
    Native(Boot),
}

/// The machine arguments common to `run` and the tests: `virt`, OpenSBI, console on stdio.
pub fn machine_args(machine: &Machine, payload: &Payload) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-M", "virt", "-smp"].map(OsString::from).to_vec();
    args.push(machine.smp.to_string().into());
    args.push("-m".into());
    args.push(format!("{}M", machine.memory_mib).into());
    if let Some(cpu) = &machine.cpu {
        args.push("-cpu".into());
        args.push(cpu.into());
    }
    // An entropy device on the virtio-mmio bus: Keel feeds its capsules' virtio-rng from it, and a kernel booted
    // natively gets the same machine.
    for word in ["-device", "virtio-rng-device", "-nographic", "-bios", "default", "-kernel"] {
        args.push(word.into());
    }
    match payload {
        Payload::Hypervisor(elf) => args.push(elf.clone().into()),
        Payload::Native(boot) => {
            args.push(boot.kernel.clone().into());
            if let Some(initrd) = &boot.initrd {
                args.push("-initrd".into());
                args.push(initrd.clone().into());
            }
            args.push("-append".into());
            args.push(boot.append.clone().into());
        }
    }
    args
}

/// Arguments that give the machine a raw disk image on the virtio-mmio bus (Keel's host disk, whose extents back
/// the capsules' disks). Writes go to the file, so what is written survives the machine.
pub fn disk_args(image: &Path) -> Vec<OsString> {
    let mut drive = OsString::from("file=");
    drive.push(image);
    drive.push(",if=none,format=raw,id=keel-disk");
    ["-drive".into(), drive, "-device".into(), "virtio-blk-device,drive=keel-disk".into()].to_vec()
}

/// A TCP port of this machine's loopback forwarded to a port of a guest address on QEMU user networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub guest_address: std::net::Ipv4Addr,
    pub guest_port: u16,
}

impl std::str::FromStr for Forward {
    type Err = String;

    /// `HOST_PORT:GUEST_ADDRESS:GUEST_PORT`, e.g. `8080:10.0.2.16:80`.
    fn from_str(text: &str) -> Result<Forward, String> {
        let usage = || format!("`{text}` is not HOST_PORT:GUEST_ADDRESS:GUEST_PORT (e.g. 8080:10.0.2.16:80)");
        let mut parts = text.split(':');
        let (Some(host), Some(address), Some(guest), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(usage());
        };
        let port = |word: &str| word.parse::<u16>().ok().filter(|&port| port != 0);
        Ok(Forward {
            host_port: port(host).ok_or_else(usage)?,
            guest_address: address.parse().map_err(|_| usage())?,
            guest_port: port(guest).ok_or_else(usage)?,
        })
    }
}

/// A NIC on QEMU user networking (10.0.2.0/24, gateway 10.0.2.2, DNS 10.0.2.3): the uplink of Keel's switch, or a
/// native guest's own card. Each forward makes a guest's TCP port reachable from this machine's loopback.
pub fn net_args(forwards: &[Forward]) -> Vec<OsString> {
    let mut netdev = String::from("user,id=keel-net");
    for forward in forwards {
        netdev.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-{}:{}",
            forward.host_port, forward.guest_address, forward.guest_port
        ));
    }
    ["-netdev".into(), netdev.into(), "-device".into(), "virtio-net-device,netdev=keel-net".into()].to_vec()
}

/// Makes (or keeps) a sparse raw disk image of `size_mib` MiB at `path`.
pub fn ensure_disk_image(path: &Path, size_mib: u64) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    shell::step(&format!("making a {size_mib} MiB host disk image at {}", path.display()));
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(size_mib << 20).with_context(|| format!("cannot size {}", path.display()))?;
    Ok(())
}

/// A QEMU binary plus what it needs to run from outside the system paths.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    /// `-L`: where firmware such as OpenSBI is found.
    pub data_dir: Option<PathBuf>,
    /// QEMU_MODULE_DIR: without it QEMU loads the machine's own (7.2) modules and aborts, as modules
    /// only load into the build they came from.
    pub module_dir: Option<PathBuf>,
    /// Arguments this particular QEMU needs before the machine's.
    pub extra_args: Vec<OsString>,
    /// Directories of unpacked shared libraries, for LD_LIBRARY_PATH.
    pub library_dirs: Vec<PathBuf>,
}

impl Qemu {
    pub fn system() -> Qemu {
        Qemu::at(Path::new("qemu-system-riscv64"))
    }

    pub fn at(binary: &Path) -> Qemu {
        Qemu {
            binary: binary.to_path_buf(),
            data_dir: None,
            module_dir: None,
            extra_args: Vec::new(),
            library_dirs: Vec::new(),
        }
    }

    fn base_command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        if !self.library_dirs.is_empty() {
            let mut dirs = self.library_dirs.clone();
            if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
                dirs.extend(std::env::split_paths(&existing));
            }
            if let Ok(joined) = std::env::join_paths(dirs) {
                command.env("LD_LIBRARY_PATH", joined);
            }
        }
        if let Some(dir) = &self.module_dir {
            command.env("QEMU_MODULE_DIR", dir);
        }
        if let Some(dir) = &self.data_dir {
            command.arg("-L").arg(dir);
        }
        command
    }

    fn machine_command(&self) -> Command {
        let mut command = self.base_command();
        command.args(&self.extra_args);
        command
    }

    pub fn command(&self, machine: &Machine, payload: &Payload) -> Command {
        let mut command = self.machine_command();
        command.args(machine_args(machine, payload));
        command
    }

    /// The first line of `--version`, e.g. "QEMU emulator version 7.2.19 (Debian ...)".
    pub fn version(&self) -> Result<String> {
        let mut command = self.base_command();
        command.arg("--version");
        let text = shell::output(command)?;
        Ok(text.lines().next().unwrap_or("").trim().to_string())
    }
}

/// The QEMU packages taken from bookworm-backports.
const QEMU10_PACKAGES: &[&str] = &[
    "qemu-system-riscv",
    "qemu-system-common",
    "qemu-system-data",
];
const BACKPORTS: &str = "bookworm-backports";

/// Fetches QEMU 10 from bookworm-backports and unpacks it into the cache (never installed system-wide,
/// so the machine's QEMU 7.2 stays). Libraries it needs that the machine lacks are unpacked beside it.
pub fn qemu10(cache: &Cache) -> Result<Qemu> {
    let apt = PrivateApt::prepare(
        cache,
        "bookworm-amd64",
        "amd64",
        &["bookworm", "bookworm-updates", BACKPORTS],
    )?;
    let mut records = Vec::new();
    for package in QEMU10_PACKAGES {
        records.push(apt.show(&format!("{package}/{BACKPORTS}"))?);
    }
    let mut key = Key::new("qemu10");
    for record in &records {
        key.add(&record.package, record.sha256.as_bytes());
    }
    let root = cache.dir("qemu")?.join(format!(
        "{}-{}",
        records[0].version.replace(':', "_"),
        key.short()
    ));
    if !root.is_dir() {
        shell::step(&format!(
            "fetching QEMU {} from Debian {BACKPORTS}: {}",
            records[0].version,
            QEMU10_PACKAGES.join(", ")
        ));
        let staging = cache::staging_dir(&root)?;
        for record in &records {
            unpack_into(cache, &apt, record, &staging)?;
        }
        add_missing_libraries(cache, &apt, &records[0].depends, &staging)?;
        cache::publish(&staging, &root)?;
    }
    let qemu = Qemu {
        binary: root.join("usr/bin/qemu-system-riscv64"),
        data_dir: Some(root.join("usr/share/qemu")),
        module_dir: Some(root.join("usr/lib/x86_64-linux-gnu/qemu")),
        // QEMU 10 probes audio drivers at start-up, and the PulseAudio one is only among the
        // machine's 7.2 modules, which abort a 10.0 process; no audio backend is wanted anyway.
        extra_args: vec!["-audio".into(), "none".into()],
        library_dirs: vec![
            root.join("usr/lib/x86_64-linux-gnu"),
            root.join("lib/x86_64-linux-gnu"),
        ],
    };
    let unresolved = missing_libraries(&qemu)?;
    if !unresolved.is_empty() {
        bail!(
            "QEMU 10 in {} still lacks shared libraries: {}",
            root.display(),
            unresolved.join(", ")
        );
    }
    Ok(qemu)
}

fn unpack_into(
    cache: &Cache,
    apt: &PrivateApt,
    record: &apt::PackageRecord,
    root: &Path,
) -> Result<()> {
    let deb = apt.fetch(cache, record)?;
    let mut command = Command::new("dpkg");
    command.arg("-x").arg(deb).arg(root);
    shell::output(command).map(drop)
}

/// Unpacks the library dependencies of QEMU that this machine lacks, or has in a version older than
/// QEMU asks for (backports are built against the release's libraries, so this is rarely needed).
fn add_missing_libraries(
    cache: &Cache,
    apt: &PrivateApt,
    depends: &[apt::Dependency],
    root: &Path,
) -> Result<()> {
    let mut added = Vec::new();
    for dependency in depends {
        if !dependency.name.starts_with("lib")
            || QEMU10_PACKAGES.contains(&dependency.name.as_str())
        {
            continue;
        }
        let new_enough = match (installed_version(&dependency.name), &dependency.min_version) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(installed), Some(minimum)) => version_at_least(&installed, minimum),
        };
        if new_enough {
            continue;
        }
        let record = apt.show(&dependency.name)?;
        unpack_into(cache, apt, &record, root)?;
        added.push(format!("{} {}", record.package, record.version));
    }
    if !added.is_empty() {
        println!(
            "    with libraries this machine lacks: {}",
            added.join(", ")
        );
    }
    Ok(())
}

fn installed_version(package: &str) -> Option<String> {
    let mut command = Command::new("dpkg-query");
    command.args(["-W", "-f=${Status}\t${Version}", package]);
    let text = shell::output(command).ok()?;
    let (status, version) = text.split_once('\t')?;
    status
        .ends_with(" installed")
        .then(|| version.trim().to_string())
}

/// Debian version comparison, done by dpkg itself so epochs and tildes follow Debian policy.
fn version_at_least(installed: &str, minimum: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", installed, "ge", minimum])
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Libraries `ldd` cannot find (or finds in too old a version) for this QEMU.
fn missing_libraries(qemu: &Qemu) -> Result<Vec<String>> {
    let mut command = Command::new("ldd");
    command.arg(&qemu.binary);
    command.env("LD_LIBRARY_PATH", std::env::join_paths(&qemu.library_dirs)?);
    let result = command
        .output()
        .with_context(|| format!("cannot run ldd on {}", qemu.binary.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    Ok(text
        .lines()
        .filter(|line| line.contains("not found"))
        .map(|line| line.trim().to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_are_read_and_bad_ones_named() {
        let forward: Forward = "8080:10.0.2.16:80".parse().unwrap();
        assert_eq!(
            forward,
            Forward { host_port: 8080, guest_address: "10.0.2.16".parse().unwrap(), guest_port: 80 }
        );
        for bad in ["8080:10.0.2.16", "8080:10.0.2.16:80:1", "0:10.0.2.16:80", "8080:10.0.2:80", "x:10.0.2.16:80", "8080:10.0.2.16:70000"] {
            let error = bad.parse::<Forward>().unwrap_err();
            assert!(error.contains(bad) && error.contains("HOST_PORT:GUEST_ADDRESS:GUEST_PORT"), "{error}");
        }
        let args = net_args(&[forward.clone(), Forward { host_port: 2222, guest_port: 22, ..forward }]);
        assert_eq!(
            args[1],
            "user,id=keel-net,hostfwd=tcp:127.0.0.1:8080-10.0.2.16:80,hostfwd=tcp:127.0.0.1:2222-10.0.2.16:22"
        );
        assert_eq!(args[3], "virtio-net-device,netdev=keel-net");
    }

    #[test]
    fn memory_sizes_follow_qemu_syntax() {
        assert_eq!(parse_memory_mib("1G"), Ok(1024));
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("512m"), Ok(512));
        assert_eq!(parse_memory_mib("2048"), Ok(2048));
        assert_eq!(parse_memory_mib("65536K"), Ok(64));
        assert_eq!(parse_memory_mib("1T"), Ok(1 << 20));
        assert_eq!(
            parse_memory_mib("lots"),
            Err(MemorySizeError::Syntax("lots".into()))
        );
        assert_eq!(
            parse_memory_mib("1X"),
            Err(MemorySizeError::Syntax("1X".into()))
        );
        assert_eq!(
            parse_memory_mib(""),
            Err(MemorySizeError::Syntax(String::new()))
        );
        assert_eq!(
            parse_memory_mib("99999999999999999999G"),
            Err(MemorySizeError::Syntax("99999999999999999999G".into()))
        );
        assert_eq!(
            parse_memory_mib("8M"),
            Err(MemorySizeError::Unusable("8M".into()))
        );
        assert_eq!(
            parse_memory_mib("1500K"),
            Err(MemorySizeError::Unusable("1500K".into()))
        );
    }

    #[test]
    fn hypervisor_and_native_command_lines() {
        let machine = Machine {
            smp: 2,
            memory_mib: 512,
            cpu: None,
        };
        let keel = machine_args(&machine, &Payload::Hypervisor("/t/keel".into()));
        assert_eq!(
            keel,
            [
                "-M",
                "virt",
                "-smp",
                "2",
                "-m",
                "512M",
                "-device",
                "virtio-rng-device",
                "-nographic",
                "-bios",
                "default",
                "-kernel",
                "/t/keel"
            ]
            .map(OsString::from)
        );
        let boot = Boot {
            kernel: "/i/Image".into(),
            initrd: Some("/i/initrd".into()),
            append: "console=ttyS0".into(),
        };
        let native = machine_args(&machine, &Payload::Native(boot));
        let tail: Vec<&str> = native[11..]
            .iter()
            .map(|word| word.to_str().unwrap())
            .collect();
        assert_eq!(
            tail,
            [
                "-kernel",
                "/i/Image",
                "-initrd",
                "/i/initrd",
                "-append",
                "console=ttyS0"
            ]
        );
    }

    #[test]
    fn unpacked_qemu_gets_data_dir_and_library_path() {
        let qemu = Qemu {
            binary: "/c/usr/bin/qemu-system-riscv64".into(),
            data_dir: Some("/c/usr/share/qemu".into()),
            module_dir: Some("/c/usr/lib/x86_64-linux-gnu/qemu".into()),
            extra_args: vec!["-audio".into(), "none".into()],
            library_dirs: vec!["/c/usr/lib/x86_64-linux-gnu".into()],
        };
        let command = qemu.command(
            &Machine {
                smp: 1,
                memory_mib: 256,
                cpu: Some("rv64,sstc=false".into()),
            },
            &Payload::Hypervisor("/k".into()),
        );
        let args: Vec<&std::ffi::OsStr> = command.get_args().collect();
        assert_eq!(
            args[..5],
            ["-L", "/c/usr/share/qemu", "-audio", "none", "-M"]
        );
        let cpu = args.iter().position(|arg| *arg == "-cpu").expect("-cpu present");
        assert_eq!(args[cpu + 1], "rv64,sstc=false");
        let library_path = command
            .get_envs()
            .find(|(name, _)| *name == "LD_LIBRARY_PATH")
            .and_then(|(_, value)| value)
            .unwrap();
        assert!(library_path
            .to_string_lossy()
            .starts_with("/c/usr/lib/x86_64-linux-gnu"));
    }
}
