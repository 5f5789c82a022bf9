//! Console output through SBI: DBCN `console_write` when the implementation has it, else legacy `console_putchar`.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::sbi;

static USE_DBCN: AtomicBool = AtomicBool::new(false);

/// Chooses DBCN for all later output (after the probe says it exists).
pub fn use_dbcn(enabled: bool) {
    USE_DBCN.store(enabled, Ordering::SeqCst);
}

/// Writes bytes to the SBI console.
pub fn write_bytes(mut bytes: &[u8]) {
    if USE_DBCN.load(Ordering::SeqCst) {
        while !bytes.is_empty() {
            // The buffer is on this guest's stack or in its image: RAM, at a physical address
            // because translation is off. An implementation may write fewer bytes than asked.
            let result = sbi::console_write(bytes.as_ptr() as usize, bytes.len());
            if !result.is_success() || result.value == 0 {
                break;
            }
            bytes = bytes.get(result.value..).unwrap_or(&[]);
        }
    }
    // Whatever DBCN did not take (all of it, without DBCN) goes out a byte at a time.
    for &byte in bytes {
        sbi::legacy_console_putchar(byte);
    }
}

/// Collects formatted text into chunks so DBCN gets a few calls per line rather than one per piece.
struct ChunkWriter {
    bytes: [u8; 128],
    len: usize,
}

impl ChunkWriter {
    fn flush(&mut self) {
        write_bytes(&self.bytes[..self.len]);
        self.len = 0;
    }
}

impl fmt::Write for ChunkWriter {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if self.len == self.bytes.len() {
                self.flush();
            }
            self.bytes[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}

/// Formats and writes, then flushes.
pub fn print(arguments: fmt::Arguments<'_>) {
    let mut writer = ChunkWriter {
        bytes: [0; 128],
        len: 0,
    };
    // The writer never fails; a formatting error inside a Display impl just cuts the text short.
    let _ = fmt::Write::write_fmt(&mut writer, arguments);
    writer.flush();
}

/// `println!` for the guest: one line on the SBI console.
#[macro_export]
macro_rules! println {
    ($($argument:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($argument)*)))
    };
}
pub use crate::println;
