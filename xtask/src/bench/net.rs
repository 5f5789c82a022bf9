//! The io-net benchmark: virtio-net throughput to this machine and between two guests, under Keel and natively.
//!
//! Under Keel one boot of guests/manifests/bench-net.toml measures both directions: this machine fetches a file
//! from the `web` capsule through QEMU's port forward, then the `boot` capsule fetches it across Keel's switch.
//! The native baselines boot the same kernels, initrds and command lines as QEMU machines of their own: `web`
//! alone on user networking, and `web` plus `boot` as two QEMU processes joined by QEMU's socket network backend.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::report::{Benchmark, Figure};
use crate::guestnet;
use super::{
    power_off, ready_capsule, Context, Kernel, Record, HARTS, KEEL_MACHINE_MIB, PROMPT, READY,
};
use crate::console::Console;
use crate::manifest;
use crate::qemu::{self, Boot, Machine, Payload, Qemu};
use crate::shell;

/// The manifest under guests/manifests/ both the Keel run and the native baselines are made from.
const MANIFEST: &str = "bench-net";
/// The capsule that serves the file and the one that fetches it across the switch.
const WEB: &str = "web";
const BOOT: &str = "boot";
/// Size of the served file: large enough that one fetch takes far longer than the guest clock's 10 ms tick.
const BLOB_MIB: u64 = 16;
const BLOB_BYTES: u64 = BLOB_MIB << 20;
/// Where the file lies in `web`'s tmpfs, and the directory busybox httpd serves.
const WWW_DIR: &str = "/tmp/www";
const BLOB_PATH: &str = "/tmp/www/blob";
/// The port busybox httpd listens on inside `web`.
const WEB_PORT: u16 = 8080;
/// Fetches per boot and direction; a run's figure is the median of its fetches.
const FETCHES: usize = 3;
/// The guest's answer lines end with this word, so a line Keel printed only in part (it flushes a capsule's
/// unfinished line when another capsule prints) never passes for the whole answer.
const END: &str = "end";
const SERVE_MARKER: &str = "net-serve";
const FETCH_MARKER: &str = "net-fetch";

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// One fetch of BLOB_MIB MiB; far above the expected seconds, it only catches a stalled transfer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The variants, as run labels and in alternation order. Keel's run measures both directions; each native
/// baseline measures one.
const KEEL: &str = "keel";
const NATIVE_HOST: &str = "native-host";
const NATIVE_PAIR: &str = "native-pair";
/// Run values: the median of a boot's fetches, and each fetch as `<key prefix>_<n>_mb_s`.
const HOST_KEY: &str = "host_mb_s";
const GUEST_KEY: &str = "guest_mb_s";

/// One capsule of the benchmark manifest, enough to boot it natively with the same parameters.
#[derive(Debug, Clone, PartialEq)]
struct NetGuest {
    name: String,
    boot: Boot,
    memory_mib: u64,
    mac: String,
    /// The IPv4 address its rcS gives eth0, from `keel.ip=` on its command line.
    address: Ipv4Addr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum NetManifestError {
    #[error("not a valid manifest: {0}")]
    Syntax(String),
    #[error("no capsule named `{0}`")]
    MissingCapsule(&'static str),
    #[error("capsule `{capsule}`: {field}: {source}")]
    Path {
        capsule: String,
        field: &'static str,
        source: manifest::ExpandError,
    },
    #[error("capsule `{capsule}` has no initrd; the benchmark's guests need the busybox initramfs")]
    NoInitrd { capsule: String },
    #[error("capsule `{capsule}` has no `mac`; the native baseline gives its card the same address")]
    NoMac { capsule: String },
    #[error("capsule `{capsule}`: {source}")]
    Memory {
        capsule: String,
        source: qemu::MemorySizeError,
    },
    #[error("capsule `{capsule}` has no IPv4 `keel.ip=ADDRESS/PREFIX` on its command line `{cmdline}`")]
    NoAddress { capsule: String, cmdline: String },
}

#[derive(Deserialize)]
struct ManifestText {
    #[serde(default)]
    capsule: Vec<CapsuleText>,
}

#[derive(Deserialize)]
struct CapsuleText {
    name: Option<String>,
    kernel: String,
    initrd: Option<String>,
    #[serde(default)]
    cmdline: String,
    memory: String,
    mac: Option<String>,
}

/// The `boot` and `web` capsules of the manifest text, paths expanded and made absolute against `base`.
fn net_guests(
    text: &str,
    base: &Path,
    defines: &[(String, String)],
) -> Result<[NetGuest; 2], NetManifestError> {
    let manifest: ManifestText =
        toml::from_str(text).map_err(|error| NetManifestError::Syntax(error.message().to_string()))?;
    let guest = |wanted: &'static str| -> Result<NetGuest, NetManifestError> {
        let capsule = manifest
            .capsule
            .iter()
            .find(|capsule| capsule.name.as_deref() == Some(wanted))
            .ok_or(NetManifestError::MissingCapsule(wanted))?;
        let name = wanted.to_string();
        let path = |field: &'static str, value: &str| -> Result<PathBuf, NetManifestError> {
            let expanded = manifest::expand(value, defines).map_err(|source| NetManifestError::Path {
                capsule: name.clone(),
                field,
                source,
            })?;
            let expanded = PathBuf::from(expanded);
            Ok(if expanded.is_absolute() { expanded } else { base.join(expanded) })
        };
        let initrd = capsule
            .initrd
            .as_deref()
            .ok_or_else(|| NetManifestError::NoInitrd { capsule: name.clone() })?;
        let boot = Boot {
            kernel: path("kernel", &capsule.kernel)?,
            initrd: Some(path("initrd", initrd)?),
            append: capsule.cmdline.clone(),
        };
        let memory_mib = qemu::parse_memory_mib(&capsule.memory).map_err(|source| NetManifestError::Memory {
            capsule: name.clone(),
            source,
        })?;
        let mac = capsule
            .mac
            .clone()
            .ok_or_else(|| NetManifestError::NoMac { capsule: name.clone() })?;
        let address = cmdline_address(&capsule.cmdline).ok_or_else(|| NetManifestError::NoAddress {
            capsule: name.clone(),
            cmdline: capsule.cmdline.clone(),
        })?;
        Ok(NetGuest { name, boot, memory_mib, mac, address })
    };
    Ok([guest(WEB)?, guest(BOOT)?])
}

