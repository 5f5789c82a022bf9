//! virtio-console: a single console port whose output goes to the hypervisor, and whose input comes from it, through bounded byte queues.
//!
//! VIRTIO 1.2, section 5.3. No device feature is offered. Without
//! `VIRTIO_CONSOLE_F_MULTIPORT` the device has one port and no control queues, so it has
//! exactly two virtqueues: queue 0 is the receiveq of port 0 (input, device to driver) and
//! queue 1 its transmitq (output, driver to device). The fields of
//! `struct virtio_console_config` are only valid with `VIRTIO_CONSOLE_F_SIZE`,
//! `VIRTIO_CONSOLE_F_MULTIPORT` and `VIRTIO_CONSOLE_F_EMERG_WRITE` respectively, so with none
//! of them the configuration space is empty; Linux's driver reads a field only after it
//! negotiated the field's feature.
//!
//! Both directions carry a plain byte stream: buffers have no header and the way the driver
//! splits its bytes into chains and descriptors means nothing.
//!
//! **Output.** The device-readable bytes of each transmitq chain are appended to an outbox
//! of at most [`OUTBOX_CAPACITY`] bytes, which the hypervisor empties with
//! [`VirtioConsole::drain_output`] or [`VirtioConsole::take_output`]. When the outbox fills
//! in the middle of a chain, the device keeps that chain and how far it got, and returns the
//! chain to the driver only once all its bytes are out. Until then it takes no further
//! chain, which is the driver's back-pressure. That keeps the outbox bounded whatever the
//! size of a chain (a driver may post one of several megabytes) without losing or
//! reordering output. After draining, the hypervisor calls
//! `MmioTransport::process_queue(TRANSMIT_QUEUE, ..)` if [`VirtioConsole::output_stalled`]
//! says output is waiting.
//!
//! **Input.** [`VirtioConsole::queue_input`] keeps up to [`INBOX_CAPACITY`] bytes for the
//! driver, after which the hypervisor calls `MmioTransport::process_queue(RECEIVE_QUEUE, ..)`.
//! Each receive chain gets as many waiting bytes as its device-writable part holds, and its
//! used length is the number of bytes written. Receive chains are only taken while input is
//! waiting, so a driver's buffers stay posted until there is something to put in them;
//! input that arrives while no buffer is posted waits in the inbox, and the driver's next
//! notification of the receiveq delivers it.
//!
//! **Malformed chains.** The specification forbids device-writable buffers in a transmitq
//! and device-readable ones in a receiveq. Such a chain, or one with a buffer outside the
//! capsule's memory, goes back to the driver with a used length of 0 and is counted and
//! reported. None of its bytes are output, and no input is spent on it: the bytes wait for
//! the next receive chain.

use alloc::collections::vec_deque::{self, VecDeque};

use crate::error::{DeviceError, RequestError};
use crate::mmio::Device;
use crate::queue::{BufferError, DescriptorChain, GuestMemory, Virtqueue};
use crate::VIRTIO_ID_CONSOLE;

/// Feature bit: `cols` and `rows` hold the console size. Not offered.
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Feature bit: several ports and the control queues. Not offered.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
/// Feature bit: `emerg_wr` writes a byte without any queue. Not offered.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;

/// Index of port 0's receiveq (console input).
pub const RECEIVE_QUEUE: u16 = 0;
/// Index of port 0's transmitq (console output).
pub const TRANSMIT_QUEUE: u16 = 1;
/// Size of both queues offered to the driver.
pub const QUEUE_SIZE: u16 = 64;

/// Most output bytes waiting for the hypervisor.
pub const OUTBOX_CAPACITY: usize = 16 * 1024;
/// Most input bytes waiting for receive buffers.
pub const INBOX_CAPACITY: usize = 4 * 1024;

/// Output is copied out of guest memory through a stack buffer of this size.
const COPY_CHUNK: usize = 256;

/// Traffic and drop statistics of one console, kept across device resets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Bytes the driver transmitted that went into the outbox.
    pub output_bytes: u64,
    /// Transmit chains returned to the driver with all their bytes output.
    pub output_chains: u64,
    /// Bytes written into receive buffers.
    pub input_bytes: u64,
    /// Receive chains returned to the driver with input in them.
    pub input_chains: u64,
    /// Transmit chains refused: device-writable buffers, or buffers outside the capsule's
    /// memory.
    pub transmit_chains_refused: u64,
    /// Receive chains refused: device-readable buffers, no device-writable byte, or buffers
    /// outside the capsule's memory.
    pub receive_chains_refused: u64,
    /// Input bytes refused because no driver had accepted the device's features.
    pub input_dropped_no_driver: u64,
    /// Input bytes refused because the inbox was full (the caller may offer them again).
    pub input_refused_inbox_full: u64,
}

/// A transmit chain whose bytes did not all fit in the outbox yet.
#[derive(Debug)]
struct PartialOutput {
    chain: DescriptorChain,
    /// Bytes of the chain's readable part already in the outbox.
    offset: u64,
}

/// A virtio console with one port.
#[derive(Debug)]
pub struct VirtioConsole {
    /// A driver accepted the features and has not reset the device since: only then is
    /// input worth keeping.
    driver_present: bool,
    inbox: VecDeque<u8>,
    outbox: VecDeque<u8>,
    /// The transmit chain being output, when the outbox filled before its end.
    partial_output: Option<PartialOutput>,
    /// The last transmit pass stopped because the outbox was full.
    output_stalled: bool,
    counters: ConsoleCounters,
}

