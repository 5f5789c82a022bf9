//! A bare-metal S-mode guest that attacks the hypervisor under it, and the canary that watches beside it.
//!
//! Entered at 0x80200000 with a0 = hartid and a1 = device tree address, like the SBI check guest, whose entry
//! code, trap handler, console and SBI wrappers it shares (the `keel-sbi-check` library's runtime). The mode is
//! a word of `/chosen/bootargs`:
//! - `hostile`: prints `hostile: N cases; RAM ..., free ...`, runs every case of `CASES` in turn, printing
//!   `hostile: ok <case>: <outcome seen>` or `hostile: FAILED <case>: <seen vs expected>`, then
//!   `hostile: done, N ok, M failed`, and powers its capsule off with SRST. It wants a second vCPU (the IPI
//!   flood's target) and no `manage` right.
//! - `canary`: fills its free RAM with a pattern derived from each word's address and a boot-time seed; every
//!   200 ms it checks the pattern and its UART's LSR and prints `canary: intact round N`, or
//!   `canary: CHANGED at <address> expected <value> found <value>` / `canary: unexpected input <byte>`. It
//!   never stops by itself.
//! - `scrub-write`: fills its free RAM with a pattern with no zero byte, prints
//!   `scrub: wrote pattern over N bytes` and powers off; `scrub-read`: prints `scrub: N bytes checked, M nonzero`
//!   for its free RAM and powers off.
//!
//! "Free RAM" is the RAM window of the device tree's `/memory` node from the end of the image (with its stack)
//! to the device tree, page aligned.
//!
//! Each case has exactly one expected outcome, checked here (docs/hostile.md has the table):
//! - loads, stores and fetches outside its RAM and devices (below RAM, past its end, the top of the G-stage's
//!   41-bit space, beyond it, the top of the address space, where host RAM ends): an access fault injected by
//!   Keel (`scause` 5, 7 or 1), exactly one per access;
//! - addresses where Keel and the firmware sit in host memory, which fall inside its own RAM window: the access
//!   lands in its own RAM (a marker written and read back; its own image only read);
//! - the management page without the right: every command answers DENIED (docs/management.md);
//! - misaligned RAM accesses: carried out (QEMU does them) or an address-misaligned fault, either is defined;
//!   misaligned device accesses: an access fault;
//! - M-mode and hypervisor CSRs and instructions: an illegal-instruction fault (`scause` 2), whether the
//!   hardware raises it or Keel turns a virtual-instruction trap into one; `wfi` returns;
//! - SBI calls with buffers, addresses, hart ids and hart masks that are not its own: the SBI error the
//!   specification names (INVALID_PARAM, INVALID_ADDRESS, ALREADY_AVAILABLE);
//! - timers in the past, far future and a flood of them, and an IPI flood: delivered, silent, and survived;
//! - virtio descriptors and rings outside its RAM: the request completes with 0 bytes or the device asks for a
//!   reset, and no byte of RAM changes; a queue whose table is outside RAM is never enabled;
//! - last, 3 s of spinning with interrupts masked between `hostile: spinning` and `hostile: spun`: the test
//!   sees the canary's heartbeats in that window, so Keel took the hart away.
#![no_std]
#![no_main]
// A case's failure is a fixed-size text buffer (`keel_sbi_check::Failure`) because the guest has no heap; it is
// returned by value only on the failure path, so its size does not matter.
#![allow(clippy::result_large_err)]

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicUsize, Ordering};

use keel_hostile::{canary_word, nonzero_bytes, scrub_word, FreeRam, Mode, RamWindow};
use keel_sbi_check::boot_info::{self, BootInfo, MAX_BLOB_SIZE};
use keel_sbi_check::report::{failure, Failure};
use keel_sbi_check::sbi_codes::{
    error_name, ERR_ALREADY_AVAILABLE, ERR_INVALID_ADDRESS, ERR_INVALID_PARAM, SUCCESS,
};
use keel_sbi_check::{arch, console, println, sbi, trap};
use sbi_spec::{dbcn, rfnc};

/// `scause` codes the cases expect.
const INSTRUCTION_ACCESS_FAULT: usize = 1;
const ILLEGAL_INSTRUCTION: usize = 2;
const LOAD_ADDRESS_MISALIGNED: usize = 4;
const LOAD_ACCESS_FAULT: usize = 5;
const STORE_ADDRESS_MISALIGNED: usize = 6;
const STORE_ACCESS_FAULT: usize = 7;
/// `scause` of a supervisor timer interrupt on RV64.
const SUPERVISOR_TIMER_INTERRUPT: usize = 1 << 63 | 5;
/// Where Keel puts every capsule's 16550 and management page.
const UART: usize = 0x1000_0000;
const MANAGEMENT_PAGE: usize = 0x1010_0000;
/// Where the firmware and Keel sit in the host's memory on QEMU `virt`. The guest can only name them as
/// guest-physical addresses, and inside its own RAM window those are its own pages.
const HOST_FIRMWARE: usize = 0x8000_0000;
const HOST_KEEL: usize = 0x8020_0000;
/// The end of a 1 GiB machine's RAM, where Keel's free pool (and so the other capsule) comes from.
const HOST_RAM_END_1G: usize = 0xc000_0000 - 0x1000;
/// The last page of the Sv39x4 guest-physical space (41 bits), which the G-stage could map but does not.
const GSTAGE_TOP: usize = (1 << 41) - 0x1000;
/// An address beyond what Sv39x4 translates at all, and the last page of the 64-bit address space.
const BEYOND_GSTAGE: usize = 1 << 48;
const ADDRESS_SPACE_TOP: usize = usize::MAX - 0xfff;
/// The name a fatal trap's line starts with.
static PROGRAM_NAME: &str = "hostile";
/// How long the hostile guest waits before its first case, so the canary has filled its memory.
const SETTLE_SECONDS: u64 = 3;
/// What the cases write into memory they expect to own.
const MARKER: u32 = 0x4b45_454c;

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Reads the device tree handed over in a1, through a checked copy in `copy`.
fn read_device_tree(address: usize, copy: &mut [u8]) -> Option<BootInfo<'_>> {
    if address == 0 || !address.is_multiple_of(8) {
        return None;
    }
    // SAFETY: the boot protocol passes the device tree's physical address in a1 and translation is off, so its
    // 8-byte header is readable.
    let head = unsafe { core::slice::from_raw_parts(address as *const u8, 8) };
    let size = boot_info::blob_size(head).ok()?;
    // SAFETY: `size` is the blob's own length from that header, checked to be at most MAX_BLOB_SIZE; the slice
    // is only read, while this function runs.
    let blob = unsafe { core::slice::from_raw_parts(address as *const u8, size) };
    boot_info::read(boot_info::check_and_copy(blob, copy).ok()?).ok()
}

