//! The network scenario: two capsules on Keel's switch (guests/manifests/net.toml) and the machine's NIC as its
//! uplink, on QEMU user networking with a port forward to the `web` capsule's HTTP server. Pings both ways, a
//! spoofing attempt, a 10 MiB copy between the capsules and to this machine, a DHCP lease through the uplink, and
//! a stop and start of `web`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

use super::{run_in, wait_all_ready, Timeouts};
use crate::console::Console;
use crate::guestnet;

/// The capsules' addresses, as net.toml gives them.
pub const BOOT_ADDRESS: &str = "10.0.2.15";
pub const WEB_ADDRESS: &str = "10.0.2.16";
/// The boot capsule's MAC, which `web` tries to send from.
const BOOT_MAC: &str = "02:00:00:00:00:01";
const WEB_MAC: &str = "02:00:00:00:00:02";
/// Where `web`'s HTTP server listens.
pub const WEB_PORT: u16 = 8080;
/// Size of the file copied between the capsules and to this machine.
const BLOB_MIB: u64 = 10;

/// QEMU's forward from 127.0.0.1:`host_port` to web's HTTP server.
pub fn web_forward(host_port: u16) -> crate::qemu::Forward {
    crate::qemu::Forward { host_port, guest_address: WEB_ADDRESS.parse().expect("a valid address"), guest_port: WEB_PORT }
}

/// Runs `command` in `capsule` and insists on exit status 0.
fn succeed(console: &mut Console, capsule: &str, command: &str, timeout: Duration) -> Result<Vec<String>> {
    let lines = run_in(console, capsule, command, timeout)?;
    if lines.last().map(String::as_str) != Some("exit status 0") {
        bail!("`{command}` in {capsule} failed: {lines:?}");
    }
    Ok(lines)
}

/// `ping` from `capsule` to `address`: all three echo requests are answered.
fn ping(console: &mut Console, capsule: &str, address: &str, timeouts: &Timeouts) -> Result<()> {
    let lines = succeed(console, capsule, &format!("ping -c 3 -W 5 {address}"), timeouts.command)?;
    if !lines.iter().any(|line| line.contains("3 packets received")) {
        bail!("{capsule} pinging {address}: not all three echo requests were answered: {lines:?}");
    }
    Ok(())
}

/// The checksum `sha256sum` printed for `path` among `lines`.
fn checksum_line(lines: &[String], path: &str) -> Result<String> {
    lines
        .iter()
        .find_map(|line| guestnet::sha256sum_for(line, path))
        .with_context(|| format!("no sha256sum line for {path} in {lines:?}"))
}

/// GETs `path` from web through the port forward at 127.0.0.1:`port`.
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<Vec<u8>> {
    guestnet::http_get(port, path, WEB_ADDRESS.parse()?, timeout)
}