impl Default for VirtioConsole {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioConsole {
    /// A console with no driver and empty queues.
    pub fn new() -> Self {
        Self {
            driver_present: false,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            partial_output: None,
            output_stalled: false,
            counters: ConsoleCounters::default(),
        }
    }

    /// Whether a driver accepted the device's features (`FEATURES_OK`) and has not reset
    /// the device since; input is only kept while this holds.
    pub fn driver_present(&self) -> bool {
        self.driver_present
    }

    /// Traffic and drop statistics.
    pub fn counters(&self) -> &ConsoleCounters {
        &self.counters
    }

    /// Queues console input for the driver and returns how many bytes of `bytes` were
    /// accepted: none while no driver is present, otherwise as many as fit in the
    /// [`INBOX_CAPACITY`]-byte inbox, from the start of `bytes`.
    ///
    /// The input reaches the capsule once the hypervisor calls
    /// `MmioTransport::process_queue(RECEIVE_QUEUE, ..)` and receive buffers are posted.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        // Input typed before a driver runs would reach it stale, mixed into whatever the
        // driver's first reads expect.
        if !self.driver_present {
            self.counters.input_dropped_no_driver += bytes.len() as u64;
            return 0;
        }
        let room = INBOX_CAPACITY.saturating_sub(self.inbox.len());
        let accepted = bytes.len().min(room);
        self.inbox.extend(&bytes[..accepted]);
        self.counters.input_refused_inbox_full += (bytes.len() - accepted) as u64;
        accepted
    }

    /// Input bytes waiting for receive buffers.
    pub fn pending_input(&self) -> usize {
        self.inbox.len()
    }

    /// Hands every output byte, oldest first, to `sink` (in at most two slices) and empties
    /// the outbox.
    pub fn take_output(&mut self, sink: &mut dyn FnMut(&[u8])) {
        let (front, back) = self.outbox.as_slices();
        for part in [front, back] {
            if !part.is_empty() {
                sink(part);
            }
        }
        self.outbox.clear();
    }

