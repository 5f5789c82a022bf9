//! A RISC-V platform-level interrupt controller with the register layout of QEMU's `virt`.
//!
//! Register map (offsets from the PLIC base, all registers 32 bits wide):
//!
//! | offset                         | register                                   |
//! |--------------------------------|--------------------------------------------|
//! | `0x000000 + 4 * source`        | priority of `source` (source 0 reads 0)    |
//! | `0x001000 + 4 * word`          | pending bits of sources `32*word ..`       |
//! | `0x002000 + 0x80 * context`    | enable bits of `context`, 32 words         |
//! | `0x200000 + 0x1000 * context`  | priority threshold of `context`            |
//! | `0x200004 + 0x1000 * context`  | claim (read) / complete (write)            |
//!
//! Priorities and thresholds are 3 bits wide (0..=7), the same seven active levels that
//! QEMU's `virt` PLIC offers; wider values are truncated on write. Priority 0 means
//! "never interrupt".
//!
//! Every source is level-triggered behind a gateway: a source is pending while its level
//! is high and it is not in service. Claiming a source takes it into service and clears
//! its pending bit; completing it ends service, after which a still-high level makes it
//! pending again. A level that drops before the source is claimed withdraws the request,
//! so a guest never claims a source whose device has already been serviced.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Largest number of interrupt sources (including the reserved source 0).
pub const MAX_SOURCES: u32 = 1024;
/// Largest number of contexts the register layout can address.
pub const MAX_CONTEXTS: usize = 15872;
/// Highest priority and threshold value; register writes are masked to this range.
pub const MAX_PRIORITY: u32 = 7;

const PRIORITY_BASE: u64 = 0x0;
const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;
const THRESHOLD_OFFSET: u64 = 0x0;
const CLAIM_COMPLETE_OFFSET: u64 = 0x4;

/// Number of 32-bit words needed for one bit per source.
const SOURCE_WORDS: usize = (MAX_SOURCES / 32) as usize;

/// Why a guest access to the PLIC was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlicError {
    /// The access is not 4 bytes wide.
    UnsupportedSize { offset: u64, size: u8 },
    /// The offset is not a multiple of 4.
    Misaligned { offset: u64 },
    /// The offset addresses a priority, pending or enable bit of a source beyond the
    /// configured number of sources.
    NoSuchSource { offset: u64, source: u64 },
    /// The offset addresses an enable, threshold or claim register of a context beyond
    /// the configured number of contexts.
    NoSuchContext { offset: u64, context: u64 },
    /// The offset lies in a reserved gap of the register map.
    Reserved { offset: u64 },
}

impl fmt::Display for PlicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlicError::UnsupportedSize { offset, size } => write!(
                f,
                "PLIC access of {size} bytes at offset {offset:#x}: only 4-byte accesses are supported"
            ),
            PlicError::Misaligned { offset } => {
                write!(f, "PLIC access at offset {offset:#x} is not 4-byte aligned")
            }
            PlicError::NoSuchSource { offset, source } => write!(
                f,
                "PLIC offset {offset:#x} addresses interrupt source {source}, which does not exist"
            ),
            PlicError::NoSuchContext { offset, context } => write!(
                f,
                "PLIC offset {offset:#x} addresses context {context}, which does not exist"
            ),
            PlicError::Reserved { offset } => {
                write!(f, "PLIC offset {offset:#x} is in a reserved part of the register map")
            }
        }
    }
}

impl core::error::Error for PlicError {}

/// A decoded register address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Register {
    Priority(u32),
    Pending(usize),
    Enable { context: usize, word: usize },
    Threshold(usize),
    ClaimComplete(usize),
}

/// Per-context state.
#[derive(Debug, Clone)]
struct Context {
    enable: [u32; SOURCE_WORDS],
    threshold: u32,
}

impl Context {
    const fn new() -> Self {
        Self {
            enable: [0; SOURCE_WORDS],
            threshold: 0,
        }
    }

    fn enabled(&self, source: u32) -> bool {
        bit(&self.enable, source)
    }
}

