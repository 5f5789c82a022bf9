//! The management device: how the boot capsule (or any capsule its manifest entry grants `manage`) lists, starts,
//! stops and restarts capsules and moves the console. docs/management.md describes the interface.
//!
//! It is an emulated MMIO page at [`BASE`] in every capsule; capsules without the right get `STATUS_DENIED` for
//! every command. Commands take a capsule name from the name buffer and leave a text result in the result buffer.

use alloc::{format, string::String, sync::Arc};
use core::fmt::Write;
use core::sync::atomic::Ordering;

use crate::capsule::{Capsule, RunState, CAPSULES, FOCUS};
use crate::{arch::csr, memory, run, PLATFORM};

/// Guest-physical base of the management page.
pub const BASE: u64 = 0x1010_0000;
/// Its size.
pub const SIZE: u64 = 0x1000;

const REG_MAGIC: u64 = 0x00;
const REG_VERSION: u64 = 0x04;
const REG_COMMAND: u64 = 0x08;
const REG_STATUS: u64 = 0x0c;
const REG_RESULT_LENGTH: u64 = 0x10;
const NAME_BUFFER: u64 = 0x100;
const NAME_LENGTH: u64 = 0x100;
const RESULT_BUFFER: u64 = 0x800;
const RESULT_LENGTH: u64 = 0x800;

/// "KEEL", little-endian.
const MAGIC: u32 = 0x4C45_454B;
const VERSION: u32 = 1;

const COMMAND_LIST: u32 = 1;
const COMMAND_START: u32 = 2;
const COMMAND_STOP: u32 = 3;
const COMMAND_RESTART: u32 = 4;
const COMMAND_CONSOLE: u32 = 5;

const STATUS_OK: u32 = 0;
const STATUS_DENIED: u32 = 1;
const STATUS_NO_SUCH_CAPSULE: u32 = 2;
const STATUS_WRONG_STATE: u32 = 3;
const STATUS_FAILED: u32 = 4;
const STATUS_BAD_COMMAND: u32 = 5;

/// One capsule's view of the device: its name buffer and the result of its last command.
pub struct Mailbox {
    name: [u8; NAME_LENGTH as usize],
    result: String,
    status: u32,
}

impl Mailbox {
    pub const fn new() -> Self {
        Mailbox { name: [0; NAME_LENGTH as usize], result: String::new(), status: STATUS_OK }
    }
}

/// A read of `width` bytes at `offset` into the page.
pub fn read(capsule: &Capsule, offset: u64, width: u8) -> Result<u64, ()> {
    let mailbox = capsule.mailbox.lock();
    let value = match (offset, width) {
        (REG_MAGIC, 4) => MAGIC as u64,
        (REG_VERSION, 4) => VERSION as u64,
        (REG_STATUS, 4) => mailbox.status as u64,
        (REG_RESULT_LENGTH, 4) => mailbox.result.len() as u64,
        (offset, width) if (RESULT_BUFFER..RESULT_BUFFER + RESULT_LENGTH).contains(&offset) => {
            let start = (offset - RESULT_BUFFER) as usize;
            let bytes = mailbox.result.as_bytes();
            let mut value = 0u64;
            for i in 0..width as usize {
                value |= (*bytes.get(start + i).unwrap_or(&0) as u64) << (8 * i);
            }
            value
        }
        _ => return Err(()),
    };
    Ok(value)
}

/// A write of `width` bytes at `offset` into the page, from a vCPU of `capsule`.
pub fn write(capsule: &Arc<Capsule>, offset: u64, width: u8, value: u64) -> Result<(), ()> {
    if (NAME_BUFFER..NAME_BUFFER + NAME_LENGTH).contains(&offset) {
        let mut mailbox = capsule.mailbox.lock();
        let start = (offset - NAME_BUFFER) as usize;
        for i in 0..width as usize {
            if let Some(byte) = mailbox.name.get_mut(start + i) {
                *byte = (value >> (8 * i)) as u8;
            }
        }
        return Ok(());
    }
    if (offset, width) != (REG_COMMAND, 4) {
        return Err(());
    }
    let name = {
        let mailbox = capsule.mailbox.lock();
        let end = mailbox.name.iter().position(|&b| b == 0).unwrap_or(mailbox.name.len());
        String::from(core::str::from_utf8(&mailbox.name[..end]).unwrap_or(""))
    };
    let (status, result) = if !capsule.definition.may_manage {
        log::warn!("capsule {} '{}' used the management device without the right to", capsule.id, capsule.name);
        (STATUS_DENIED, String::from("this capsule may not manage capsules (its manifest entry lacks `manage = true`)\n"))
    } else {
        command(capsule, value as u32, &name)
    };
    let mut mailbox = capsule.mailbox.lock();
    mailbox.status = status;
    mailbox.result = result;
    mailbox.result.truncate(RESULT_LENGTH as usize);
    Ok(())
}

fn find(name: &str) -> Option<Arc<Capsule>> {
    CAPSULES.lock().iter().find(|c| c.name == name).cloned()
}

