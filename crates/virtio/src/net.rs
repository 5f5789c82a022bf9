//! virtio-net: a network card whose frames go to and come from the hypervisor through bounded in-memory queues.
//!
//! Two virtqueues (VIRTIO 1.2, section 5.1): queue 0 is the receiveq, queue 1 the transmitq.
//! The only device features offered are `VIRTIO_NET_F_MAC` and `VIRTIO_NET_F_STATUS`, so
//! there are no offloads, no mergeable receive buffers, no control queue and a single
//! queue pair. Because the transport insists on `VIRTIO_F_VERSION_1`, every buffer starts
//! with the 12-byte `struct virtio_net_hdr` including `num_buffers`:
//!
//! | offset | field         | size |
//! |--------|---------------|------|
//! | 0      | `flags`       | 1    |
//! | 1      | `gso_type`    | 1    |
//! | 2      | `hdr_len`     | 2    |
//! | 4      | `gso_size`    | 2    |
//! | 6      | `csum_start`  | 2    |
//! | 8      | `csum_offset` | 2    |
//! | 10     | `num_buffers` | 2    |
//!
//! Configuration space (read-only): `mac[6]` at 0, `status: u16` at 6, which always reads
//! `VIRTIO_NET_S_LINK_UP`.
//!
//! Frames are Ethernet frames without the frame check sequence: 14 bytes of header and up
//! to 1500 bytes of payload.
//!
//! **Transmit.** Each transmitq chain is one frame after its header. With no offload
//! negotiated the header should be all zeros; a driver that still sets `flags` or
//! `gso_type` expects the device to finish checksums or split the frame, which this device
//! does not do, so such a frame is dropped and reported rather than sent half-finished.
//! Good frames go to an outbox of [`OUTBOX_CAPACITY`] frames that the hypervisor drains with
//! [`VirtioNet::take_transmitted`] or [`VirtioNet::drain_transmitted`]. While the outbox is
//! full the device leaves transmit chains in the ring, which is the driver's back-pressure;
//! after draining, the hypervisor calls `MmioTransport::process_queue(TRANSMIT_QUEUE, ..)`.
//!
//! **Receive.** The hypervisor hands inbound frames to [`VirtioNet::enqueue_received`],
//! which keeps up to [`INBOX_CAPACITY`] of them, and then calls
//! `MmioTransport::process_queue(RECEIVE_QUEUE, ..)`. Each frame takes one receive chain: a
//! zeroed header with `num_buffers` = 1, then the frame. Frames wait in the inbox while the
//! driver has no buffers posted; posting buffers notifies queue 0, which delivers them.
//!
//! A receive chain too small for header and frame is returned to the driver with 0 bytes
//! written and the frame is dropped and reported. Leaving the chain in the ring is not an
//! option: chains are consumed in ring order, so a chain the device skipped would block
//! every buffer posted behind it. Keeping the frame for the next chain is not better
//! either: a driver posting only small buffers would then stall all reception behind one
//! frame, where dropping it still lets smaller frames through. A driver that sized its
//! buffers for the 1514-byte MTU, as the specification requires without mergeable
//! buffers, never sees this.

use alloc::collections::vec_deque::{self, VecDeque};
use core::fmt;
use core::ops::Deref;

use crate::error::{DeviceError, RequestError};
use crate::mmio::{copy_config, Device};
use crate::queue::{DescriptorChain, GuestMemory, Virtqueue};
use crate::VIRTIO_ID_NET;

/// Feature bit: the device has a MAC address in `mac`.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature bit: the link status is in `status`.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Index of the receiveq.
pub const RECEIVE_QUEUE: u16 = 0;
/// Index of the transmitq.
pub const TRANSMIT_QUEUE: u16 = 1;
/// Size of both queues offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// Size of `struct virtio_net_hdr` with `num_buffers` (VIRTIO_F_VERSION_1).
pub const VIRTIO_NET_HDR_LEN: usize = 12;
/// Length of an Ethernet header: destination MAC, source MAC, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// The MTU: the most payload bytes after the Ethernet header.
pub const MTU: usize = 1500;
/// Shortest frame accepted: a bare Ethernet header.
pub const MIN_FRAME_LEN: usize = ETHERNET_HEADER_LEN;
/// Longest frame accepted: Ethernet header and a full MTU, without frame check sequence.
pub const MAX_FRAME_LEN: usize = ETHERNET_HEADER_LEN + MTU;

/// Most transmitted frames waiting for the hypervisor.
pub const OUTBOX_CAPACITY: usize = 256;
/// Most received frames waiting for receive buffers.
pub const INBOX_CAPACITY: usize = 256;

// Offsets in `struct virtio_net_hdr`.
const HDR_FLAGS: usize = 0;
const HDR_GSO_TYPE: usize = 1;
const HDR_NUM_BUFFERS: usize = 10;

// Configuration space layout (struct virtio_net_config), offsets in bytes.
const CONFIG_MAC: usize = 0;
const CONFIG_STATUS: usize = 6;
/// `mac` and `status`; the fields after them belong to features not offered.
const CONFIG_LEN: usize = 8;

/// One Ethernet frame (without frame check sequence), stored inline so that queueing
/// frames does not allocate once the queues have grown.
#[derive(Clone)]
pub struct Frame {
    len: u16,
    bytes: [u8; MAX_FRAME_LEN],
}

impl Frame {
    /// A copy of `data`, or `None` if it is not between [`MIN_FRAME_LEN`] and
    /// [`MAX_FRAME_LEN`] bytes long.
    pub fn new(data: &[u8]) -> Option<Self> {
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&data.len()) {
            return None;
        }
        let mut frame = Self::zeroed(data.len());
        frame.bytes[..data.len()].copy_from_slice(data);
        Some(frame)
    }

    /// A frame of `len` zero bytes; `len` is at most [`MAX_FRAME_LEN`].
    fn zeroed(len: usize) -> Self {
        Self {
            // Callers pass at most MAX_FRAME_LEN, which fits in 16 bits.
            len: len.min(MAX_FRAME_LEN) as u16,
            bytes: [0; MAX_FRAME_LEN],
        }
    }

    /// The frame's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..usize::from(self.len)]
    }
}

