//! The checks: each SBI extension Keel implements, the legacy console, and MMIO to a device and to nothing.
//!
//! The same binary runs natively on OpenSBI and under Keel. Where OpenSBI answers differently and the
//! spec allows both, the check runs only when the implementation ID is Keel's, and the comment at
//! that check says what OpenSBI does instead.

use keel_sbi_check::report::{expect_equal, failure};
use keel_sbi_check::sbi_codes::{
    ErrorCode, ERR_ALREADY_AVAILABLE, ERR_INVALID_PARAM, ERR_NOT_SUPPORTED,
};
use keel_sbi_check::{Failure, SbiResult, Tally, KEEL_IMPLEMENTATION_ID};
use sbi_spec::{base, dbcn, hsm, pmu, rfnc, spi, srst, time};

use crate::console::println;
use crate::{arch, sbi, trap};

/// An extension ID no specification assigns (inside the range the spec reserves for future use).
const UNASSIGNED_EID: usize = 0x0A00_0000;
/// A BASE function ID beyond the ones the spec defines (0..=6).
const UNASSIGNED_BASE_FID: usize = 0x7ff;
/// A hart id neither QEMU's two-hart machine nor a one-vCPU capsule has.
const ABSENT_HART: usize = 7;
/// The hart mask bit of a hart this guest does not have (with base 0).
const ABSENT_HART_MASK: usize = 1 << 5;
/// The virtual (or QEMU's) 16550: its line status register and the "transmit holding register empty" bit.
const UART_LSR: usize = 0x1000_0005;
const LSR_THRE: u8 = 1 << 5;
/// An address in a hole of QEMU virt's memory map (between the RTC at 0x101000 and the ACLINT at
/// 0x2000000, per `info mtree`) that is also outside a capsule's RAM and devices: a load faults
/// both natively (QEMU reports the failed transaction as an access fault) and under Keel.
const HOLE_ADDRESS: usize = 0x0100_0000;
/// The address the architecture document and the Linux scenarios use for a foreign access.
const FOREIGN_ADDRESS: usize = 0x4000_0000;
/// `scause` of a load access fault.
const LOAD_ACCESS_FAULT: usize = 5;
/// What a faulted probe leaves in its destination register: the load never wrote it.
const PROBE_FALLBACK: u32 = 0x5a5a_5a5a;

/// What the checks need to know about where they run.
pub struct Environment {
    /// `a0` at entry.
    pub hartid: usize,
    /// `rdtime` ticks per second.
    pub timebase_frequency: u64,
    /// `sbi_get_impl_id` said Keel.
    pub on_keel: bool,
    /// `sbi_probe_extension(DBCN)` said present.
    pub has_dbcn: bool,
}

struct Checker {
    environment: Environment,
    tally: Tally,
}

impl Checker {
    fn check(&mut self, name: &str, result: Result<(), Failure>) {
        self.tally.record(&result);
        match result {
            Ok(()) => println!("sbi-check: ok {name}"),
            Err(failure) => println!("sbi-check: FAILED {name}: {failure}"),
        }
    }

    /// Runs a check whose expectation holds for Keel but not for the native firmware.
    fn keel_only(&mut self, name: &str, run: impl FnOnce(&Environment) -> Result<(), Failure>) {
        if self.environment.on_keel {
            let result = run(&self.environment);
            self.check(name, result);
        } else {
            println!("sbi-check: skipped {name}: the expectation is Keel's (implementation ID {KEEL_IMPLEMENTATION_ID:#x})");
        }
    }
}

/// Fails unless the call succeeded; passes its value on.
fn expect_success(what: &str, result: SbiResult) -> Result<usize, Failure> {
    if result.is_success() {
        Ok(result.value)
    } else {
        Err(failure(format_args!(
            "{what} returned {result}, expected SBI_SUCCESS"
        )))
    }
}

/// Fails unless the call returned exactly `expected` as its error.
fn expect_error(what: &str, result: SbiResult, expected: isize) -> Result<(), Failure> {
    if result.error == expected {
        Ok(())
    } else {
        Err(failure(format_args!(
            "{what} returned {result}, expected error {}",
            ErrorCode(expected)
        )))
    }
}

