//! Calls from Keel down to the platform's SBI firmware (OpenSBI on QEMU `virt`).

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

const EID_BASE: usize = 0x10;
const EID_TIME: usize = 0x5449_4D45;
pub const EID_IPI: usize = 0x73_5049;
pub const EID_HSM: usize = 0x48_534D;
pub const EID_SRST: usize = 0x5352_5354;
const EID_LEGACY_PUTCHAR: usize = 0x01;

/// An SBI error code returned by the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareError(pub isize);

fn call(eid: usize, fid: usize, a0: usize, a1: usize, a2: usize) -> Result<usize, FirmwareError> {
    let error: isize;
    let value: usize;
    // SAFETY: an ecall from HS-mode enters the M-mode firmware, which follows the SBI calling convention:
    // only a0 and a1 are changed.
    unsafe {
        asm!("ecall",
            inlateout("a0") a0 => error,
            inlateout("a1") a1 => value,
            in("a2") a2,
            in("a6") fid,
            in("a7") eid,
            options(nostack));
    }
    if error == 0 { Ok(value) } else { Err(FirmwareError(error)) }
}

/// Whether the firmware implements extension `eid`.
pub fn probe(eid: usize) -> bool {
    matches!(call(EID_BASE, 3, eid, 0, 0), Ok(v) if v != 0)
}

/// (mvendorid, marchid, mimpid) of this machine, as the firmware reports them.
pub fn machine_ids() -> (usize, usize, usize) {
    (
        call(EID_BASE, 4, 0, 0, 0).unwrap_or(0),
        call(EID_BASE, 5, 0, 0, 0).unwrap_or(0),
        call(EID_BASE, 6, 0, 0, 0).unwrap_or(0),
    )
}

/// The firmware's SBI implementation ID and version, for the boot log.
pub fn implementation() -> (usize, usize) {
    (call(EID_BASE, 1, 0, 0, 0).unwrap_or(0), call(EID_BASE, 2, 0, 0, 0).unwrap_or(0))
}

/// Starts hart `hartid` in S-mode at `start` with a0 = hartid, a1 = `opaque`.
pub fn hart_start(hartid: usize, start: usize, opaque: usize) -> Result<(), FirmwareError> {
    call(EID_HSM, 0, hartid, start, opaque).map(|_| ())
}

/// SBI's "already available" error: `hart_start` of a hart that is not stopped.
pub const ERROR_ALREADY_AVAILABLE: isize = -6;
/// HSM hart state "stopped".
const HART_STOPPED: usize = 1;

/// Whether the firmware reports hart `hartid` as stopped (and so startable).
pub fn hart_stopped(hartid: usize) -> bool {
    call(EID_HSM, 2, hartid, 0, 0) == Ok(HART_STOPPED)
}

/// Raises a supervisor software interrupt on the harts in `mask` (relative to `base`).
pub fn send_ipi(mask: usize, base: usize) -> Result<(), FirmwareError> {
    call(EID_IPI, 0, mask, base, 0).map(|_| ())
}

/// Programs this hart's supervisor timer through the firmware (used when Sstc is absent).
pub fn set_timer(time: u64) {
    let _ = call(EID_TIME, 0, time as usize, 0, 0);
}

/// Asks the firmware to shut the machine down (`reboot` = false) or reboot it. Returns only on failure.
pub fn system_reset(reboot: bool) -> FirmwareError {
    reset(if reboot { 1 } else { 0 }, 0)
}

/// Physical address of a `sifive,test0` device, if the machine has one (0 otherwise).
static TEST_DEVICE: AtomicUsize = AtomicUsize::new(0);

/// Remembers the machine's test device, through which a failure can be reported to whoever runs the machine.
pub fn set_test_device(base: usize) {
    TEST_DEVICE.store(base, Ordering::Release);
}

/// Shuts the machine down reporting a system failure. Returns only if nothing could stop the machine.
///
/// SRST passes the reason on, but firmware is free to ignore it (OpenSBI 1.1 does), so where the machine has a
/// `sifive,test0` device Keel writes the failure code to it directly: QEMU then exits with status 1.
pub fn shutdown_failure() -> FirmwareError {
    let test_device = TEST_DEVICE.load(Ordering::Acquire);
    if test_device != 0 {
        const FINISHER_FAIL: u32 = 0x3333;
        // SAFETY: the device tree names this MMIO register; writing the "fail" code with exit status 1 stops the
        // machine, which is what the caller asked for.
        unsafe { core::ptr::write_volatile(test_device as *mut u32, 1 << 16 | FINISHER_FAIL) };
    }
    reset(0, 1)
}

fn reset(kind: usize, reason: usize) -> FirmwareError {
    match call(EID_SRST, 0, kind, reason, 0) {
        Ok(_) => FirmwareError(-1),
        Err(error) => error,
    }
}

/// Writes one byte through the firmware's legacy console; only used before Keel has found its UART.
pub fn early_putchar(byte: u8) {
    // SAFETY: legacy SBI call 0x01 takes the character in a0 and returns in a0.
    unsafe {
        asm!("ecall", inlateout("a0") byte as usize => _, in("a7") EID_LEGACY_PUTCHAR, out("a1") _, options(nostack));
    }
}