/// The address of `keel.ip=ADDRESS/PREFIX` on a kernel command line, as the initramfs's rcS reads it.
fn cmdline_address(cmdline: &str) -> Option<Ipv4Addr> {
    let value = cmdline.split_whitespace().find_map(|word| word.strip_prefix("keel.ip="))?;
    let (address, prefix) = value.split_once('/')?;
    prefix.parse::<u8>().ok().filter(|bits| *bits <= 32)?;
    address.parse().ok()
}

/// How to tell a guest's own console lines: natively the console is the guest's alone; under Keel, with two
/// capsules running, every line carries its capsule's `[name] ` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines<'a> {
    Untagged,
    Tagged(&'a str),
}

impl Lines<'_> {
    /// The text of `line` if it is the guest's own, without any tag.
    fn own(self, line: &str) -> Option<&str> {
        let line = line.trim();
        match self {
            Lines::Untagged => Some(line),
            Lines::Tagged(capsule) => line
                .strip_prefix('[')?
                .strip_prefix(capsule)?
                .strip_prefix("] "),
        }
    }

    /// Whose lines these are, for messages.
    fn name(self) -> String {
        match self {
            Lines::Untagged => "the native guest".to_string(),
            Lines::Tagged(capsule) => format!("capsule {capsule}"),
        }
    }
}

/// The exit status from a guest's `net-serve STATUS end` line.
fn serve_status(text: &str) -> Option<i32> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [SERVE_MARKER, status, END] => status.parse().ok(),
        _ => None,
    }
}

/// What one fetch in a guest reported: wget's exit status and the seconds it took by the guest's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GuestFetch {
    status: i32,
    seconds: f64,
}

/// Reads a guest's `net-fetch STATUS BEFORE AFTER end` line, BEFORE and AFTER being /proc/uptime seconds.
fn guest_fetch(text: &str) -> Option<GuestFetch> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [FETCH_MARKER, status, before, after, END] = words.as_slice() else {
        return None;
    };
    let before: f64 = before.parse().ok()?;
    let after: f64 = after.parse().ok()?;
    (before.is_finite() && after >= before).then_some(GuestFetch {
        status: status.parse().ok()?,
        seconds: after - before,
    })
}

/// Megabytes (10^6 bytes) per second; a time the guest clock cannot tell from zero counts as its 10 ms tick.
fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(0.01)
}

/// The run values for `rates` under `key`: their median, and each fetch numbered from 1.
fn rate_values(key: &str, rates: &[f64]) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::new();
    if let Some(median) = super::stats::median(rates) {
        values.insert(key.to_string(), median);
    }
    let prefix = key.strip_suffix("_mb_s").unwrap_or(key);
    for (index, rate) in rates.iter().enumerate() {
        values.insert(format!("{prefix}_{}_mb_s", index + 1), *rate);
    }
    values
}

/// A virtio-net card on QEMU's socket backend: `listen` or `connect` at 127.0.0.1:`port`. Two machines, one
/// listening and one connecting, share an Ethernet segment.
fn socket_net_args(mode: &str, port: u16, mac: &str) -> Vec<OsString> {
    [
        "-netdev".into(),
        format!("socket,id=keel-net,{mode}=127.0.0.1:{port}").into(),
        "-device".into(),
        format!("virtio-net-device,netdev=keel-net,mac={mac}").into(),
    ]
    .to_vec()
}

/// Each native guest is a 1-hart machine with its capsule's memory.
fn native_machine(guest: &NetGuest) -> Machine {
    Machine { smp: 1, memory_mib: guest.memory_mib, cpu: None }
}