/// Runs every check and returns the tally.
pub fn run(environment: Environment) -> Tally {
    let mut checker = Checker {
        environment,
        tally: Tally::default(),
    };
    base_checks(&mut checker);
    timer_checks(&mut checker);
    ipi_checks(&mut checker);
    rfence_checks(&mut checker);
    hsm_checks(&mut checker);
    dbcn_checks(&mut checker);
    legacy_checks(&mut checker);
    mmio_checks(&mut checker);
    checker.tally
}

fn base_checks(checker: &mut Checker) {
    checker.check(
        "base: spec version is at least 0.2",
        (|| {
            let version = expect_success("sbi_get_spec_version", sbi::spec_version())?;
            let (major, minor) = ((version >> 24) & 0x7f, version & 0xff_ffff);
            if major == 0 && minor < 2 {
                return Err(failure(format_args!(
                    "spec version is {major}.{minor}, expected at least 0.2"
                )));
            }
            Ok(())
        })(),
    );
    checker.check(
        "base: implementation ID and version are readable",
        expect_success("sbi_get_impl_id", sbi::implementation_id())
            .and_then(|_| expect_success("sbi_get_impl_version", sbi::implementation_version()))
            .map(drop),
    );
    let always_present = [
        ("BASE", base::EID_BASE),
        ("TIME", time::EID_TIME),
        ("IPI", spi::EID_SPI),
        ("RFENCE", rfnc::EID_RFNC),
        ("HSM", hsm::EID_HSM),
        ("SRST", srst::EID_SRST),
    ];
    for (name, eid) in always_present {
        let mut label = keel_sbi_check::LineBuffer::<48>::new();
        let _ = core::fmt::write(&mut label, format_args!("base: probe {name} is 1"));
        checker.check(label.as_str(), probe_is(eid, 1));
    }
    // Keel implements DBCN; OpenSBI 1.1 (Debian 12's) predates it.
    checker.keel_only("base: probe DBCN is 1", |_| probe_is(dbcn::EID_DBCN, 1));
    // Keel has no PMU extension; OpenSBI implements one, so natively the probe says 1.
    checker.keel_only("base: probe PMU is 0", |_| probe_is(pmu::EID_PMU, 0));
    checker.check(
        "base: probe of an unassigned EID is 0",
        probe_is(UNASSIGNED_EID, 0),
    );
    checker.check(
        "base: mvendorid, marchid and mimpid are readable",
        (|| {
            expect_success("sbi_get_mvendorid", sbi::mvendorid())?;
            expect_success("sbi_get_marchid", sbi::marchid())?;
            expect_success("sbi_get_mimpid", sbi::mimpid())?;
            Ok(())
        })(),
    );
    checker.check(
        "base: an unknown EID is not supported",
        expect_error(
            "EID 0x0a000000",
            sbi::call(UNASSIGNED_EID, 0, [0; 6]),
            ERR_NOT_SUPPORTED,
        ),
    );
    checker.check(
        "base: an unknown BASE function is not supported",
        expect_error(
            "BASE FID 0x7ff",
            sbi::call(base::EID_BASE, UNASSIGNED_BASE_FID, [0; 6]),
            ERR_NOT_SUPPORTED,
        ),
    );
}

fn probe_is(eid: usize, expected: usize) -> Result<(), Failure> {
    let value = expect_success("sbi_probe_extension", sbi::probe_extension(eid))?;
    expect_equal("sbi_probe_extension's value", value, expected)
}