#[no_mangle]
extern "C" fn sbi_check_main(hartid: usize, device_tree: usize) -> ! {
    arch::install_trap_vector();
    arch::clear_sstatus(arch::SSTATUS_SIE);
    trap::set_program_name(&PROGRAM_NAME);
    console::use_dbcn(sbi::probe_extension(dbcn::EID_DBCN).value != 0);
    let mut copy = [0u8; MAX_BLOB_SIZE];
    let Some(info) = read_device_tree(device_tree, &mut copy) else {
        println!("hostile: FAILED setup: the device tree at {device_tree:#x} could not be read");
        sbi::shutdown();
    };
    let Some(ram) = info
        .memory
        .and_then(|(base, size)| RamWindow::new(base, size))
    else {
        println!("hostile: FAILED setup: the device tree has no usable /memory node");
        sbi::shutdown();
    };
    let image_end = (&raw const __image_end) as usize;
    let Some(free) = FreeRam::new(ram, image_end, device_tree) else {
        println!("hostile: FAILED setup: no free RAM between the image end {image_end:#x} and the device tree");
        sbi::shutdown();
    };
    match Mode::from_bootargs(info.bootargs) {
        Some(Mode::Canary) => canary(&info, &free),
        Some(Mode::ScrubWrite) => scrub_write(&free),
        Some(Mode::ScrubRead) => scrub_read(&free),
        Some(Mode::Hostile) => hostile(hartid, &info, ram, free),
        None => {
            println!(
                "hostile: FAILED setup: bootargs {:?} name no mode",
                info.bootargs
            );
            sbi::shutdown()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The canary

fn canary(info: &BootInfo<'_>, free: &FreeRam) -> ! {
    // A seed from the clock, so a page left over from an earlier run of the canary cannot pass for this one's.
    let seed = arch::read_time() | 1;
    for address in free.words() {
        // SAFETY: free RAM is this guest's own memory that nothing else of it uses (neither image, stack nor
        // device tree); every word address is 8-byte aligned because both ends are page aligned.
        unsafe { core::ptr::write_volatile(address as *mut u64, canary_word(address, seed)) };
    }
    println!(
        "canary: watching {} KiB of RAM and the UART",
        free.len() >> 10
    );
    let period = info.timebase_frequency / 5;
    let mut round = 0u64;
    loop {
        let deadline = arch::read_time() + period;
        while arch::read_time() < deadline {
            core::hint::spin_loop();
        }
        round += 1;
        let mut changed = None;
        for address in free.words() {
            // SAFETY: as for the fill above.
            let found = unsafe { core::ptr::read_volatile(address as *const u64) };
            if found != canary_word(address, seed) {
                changed = Some((address, found));
                break;
            }
        }
        // LSR bit 0 (data ready): nobody types at the canary, so any byte is something reaching its console.
        // SAFETY: reading the 16550's LSR has no side effect.
        let input = unsafe { arch::read_device_byte(UART + 5) } & 1 != 0;
        match (changed, input) {
            (Some((address, found)), _) => {
                println!(
                    "canary: CHANGED at {address:#x} expected {:#018x} found {found:#018x}",
                    canary_word(address, seed)
                );
                // Restore the word, so each change is reported once and later rounds check afresh.
                // SAFETY: as for the fill above.
                unsafe {
                    core::ptr::write_volatile(address as *mut u64, canary_word(address, seed))
                };
            }
            (None, true) => {
                // SAFETY: reading RBR takes the byte out of the receive buffer, so the next round sees only
                // newer input.
                let byte = unsafe { arch::read_device_byte(UART) };
                println!("canary: unexpected input {byte:#04x}");
            }
            (None, false) => println!("canary: intact round {round}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Scrubbing

fn scrub_write(free: &FreeRam) -> ! {
    for address in free.words() {
        // SAFETY: this guest's own free RAM, 8-byte aligned (see `canary`).
        unsafe { core::ptr::write_volatile(address as *mut u64, scrub_word(address)) };
    }
    println!("scrub: wrote pattern over {} bytes", free.len());
    sbi::shutdown()
}

fn scrub_read(free: &FreeRam) -> ! {
    let mut nonzero = 0usize;
    for address in free.words() {
        // SAFETY: as in `scrub_write`.
        let word = unsafe { core::ptr::read_volatile(address as *const u64) };
        nonzero += nonzero_bytes(word);
    }
    println!("scrub: {} bytes checked, {nonzero} nonzero", free.len());
    sbi::shutdown()
}

// ---------------------------------------------------------------------------------------------------------------
// The hostile guest

/// What one case saw.
type Outcome = Result<&'static str, Failure>;

struct Context<'a> {
    hartid: usize,
    info: &'a BootInfo<'a>,
    ram: RamWindow,
    free: FreeRam,
}

impl Context<'_> {
    /// Whether `[address, address + len)` is this guest's RAM that it may overwrite: free RAM or the unused RAM
    /// below its image (its image, stack and device tree are not).
    fn may_overwrite(&self, address: usize, len: usize) -> bool {
        let image_start = (&raw const __image_start) as usize;
        let below_image = RamWindow {
            base: self.ram.base,
            end: image_start,
        };
        let free = RamWindow {
            base: self.free.start,
            end: self.free.end,
        };
        below_image.contains(address, len) || free.contains(address, len)
    }
}

/// Runs `access` and checks that exactly one trap with `scause` = `expected` interrupted it.
fn expect_fault(expected: usize, access: impl FnOnce()) -> Result<(), Failure> {
    trap::reset();
    access();
    let record = trap::last();
    if record.count == 1 && record.scause == expected {
        Ok(())
    } else {
        Err(failure(format_args!(
            "{} trap(s), last scause {:#x} stval {:#x}; expected one with scause {expected}",
            record.count, record.scause, record.stval
        )))
    }
}

fn expect_no_trap() -> Result<(), Failure> {
    let record = trap::last();
    if record.count == 0 {
        Ok(())
    } else {
        Err(failure(format_args!(
            "unexpected trap scause {:#x} stval {:#x}",
            record.scause, record.stval
        )))
    }
}

fn expect_error(what: &str, seen: isize, expected: isize) -> Result<(), Failure> {
    if seen == expected {
        Ok(())
    } else {
        Err(failure(format_args!(
            "{what} returned {} ({seen}); expected {} ({expected})",
            error_name(seen).unwrap_or("?"),
            error_name(expected).unwrap_or("?")
        )))
    }
}

/// One 32-bit load at `address`; a fault leaves the fallback.
fn load(address: usize) -> u32 {
    // SAFETY: the trap handler steps over a faulting load; a load that succeeds only reads.
    unsafe { arch::probe_load_u32(address, 0xdead_beef) }
}

/// One 32-bit store at `address`; the trap handler steps over it if it faults.
fn store(address: usize, value: u32) {
    // SAFETY: callers store only where a fault is expected or into this guest's own free RAM.
    unsafe {
        asm!("sw {value}, 0({address})", value = in(reg) value, address = in(reg) address, options(nostack))
    };
}

/// Jumps to `address` as if to a function; if the fetch faults, the trap handler resumes after the jump.
fn fetch(address: usize) {
    // SAFETY: the resume point is the instruction after the jump, inside this function, with every register the
    // compiler relies on intact (the jump clobbers only ra and t0, which are declared).
    unsafe {
        asm!(
            "la t0, 2f",
            "sd t0, 0({resume})",
            "jalr ra, 0({target})",
            "2:",
            resume = in(reg) trap::FETCH_RESUME.as_ptr(),
            target = in(reg) address,
            out("ra") _,
            out("t0") _,
            options(nostack),
        )
    };
}

/// Outside its RAM: a load and a store each get an access fault. Inside (a window it names that is its own RAM):
/// a marker written there reads back, or, for its own image, a read works; either way the access stayed in its
/// own memory, which the canary confirms from the other side.
fn memory_case(context: &Context<'_>, address: usize) -> Outcome {
    if context.ram.contains(address, 4) {
        trap::reset();
        if !context.may_overwrite(address, 4) {
            let _ = load(address);
            expect_no_trap()?;
            return Ok("its own RAM (its image: read back)");
        }
        store(address, MARKER);
        let back = load(address);
        expect_no_trap()?;
        return if back == MARKER {
            Ok("its own RAM (marker written and read back)")
        } else {
            Err(failure(format_args!(
                "marker {MARKER:#x} read back as {back:#x}"
            )))
        };
    }
    expect_fault(LOAD_ACCESS_FAULT, || {
        let _ = load(address);
    })?;
    expect_fault(STORE_ACCESS_FAULT, || store(address, MARKER))?;
    Ok("load and store access faults injected")
}

fn fetch_case(address: usize) -> Outcome {
    expect_fault(INSTRUCTION_ACCESS_FAULT, || fetch(address))?;
    Ok("instruction access fault injected")
}

/// A case that runs one instruction VS-mode may not execute and expects an illegal-instruction fault.
macro_rules! illegal {
    ($name:literal, $instruction:literal) => {
        (
            $name,
            (|_: &Context<'_>| -> Outcome {
                expect_fault(ILLEGAL_INSTRUCTION, || {
                    // SAFETY: the instruction traps before it has any effect (M-mode and hypervisor CSRs and
                    // instructions are out of VS-mode's reach), and the trap handler steps over it; t0, its only
                    // possible destination, is declared clobbered.
                    unsafe { asm!($instruction, out("t0") _, options(nostack)) };
                })?;
                Ok("illegal-instruction fault")
            }) as fn(&Context<'_>) -> Outcome,
        )
    };
}

/// An SBI case: `call` must return exactly `expected`.
macro_rules! sbi_error {
    ($name:literal, $what:literal, $expected:expr, $outcome:literal, $call:expr) => {
        (
            $name,
            (|context: &Context<'_>| -> Outcome {
                let call: fn(&Context<'_>) -> isize = $call;
                expect_error($what, call(context), $expected)?;
                Ok($outcome)
            }) as fn(&Context<'_>) -> Outcome,
        )
    };
}

type Case = (&'static str, fn(&Context<'_>) -> Outcome);

/// Every case, in the order it runs. The masked spin comes last: the scenario watches the canary during it.
const CASES: &[Case] = &[
    // Loads and stores outside its RAM and devices, or at host addresses that fall inside its own RAM window.
    ("load-store-low-address", |c| memory_case(c, 0x1000)),
    ("load-store-gap-below-ram", |c| {
        memory_case(c, c.ram.base - 0x1000)
    }),
    ("load-store-past-ram", |c| memory_case(c, c.ram.end)),
    ("load-store-far-past-ram", |c| {
        memory_case(c, c.ram.end + 0x1000_0000)
    }),
    ("load-store-host-firmware", |c| {
        memory_case(c, HOST_FIRMWARE)
    }),
    ("load-store-host-keel", |c| memory_case(c, HOST_KEEL)),
    ("load-store-host-ram-end", |c| {
        memory_case(c, HOST_RAM_END_1G)
    }),
    ("load-store-gstage-top", |c| memory_case(c, GSTAGE_TOP)),
    ("load-store-beyond-gstage", |c| {
        memory_case(c, BEYOND_GSTAGE)
    }),
    ("load-store-address-space-top", |c| {
        memory_case(c, ADDRESS_SPACE_TOP)
    }),
    ("management-stop-canary-denied", management_denied),
    // Instruction fetches from outside its RAM.
    ("fetch-low-address", |_| fetch_case(0x1000)),
    ("fetch-past-ram", |c| fetch_case(c.ram.end)),
    ("fetch-from-uart", |_| fetch_case(UART)),
    ("fetch-beyond-gstage", |_| fetch_case(BEYOND_GSTAGE)),
    // Misaligned accesses.
    ("misaligned-ram-load-store", misaligned_ram),
    ("misaligned-mmio-load", |_| {
        expect_fault(LOAD_ACCESS_FAULT, || {
            let _ = load(UART + 1);
        })?;
        Ok("load access fault injected")
    }),
    ("misaligned-mmio-store", |_| {
        expect_fault(STORE_ACCESS_FAULT, || store(UART + 2, 0))?;
        Ok("store access fault injected")
    }),
    // CSRs by number (mstatus 0x300, mtvec 0x305, mcycle 0xb00, hstatus 0x600, hgatp 0x680, vsatp 0x280) and
    // hypervisor instructions by encoding, since the guest is built without the H extension.
    illegal!("csr-mstatus-read", "csrr t0, 0x300"),
    illegal!("csr-mtvec-write", "csrw 0x305, zero"),
    illegal!("csr-mcycle-read", "csrr t0, 0xb00"),
    illegal!("csr-hstatus-read", "csrr t0, 0x600"),
    illegal!("csr-hgatp-write", "csrw 0x680, zero"),
    illegal!("csr-vsatp-read", "csrr t0, 0x280"),
    illegal!("insn-hfence-gvma", ".word 0x62000073"),
    illegal!("insn-hfence-vvma", ".word 0x22000073"),
    illegal!("insn-hlv-w", ".word 0x680042f3"),
    illegal!("insn-mret", "mret"),
    ("insn-wfi-returns", wfi_returns),
    // SBI calls with bad pointers and lengths (DBCN: SBI v2.0 section 12 answers memory that is not the
    // caller's with SBI_ERR_INVALID_PARAM).
    sbi_error!(
        "dbcn-write-outside-ram",
        "console_write",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |c| { sbi::console_write(c.ram.end + 0x1000, 16).error }
    ),
    sbi_error!(
        "dbcn-write-straddling-ram-end",
        "console_write",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |c| { sbi::console_write(c.ram.end - 8, 64).error }
    ),
    sbi_error!(
        "dbcn-write-huge-length",
        "console_write",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |c| { sbi::console_write(c.free.start, usize::MAX / 2).error }
    ),
    sbi_error!(
        "dbcn-write-wrapping",
        "console_write",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| { sbi::console_write(usize::MAX - 7, 64).error }
    ),
    sbi_error!(
        "dbcn-write-high-address-half",
        "console_write",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |c| {
            sbi::call(
                dbcn::EID_DBCN,
                dbcn::CONSOLE_WRITE,
                [16, c.free.start, 1, 0, 0, 0],
            )
            .error
        }
    ),
    sbi_error!(
        "dbcn-read-outside-ram",
        "console_read",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |c| {
            sbi::call(
                dbcn::EID_DBCN,
                dbcn::CONSOLE_READ,
                [16, c.ram.end + 0x1000, 0, 0, 0, 0],
            )
            .error
        }
    ),
    sbi_error!(
        "dbcn-read-into-host-ram",
        "console_read",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| {
            sbi::call(
                dbcn::EID_DBCN,
                dbcn::CONSOLE_READ,
                [16, HOST_RAM_END_1G, 0, 0, 0, 0],
            )
            .error
        }
    ),
    // HSM with wild start addresses and hart ids.
    sbi_error!(
        "hsm-start-wild-address",
        "hart_start",
        ERR_INVALID_ADDRESS,
        "INVALID_ADDRESS",
        |_| { sbi::hart_start(1, 0x1000, 0).error }
    ),
    sbi_error!(
        "hsm-start-address-past-ram",
        "hart_start",
        ERR_INVALID_ADDRESS,
        "INVALID_ADDRESS",
        |c| { sbi::hart_start(1, c.ram.end, 0).error }
    ),
    sbi_error!(
        "hsm-start-missing-hart",
        "hart_start",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| { sbi::hart_start(1000, secondary_entry(), 0).error }
    ),
    sbi_error!(
        "hsm-start-hart-id-max",
        "hart_start",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| { sbi::hart_start(usize::MAX, secondary_entry(), 0).error }
    ),
    sbi_error!(
        "hsm-start-self",
        "hart_start",
        ERR_ALREADY_AVAILABLE,
        "ALREADY_AVAILABLE",
        |c| { sbi::hart_start(c.hartid, secondary_entry(), 0).error }
    ),
    ("hsm-start-second-vcpu", start_second_vcpu),
    // IPIs and remote fences for harts it does not have.
    sbi_error!(
        "ipi-missing-hart",
        "send_ipi",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| { sbi::send_ipi(1 << 40, 0).error }
    ),
    sbi_error!(
        "ipi-wild-mask-base",
        "send_ipi",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| { sbi::send_ipi(1, 1 << 40).error }
    ),
    sbi_error!(
        "fence-i-missing-hart",
        "remote_fence_i",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| { sbi::remote_fence_i(1 << 7, 0).error }
    ),
    sbi_error!(
        "sfence-vma-missing-hart",
        "remote_sfence_vma",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| {
            sbi::call(
                rfnc::EID_RFNC,
                rfnc::REMOTE_SFENCE_VMA,
                [1 << 9, 0, 0, usize::MAX, 0, 0],
            )
            .error
        }
    ),
    sbi_error!(
        "sfence-vma-wild-mask-base",
        "remote_sfence_vma",
        ERR_INVALID_PARAM,
        "INVALID_PARAM",
        |_| { sbi::remote_sfence_vma(1, usize::MAX - 1, 0, usize::MAX).error }
    ),
    // Timers and floods.
    ("timer-in-the-past", timer_in_the_past),
    ("timer-far-future", timer_far_future),
    ("ipi-flood", ipi_flood),
    ("timer-flood", timer_flood),
    // virtio descriptors and rings outside its memory.
    ("virtio-buffer-outside-ram", |c| {
        virtio_case(c, VirtioAttack::BufferOutside)
    }),
    ("virtio-buffer-straddling-ram-end", |c| {
        virtio_case(c, VirtioAttack::BufferStraddling)
    }),
    ("virtio-buffer-in-host-ram", |c| {
        virtio_case(c, VirtioAttack::BufferInHostRam)
    }),
    ("virtio-ring-outside-ram", |c| {
        virtio_case(c, VirtioAttack::RingOutside)
    }),
    ("masked-spin", masked_spin),
];

fn hostile(hartid: usize, info: &BootInfo<'_>, ram: RamWindow, free: FreeRam) -> ! {
    let context = Context {
        hartid,
        info,
        ram,
        free,
    };
    println!(
        "hostile: {} cases; RAM {:#x}..{:#x}, free {:#x}..{:#x}",
        CASES.len(),
        ram.base,
        ram.end,
        free.start,
        free.end
    );
    // The canary beside it fills its memory first; attacks before it watches would prove nothing about it. The
    // test checks that `canary: watching` came before the first case.
    println!("hostile: waiting {SETTLE_SECONDS} s for the canary");
    let settle_end = arch::read_time() + SETTLE_SECONDS * context.info.timebase_frequency;
    while arch::read_time() < settle_end {
        core::hint::spin_loop();
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in CASES {
        match case(&context) {
            Ok(outcome) => {
                passed += 1;
                println!("hostile: ok {name}: {outcome}");
            }
            Err(why) => {
                failed += 1;
                println!("hostile: FAILED {name}: {why}");
            }
        }
    }
    println!("hostile: done, {passed} ok, {failed} failed");
    sbi::shutdown()
}

/// Names the canary in the management page and asks Keel to stop it. A capsule without `manage = true` still
/// has the page (docs/management.md: every capsule's guest-physical space holds it), but every command answers
/// DENIED and Keel logs the attempt.
fn management_denied(_: &Context<'_>) -> Outcome {
    const NAME: usize = 0x100;
    const COMMAND: usize = 0x008;
    const STATUS: usize = 0x00c;
    const STOP: u32 = 3;
    const DENIED: u32 = 1;
    trap::reset();
    let name = *b"canary\0\0";
    for (index, chunk) in name.chunks_exact(4).enumerate() {
        let word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        mmio_write(MANAGEMENT_PAGE, NAME + 4 * index, word);
    }
    mmio_write(MANAGEMENT_PAGE, COMMAND, STOP);
    let status = mmio_read(MANAGEMENT_PAGE, STATUS);
    expect_no_trap()?;
    if status == DENIED {
        Ok("stop command refused with DENIED")
    } else {
        Err(failure(format_args!(
            "status {status} after a stop command; expected DENIED ({DENIED})"
        )))
    }
}

/// A 32-bit store and load at an odd address in its own free RAM.
fn misaligned_ram(context: &Context<'_>) -> Outcome {
    let address = context.free.start + 0x101;
    trap::reset();
    store(address, 0x1234_5678);
    let back = load(address);
    let record = trap::last();
    if record.count == 0 && back == 0x1234_5678 {
        return Ok("carried out (the platform handles misaligned accesses)");
    }
    // The other defined outcome: a misaligned fault for each access (delegated straight to the guest), and the
    // guest goes on.
    if record.count == 2
        && [LOAD_ADDRESS_MISALIGNED, STORE_ADDRESS_MISALIGNED].contains(&record.scause)
    {
        return Ok("address-misaligned faults delivered");
    }
    Err(failure(format_args!(
        "{} trap(s), last scause {:#x}, value {back:#x}; expected the access done or misaligned faults",
        record.count, record.scause
    )))
}

fn wfi_returns(context: &Context<'_>) -> Outcome {
    arch::set_sie(arch::IRQ_TIMER);
    sbi::set_timer(arch::read_time() + context.info.timebase_frequency / 100);
    trap::reset();
    arch::wait_for_interrupt();
    expect_no_trap()?;
    sbi::set_timer(u64::MAX);
    arch::clear_sie(arch::IRQ_TIMER);
    Ok("returned on the timer")
}

fn timer_in_the_past(context: &Context<'_>) -> Outcome {
    // Delivery is what counts, so take the interrupt: the trap handler records it and masks STIE again. (Polling
    // sip.STIP would not do: QEMU 7.2 does not show an Sstc timer in a VS-mode read of sip.)
    trap::reset();
    arch::set_sie(arch::IRQ_TIMER);
    let result = sbi::set_timer(0);
    expect_error("set_timer(0)", result.error, SUCCESS)?;
    let start = arch::read_time();
    arch::set_sstatus(arch::SSTATUS_SIE);
    while trap::last().count == 0 && arch::read_time() - start < context.info.timebase_frequency {
        core::hint::spin_loop();
    }
    arch::clear_sstatus(arch::SSTATUS_SIE);
    arch::clear_sie(arch::IRQ_TIMER);
    sbi::set_timer(u64::MAX);
    let record = trap::last();
    if record.count == 1 && record.scause == SUPERVISOR_TIMER_INTERRUPT {
        Ok("the timer interrupt arrived at once")
    } else {
        Err(failure(format_args!(
            "{} trap(s), last scause {:#x}; expected one supervisor timer interrupt within 1 s",
            record.count, record.scause
        )))
    }
}

/// A timer 1000 s ahead: accepted, and no interrupt within 100 ms.
fn timer_far_future(context: &Context<'_>) -> Outcome {
    let frequency = context.info.timebase_frequency;
    trap::reset();
    arch::set_sie(arch::IRQ_TIMER);
    let result = sbi::set_timer(arch::read_time() + 1000 * frequency);
    arch::set_sstatus(arch::SSTATUS_SIE);
    let start = arch::read_time();
    while arch::read_time() - start < frequency / 10 {
        core::hint::spin_loop();
    }
    arch::clear_sstatus(arch::SSTATUS_SIE);
    arch::clear_sie(arch::IRQ_TIMER);
    sbi::set_timer(u64::MAX);
    expect_error("set_timer(now + 1000 s)", result.error, SUCCESS)?;
    expect_no_trap()?;
    Ok("accepted; no interrupt")
}

/// Thousands of IPIs: to itself alone, then to itself and its second vCPU.
///
/// An IPI that wakes a waiting vCPU on a shared hart makes the sender give way (Keel's scheduler lets the woken
/// vCPU and every other queued one run before it continues), so each IPI of the second kind costs the sender
/// about a time slice; a few hundred of those already span seconds.
fn ipi_flood(context: &Context<'_>) -> Outcome {
    const TO_ITSELF: usize = 20_000;
    const TO_BOTH: usize = 300;
    let start = arch::read_time();
    for _ in 0..TO_ITSELF {
        let seen = sbi::send_ipi(1 << context.hartid, 0).error;
        expect_error("send_ipi(itself)", seen, SUCCESS)?;
    }
    let middle = arch::read_time();
    for _ in 0..TO_BOTH {
        // Its second vCPU waits in WFI with interrupts masked (see `hostile_secondary_main`).
        let seen = sbi::send_ipi(0b11, 0).error;
        expect_error("send_ipi(both vCPUs)", seen, SUCCESS)?;
    }
    let end = arch::read_time();
    arch::clear_sip(arch::IRQ_SOFTWARE);
    let ms = |ticks: u64| ticks * 1000 / context.info.timebase_frequency;
    println!(
        "hostile: ({TO_ITSELF} IPIs to itself took {} ms, {TO_BOTH} to both vCPUs {} ms)",
        ms(middle - start),
        ms(end - middle)
    );
    Ok("every IPI accepted; the guest carries on")
}

/// Thousands of timers set for the current time, each one due at once.
fn timer_flood(_: &Context<'_>) -> Outcome {
    for _ in 0..20_000 {
        let seen = sbi::set_timer(arch::read_time()).error;
        expect_error("set_timer", seen, SUCCESS)?;
    }
    sbi::set_timer(u64::MAX);
    Ok("every timer accepted; the guest carries on")
}

/// Spins 3 s with interrupts masked; only Keel's own timer can take the hart away, and the canary's heartbeats
/// during the `spinning` .. `spun` window show that it did.
fn masked_spin(context: &Context<'_>) -> Outcome {
    arch::clear_sstatus(arch::SSTATUS_SIE);
    println!("hostile: spinning");
    let end = arch::read_time() + 3 * context.info.timebase_frequency;
    while arch::read_time() < end {
        core::hint::spin_loop();
    }
    println!("hostile: spun");
    Ok("3 s with interrupts masked; the canary's heartbeat shows the hart was shared")
}

// ---------------------------------------------------------------------------------------------------------------
// The second vCPU: parks in WFI with interrupts masked, so the IPI flood has a target that never takes them.

const SECONDARY_STACK: usize = 16 * 1024;
#[repr(C, align(16))]
struct Stack([u8; SECONDARY_STACK]);
static mut SECONDARY: Stack = Stack([0; SECONDARY_STACK]);
static SECONDARY_UP: AtomicUsize = AtomicUsize::new(0);

global_asm!(
    r#"
    .section .text
    .balign 4
    .globl hostile_secondary_entry
hostile_secondary_entry:
    mv      sp, a1
    call    hostile_secondary_main
1:
    wfi
    j       1b
"#
);

extern "C" {
    fn hostile_secondary_entry();
}

fn secondary_entry() -> usize {
    hostile_secondary_entry as *const () as usize
}

#[no_mangle]
extern "C" fn hostile_secondary_main() {
    // stvec is per hart: without it a stray trap would jump to address 0.
    arch::install_trap_vector();
    SECONDARY_UP.store(1, Ordering::SeqCst);
    arch::clear_sstatus(arch::SSTATUS_SIE);
    arch::set_sie(arch::IRQ_SOFTWARE);
    loop {
        arch::wait_for_interrupt();
        arch::clear_sip(arch::IRQ_SOFTWARE);
    }
}

fn start_second_vcpu(context: &Context<'_>) -> Outcome {
    let stack_top = (&raw const SECONDARY) as usize + SECONDARY_STACK;
    let seen = sbi::hart_start(1, secondary_entry(), stack_top).error;
    expect_error("hart_start(1)", seen, SUCCESS)?;
    let start = arch::read_time();
    while SECONDARY_UP.load(Ordering::SeqCst) == 0 {
        if arch::read_time() - start > 5 * context.info.timebase_frequency {
            return Err(failure(format_args!("vCPU 1 did not start within 5 s")));
        }
    }
    let again = sbi::hart_start(1, secondary_entry(), stack_top).error;
    expect_error("hart_start(1) again", again, ERR_ALREADY_AVAILABLE)?;
    Ok("started; starting it again is ALREADY_AVAILABLE")
}

// ---------------------------------------------------------------------------------------------------------------
// virtio: a driver that sets up the entropy device's queue properly and then posts bad addresses.

#[derive(Clone, Copy, PartialEq, Eq)]
enum VirtioAttack {
    /// A device-writable buffer past the end of its RAM.
    BufferOutside,
    /// A buffer whose first 16 bytes are the last of its RAM and the rest is past the end.
    BufferStraddling,
    /// A buffer where the host's RAM ends on a 1 GiB machine (other capsules' memory, if identity mapped).
    BufferInHostRam,
    /// A descriptor table past the end of its RAM.
    RingOutside,
}

/// virtio-mmio registers (virtio 1.2, section 4.2.2) and status bits.
mod virtio_mmio {
    pub const MAGIC_VALUE: usize = 0x000;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    /// "virt" in little-endian.
    pub const MAGIC: u32 = 0x7472_6976;
    pub const ENTROPY_DEVICE: u32 = 4;
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// VIRTIO_F_VERSION_1 is bit 32: bit 0 of the second feature word.
    pub const VERSION_1_IN_HIGH_WORD: u32 = 1;
    /// `VIRTQ_DESC_F_WRITE`: the device writes the buffer.
    pub const DESCRIPTOR_WRITE: u64 = 2;
}

const QUEUE_SIZE: usize = 8;

/// A split virtqueue's three parts in one page of this guest's own memory.
#[repr(C, align(4096))]
struct Rings {
    /// Each descriptor: address, then length (bits 0..32), flags (32..48) and next (48..64).
    descriptors: [[u64; 2]; QUEUE_SIZE],
    /// flags, idx, ring[QUEUE_SIZE], used_event.
    available: [u16; 3 + QUEUE_SIZE],
    /// flags and idx in the first word, then (id, len) per element.
    used: [u32; 1 + 2 * QUEUE_SIZE],
}
static mut RINGS: Rings = Rings {
    descriptors: [[0; 2]; QUEUE_SIZE],
    available: [0; 3 + QUEUE_SIZE],
    used: [0; 1 + 2 * QUEUE_SIZE],
};

/// A 32-bit read of a device register.
fn mmio_read(base: usize, offset: usize) -> u32 {
    // SAFETY: the callers name registers of devices Keel gives this guest (the management page, a virtio-mmio
    // slot from the device tree); a device read changes nothing but that device's state.
    unsafe { core::ptr::read_volatile((base + offset) as *const u32) }
}

/// A 32-bit write of a device register.
fn mmio_write(base: usize, offset: usize, value: u32) {
    // SAFETY: as for `mmio_read`; device registers are not memory Rust knows about.
    unsafe { core::ptr::write_volatile((base + offset) as *mut u32, value) };
}

fn find_entropy_device(info: &BootInfo<'_>) -> Option<usize> {
    use virtio_mmio::*;
    info.virtio[..info.virtio_count]
        .iter()
        .map(|&base| base as usize)
        .find(|&base| {
            mmio_read(base, MAGIC_VALUE) == MAGIC && mmio_read(base, DEVICE_ID) == ENTROPY_DEVICE
        })
}

/// The four 32-bit words just below the end of RAM (the device tree's tail), to see that nothing wrote there.
fn ram_tail(context: &Context<'_>) -> [u32; 4] {
    core::array::from_fn(|index| load(context.ram.end - 16 + 4 * index))
}

fn virtio_case(context: &Context<'_>, attack: VirtioAttack) -> Outcome {
    use virtio_mmio::*;
    let Some(base) = find_entropy_device(context.info) else {
        return Err(failure(format_args!(
            "no virtio-rng device in the device tree"
        )));
    };
    // Reset, ACKNOWLEDGE | DRIVER, accept VERSION_1 only, FEATURES_OK (virtio 1.2, section 3.1.1).
    mmio_write(base, STATUS, 0);
    mmio_write(base, STATUS, ACKNOWLEDGE | DRIVER);
    mmio_write(base, DEVICE_FEATURES_SEL, 1);
    if mmio_read(base, DEVICE_FEATURES) & VERSION_1_IN_HIGH_WORD == 0 {
        return Err(failure(format_args!(
            "the device does not offer VIRTIO_F_VERSION_1"
        )));
    }
    mmio_write(base, DRIVER_FEATURES_SEL, 1);
    mmio_write(base, DRIVER_FEATURES, VERSION_1_IN_HIGH_WORD);
    mmio_write(base, DRIVER_FEATURES_SEL, 0);
    mmio_write(base, DRIVER_FEATURES, 0);
    mmio_write(base, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    if mmio_read(base, STATUS) & FEATURES_OK == 0 {
        return Err(failure(format_args!(
            "the device did not accept FEATURES_OK"
        )));
    }
    let rings = (&raw mut RINGS) as usize;
    // SAFETY: the rings are this guest's own static memory, and the device was reset, so it does not use them.
    unsafe { core::ptr::write_bytes(rings as *mut u8, 0, core::mem::size_of::<Rings>()) };
    let descriptors = rings + core::mem::offset_of!(Rings, descriptors);
    let available = rings + core::mem::offset_of!(Rings, available);
    let used = rings + core::mem::offset_of!(Rings, used);
    let table = if attack == VirtioAttack::RingOutside {
        context.ram.end + 0x10_0000
    } else {
        descriptors
    };
    mmio_write(base, QUEUE_SEL, 0);
    mmio_write(base, QUEUE_NUM, QUEUE_SIZE as u32);
    for (low, address) in [
        (QUEUE_DESC_LOW, table),
        (QUEUE_DRIVER_LOW, available),
        (QUEUE_DEVICE_LOW, used),
    ] {
        mmio_write(base, low, address as u32);
        mmio_write(base, low + 4, (address >> 32) as u32);
    }
    mmio_write(base, QUEUE_READY, 1);
    if attack == VirtioAttack::RingOutside {
        let ready = mmio_read(base, QUEUE_READY);
        mmio_write(base, STATUS, 0);
        return if ready == 0 {
            Ok("queue with its descriptor table outside RAM refused (QueueReady stays 0)")
        } else {
            Err(failure(format_args!(
                "the device enabled a queue whose descriptor table is outside RAM"
            )))
        };
    }
    if mmio_read(base, QUEUE_READY) != 1 {
        mmio_write(base, STATUS, 0);
        return Err(failure(format_args!(
            "the device refused a queue inside RAM"
        )));
    }
    mmio_write(base, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let (buffer, len) = match attack {
        VirtioAttack::BufferOutside => (context.ram.end + 0x1000, 64u64),
        VirtioAttack::BufferInHostRam => (HOST_RAM_END_1G, 64u64),
        _ => (context.ram.end - 16, 64u64),
    };
    let tail_before = ram_tail(context);
    // SAFETY: this guest's own rings: one device-writable descriptor, published in the available ring, with
    // fences so the device sees the descriptor before the index that publishes it.
    unsafe {
        let descriptor = descriptors as *mut u64;
        core::ptr::write_volatile(descriptor, buffer as u64);
        core::ptr::write_volatile(descriptor.add(1), len | DESCRIPTOR_WRITE << 32);
        let ring = available as *mut u16;
        core::ptr::write_volatile(ring.add(2), 0);
        asm!("fence w, w", options(nostack));
        core::ptr::write_volatile(ring.add(1), 1);
        asm!("fence w, w", options(nostack));
    }
    mmio_write(base, QUEUE_NOTIFY, 0);
    // Keel serves the queue during the notify write, so the used ring is final now.
    // SAFETY: reading this guest's own used ring.
    let (used_index, used_len) = unsafe {
        let ring = used as *const u32;
        (
            core::ptr::read_volatile(ring) >> 16,
            core::ptr::read_volatile(ring.add(2)),
        )
    };
    let status = mmio_read(base, STATUS);
    mmio_write(base, STATUS, 0);
    if ram_tail(context) != tail_before {
        return Err(failure(format_args!(
            "the device wrote into the last 16 bytes of RAM"
        )));
    }
    match (used_index, used_len, status & DEVICE_NEEDS_RESET != 0) {
        (1, 0, _) => Ok("request completed with 0 bytes; nothing written"),
        (0, _, true) => Ok("device set DEVICE_NEEDS_RESET; nothing written"),
        _ => Err(failure(format_args!(
            "used index {used_index}, length {used_len}, status {status:#x}; expected the request refused"
        ))),
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("hostile: FAILED panic: {info}");
    sbi::shutdown()
}