fn command(caller_capsule: &Arc<Capsule>, command: u32, name: &str) -> (u32, String) {
    match command {
        COMMAND_LIST => (STATUS_OK, list()),
        COMMAND_START => {
            if find(name).is_some() {
                return (STATUS_WRONG_STATE, format!("capsule '{name}' is already running\n"));
            }
            match crate::start_capsule_by_name(name) {
                Ok(capsule) => (STATUS_OK, format!("started capsule {} '{}'\n", capsule.id, capsule.name)),
                Err(crate::StartError::NoSuchCapsule) => {
                    (STATUS_NO_SUCH_CAPSULE, format!("no manifest image has a capsule '{name}'\n"))
                }
                Err(crate::StartError::NotInImages(why)) => (
                    STATUS_NO_SUCH_CAPSULE,
                    format!("the bundled manifest image has no capsule '{name}', and {why}\n"),
                ),
                Err(crate::StartError::Failed(why)) => (STATUS_FAILED, format!("capsule '{name}' did not start: {why}\n")),
            }
        }
        COMMAND_STOP | COMMAND_RESTART => {
            let Some(target) = find(name) else {
                return (STATUS_NO_SUCH_CAPSULE, format!("no capsule '{name}' is running\n"));
            };
            if Arc::ptr_eq(&target, caller_capsule) {
                return (STATUS_WRONG_STATE, String::from("a capsule cannot stop or restart itself this way; use poweroff or reboot\n"));
            }
            if command == COMMAND_STOP {
                log::info!("capsule '{}' stops capsule {} '{}'", caller_capsule.name, target.id, target.name);
                run::stop_capsule(&target);
                wait_until_released(target);
                (STATUS_OK, format!("stopped capsule '{name}'\n"))
            } else {
                log::info!("capsule '{}' restarts capsule {} '{}'", caller_capsule.name, target.id, target.name);
                run::reboot_capsule(&target, usize::MAX);
                (STATUS_OK, format!("restarted capsule '{name}'\n"))
            }
        }
        COMMAND_CONSOLE => match find(name) {
            Some(target) => {
                FOCUS.store(target.id, Ordering::Release);
                log::info!("console input now goes to capsule {} '{}'", target.id, target.name);
                target.flush_console();
                (STATUS_OK, format!("console input now goes to '{name}'\n"))
            }
            None => (STATUS_NO_SUCH_CAPSULE, format!("no capsule '{name}' is running\n")),
        },
        _ => (STATUS_BAD_COMMAND, format!("unknown command {command}\n")),
    }
}

/// Waits (briefly) for the harts to drop a stopped capsule, so that its memory is back in the free pool when
/// `stop` returns. Its queued vCPUs were already taken off the queues; a running one leaves at its next exit.
fn wait_until_released(capsule: Arc<Capsule>) {
    let timebase = PLATFORM.get().map_or(10_000_000, |p| p.host.timebase_frequency);
    let deadline = csr::time::read().saturating_add(timebase / 2);
    while Arc::strong_count(&capsule) > 1 && csr::time::read() < deadline {
        core::hint::spin_loop();
    }
    if Arc::strong_count(&capsule) > 1 {
        log::warn!("capsule '{}' is still held by a hart; its memory is freed when that hart lets go", capsule.name);
    }
    // Dropping the last reference scrubs and frees the capsule's RAM and page tables.
    drop(capsule);
}

fn list() -> String {
    let now = csr::time::read();
    let timebase = PLATFORM.get().map_or(10_000_000, |p| p.host.timebase_frequency).max(1);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<4} {:<16} {:<8} {:>5} {:>9} {:>9}  MAC",
        "ID", "NAME", "STATE", "VCPUS", "MEMORY", "UPTIME"
    );
    let mac = |mac: Option<[u8; 6]>| mac.map_or(String::from("-"), |mac| alloc::format!("{}", keel_dmfs::MacAddress(mac)));
    let running: alloc::vec::Vec<Arc<Capsule>> = CAPSULES.lock().iter().cloned().collect();
    for capsule in &running {
        let started = capsule.vcpus.iter().filter(|v| v.state() == RunState::Started).count();
        let uptime = now.saturating_sub(capsule.started_at.load(Ordering::Acquire)) / timebase;
        let _ = writeln!(
            text,
            "{:<4} {:<16} {:<8} {:>5} {:>7}Mi {:>8}s  {}",
            capsule.id,
            capsule.name,
            if started > 0 { "running" } else { "starting" },
            capsule.vcpus.len(),
            capsule.memory.size() >> 20,
            uptime,
            mac(capsule.definition.mac)
        );
    }
    if let Some(image) = crate::bundled_image() {
        for entry in image.capsules().filter(|e| !running.iter().any(|c| c.name == e.name)) {
            let _ = writeln!(
                text,
                "{:<4} {:<16} {:<8} {:>5} {:>7}Mi {:>9}  {}",
                "-",
                entry.name,
                "stopped",
                entry.vcpus,
                entry.memory >> 20,
                "-",
                mac(entry.mac)
            );
        }
    }
    // Capsules of the disk's manifest image, which `start` also finds; "on-disk" until started.
    if let Ok(image) = crate::storage::image() {
        let bundled = |name: &str| crate::bundled_image().is_some_and(|image| image.capsule(name).is_some());
        for entry in image.capsules().filter(|e| !bundled(e.name) && !running.iter().any(|c| c.name == e.name)) {
            let _ = writeln!(
                text,
                "{:<4} {:<16} {:<8} {:>5} {:>7}Mi {:>9}  {}",
                "-",
                entry.name,
                "on-disk",
                entry.vcpus,
                entry.memory >> 20,
                "-",
                mac(entry.mac)
            );
        }
    }
    let _ = writeln!(text, "free memory: {} KiB", memory::free_bytes() >> 10);
    text
}
