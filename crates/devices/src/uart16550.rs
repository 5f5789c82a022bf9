//! A 16550A UART model with instantaneous transmit, as driven by Linux's 8250 driver.
//!
//! The model is a pure state machine: the hypervisor forwards guest register accesses
//! to [`Uart16550::read`] / [`Uart16550::write`], feeds host input through
//! [`Uart16550::receive`], and drives the guest's interrupt line from
//! [`Uart16550::irq_level`]. Registers are one byte apart (`reg-shift = 0`).
//!
//! Simplifications, chosen so that Linux's 8250 probe and interrupt handling behave as on
//! real hardware while the model stays small:
//! - Transmission takes no time: a THR write hands the byte to the host at once, so
//!   LSR.THRE and LSR.TEMT are always set and the THR-empty interrupt re-arms right after
//!   every THR write.
//! - The "received data available" interrupt is raised whenever the RX FIFO is non-empty,
//!   regardless of the FCR trigger level, so no character-timeout interrupt is needed.
//! - MCR.OUT2 does not gate the interrupt output (on PC boards it enables a tri-state
//!   buffer in front of the IRQ line; here the line is wired directly).
//! - Outside loopback the modem inputs are those of a permanently connected peer: CTS,
//!   DSR and DCD asserted, RI deasserted.
//! - Parity, framing and break errors never occur; an overrun can only happen in
//!   loopback mode, because host input is refused (not dropped) when the FIFO is full.

// Register offsets. Offsets 0 and 1 select the divisor latch while LCR.DLAB is set.
const RBR: u64 = 0; // receiver buffer (read)
const THR: u64 = 0; // transmitter holding register (write)
const DLL: u64 = 0; // divisor latch, low byte (DLAB = 1)
const IER: u64 = 1; // interrupt enable
const DLM: u64 = 1; // divisor latch, high byte (DLAB = 1)
const IIR: u64 = 2; // interrupt identification (read)
const FCR: u64 = 2; // FIFO control (write)
const LCR: u64 = 3; // line control
const MCR: u64 = 4; // modem control
const LSR: u64 = 5; // line status
const MSR: u64 = 6; // modem status
const SCR: u64 = 7; // scratch

// IER bits; the upper nibble is not implemented and reads back as zero, which the
// 8250 probe relies on to tell a 16550A from XScale-style parts.
const IER_ERBFI: u8 = 0x01; // received data available
const IER_ETBEI: u8 = 0x02; // transmitter holding register empty
const IER_ELSI: u8 = 0x04; // receiver line status
const IER_EDSSI: u8 = 0x08; // modem status
const IER_WRITABLE: u8 = 0x0f;

// IIR values: bit 0 clear means an interrupt is pending, bits 3:1 identify it.
const IIR_NO_INTERRUPT: u8 = 0x01;
const IIR_RECEIVER_LINE_STATUS: u8 = 0x06;
const IIR_RECEIVED_DATA: u8 = 0x04;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_MODEM_STATUS: u8 = 0x00;
const IIR_FIFOS_ENABLED: u8 = 0xc0;

// FCR bits.
const FCR_FIFO_ENABLE: u8 = 0x01;
const FCR_RX_FIFO_RESET: u8 = 0x02;
// Bit 2 resets the TX FIFO, which is always empty here; bit 3 selects DMA mode, which
// has no meaning without DMA; bits 7:6 hold the RX trigger level, unused by this model.

// LCR bits.
const LCR_DLAB: u8 = 0x80;

// MCR bits.
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_WRITABLE: u8 = 0x1f;

// LSR bits.
const LSR_DR: u8 = 0x01; // data ready
const LSR_OE: u8 = 0x02; // overrun error
const LSR_PE: u8 = 0x04; // parity error
const LSR_FE: u8 = 0x08; // framing error
const LSR_BI: u8 = 0x10; // break interrupt
const LSR_THRE: u8 = 0x20; // transmitter holding register empty
const LSR_TEMT: u8 = 0x40; // transmitter empty
const LSR_ERRORS: u8 = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

// MSR bits: the low nibble records changes since the last MSR read, the high nibble
// is the current state of the modem inputs.
const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04; // RI went from asserted to deasserted
const MSR_DDCD: u8 = 0x08;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