fn keel_machine() -> Machine {
    Machine { smp: HARTS, memory_mib: KEEL_MACHINE_MIB, cpu: None }
}

/// Everything the runs need, prepared once.
struct Setup {
    hypervisor: PathBuf,
    web: NetGuest,
    boot: NetGuest,
}

impl Setup {
    /// The machine's NIC on QEMU user networking with 127.0.0.1:`port` forwarded to web's HTTP server.
    fn forward_args(&self, port: u16) -> Vec<OsString> {
        qemu::net_args(&[qemu::Forward { host_port: port, guest_address: self.web.address, guest_port: WEB_PORT }])
    }

    fn keel_command(&self, qemu: &Qemu, port: u16) -> Command {
        let mut command = qemu.command(&keel_machine(), &Payload::Hypervisor(self.hypervisor.clone()));
        command.args(self.forward_args(port));
        command
    }

    fn native_host_command(&self, qemu: &Qemu, port: u16) -> Command {
        let mut command = qemu.command(&native_machine(&self.web), &Payload::Native(self.web.boot.clone()));
        command.args(self.forward_args(port));
        command
    }

    /// The two machines of the native pair: `web` listens on `port`, `boot` connects to it.
    fn native_pair_commands(&self, qemu: &Qemu, port: u16) -> [Command; 2] {
        [(&self.web, "listen"), (&self.boot, "connect")].map(|(guest, mode)| {
            let mut command = qemu.command(&native_machine(guest), &Payload::Native(guest.boot.clone()));
            command.args(socket_net_args(mode, port, &guest.mac));
            command
        })
    }

    /// The command `boot` types to fetch the file from `web` once, timed by its own clock.
    fn fetch_command(&self) -> String {
        format!(
            "a=$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://{}:{WEB_PORT}/blob; s=$?; \
             b=$(cut -d' ' -f1 /proc/uptime); echo {FETCH_MARKER} $s $a $b {END}",
            self.web.address
        )
    }
}

/// The command `web` types to make the file and serve it.
fn serve_command() -> String {
    format!(
        "mkdir -p {WWW_DIR} && dd if=/dev/urandom of={BLOB_PATH} bs=1M count={BLOB_MIB} 2>/dev/null && \
         sha256sum {BLOB_PATH} && httpd -p {WEB_PORT} -h {WWW_DIR}; echo {SERVE_MARKER} $? {END}"
    )
}

/// Types `command` into the focused guest and collects its own lines until one that `done` accepts, within
/// `timeout`. Returns the lines before it and what `done` made of it.
fn run_until<T>(
    console: &mut Console,
    lines: Lines,
    command: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&str) -> Option<T>,
) -> Result<(Vec<String>, T)> {
    let deadline = Instant::now() + timeout;
    console.send_line(command)?;
    let mut collected = Vec::new();
    loop {
        let line = console.expect_line(what, deadline.saturating_duration_since(Instant::now()), |line| {
            lines.own(line).is_some()
        })?;
        let text = lines.own(&line).unwrap_or_default();
        if let Some(value) = done(text) {
            return Ok((collected, value));
        }
        collected.push(text.to_string());
    }
}

/// Makes the file in the focused guest and starts busybox httpd on it; returns the file's SHA-256 (hex).
fn serve(console: &mut Console, lines: Lines) -> Result<String> {
    let what = format!("`{SERVE_MARKER} STATUS {END}` from {}", lines.name());
    let (output, status) = run_until(console, lines, &serve_command(), &what, COMMAND_TIMEOUT, serve_status)
        .context("web makes the file and starts httpd")?;
    if status != 0 {
        bail!("making {BLOB_PATH} and starting httpd in web ended with exit status {status}: {output:?}");
    }
    output
        .iter()
        .find_map(|text| guestnet::sha256sum_for(text, BLOB_PATH))
        .with_context(|| format!("web printed no sha256sum line for {BLOB_PATH}: {output:?}"))
}

/// Fetches the file FETCHES times from the focused guest's own console and returns MB/s by the guest's clock.
fn guest_fetches(console: &mut Console, lines: Lines, command: &str) -> Result<Vec<f64>> {
    let what = format!("`{FETCH_MARKER} STATUS BEFORE AFTER {END}` from {}", lines.name());
    let mut rates = Vec::new();
    for number in 1..=FETCHES {
        let (output, fetch) = run_until(console, lines, command, &what, FETCH_TIMEOUT, guest_fetch)
            .with_context(|| format!("boot fetches the file from web (fetch {number} of {FETCHES})"))?;
        if fetch.status != 0 {
            bail!(
                "wget in boot ended with exit status {} on fetch {number} of {FETCHES}: {output:?}",
                fetch.status
            );
        }
        rates.push(mb_per_s(BLOB_BYTES, fetch.seconds));
    }
    Ok(rates)
}

