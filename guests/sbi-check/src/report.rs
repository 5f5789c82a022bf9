//! Check results: fixed-size text buffers for failure descriptions and the ok/failed tally.

use core::fmt;

/// Text written into a fixed-size buffer; what does not fit is dropped and the text ends in `...`.
///
/// The guest has no heap, and a truncated message is better than none.
#[derive(Clone)]
pub struct LineBuffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
    truncated: bool,
}

/// What marks a truncated buffer.
const ELLIPSIS: &[u8] = b"...";

impl<const N: usize> LineBuffer<N> {
    pub const fn new() -> Self {
        LineBuffer {
            bytes: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// The text written so far (with the ellipsis when something was dropped).
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s or whole characters are ever copied in (see `write_str`), so the bytes
        // are UTF-8; the fallback is unreachable but keeps this free of panics.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("<invalid text>")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    /// Whether nothing more fits (a writer flushes at this point).
    pub fn is_full(&self) -> bool {
        self.len == N || self.truncated
    }

    fn mark_truncated(&mut self) {
        if self.truncated {
            return;
        }
        self.truncated = true;
        // Overwrite the tail with the ellipsis, backing up to a character boundary.
        let mut cut = self.len.min(N.saturating_sub(ELLIPSIS.len()));
        while cut > 0 && cut < self.len && (self.bytes[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        let end = (cut + ELLIPSIS.len()).min(N);
        self.bytes[cut..end].copy_from_slice(&ELLIPSIS[..end - cut]);
        self.len = end;
    }
}

impl<const N: usize> Default for LineBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuffer<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if self.truncated {
            return Ok(());
        }
        let room = N - self.len;
        if text.len() <= room {
            self.bytes[self.len..self.len + text.len()].copy_from_slice(text.as_bytes());
            self.len += text.len();
        } else {
            // Copy the characters that fit, then mark the loss. Never an error: formatting a
            // failure message must not fail the check that produced it.
            let mut fits = room;
            while !text.is_char_boundary(fits) {
                fits -= 1;
            }
            self.bytes[self.len..self.len + fits].copy_from_slice(&text.as_bytes()[..fits]);
            self.len += fits;
            self.mark_truncated();
        }
        Ok(())
    }
}

impl<const N: usize> fmt::Display for LineBuffer<N> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for LineBuffer<N> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), formatter)
    }
}

/// Why a check failed: what was seen against what was expected, in words.
pub type Failure = LineBuffer<240>;

/// Builds a [`Failure`] from format arguments: `failure(format_args!("..."))`.
pub fn failure(arguments: fmt::Arguments<'_>) -> Failure {
    let mut text = Failure::new();
    // `LineBuffer::write_str` never fails, so neither does this.
    let _ = fmt::write(&mut text, arguments);
    text
}

/// Fails with "`what` is `seen`, expected `expected`" unless the two are equal.
pub fn expect_equal<T: PartialEq + fmt::Display>(
    what: &str,
    seen: T,
    expected: T,
) -> Result<(), Failure> {
    if seen == expected {
        Ok(())
    } else {
        Err(failure(format_args!(
            "{what} is {seen}, expected {expected}"
        )))
    }
}

/// How many checks passed and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u32,
    pub failed: u32,
}

impl Tally {
    pub fn record<E>(&mut self, result: &Result<(), E>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(_) => self.failed += 1,
        }
    }
}

impl fmt::Display for Tally {
    /// The summary the test harness reads: `N checks ok, M failed`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} checks ok, {} failed", self.ok, self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write as _;

    #[test]
    fn short_text_is_kept_whole() {
        let mut line = LineBuffer::<16>::new();
        write!(line, "ok {}", 42).unwrap();
        assert_eq!(line.as_str(), "ok 42");
        assert!(!line.is_full());
        line.clear();
        assert!(line.is_empty());
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        let mut line = LineBuffer::<10>::new();
        write!(line, "abcdefghijklmnop").unwrap();
        assert_eq!(line.as_str(), "abcdefg...");
        assert!(line.is_full());
        // Later writes are dropped rather than overwriting the marker.
        write!(line, "more").unwrap();
        assert_eq!(line.as_str(), "abcdefg...");
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        let mut line = LineBuffer::<8>::new();
        // Each 'é' is two bytes: the cut must not split one.
        write!(line, "ééééé").unwrap();
        assert!(line.as_str().ends_with("..."), "{}", line.as_str());
        assert!(core::str::from_utf8(line.as_bytes()).is_ok());
        let mut tiny = LineBuffer::<2>::new();
        write!(tiny, "abc").unwrap();
        assert_eq!(tiny.as_str(), "..");
    }

    #[test]
    fn expect_equal_describes_the_mismatch() {
        assert!(expect_equal("probe(TIME)", 1, 1).is_ok());
        let error = expect_equal("probe(PMU)", 1, 0).unwrap_err();
        assert_eq!(error.as_str(), "probe(PMU) is 1, expected 0");
    }

    #[test]
    fn tally_counts_and_prints_the_harness_line() {
        let mut tally = Tally::default();
        tally.record::<Failure>(&Ok(()));
        tally.record::<Failure>(&Ok(()));
        tally.record(&Err(failure(format_args!("x"))));
        assert_eq!(tally, Tally { ok: 2, failed: 1 });
        assert_eq!(tally.to_string(), "2 checks ok, 1 failed");
    }
}