/// Modem inputs seen outside loopback: a peer that is always present and ready.
const MSR_INPUTS_CONNECTED: u8 = MSR_CTS | MSR_DSR | MSR_DCD;

/// Capacity of the receive FIFO with FIFOs enabled. A real 16550A holds 16 bytes; a
/// deeper FIFO lets the host hand over a burst of input without waiting for the guest,
/// and Linux drains the FIFO until LSR.DR clears, so it does not notice the difference.
pub const RX_FIFO_CAPACITY: usize = 64;

/// With FIFOs disabled the 16550 behaves like a 16450: a single receive holding byte.
const RX_HOLDING_CAPACITY: usize = 1;

/// Fixed-size ring buffer for received bytes.
#[derive(Debug, Clone)]
struct RxFifo {
    bytes: [u8; RX_FIFO_CAPACITY],
    head: usize,
    len: usize,
}

impl RxFifo {
    const fn new() -> Self {
        Self {
            bytes: [0; RX_FIFO_CAPACITY],
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        if self.len < RX_FIFO_CAPACITY {
            self.bytes[(self.head + self.len) % RX_FIFO_CAPACITY] = byte;
            self.len += 1;
        }
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.bytes[self.head];
        self.head = (self.head + 1) % RX_FIFO_CAPACITY;
        self.len -= 1;
        Some(byte)
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// A virtual 16550A UART.
#[derive(Debug, Clone)]
pub struct Uart16550 {
    rx_fifo: RxFifo,
    /// Interrupt enable register (low nibble only).
    ier: u8,
    /// Whether the FIFOs are enabled (FCR bit 0); FCR itself is write-only.
    fifos_enabled: bool,
    lcr: u8,
    mcr: u8,
    /// Sticky LSR error bits, cleared by reading LSR.
    lsr_errors: u8,
    /// MSR change bits (low nibble), cleared by reading MSR.
    msr_deltas: u8,
    scr: u8,
    divisor_latch_low: u8,
    divisor_latch_high: u8,
    /// The THR-empty interrupt condition. It is separate from LSR.THRE because reading
    /// IIR acknowledges it while the THR stays empty.
    thr_empty_interrupt: bool,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// Creates a UART in its power-on state: all interrupts disabled, FIFOs off,
    /// no loopback.
    pub const fn new() -> Self {
        Self {
            rx_fifo: RxFifo::new(),
            ier: 0,
            fifos_enabled: false,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            scr: 0,
            divisor_latch_low: 0,
            divisor_latch_high: 0,
            thr_empty_interrupt: false,
        }
    }

    /// Returns the UART to its power-on state, discarding any received bytes.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Reads the register at `offset`; offsets past the eight registers read as 0.
    ///
    /// Reads have the side effects of the real part: RBR pops a received byte, IIR
    /// acknowledges a reported THR-empty interrupt, LSR clears its error bits and MSR
    /// clears its change bits.
    pub fn read(&mut self, offset: u64) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            DLL if dlab => self.divisor_latch_low,
            RBR => self.rx_fifo.pop().unwrap_or(0),
            DLM if dlab => self.divisor_latch_high,
            IER => self.ier,
            IIR => self.read_iir(),
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let value = self.line_status();
                self.lsr_errors = 0;
                value
            }
            MSR => {
                let value = self.msr_deltas | self.modem_inputs();
                self.msr_deltas = 0;
                value
            }
            SCR => self.scr,
            _ => 0,
        }
    }