/// Fetches the file FETCHES times through QEMU's port forward at 127.0.0.1:`port`, each timed from connect to
/// the last byte and checked against `checksum`; returns MB/s.
fn host_fetches(port: u16, host: Ipv4Addr, checksum: &str) -> Result<Vec<f64>> {
    let mut rates = Vec::new();
    for number in 1..=FETCHES {
        let (body_len, sum, seconds) = http_fetch(port, host)
            .with_context(|| format!("this machine fetches the file (fetch {number} of {FETCHES})"))?;
        if body_len != BLOB_BYTES || sum != checksum {
            bail!(
                "fetch {number} of {FETCHES} through 127.0.0.1:{port} gave {body_len} bytes with SHA-256 {sum}; \
                 web's file has {BLOB_BYTES} bytes and SHA-256 {checksum}"
            );
        }
        rates.push(mb_per_s(BLOB_BYTES, seconds));
    }
    Ok(rates)
}

/// One HTTP/1.0 GET of the file: (body length, its SHA-256 in hex, seconds from connect to the last byte).
fn http_fetch(port: u16, host: Ipv4Addr) -> Result<(u64, String, f64)> {
    let path = BLOB_PATH.strip_prefix(WWW_DIR).unwrap_or(BLOB_PATH);
    let started = Instant::now();
    let body = guestnet::http_get(port, path, host, FETCH_TIMEOUT)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((body.len() as u64, format!("{:x}", Sha256::digest(&body)), seconds))
}

/// Boots a native guest to its shell prompt.
fn native_ready(console: &mut Console) -> Result<()> {
    let timeout = Kernel::Small.boot_timeout(false);
    console.expect(READY, timeout).context("boot to the init-ready line")?;
    console.expect(PROMPT, COMMAND_TIMEOUT).context("the first shell prompt")?;
    Ok(())
}

/// Spawns `command`, holds `talk` with its console and keeps its transcript in `log`; a failure carries the last
/// console lines under `name`.
fn with_console<T>(
    command: Command,
    log: &Path,
    name: &str,
    talk: impl FnOnce(&mut Console) -> Result<T>,
) -> Result<T> {
    let mut console = Console::spawn(command)?;
    let result = talk(&mut console);
    let _ = std::fs::write(log, console.transcript());
    result.map_err(|error| error.context(format!("last lines of {name}'s console:\n{}", console.tail(15))))
}

/// The second console log of a two-machine run: `io-net-native-pair-1.log` -> `io-net-native-pair-1-web.log`.
fn companion_log(log: &Path, name: &str) -> PathBuf {
    let stem = log.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    log.with_file_name(format!("{stem}-{name}.log"))
}

/// One Keel boot: `web` serves the file, this machine fetches it, `boot` fetches it, `boot` powers off.
fn keel_session(qemu: &Qemu, setup: &Setup, log: &Path) -> Result<Record> {
    let port = guestnet::free_loopback_port()?;
    with_console(setup.keel_command(qemu, port), log, "Keel's machine", |console| {
        let timeout = Kernel::Small.boot_timeout(true);
        let started = Instant::now();
        let mut waiting = std::collections::BTreeSet::from([WEB.to_string(), BOOT.to_string()]);
        while !waiting.is_empty() {
            let what = format!("`{READY}` from {}", waiting.iter().cloned().collect::<Vec<_>>().join(", "));
            let line = console
                .expect_line(&what, timeout.saturating_sub(started.elapsed()), |line| {
                    ready_capsule(line).is_some_and(|name| waiting.contains(&name))
                })
                .context("both capsules boot to their init-ready lines")?;
            if let Some(name) = ready_capsule(&line) {
                waiting.remove(&name);
            }
        }
        // Let the shells print their prompts before typing.
        std::thread::sleep(Duration::from_secs(1));
        // `boot` has the focus first; Ctrl-] n moves it to the next capsule, `web`.
        guestnet::move_focus(console, b"\x1dn", WEB, COMMAND_TIMEOUT)?;
        let checksum = serve(console, Lines::Tagged(WEB))?;
        let host = host_fetches(port, setup.web.address, &checksum)?;
        guestnet::move_focus(console, b"\x1d1", BOOT, COMMAND_TIMEOUT)?;
        let guest = guest_fetches(console, Lines::Tagged(BOOT), &setup.fetch_command())?;
        console.expect(PROMPT, COMMAND_TIMEOUT).context("boot's prompt after the fetches")?;
        power_off(console)?;
        let mut values = rate_values(HOST_KEY, &host);
        values.extend(rate_values(GUEST_KEY, &guest));
        Ok((values, None))
    })
}

/// The native baseline to this machine: `web` alone on QEMU user networking with the same port forward.
fn native_host_session(qemu: &Qemu, setup: &Setup, log: &Path) -> Result<Record> {
    let port = guestnet::free_loopback_port()?;
    with_console(setup.native_host_command(qemu, port), log, "web", |console| {
        native_ready(console)?;
        let checksum = serve(console, Lines::Untagged)?;
        let host = host_fetches(port, setup.web.address, &checksum)?;
        console.expect(PROMPT, COMMAND_TIMEOUT).context("web's prompt after the fetches")?;
        power_off(console)?;
        Ok((rate_values(HOST_KEY, &host), None))
    })
}