/// A virtual PLIC.
#[derive(Debug, Clone)]
pub struct Plic {
    sources: u32,
    priority: [u32; MAX_SOURCES as usize],
    /// Gateway requests that have not been claimed yet.
    pending: [u32; SOURCE_WORDS],
    /// Sources claimed by some context and not yet completed.
    in_service: [u32; SOURCE_WORDS],
    /// Current level of each source's interrupt line.
    level: [u32; SOURCE_WORDS],
    contexts: Vec<Context>,
}

fn bit(words: &[u32; SOURCE_WORDS], source: u32) -> bool {
    words
        .get((source / 32) as usize)
        .is_some_and(|word| word & (1 << (source % 32)) != 0)
}

fn set_bit(words: &mut [u32; SOURCE_WORDS], source: u32, value: bool) {
    if let Some(word) = words.get_mut((source / 32) as usize) {
        if value {
            *word |= 1 << (source % 32);
        } else {
            *word &= !(1 << (source % 32));
        }
    }
}

impl Plic {
    /// Creates a PLIC with `sources` interrupt sources (counting the reserved source 0,
    /// so valid ids are `1..sources`) and `contexts` contexts, all disabled.
    ///
    /// `sources` is clamped to `1..=MAX_SOURCES` and `contexts` to `..=MAX_CONTEXTS`,
    /// the limits of the register layout.
    pub fn new(sources: u32, contexts: usize) -> Self {
        Self {
            sources: sources.clamp(1, MAX_SOURCES),
            priority: [0; MAX_SOURCES as usize],
            pending: [0; SOURCE_WORDS],
            in_service: [0; SOURCE_WORDS],
            level: [0; SOURCE_WORDS],
            contexts: vec![Context::new(); contexts.min(MAX_CONTEXTS)],
        }
    }

    /// Number of sources, including the reserved source 0.
    pub fn sources(&self) -> u32 {
        self.sources
    }

    /// Number of contexts.
    pub fn contexts(&self) -> usize {
        self.contexts.len()
    }

    /// Size in bytes of the MMIO window covering every context's registers.
    pub fn mmio_size(&self) -> u64 {
        CONTEXT_BASE + CONTEXT_STRIDE * self.contexts.len() as u64
    }

    /// Clears all priorities, enables, thresholds, pending and in-service state, and the
    /// recorded source levels; devices re-assert their lines through
    /// [`Plic::set_level`].
    pub fn reset(&mut self) {
        *self = Self::new(self.sources, self.contexts.len());
    }

    /// Reads a 32-bit register. Reading a claim register claims an interrupt.
    pub fn read(&mut self, offset: u64, size: u8) -> Result<u32, PlicError> {
        let value = match self.decode(offset, size)? {
            Register::Priority(source) => self.priority[source as usize],
            Register::Pending(word) => self.pending[word],
            Register::Enable { context, word } => self.contexts[context].enable[word],
            Register::Threshold(context) => self.contexts[context].threshold,
            Register::ClaimComplete(context) => self.claim(context),
        };
        Ok(value)
    }

    /// Writes a 32-bit register. Writes to the read-only pending bits and to source 0's
    /// priority are ignored; writing a claim register completes the source written.
    pub fn write(&mut self, offset: u64, size: u8, value: u32) -> Result<(), PlicError> {
        match self.decode(offset, size)? {
            Register::Priority(source) => {
                if source != 0 {
                    self.priority[source as usize] = value & MAX_PRIORITY;
                }
            }
            Register::Pending(_) => {}
            Register::Enable { context, word } => {
                let valid = self.valid_source_mask(word);
                self.contexts[context].enable[word] = value & valid;
            }
            Register::Threshold(context) => {
                self.contexts[context].threshold = value & MAX_PRIORITY;
            }
            Register::ClaimComplete(context) => self.complete(context, value),
        }
        Ok(())
    }

    /// Sets the level of a source's interrupt line. Source 0 and ids beyond the
    /// configured sources have no line and are ignored.
    pub fn set_level(&mut self, source: u32, high: bool) {
        if source == 0 || source >= self.sources {
            return;
        }
        set_bit(&mut self.level, source, high);
        // The gateway holds back a new request while the source is in service.
        if !bit(&self.in_service, source) {
            set_bit(&mut self.pending, source, high);
        }
    }

