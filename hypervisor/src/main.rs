//! Keel: a type-1 hypervisor for 64-bit RISC-V on the H extension.
//!
//! The SBI firmware enters [`keel_boot_main`] in HS-mode on one hart with a0 = hartid, a1 = device tree. Keel
//! reads the device tree, takes the free memory, starts every other hart, creates the capsules the bundled
//! manifest image asks for, and then every hart runs vCPUs (see `run`).

#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod capsule;
mod console;
mod firmware;
mod guest_memory;
mod hart;
mod hostdev;
mod hostnic;
mod hostirq;
mod manage;
mod memory;
mod platform;
mod run;
mod sched;
mod stats;
mod storage;
mod vcpu;
mod vdev;
mod verify;
mod vnet;

use alloc::{format, string::String, sync::Arc, vec::Vec};
use core::sync::atomic::{AtomicU16, Ordering};

use spin::Once;

use crate::arch::csr::{self, bits};
use crate::capsule::{Capsule, Definition, CAPSULES, FOCUS};
use crate::platform::Platform;

/// Page-aligned wrapper for the bundled image.
#[repr(C, align(4096))]
pub struct Aligned<T: ?Sized>(pub T);

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The machine, once the boot hart has examined it.
pub static PLATFORM: Once<Platform> = Once::new();
/// mvendorid, marchid, mimpid as the firmware reports them (passed on to guests).
pub static MACHINE_IDS: Once<(usize, usize, usize)> = Once::new();

/// The least free memory Keel needs for itself and one small capsule.
const MINIMUM_FREE_MEMORY: usize = 48 * 1024 * 1024;

macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Stops the machine after a fatal boot problem, saying what it is.
fn fatal(message: core::fmt::Arguments) -> ! {
    println!("[keel] FATAL: {message}");
    firmware::shutdown_failure();
    loop {
        arch::wait_for_interrupt();
    }
}