impl Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Frame {}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.as_slice();
        // Frames are at least an Ethernet header long, so the fields exist.
        f.debug_struct("Frame")
            .field("len", &bytes.len())
            .field("destination", &MacDisplay(&bytes[0..6]))
            .field("source", &MacDisplay(&bytes[6..12]))
            .field(
                "ethertype",
                &format_args!("{:#06x}", u16::from_be_bytes([bytes[12], bytes[13]])),
            )
            .finish()
    }
}

struct MacDisplay<'a>(&'a [u8]);

impl fmt::Debug for MacDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Traffic and drop statistics of one network card, kept across device resets.
///
/// Byte counts are Ethernet frame bytes, without the `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the driver transmitted that went into the outbox.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames delivered into receive buffers.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Transmitted chains with a header shorter than 12 bytes or a frame outside 14 to 1514
    /// bytes.
    pub tx_dropped_length: u64,
    /// Transmitted frames whose header asked for offloads that were not negotiated.
    pub tx_dropped_offload: u64,
    /// Transmitted chains whose buffers could not be read (outside the capsule's memory).
    pub tx_dropped_bad_buffer: u64,
    /// Inbound frames refused because the inbox was full.
    pub rx_dropped_inbox_full: u64,
    /// Inbound frames refused because no driver had accepted the device's features yet.
    pub rx_dropped_no_driver: u64,
    /// Inbound frames refused for a length outside 14 to 1514 bytes.
    pub rx_dropped_length: u64,
    /// Inbound frames dropped because the receive chain offered for them was too small.
    pub rx_dropped_buffer_too_small: u64,
    /// Inbound frames dropped because the receive chain offered for them was (partly)
    /// outside the capsule's memory.
    pub rx_dropped_bad_buffer: u64,
}

/// A virtio network card with a fixed MAC address and a link that is always up.
#[derive(Debug)]
pub struct VirtioNet {
    mac: [u8; 6],
    /// A driver accepted the features and has not reset the device since: only then are
    /// inbound frames worth keeping.
    driver_present: bool,
    inbox: VecDeque<Frame>,
    outbox: VecDeque<Frame>,
    /// The last transmit pass stopped because the outbox was full.
    transmit_stalled: bool,
    counters: NetCounters,
}