/// The native baseline between guests: `web` and `boot` as two QEMU machines on one socket-backed segment.
fn native_pair_session(qemu: &Qemu, setup: &Setup, log: &Path) -> Result<Record> {
    let port = guestnet::free_loopback_port()?;
    let [web_command, boot_command] = setup.native_pair_commands(qemu, port);
    let web_log = companion_log(log, WEB);
    let guest = with_console(web_command, &web_log, WEB, |web| {
        // QEMU opens its listening socket before the guest runs, so once web prints its ready line, boot's
        // QEMU can connect; a connect to a port nobody listens on would end boot's QEMU at once.
        native_ready(web).context("web boots")?;
        let guest = with_console(boot_command, log, BOOT, |boot| {
            native_ready(boot).context("boot boots")?;
            serve(web, Lines::Untagged)?;
            let guest = guest_fetches(boot, Lines::Untagged, &setup.fetch_command())?;
            boot.expect(PROMPT, COMMAND_TIMEOUT).context("boot's prompt after the fetches")?;
            power_off(boot).context("boot powers off")?;
            Ok(guest)
        })?;
        web.expect(PROMPT, COMMAND_TIMEOUT).context("web's prompt after serving")?;
        power_off(web).context("web powers off")?;
        Ok(guest)
    })?;
    Ok((rate_values(GUEST_KEY, &guest), None))
}