/// The conversation of the network scenario. `host_port` is the forward to `web`'s HTTP server.
pub fn drive_network(console: &mut Console, host_port: u16, timeouts: &Timeouts) -> Result<String> {
    wait_all_ready(console, ["boot", "web"].into_iter(), timeouts.boot)?;
    // Let the shells print their prompts before typing.
    std::thread::sleep(Duration::from_secs(1));

    // The boot capsule has the focus first.
    ping(console, "boot", WEB_ADDRESS, timeouts).context("boot pings web across Keel's switch")?;

    guestnet::move_focus(console, b"\x1dn", "web", timeouts.command)?;
    ping(console, "web", BOOT_ADDRESS, timeouts).context("web pings boot across Keel's switch")?;

    // Anti-spoofing: with the boot capsule's MAC as its source, web's frames are dropped by the switch, so it
    // cannot reach boot (nor take boot's traffic); with its own MAC back, it can again.
    let spoofed = run_in(
        console,
        "web",
        &format!("ip link set eth0 address {BOOT_MAC} && ping -c 2 -W 2 {BOOT_ADDRESS}"),
        timeouts.command,
    )?;
    if spoofed.last().map(String::as_str) == Some("exit status 0") {
        bail!("web reached boot while sending from boot's MAC address: {spoofed:?}");
    }
    succeed(console, "web", &format!("ip link set eth0 address {WEB_MAC}"), timeouts.command)?;
    ping(console, "web", BOOT_ADDRESS, timeouts).context("web pings boot again with its own MAC address")?;

    let served = succeed(
        console,
        "web",
        &format!(
            "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1M count={BLOB_MIB} 2>/dev/null && \
             sha256sum /tmp/www/blob && echo hello from web > /tmp/www/index.html && httpd -p {WEB_PORT} -h /tmp/www"
        ),
        timeouts.command,
    )?;
    let blob_sum = checksum_line(&served, "/tmp/www/blob")?;

    // Back to the boot capsule, which copies the file from web over TCP.
    guestnet::move_focus(console, b"\x1d1", "boot", timeouts.command)?;
    let started = Instant::now();
    let fetched = succeed(
        console,
        "boot",
        &format!("wget -q -O /tmp/blob http://{WEB_ADDRESS}:{WEB_PORT}/blob && sha256sum /tmp/blob"),
        timeouts.boot,
    )
    .context("boot copies web's file over HTTP")?;
    let capsule_copy = started.elapsed();
    let copied_sum = checksum_line(&fetched, "/tmp/blob")?;
    if copied_sum != blob_sum {
        bail!("the copy in boot has checksum {copied_sum}, web's file has {blob_sum}");
    }

    // From this machine, through QEMU's port forward, the host NIC and Keel's uplink.
    let index = http_get(host_port, "/index.html", timeouts.command).context("GET /index.html from web")?;
    if String::from_utf8_lossy(&index).trim() != "hello from web" {
        bail!("GET /index.html gave {:?}, expected `hello from web`", String::from_utf8_lossy(&index));
    }
    let started = Instant::now();
    let blob = http_get(host_port, "/blob", timeouts.boot).context("GET /blob from web")?;
    let host_copy = started.elapsed();
    let host_sum = format!("{:x}", Sha256::digest(&blob));
    if blob.len() as u64 != BLOB_MIB << 20 || host_sum != blob_sum {
        bail!(
            "GET /blob gave {} bytes with checksum {host_sum}; web's file has {} bytes and checksum {blob_sum}",
            blob.len(),
            BLOB_MIB << 20
        );
    }

    // DHCP from QEMU user networking, through the switch's uplink: the initramfs's udhcpc script applies the lease.
    let leased = succeed(console, "boot", "udhcpc -i eth0 -n -q -t 5", timeouts.command).context("boot asks for a DHCP lease")?;
    let lease = leased
        .iter()
        .find(|line| line.starts_with("udhcpc: eth0 is 10.0.2."))
        .with_context(|| format!("udhcpc applied no lease in the 10.0.2.0/24 network: {leased:?}"))?
        .clone();

    // A capsule stopped and started again gets its port back (its MAC is free again once it stopped) and is
    // reachable as before, while boot's network carried on.
    succeed(console, "boot", "keel stop web", timeouts.command).context("boot stops web")?;
    let restarted = Instant::now();
    succeed(console, "boot", "keel start web", timeouts.command).context("boot starts web again")?;
    wait_all_ready(console, ["web"].into_iter(), timeouts.boot).context("web boots again")?;
    ping(console, "boot", WEB_ADDRESS, timeouts).context("boot pings web after web was stopped and started")?;
    let back = restarted.elapsed();
    let list = succeed(console, "boot", "keel list", timeouts.command)?;
    if !list.iter().any(|line| line.contains(" web ") && line.contains("running") && line.ends_with(WEB_MAC)) {
        bail!("`keel list` does not show web running with its MAC address {WEB_MAC}: {list:?}");
    }

    console.send_line("poweroff")?;
    let status = console.wait_exit(timeouts.power_off).context("poweroff in the boot capsule ends QEMU")?;
    if !status.success() {
        bail!("QEMU exited with {status} after poweroff, expected exit status 0");
    }
    let rate = |elapsed: Duration| (BLOB_MIB as f64) / elapsed.as_secs_f64().max(1e-6);
    Ok(format!(
        "pings both ways; spoofed MAC dropped; {BLOB_MIB} MiB capsule to capsule in {:.1} s ({:.1} MiB/s) and to \
         this machine in {:.1} s ({:.1} MiB/s), checksums match; DHCP `{}`; web stopped, started and answering \
         again in {:.1} s, listed with its MAC",
        capsule_copy.as_secs_f64(),
        rate(capsule_copy),
        host_copy.as_secs_f64(),
        rate(host_copy),
        lease.trim_start_matches("udhcpc: "),
        back.as_secs_f64()
    ))
}