fn timer_checks(checker: &mut Checker) {
    let timebase = checker.environment.timebase_frequency;
    // Interrupts stay globally off: `wfi` still wakes for a pending interrupt enabled in `sie`, and
    // the guest then sees it in `sip` without taking a trap.
    arch::clear_sstatus(arch::SSTATUS_SIE);
    arch::set_sie(arch::IRQ_TIMER);
    let result = timer_fires(timebase);
    arch::clear_sie(arch::IRQ_TIMER);
    checker.check(
        "time: set_timer(now + 10 ms) raises the timer interrupt after the deadline",
        result,
    );
    checker.check(
        "time: set_timer(u64::MAX) clears the pending timer interrupt",
        (|| {
            expect_success("set_timer(u64::MAX)", sbi::set_timer(u64::MAX))?;
            let pending = arch::read_sip();
            if pending & arch::IRQ_TIMER != 0 {
                return Err(failure(format_args!(
                    "sip is {pending:#x} after set_timer(u64::MAX), expected STIP clear"
                )));
            }
            // `sip` alone can miss a pending VS timer interrupt (see `timer_pending`); delivery cannot.
            arch::set_sie(arch::IRQ_TIMER);
            let delivered = take_pending_interrupt(TIMER_INTERRUPT);
            arch::clear_sie(arch::IRQ_TIMER);
            if delivered {
                return Err(failure(format_args!(
                    "a timer interrupt was still delivered after set_timer(u64::MAX)"
                )));
            }
            Ok(())
        })(),
    );
}

/// `scause` of a supervisor timer interrupt.
const TIMER_INTERRUPT: usize = (1 << 63) | 5;

/// Opens `sstatus.SIE` for a moment and reports whether the interrupt `cause` (enabled in `sie` by
/// the caller) was taken. The trap handler records it and masks its source in `sie`.
fn take_pending_interrupt(cause: usize) -> bool {
    trap::reset();
    arch::set_sstatus(arch::SSTATUS_SIE);
    // A pending, enabled interrupt is taken at the next instruction boundary; the few spins only
    // give an implementation that delivers at a later boundary a chance to do so.
    for _ in 0..16 {
        core::hint::spin_loop();
    }
    arch::clear_sstatus(arch::SSTATUS_SIE);
    let record = trap::last();
    record.count > 0 && record.scause == cause
}

/// Whether the supervisor timer interrupt is pending: seen in `sip.STIP`, or delivered when
/// interrupts are opened for a moment.
///
/// The second way exists because QEMU 7.2 (Debian 12's) does not show a pending VS-level timer
/// interrupt in a VS-mode read of `sip`, whether it comes from `vstimecmp` or from `hvip.VSTIP`,
/// although it delivers it; QEMU 10 shows it in `sip` too.
fn timer_pending() -> bool {
    arch::read_sip() & arch::IRQ_TIMER != 0 || take_pending_interrupt(TIMER_INTERRUPT)
}

/// Arms the timer 10 ms ahead and sleeps in `wfi` until the timer interrupt is pending, for at most one second of
/// `rdtime`. If no interrupt ever arrives, `wfi` cannot return either, and the test harness's time
/// limit reports the hang; the last line printed then names the check before this one.
fn timer_fires(timebase: u64) -> Result<(), Failure> {
    expect_success("set_timer(u64::MAX)", sbi::set_timer(u64::MAX))?;
    let before = arch::read_sip();
    if before & arch::IRQ_TIMER != 0 {
        return Err(failure(format_args!(
            "sip.STIP is pending ({before:#x}) with the timer at u64::MAX"
        )));
    }
    let delay = timebase / 100;
    let start = arch::read_time();
    let deadline = start + delay;
    expect_success("set_timer(now + 10 ms)", sbi::set_timer(deadline))?;
    loop {
        // Pending state before time: an interrupt seen here was raised no later than the time read next.
        let pending = timer_pending();
        let now = arch::read_time();
        if pending {
            if now < deadline {
                return Err(failure(format_args!(
                    "the timer interrupt was pending {} ticks before the deadline",
                    deadline - now
                )));
            }
            return Ok(());
        }
        if now - start > timebase {
            return Err(failure(format_args!(
                "no timer interrupt pending one second after set_timer(now + 10 ms) (sip {:#x})",
                arch::read_sip()
            )));
        }
        arch::wait_for_interrupt();
    }
}

/// Polls `sip` for `bit` for at most one second of `rdtime`; returns whether it was seen.
fn wait_pending(bit: usize, timebase: u64) -> bool {
    let start = arch::read_time();
    while arch::read_time() - start <= timebase {
        if arch::read_sip() & bit != 0 {
            return true;
        }
    }
    false
}