/// The boot hart's entry from `_start`.
#[unsafe(no_mangle)]
extern "C" fn keel_boot_main(hartid: usize, dtb: usize) -> ! {
    arch::install_host_trap_vector();
    memory::init_early_heap();
    console::init_logger();

    // The device tree is an allegation until parsed: check its header before trusting its size.
    let mut header = [0u8; 40];
    // SAFETY: the firmware passes the physical address of the device tree in a1; reading its 40-byte header is
    // within the blob whatever its size.
    unsafe { core::ptr::copy_nonoverlapping(dtb as *const u8, header.as_mut_ptr(), header.len()) };
    let Some(size) = keel_devicetree::total_size(&header) else {
        fatal(format_args!("no valid device tree at {dtb:#x}"));
    };
    // SAFETY: the header's magic was right and it says the blob is `size` bytes long.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size) };
    let host = match keel_devicetree::parse_host(blob) {
        Ok(host) => host,
        Err(error) => fatal(format_args!("the device tree could not be read: {error}")),
    };
    if let Some(uart) = &host.uart {
        console::init(uart.base as usize);
    }
    if let Some(test_device) = &host.test_device {
        firmware::set_test_device(test_device.base as usize);
    }
    let (firmware_id, firmware_version) = firmware::implementation();
    println!(
        "[keel] Keel {} on {} — boot hart {hartid}, {} hart(s), {} MiB RAM, SBI firmware id {firmware_id} version {firmware_version:#x}",
        env!("CARGO_PKG_VERSION"),
        host.model.as_deref().unwrap_or("an unnamed machine"),
        host.harts.iter().filter(|h| h.enabled).count(),
        host.memory.iter().map(|r| r.size).sum::<u64>() >> 20,
    );

    let boot = host.harts.iter().find(|h| h.hartid as usize == hartid);
    if !boot.is_some_and(|h| h.isa_extensions.iter().any(|e| e == "h")) {
        fatal(format_args!(
            "hart {hartid} has no H (hypervisor) extension (ISA {}); Keel needs it. On QEMU, use a CPU with h=true.",
            boot.map_or("unknown", |h| h.isa.as_str())
        ));
    }

    memory::init(&host.memory, &host.reserved, (dtb, dtb + size));
    if memory::free_bytes() < MINIMUM_FREE_MEMORY {
        fatal(format_args!(
            "only {} MiB of RAM is free; Keel needs at least {} MiB",
            memory::free_bytes() >> 20,
            MINIMUM_FREE_MEMORY >> 20
        ));
    }

    // Sstc for guests: the hart must list it, and henvcfg.STCE must stick (it cannot when the firmware does not
    // let S-mode use stimecmp). Both are needed: QEMU 7.2 keeps STCE even on a CPU without Sstc.
    let listed = boot.is_some_and(|h| h.isa_extensions.iter().any(|e| e == "sstc"));
    csr::henvcfg::write(bits::HENVCFG_STCE);
    let sstc = listed && csr::henvcfg::read() & bits::HENVCFG_STCE != 0;
    csr::henvcfg::write(0);
    // VMID width: write all ones and see what sticks (mode Bare keeps this harmless).
    csr::hgatp::write(0x3fff << 44);
    let vmid_bits = (csr::hgatp::read() >> 44 & 0x3fff).count_ones();
    csr::hgatp::write(0);
    MACHINE_IDS.call_once(firmware::machine_ids);

    hart::mark_online();
    for (eid, name) in [(firmware::EID_HSM, "HSM"), (firmware::EID_IPI, "IPI"), (firmware::EID_SRST, "SRST")] {
        if !firmware::probe(eid) {
            log::warn!("the SBI firmware lacks the {name} extension; Keel may not use every hart or power off cleanly");
        }
    }
    let enabled: Vec<usize> = host.harts.iter().filter(|h| h.enabled).map(|h| h.hartid as usize).collect();
    // The other harts start while the bundled image is being checked, and hash parts of it as they come up.
    let timebase_hz = host.timebase_frequency;
    let image = check_bundled_image(|| hart::start_secondaries(enabled.iter().copied(), timebase_hz));
    hart::wait_online(enabled.len().min(hart::MAX_HARTS), timebase_hz);
    // Only harts that have entered Keel get vCPUs: one that has not by now (the firmware failed to start it, or it
    // is very late) is named and left out, and idles if it arrives after all.
    let mut online_harts = alloc::vec![hartid];
    for &other in enabled.iter().filter(|&&h| h != hartid && h < hart::MAX_HARTS) {
        if hart::is_online(other) {
            online_harts.push(other);
        } else {
            log::warn!("hart {other} has not come online; no vCPUs will run on it");
        }
    }

    let guest_isa_extensions = Platform::guest_isa(&host, hartid, sstc);
    let platform = PLATFORM.call_once(|| Platform {
        host,
        online_harts,
        sstc,
        guest_isa_extensions,
        vmid_bits,
    });
    // The other harts sleep until the platform is known.
    for &other in platform.online_harts.iter().filter(|&&other| other != hartid) {
        hart::kick(other);
    }
    log::info!(
        "{} harts online; {} of {} MiB free; Sstc {}; {}-bit VMIDs; guest ISA {}",
        platform.online_harts.len(),
        memory::free_bytes() >> 20,
        memory::total_bytes() >> 20,
        if sstc { "yes" } else { "no" },
        vmid_bits,
        platform.guest_isa_string()
    );

    if let (Some(plic), Some(uart)) = (&platform.host.plic, &platform.host.uart) {
        let context = plic.s_contexts.iter().find(|(h, _)| *h as usize == hartid).map(|(_, c)| *c);
        match (context, uart.irq) {
            (Some(context), Some(irq)) => {
                hostirq::init(plic.base as usize, context as usize, irq);
                console::enable_input_interrupt();
            }
            _ => log::warn!("no PLIC route for the console's interrupt: console input is unavailable"),
        }
    }

    hostdev::init(&platform.host.virtio_mmio);
    if let Some(irq) = hostnic::irq() {
        if hostirq::ready() {
            hostirq::enable(irq);
        } else {
            log::warn!("no PLIC route for the host NIC's interrupt: capsules receive nothing from outside");
        }
    }
    start_capsules(image);
    run::init_hart();
    sched::hart_loop();
}

/// The bundled manifest image, once checked.
static BUNDLED_IMAGE: Once<keel_dmfs::Image<'static>> = Once::new();
/// The next VMID to hand out (0 is never used: it is what `hgatp` holds when no capsule runs).
static NEXT_VMID: AtomicU16 = AtomicU16::new(1);

/// The bundled manifest image, if this build has a usable one.
pub fn bundled_image() -> Option<&'static keel_dmfs::Image<'static>> {
    BUNDLED_IMAGE.get()
}

