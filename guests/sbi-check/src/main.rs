//! A bare-metal S-mode guest that checks the SBI implementation under it (Keel, or OpenSBI natively).
//!
//! Entered at 0x80200000 with a0 = hartid and a1 = device tree address. It prints one line per
//! check (`sbi-check: ok <name>` or `sbi-check: FAILED <name>: <seen vs expected>`), then
//! `sbi-check: done, N checks ok, M failed`, and shuts the machine down through SBI SRST. With
//! `bench` in `/chosen/bootargs` it instead prints `keel-bench sbi-call-ns <ns>` and
//! `keel-bench mmio-read-ns <ns>`.
#![no_std]
#![no_main]
// A check's failure is a fixed-size text buffer (`keel_sbi_check::Failure`) because the guest has no
// heap; it is returned by value only on the failure path, so its size does not matter.
#![allow(clippy::result_large_err)]

mod bench;
mod checks;

// The runtime lives in the library so the hostile test guest shares it; these imports keep the modules'
// `crate::arch`-style paths working.
use keel_sbi_check::{arch, console, sbi, trap};

use core::panic::PanicInfo;

use keel_sbi_check::boot_info::{self, BootInfo, DeviceTreeError, MAX_BLOB_SIZE};
use keel_sbi_check::KEEL_IMPLEMENTATION_ID;
use sbi_spec::dbcn;

use crate::console::println;

/// QEMU virt's timebase, used only when the device tree cannot be read (which is itself reported).
const FALLBACK_TIMEBASE_FREQUENCY: u64 = 10_000_000;

/// Reads the boot information from the device tree at `address`, via a checked copy in `copy`.
fn read_device_tree(address: usize, copy: &mut [u8]) -> Result<BootInfo<'_>, DeviceTreeError> {
    if address == 0 || !address.is_multiple_of(8) {
        return Err(DeviceTreeError::BadAddress(address));
    }
    // SAFETY: the boot protocol (OpenSBI's and Keel's alike) passes the physical address of the
    // device tree in a1; translation is off, so its first eight bytes (magic and size) are readable.
    let head = unsafe { core::slice::from_raw_parts(address as *const u8, 8) };
    let size = boot_info::blob_size(head)?;
    // SAFETY: the header's totalsize, checked to be at most MAX_BLOB_SIZE, is the length of the
    // blob the loader placed there; the slice is only read, and only while main runs.
    let blob = unsafe { core::slice::from_raw_parts(address as *const u8, size) };
    boot_info::read(boot_info::check_and_copy(blob, copy)?)
}

#[no_mangle]
extern "C" fn sbi_check_main(hartid: usize, device_tree: usize) -> ! {
    arch::install_trap_vector();
    arch::clear_sstatus(arch::SSTATUS_SIE);
    let has_dbcn = sbi::probe_extension(dbcn::EID_DBCN).value != 0;
    console::use_dbcn(has_dbcn);

    let mut copy = [0u8; MAX_BLOB_SIZE];
    let tree = read_device_tree(device_tree, &mut copy);
    let timebase_frequency = match &tree {
        Ok(info) => info.timebase_frequency,
        Err(_) => FALLBACK_TIMEBASE_FREQUENCY,
    };
    if let Ok(info) = &tree {
        if info.wants_bench() {
            bench::run(info.timebase_frequency);
            sbi::shutdown();
        }
    }

    let environment = checks::Environment {
        hartid,
        timebase_frequency,
        on_keel: sbi::implementation_id().value == KEEL_IMPLEMENTATION_ID,
        has_dbcn,
    };
    checks::describe(&environment);
    let device_tree_result = match &tree {
        Ok(_) => Ok(()),
        Err(error) => Err(keel_sbi_check::report::failure(format_args!(
            "{error} (at {device_tree:#x}); assuming a {FALLBACK_TIMEBASE_FREQUENCY} Hz timebase"
        ))),
    };
    match &device_tree_result {
        Ok(()) => {
            println!("sbi-check: ok devicetree: bootargs and timebase-frequency are readable")
        }
        Err(failure) => println!("sbi-check: FAILED devicetree: {failure}"),
    }
    let mut tally = checks::run(environment);
    tally.record(&device_tree_result);
    println!("sbi-check: done, {tally}");
    sbi::shutdown()
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    match info.location() {
        Some(location) => println!(
            "sbi-check: FAILED panic: {} at {}:{}",
            info.message(),
            location.file(),
            location.line()
        ),
        None => println!("sbi-check: FAILED panic: {}", info.message()),
    }
    sbi::shutdown()
}