fn ipi_checks(checker: &mut Checker) {
    let hartid = checker.environment.hartid;
    let timebase = checker.environment.timebase_frequency;
    arch::clear_sip(arch::IRQ_SOFTWARE);
    checker.check(
        "ipi: send_ipi to self raises sip.SSIP",
        (|| {
            expect_success("send_ipi(mask 1, base self)", sbi::send_ipi(1, hartid))?;
            if !wait_pending(arch::IRQ_SOFTWARE, timebase) {
                return Err(failure(format_args!(
                    "sip.SSIP still clear one second after send_ipi to self (sip {:#x})",
                    arch::read_sip()
                )));
            }
            Ok(())
        })(),
    );
    checker.check(
        "ipi: csrc sip.SSIP clears it",
        (|| {
            arch::clear_sip(arch::IRQ_SOFTWARE);
            let pending = arch::read_sip();
            if pending & arch::IRQ_SOFTWARE != 0 {
                return Err(failure(format_args!(
                    "sip is {pending:#x} after clearing SSIP, expected SSIP clear"
                )));
            }
            Ok(())
        })(),
    );
}

fn rfence_checks(checker: &mut Checker) {
    let hartid = checker.environment.hartid;
    checker.check(
        "rfence: remote_fence_i to self succeeds",
        expect_success(
            "remote_fence_i(mask 1, base self)",
            sbi::remote_fence_i(1, hartid),
        )
        .map(drop),
    );
    checker.check(
        "rfence: remote_sfence_vma to self succeeds",
        expect_success(
            "remote_sfence_vma(mask 1, base self, all addresses)",
            sbi::remote_sfence_vma(1, hartid, 0, usize::MAX),
        )
        .map(drop),
    );
    // The spec's hart-mask errors make a bit naming a hart that does not exist INVALID_PARAM, which
    // Keel reports. OpenSBI 1.1 instead drops the harts it cannot interrupt from the mask and
    // succeeds, so natively this is not checked.
    checker.keel_only(
        "rfence: remote_fence_i to an absent hart is INVALID_PARAM",
        |_| {
            expect_error(
                "remote_fence_i(mask 1 << 5, base 0)",
                sbi::remote_fence_i(ABSENT_HART_MASK, 0),
                ERR_INVALID_PARAM,
            )
        },
    );
    checker.keel_only(
        "rfence: remote_sfence_vma to an absent hart is INVALID_PARAM",
        |_| {
            expect_error(
                "remote_sfence_vma(mask 1 << 5, base 0)",
                sbi::remote_sfence_vma(ABSENT_HART_MASK, 0, 0, usize::MAX),
                ERR_INVALID_PARAM,
            )
        },
    );
}

fn hsm_checks(checker: &mut Checker) {
    let hartid = checker.environment.hartid;
    checker.check(
        "hsm: hart_get_status of self is STARTED",
        (|| {
            let status = expect_success("hart_get_status(self)", sbi::hart_get_status(hartid))?;
            expect_equal(
                "hart_get_status(self)'s state",
                status,
                hsm::hart_state::STARTED,
            )
        })(),
    );
    checker.check(
        "hsm: hart_get_status of an absent hart is INVALID_PARAM",
        expect_error(
            "hart_get_status(7)",
            sbi::hart_get_status(ABSENT_HART),
            ERR_INVALID_PARAM,
        ),
    );
    checker.check(
        "hsm: hart_start of self is ALREADY_AVAILABLE",
        expect_error(
            "hart_start(self)",
            sbi::hart_start(hartid, arch::entry_address(), 0),
            ERR_ALREADY_AVAILABLE,
        ),
    );
}

fn dbcn_checks(checker: &mut Checker) {
    if !checker.environment.has_dbcn {
        println!("sbi-check: skipped dbcn: the implementation does not have the DBCN extension");
        return;
    }
    const LINE: &[u8] = b"sbi-check: this line is one DBCN console_write\n";
    checker.check(
        "dbcn: console_write of a buffer in RAM prints it",
        (|| {
            let written = expect_success(
                "console_write",
                sbi::console_write(LINE.as_ptr() as usize, LINE.len()),
            )?;
            expect_equal("console_write's byte count", written, LINE.len())
        })(),
    );
    // Keel refuses a buffer outside the capsule's RAM. Natively, OpenSBI (1.3 and later have DBCN)
    // lets S-mode name any address its PMP setup allows, which includes QEMU's boot ROM at 0x1000.
    checker.keel_only(
        "dbcn: console_write of a buffer outside RAM is INVALID_PARAM",
        |_| {
            expect_error(
                "console_write(0x1000, 16)",
                sbi::console_write(0x1000, 16),
                ERR_INVALID_PARAM,
            )
        },
    );
}