impl VirtioNet {
    /// A network card with the MAC address `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            driver_present: false,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            transmit_stalled: false,
            counters: NetCounters::default(),
        }
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Traffic and drop statistics.
    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }

    /// Queues an inbound frame for the driver. Returns false if the frame was dropped: its
    /// length is outside [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`], no driver is running, or the
    /// inbox already holds [`INBOX_CAPACITY`] frames.
    ///
    /// The frame reaches the capsule once the hypervisor calls
    /// `MmioTransport::process_queue(RECEIVE_QUEUE, ..)` and a receive buffer is available.
    pub fn enqueue_received(&mut self, frame: &[u8]) -> bool {
        // A card without a driver drops traffic rather than handing the driver stale frames
        // when it starts.
        if !self.driver_present {
            self.counters.rx_dropped_no_driver += 1;
            return false;
        }
        let Some(frame) = Frame::new(frame) else {
            self.counters.rx_dropped_length += 1;
            return false;
        };
        if self.inbox.len() >= INBOX_CAPACITY {
            self.counters.rx_dropped_inbox_full += 1;
            return false;
        }
        self.inbox.push_back(frame);
        true
    }

    /// Inbound frames waiting for receive buffers.
    pub fn pending_received(&self) -> usize {
        self.inbox.len()
    }

    /// Takes the oldest frame the driver transmitted.
    pub fn take_transmitted(&mut self) -> Option<Frame> {
        self.outbox.pop_front()
    }

    /// Takes every frame the driver transmitted, oldest first.
    pub fn drain_transmitted(&mut self) -> vec_deque::Drain<'_, Frame> {
        self.outbox.drain(..)
    }

    /// Transmitted frames waiting for the hypervisor.
    pub fn pending_transmitted(&self) -> usize {
        self.outbox.len()
    }

    /// Whether the last transmit pass stopped because the outbox was full, so transmit
    /// chains may be waiting: after draining, the hypervisor should call
    /// `MmioTransport::process_queue(TRANSMIT_QUEUE, ..)`.
    pub fn transmit_stalled(&self) -> bool {
        self.transmit_stalled
    }

    /// Moves frames from transmit chains into the outbox while it has room.
    fn transmit(
        &mut self,
        queue: u16,
        virtqueue: &mut Virtqueue,
        memory: &dyn GuestMemory,
    ) -> Result<(), DeviceError> {
        self.transmit_stalled = false;
        let mut first_error = None;
        // At most one queue's worth per pass, so a driver publishing from another vCPU
        // cannot keep the device here; it notifies again for what it publishes later.
        for _ in 0..virtqueue.size() {
            if self.outbox.len() >= OUTBOX_CAPACITY {
                self.transmit_stalled = true;
                break;
            }
            let Some(chain) = virtqueue.pop_for_device(queue, memory, &mut first_error)? else {
                break;
            };
            match self.read_frame(&chain, memory) {
                Ok(frame) => {
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += frame.len() as u64;
                    self.outbox.push_back(frame);
                }
                Err(error) => {
                    match error {
                        RequestError::NetOffloadRequested { .. } => {
                            self.counters.tx_dropped_offload += 1;
                        }
                        RequestError::Buffer(_) => self.counters.tx_dropped_bad_buffer += 1,
                        _ => self.counters.tx_dropped_length += 1,
                    }
                    first_error.get_or_insert(DeviceError::Request {
                        queue,
                        head: chain.head(),
                        error,
                    });
                }
            }
            // The device writes nothing into transmit buffers.
            virtqueue.complete(queue, memory, chain.head(), 0)?;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Copies the frame out of a transmit chain, checking its header and length first.
    fn read_frame(
        &self,
        chain: &DescriptorChain,
        memory: &dyn GuestMemory,
    ) -> Result<Frame, RequestError> {
        let readable = chain.readable_len();
        if readable < VIRTIO_NET_HDR_LEN as u64 {
            return Err(RequestError::NetHeaderTooShort { len: readable });
        }
        let mut header = [0u8; VIRTIO_NET_HDR_LEN];
        chain.read(memory, 0, &mut header)?;
        let (flags, gso_type) = (header[HDR_FLAGS], header[HDR_GSO_TYPE]);
        if flags != 0 || gso_type != 0 {
            return Err(RequestError::NetOffloadRequested { flags, gso_type });
        }
        let len = readable - VIRTIO_NET_HDR_LEN as u64;
        if !(MIN_FRAME_LEN as u64..=MAX_FRAME_LEN as u64).contains(&len) {
            return Err(RequestError::FrameLength {
                len,
                minimum: MIN_FRAME_LEN as u64,
                maximum: MAX_FRAME_LEN as u64,
            });
        }
        // Bounded by MAX_FRAME_LEN just above.
        let mut frame = Frame::zeroed(len as usize);
        chain.read(memory, VIRTIO_NET_HDR_LEN as u64, frame.as_mut_slice())?;
        Ok(frame)
    }

    /// Moves inbox frames into receive chains, one frame per chain, while both last.
    fn receive(
        &mut self,
        queue: u16,
        virtqueue: &mut Virtqueue,
        memory: &dyn GuestMemory,
    ) -> Result<(), DeviceError> {
        let mut first_error = None;
        for _ in 0..virtqueue.size() {
            let Some(frame) = self.inbox.pop_front() else {
                break;
            };
            // Without a chain the frame goes back to the head of the inbox to wait.
            let chain = match virtqueue.pop_for_device(queue, memory, &mut first_error) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    self.inbox.push_front(frame);
                    break;
                }
                Err(error) => {
                    self.inbox.push_front(frame);
                    return Err(error);
                }
            };
            let written = match write_frame(&chain, memory, &frame) {
                Ok(written) => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += frame.len() as u64;
                    written
                }
                Err(error) => {
                    if matches!(error, RequestError::ReceiveBufferTooSmall { .. }) {
                        self.counters.rx_dropped_buffer_too_small += 1;
                    } else {
                        self.counters.rx_dropped_bad_buffer += 1;
                    }
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
}

/// Writes the header and `frame` into a receive chain and returns the bytes written.
/// Nothing is written unless the whole chain is inside the capsule's memory and large
/// enough.
fn write_frame(
    chain: &DescriptorChain,
    memory: &dyn GuestMemory,
    frame: &Frame,
) -> Result<u32, RequestError> {
    let needed = (VIRTIO_NET_HDR_LEN + frame.len()) as u64;
    let available = chain.writable_len();
    if available < needed {
        return Err(RequestError::ReceiveBufferTooSmall { needed, available });
    }
    chain.check_memory(memory)?;
    let mut header = [0u8; VIRTIO_NET_HDR_LEN];
    header[HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
    chain.write(memory, 0, &header)?;
    chain.write(memory, VIRTIO_NET_HDR_LEN as u64, frame)?;
    // At most 12 + 1514 bytes.
    Ok(needed as u32)
}

impl Device for VirtioNet {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn device_features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn set_driver_features(&mut self, _features: u64) {
        self.driver_present = true;
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN as u32
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[CONFIG_MAC..CONFIG_MAC + 6].copy_from_slice(&self.mac);
        config[CONFIG_STATUS..CONFIG_STATUS + 2]
            .copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        copy_config(&config, offset, data);
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

    /// Frames in flight belong to the driver that went away; the statistics stay.
    fn reset(&mut self) {
        self.driver_present = false;
        self.inbox.clear();
        self.outbox.clear();
        self.transmit_stalled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{AccessError, MmioTransport, STATUS_FEATURES_OK};
    use crate::queue::{BufferError, MemoryError, QueueError, VIRTQ_DESC_F_NEXT};
    use crate::rng::EntropySource;
    use crate::testing::*;
    use crate::{VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};

    type Net = MmioTransport<VirtioNet>;

    const MAC: [u8; 6] = [0x02, 0x4b, 0x45, 0x45, 0x4c, 0x07];
    const PEER: [u8; 6] = [0x02, 0x4b, 0x45, 0x45, 0x4c, 0x99];
    const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
    const QUEUE_SEL: u64 = 0x030;
    const QUEUE_NUM_MAX: u64 = 0x034;
    const QUEUE_NOTIFY: u64 = 0x050;
    const INTERRUPT_ACK: u64 = 0x064;
    const STATUS: u64 = 0x070;
    const CONFIG: u64 = 0x100;
    /// Receive buffer size a driver without mergeable buffers posts.
    const FULL_BUFFER: u32 = (VIRTIO_NET_HDR_LEN + MAX_FRAME_LEN) as u32;
    /// Byte the test fills receive buffers with, to see what the device wrote.
    const UNTOUCHED: u8 = 0xaa;

    struct Setup {
        transport: Net,
        memory: TestMemory,
        rx: DriverQueue,
        tx: DriverQueue,
    }

    fn setup_with_sizes(rx_size: u16, tx_size: u16) -> Setup {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioNet::new(MAC));
        let mut queues = bring_up_queues(&mut transport, &memory, FEATURES, &[rx_size, tx_size]);
        let tx = queues.remove(1);
        let rx = queues.remove(0);
        Setup {
            transport,
            memory,
            rx,
            tx,
        }
    }

    fn setup() -> Setup {
        setup_with_sizes(16, 16)
    }

    /// An Ethernet frame of `len` bytes from this card to its peer, numbered `id` in the
    /// first payload bytes.
    fn frame(len: usize, id: u16) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&PEER);
        bytes.extend_from_slice(&MAC);
        bytes.extend_from_slice(&0x0800u16.to_be_bytes());
        bytes.extend_from_slice(&id.to_be_bytes());
        let mut value = id as u8;
        while bytes.len() < len {
            value = value.wrapping_mul(13).wrapping_add(7);
            bytes.push(value);
        }
        bytes.truncate(len);
        bytes
    }

    fn header(flags: u8, gso_type: u8) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut header = [0u8; VIRTIO_NET_HDR_LEN];
        header[HDR_FLAGS] = flags;
        header[HDR_GSO_TYPE] = gso_type;
        header
    }

    fn frame_id(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[14], frame[15]])
    }

    impl Setup {
        fn net(&self) -> &VirtioNet {
            self.transport.device()
        }

        fn net_mut(&mut self) -> &mut VirtioNet {
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

        /// Header and frame in one readable buffer, published on the transmitq.
        fn add_transmit(&mut self, header: &[u8], frame: &[u8]) -> u16 {
            let len = header.len() + frame.len();
            let buffer = self.memory.allocate(len as u64, 8);
            self.memory.put(buffer, header);
            self.memory.put(buffer + header.len() as u64, frame);
            self.tx
                .add_chain(&self.memory, &[Buffer::readable(buffer, len as u32)])
        }

        /// A receive buffer of `len` bytes, filled with [`UNTOUCHED`]; returns its address
        /// and head.
        fn add_receive(&mut self, len: u32) -> (u64, u16) {
            let buffer = self.memory.allocate(u64::from(len), 8);
            self.memory.put(buffer, &vec![UNTOUCHED; len as usize]);
            let head = self
                .rx
                .add_chain(&self.memory, &[Buffer::writable(buffer, len)]);
            (buffer, head)
        }

        fn acknowledge_interrupts(&mut self) {
            write_register(&mut self.transport, &self.memory, INTERRUPT_ACK, 0b11);
        }
    }

    /// The header the device writes in front of every received frame.
    fn received_header() -> Vec<u8> {
        let mut header = vec![0u8; VIRTIO_NET_HDR_LEN];
        header[HDR_NUM_BUFFERS] = 1;
        header
    }

    #[test]
    fn identifies_as_network_card_with_two_queues() {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioNet::new(MAC));
        assert_eq!(read_register(&transport, 0x008), VIRTIO_ID_NET);
        assert_eq!(
            transport.offered_features(),
            VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC
        );
        for (queue, maximum) in [(0, 256), (1, 256), (2, 0)] {
            write_register(&mut transport, &memory, QUEUE_SEL, queue);
            assert_eq!(read_register(&transport, QUEUE_NUM_MAX), maximum);
        }
        assert_eq!(transport.device().mac(), MAC);
    }

    #[test]
    fn feature_negotiation_refuses_offloads() {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioNet::new(MAC));
        let cases = [
            (FEATURES, true),
            (VIRTIO_F_VERSION_1, true),
            (FEATURES | VIRTIO_F_INDIRECT_DESC, true),
            // VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
            // VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ: none offered.
            (FEATURES | 1 << 0, false),
            (FEATURES | 1 << 11, false),
            (FEATURES | 1 << 15, false),
            (FEATURES | 1 << 17, false),
            (FEATURES | 1 << 22, false),
            (VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS, false),
        ];
        for (features, accepted) in cases {
            let status = negotiate(&mut transport, &memory, features);
            assert_eq!(
                status & STATUS_FEATURES_OK != 0,
                accepted,
                "features {features:#x}"
            );
        }
    }

    #[test]
    fn config_space_holds_mac_and_link_status() {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioNet::new(MAC));
        let mac: Vec<u8> = (0..6)
            .map(|index| transport.read(CONFIG + index, 1).unwrap() as u8)
            .collect();
        assert_eq!(mac, MAC);
        assert_eq!(
            transport.read(CONFIG + 6, 2),
            Ok(u32::from(VIRTIO_NET_S_LINK_UP))
        );
        assert_eq!(
            transport.read(CONFIG, 4),
            Ok(u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]))
        );
        assert_eq!(
            transport.read(CONFIG + 4, 4),
            Ok(u32::from_le_bytes([MAC[4], MAC[5], 1, 0]))
        );
        assert_eq!(
            transport.read(CONFIG + 8, 2),
            Err(AccessError::ConfigOutOfRange {
                offset: CONFIG + 8,
                size: 2,
                config_len: 8
            })
        );
        assert_eq!(
            transport.write(CONFIG, 1, 0xff, &memory),
            Err(AccessError::ConfigNotWritable {
                offset: CONFIG,
                size: 1
            })
        );
        assert_eq!(transport.read(CONFIG, 1), Ok(u32::from(MAC[0])));
    }

    #[test]
    fn transmits_one_frame() {
        let mut setup = setup();
        let sent = frame(60, 1);
        let head = setup.add_transmit(&header(0, 0), &sent);
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        assert!(setup.transport.irq_level());
        assert_eq!(setup.net().pending_transmitted(), 1);
        let taken = setup.net_mut().take_transmitted().expect("frame in outbox");
        assert_eq!(taken.as_slice(), &sent[..]);
        assert_eq!(taken.len(), 60);
        assert!(setup.net_mut().take_transmitted().is_none());
        let counters = setup.net().counters();
        assert_eq!((counters.tx_frames, counters.tx_bytes), (1, 60));
        assert_eq!(
            *counters,
            NetCounters {
                tx_frames: 1,
                tx_bytes: 60,
                ..NetCounters::default()
            }
        );
    }

    #[test]
    fn transmits_several_frames_in_order() {
        let mut setup = setup();
        let lengths = [MIN_FRAME_LEN, 60, 590, 1000, MAX_FRAME_LEN];
        let frames: Vec<Vec<u8>> = lengths
            .iter()
            .enumerate()
            .map(|(id, &len)| frame(len, id as u16))
            .collect();
        // Fields other than flags and gso_type carry no meaning here and are ignored.
        let mut ignored_fields = header(0, 0);
        ignored_fields[2..].copy_from_slice(&[0x36, 0, 0x10, 0, 0x22, 0, 0x10, 0, 3, 0]);
        for sent in &frames {
            setup.add_transmit(&ignored_fields, sent);
        }
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        let taken: Vec<Frame> = setup.net_mut().drain_transmitted().collect();
        assert_eq!(taken.len(), frames.len());
        for (taken, sent) in taken.iter().zip(&frames) {
            assert_eq!(taken.as_slice(), &sent[..]);
        }
        for _ in &frames {
            assert_eq!(
                setup.tx.pop_used(&setup.memory).map(|(_, len)| len),
                Some(0)
            );
        }
        let total: usize = lengths.iter().sum();
        let counters = setup.net().counters();
        assert_eq!((counters.tx_frames, counters.tx_bytes), (5, total as u64));
    }

    #[test]
    fn transmit_chain_split_over_descriptors() {
        let mut setup = setup();
        let sent = frame(300, 9);
        // The header split in two, the second piece carrying the frame's first bytes, the
        // rest of the frame off any natural boundary, and a writable descriptor at the end
        // (which a transmit chain should not have, and which the device leaves alone).
        let mut stream = header(0, 0).to_vec();
        stream.extend_from_slice(&sent);
        let pieces = [5usize, 10, 1, 200, stream.len() - 216];
        let mut buffers = Vec::new();
        let mut position = 0;
        for piece in pieces {
            let gpa = setup.memory.allocate(piece as u64, 1);
            setup.memory.put(gpa, &stream[position..position + piece]);
            buffers.push(Buffer::readable(gpa, piece as u32));
            position += piece;
        }
        let trailing = setup.memory.allocate(32, 8);
        setup.memory.put(trailing, &[UNTOUCHED; 32]);
        buffers.push(Buffer::writable(trailing, 32));
        let head = setup.tx.add_chain(&setup.memory, &buffers);
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        let taken = setup.net_mut().take_transmitted().expect("frame in outbox");
        assert_eq!(taken.as_slice(), &sent[..]);
        assert_eq!(setup.memory.bytes(trailing, 32), vec![UNTOUCHED; 32]);
    }

    #[test]
    fn header_asking_for_offloads_is_refused() {
        let mut setup = setup();
        // VIRTIO_NET_HDR_F_NEEDS_CSUM, then VIRTIO_NET_HDR_GSO_TCPV4 without it.
        for (flags, gso_type) in [(1, 0), (0, 1), (2, 4)] {
            let head = setup.add_transmit(&header(flags, gso_type), &frame(100, 0));
            assert_eq!(
                setup.notify(TRANSMIT_QUEUE),
                Some(DeviceError::Request {
                    queue: TRANSMIT_QUEUE,
                    head,
                    error: RequestError::NetOffloadRequested { flags, gso_type }
                })
            );
            assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        }
        assert_eq!(setup.net().pending_transmitted(), 0);
        assert_eq!(setup.net().counters().tx_dropped_offload, 3);
        assert_eq!(setup.net().counters().tx_frames, 0);
        // The queue keeps working.
        setup.add_transmit(&header(0, 0), &frame(100, 1));
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert_eq!(setup.net().pending_transmitted(), 1);
    }

    #[test]
    fn runt_and_oversized_frames_are_refused() {
        let mut setup = setup();
        let too_long = frame(MAX_FRAME_LEN + 1, 0);
        let cases: [(&[u8], &[u8], RequestError); 4] = [
            (&[0; 8], &[], RequestError::NetHeaderTooShort { len: 8 }),
            (
                &[0; 12],
                &[],
                RequestError::FrameLength {
                    len: 0,
                    minimum: 14,
                    maximum: 1514,
                },
            ),
            (
                &[0; 12],
                &too_long[..13],
                RequestError::FrameLength {
                    len: 13,
                    minimum: 14,
                    maximum: 1514,
                },
            ),
            (
                &[0; 12],
                &too_long,
                RequestError::FrameLength {
                    len: 1515,
                    minimum: 14,
                    maximum: 1514,
                },
            ),
        ];
        for (header, body, expected) in cases {
            let head = setup.add_transmit(header, body);
            assert_eq!(
                setup.notify(TRANSMIT_QUEUE),
                Some(DeviceError::Request {
                    queue: TRANSMIT_QUEUE,
                    head,
                    error: expected
                })
            );
            assert_eq!(setup.tx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        }
        assert_eq!(setup.net().pending_transmitted(), 0);
        assert_eq!(setup.net().counters().tx_dropped_length, 4);
    }

    #[test]
    fn full_outbox_leaves_transmit_chains_waiting() {
        let mut setup = setup_with_sizes(16, 64);
        let mut id = 0u16;
        for _round in 0..OUTBOX_CAPACITY / 64 {
            for _ in 0..64 {
                setup.add_transmit(&header(0, 0), &frame(64, id));
                id += 1;
            }
            assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
            while setup.tx.pop_used(&setup.memory).is_some() {}
        }
        assert_eq!(setup.net().pending_transmitted(), OUTBOX_CAPACITY);
        let used_before = setup.tx.used_index(&setup.memory);
        for _ in 0..3 {
            setup.add_transmit(&header(0, 0), &frame(64, id));
            id += 1;
        }
        assert_eq!(setup.notify(TRANSMIT_QUEUE), None);
        assert_eq!(
            setup.tx.used_index(&setup.memory),
            used_before,
            "chains stay available"
        );
        assert!(setup.net().transmit_stalled());

        // Room for one frame: one chain is taken.
        let first = setup.net_mut().take_transmitted().expect("outbox is full");
        assert_eq!(frame_id(&first), 0);
        assert_eq!(setup.process(TRANSMIT_QUEUE), None);
        assert_eq!(
            setup.tx.used_index(&setup.memory),
            used_before.wrapping_add(1)
        );
        assert!(setup.net().transmit_stalled());

        let drained: Vec<u16> = setup
            .net_mut()
            .drain_transmitted()
            .map(|frame| frame_id(&frame))
            .collect();
        assert_eq!(drained, (1..=256).collect::<Vec<u16>>());
        assert_eq!(setup.process(TRANSMIT_QUEUE), None);
        assert!(!setup.net().transmit_stalled());
        assert_eq!(
            setup.tx.used_index(&setup.memory),
            used_before.wrapping_add(3)
        );
        let rest: Vec<u16> = setup
            .net_mut()
            .drain_transmitted()
            .map(|frame| frame_id(&frame))
            .collect();
        assert_eq!(rest, [257, 258]);
        assert_eq!(setup.net().counters().tx_frames, 259);
    }

    #[test]
    fn receives_into_available_buffers() {
        let mut setup = setup();
        // One buffer in a single descriptor, one with the header in its own descriptor.
        let (whole, whole_head) = setup.add_receive(FULL_BUFFER);
        let split_header = setup.memory.allocate(12, 4);
        let split_data = setup.memory.allocate(u64::from(FULL_BUFFER) - 12, 4);
        setup.memory.put(split_header, &[UNTOUCHED; 12]);
        setup.memory.put(split_data, &[UNTOUCHED; MAX_FRAME_LEN]);
        let split_head = setup.rx.add_chain(
            &setup.memory,
            &[
                Buffer::writable(split_header, 12),
                Buffer::writable(split_data, FULL_BUFFER - 12),
            ],
        );
        assert_eq!(setup.process(RECEIVE_QUEUE), None, "nothing to deliver yet");
        assert_eq!(setup.rx.used_index(&setup.memory), 0);
        assert!(!setup.transport.irq_level());

        let first = frame(100, 1);
        let second = frame(MAX_FRAME_LEN, 2);
        assert!(setup.net_mut().enqueue_received(&first));
        assert!(setup.net_mut().enqueue_received(&second));
        assert_eq!(setup.process(RECEIVE_QUEUE), None);
        assert!(setup.transport.irq_level());

        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(whole_head), 112))
        );
        assert_eq!(setup.memory.bytes(whole, 12), received_header());
        assert_eq!(setup.memory.bytes(whole + 12, 100), first);
        assert_eq!(setup.memory.bytes(whole + 112, 4), [UNTOUCHED; 4]);

        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(split_head), FULL_BUFFER))
        );
        assert_eq!(setup.memory.bytes(split_header, 12), received_header());
        assert_eq!(setup.memory.bytes(split_data, MAX_FRAME_LEN), second);

        assert_eq!(setup.net().pending_received(), 0);
        let counters = setup.net().counters();
        assert_eq!(
            (counters.rx_frames, counters.rx_bytes),
            (2, 100 + MAX_FRAME_LEN as u64)
        );
    }

    #[test]
    fn received_frames_wait_for_buffers() {
        let mut setup = setup();
        for id in 0..3 {
            assert!(setup.net_mut().enqueue_received(&frame(80, id)));
        }
        assert_eq!(setup.process(RECEIVE_QUEUE), None);
        assert_eq!(setup.net().pending_received(), 3);
        assert!(!setup.transport.irq_level());

        // The driver posting a buffer notifies the receiveq, which delivers.
        let (buffer, head) = setup.add_receive(FULL_BUFFER);
        assert_eq!(setup.notify(RECEIVE_QUEUE), None);
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(head), 92))
        );
        assert_eq!(frame_id(&setup.memory.bytes(buffer + 12, 80)), 0);
        assert_eq!(setup.net().pending_received(), 2);
        assert!(setup.transport.irq_level());

        let (first, _) = setup.add_receive(FULL_BUFFER);
        let (second, _) = setup.add_receive(FULL_BUFFER);
        let (spare, _) = setup.add_receive(FULL_BUFFER);
        assert_eq!(setup.notify(RECEIVE_QUEUE), None);
        assert_eq!(frame_id(&setup.memory.bytes(first + 12, 80)), 1);
        assert_eq!(frame_id(&setup.memory.bytes(second + 12, 80)), 2);
        assert_eq!(setup.memory.bytes(spare, 16), [UNTOUCHED; 16]);
        assert_eq!(setup.net().pending_received(), 0);
        // The spare buffer stays posted for the next frame.
        assert_eq!(setup.rx.used_index(&setup.memory), 3);
        assert!(setup.net_mut().enqueue_received(&frame(50, 3)));
        assert_eq!(setup.process(RECEIVE_QUEUE), None);
        assert_eq!(frame_id(&setup.memory.bytes(spare + 12, 50)), 3);
    }

    #[test]
    fn receive_chain_too_small_drops_the_frame() {
        let mut setup = setup();
        let (small, small_head) = setup.add_receive(12 + 50);
        let (large, large_head) = setup.add_receive(FULL_BUFFER);
        assert!(setup.net_mut().enqueue_received(&frame(100, 1)));
        assert!(setup.net_mut().enqueue_received(&frame(40, 2)));
        assert_eq!(
            setup.process(RECEIVE_QUEUE),
            Some(DeviceError::Request {
                queue: RECEIVE_QUEUE,
                head: small_head,
                error: RequestError::ReceiveBufferTooSmall {
                    needed: 112,
                    available: 62
                }
            })
        );
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(small_head), 0))
        );
        assert_eq!(setup.memory.bytes(small, 62), vec![UNTOUCHED; 62]);
        assert_eq!(
            setup.rx.pop_used(&setup.memory),
            Some((u32::from(large_head), 52))
        );
        assert_eq!(frame_id(&setup.memory.bytes(large + 12, 40)), 2);
        let counters = setup.net().counters();
        assert_eq!(
            (counters.rx_frames, counters.rx_dropped_buffer_too_small),
            (1, 1)
        );
        assert_eq!(setup.net().pending_received(), 0);
    }

    #[test]
    fn inbox_is_bounded_and_checks_lengths() {
        let mut setup = setup();
        for id in 0..INBOX_CAPACITY {
            assert!(setup.net_mut().enqueue_received(&frame(60, id as u16)));
        }
        assert!(!setup.net_mut().enqueue_received(&frame(60, 999)));
        assert_eq!(setup.net().pending_received(), INBOX_CAPACITY);
        // Buffers drain the inbox in order, a queue's worth at a time.
        for _ in 0..16 {
            setup.add_receive(FULL_BUFFER);
        }
        assert_eq!(setup.notify(RECEIVE_QUEUE), None);
        assert_eq!(setup.net().pending_received(), INBOX_CAPACITY - 16);
        assert!(setup.net_mut().enqueue_received(&frame(60, 1000)));

        assert!(!setup.net_mut().enqueue_received(&[0; MIN_FRAME_LEN - 1]));
        assert!(!setup.net_mut().enqueue_received(&[0; MAX_FRAME_LEN + 1]));
        assert!(!setup.net_mut().enqueue_received(&[]));
        let counters = setup.net().counters();
        assert_eq!(counters.rx_dropped_inbox_full, 1);
        assert_eq!(counters.rx_dropped_length, 3);
        assert_eq!(counters.rx_frames, 16);
    }

    #[test]
    fn frames_are_refused_without_a_driver() {
        let mut net = VirtioNet::new(MAC);
        assert!(!net.enqueue_received(&frame(60, 0)));
        assert_eq!(net.pending_received(), 0);
        assert_eq!(net.counters().rx_dropped_no_driver, 1);
    }

    #[test]
    fn descriptors_outside_memory_are_refused() {
        let mut setup = setup();
        let end = setup.memory.end();

        // Transmit: the frame's descriptor runs past the end of guest memory.
        let header_buffer = setup.memory.allocate(12, 8);
        setup.memory.put(header_buffer, &header(0, 0));
        let head = setup.tx.add_chain(
            &setup.memory,
            &[
                Buffer::readable(header_buffer, 12),
                Buffer::readable(end - 10, 60),
            ],
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
        assert_eq!(setup.net().pending_transmitted(), 0);
        assert_eq!(setup.net().counters().tx_dropped_bad_buffer, 1);

        // Receive: the header fits inside memory, the frame's descriptor does not. Nothing
        // may be written, not even the part inside.
        let inside = setup.memory.allocate(12, 8);
        setup.memory.put(inside, &[UNTOUCHED; 12]);
        setup.memory.put(end - 100, &[0x55; 100]);
        let head = setup.rx.add_chain(
            &setup.memory,
            &[
                Buffer::writable(inside, 12),
                Buffer::writable(end - 100, MAX_FRAME_LEN as u32),
            ],
        );
        assert!(setup.net_mut().enqueue_received(&frame(60, 5)));
        assert_eq!(
            setup.process(RECEIVE_QUEUE),
            Some(DeviceError::Request {
                queue: RECEIVE_QUEUE,
                head,
                error: RequestError::Buffer(BufferError::Memory(MemoryError::OutOfBounds {
                    gpa: end - 100,
                    len: MAX_FRAME_LEN as u64
                }))
            })
        );
        assert_eq!(setup.rx.pop_used(&setup.memory), Some((u32::from(head), 0)));
        assert_eq!(setup.memory.bytes(inside, 12), [UNTOUCHED; 12]);
        assert_eq!(setup.memory.bytes(end - 100, 100), [0x55; 100]);
        assert_eq!(setup.net().counters().rx_dropped_bad_buffer, 1);
        assert_eq!(setup.net().counters().rx_frames, 0);

        // A descriptor whose address wraps around the address space.
        let head = setup.rx.add_chain(
            &setup.memory,
            &[Buffer::writable(u64::MAX - 8, FULL_BUFFER)],
        );
        assert!(setup.net_mut().enqueue_received(&frame(60, 6)));
        assert!(matches!(
            setup.process(RECEIVE_QUEUE),
            Some(DeviceError::Request {
                error: RequestError::Buffer(BufferError::Memory(_)),
                ..
            })
        ));
        assert_eq!(setup.rx.pop_used(&setup.memory), Some((u32::from(head), 0)));
    }

    #[test]
    fn interrupts_follow_completions() {
        let mut setup = setup();
        setup.add_transmit(&header(0, 0), &frame(60, 0));
        assert!(!setup.transport.irq_level());
        setup.notify(TRANSMIT_QUEUE);
        assert!(setup.transport.irq_level(), "transmit completion");
        setup.acknowledge_interrupts();
        assert!(!setup.transport.irq_level());

        setup.add_receive(FULL_BUFFER);
        setup.notify(RECEIVE_QUEUE);
        assert!(
            !setup.transport.irq_level(),
            "a posted buffer alone completes nothing"
        );
        setup.net_mut().enqueue_received(&frame(60, 1));
        setup.process(RECEIVE_QUEUE);
        assert!(setup.transport.irq_level(), "receive completion");
        setup.acknowledge_interrupts();

        // A driver that suppressed receive interrupts (it polls) gets none.
        setup.rx.set_no_interrupt(&setup.memory, true);
        setup.add_receive(FULL_BUFFER);
        setup.net_mut().enqueue_received(&frame(60, 2));
        setup.process(RECEIVE_QUEUE);
        assert_eq!(setup.rx.used_index(&setup.memory), 2);
        assert!(!setup.transport.irq_level());
    }

    #[test]
    fn reset_clears_inbox_and_outbox() {
        let mut setup = setup();
        setup.add_transmit(&header(0, 0), &frame(60, 0));
        setup.add_transmit(&header(0, 0), &frame(60, 1));
        setup.notify(TRANSMIT_QUEUE);
        assert!(setup.net_mut().enqueue_received(&frame(60, 2)));
        assert_eq!(
            (
                setup.net().pending_transmitted(),
                setup.net().pending_received()
            ),
            (2, 1)
        );

        write_register(&mut setup.transport, &setup.memory, STATUS, 0);
        assert_eq!(
            (
                setup.net().pending_transmitted(),
                setup.net().pending_received()
            ),
            (0, 0)
        );
        assert!(setup.net_mut().take_transmitted().is_none());
        assert!(
            !setup.net_mut().enqueue_received(&frame(60, 3)),
            "no driver"
        );
        assert_eq!(setup.net().counters().tx_frames, 2, "statistics survive");

        // A new driver brings the card back.
        let mut queues = bring_up_queues(&mut setup.transport, &setup.memory, FEATURES, &[8, 8]);
        let mut rx = queues.remove(0);
        assert!(setup.net_mut().enqueue_received(&frame(60, 4)));
        let buffer = setup.memory.allocate(u64::from(FULL_BUFFER), 8);
        rx.add_chain(&setup.memory, &[Buffer::writable(buffer, FULL_BUFFER)]);
        write_register(&mut setup.transport, &setup.memory, QUEUE_NOTIFY, 0);
        assert_eq!(rx.pop_used(&setup.memory).map(|(_, len)| len), Some(72));
        assert_eq!(frame_id(&setup.memory.bytes(buffer + 12, 60)), 4);
    }

    #[test]
    fn malformed_chain_does_not_stop_the_queue() {
        let mut setup = setup();
        let buffer = setup.memory.allocate(16, 8);
        // Reserve descriptors 0 and 1, then turn them into a loop.
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
        setup.add_transmit(&header(0, 0), &frame(60, 7));
        assert_eq!(
            setup.notify(TRANSMIT_QUEUE),
            Some(DeviceError::Queue {
                queue: TRANSMIT_QUEUE,
                error: QueueError::ChainTooLong { head: 0, limit: 16 }
            })
        );
        let taken = setup.net_mut().take_transmitted().expect("good frame sent");
        assert_eq!(frame_id(&taken), 7);
    }

    /// Random descriptor tables on both queues must never panic the device, never put a
    /// frame of invalid length in the outbox, and never complete a descriptor that does not
    /// exist.
    #[test]
    fn garbage_descriptor_tables_never_panic() {
        let mut random = TestRandom::new(0x6e65_7421);
        let mut completions = 0usize;
        for _round in 0..200 {
            let mut setup = setup();
            let memory_end = setup.memory.end();
            let scratch = setup.memory.allocate(8192, 16);
            let mut noise = vec![0u8; 8192];
            random
                .fill(&mut noise)
                .expect("the test generator never fails");
            // Mostly clean headers, so that frames get through too.
            for offset in (0..8192).step_by(512) {
                if random.below(2) == 0 {
                    noise[offset..offset + 2].fill(0);
                }
            }
            setup.memory.put(scratch, &noise);
            for queue in [&setup.rx, &setup.tx] {
                for index in 0..queue.size {
                    let addr = match random.below(4) {
                        0 => random.next_u64(),
                        1 => RAM_BASE + random.below(memory_end - RAM_BASE),
                        _ => scratch + random.below(16) * 512,
                    };
                    let len = match random.below(4) {
                        0 => random.next_u64() as u32,
                        _ => random.below(2048) as u32,
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
            for id in 0..random.below(20) {
                let len = random.below(1600) as usize;
                setup.net_mut().enqueue_received(&frame(len, id as u16));
            }
            for _ in 0..3 {
                let _ = setup.notify(TRANSMIT_QUEUE);
                let _ = setup.notify(RECEIVE_QUEUE);
            }
            while let Some(frame) = setup.net_mut().take_transmitted() {
                assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()));
            }
            for queue in [&mut setup.rx, &mut setup.tx] {
                while let Some((id, len)) = queue.pop_used(&setup.memory) {
                    assert!(id < 16, "used entry for descriptor {id}");
                    assert!(len as usize <= VIRTIO_NET_HDR_LEN + MAX_FRAME_LEN);
                    completions += 1;
                }
            }
            assert!(setup.transport.read(STATUS, 4).is_ok());
        }
        assert!(completions > 100, "only {completions} chains completed");
    }

    #[test]
    fn frame_type_checks_length_and_formats() {
        assert!(Frame::new(&[0; MIN_FRAME_LEN - 1]).is_none());
        assert!(Frame::new(&[0; MAX_FRAME_LEN + 1]).is_none());
        let bytes = frame(64, 3);
        let frame = Frame::new(&bytes).expect("valid length");
        assert_eq!(frame.as_ref(), &bytes[..]);
        let text = format!("{frame:?}");
        assert!(text.contains("02:4b:45:45:4c:07"), "{text}");
        assert!(text.contains("0x0800"), "{text}");
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            RequestError::NetOffloadRequested {
                flags: 1,
                gso_type: 0
            }
            .to_string(),
            "virtio_net_hdr asks for offloads that were not negotiated (flags 0x1, gso_type 0)"
        );
        assert_eq!(
            RequestError::FrameLength {
                len: 13,
                minimum: 14,
                maximum: 1514
            }
            .to_string(),
            "frame of 13 bytes is outside the Ethernet range of 14 to 1514 bytes"
        );
        assert_eq!(
            RequestError::ReceiveBufferTooSmall {
                needed: 112,
                available: 62
            }
            .to_string(),
            "receive buffer of 62 bytes cannot hold the 112 bytes of header and frame"
        );
        assert!(RequestError::NetHeaderTooShort { len: 8 }
            .to_string()
            .contains("12-byte virtio_net_hdr"));
    }
}