    /// Whether the external interrupt of `context` should be asserted now: some source
    /// is pending, enabled for the context, and above its threshold. False for contexts
    /// that do not exist.
    pub fn context_pending(&self, context: usize) -> bool {
        self.best_candidate(context).is_some()
    }

    /// Claims the highest-priority pending interrupt for `context` (ties go to the lowest
    /// id), exactly as a read of its claim register does. Returns 0 if there is none or
    /// the context does not exist.
    pub fn claim(&mut self, context: usize) -> u32 {
        let Some(source) = self.best_candidate(context) else {
            return 0;
        };
        set_bit(&mut self.pending, source, false);
        set_bit(&mut self.in_service, source, true);
        source
    }

    /// Completes `source` for `context`, exactly as a write of its claim register does.
    ///
    /// As the PLIC specification requires, a completion naming a source that is not
    /// enabled for the context is ignored; so is one for a source that is not in
    /// service, which keeps a stray completion from re-arming a request early.
    pub fn complete(&mut self, context: usize, source: u32) {
        let Some(state) = self.contexts.get(context) else {
            return;
        };
        if source == 0 || source >= self.sources || !state.enabled(source) {
            return;
        }
        if !bit(&self.in_service, source) {
            return;
        }
        set_bit(&mut self.in_service, source, false);
        let still_high = bit(&self.level, source);
        set_bit(&mut self.pending, source, still_high);
    }

    /// The source that a claim by `context` would return now.
    fn best_candidate(&self, context: usize) -> Option<u32> {
        let state = self.contexts.get(context)?;
        let mut best: Option<(u32, u32)> = None;
        for (word_index, (&pending, &enabled)) in
            self.pending.iter().zip(state.enable.iter()).enumerate()
        {
            let mut candidates = pending & enabled;
            while candidates != 0 {
                let source = word_index as u32 * 32 + candidates.trailing_zeros();
                candidates &= candidates - 1;
                let priority = self.priority[source as usize];
                // Sources are visited in ascending order, so only a strictly higher
                // priority displaces the current choice: ties go to the lowest id.
                let beats_best = best.is_none_or(|(_, best_priority)| priority > best_priority);
                if priority > state.threshold && beats_best {
                    best = Some((source, priority));
                }
            }
        }
        best.map(|(source, _)| source)
    }

    /// Bits of enable word `word` that correspond to existing sources other than 0.
    fn valid_source_mask(&self, word: usize) -> u32 {
        let first = word as u32 * 32;
        let count = self.sources.saturating_sub(first).min(32);
        let mut mask = if count == 32 {
            u32::MAX
        } else {
            (1u32 << count) - 1
        };
        if word == 0 {
            mask &= !1;
        }
        mask
    }