    /// Whether reading the register at `offset` now would change the UART's state: take a received
    /// byte, acknowledge the THR-empty interrupt, or clear line-error or modem-delta bits. A read that
    /// changes nothing (above all the LSR polled while a driver waits to transmit) cannot have moved
    /// an interrupt line, so its caller need not recompute them.
    pub fn read_changes_state(&self, offset: u64) -> bool {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            DLL | DLM if dlab => false,
            RBR => self.rx_fifo.len > 0,
            IIR => self.pending_interrupt() == Some(IIR_THR_EMPTY),
            LSR => self.lsr_errors != 0,
            MSR => self.msr_deltas != 0,
            _ => false,
        }
    }

    /// Writes `value` to the register at `offset`; writes past the eight registers,
    /// and to the read-only LSR and MSR, are ignored.
    ///
    /// A THR write outside loopback passes the byte to `tx` immediately.
    pub fn write(&mut self, offset: u64, value: u8, tx: &mut dyn FnMut(u8)) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            DLL if dlab => self.divisor_latch_low = value,
            THR => self.write_thr(value, tx),
            DLM if dlab => self.divisor_latch_high = value,
            IER => self.write_ier(value),
            FCR => self.write_fcr(value),
            LCR => self.lcr = value,
            MCR => self.write_mcr(value),
            SCR => self.scr = value,
            _ => {}
        }
    }

    /// Offers one byte of host input to the receiver.
    ///
    /// Returns false, leaving the UART unchanged, when the byte cannot be taken now: the
    /// receive FIFO (or, with FIFOs disabled, the single holding byte) is full, or the
    /// UART is in loopback mode, where the serial input is disconnected. The caller keeps
    /// the byte and offers it again later, so host input is never lost.
    pub fn receive(&mut self, byte: u8) -> bool {
        if self.loopback() || self.rx_space() == 0 {
            return false;
        }
        self.rx_fifo.push(byte);
        true
    }

    /// How many more bytes [`Uart16550::receive`] would accept now (0 in loopback).
    pub fn rx_space(&self) -> usize {
        if self.loopback() {
            return 0;
        }
        self.rx_capacity().saturating_sub(self.rx_fifo.len)
    }

    /// The current level of the interrupt output: true while any enabled interrupt
    /// condition is pending.
    pub fn irq_level(&self) -> bool {
        self.pending_interrupt().is_some()
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifos_enabled {
            RX_FIFO_CAPACITY
        } else {
            RX_HOLDING_CAPACITY
        }
    }

    fn line_status(&self) -> u8 {
        let data_ready = if self.rx_fifo.len > 0 { LSR_DR } else { 0 };
        data_ready | self.lsr_errors | LSR_THRE | LSR_TEMT
    }

    /// The modem input lines (MSR high nibble). In loopback the outputs feed the inputs:
    /// DTR drives DSR, RTS drives CTS, OUT1 drives RI and OUT2 drives DCD.
    fn modem_inputs(&self) -> u8 {
        if !self.loopback() {
            return MSR_INPUTS_CONNECTED;
        }
        let mut inputs = 0;
        if self.mcr & MCR_DTR != 0 {
            inputs |= MSR_DSR;
        }
        if self.mcr & MCR_RTS != 0 {
            inputs |= MSR_CTS;
        }
        if self.mcr & MCR_OUT1 != 0 {
            inputs |= MSR_RI;
        }
        if self.mcr & MCR_OUT2 != 0 {
            inputs |= MSR_DCD;
        }
        inputs
    }

    /// The highest-priority enabled interrupt condition, as its IIR identification.
    fn pending_interrupt(&self) -> Option<u8> {
        if self.ier & IER_ELSI != 0 && self.lsr_errors & LSR_ERRORS != 0 {
            Some(IIR_RECEIVER_LINE_STATUS)
        } else if self.ier & IER_ERBFI != 0 && self.rx_fifo.len > 0 {
            Some(IIR_RECEIVED_DATA)
        } else if self.ier & IER_ETBEI != 0 && self.thr_empty_interrupt {
            Some(IIR_THR_EMPTY)
        } else if self.ier & IER_EDSSI != 0 && self.msr_deltas != 0 {
            Some(IIR_MODEM_STATUS)
        } else {
            None
        }
    }

    fn read_iir(&mut self) -> u8 {
        let fifo_bits = if self.fifos_enabled {
            IIR_FIFOS_ENABLED
        } else {
            0
        };
        match self.pending_interrupt() {
            Some(id) => {
                // Reporting the THR-empty source is what acknowledges it.
                if id == IIR_THR_EMPTY {
                    self.thr_empty_interrupt = false;
                }
                fifo_bits | id
            }
            None => fifo_bits | IIR_NO_INTERRUPT,
        }
    }

    fn write_thr(&mut self, value: u8, tx: &mut dyn FnMut(u8)) {
        if self.loopback() {
            // The transmitter output is wired to the receiver input; a full FIFO loses
            // the incoming character and flags an overrun.
            if self.rx_fifo.len < self.rx_capacity() {
                self.rx_fifo.push(value);
            } else {
                self.lsr_errors |= LSR_OE;
            }
        } else {
            tx(value);
        }
        // Writing THR clears the THR-empty condition, but the byte leaves at once, so
        // the holding register is empty again and the interrupt re-arms. Without this
        // the 8250 driver would stall after its first burst of output.
        self.thr_empty_interrupt = self.ier & IER_ETBEI != 0;
    }

    fn write_ier(&mut self, value: u8) {
        let value = value & IER_WRITABLE;
        let was_enabled = self.ier & IER_ETBEI != 0;
        let now_enabled = value & IER_ETBEI != 0;
        self.ier = value;
        // The THR is always empty, so enabling ETBEI raises the interrupt straight away
        // (Linux's startup test checks that it is raised again after re-enabling);
        // disabling it drops any unacknowledged instance.
        if now_enabled != was_enabled {
            self.thr_empty_interrupt = now_enabled;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_FIFO_ENABLE != 0;
        if enable != self.fifos_enabled {
            // Switching between FIFO and 16450 mode empties the FIFOs.
            self.rx_fifo.clear();
            self.fifos_enabled = enable;
        }
        // The other FCR bits are only acted on while the FIFO enable bit is written as 1.
        if enable && value & FCR_RX_FIFO_RESET != 0 {
            self.rx_fifo.clear();
        }
    }

    fn write_mcr(&mut self, value: u8) {
        let inputs_before = self.modem_inputs();
        self.mcr = value & MCR_WRITABLE;
        // Entering or leaving loopback, or changing an output while in it, changes what
        // the modem inputs see; record each change as the real part does.
        let inputs_after = self.modem_inputs();
        let changed = inputs_before ^ inputs_after;
        if changed & MSR_CTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        if inputs_before & MSR_RI != 0 && inputs_after & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
        if changed & MSR_DCD != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    /// Writes a register, collecting transmitted bytes into `sent`.
    fn write(uart: &mut Uart16550, offset: u64, value: u8, sent: &mut Vec<u8>) {
        uart.write(offset, value, &mut |byte| sent.push(byte));
    }

    /// Writes a register where no transmission is expected.
    fn write_quiet(uart: &mut Uart16550, offset: u64, value: u8) {
        let mut sent = Vec::new();
        write(uart, offset, value, &mut sent);
        assert!(sent.is_empty(), "unexpected transmission {sent:?}");
    }

    #[test]
    fn read_changes_state_says_exactly_when_a_read_changes_something() {
        // Random register writes, received bytes and reads; after each step, a read of every register on a copy
        // changes the copy's state exactly when `read_changes_state` said it would.
        let mut uart = Uart16550::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut changing = [0usize; 8];
        for _ in 0..20_000 {
            let value = random();
            let offset = value % 8;
            match (value >> 8) % 4 {
                0 => {
                    let mut sink = Vec::new();
                    write(&mut uart, offset, (value >> 16) as u8, &mut sink);
                }
                1 => {
                    uart.receive((value >> 16) as u8);
                }
                _ => {
                    uart.read(offset);
                }
            }
            for register in 0..8 {
                let mut copy = uart.clone();
                let before = std::format!("{copy:?}");
                let predicted = copy.read_changes_state(register);
                copy.read(register);
                let changed = std::format!("{copy:?}") != before;
                assert_eq!(predicted, changed, "register {register} in state {before}");
                changing[register as usize] += usize::from(changed);
            }
        }
        // Every register that can change on a read did so at some point: RBR, IIR, LSR, MSR.
        for register in [RBR, IIR, LSR, MSR] {
            assert!(changing[register as usize] > 0, "register {register} never changed on a read");
        }
    }

    #[test]
    fn power_on_state() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.read(IER), 0);
        assert_eq!(uart.read(IIR), IIR_NO_INTERRUPT);
        assert_eq!(uart.read(LCR), 0);
        assert_eq!(uart.read(MCR), 0);
        assert_eq!(uart.read(LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(uart.read(MSR), MSR_CTS | MSR_DSR | MSR_DCD);
        assert!(!uart.irq_level());
        assert_eq!(uart.rx_space(), 1);
    }

    #[test]
    fn offsets_past_the_registers_read_zero_and_ignore_writes() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, 8, 0xff);
        write_quiet(&mut uart, u64::MAX, 0xff);
        assert_eq!(uart.read(8), 0);
        assert_eq!(uart.read(0x100), 0);
        assert_eq!(uart.read(u64::MAX), 0);
        assert!(!uart.irq_level());
    }

    #[test]
    fn linux_probe_ier_scratch_test() {
        // autoconfig: save IER, write 0 and expect 0, write 0x0f and expect 0x0f in the
        // low nibble, then restore.
        let mut uart = Uart16550::new();
        let saved = uart.read(IER);
        write_quiet(&mut uart, IER, 0);
        assert_eq!(uart.read(IER) & 0x0f, 0);
        write_quiet(&mut uart, IER, 0x0f);
        assert_eq!(uart.read(IER) & 0x0f, 0x0f);
        write_quiet(&mut uart, IER, saved);
        assert_eq!(uart.read(IER), saved);
        // The upper nibble is not implemented: an XScale UUE probe must read back 0.
        write_quiet(&mut uart, IER, 0x40);
        assert_eq!(uart.read(IER) & 0x40, 0);
    }

    #[test]
    fn linux_probe_loopback_msr_test() {
        // autoconfig writes MCR = LOOP | OUT2 | RTS and expects MSR[7:4] = DCD | CTS.
        let mut uart = Uart16550::new();
        let saved_mcr = uart.read(MCR);
        write_quiet(&mut uart, MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(uart.read(MSR) & 0xf0, MSR_DCD | MSR_CTS);
        write_quiet(&mut uart, MCR, saved_mcr);
        assert_eq!(uart.read(MCR), saved_mcr);
        assert_eq!(uart.read(MSR) & 0xf0, MSR_INPUTS_CONNECTED);
    }

    #[test]
    fn loopback_maps_each_modem_output_to_its_input() {
        let mut uart = Uart16550::new();
        let mapping = [
            (MCR_DTR, MSR_DSR),
            (MCR_RTS, MSR_CTS),
            (MCR_OUT1, MSR_RI),
            (MCR_OUT2, MSR_DCD),
        ];
        for (output, input) in mapping {
            write_quiet(&mut uart, MCR, MCR_LOOP | output);
            assert_eq!(uart.read(MSR) & 0xf0, input, "MCR bit {output:#x}");
        }
        write_quiet(&mut uart, MCR, MCR_LOOP | 0x0f);
        assert_eq!(uart.read(MSR) & 0xf0, 0xf0);
        // MCR stores only its five defined bits.
        write_quiet(&mut uart, MCR, 0xff);
        assert_eq!(uart.read(MCR), 0x1f);
    }

    #[test]
    fn msr_change_bits_and_modem_status_interrupt() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, IER, IER_EDSSI);
        assert!(!uart.irq_level());
        // Entering loopback with only OUT1 set: CTS, DSR and DCD drop, RI rises.
        write_quiet(&mut uart, MCR, MCR_LOOP | MCR_OUT1);
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), IIR_MODEM_STATUS);
        assert_eq!(uart.read(MSR), MSR_RI | MSR_DCTS | MSR_DDSR | MSR_DDCD);
        assert!(!uart.irq_level(), "reading MSR clears the change bits");
        // RI falling sets the trailing-edge bit; RI rising does not.
        write_quiet(&mut uart, MCR, MCR_LOOP);
        assert_eq!(uart.read(MSR), MSR_TERI);
        write_quiet(&mut uart, MCR, MCR_LOOP | MCR_OUT1);
        assert_eq!(uart.read(MSR), MSR_RI);
    }

    #[test]
    fn linux_probe_lcr_and_divisor_latch() {
        let mut uart = Uart16550::new();
        // LCR is fully readable, including the 0xbf/0x80 configuration-mode values the
        // probe writes while looking for EFR.
        for value in [0x00, 0x03, 0x1b, 0x80, 0xbf, 0xe0, 0xff] {
            write_quiet(&mut uart, LCR, value);
            assert_eq!(uart.read(LCR), value);
        }
        // With DLAB set, offsets 0 and 1 are the divisor latch...
        write_quiet(&mut uart, LCR, LCR_DLAB | 0x03);
        write_quiet(&mut uart, DLL, 0x0c);
        write_quiet(&mut uart, DLM, 0x01);
        assert_eq!(uart.read(DLL), 0x0c);
        assert_eq!(uart.read(DLM), 0x01);
        // ...and neither transmit nor touch IER.
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
        write_quiet(&mut uart, LCR, 0x03);
        assert_eq!(uart.read(IER), 0);
        assert_eq!(uart.read(RBR), 0);
        write_quiet(&mut uart, LCR, LCR_DLAB);
        assert_eq!(uart.read(DLL), 0x0c, "divisor survives DLAB toggling");
    }

    #[test]
    fn linux_probe_sees_a_16550a_fifo() {
        let mut uart = Uart16550::new();
        // The probe's EFR test reads offset 2 with LCR = 0xbf and LCR = 0x80: it must not
        // read 0 there once FIFOs are enabled, or the part is taken for a 16650.
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        assert_eq!(uart.read(IIR) >> 6, 3, "FIFO bits report a 16550A");
        write_quiet(&mut uart, LCR, 0xbf);
        assert_ne!(uart.read(IIR), 0);
        write_quiet(&mut uart, LCR, 0x80);
        assert_ne!(uart.read(IIR), 0);
        // The 16750 test asks for a 64-byte FIFO (FCR bit 5); IIR bit 5 must stay clear.
        write_quiet(&mut uart, LCR, 0);
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE | 0x20);
        assert_eq!(uart.read(IIR) & 0xe0, 0xc0);
        // Disabling the FIFOs clears the FIFO bits.
        write_quiet(&mut uart, FCR, 0);
        assert_eq!(uart.read(IIR), IIR_NO_INTERRUPT);
    }

    #[test]
    fn scratch_register_stores_its_value() {
        let mut uart = Uart16550::new();
        for value in [0x00, 0x55, 0xaa, 0xff] {
            write_quiet(&mut uart, SCR, value);
            assert_eq!(uart.read(SCR), value);
        }
    }

    #[test]
    fn transmit_is_instantaneous() {
        let mut uart = Uart16550::new();
        let mut sent = Vec::new();
        for &byte in b"hello" {
            write(&mut uart, THR, byte, &mut sent);
            assert_eq!(uart.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        }
        assert_eq!(sent, b"hello");
        assert!(!uart.irq_level(), "no interrupt without IER.ETBEI");
    }

    #[test]
    fn thr_empty_interrupt_flow() {
        let mut uart = Uart16550::new();
        let mut sent = Vec::new();
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        // Enabling ETBEI with an empty THR raises the interrupt at once.
        write_quiet(&mut uart, IER, IER_ETBEI);
        assert!(uart.irq_level());
        // Reading IIR reports and thereby acknowledges it.
        assert_eq!(uart.read(IIR), IIR_FIFOS_ENABLED | IIR_THR_EMPTY);
        assert!(!uart.irq_level());
        assert_eq!(uart.read(IIR), IIR_FIFOS_ENABLED | IIR_NO_INTERRUPT);
        // Rewriting IER with ETBEI still set is not a new edge.
        write_quiet(&mut uart, IER, IER_ETBEI | IER_ERBFI);
        assert!(!uart.irq_level());
        // A THR write is sent immediately, so the THR is empty again and it re-arms.
        write(&mut uart, THR, b'x', &mut sent);
        assert_eq!(sent, b"x");
        assert!(uart.irq_level());
        // Disabling ETBEI drops the request; the driver's stop_tx path.
        write_quiet(&mut uart, IER, IER_ERBFI);
        assert!(!uart.irq_level());
        assert_eq!(uart.read(IIR), IIR_FIFOS_ENABLED | IIR_NO_INTERRUPT);
    }

    #[test]
    fn linux_startup_thre_reassert_test() {
        // serial8250_do_startup: set IER.THRI, read IIR, clear IER, set IER.THRI again and
        // read IIR; both reads must show a pending interrupt or the port gets the
        // "THRE bug" workaround timer.
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, IER, IER_ETBEI);
        let first = uart.read(IIR);
        write_quiet(&mut uart, IER, 0);
        write_quiet(&mut uart, IER, IER_ETBEI);
        let second = uart.read(IIR);
        write_quiet(&mut uart, IER, 0);
        assert_eq!(first & IIR_NO_INTERRUPT, 0);
        assert_eq!(second & IIR_NO_INTERRUPT, 0);
        assert_eq!(second & 0x0f, IIR_THR_EMPTY);
    }

    #[test]
    fn receive_flow_with_fifo() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE | FCR_RX_FIFO_RESET);
        write_quiet(&mut uart, IER, IER_ERBFI);
        assert_eq!(uart.rx_space(), RX_FIFO_CAPACITY);
        assert!(!uart.irq_level());
        assert_eq!(uart.read(LSR) & LSR_DR, 0);

        assert!(uart.receive(b'a'));
        assert!(uart.receive(b'b'));
        assert_eq!(uart.rx_space(), RX_FIFO_CAPACITY - 2);
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), IIR_FIFOS_ENABLED | IIR_RECEIVED_DATA);
        // Reading IIR does not acknowledge received data: only draining does.
        assert!(uart.irq_level());
        assert_eq!(uart.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(uart.read(RBR), b'a');
        assert!(uart.irq_level());
        assert_eq!(uart.read(RBR), b'b');
        assert!(!uart.irq_level());
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
        assert_eq!(uart.read(RBR), 0, "empty FIFO reads 0");
    }

    #[test]
    fn receive_refuses_bytes_when_the_fifo_is_full() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        for index in 0..RX_FIFO_CAPACITY {
            assert!(uart.receive(index as u8), "byte {index}");
        }
        assert_eq!(uart.rx_space(), 0);
        assert!(!uart.receive(0xee));
        // Refusal is backpressure, not an overrun.
        assert_eq!(uart.read(LSR) & LSR_OE, 0);
        // The FIFO content is intact and in order, and space frees up as it drains.
        assert_eq!(uart.read(RBR), 0);
        assert_eq!(uart.rx_space(), 1);
        assert!(uart.receive(0xee));
        for expected in 1..RX_FIFO_CAPACITY {
            assert_eq!(uart.read(RBR), expected as u8);
        }
        assert_eq!(uart.read(RBR), 0xee);
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
    }

    #[test]
    fn without_fifos_the_receiver_holds_one_byte() {
        let mut uart = Uart16550::new();
        assert!(uart.receive(1));
        assert!(!uart.receive(2));
        assert_eq!(uart.read(RBR), 1);
        assert!(uart.receive(2));
        // Enabling the FIFOs empties them, and then they take a full burst.
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
        assert_eq!(uart.rx_space(), RX_FIFO_CAPACITY);
    }

    #[test]
    fn fcr_rx_reset_clears_the_fifo_only_with_the_enable_bit() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        assert!(uart.receive(b'a'));
        assert!(uart.receive(b'b'));
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE | FCR_RX_FIFO_RESET);
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
        assert_eq!(uart.rx_space(), RX_FIFO_CAPACITY);
        // The transmit-reset bit alone leaves received data alone.
        assert!(uart.receive(b'c'));
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE | 0x04);
        assert_eq!(uart.read(RBR), b'c');
    }

    #[test]
    fn loopback_echoes_transmit_into_receive() {
        let mut uart = Uart16550::new();
        let mut sent = Vec::new();
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        write_quiet(&mut uart, MCR, MCR_LOOP);
        write(&mut uart, THR, 0x5a, &mut sent);
        assert!(sent.is_empty(), "loopback keeps the byte off the wire");
        assert_eq!(uart.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(uart.read(RBR), 0x5a);
        // Host input is held off while the receiver listens to the transmitter.
        assert_eq!(uart.rx_space(), 0);
        assert!(!uart.receive(b'h'));
        write_quiet(&mut uart, MCR, 0);
        assert!(uart.receive(b'h'));
        write(&mut uart, THR, b'o', &mut sent);
        assert_eq!(sent, b"o");
        assert_eq!(uart.read(RBR), b'h');
    }

    #[test]
    fn loopback_overrun_sets_oe_and_raises_line_status() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, MCR, MCR_LOOP);
        write_quiet(&mut uart, IER, IER_ELSI | IER_ERBFI);
        let mut sent = Vec::new();
        // FIFOs are off: the second byte overruns the holding register.
        write(&mut uart, THR, 1, &mut sent);
        assert_eq!(uart.read(IIR), IIR_RECEIVED_DATA);
        write(&mut uart, THR, 2, &mut sent);
        assert_eq!(uart.read(IIR), IIR_RECEIVER_LINE_STATUS);
        assert_eq!(uart.read(LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        // Reading LSR cleared the error; received data is next in line.
        assert_eq!(uart.read(LSR) & LSR_OE, 0);
        assert_eq!(uart.read(IIR), IIR_RECEIVED_DATA);
        assert_eq!(uart.read(RBR), 1, "the overrunning byte is the one lost");
        assert!(!uart.irq_level());
    }

    #[test]
    fn iir_reports_sources_in_priority_order() {
        let mut uart = Uart16550::new();
        let mut sent = Vec::new();
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        write_quiet(&mut uart, MCR, MCR_LOOP);
        // Fill the FIFO through loopback and overrun it so every source is active:
        // line status, received data, THR empty and modem status (loopback entry
        // changed CTS, DSR and DCD).
        for index in 0..=RX_FIFO_CAPACITY {
            write(&mut uart, THR, index as u8, &mut sent);
        }
        write_quiet(&mut uart, IER, IER_ERBFI | IER_ETBEI | IER_ELSI | IER_EDSSI);

        assert_eq!(uart.read(IIR) & 0x0f, IIR_RECEIVER_LINE_STATUS);
        uart.read(LSR);
        assert_eq!(uart.read(IIR) & 0x0f, IIR_RECEIVED_DATA);
        while uart.read(LSR) & LSR_DR != 0 {
            uart.read(RBR);
        }
        assert_eq!(uart.read(IIR) & 0x0f, IIR_THR_EMPTY);
        assert_eq!(uart.read(IIR) & 0x0f, IIR_MODEM_STATUS);
        uart.read(MSR);
        assert_eq!(uart.read(IIR) & 0x0f, IIR_NO_INTERRUPT);
        assert!(!uart.irq_level());
    }

    #[test]
    fn disabled_sources_do_not_interrupt() {
        let mut uart = Uart16550::new();
        assert!(uart.receive(b'z'));
        write_quiet(&mut uart, MCR, MCR_LOOP);
        assert!(!uart.irq_level(), "IER is zero");
        assert_eq!(uart.read(IIR), IIR_NO_INTERRUPT);
        write_quiet(&mut uart, IER, IER_ERBFI);
        assert!(uart.irq_level());
    }

    #[test]
    fn out2_does_not_gate_the_interrupt() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, IER, IER_ETBEI);
        assert!(uart.irq_level());
        write_quiet(&mut uart, MCR, MCR_OUT2);
        assert!(uart.irq_level());
        write_quiet(&mut uart, MCR, 0);
        assert!(uart.irq_level());
    }

    #[test]
    fn reset_returns_to_power_on_state() {
        let mut uart = Uart16550::new();
        write_quiet(&mut uart, FCR, FCR_FIFO_ENABLE);
        write_quiet(&mut uart, IER, 0x0f);
        write_quiet(&mut uart, LCR, 0x03);
        write_quiet(&mut uart, SCR, 0x77);
        assert!(uart.receive(1));
        write_quiet(&mut uart, MCR, MCR_LOOP);
        uart.reset();
        assert!(!uart.irq_level());
        assert_eq!(uart.read(IER), 0);
        assert_eq!(uart.read(LCR), 0);
        assert_eq!(uart.read(MCR), 0);
        assert_eq!(uart.read(SCR), 0);
        assert_eq!(uart.read(IIR), IIR_NO_INTERRUPT);
        assert_eq!(uart.read(LSR), LSR_THRE | LSR_TEMT);
        assert_eq!(uart.read(MSR), MSR_INPUTS_CONNECTED);
        assert_eq!(uart.rx_space(), 1);
    }
}