impl Context<'_> {
    fn net_setup(&mut self) -> Result<Setup> {
        let hypervisor = self.hypervisor(MANIFEST)?;
        let defines = self.images()?.defines();
        let path = self.manifest_path(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let [web, boot] =
            net_guests(&text, base, &defines).with_context(|| format!("in manifest {}", path.display()))?;
        Ok(Setup { hypervisor, web, boot })
    }

    /// virtio-net throughput in MB/s to this machine and between two guests, Keel against native QEMU machines in
    /// alternating runs.
    pub(super) fn net_benchmark(&mut self, name: &str, reps: u32) -> Benchmark {
        let mut benchmark = Benchmark::new(name, "virtio-net throughput to this machine and between two guests");
        let setup = match self.net_setup() {
            Ok(setup) => setup,
            Err(error) => {
                benchmark.errors.push(format!("{error:#}"));
                return benchmark;
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        benchmark.notes.push(format!(
            "`web` makes {BLOB_MIB} MiB of random bytes in its tmpfs ({BLOB_PATH}) and serves them with busybox httpd; each boot fetches the file {FETCHES} times per direction and the run's figure is the median of its {FETCHES} fetches (each fetch is in the JSON too). MB = 10^6 bytes"
        ));
        benchmark.notes.push(format!(
            "to this machine: xtask fetches the file over HTTP/1.0 through QEMU's user-network port forward (hostfwd), timed from connect() to the last byte, length and SHA-256 checked against the guest's sha256sum. Under Keel the frames go QEMU user network -> the machine's virtio-net card -> Keel's uplink and switch -> web's card; natively web is a QEMU machine of its own on user networking ({}/24, same port forward)",
            setup.web.address
        ));
        benchmark.notes.push(format!(
            "capsule to capsule: boot runs `wget -q -O /dev/null http://{}:{WEB_PORT}/blob`, timed with the guest's /proc/uptime (10 ms resolution). Under Keel the frames cross Keel's switch inside one QEMU; natively boot and web are two QEMU processes joined by QEMU's socket network backend (TCP on 127.0.0.1), so every frame also crosses a host socket",
            setup.web.address
        ));
        benchmark.notes.push(format!(
            "CPUs and memory: under Keel the machine has {HARTS} harts and {KEEL_MACHINE_MIB} MiB, and each capsule 1 vCPU and {} MiB (manifest {MANIFEST}.toml); natively each guest is a 1-hart machine with its capsule's memory. The capsule-to-capsule baseline thus also emulates 2 harts in all (two 1-hart QEMUs), on this host's {cores} core(s); the to-this-machine baseline is one 1-hart QEMU, while Keel's machine also runs the idle boot capsule on its second hart",
            setup.web.memory_mib
        ));
        let example_port = guestnet::free_loopback_port().unwrap_or(8080);
        benchmark
            .commands
            .insert(KEEL.to_string(), shell::describe(&setup.keel_command(&self.qemu, example_port)));
        benchmark.commands.insert(
            NATIVE_HOST.to_string(),
            shell::describe(&setup.native_host_command(&self.qemu, example_port)),
        );
        let [web_command, boot_command] = setup.native_pair_commands(&self.qemu, example_port);
        benchmark.commands.insert(format!("{NATIVE_PAIR} (web)"), shell::describe(&web_command));
        benchmark.commands.insert(format!("{NATIVE_PAIR} (boot)"), shell::describe(&boot_command));
        benchmark.notes.push(
            "the TCP ports in the commands are examples: every run takes a free port on 127.0.0.1".to_string(),
        );

        let labels = [KEEL, NATIVE_HOST, NATIVE_PAIR].map(str::to_string);
        let qemu = self.qemu.clone();
        self.alternate(&mut benchmark, &labels, reps, |index, log| match index {
            0 => keel_session(&qemu, &setup, log),
            1 => native_host_session(&qemu, &setup, log),
            _ => native_pair_session(&qemu, &setup, log),
        });
        for (label, key, native) in [
            ("to this machine (HTTP via hostfwd)", HOST_KEY, NATIVE_HOST),
            ("capsule to capsule (wget)", GUEST_KEY, NATIVE_PAIR),
        ] {
            let keel = benchmark.samples(KEEL, key);
            let native = benchmark.samples(native, key);
            benchmark.figures.push(Figure::compared(label, "MB/s", &keel, &native));
        }
        benchmark
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    fn defines() -> Vec<(String, String)> {
        vec![("images".to_string(), "/cache/images".to_string())]
    }

    const TWO_CAPSULES: &str = r#"
        [[capsule]]
        name = "boot"
        kernel = "${images}/small/Image"
        initrd = "rel/initramfs.cpio"
        cmdline = "console=ttyS0 keel.ip=10.0.2.15/24"
        memory = "192M"
        boot = true
        mac = "02:00:00:00:00:01"

        [[capsule]]
        name = "web"
        kernel = "${images}/small/Image"
        initrd = "${images}/initramfs.cpio"
        cmdline = "console=ttyS0 keel.ip=10.0.2.16/24 keel.gateway=10.0.2.2"
        memory = "1G"
        autostart = true
        mac = "02:00:00:00:00:02"
    "#;

    fn guests() -> [NetGuest; 2] {
        net_guests(TWO_CAPSULES, Path::new("/repo/guests/manifests"), &defines()).unwrap()
    }

    #[test]
    fn addresses_come_from_keel_ip_on_the_command_line() {
        assert_eq!(cmdline_address("console=ttyS0 keel.ip=10.0.2.16/24"), Some(Ipv4Addr::new(10, 0, 2, 16)));
        assert_eq!(cmdline_address("keel.ip=192.168.1.2/32 quiet"), Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(cmdline_address("console=ttyS0"), None);
        // rcS hands the value to `ip addr add`, which needs the prefix.
        assert_eq!(cmdline_address("keel.ip=10.0.2.16"), None);
        assert_eq!(cmdline_address("keel.ip=10.0.2.16/33"), None);
        assert_eq!(cmdline_address("keel.ip=10.0.2/24"), None);
        assert_eq!(cmdline_address("xkeel.ip=10.0.2.16/24"), None);
    }

    #[test]
    fn both_guests_are_read_with_paths_resolved() {
        let [web, boot] = guests();
        assert_eq!(web.name, "web");
        assert_eq!(web.address, Ipv4Addr::new(10, 0, 2, 16));
        assert_eq!(web.memory_mib, 1024);
        assert_eq!(web.mac, "02:00:00:00:00:02");
        assert_eq!(web.boot.kernel, PathBuf::from("/cache/images/small/Image"));
        assert_eq!(web.boot.initrd, Some(PathBuf::from("/cache/images/initramfs.cpio")));
        assert_eq!(web.boot.append, "console=ttyS0 keel.ip=10.0.2.16/24 keel.gateway=10.0.2.2");
        assert_eq!(boot.name, "boot");
        assert_eq!(boot.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(boot.memory_mib, 192);
        assert_eq!(boot.boot.initrd, Some(PathBuf::from("/repo/guests/manifests/rel/initramfs.cpio")));
    }

    #[test]
    fn manifests_the_benchmark_cannot_use_are_refused_by_name() {
        let base = Path::new("/");
        let refuse = |text: &str| net_guests(text, base, &defines()).unwrap_err();
        assert!(matches!(refuse("not toml ["), NetManifestError::Syntax(_)));
        let only_boot = TWO_CAPSULES.replace("name = \"web\"", "name = \"other\"");
        assert_eq!(refuse(&only_boot), NetManifestError::MissingCapsule("web"));
        let no_mac = TWO_CAPSULES.replace("mac = \"02:00:00:00:00:01\"", "");
        assert_eq!(refuse(&no_mac), NetManifestError::NoMac { capsule: "boot".into() });
        let no_address = TWO_CAPSULES.replace(" keel.ip=10.0.2.16/24", "");
        let error = refuse(&no_address);
        assert!(matches!(error, NetManifestError::NoAddress { ref capsule, .. } if capsule == "web"), "{error}");
        assert!(error.to_string().contains("keel.ip=ADDRESS/PREFIX"), "{error}");
        let bad_memory = TWO_CAPSULES.replace("\"1G\"", "\"lots\"");
        assert!(matches!(refuse(&bad_memory), NetManifestError::Memory { ref capsule, .. } if capsule == "web"));
        let undefined = TWO_CAPSULES.replace("rel/initramfs.cpio", "${cache}/initramfs.cpio");
        let error = refuse(&undefined);
        assert_eq!(error.to_string(), "capsule `boot`: initrd: `${cache}` is not defined (defined: images)");
        let no_initrd = TWO_CAPSULES.replace("initrd = \"rel/initramfs.cpio\"", "");
        assert_eq!(refuse(&no_initrd), NetManifestError::NoInitrd { capsule: "boot".into() });
    }

    #[test]
    fn the_repository_manifest_is_usable() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/manifests/bench-net.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let [web, boot] = net_guests(&text, path.parent().unwrap(), &defines()).unwrap();
        assert_ne!(web.address, boot.address);
        assert_ne!(web.mac, boot.mac);
        // The guests share one /24 on QEMU's user network, whose gateway is 10.0.2.2.
        assert_eq!(web.address.octets()[..3], boot.address.octets()[..3]);
        assert!(web.memory_mib >= 4 * BLOB_MIB, "web's tmpfs holds the file with room to spare");
    }

    #[test]
    fn lines_are_told_apart_by_their_tag() {
        let tagged = Lines::Tagged("web");
        assert_eq!(tagged.own("[web] net-serve 0 end\r"), Some("net-serve 0 end"));
        assert_eq!(tagged.own("[boot] net-serve 0 end"), None);
        assert_eq!(tagged.own("[webby] net-serve 0 end"), None);
        assert_eq!(tagged.own("net-serve 0 end"), None);
        assert_eq!(Lines::Untagged.own("  net-serve 0 end "), Some("net-serve 0 end"));
        assert_eq!(tagged.name(), "capsule web");
    }

    #[test]
    fn answer_lines_are_read_only_when_complete() {
        assert_eq!(serve_status("net-serve 0 end"), Some(0));
        assert_eq!(serve_status("net-serve 127 end"), Some(127));
        // The echoed command, a line Keel printed only in part, and other text are not answers.
        assert_eq!(serve_status("net-serve $? end"), None);
        assert_eq!(serve_status("net-serve 0"), None);
        assert_eq!(serve_status("keel-guest# echo net-serve 0 end"), None);

        assert_eq!(guest_fetch("net-fetch 0 36.14 36.94 end").map(|fetch| fetch.status), Some(0));
        let fetch = guest_fetch("net-fetch 1 10.00 12.50 end").unwrap();
        assert_eq!(fetch, GuestFetch { status: 1, seconds: 2.5 });
        assert_eq!(guest_fetch("net-fetch $s $a $b end"), None);
        assert_eq!(guest_fetch("net-fetch 0 36.14 36.9"), None);
        assert_eq!(guest_fetch("net-fetch 0 36.14 end"), None);
        assert_eq!(guest_fetch("net-fetch 0 36.94 36.14 end"), None, "the clock does not run backwards");
        assert_eq!(guest_fetch("net-fetch 0 NaN 36.14 end"), None);
    }

    #[test]
    fn rates_are_megabytes_per_second_with_each_fetch_kept() {
        assert!((mb_per_s(BLOB_BYTES, 1.0) - 16.777216).abs() < 1e-9);
        // A fetch within one tick of the guest clock counts as one tick rather than dividing by zero.
        assert_eq!(mb_per_s(1_000_000, 0.0), 100.0);
        let values = rate_values(GUEST_KEY, &[20.0, 30.0, 10.0]);
        assert_eq!(values[GUEST_KEY], 20.0);
        assert_eq!(values["guest_1_mb_s"], 20.0);
        assert_eq!(values["guest_3_mb_s"], 10.0);
        assert_eq!(values.len(), 4);
        assert!(rate_values(HOST_KEY, &[]).is_empty());
    }

    #[test]
    fn native_machines_have_one_hart_and_share_a_socket_segment() {
        let [web, boot] = guests();
        let setup = Setup { hypervisor: "/t/keel-bench-net.elf".into(), web, boot };
        let qemu = Qemu::at(Path::new("qemu-system-riscv64"));
        let words = |command: &Command| -> Vec<String> {
            command.get_args().map(|arg| arg.to_string_lossy().into_owned()).collect()
        };
        let after = |words: &[String], flag: &str| -> String {
            let at = words.iter().position(|word| word == flag).unwrap();
            words[at + 1].clone()
        };
        let [listen, connect] = setup.native_pair_commands(&qemu, 40123).map(|command| words(&command));
        assert_eq!(after(&listen, "-smp"), "1");
        assert_eq!(after(&listen, "-m"), "1024M");
        assert_eq!(after(&listen, "-netdev"), "socket,id=keel-net,listen=127.0.0.1:40123");
        assert_eq!(after(&listen, "-append"), "console=ttyS0 keel.ip=10.0.2.16/24 keel.gateway=10.0.2.2");
        assert_eq!(after(&connect, "-smp"), "1");
        assert_eq!(after(&connect, "-m"), "192M");
        assert_eq!(after(&connect, "-netdev"), "socket,id=keel-net,connect=127.0.0.1:40123");
        assert!(connect.contains(&"virtio-net-device,netdev=keel-net,mac=02:00:00:00:00:01".to_string()));

        let host = words(&setup.native_host_command(&qemu, 5555));
        assert_eq!(after(&host, "-smp"), "1");
        assert_eq!(after(&host, "-netdev"), "user,id=keel-net,hostfwd=tcp:127.0.0.1:5555-10.0.2.16:8080");
        let keel = words(&setup.keel_command(&qemu, 5555));
        assert_eq!(after(&keel, "-smp"), HARTS.to_string());
        assert_eq!(after(&keel, "-kernel"), "/t/keel-bench-net.elf");
        assert_eq!(after(&keel, "-netdev"), "user,id=keel-net,hostfwd=tcp:127.0.0.1:5555-10.0.2.16:8080");
        assert!(setup.fetch_command().contains("wget -q -O /dev/null http://10.0.2.16:8080/blob"));
        assert!(serve_command().contains(&format!("count={BLOB_MIB} ")));
    }

    #[test]
    fn the_second_log_sits_beside_the_first() {
        assert_eq!(
            companion_log(Path::new("/l/io-net-native-pair-1.log"), "web"),
            PathBuf::from("/l/io-net-native-pair-1-web.log")
        );
    }

    /// A fake guest shell answering like busybox under Keel (every line tagged `[web] `, Keel's own lines in
    /// between): the conversation finds the checksum and each fetch's time, and a failed wget is named.
    #[test]
    fn serving_and_fetching_read_the_guest_answers() {
        let sum = "0123456789abcdef".repeat(4);
        let script = format!(
            r#"
            n=0
            while printf '[web] keel-guest# \n' && read -r line; do
              case "$line" in
                *httpd*) echo '[keel h0] INFO  something else'; echo '[web] {sum}  /tmp/www/blob';
                         echo '[web] net-se'; echo '[web] net-serve 0 end' ;;
                *wget*) n=$((n+1)); if [ $n -le 3 ]; then echo "[web] net-fetch 0 1.00 1.$((n+1))0 end";
                        else echo '[web] net-fetch 4 2.00 2.01 end'; fi ;;
              esac
            done
            "#
        );
        let mut command = Command::new("sh");
        command.args(["-c", &script]);
        let mut console = Console::spawn(command).unwrap();
        let lines = Lines::Tagged("web");
        assert_eq!(serve(&mut console, lines).unwrap(), sum);
        let rates = guest_fetches(&mut console, lines, "wget").unwrap();
        let expected: Vec<f64> = [0.2, 0.3, 0.4].iter().map(|seconds| mb_per_s(BLOB_BYTES, *seconds)).collect();
        assert_eq!(rates.len(), FETCHES);
        for (rate, expected) in rates.iter().zip(&expected) {
            assert!((rate - expected).abs() < 1e-6, "{rates:?} vs {expected:?}");
        }
        let error = format!("{:#}", guest_fetches(&mut console, lines, "wget").unwrap_err());
        assert!(error.contains("exit status 4 on fetch 1 of 3"), "{error}");
    }

    #[test]
    fn a_failed_serve_is_reported_with_its_status() {
        let mut command = Command::new("sh");
        command.args(["-c", "read -r line; echo 'httpd: bind: Address in use'; echo 'net-serve 1 end'; sleep 5"]);
        let mut console = Console::spawn(command).unwrap();
        let error = format!("{:#}", serve(&mut console, Lines::Untagged).unwrap_err());
        assert!(error.contains("exit status 1") && error.contains("Address in use"), "{error}");
    }

    /// A local HTTP server stands in for QEMU's port forward: the body is checked against the checksum, and a
    /// wrong one fails naming both.
    #[test]
    fn host_fetches_check_length_and_checksum() {
        let body: Vec<u8> = (0..BLOB_BYTES).map(|index| (index * 7 % 251) as u8).collect();
        let checksum = format!("{:x}", Sha256::digest(&body));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for (number, stream) in listener.incoming().take(FETCHES + 1).enumerate() {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 256];
                while !request.ends_with(b"\r\n\r\n") {
                    let read = stream.read(&mut buffer).unwrap();
                    assert!(read > 0, "the request ended early: {request:?}");
                    request.extend_from_slice(&buffer[..read]);
                }
                assert_eq!(request, b"GET /blob HTTP/1.0\r\nHost: 10.0.2.16\r\n\r\n");
                let length = if number < FETCHES { body.len() } else { body.len() - 1 };
                write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {length}\r\n\r\n").unwrap();
                stream.write_all(&body[..length]).unwrap();
            }
        });
        let rates = host_fetches(port, Ipv4Addr::new(10, 0, 2, 16), &checksum).unwrap();
        assert_eq!(rates.len(), FETCHES);
        assert!(rates.iter().all(|rate| *rate > 0.0 && rate.is_finite()), "{rates:?}");
        let error = format!("{:#}", host_fetches(port, Ipv4Addr::new(10, 0, 2, 16), &checksum).unwrap_err());
        assert!(error.contains(&format!("gave {} bytes", BLOB_BYTES - 1)) && error.contains(&checksum), "{error}");
        server.join().unwrap();
    }
}