    /// Takes every output byte, oldest first.
    pub fn drain_output(&mut self) -> vec_deque::Drain<'_, u8> {
        self.outbox.drain(..)
    }

    /// Output bytes waiting for the hypervisor.
    pub fn pending_output(&self) -> usize {
        self.outbox.len()
    }

    /// Whether the last transmit pass stopped because the outbox was full, so output may
    /// be waiting in the transmitq: after draining, the hypervisor should call
    /// `MmioTransport::process_queue(TRANSMIT_QUEUE, ..)`.
    pub fn output_stalled(&self) -> bool {
        self.output_stalled
    }

    /// Moves output from transmit chains into the outbox while it has room.
    fn transmit(
        &mut self,
        queue: u16,
        virtqueue: &mut Virtqueue,
        memory: &dyn GuestMemory,
    ) -> Result<(), DeviceError> {
        self.output_stalled = false;
        let mut first_error = None;
        // At most one queue's worth of new chains per pass (besides a partly output one),
        // so a driver publishing from another vCPU cannot keep the device here; it
        // notifies again for what it publishes later.
        let mut new_chains_left = virtqueue.size();
        loop {
            let room = OUTBOX_CAPACITY.saturating_sub(self.outbox.len());
            if room == 0 {
                self.output_stalled = true;
                break;
            }
            // A device reset drops a kept chain. A driver that instead disables and
            // re-enables the transmitq in the meantime gets the chain completed on the new
            // ring; its buffers were checked to be in the capsule's memory, so only that
            // driver's own bookkeeping suffers.
            let PartialOutput { chain, offset } = match self.partial_output.take() {
                Some(partial) => partial,
                None => {
                    if new_chains_left == 0 {
                        break;
                    }
                    new_chains_left -= 1;
                    let Some(chain) = virtqueue.pop_for_device(queue, memory, &mut first_error)?
                    else {
                        break;
                    };
                    if let Err(error) = check_transmit_chain(&chain, memory) {
                        self.counters.transmit_chains_refused += 1;
                        first_error.get_or_insert(DeviceError::Request {
                            queue,
                            head: chain.head(),
                            error,
                        });
                        virtqueue.complete(queue, memory, chain.head(), 0)?;
                        continue;
                    }
                    PartialOutput { chain, offset: 0 }
                }
            };
            let remaining = chain.readable_len() - offset;
            let len = remaining.min(room as u64);
            if let Err(error) = self.copy_output(&chain, memory, offset, len) {
                // The whole chain was checked to be inside memory, so only a memory that
                // shrank gets here; the rest of the chain is given up.
                self.counters.transmit_chains_refused += 1;
                first_error.get_or_insert(DeviceError::Request {
                    queue,
                    head: chain.head(),
                    error: error.into(),
                });
                virtqueue.complete(queue, memory, chain.head(), 0)?;
                continue;
            }
            if len < remaining {
                self.partial_output = Some(PartialOutput {
                    chain,
                    offset: offset + len,
                });
                self.output_stalled = true;
                break;
            }
            self.counters.output_chains += 1;
            // The device writes nothing into transmit buffers.
            virtqueue.complete(queue, memory, chain.head(), 0)?;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Appends `len` bytes of the chain's readable part, starting at `offset`, to the
    /// outbox.
    fn copy_output(
        &mut self,
        chain: &DescriptorChain,
        memory: &dyn GuestMemory,
        offset: u64,
        len: u64,
    ) -> Result<(), BufferError> {
        let mut chunk = [0u8; COPY_CHUNK];
        let mut done = 0u64;
        while done < len {
            // At most COPY_CHUNK.
            let piece = (len - done).min(COPY_CHUNK as u64) as usize;
            chain.read(memory, offset + done, &mut chunk[..piece])?;
            self.outbox.extend(&chunk[..piece]);
            self.counters.output_bytes += piece as u64;
            done += piece as u64;
        }
        Ok(())
    }

    /// Moves inbox bytes into receive chains while both last.
    fn receive(
        &mut self,
        queue: u16,
        virtqueue: &mut Virtqueue,
        memory: &dyn GuestMemory,
    ) -> Result<(), DeviceError> {
        let mut first_error = None;
        for _ in 0..virtqueue.size() {
            if self.inbox.is_empty() {
                break;
            }
            let Some(chain) = virtqueue.pop_for_device(queue, memory, &mut first_error)? else {
                break;
            };
            let written = match self.fill_receive_chain(&chain, memory) {
                Ok(written) => written,
                Err(error) => {
                    self.counters.receive_chains_refused += 1;
                    first_error.get_or_insert(DeviceError::Request {
                        queue,
                        head: chain.head(),
                        error,
                    });
                    0
                }
            };
            virtqueue.complete(queue, memory, chain.head(), written)?;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Writes as many inbox bytes as fit into a receive chain, removes them from the inbox
    /// and returns their number. On error the inbox is left as it was.
    fn fill_receive_chain(
        &mut self,
        chain: &DescriptorChain,
        memory: &dyn GuestMemory,
    ) -> Result<u32, RequestError> {
        if chain
            .descriptors()
            .iter()
            .any(|descriptor| !descriptor.writable)
        {
            return Err(RequestError::ReadableInReceiveChain {
                len: chain.readable_len(),
            });
        }
        if chain.writable_len() == 0 {
            return Err(RequestError::NoWritableBuffer);
        }
        // Refuse the chain before writing any of it.
        chain.check_memory(memory)?;
        // Bounded by INBOX_CAPACITY.
        let len = (chain.writable_len().min(self.inbox.len() as u64)) as usize;
        let (front, back) = self.inbox.as_slices();
        let from_front = len.min(front.len());
        chain.write(memory, 0, &front[..from_front])?;
        if len > from_front {
            chain.write(memory, from_front as u64, &back[..len - from_front])?;
        }
        self.inbox.drain(..len);
        self.counters.input_bytes += len as u64;
        self.counters.input_chains += 1;
        Ok(len as u32)
    }
}

/// Refuses a transmit chain with device-writable buffers or buffers outside the capsule's
/// memory, before any of its bytes are output.
fn check_transmit_chain(
    chain: &DescriptorChain,
    memory: &dyn GuestMemory,
) -> Result<(), RequestError> {
    if chain
        .descriptors()
        .iter()
        .any(|descriptor| descriptor.writable)
    {
        return Err(RequestError::WritableInTransmitChain {
            len: chain.writable_len(),
        });
    }
    chain.check_memory(memory)?;
    Ok(())
}

impl Device for VirtioConsole {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn set_driver_features(&mut self, _features: u64) {
        self.driver_present = true;
    }

    fn queue_count(&self) -> u16 {
        2
    }

    fn queue_max_size(&self, _queue: u16) -> u16 {
        QUEUE_SIZE
    }

    fn notify(
        &mut self,
        queue: u16,
        virtqueue: &mut Virtqueue,
        memory: &dyn GuestMemory,
    ) -> Result<(), DeviceError> {
        match queue {
            RECEIVE_QUEUE => self.receive(queue, virtqueue, memory),
            TRANSMIT_QUEUE => self.transmit(queue, virtqueue, memory),
            _ => Err(DeviceError::NoSuchQueue {
                queue: u32::from(queue),
            }),
        }
    }

    /// Bytes in flight belong to the driver that went away; the statistics stay.
    fn reset(&mut self) {
        self.driver_present = false;
        self.inbox.clear();
        self.outbox.clear();
        self.partial_output = None;
        self.output_stalled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{MmioTransport, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
    use crate::queue::{MemoryError, QueueError, VIRTQ_DESC_F_NEXT};
    use crate::rng::EntropySource;
    use crate::testing::*;
    use crate::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};

    type Console = MmioTransport<VirtioConsole>;

    const FEATURES: u64 = VIRTIO_F_VERSION_1;
    const DEVICE_ID: u64 = 0x008;
    const QUEUE_SEL: u64 = 0x030;
    const QUEUE_NUM_MAX: u64 = 0x034;
    const QUEUE_NOTIFY: u64 = 0x050;
    const INTERRUPT_ACK: u64 = 0x064;
    const STATUS: u64 = 0x070;
    const CONFIG: u64 = 0x100;
    /// What receive buffers hold before the device writes them.
    const UNTOUCHED: u8 = 0xaa;

    /// A running console with a driver and its two queues of 16 entries.
    struct Setup {
        transport: Console,
        memory: TestMemory,
        rx: DriverQueue,
        tx: DriverQueue,
    }

    fn setup() -> Setup {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioConsole::new());
        let mut queues = bring_up_queues(&mut transport, &memory, FEATURES, &[16, 16]);
        let tx = queues.remove(1);
        let rx = queues.remove(0);
        Setup {
            transport,
            memory,
            rx,
            tx,
        }
    }

    /// `len` bytes of text that show where a piece went missing or was reordered.
    fn text(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|index| b'a' + ((index + usize::from(seed)) % 26) as u8)
            .collect()
    }

    impl Setup {
        fn console(&self) -> &VirtioConsole {
            self.transport.device()
        }

        fn console_mut(&mut self) -> &mut VirtioConsole {
            self.transport.device_mut()
        }

        fn notify(&mut self, queue: u16) -> Option<DeviceError> {
            write_register(
                &mut self.transport,
                &self.memory,
                QUEUE_NOTIFY,
                u32::from(queue),
            )
        }

        fn process(&mut self, queue: u16) -> Option<DeviceError> {
            self.transport.process_queue(queue, &self.memory)
        }

        /// Publishes a transmit chain with one device-readable descriptor per piece.
        fn send(&mut self, pieces: &[&[u8]]) -> u16 {
            let buffers: Vec<Buffer> = pieces
                .iter()
                .map(|piece| {
                    let gpa = self.memory.allocate(piece.len().max(1) as u64, 8);
                    self.memory.put(gpa, piece);
                    Buffer::readable(gpa, piece.len() as u32)
                })
                .collect();
            self.tx.add_chain(&self.memory, &buffers)
        }

        /// Publishes a receive chain of one device-writable buffer of `len` bytes filled
        /// with [`UNTOUCHED`]; returns its address and head.
        fn post_receive(&mut self, len: u32) -> (u64, u16) {
            let gpa = self.memory.allocate(u64::from(len), 8);
            self.memory.put(gpa, &vec![UNTOUCHED; len as usize]);
            let head = self
                .rx
                .add_chain(&self.memory, &[Buffer::writable(gpa, len)]);
            (gpa, head)
        }

        fn output(&mut self) -> Vec<u8> {
            self.console_mut().drain_output().collect()
        }

        fn acknowledge_interrupts(&mut self) {
            write_register(&mut self.transport, &self.memory, INTERRUPT_ACK, 0b11);
        }
    }

    #[test]
    fn identifies_as_console_with_two_queues_and_no_features() {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioConsole::new());
        assert_eq!(read_register(&transport, DEVICE_ID), 3);
        assert_eq!(
            transport.offered_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC,
            "only transport features"
        );
        for (queue, maximum) in [(0, 64), (1, 64), (2, 0)] {
            write_register(&mut transport, &memory, QUEUE_SEL, queue);
            assert_eq!(read_register(&transport, QUEUE_NUM_MAX), maximum);
        }
        assert!(transport.read(CONFIG, 1).is_err(), "no configuration space");
    }

    #[test]
    fn console_features_are_refused_and_version_1_accepted() {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioConsole::new());
        for feature in [
            VIRTIO_CONSOLE_F_SIZE,
            VIRTIO_CONSOLE_F_MULTIPORT,
            VIRTIO_CONSOLE_F_EMERG_WRITE,
        ] {
            let status = negotiate(&mut transport, &memory, FEATURES | feature);
            assert_eq!(status & STATUS_FEATURES_OK, 0, "feature {feature:#x}");
            assert!(!transport.device().driver_present());
        }
        let status = negotiate(&mut transport, &memory, FEATURES);
        assert_ne!(status & STATUS_FEATURES_OK, 0);
        assert_eq!(transport.negotiated_features(), FEATURES);
        assert!(transport.device().driver_present());
    }

    #[test]
    fn output_of_several_chains_arrives_in_order() {
        let mut setup = setup();
        let first = setup.send(&[b"hello, "]);
        // One chain split across two descriptors is one piece of the stream.
        let second = setup.send(&[b"wor", b"ld"]);
        let third = setup.send(&[b"!\n"]);
        assert!(!setup.transport.irq_level());
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        for head in [first, second, third] {
            assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        }
        assert!(setup.transport.irq_level(), "used buffer interrupt");
        assert_eq!(setup.console().pending_output(), 14);
        assert_eq!(setup.output(), b"hello, world!\n");
        assert_eq!(setup.console().pending_output(), 0);
        assert!(!setup.console().output_stalled());
        let counters = setup.console().counters();
        assert_eq!((counters.output_bytes, counters.output_chains), (14, 3));
    }

    #[test]
    fn take_output_hands_every_byte_to_the_sink_once() {
        let mut setup = setup();
        setup.send(&[b"abc"]);
        setup.notify(TRANSMIT_QUEUE);
        setup.send(&[b"def", b"gh"]);
        setup.notify(TRANSMIT_QUEUE);
        let mut seen = Vec::new();
        setup
            .console_mut()
            .take_output(&mut |bytes| seen.extend_from_slice(bytes));
        assert_eq!(seen, b"abcdefgh");
        assert_eq!(setup.console().pending_output(), 0);
        let mut calls = 0;
        setup.console_mut().take_output(&mut |_| calls += 1);
        assert_eq!(calls, 0, "an empty outbox calls nothing");
    }

    #[test]
    fn input_partly_fills_a_receive_buffer() {
        let mut setup = setup();
        let (buffer, head) = setup.post_receive(16);
        assert_eq!(setup.notify(RECEIVE_QUEUE), None);
        assert_eq!(
            setup.rx.used_index(&setup.memory),
            0,
            "no input, no completion"
        );
        assert!(!setup.transport.irq_level());

        assert_eq!(setup.console_mut().queue_input(b"ls\n"), 3);
        assert_eq!(setup.process(RECEIVE_QUEUE), None);
        assert_eq!(setup.rx.pop_used(&setup.memory), Some((u32::from(head), 3)));
        assert_eq!(setup.memory.bytes(buffer, 3), b"ls\n");
        assert_eq!(setup.memory.bytes(buffer + 3, 13), [UNTOUCHED; 13]);
        assert_eq!(setup.console().pending_input(), 0);
        assert!(setup.transport.irq_level());
        let counters = setup.console().counters();
        assert_eq!((counters.input_bytes, counters.input_chains), (3, 1));
    }

    #[test]
    fn input_larger_than_a_buffer_spreads_over_several() {
        let mut setup = setup();
        let (first, first_head) = setup.post_receive(8);
        // A chain of two descriptors takes bytes across both.
        let a = setup.memory.allocate(3, 1);
        let b = setup.memory.allocate(5, 1);
        let second_head = setup.rx.add_chain(
            &setup.memory,
            &[Buffer::writable(a, 3), Buffer::writable(b, 5)],
        );
        let (third, third_head) = setup.post_receive(8);
        let (spare, _) = setup.post_receive(8);
        let input = text(20, 0);
        assert_eq!(setup.console_mut().queue_input(&input), 20);
        assert_eq!(setup.process(RECEIVE_QUEUE), None);

        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(first_head), 8))
        );
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(second_head), 8))
        );
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(third_head), 4))
        );
        assert_eq!(setup.rx.pop_used(&setup.memory), None, "spare stays posted");
        let mut received = setup.memory.bytes(first, 8);
        received.extend(setup.memory.bytes(a, 3));
        received.extend(setup.memory.bytes(b, 5));
        received.extend(setup.memory.bytes(third, 4));
        assert_eq!(received, input);
        assert_eq!(setup.memory.bytes(spare, 8), [UNTOUCHED; 8]);

        // The spare buffer takes the next input.
        setup.console_mut().queue_input(b"q");
        setup.process(RECEIVE_QUEUE);
        assert_eq!(
            setup.rx.pop_used(&setup.memory).map(|(_, len)| len),
            Some(1)
        );
        assert_eq!(setup.memory.bytes(spare, 1), b"q");
    }

    #[test]
    fn input_waits_until_a_buffer_is_posted() {
        let mut setup = setup();
        assert_eq!(setup.console_mut().queue_input(b"typed early"), 11);
        assert_eq!(setup.process(RECEIVE_QUEUE), None);
        assert_eq!(setup.console().pending_input(), 11);
        // More input joins the waiting bytes.
        assert_eq!(setup.console_mut().queue_input(b"!"), 1);

        let (buffer, head) = setup.post_receive(64);
        assert_eq!(setup.notify(RECEIVE_QUEUE), None);
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(head), 12))
        );
        assert_eq!(setup.memory.bytes(buffer, 12), b"typed early!");
        assert_eq!(setup.console().pending_input(), 0);
    }

    #[test]
    fn input_is_dropped_without_a_driver() {
        let mut console = VirtioConsole::new();
        assert!(!console.driver_present());
        assert_eq!(console.queue_input(b"nobody listens"), 0);
        assert_eq!(console.pending_input(), 0);
        assert_eq!(console.counters().input_dropped_no_driver, 14);
    }

    #[test]
    fn input_after_features_ok_is_delivered_at_driver_ok() {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioConsole::new());
        negotiate(&mut transport, &memory, FEATURES);
        assert!(transport.device().driver_present());
        assert_eq!(transport.device_mut().queue_input(b"early"), 5);

        let mut rx = DriverQueue::new(&memory, 8);
        let tx = DriverQueue::new(&memory, 8);
        assert_eq!(setup_queue(&mut transport, &memory, 0, &rx), None);
        assert_eq!(setup_queue(&mut transport, &memory, 1, &tx), None);
        let buffer = memory.allocate(32, 8);
        rx.add_chain(&memory, &[Buffer::writable(buffer, 32)]);
        // Not running yet: the device leaves the buffer alone.
        assert_eq!(transport.process_queue(RECEIVE_QUEUE, &memory), None);
        assert_eq!(rx.used_index(&memory), 0);

        let status = read_register(&transport, STATUS);
        write_register(
            &mut transport,
            &memory,
            STATUS,
            status | u32::from(STATUS_DRIVER_OK),
        );
        assert_eq!(rx.pop_used(&memory).map(|(_, len)| len), Some(5));
        assert_eq!(memory.bytes(buffer, 5), b"early");
    }

    #[test]
    fn inbox_is_bounded() {
        let mut setup = setup();
        let input = text(INBOX_CAPACITY + 100, 3);
        assert_eq!(setup.console_mut().queue_input(&input), INBOX_CAPACITY);
        assert_eq!(setup.console_mut().queue_input(b"more"), 0);
        assert_eq!(setup.console().pending_input(), INBOX_CAPACITY);
        assert_eq!(setup.console().counters().input_refused_inbox_full, 104);

        // Delivering some makes room for exactly that much.
        let (buffer, _) = setup.post_receive(1000);
        setup.notify(RECEIVE_QUEUE);
        assert_eq!(setup.memory.bytes(buffer, 1000), input[..1000]);
        assert_eq!(
            setup.console_mut().queue_input(&input[INBOX_CAPACITY..]),
            100
        );
        assert_eq!(setup.console().pending_input(), INBOX_CAPACITY - 900);
    }

    #[test]
    fn full_outbox_stalls_output_until_drained() {
        let mut setup = setup();
        let chunks: Vec<Vec<u8>> = (0..5).map(|seed| text(4096, seed)).collect();
        let heads: Vec<u16> = chunks.iter().map(|chunk| setup.send(&[chunk])).collect();
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert!(setup.console().output_stalled());
        assert_eq!(setup.console().pending_output(), OUTBOX_CAPACITY);
        for &head in &heads[..4] {
            assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        }
        assert_eq!(
            setup.tx.pop_used(&setup.memory),
            None,
            "fifth chain left in the ring"
        );

        let mut output = setup.output();
        // A notification while stalled but drained picks up where the device stopped.
        assert_eq!(setup.process(TRANSMIT_QUEUE), None);
        assert!(!setup.console().output_stalled());
        assert_eq!(
            setup.tx.pop_used(&setup.memory),
            Some((u32::from(heads[4]), 0))
        );
        output.extend(setup.output());
        assert_eq!(output, chunks.concat());
    }

    #[test]
    fn chain_larger_than_the_outbox_is_output_in_parts() {
        let mut setup = setup();
        let big = text(OUTBOX_CAPACITY + 5000, 7);
        let big_head = setup.send(&[&big[..9000], &big[9000..]]);
        let after = setup.send(&[b"after"]);
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert!(setup.console().output_stalled());
        assert_eq!(setup.tx.used_index(&setup.memory), 0, "chain not done yet");
        // Further notifications without draining change nothing.
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert_eq!(setup.console().pending_output(), OUTBOX_CAPACITY);
        assert_eq!(setup.tx.used_index(&setup.memory), 0);

        let mut output = setup.output();
        assert_eq!(setup.process(TRANSMIT_QUEUE), None);
        assert_eq!(setup.console().pending_output(), 5005);
        assert!(!setup.console().output_stalled());
        assert_eq!(
            setup.tx.pop_used(&setup.memory),
            Some((u32::from(big_head), 0))
        );
        assert_eq!(
            setup.tx.pop_used(&setup.memory),
            Some((u32::from(after), 0))
        );
        output.extend(setup.output());
        assert_eq!(output[..big.len()], big[..]);
        assert_eq!(&output[big.len()..], b"after");
        assert_eq!(setup.console().counters().output_chains, 2);
    }

    #[test]
    fn stalled_without_draining_takes_nothing_more() {
        let mut setup = setup();
        setup.send(&[&text(OUTBOX_CAPACITY, 1)]);
        let waiting = setup.send(&[b"x"]);
        setup.notify(TRANSMIT_QUEUE);
        assert!(setup.console().output_stalled());
        setup.tx.pop_used(&setup.memory);
        setup.notify(TRANSMIT_QUEUE);
        assert!(setup.console().output_stalled());
        assert_eq!(setup.tx.pop_used(&setup.memory), None);
        assert_eq!(setup.console().pending_output(), OUTBOX_CAPACITY);
        setup.output();
        setup.process(TRANSMIT_QUEUE);
        assert_eq!(
            setup.tx.pop_used(&setup.memory),
            Some((u32::from(waiting), 0))
        );
        assert_eq!(setup.output(), b"x");
    }

    #[test]
    fn reset_clears_buffers_stall_and_driver() {
        let mut setup = setup();
        setup.send(&[&text(OUTBOX_CAPACITY + 10, 2)]);
        setup.notify(TRANSMIT_QUEUE);
        assert!(setup.console().output_stalled());
        assert_eq!(setup.console_mut().queue_input(b"pending"), 7);

        write_register(&mut setup.transport, &setup.memory, STATUS, 0);
        let console = setup.console();
        assert!(!console.driver_present());
        assert!(!console.output_stalled());
        assert_eq!((console.pending_output(), console.pending_input()), (0, 0));
        assert_eq!(setup.console_mut().queue_input(b"lost"), 0, "no driver");
        assert_eq!(
            setup.console().counters().output_bytes,
            OUTBOX_CAPACITY as u64,
            "statistics survive"
        );

        // A new driver starts clean: the old half-sent chain does not reappear.
        let memory = &setup.memory;
        let mut queues = bring_up_queues(&mut setup.transport, memory, FEATURES, &[8, 8]);
        let mut tx = queues.remove(1);
        let mut rx = queues.remove(0);
        let out = memory.allocate(4, 8);
        memory.put(out, b"new\n");
        tx.add_chain(memory, &[Buffer::readable(out, 4)]);
        write_register(&mut setup.transport, memory, QUEUE_NOTIFY, 1);
        assert_eq!(tx.pop_used(memory), Some((0, 0)));
        assert_eq!(setup.output(), b"new\n");

        let input = setup.memory.allocate(8, 8);
        rx.add_chain(&setup.memory, &[Buffer::writable(input, 8)]);
        assert_eq!(setup.console_mut().queue_input(b"hi"), 2);
        setup.process(RECEIVE_QUEUE);
        assert_eq!(rx.pop_used(&setup.memory), Some((0, 2)));
        assert_eq!(setup.memory.bytes(input, 2), b"hi");
    }

    #[test]
    fn transmit_chain_with_writable_buffer_is_refused() {
        let mut setup = setup();
        let readable = setup.memory.allocate(4, 8);
        setup.memory.put(readable, b"evil");
        let writable = setup.memory.allocate(6, 8);
        let head = setup.tx.add_chain(
            &setup.memory,
            &[Buffer::readable(readable, 4), Buffer::writable(writable, 6)],
        );
        let good = setup.send(&[b"good"]);
        assert_eq!(
            setup.notify(TRANSMIT_QUEUE),
            Some(DeviceError::Request {
                queue: TRANSMIT_QUEUE,
                head,
                error: RequestError::WritableInTransmitChain { len: 6 }
            })
        );
        assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(good), 0)));
        assert_eq!(setup.output(), b"good", "nothing of the refused chain");
        assert_eq!(setup.console().counters().transmit_chains_refused, 1);
    }

    #[test]
    fn receive_chain_with_readable_buffer_is_refused_and_input_kept() {
        let mut setup = setup();
        let readable = setup.memory.allocate(8, 8);
        setup.memory.put(readable, &[UNTOUCHED; 8]);
        let read_only = setup
            .rx
            .add_chain(&setup.memory, &[Buffer::readable(readable, 8)]);
        let mixed_readable = setup.memory.allocate(4, 8);
        let mixed_writable = setup.memory.allocate(8, 8);
        setup.memory.put(mixed_writable, &[UNTOUCHED; 8]);
        let mixed = setup.rx.add_chain(
            &setup.memory,
            &[
                Buffer::readable(mixed_readable, 4),
                Buffer::writable(mixed_writable, 8),
            ],
        );
        let (good_buffer, good) = setup.post_receive(8);
        assert_eq!(setup.console_mut().queue_input(b"key"), 3);
        assert_eq!(
            setup.process(RECEIVE_QUEUE),
            Some(DeviceError::Request {
                queue: RECEIVE_QUEUE,
                head: read_only,
                error: RequestError::ReadableInReceiveChain { len: 8 }
            })
        );
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(read_only), 0))
        );
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(mixed), 0))
        );
        assert_eq!(setup.rx.pop_used(&setup.memory), Some((u32::from(good), 3)));
        assert_eq!(setup.memory.bytes(readable, 8), [UNTOUCHED; 8]);
        assert_eq!(setup.memory.bytes(mixed_writable, 8), [UNTOUCHED; 8]);
        assert_eq!(setup.memory.bytes(good_buffer, 3), b"key");
        assert_eq!(setup.console().counters().receive_chains_refused, 2);
    }

    #[test]
    fn receive_chain_without_writable_bytes_is_refused() {
        let mut setup = setup();
        let buffer = setup.memory.allocate(8, 8);
        let empty = setup
            .rx
            .add_chain(&setup.memory, &[Buffer::writable(buffer, 0)]);
        setup.console_mut().queue_input(b"z");
        assert_eq!(
            setup.process(RECEIVE_QUEUE),
            Some(DeviceError::Request {
                queue: RECEIVE_QUEUE,
                head: empty,
                error: RequestError::NoWritableBuffer
            })
        );
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(empty), 0))
        );
        assert_eq!(setup.console().pending_input(), 1);
    }

    #[test]
    fn buffers_outside_memory_are_refused_and_the_device_keeps_working() {
        let mut setup = setup();
        let end = setup.memory.end();

        // Transmit: the second descriptor runs past the end of guest memory, so not even
        // the first is output.
        let inside = setup.memory.allocate(5, 8);
        setup.memory.put(inside, b"start");
        let head = setup.tx.add_chain(
            &setup.memory,
            &[Buffer::readable(inside, 5), Buffer::readable(end - 10, 60)],
        );
        assert_eq!(
            setup.notify(TRANSMIT_QUEUE),
            Some(DeviceError::Request {
                queue: TRANSMIT_QUEUE,
                head,
                error: RequestError::Buffer(BufferError::Memory(MemoryError::OutOfBounds {
                    gpa: end - 10,
                    len: 60
                }))
            })
        );
        assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        assert_eq!(setup.console().pending_output(), 0);

        // Receive: nothing is written, not even into the part inside memory, and the input
        // waits for the next buffer.
        let inside = setup.memory.allocate(4, 8);
        setup.memory.put(inside, &[UNTOUCHED; 4]);
        setup.memory.put(end - 8, &[0x55; 8]);
        let head = setup.rx.add_chain(
            &setup.memory,
            &[Buffer::writable(inside, 4), Buffer::writable(end - 8, 64)],
        );
        setup.console_mut().queue_input(b"input");
        assert_eq!(
            setup.process(RECEIVE_QUEUE),
            Some(DeviceError::Request {
                queue: RECEIVE_QUEUE,
                head,
                error: RequestError::Buffer(BufferError::Memory(MemoryError::OutOfBounds {
                    gpa: end - 8,
                    len: 64
                }))
            })
        );
        assert_eq!(setup.rx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        assert_eq!(setup.memory.bytes(inside, 4), [UNTOUCHED; 4]);
        assert_eq!(setup.memory.bytes(end - 8, 8), [0x55; 8]);

        // An address that wraps around the address space.
        let head = setup
            .rx
            .add_chain(&setup.memory, &[Buffer::writable(u64::MAX - 3, 16)]);
        assert!(matches!(
            setup.process(RECEIVE_QUEUE),
            Some(DeviceError::Request {
                error: RequestError::Buffer(BufferError::Memory(_)),
                ..
            })
        ));
        assert_eq!(setup.rx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        let counters = setup.console().counters();
        assert_eq!(
            (
                counters.transmit_chains_refused,
                counters.receive_chains_refused
            ),
            (1, 2)
        );

        // Both directions still work.
        setup.send(&[b"ok"]);
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert_eq!(setup.output(), b"ok");
        let (buffer, _) = setup.post_receive(16);
        assert_eq!(setup.notify(RECEIVE_QUEUE), None);
        assert_eq!(setup.memory.bytes(buffer, 5), b"input");
        assert_eq!(
            setup.transport.status() & STATUS_DRIVER_OK,
            STATUS_DRIVER_OK
        );
    }

    #[test]
    fn descriptor_loop_is_skipped() {
        let mut setup = setup();
        let buffer = setup.memory.allocate(16, 8);
        // Reserve descriptors 0 and 1 and make them point at each other.
        setup.tx.add_chain_descriptors(
            &setup.memory,
            &[Buffer::readable(buffer, 16), Buffer::readable(buffer, 16)],
        );
        setup
            .tx
            .write_descriptor(&setup.memory, 0, buffer, 16, VIRTQ_DESC_F_NEXT, 1);
        setup
            .tx
            .write_descriptor(&setup.memory, 1, buffer, 16, VIRTQ_DESC_F_NEXT, 0);
        setup.tx.publish(&setup.memory, 0);
        setup.send(&[b"after the loop"]);
        assert_eq!(
            setup.notify(TRANSMIT_QUEUE),
            Some(DeviceError::Queue {
                queue: TRANSMIT_QUEUE,
                error: QueueError::ChainTooLong { head: 0, limit: 16 }
            })
        );
        assert_eq!(setup.output(), b"after the loop");
    }

    #[test]
    fn interrupts_follow_completions() {
        let mut setup = setup();
        setup.post_receive(8);
        setup.notify(RECEIVE_QUEUE);
        assert!(
            !setup.transport.irq_level(),
            "posting alone completes nothing"
        );
        setup.console_mut().queue_input(b"a");
        setup.process(RECEIVE_QUEUE);
        assert!(setup.transport.irq_level());
        setup.acknowledge_interrupts();

        // A driver polling its receiveq suppresses the interrupt.
        setup.rx.set_no_interrupt(&setup.memory, true);
        setup.post_receive(8);
        setup.console_mut().queue_input(b"b");
        setup.process(RECEIVE_QUEUE);
        assert_eq!(setup.rx.used_index(&setup.memory), 2);
        assert!(!setup.transport.irq_level());

        setup.send(&[b"c"]);
        setup.notify(TRANSMIT_QUEUE);
        assert!(setup.transport.irq_level(), "transmit completion");
    }

    /// Random descriptor tables on both queues must never panic the device, never let the
    /// outbox grow past its capacity, and never complete a descriptor that does not exist.
    #[test]
    fn garbage_descriptor_tables_never_panic() {
        let mut random = TestRandom::new(0x636f_6e73);
        let mut completions = 0usize;
        for _round in 0..200 {
            let mut setup = setup();
            let memory_end = setup.memory.end();
            let scratch = setup.memory.allocate(32 * 1024, 16);
            let mut noise = vec![0u8; 32 * 1024];
            random
                .fill(&mut noise)
                .expect("the test generator never fails");
            setup.memory.put(scratch, &noise);
            for queue in [&setup.rx, &setup.tx] {
                for index in 0..queue.size {
                    let addr = match random.below(4) {
                        0 => random.next_u64(),
                        1 => RAM_BASE + random.below(memory_end - RAM_BASE),
                        _ => scratch + random.below(16) * 1024,
                    };
                    let len = match random.below(4) {
                        0 => random.next_u64() as u32,
                        _ => random.below(12 * 1024) as u32,
                    };
                    let flags = random.below(8) as u16;
                    let next = random.below(u64::from(queue.size) + 2) as u16;
                    queue.write_descriptor(&setup.memory, index, addr, len, flags, next);
                }
            }
            for _ in 0..random.below(20) {
                let head = random.below(17) as u16;
                setup.tx.publish(&setup.memory, head);
                let head = random.below(17) as u16;
                setup.rx.publish(&setup.memory, head);
            }
            for _ in 0..3 {
                let len = random.below(3000) as usize;
                setup.console_mut().queue_input(&noise[..len]);
                let _ = setup.notify(TRANSMIT_QUEUE);
                let _ = setup.notify(RECEIVE_QUEUE);
                assert!(setup.console().pending_output() <= OUTBOX_CAPACITY);
                assert!(setup.console().pending_input() <= INBOX_CAPACITY);
                if random.below(2) == 0 {
                    setup.output();
                }
            }
            while let Some((id, len)) = setup.tx.pop_used(&setup.memory) {
                assert!(id < 16, "used entry for descriptor {id}");
                assert_eq!(len, 0, "the device writes nothing into transmit buffers");
                completions += 1;
            }
            while let Some((id, len)) = setup.rx.pop_used(&setup.memory) {
                assert!(id < 16, "used entry for descriptor {id}");
                assert!(len as usize <= INBOX_CAPACITY);
                completions += 1;
            }
            assert!(setup.transport.read(STATUS, 4).is_ok());
        }
        assert!(completions > 100, "only {completions} chains completed");
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            RequestError::WritableInTransmitChain { len: 6 }.to_string(),
            "transmit chain has device-writable buffers (6 bytes); a transmitq takes only device-readable ones"
        );
        assert_eq!(
            RequestError::ReadableInReceiveChain { len: 8 }.to_string(),
            "receive chain has device-readable buffers (8 bytes); a receiveq takes only device-writable ones"
        );
        let error = DeviceError::Request {
            queue: RECEIVE_QUEUE,
            head: 3,
            error: RequestError::NoWritableBuffer,
        };
        assert_eq!(
            error.to_string(),
            "queue 0, request at descriptor 3: no device-writable buffer to fill"
        );
    }
}
