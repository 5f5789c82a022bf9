//! The host console: Keel's driver for the machine's 16550 UART, its logger and console input.

use alloc::{string::String, vec::Vec};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// Who wrote last to the console, so that lines from different sources do not run into each other.
struct Lines {
    /// Capsule id of the last writer (0 = Keel itself).
    last_writer: u32,
    /// Its name, for the tag when its line is redrawn.
    last_name: String,
    /// The cursor is at the start of a line.
    at_line_start: bool,
    /// What the last writer has written of the current line (up to [`PARTIAL_LIMIT`] bytes), so the line can be
    /// redrawn after another source's line interrupted it.
    partial: Vec<u8>,
}

/// How much of an unfinished line is kept for redrawing.
const PARTIAL_LIMIT: usize = 512;

/// Serialises output so lines from different harts and capsules do not interleave mid-line.
static LOCK: Mutex<Lines> =
    Mutex::new(Lines { last_writer: 0, last_name: String::new(), at_line_start: true, partial: Vec::new() });

/// An unfinished line that another source's output interrupted.
struct Interrupted {
    writer: u32,
    name: String,
    partial: Vec<u8>,
}

impl Lines {
    /// Ends the current line if another writer left it unfinished, remembering it for a redraw.
    fn break_foreign_line(&mut self, writer: u32) -> Option<Interrupted> {
        if self.last_writer == writer || self.at_line_start {
            return None;
        }
        put_byte(b'\r');
        put_byte(b'\n');
        self.at_line_start = true;
        Some(Interrupted {
            writer: self.last_writer,
            name: core::mem::take(&mut self.last_name),
            partial: core::mem::take(&mut self.partial),
        })
    }

    /// Redraws an interrupted line once the interrupting output has ended its own line.
    fn redraw(&mut self, interrupted: Option<Interrupted>) {
        let Some(line) = interrupted else { return };
        if !self.at_line_start || line.partial.is_empty() {
            return;
        }
        if TAGGING.load(Ordering::Acquire) && line.writer != 0 {
            put_tag(&line.name);
        }
        line.partial.iter().copied().for_each(put_byte);
        self.last_writer = line.writer;
        self.last_name = line.name;
        self.partial = line.partial;
        self.at_line_start = false;
    }
}

fn put_tag(name: &str) {
    put_byte(b'[');
    name.bytes().for_each(put_byte);
    put_byte(b']');
    put_byte(b' ');
}
/// Tag each capsule line with its capsule's name (on when more than one capsule exists).
static TAGGING: AtomicBool = AtomicBool::new(false);

/// Whether capsule lines are being tagged.
pub fn tagging() -> bool {
    TAGGING.load(Ordering::Acquire)
}

/// Turns capsule-name tags on or off.
pub fn set_tagging(on: bool) {
    TAGGING.store(on, Ordering::Release);
}

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

/// Writes a capsule's console bytes as they are (its own line discipline decides its line endings). While
/// several capsules exist, each line starts with `[name] `, and a line another capsule left unfinished is ended
/// first.
pub fn write_capsule(capsule_id: u32, name: &str, bytes: &[u8]) {
    let mut lines = LOCK.lock();
    let tagging = TAGGING.load(Ordering::Acquire);
    let mut interrupted = None;
    for &byte in bytes {
        if let Some(line) = lines.break_foreign_line(capsule_id) {
            interrupted = Some(line);
        }
        if lines.last_writer != capsule_id {
            lines.last_writer = capsule_id;
            lines.last_name = String::from(name);
        }
        if lines.at_line_start && tagging {
            put_tag(name);
        }
        put_byte(byte);
        lines.at_line_start = byte == b'\n';
        if lines.at_line_start {
            lines.partial.clear();
        } else if lines.partial.len() < PARTIAL_LIMIT {
            lines.partial.push(byte);
        }
    }
    lines.redraw(interrupted);
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

/// Prints Keel's own formatted text (whole lines) under the console lock, on a line of its own.
pub fn print(args: fmt::Arguments) {
    let mut lines = LOCK.lock();
    let interrupted = lines.break_foreign_line(0);
    let _ = Raw.write_fmt(args);
    lines.last_writer = 0;
    lines.last_name.clear();
    lines.partial.clear();
    lines.at_line_start = true;
    lines.redraw(interrupted);
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
