//! The benchmark mode: the cost of one SBI call and of one UART register read, in nanoseconds.
//!
//! Natively both are handled by the firmware or by QEMU's device model; under Keel the SBI call is
//! an `ecall` exit and the UART read an emulated MMIO exit, so the difference is Keel's exit cost.

use keel_sbi_check::NanosPerOperation;

use crate::console::println;
use crate::{arch, sbi};

/// Operations timed per measurement.
const OPERATIONS: u64 = 100_000;
/// The UART's line status register: readable without side effects.
const UART_LSR: usize = 0x1000_0005;

pub fn run(timebase_frequency: u64) {
    println!(
        "sbi-check: benchmark mode: {OPERATIONS} operations each, timebase {timebase_frequency} Hz"
    );
    let ticks = measure(|| {
        sbi::spec_version();
    });
    report("sbi-call-ns", ticks, timebase_frequency);
    let ticks = measure(|| {
        // SAFETY: the 16550's LSR exists natively and in a capsule, and reading it changes nothing.
        unsafe { arch::read_device_byte(UART_LSR) };
    });
    report("mmio-read-ns", ticks, timebase_frequency);
}

/// `rdtime` ticks for [`OPERATIONS`] runs of `operation`, after a short warm-up.
fn measure(mut operation: impl FnMut()) -> u64 {
    for _ in 0..100 {
        operation();
    }
    let start = arch::read_time();
    for _ in 0..OPERATIONS {
        operation();
    }
    arch::read_time().wrapping_sub(start)
}

/// Prints `keel-bench <name> <ns>`, the line `cargo xtask bench` reads.
fn report(name: &str, ticks: u64, timebase_frequency: u64) {
    match NanosPerOperation::from_ticks(ticks, OPERATIONS, timebase_frequency) {
        Some(rate) => println!("keel-bench {name} {rate}"),
        None => println!(
            "sbi-check: FAILED bench {name}: no rate from {ticks} ticks at {timebase_frequency} Hz"
        ),
    }
}