/// Why a capsule from the image could not be started.
pub enum StartError {
    NoSuchCapsule,
    /// Not in the bundled image, and the disk offers no image to look in (the reason).
    NotInImages(&'static str),
    Failed(String),
}

/// Creates, places and starts the capsule of `entry`.
fn start_capsule(entry: &keel_dmfs::Capsule<'static>) -> Result<Arc<Capsule>, String> {
    let platform = PLATFORM.get().ok_or_else(|| String::from("the platform is not set up yet"))?;
    let definition = Definition {
        name: entry.name,
        kernel: entry.kernel,
        initrd: entry.initrd,
        cmdline: entry.cmdline,
        memory: entry.memory,
        vcpus: entry.vcpus,
        boot: entry.boot,
        may_manage: entry.may_manage,
        restart: entry.restart,
        disks: entry.disks,
        mac: entry.mac,
    };
    // VMIDs wrap after 2^14 - 1 capsules; a reused VMID is safe because every hart flushes the G-stage TLB
    // whenever it switches vCPUs.
    let vmid = NEXT_VMID.fetch_add(1, Ordering::AcqRel) % 0x3fff + 1;
    let capsule = Capsule::create(definition, platform, vmid).map_err(|error| format!("{error}"))?;
    CAPSULES.lock().push(capsule.clone());
    if CAPSULES.lock().len() > 1 {
        console::set_tagging(true);
    }
    sched::place(&capsule, &platform.online_harts);
    capsule.start();
    Ok(capsule)
}

/// Starts the capsule named `name` (for the management device): from the bundled image, or else from the
/// manifest image on the machine's disk.
pub fn start_capsule_by_name(name: &str) -> Result<Arc<Capsule>, StartError> {
    if let Some(entry) = bundled_image().and_then(|image| image.capsule(name)) {
        return start_capsule(&entry).map_err(StartError::Failed);
    }
    match storage::image() {
        Ok(image) => {
            let mut entry = image.capsule(name).ok_or(StartError::NoSuchCapsule)?;
            // Only the bundled image's boot capsule is the machine's boot capsule (whose shutdown powers the
            // machine off); in an image on the disk the flag means nothing.
            entry.boot = false;
            start_capsule(&entry).map_err(StartError::Failed)
        }
        Err(why) => Err(StartError::NotInImages(why)),
    }
}

/// Checks the bundled manifest image's signature and format, or stops Keel saying why it cannot be used.
/// `start_others` starts the other harts, which help with the check.
fn check_bundled_image(start_others: impl FnOnce()) -> &'static keel_dmfs::Image<'static> {
    let bundled: &'static [u8] = &BUNDLED.0;
    if bundled.is_empty() {
        fatal(format_args!("this build has no bundled manifest image: nothing to run (build with `cargo xtask build`)"));
    }
    // Nothing of the image is read before its signature is checked.
    let image = verify::check_bundled_image(bundled, start_others);
    if image.boot_capsule().is_none() {
        fatal(format_args!("the bundled manifest image has no boot capsule"));
    }
    BUNDLED_IMAGE.call_once(|| image)
}

/// Creates the boot capsule and every autostart capsule of the bundled image.
fn start_capsules(image: &'static keel_dmfs::Image<'static>) {
    console::set_tagging(image.capsules().filter(|c| c.boot || c.autostart).count() > 1);
    for entry in image.capsules().filter(|c| c.boot || c.autostart) {
        match start_capsule(&entry) {
            Ok(capsule) => {
                if entry.boot {
                    FOCUS.store(capsule.id, Ordering::Release);
                }
            }
            Err(error) if entry.boot => {
                fatal(format_args!("the boot capsule '{}' could not be created: {error}", entry.name))
            }
            Err(error) => log::error!("capsule '{}' was not started: {error}", entry.name),
        }
    }
}

/// A secondary hart's entry, started by the boot hart through SBI HSM.
#[unsafe(no_mangle)]
extern "C" fn keel_secondary_main(_hartid: usize, _stack_top: usize) -> ! {
    arch::install_host_trap_vector();
    hart::mark_online();
    verify::help_check();
    // Wait for the boot hart to finish examining the machine (and checking the bundled image), asleep.
    hart::sleep_until(|| PLATFORM.get().is_some());
    run::init_hart();
    sched::hart_loop();
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::print_unlocked(format_args!("[keel h{}] PANIC: {}\n", hart::id(), info));
    firmware::shutdown_failure();
    loop {
        arch::wait_for_interrupt();
    }
}