fn legacy_checks(checker: &mut Checker) {
    const LINE: &[u8] = b"sbi-check: this line is legacy console_putchar calls\n";
    let mut refused = 0;
    let mut last_error = 0;
    for &byte in LINE {
        let result = sbi::legacy_console_putchar(byte);
        if result != 0 {
            refused += 1;
            last_error = result;
        }
    }
    let result = if refused == 0 {
        Ok(())
    } else {
        Err(failure(format_args!(
            "{refused} of {} console_putchar calls returned non-zero (last {last_error}), expected 0",
            LINE.len()
        )))
    };
    checker.check("legacy: console_putchar prints a line", result);
}

fn mmio_checks(checker: &mut Checker) {
    checker.check(
        "mmio: UART LSR has THRE set",
        (|| {
            // SAFETY: 0x10000000 is the 16550 both natively and in a capsule; reading its line status
            // register has no side effect.
            let status = unsafe { arch::read_device_byte(UART_LSR) };
            if status & LSR_THRE == 0 {
                return Err(failure(format_args!(
                    "LSR is {status:#x}, expected bit 5 (THRE) set"
                )));
            }
            Ok(())
        })(),
    );
    checker.check(
        "mmio: a load from a hole in the memory map is a load access fault",
        load_faults(HOLE_ADDRESS),
    );
    // Natively 0x40000000 is QEMU's PCIe memory window, where a load without a device reads all ones
    // instead of faulting; in a capsule it is neither RAM nor a device.
    checker.keel_only(
        "mmio: a load from 0x40000000 is a load access fault",
        |_| load_faults(FOREIGN_ADDRESS),
    );
}

/// Loads from `address`, expecting exactly one trap: a load access fault naming that address, after
/// which execution continues at the next instruction.
fn load_faults(address: usize) -> Result<(), Failure> {
    trap::reset();
    // SAFETY: the trap vector that skips faulting loads is installed at entry; nothing answers at
    // `address` (a hole natively, foreign memory in a capsule), so even a successful read has no
    // side effect.
    let value = unsafe { arch::probe_load_u32(address, PROBE_FALLBACK) };
    let trap = trap::last();
    if trap.count == 0 {
        return Err(failure(format_args!(
            "the load from {address:#x} did not trap; it read {value:#x}"
        )));
    }
    expect_equal("the number of traps", trap.count, 1)?;
    if trap.scause != LOAD_ACCESS_FAULT {
        return Err(failure(format_args!(
            "scause is {:#x} (stval {:#x}), expected {LOAD_ACCESS_FAULT} (load access fault)",
            trap.scause, trap.stval
        )));
    }
    if trap.stval != address {
        return Err(failure(format_args!(
            "stval is {:#x}, expected the address {address:#x}",
            trap.stval
        )));
    }
    expect_equal("the load's destination register", value, PROBE_FALLBACK)
}

/// Prints what the checks run against, before they start.
pub fn describe(environment: &Environment) {
    let version = sbi::spec_version().value;
    let id = sbi::implementation_id().value;
    let implementation_version = sbi::implementation_version().value;
    let name = match id {
        KEEL_IMPLEMENTATION_ID => "Keel",
        base::impl_id::OPEN_SBI => "OpenSBI",
        _ => "another implementation",
    };
    println!(
        "sbi-check: SBI v{}.{} from {name} (implementation ID {id:#x}, version {implementation_version:#x}); hart {}; timebase {} Hz; console via {}",
        (version >> 24) & 0x7f,
        version & 0xff_ffff,
        environment.hartid,
        environment.timebase_frequency,
        if environment.has_dbcn { "DBCN" } else { "legacy console_putchar" }
    );
}
