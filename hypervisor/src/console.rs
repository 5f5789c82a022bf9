//! The host console: Keel's driver for the machine's 16550 UART, its logger and console input.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;

use crate::firmware;

/// Register offsets of a 16550 with a one-byte stride.
const THR: usize = 0;
const RBR: usize = 0;
const IER: usize = 1;
const LSR: usize = 5;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
const IER_RX_AVAILABLE: u8 = 1 << 0;

/// Physical base of the host UART; 0 until the device tree has been read.
static UART_BASE: AtomicUsize = AtomicUsize::new(0);
/// Serialises whole lines so output from different harts does not interleave mid-line.
static LOCK: Mutex<()> = Mutex::new(());

/// Starts using the UART at `base` for output (and later input).
pub fn init(base: usize) {
    UART_BASE.store(base, Ordering::Release);
}

fn reg(offset: usize) -> *mut u8 {
    (UART_BASE.load(Ordering::Acquire) + offset) as *mut u8
}

fn put_byte(byte: u8) {
    if UART_BASE.load(Ordering::Acquire) == 0 {
        firmware::early_putchar(byte);
        return;
    }
    // SAFETY: the UART's registers are MMIO the device tree gave us; byte accesses are how a 16550 is driven.
    unsafe {
        while core::ptr::read_volatile(reg(LSR)) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        core::ptr::write_volatile(reg(THR), byte);
    }
}

/// Reads one byte of host input if the UART has one.
pub fn get_byte() -> Option<u8> {
    if UART_BASE.load(Ordering::Acquire) == 0 {
        return None;
    }
    // SAFETY: as in `put_byte`.
    unsafe {
        if core::ptr::read_volatile(reg(LSR)) & LSR_DATA_READY != 0 {
            Some(core::ptr::read_volatile(reg(RBR)))
        } else {
            None
        }
    }
}

/// Asks the UART to interrupt when input arrives.
pub fn enable_input_interrupt() {
    // SAFETY: as in `put_byte`; IER only selects which events raise the UART's interrupt line.
    unsafe { core::ptr::write_volatile(reg(IER), IER_RX_AVAILABLE) };
}

/// Writes guest console bytes as they are (a guest's own line discipline decides its line endings).
pub fn write_bytes(bytes: &[u8]) {
    let _guard = LOCK.lock();
    for &byte in bytes {
        put_byte(byte);
    }
}

struct Raw;

impl Write for Raw {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                put_byte(b'\r');
            }
            put_byte(byte);
        }
        Ok(())
    }
}

/// Prints formatted text under the console lock.
pub fn print(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let _ = Raw.write_fmt(args);
}

/// Prints while panicking: does not wait for a lock another hart may hold forever.
pub fn print_unlocked(args: fmt::Arguments) {
    let _ = Raw.write_fmt(args);
}

/// The `log` backend: every line names the hart that wrote it.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            print(format_args!("[keel h{}] {:5} {}\n", crate::hart::id(), record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the logger. The level comes from the `KEEL_LOG` build setting (error, warn, info, debug, trace).
pub fn init_logger() {
    let level = match option_env!("KEEL_LOG") {
        Some("error") => log::LevelFilter::Error,
        Some("warn") => log::LevelFilter::Warn,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