    /// Maps an access to the register it addresses, rejecting anything that is not a
    /// valid 32-bit register of this configuration.
    fn decode(&self, offset: u64, size: u8) -> Result<Register, PlicError> {
        if size != 4 {
            return Err(PlicError::UnsupportedSize { offset, size });
        }
        if !offset.is_multiple_of(4) {
            return Err(PlicError::Misaligned { offset });
        }
        let sources = u64::from(self.sources);
        let contexts = self.contexts.len() as u64;
        if offset < PENDING_BASE {
            let source = (offset - PRIORITY_BASE) / 4;
            if source >= sources {
                return Err(PlicError::NoSuchSource { offset, source });
            }
            return Ok(Register::Priority(source as u32));
        }
        if offset < ENABLE_BASE {
            let word = (offset - PENDING_BASE) / 4;
            if word >= SOURCE_WORDS as u64 {
                return Err(PlicError::Reserved { offset });
            }
            if word * 32 >= sources {
                return Err(PlicError::NoSuchSource {
                    offset,
                    source: word * 32,
                });
            }
            return Ok(Register::Pending(word as usize));
        }
        if offset < CONTEXT_BASE {
            let relative = offset - ENABLE_BASE;
            let context = relative / ENABLE_STRIDE;
            let word = (relative % ENABLE_STRIDE) / 4;
            if context >= MAX_CONTEXTS as u64 {
                return Err(PlicError::Reserved { offset });
            }
            if context >= contexts {
                return Err(PlicError::NoSuchContext { offset, context });
            }
            if word * 32 >= sources {
                return Err(PlicError::NoSuchSource {
                    offset,
                    source: word * 32,
                });
            }
            return Ok(Register::Enable {
                context: context as usize,
                word: word as usize,
            });
        }
        let relative = offset - CONTEXT_BASE;
        let context = relative / CONTEXT_STRIDE;
        if context >= contexts {
            return Err(PlicError::NoSuchContext { offset, context });
        }
        match relative % CONTEXT_STRIDE {
            THRESHOLD_OFFSET => Ok(Register::Threshold(context as usize)),
            CLAIM_COMPLETE_OFFSET => Ok(Register::ClaimComplete(context as usize)),
            _ => Err(PlicError::Reserved { offset }),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::string::ToString;

    fn priority_offset(source: u32) -> u64 {
        PRIORITY_BASE + 4 * u64::from(source)
    }

    fn enable_offset(context: usize, word: usize) -> u64 {
        ENABLE_BASE + ENABLE_STRIDE * context as u64 + 4 * word as u64
    }

    fn threshold_offset(context: usize) -> u64 {
        CONTEXT_BASE + CONTEXT_STRIDE * context as u64 + THRESHOLD_OFFSET
    }

    fn claim_offset(context: usize) -> u64 {
        CONTEXT_BASE + CONTEXT_STRIDE * context as u64 + CLAIM_COMPLETE_OFFSET
    }

    fn set_priority(plic: &mut Plic, source: u32, priority: u32) {
        plic.write(priority_offset(source), 4, priority)
            .expect("priority write");
    }

    fn enable(plic: &mut Plic, context: usize, source: u32) {
        let word = (source / 32) as usize;
        let current = plic
            .read(enable_offset(context, word), 4)
            .expect("enable read");
        plic.write(
            enable_offset(context, word),
            4,
            current | 1 << (source % 32),
        )
        .expect("enable write");
    }

    fn set_threshold(plic: &mut Plic, context: usize, threshold: u32) {
        plic.write(threshold_offset(context), 4, threshold)
            .expect("threshold write");
    }

    fn claim(plic: &mut Plic, context: usize) -> u32 {
        plic.read(claim_offset(context), 4).expect("claim read")
    }

    fn complete(plic: &mut Plic, context: usize, source: u32) {
        plic.write(claim_offset(context), 4, source)
            .expect("complete write");
    }

    /// A PLIC like QEMU virt's for one hart: 96 sources, contexts 0 (M) and 1 (S).
    fn plic_with_sources_enabled(sources: &[u32]) -> Plic {
        let mut plic = Plic::new(96, 2);
        for &source in sources {
            set_priority(&mut plic, source, 1);
            enable(&mut plic, 1, source);
        }
        plic
    }

    #[test]
    fn claim_orders_by_priority_then_lowest_id() {
        let mut plic = plic_with_sources_enabled(&[3, 5, 10, 40, 95]);
        set_priority(&mut plic, 5, 2);
        set_priority(&mut plic, 40, 7);
        set_priority(&mut plic, 95, 2);
        for source in [3, 5, 10, 40, 95] {
            plic.set_level(source, true);
        }
        assert!(plic.context_pending(1));
        assert_eq!(claim(&mut plic, 1), 40);
        assert_eq!(claim(&mut plic, 1), 5, "priority 2 tie: lower id first");
        assert_eq!(claim(&mut plic, 1), 95);
        assert_eq!(claim(&mut plic, 1), 3, "priority 1 tie: lower id first");
        assert_eq!(claim(&mut plic, 1), 10);
        assert_eq!(claim(&mut plic, 1), 0, "nothing left to claim");
        assert!(!plic.context_pending(1));
    }

    #[test]
    fn claim_clears_the_pending_bit() {
        let mut plic = plic_with_sources_enabled(&[1, 33]);
        plic.set_level(1, true);
        plic.set_level(33, true);
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0b10));
        assert_eq!(plic.read(PENDING_BASE + 4, 4), Ok(0b10));
        assert_eq!(claim(&mut plic, 1), 1);
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0));
        assert_eq!(plic.read(PENDING_BASE + 4, 4), Ok(0b10));
    }

    #[test]
    fn threshold_masks_priorities_at_or_below_it() {
        let mut plic = plic_with_sources_enabled(&[1, 2]);
        set_priority(&mut plic, 1, 3);
        set_priority(&mut plic, 2, 4);
        plic.set_level(1, true);
        plic.set_level(2, true);
        set_threshold(&mut plic, 1, 4);
        assert!(
            !plic.context_pending(1),
            "priority equal to threshold is masked"
        );
        assert_eq!(claim(&mut plic, 1), 0);
        set_threshold(&mut plic, 1, 3);
        assert!(plic.context_pending(1));
        assert_eq!(claim(&mut plic, 1), 2);
        assert_eq!(claim(&mut plic, 1), 0, "source 1 is at the threshold");
        set_threshold(&mut plic, 1, 0);
        assert_eq!(claim(&mut plic, 1), 1);
    }

    #[test]
    fn priority_zero_never_interrupts() {
        let mut plic = plic_with_sources_enabled(&[7]);
        set_priority(&mut plic, 7, 0);
        plic.set_level(7, true);
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(1 << 7), "still pending");
        assert!(!plic.context_pending(1));
        assert_eq!(claim(&mut plic, 1), 0);
    }

    #[test]
    fn enables_are_per_context() {
        let mut plic = Plic::new(32, 3);
        set_priority(&mut plic, 4, 1);
        set_priority(&mut plic, 6, 1);
        enable(&mut plic, 0, 4);
        enable(&mut plic, 2, 6);
        plic.set_level(4, true);
        plic.set_level(6, true);
        assert!(plic.context_pending(0));
        assert!(!plic.context_pending(1));
        assert!(plic.context_pending(2));
        assert_eq!(claim(&mut plic, 1), 0);
        assert_eq!(claim(&mut plic, 2), 6);
        assert_eq!(claim(&mut plic, 0), 4);
        // Out-of-range contexts are simply never pending.
        assert!(!plic.context_pending(3));
        assert_eq!(plic.claim(99), 0);
    }

    #[test]
    fn a_claimed_source_is_not_claimed_by_another_context() {
        let mut plic = plic_with_sources_enabled(&[9]);
        enable(&mut plic, 0, 9);
        plic.set_level(9, true);
        assert!(plic.context_pending(0) && plic.context_pending(1));
        assert_eq!(claim(&mut plic, 0), 9);
        assert!(!plic.context_pending(1));
        assert_eq!(claim(&mut plic, 1), 0);
    }

    #[test]
    fn gateway_repends_after_complete_while_level_is_high() {
        let mut plic = plic_with_sources_enabled(&[10]);
        plic.set_level(10, true);
        assert_eq!(claim(&mut plic, 1), 10);
        assert!(!plic.context_pending(1), "in service");
        complete(&mut plic, 1, 10);
        assert!(plic.context_pending(1), "level still high");
        assert_eq!(claim(&mut plic, 1), 10);
        plic.set_level(10, false);
        complete(&mut plic, 1, 10);
        assert!(!plic.context_pending(1), "level dropped while in service");
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0));
    }

    #[test]
    fn gateway_holds_requests_while_in_service() {
        let mut plic = plic_with_sources_enabled(&[2]);
        plic.set_level(2, true);
        assert_eq!(claim(&mut plic, 1), 2);
        // Toggling the line while in service does not create a new request.
        plic.set_level(2, false);
        plic.set_level(2, true);
        assert!(!plic.context_pending(1));
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0));
        complete(&mut plic, 1, 2);
        assert_eq!(claim(&mut plic, 1), 2);
    }

    #[test]
    fn dropping_the_level_before_the_claim_withdraws_the_request() {
        let mut plic = plic_with_sources_enabled(&[3]);
        plic.set_level(3, true);
        assert!(plic.context_pending(1));
        plic.set_level(3, false);
        assert!(!plic.context_pending(1));
        assert_eq!(claim(&mut plic, 1), 0);
    }

    #[test]
    fn stray_completions_are_ignored() {
        let mut plic = plic_with_sources_enabled(&[4, 5]);
        plic.set_level(4, true);
        // Completing a source that was never claimed does nothing.
        complete(&mut plic, 1, 4);
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(1 << 4));
        assert_eq!(claim(&mut plic, 1), 4);
        // Completing a different source, source 0, or ids out of range leaves 4 in
        // service.
        for bogus in [5, 0, 96, u32::MAX] {
            complete(&mut plic, 1, bogus);
        }
        assert!(!plic.context_pending(1));
        // A completion from a context that does not have the source enabled is ignored.
        complete(&mut plic, 0, 4);
        assert!(!plic.context_pending(1));
        complete(&mut plic, 1, 4);
        assert!(plic.context_pending(1));
    }

    #[test]
    fn set_level_ignores_nonexistent_sources() {
        let mut plic = Plic::new(8, 1);
        plic.set_level(0, true);
        plic.set_level(8, true);
        plic.set_level(u32::MAX, true);
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0));
    }

    #[test]
    fn register_values_are_masked() {
        let mut plic = Plic::new(40, 1);
        set_priority(&mut plic, 1, 0xffff_ffff);
        assert_eq!(plic.read(priority_offset(1), 4), Ok(MAX_PRIORITY));
        set_priority(&mut plic, 0, 5);
        assert_eq!(
            plic.read(priority_offset(0), 4),
            Ok(0),
            "source 0 is hardwired"
        );
        set_threshold(&mut plic, 0, 0x1f);
        assert_eq!(plic.read(threshold_offset(0), 4), Ok(MAX_PRIORITY));
        // Enable bits exist only for sources 1..40.
        plic.write(enable_offset(0, 0), 4, u32::MAX)
            .expect("enable write");
        plic.write(enable_offset(0, 1), 4, u32::MAX)
            .expect("enable write");
        assert_eq!(plic.read(enable_offset(0, 0), 4), Ok(!1));
        assert_eq!(plic.read(enable_offset(0, 1), 4), Ok(0xff));
    }

    #[test]
    fn pending_is_read_only() {
        let mut plic = plic_with_sources_enabled(&[1]);
        assert_eq!(plic.write(PENDING_BASE, 4, u32::MAX), Ok(()));
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0));
        assert!(!plic.context_pending(1));
        plic.set_level(1, true);
        plic.write(PENDING_BASE, 4, 0).expect("pending write");
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0b10));
    }

    #[test]
    fn bad_sizes_and_alignment_are_rejected() {
        let mut plic = Plic::new(32, 2);
        for size in [0u8, 1, 2, 3, 8, 255] {
            assert_eq!(
                plic.read(threshold_offset(0), size),
                Err(PlicError::UnsupportedSize {
                    offset: threshold_offset(0),
                    size
                })
            );
            assert_eq!(
                plic.write(priority_offset(1), size, 1),
                Err(PlicError::UnsupportedSize {
                    offset: priority_offset(1),
                    size
                })
            );
        }
        for offset in [1u64, 2, 3, 0x1001, 0x200006] {
            assert_eq!(plic.read(offset, 4), Err(PlicError::Misaligned { offset }));
            assert_eq!(
                plic.write(offset, 4, 0),
                Err(PlicError::Misaligned { offset })
            );
        }
        assert_eq!(
            plic.read(priority_offset(1), 4),
            Ok(0),
            "rejected writes changed nothing"
        );
    }

    #[test]
    fn out_of_range_offsets_are_rejected() {
        let mut plic = Plic::new(32, 2);
        // Priority of a source that does not exist.
        assert_eq!(
            plic.read(priority_offset(32), 4),
            Err(PlicError::NoSuchSource {
                offset: 0x80,
                source: 32
            })
        );
        // Pending word for sources 32..63, and past the pending array.
        assert_eq!(
            plic.read(PENDING_BASE + 4, 4),
            Err(PlicError::NoSuchSource {
                offset: 0x1004,
                source: 32
            })
        );
        assert_eq!(
            plic.read(0x1080, 4),
            Err(PlicError::Reserved { offset: 0x1080 })
        );
        assert_eq!(
            plic.read(0x1ffc, 4),
            Err(PlicError::Reserved { offset: 0x1ffc })
        );
        // Enable words: a missing source word and a missing context.
        assert_eq!(
            plic.write(enable_offset(1, 1), 4, 1),
            Err(PlicError::NoSuchSource {
                offset: 0x2084,
                source: 32
            })
        );
        assert_eq!(
            plic.read(enable_offset(2, 0), 4),
            Err(PlicError::NoSuchContext {
                offset: 0x2100,
                context: 2
            })
        );
        // The enable block ends with context 15871 at 0x1f1f80; the rest up to the
        // context block is a gap.
        assert!(matches!(
            plic.read(0x1f_1f80, 4),
            Err(PlicError::NoSuchContext { .. })
        ));
        assert_eq!(
            plic.read(0x1f_2000, 4),
            Err(PlicError::Reserved { offset: 0x1f_2000 })
        );
        assert_eq!(
            plic.read(0x1f_fffc, 4),
            Err(PlicError::Reserved { offset: 0x1f_fffc })
        );
        // Context registers: reserved words inside a context and a missing context.
        assert_eq!(
            plic.read(0x20_0008, 4),
            Err(PlicError::Reserved { offset: 0x20_0008 })
        );
        assert_eq!(
            plic.read(0x20_0ffc, 4),
            Err(PlicError::Reserved { offset: 0x20_0ffc })
        );
        assert_eq!(
            plic.read(claim_offset(2), 4),
            Err(PlicError::NoSuchContext {
                offset: 0x20_2004,
                context: 2
            })
        );
        assert_eq!(
            plic.write(threshold_offset(5), 4, 0),
            Err(PlicError::NoSuchContext {
                offset: 0x20_5000,
                context: 5
            })
        );
        assert!(matches!(
            plic.read(u64::MAX - 3, 4),
            Err(PlicError::NoSuchContext { .. })
        ));
        // The last valid register is just below mmio_size().
        assert_eq!(plic.mmio_size(), 0x20_2000);
        assert_eq!(plic.read(claim_offset(1), 4), Ok(0));
    }

    #[test]
    fn full_size_configuration_reaches_the_last_source() {
        let mut plic = Plic::new(MAX_SOURCES, 1);
        let last = MAX_SOURCES - 1;
        set_priority(&mut plic, last, 7);
        enable(&mut plic, 0, last);
        plic.set_level(last, true);
        assert_eq!(plic.read(PENDING_BASE + 4 * 31, 4), Ok(1 << 31));
        assert_eq!(claim(&mut plic, 0), last);
        // Oversized configurations are clamped to the layout's limits.
        let clamped = Plic::new(5000, MAX_CONTEXTS + 10);
        assert_eq!(clamped.sources(), MAX_SOURCES);
        assert_eq!(clamped.contexts(), MAX_CONTEXTS);
        assert_eq!(Plic::new(0, 0).sources(), 1);
    }

    #[test]
    fn reset_clears_all_state() {
        let mut plic = plic_with_sources_enabled(&[1, 2]);
        set_threshold(&mut plic, 1, 0);
        plic.set_level(1, true);
        plic.set_level(2, true);
        assert_eq!(claim(&mut plic, 1), 1);
        plic.reset();
        assert_eq!(plic.sources(), 96);
        assert_eq!(plic.contexts(), 2);
        assert_eq!(plic.read(priority_offset(1), 4), Ok(0));
        assert_eq!(plic.read(enable_offset(1, 0), 4), Ok(0));
        assert_eq!(plic.read(PENDING_BASE, 4), Ok(0));
        assert!(!plic.context_pending(1));
        // Source 1 is no longer in service: a fresh level raises a fresh request.
        set_priority(&mut plic, 1, 1);
        enable(&mut plic, 1, 1);
        plic.set_level(1, true);
        assert_eq!(claim(&mut plic, 1), 1);
    }

    #[test]
    fn errors_name_the_offset() {
        let message = PlicError::NoSuchContext {
            offset: 0x20_5000,
            context: 5,
        }
        .to_string();
        assert!(
            message.contains("0x205000") && message.contains("context 5"),
            "{message}"
        );
        let message = PlicError::UnsupportedSize {
            offset: 0x10,
            size: 2,
        }
        .to_string();
        assert!(
            message.contains("2 bytes") && message.contains("0x10"),
            "{message}"
        );
    }
}
