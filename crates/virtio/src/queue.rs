//! Split virtqueues from the device side: rings and descriptor chains read from guest memory and checked before use.
//!
//! Layout (VIRTIO 1.2, section 2.7 "Split Virtqueues"), all fields little-endian:
//!
//! | part             | area        | alignment | size                  |
//! |------------------|-------------|-----------|-----------------------|
//! | descriptor table | Descriptor  | 16        | `16 * size`           |
//! | available ring   | Driver      | 2         | `6 + 2 * size`        |
//! | used ring        | Device      | 4         | `6 + 8 * size`        |
//!
//! A descriptor is `addr: u64, len: u32, flags: u16, next: u16`. The available ring is
//! `flags: u16, idx: u16, ring[size]: u16`; the used ring is `flags: u16, idx: u16,
//! ring[size]: {id: u32, len: u32}`. Ring indices are free-running 16-bit counters; the slot
//! is the index modulo the queue size.
//!
//! Everything in guest memory is written by a driver the hypervisor does not trust, and
//! other vCPUs of the capsule may change it while the device works. So each descriptor is
//! copied out of guest memory exactly once, every index is checked against the table it
//! indexes, chain walks are bounded (a loop in the descriptor graph ends in an error, not a
//! hang), and every buffer access goes through [`GuestMemory`], which refuses anything
//! outside the capsule.
//!
//! `VIRTIO_F_EVENT_IDX` is not offered, so notification suppression is the plain
//! `VIRTQ_AVAIL_F_NO_INTERRUPT` flag and the `used_event`/`avail_event` fields are never
//! touched.

use alloc::vec::Vec;
use core::fmt;

use crate::error::{DeviceError, RequestError};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device write-only (otherwise device read-only).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want used buffer notifications.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue size a split virtqueue can have.
pub const MAX_QUEUE_SIZE: u16 = 32768;

const DESCRIPTOR_SIZE: u64 = 16;
const DESCRIPTOR_TABLE_ALIGNMENT: u64 = 16;
const AVAILABLE_RING_ALIGNMENT: u64 = 2;
const USED_RING_ALIGNMENT: u64 = 4;
/// Offset of `idx` in both rings (after the 16-bit `flags`).
const RING_INDEX_OFFSET: u64 = 2;
/// Offset of the first ring entry in both rings.
const RING_ENTRIES_OFFSET: u64 = 4;
const AVAILABLE_ENTRY_SIZE: u64 = 2;
const USED_ENTRY_SIZE: u64 = 8;

/// Why guest memory refused an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryError {
    /// Some of the `len` bytes at `gpa` are not RAM of the capsule (or the range wraps
    /// around the end of the address space).
    OutOfBounds { gpa: u64, len: u64 },
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemoryError::OutOfBounds { gpa, len } => write!(
                f,
                "{len} bytes at guest physical address {gpa:#x} are not all inside the capsule's memory"
            ),
        }
    }
}

impl core::error::Error for MemoryError {}

/// The capsule's RAM as the device sees it.
///
/// Implementations refuse any range that is not entirely inside the capsule's memory.
/// Writes must become visible to the capsule's vCPUs in the order they are made: the
/// device writes a used ring entry before the used ring index that publishes it.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes at guest physical address `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Copies `data` to guest physical address `gpa`.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError>;

    /// Checks that `len` bytes at `gpa` are inside the capsule's memory, so that a request
    /// can be refused before any of it is carried out.
    ///
    /// The provided implementation reads the range piece by piece, which is correct for any
    /// implementation but slow for large buffers; implementations that know their bounds
    /// should answer directly.
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        let refused = MemoryError::OutOfBounds { gpa, len };
        if gpa.checked_add(len).is_none() {
            return Err(refused);
        }
        let mut scratch = [0u8; 256];
        let mut offset = 0u64;
        while offset < len {
            let chunk = (len - offset).min(scratch.len() as u64) as usize;
            self.read(gpa + offset, &mut scratch[..chunk])
                .map_err(|_| refused)?;
            offset += chunk as u64;
        }
        Ok(())
    }
}

/// Why a virtqueue could not be enabled (the driver's write of 1 to `QueueReady` is refused
/// and the queue stays disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSetupError {
    /// `QueueNum` is 0.
    SizeZero,
    /// `QueueNum` is larger than `QueueNumMax`.
    SizeAboveMaximum { size: u32, maximum: u16 },
    /// `QueueNum` is not a power of two, which a split virtqueue requires.
    SizeNotPowerOfTwo { size: u32 },
    /// A queue area does not have the alignment the split virtqueue layout requires.
    Misaligned {
        area: QueueArea,
        gpa: u64,
        alignment: u64,
    },
    /// A queue area is not entirely inside the capsule's memory.
    OutsideMemory { area: QueueArea, gpa: u64, len: u64 },
}

impl fmt::Display for QueueSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QueueSetupError::SizeZero => write!(f, "queue size (QueueNum) is 0"),
            QueueSetupError::SizeAboveMaximum { size, maximum } => write!(
                f,
                "queue size (QueueNum) {size} is larger than the maximum (QueueNumMax) {maximum}"
            ),
            QueueSetupError::SizeNotPowerOfTwo { size } => {
                write!(f, "queue size (QueueNum) {size} is not a power of two")
            }
            QueueSetupError::Misaligned {
                area,
                gpa,
                alignment,
            } => write!(f, "{area} at {gpa:#x} is not aligned to {alignment} bytes"),
            QueueSetupError::OutsideMemory { area, gpa, len } => write!(
                f,
                "{area} ({len} bytes at {gpa:#x}) is not inside the capsule's memory"
            ),
        }
    }
}

impl core::error::Error for QueueSetupError {}

/// The three guest memory areas of a split virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueArea {
    /// The Descriptor Area: the descriptor table.
    DescriptorTable,
    /// The Driver Area: the available ring.
    AvailableRing,
    /// The Device Area: the used ring.
    UsedRing,
}

impl fmt::Display for QueueArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueArea::DescriptorTable => "descriptor table",
            QueueArea::AvailableRing => "available ring",
            QueueArea::UsedRing => "used ring",
        })
    }
}

/// A malformed virtqueue or descriptor chain.
///
/// Errors for which [`QueueError::breaks_queue`] is true leave the queue unusable until the
/// device is reset; the others concern one descriptor chain, which is returned to the
/// driver as used with nothing written so that the queue keeps working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The available ring could not be read.
    AvailableRingUnreadable(MemoryError),
    /// The used ring could not be written.
    UsedRingUnwritable(MemoryError),
    /// The available index moved further ahead of the device than the queue has entries.
    AvailableIndexJump {
        seen: u16,
        published: u16,
        size: u16,
    },
    /// An available ring entry names a descriptor beyond the descriptor table.
    HeadOutOfRange { head: u16, size: u16 },
    /// A descriptor of the chain could not be read.
    DescriptorUnreadable { head: u16, error: MemoryError },
    /// A descriptor's `next` is beyond the table it belongs to.
    NextOutOfRange {
        head: u16,
        next: u16,
        table_len: u32,
    },
    /// The chain visits more descriptors than its table holds: it loops.
    ChainTooLong { head: u16, limit: u32 },
    /// The buffers of the chain add up to more than 2^32 - 1 bytes.
    ChainTooLarge { head: u16 },
    /// An indirect descriptor was used although `VIRTIO_F_INDIRECT_DESC` was not negotiated.
    IndirectNotNegotiated { head: u16 },
    /// An indirect table contains another indirect descriptor.
    NestedIndirect { head: u16 },
    /// A descriptor has both `VIRTQ_DESC_F_INDIRECT` and `VIRTQ_DESC_F_NEXT` set.
    IndirectWithNext { head: u16 },
    /// An indirect table's length is 0, not a multiple of 16 or holds more descriptors
    /// than the queue size.
    IndirectTableLength { head: u16, len: u32 },
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable { head: u16 },
}

impl QueueError {
    /// Whether the queue as a whole is unusable (as opposed to one descriptor chain).
    pub fn breaks_queue(&self) -> bool {
        matches!(
            self,
            QueueError::AvailableRingUnreadable(_)
                | QueueError::UsedRingUnwritable(_)
                | QueueError::AvailableIndexJump { .. }
                | QueueError::HeadOutOfRange { .. }
        )
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QueueError::AvailableRingUnreadable(error) => {
                write!(f, "available ring unreadable: {error}")
            }
            QueueError::UsedRingUnwritable(error) => write!(f, "used ring unwritable: {error}"),
            QueueError::AvailableIndexJump { seen, published, size } => write!(
                f,
                "available index jumped from {seen} to {published}, more than the queue size {size}"
            ),
            QueueError::HeadOutOfRange { head, size } => write!(
                f,
                "available ring names descriptor {head}, beyond the table of {size} descriptors"
            ),
            QueueError::DescriptorUnreadable { head, error } => {
                write!(f, "chain at descriptor {head}: descriptor unreadable: {error}")
            }
            QueueError::NextOutOfRange { head, next, table_len } => write!(
                f,
                "chain at descriptor {head}: next descriptor {next} is beyond the table of {table_len} descriptors"
            ),
            QueueError::ChainTooLong { head, limit } => write!(
                f,
                "chain at descriptor {head} is longer than its table of {limit} descriptors (a loop)"
            ),
            QueueError::ChainTooLarge { head } => write!(
                f,
                "chain at descriptor {head}: buffers add up to more than 4 GiB"
            ),
            QueueError::IndirectNotNegotiated { head } => write!(
                f,
                "chain at descriptor {head}: indirect descriptor without VIRTIO_F_INDIRECT_DESC"
            ),
            QueueError::NestedIndirect { head } => write!(
                f,
                "chain at descriptor {head}: indirect descriptor inside an indirect table"
            ),
            QueueError::IndirectWithNext { head } => write!(
                f,
                "chain at descriptor {head}: descriptor has both INDIRECT and NEXT set"
            ),
            QueueError::IndirectTableLength { head, len } => write!(
                f,
                "chain at descriptor {head}: indirect table length {len} is not a non-zero multiple of 16 within the queue size"
            ),
            QueueError::ReadableAfterWritable { head } => write!(
                f,
                "chain at descriptor {head}: device-readable descriptor after a device-writable one"
            ),
        }
    }
}

impl core::error::Error for QueueError {}

/// Why a buffer of a descriptor chain could not be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferError {
    /// A buffer lies (partly) outside the capsule's memory.
    Memory(MemoryError),
    /// The access reaches past the end of the chain's readable or writable part.
    BeyondChain {
        offset: u64,
        len: u64,
        available: u64,
    },
}

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BufferError::Memory(error) => write!(f, "descriptor buffer: {error}"),
            BufferError::BeyondChain { offset, len, available } => write!(
                f,
                "access of {len} bytes at offset {offset} reaches past the {available} bytes the chain provides"
            ),
        }
    }
}

impl core::error::Error for BufferError {}

impl From<MemoryError> for BufferError {
    fn from(error: MemoryError) -> Self {
        BufferError::Memory(error)
    }
}

/// One buffer of a descriptor chain, after indirect tables have been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// Whether the device writes the buffer (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// A descriptor chain copied out of guest memory: the device-readable buffers followed by
/// the device-writable ones.
///
/// The readable buffers form one byte stream and the writable buffers another, whatever
/// the way the driver split them into descriptors (the device must not assume a framing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    descriptors: Vec<Descriptor>,
    /// Number of leading device-readable descriptors.
    readable_count: usize,
    readable_len: u64,
    writable_len: u64,
}

impl DescriptorChain {
    /// Index of the chain's first descriptor, which identifies it in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The chain's buffers in order.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// Total length of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Checks that every buffer of the chain lies inside the capsule's memory.
    pub fn check_memory(&self, memory: &dyn GuestMemory) -> Result<(), BufferError> {
        for descriptor in &self.descriptors {
            memory.check(descriptor.addr, u64::from(descriptor.len))?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes starting `offset` bytes into the readable part.
    pub fn read(
        &self,
        memory: &dyn GuestMemory,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), BufferError> {
        let part = &self.descriptors[..self.readable_count];
        check_span(offset, buf.len(), self.readable_len)?;
        for (gpa, range_start, range_len) in spans(part, offset, buf.len() as u64) {
            let start = range_start as usize;
            let end = start + range_len as usize;
            memory.read(gpa, &mut buf[start..end])?;
        }
        Ok(())
    }

    /// Writes `data` starting `offset` bytes into the writable part.
    pub fn write(
        &self,
        memory: &dyn GuestMemory,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BufferError> {
        let part = &self.descriptors[self.readable_count..];
        check_span(offset, data.len(), self.writable_len)?;
        for (gpa, range_start, range_len) in spans(part, offset, data.len() as u64) {
            let start = range_start as usize;
            let end = start + range_len as usize;
            memory.write(gpa, &data[start..end])?;
        }
        Ok(())
    }
}

fn check_span(offset: u64, len: usize, available: u64) -> Result<(), BufferError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= available => Ok(()),
        _ => Err(BufferError::BeyondChain {
            offset,
            len,
            available,
        }),
    }
}

/// The pieces of `descriptors` that cover `len` bytes starting `offset` bytes into their
/// concatenation, as `(guest address, offset into the caller's buffer, length)`.
fn spans(
    descriptors: &[Descriptor],
    offset: u64,
    len: u64,
) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let end = offset + len;
    let mut stream_position = 0u64;
    descriptors.iter().filter_map(move |descriptor| {
        let descriptor_start = stream_position;
        let descriptor_end = descriptor_start + u64::from(descriptor.len);
        stream_position = descriptor_end;
        let start = offset.max(descriptor_start);
        let stop = end.min(descriptor_end);
        (start < stop).then(|| {
            (
                descriptor.addr.wrapping_add(start - descriptor_start),
                start - offset,
                stop - start,
            )
        })
    })
}

/// A descriptor as stored in guest memory.
#[derive(Debug, Clone, Copy)]
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// The device side of one split virtqueue.
///
/// The transport stores the driver's configuration here (`QueueNum` and the three area
/// addresses), then [`Virtqueue::enable`] checks it when the driver writes `QueueReady`.
#[derive(Debug, Clone)]
pub struct Virtqueue {
    max_size: u16,
    /// `QueueNum` as written; checked only when the queue is enabled.
    requested_size: u32,
    /// The checked size while the queue is ready.
    size: u16,
    ready: bool,
    descriptor_table: u64,
    available_ring: u64,
    used_ring: u64,
    indirect_descriptors: bool,
    /// Available ring index of the next chain the device will take.
    next_available: u16,
    /// Used ring index the device will fill next.
    next_used: u16,
    /// Used entries were added since the last notification decision.
    used_since_notification: bool,
}

impl Virtqueue {
    /// Creates a disabled queue whose size the driver may choose up to `max_size` (which
    /// is clamped to [`MAX_QUEUE_SIZE`]).
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size: max_size.min(MAX_QUEUE_SIZE),
            requested_size: 0,
            size: 0,
            ready: false,
            descriptor_table: 0,
            available_ring: 0,
            used_ring: 0,
            indirect_descriptors: false,
            next_available: 0,
            next_used: 0,
            used_since_notification: false,
        }
    }

    /// Returns the queue to its state after device reset.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// `QueueNumMax`.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The queue size in use; 0 while the queue is not ready.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// `QueueReady`.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Records `QueueNum`.
    pub fn set_requested_size(&mut self, size: u32) {
        self.requested_size = size;
    }

    /// The Descriptor Area address.
    pub fn descriptor_table(&self) -> u64 {
        self.descriptor_table
    }

    /// Records the Descriptor Area address.
    pub fn set_descriptor_table(&mut self, gpa: u64) {
        self.descriptor_table = gpa;
    }

    /// The Driver Area address.
    pub fn available_ring(&self) -> u64 {
        self.available_ring
    }

    /// Records the Driver Area address.
    pub fn set_available_ring(&mut self, gpa: u64) {
        self.available_ring = gpa;
    }

    /// The Device Area address.
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// Records the Device Area address.
    pub fn set_used_ring(&mut self, gpa: u64) {
        self.used_ring = gpa;
    }

    /// Checks the driver's configuration and makes the queue ready.
    ///
    /// `indirect_descriptors` says whether `VIRTIO_F_INDIRECT_DESC` was negotiated. On
    /// error the queue stays disabled.
    pub fn enable(
        &mut self,
        memory: &dyn GuestMemory,
        indirect_descriptors: bool,
    ) -> Result<(), QueueSetupError> {
        let requested = self.requested_size;
        if requested == 0 {
            return Err(QueueSetupError::SizeZero);
        }
        if requested > u32::from(self.max_size) {
            return Err(QueueSetupError::SizeAboveMaximum {
                size: requested,
                maximum: self.max_size,
            });
        }
        if !requested.is_power_of_two() {
            return Err(QueueSetupError::SizeNotPowerOfTwo { size: requested });
        }
        let size = u64::from(requested);
        let areas = [
            (
                QueueArea::DescriptorTable,
                self.descriptor_table,
                DESCRIPTOR_TABLE_ALIGNMENT,
                DESCRIPTOR_SIZE * size,
            ),
            (
                QueueArea::AvailableRing,
                self.available_ring,
                AVAILABLE_RING_ALIGNMENT,
                RING_ENTRIES_OFFSET + AVAILABLE_ENTRY_SIZE * size + 2,
            ),
            (
                QueueArea::UsedRing,
                self.used_ring,
                USED_RING_ALIGNMENT,
                RING_ENTRIES_OFFSET + USED_ENTRY_SIZE * size + 2,
            ),
        ];
        for (area, gpa, alignment, len) in areas {
            if !gpa.is_multiple_of(alignment) {
                return Err(QueueSetupError::Misaligned {
                    area,
                    gpa,
                    alignment,
                });
            }
            if memory.check(gpa, len).is_err() {
                return Err(QueueSetupError::OutsideMemory { area, gpa, len });
            }
        }
        // The size was checked against max_size, which fits in 16 bits.
        self.size = requested as u16;
        self.indirect_descriptors = indirect_descriptors;
        self.next_available = 0;
        self.next_used = 0;
        self.used_since_notification = false;
        self.ready = true;
        Ok(())
    }

    /// Stops using the queue (`QueueReady` = 0); its configuration is kept.
    pub fn disable(&mut self) {
        self.ready = false;
        self.size = 0;
    }

    /// Takes the next available descriptor chain, if any.
    ///
    /// A malformed chain whose head is valid is handed back to the driver as used with
    /// nothing written, and its error returned; the caller logs it and keeps popping.
    /// Errors for which [`QueueError::breaks_queue`] holds mean the queue must not be used
    /// any further.
    pub fn pop(&mut self, memory: &dyn GuestMemory) -> Result<Option<DescriptorChain>, QueueError> {
        if !self.ready {
            return Ok(None);
        }
        let published = self
            .read_u16(memory, self.available_ring + RING_INDEX_OFFSET)
            .map_err(QueueError::AvailableRingUnreadable)?;
        let pending = published.wrapping_sub(self.next_available);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailableIndexJump {
                seen: self.next_available,
                published,
                size: self.size,
            });
        }
        let slot = u64::from(self.next_available % self.size);
        let head = self
            .read_u16(
                memory,
                self.available_ring + RING_ENTRIES_OFFSET + AVAILABLE_ENTRY_SIZE * slot,
            )
            .map_err(QueueError::AvailableRingUnreadable)?;
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange {
                head,
                size: self.size,
            });
        }
        self.next_available = self.next_available.wrapping_add(1);
        match self.read_chain(memory, head) {
            Ok(chain) => Ok(Some(chain)),
            Err(error) => {
                self.add_used(memory, head, 0)?;
                Err(error)
            }
        }
    }

    /// Returns the chain starting at `head` to the driver, with `written` bytes written to
    /// its device-writable buffers.
    pub fn add_used(
        &mut self,
        memory: &dyn GuestMemory,
        head: u16,
        written: u32,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Ok(());
        }
        let slot = u64::from(self.next_used % self.size);
        let mut entry = [0u8; USED_ENTRY_SIZE as usize];
        entry[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        entry[4..].copy_from_slice(&written.to_le_bytes());
        let entry_gpa = self.used_ring + RING_ENTRIES_OFFSET + USED_ENTRY_SIZE * slot;
        memory
            .write(entry_gpa, &entry)
            .map_err(QueueError::UsedRingUnwritable)?;
        // The entry is written before the index that makes it visible to the driver.
        let next = self.next_used.wrapping_add(1);
        memory
            .write(self.used_ring + RING_INDEX_OFFSET, &next.to_le_bytes())
            .map_err(QueueError::UsedRingUnwritable)?;
        self.next_used = next;
        self.used_since_notification = true;
        Ok(())
    }

    /// Whether the driver should get a used buffer notification for the entries added
    /// since the last call: there are some and the driver has not set
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`.
    pub fn take_notification(&mut self, memory: &dyn GuestMemory) -> Result<bool, QueueError> {
        if !self.ready || !self.used_since_notification {
            return Ok(false);
        }
        self.used_since_notification = false;
        // Read after the used index was published: a driver that re-enables
        // notifications and then finds no new used entries relies on this order.
        let flags = self
            .read_u16(memory, self.available_ring)
            .map_err(QueueError::AvailableRingUnreadable)?;
        Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }

    fn read_u16(&self, memory: &dyn GuestMemory, gpa: u64) -> Result<u16, MemoryError> {
        let mut bytes = [0u8; 2];
        memory.read(gpa, &mut bytes)?;
        Ok(u16::from_le_bytes(bytes))
    }

    fn read_descriptor(
        memory: &dyn GuestMemory,
        table: u64,
        index: u16,
        head: u16,
    ) -> Result<RawDescriptor, QueueError> {
        let gpa = table
            .checked_add(DESCRIPTOR_SIZE * u64::from(index))
            .ok_or(QueueError::DescriptorUnreadable {
                head,
                error: MemoryError::OutOfBounds {
                    gpa: table,
                    len: DESCRIPTOR_SIZE,
                },
            })?;
        let mut bytes = [0u8; DESCRIPTOR_SIZE as usize];
        memory
            .read(gpa, &mut bytes)
            .map_err(|error| QueueError::DescriptorUnreadable { head, error })?;
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&bytes[0..8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[8..12]);
        Ok(RawDescriptor {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes(len),
            flags: u16::from_le_bytes([bytes[12], bytes[13]]),
            next: u16::from_le_bytes([bytes[14], bytes[15]]),
        })
    }

    /// Walks the chain at `head`, following at most one indirect table (which must end the
    /// chain). Each table bounds the number of descriptors visited in it, so a loop ends in
    /// [`QueueError::ChainTooLong`].
    fn read_chain(
        &self,
        memory: &dyn GuestMemory,
        head: u16,
    ) -> Result<DescriptorChain, QueueError> {
        let mut descriptors = Vec::new();
        let mut table = self.descriptor_table;
        let mut table_len = u32::from(self.size);
        let mut remaining = table_len;
        let mut index = head;
        let mut in_indirect_table = false;
        let mut readable_count = 0usize;
        let mut readable_len = 0u64;
        let mut writable_len = 0u64;
        loop {
            if remaining == 0 {
                return Err(QueueError::ChainTooLong {
                    head,
                    limit: table_len,
                });
            }
            remaining -= 1;
            let raw = Self::read_descriptor(memory, table, index, head)?;
            if raw.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect_descriptors {
                    return Err(QueueError::IndirectNotNegotiated { head });
                }
                if in_indirect_table {
                    return Err(QueueError::NestedIndirect { head });
                }
                if raw.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext { head });
                }
                let entries = raw.len / DESCRIPTOR_SIZE as u32;
                if raw.len == 0
                    || !raw.len.is_multiple_of(DESCRIPTOR_SIZE as u32)
                    || entries > u32::from(self.size)
                {
                    return Err(QueueError::IndirectTableLength { head, len: raw.len });
                }
                // The WRITE flag of the descriptor naming the table is ignored, as the
                // specification requires.
                table = raw.addr;
                table_len = entries;
                remaining = entries;
                index = 0;
                in_indirect_table = true;
                continue;
            }
            let writable = raw.flags & VIRTQ_DESC_F_WRITE != 0;
            if writable {
                writable_len += u64::from(raw.len);
            } else {
                if descriptors.len() > readable_count {
                    return Err(QueueError::ReadableAfterWritable { head });
                }
                readable_len += u64::from(raw.len);
                readable_count += 1;
            }
            if readable_len + writable_len > u64::from(u32::MAX) {
                return Err(QueueError::ChainTooLarge { head });
            }
            descriptors.push(Descriptor {
                addr: raw.addr,
                len: raw.len,
                writable,
            });
            if raw.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            if u32::from(raw.next) >= table_len {
                return Err(QueueError::NextOutOfRange {
                    head,
                    next: raw.next,
                    table_len,
                });
            }
            index = raw.next;
        }
        Ok(DescriptorChain {
            head,
            descriptors,
            readable_count,
            readable_len,
            writable_len,
        })
    }
}

/// The outcome of one request, as reported by a device to [`Virtqueue::serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written to the start of the chain's device-writable part.
    pub written: u32,
    /// Why the request failed, if it did (the driver has been told through the request's
    /// own status, where the device type has one).
    pub error: Option<RequestError>,
}

impl Virtqueue {
    /// Takes the next available chain of queue number `queue` for a device. A malformed
    /// chain (already returned to the driver by [`Virtqueue::pop`]) is recorded in
    /// `first_error` and skipped; an error that breaks the queue ends the pass.
    pub(crate) fn pop_for_device(
        &mut self,
        queue: u16,
        memory: &dyn GuestMemory,
        first_error: &mut Option<DeviceError>,
    ) -> Result<Option<DescriptorChain>, DeviceError> {
        // Each failed pop consumes one available entry, and at most a queue's worth can be
        // available, so this loop ends.
        loop {
            match self.pop(memory) {
                Ok(chain) => return Ok(chain),
                Err(error) => {
                    let error = DeviceError::Queue { queue, error };
                    if error.needs_reset() {
                        return Err(error);
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
    }

    /// Returns the chain at `head` of queue number `queue` to the driver with `written`
    /// bytes used.
    pub(crate) fn complete(
        &mut self,
        queue: u16,
        memory: &dyn GuestMemory,
        head: u16,
        written: u32,
    ) -> Result<(), DeviceError> {
        self.add_used(memory, head, written)
            .map_err(|error| DeviceError::Queue { queue, error })
    }

    /// Serves the chains available now: each is handed to `handle` and then returned to
    /// the driver as used.
    ///
    /// Failed requests and malformed chains do not stop the work (the first such error is
    /// returned for logging); an error that breaks the queue does. At most one queue's
    /// worth of chains is taken per call, so a driver that keeps publishing from another
    /// vCPU cannot hold the device here: it notifies again for what it publishes later.
    pub fn serve(
        &mut self,
        queue: u16,
        memory: &dyn GuestMemory,
        mut handle: impl FnMut(&DescriptorChain) -> Completion,
    ) -> Result<(), DeviceError> {
        let mut first_error = None;
        for _ in 0..self.size {
            let Some(chain) = self.pop_for_device(queue, memory, &mut first_error)? else {
                break;
            };
            let completion = handle(&chain);
            if let Some(error) = completion.error {
                first_error.get_or_insert(DeviceError::Request {
                    queue,
                    head: chain.head(),
                    error,
                });
            }
            self.complete(queue, memory, chain.head(), completion.written)?;
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    /// A ready device queue over a fresh driver queue of `size` entries.
    fn queue_pair(memory: &TestMemory, size: u16, indirect: bool) -> (Virtqueue, DriverQueue) {
        let driver = DriverQueue::new(memory, size);
        let mut device = Virtqueue::new(size);
        device.set_requested_size(u32::from(size));
        device.set_descriptor_table(driver.descriptor_table);
        device.set_available_ring(driver.available_ring);
        device.set_used_ring(driver.used_ring);
        device.enable(memory, indirect).expect("queue enabled");
        (device, driver)
    }

    #[test]
    fn chain_is_split_into_readable_and_writable_streams() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, false);
        let a = memory.allocate(3, 1);
        let b = memory.allocate(5, 1);
        let c = memory.allocate(4, 1);
        let d = memory.allocate(6, 1);
        memory.put(a, b"abc");
        memory.put(b, b"defgh");
        let head = driver.add_chain(
            &memory,
            &[
                Buffer::readable(a, 3),
                Buffer::readable(b, 5),
                Buffer::writable(c, 4),
                Buffer::writable(d, 6),
            ],
        );
        let chain = device.pop(&memory).unwrap().unwrap();
        assert_eq!(chain.head(), head);
        assert_eq!(chain.descriptors().len(), 4);
        assert_eq!(chain.readable_len(), 8);
        assert_eq!(chain.writable_len(), 10);
        chain.check_memory(&memory).unwrap();

        // A read crossing the descriptor boundary.
        let mut buf = [0u8; 4];
        chain.read(&memory, 2, &mut buf).unwrap();
        assert_eq!(&buf, b"cdef");
        // A write crossing the boundary of the writable buffers.
        chain.write(&memory, 2, b"WXYZ").unwrap();
        assert_eq!(memory.bytes(c, 4)[2..], *b"WX");
        assert_eq!(memory.bytes(d, 2), b"YZ");
        assert_eq!(
            chain.read(&memory, 6, &mut buf),
            Err(BufferError::BeyondChain {
                offset: 6,
                len: 4,
                available: 8
            })
        );
        assert_eq!(
            chain.write(&memory, 8, b"abc"),
            Err(BufferError::BeyondChain {
                offset: 8,
                len: 3,
                available: 10
            })
        );

        device.add_used(&memory, head, 10).unwrap();
        assert_eq!(driver.pop_used(&memory), Some((u32::from(head), 10)));
        assert!(device.pop(&memory).unwrap().is_none());
        assert!(device.take_notification(&memory).unwrap());
        assert!(!device.take_notification(&memory).unwrap(), "already taken");
    }

    #[test]
    fn descriptor_loop_is_an_error_and_the_chain_is_returned() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 4, false);
        let buffer = memory.allocate(16, 8);
        driver.write_descriptor(&memory, 0, buffer, 16, VIRTQ_DESC_F_NEXT, 1);
        driver.write_descriptor(&memory, 1, buffer, 16, VIRTQ_DESC_F_NEXT, 0);
        driver.publish(&memory, 0);
        let error = device.pop(&memory).unwrap_err();
        assert_eq!(error, QueueError::ChainTooLong { head: 0, limit: 4 });
        assert!(!error.breaks_queue());
        assert_eq!(driver.pop_used(&memory), Some((0, 0)));

        // The queue keeps working.
        let head = driver.add_chain(&memory, &[Buffer::writable(buffer, 16)]);
        assert_eq!(
            device.pop(&memory).unwrap().map(|chain| chain.head()),
            Some(head)
        );
    }

    #[test]
    fn self_referencing_descriptor_is_a_loop() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 2, false);
        let buffer = memory.allocate(16, 8);
        driver.write_descriptor(&memory, 1, buffer, 16, VIRTQ_DESC_F_NEXT, 1);
        driver.publish(&memory, 1);
        assert_eq!(
            device.pop(&memory),
            Err(QueueError::ChainTooLong { head: 1, limit: 2 })
        );
    }

    #[test]
    fn chain_as_long_as_the_queue_is_accepted() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 4, false);
        let buffer = memory.allocate(4, 4);
        let buffers = [Buffer::readable(buffer, 1); 4];
        driver.add_chain(&memory, &buffers);
        let chain = device.pop(&memory).unwrap().unwrap();
        assert_eq!(chain.descriptors().len(), 4);
    }

    #[test]
    fn malformed_chains_are_reported() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, false);
        let buffer = memory.allocate(16, 8);

        driver.write_descriptor(&memory, 0, buffer, 16, VIRTQ_DESC_F_NEXT, 8);
        driver.publish(&memory, 0);
        assert_eq!(
            device.pop(&memory),
            Err(QueueError::NextOutOfRange {
                head: 0,
                next: 8,
                table_len: 8
            })
        );

        driver.write_descriptor(
            &memory,
            1,
            buffer,
            4,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            2,
        );
        driver.write_descriptor(&memory, 2, buffer, 4, 0, 0);
        driver.publish(&memory, 1);
        assert_eq!(
            device.pop(&memory),
            Err(QueueError::ReadableAfterWritable { head: 1 })
        );

        driver.write_descriptor(&memory, 3, buffer, u32::MAX, VIRTQ_DESC_F_NEXT, 4);
        driver.write_descriptor(&memory, 4, buffer, 1, VIRTQ_DESC_F_WRITE, 0);
        driver.publish(&memory, 3);
        assert_eq!(
            device.pop(&memory),
            Err(QueueError::ChainTooLarge { head: 3 })
        );

        driver.write_descriptor(&memory, 5, buffer, 16, VIRTQ_DESC_F_INDIRECT, 0);
        driver.publish(&memory, 5);
        assert_eq!(
            device.pop(&memory),
            Err(QueueError::IndirectNotNegotiated { head: 5 })
        );

        // Each malformed chain went back to the driver with nothing written.
        for head in [0, 1, 3, 5] {
            assert_eq!(driver.pop_used(&memory), Some((head, 0)));
        }
        assert_eq!(driver.pop_used(&memory), None);
    }

    #[test]
    fn head_out_of_range_breaks_the_queue() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, false);
        driver.publish(&memory, 9);
        let error = device.pop(&memory).unwrap_err();
        assert_eq!(error, QueueError::HeadOutOfRange { head: 9, size: 8 });
        assert!(error.breaks_queue());
        assert_eq!(driver.used_index(&memory), 0, "nothing to return");
    }

    #[test]
    fn available_index_running_ahead_breaks_the_queue() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, false);
        driver.set_available_index(&memory, 9);
        let error = device.pop(&memory).unwrap_err();
        assert_eq!(
            error,
            QueueError::AvailableIndexJump {
                seen: 0,
                published: 9,
                size: 8
            }
        );
        assert!(error.breaks_queue());
    }

    #[test]
    fn ring_indices_wrap_at_two_to_the_sixteen() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 4, false);
        let buffer = memory.allocate(8, 8);
        for round in 0..0x1_0005u32 {
            let head = driver.add_chain(&memory, &[Buffer::writable(buffer, 8)]);
            let chain = device.pop(&memory).unwrap().expect("chain available");
            assert_eq!(chain.head(), head);
            device.add_used(&memory, head, round % 8).unwrap();
            assert_eq!(driver.pop_used(&memory), Some((u32::from(head), round % 8)));
        }
        assert_eq!(driver.used_index(&memory), 0x1_0005u32 as u16);
        assert!(device.pop(&memory).unwrap().is_none());
    }

    #[test]
    fn indirect_descriptors_when_negotiated() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, true);
        let table = memory.allocate(16 * 3, 16);
        let header = memory.allocate(4, 4);
        let data = memory.allocate(8, 8);
        let status = memory.allocate(1, 1);
        memory.put(header, b"head");
        write_descriptor(&memory, table, 0, header, 4, VIRTQ_DESC_F_NEXT, 2);
        write_descriptor(
            &memory,
            table,
            2,
            data,
            8,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            1,
        );
        write_descriptor(&memory, table, 1, status, 1, VIRTQ_DESC_F_WRITE, 0);
        // A direct descriptor first, then the one naming the table (its WRITE flag ignored).
        let direct = memory.allocate(2, 2);
        memory.put(direct, b"xy");
        driver.write_descriptor(&memory, 0, direct, 2, VIRTQ_DESC_F_NEXT, 1);
        driver.write_descriptor(
            &memory,
            1,
            table,
            48,
            VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE,
            0,
        );
        driver.publish(&memory, 0);
        let chain = device.pop(&memory).unwrap().unwrap();
        assert_eq!(
            chain.descriptors(),
            [
                Descriptor {
                    addr: direct,
                    len: 2,
                    writable: false
                },
                Descriptor {
                    addr: header,
                    len: 4,
                    writable: false
                },
                Descriptor {
                    addr: data,
                    len: 8,
                    writable: true
                },
                Descriptor {
                    addr: status,
                    len: 1,
                    writable: true
                },
            ]
        );
        let mut buf = [0u8; 6];
        chain.read(&memory, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"xyhead");
    }

    #[test]
    fn malformed_indirect_tables_are_reported() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, true);
        let table = memory.allocate(16 * 4, 16);
        let cases: [(u32, u16, QueueError); 4] = [
            (20, 0, QueueError::IndirectTableLength { head: 0, len: 20 }),
            (0, 0, QueueError::IndirectTableLength { head: 0, len: 0 }),
            (
                16 * 9,
                0,
                QueueError::IndirectTableLength { head: 0, len: 144 },
            ),
            (
                16,
                VIRTQ_DESC_F_NEXT,
                QueueError::IndirectWithNext { head: 0 },
            ),
        ];
        for (len, extra_flags, expected) in cases {
            driver.write_descriptor(
                &memory,
                0,
                table,
                len,
                VIRTQ_DESC_F_INDIRECT | extra_flags,
                1,
            );
            driver.publish(&memory, 0);
            assert_eq!(device.pop(&memory), Err(expected));
        }

        // An indirect descriptor inside the table.
        write_descriptor(&memory, table, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0);
        driver.write_descriptor(&memory, 0, table, 64, VIRTQ_DESC_F_INDIRECT, 0);
        driver.publish(&memory, 0);
        assert_eq!(
            device.pop(&memory),
            Err(QueueError::NestedIndirect { head: 0 })
        );

        // A loop inside the table.
        write_descriptor(&memory, table, 0, table, 1, VIRTQ_DESC_F_NEXT, 1);
        write_descriptor(&memory, table, 1, table, 1, VIRTQ_DESC_F_NEXT, 0);
        driver.publish(&memory, 0);
        assert_eq!(
            device.pop(&memory),
            Err(QueueError::ChainTooLong { head: 0, limit: 4 })
        );

        // A table outside guest memory.
        driver.write_descriptor(&memory, 0, memory.end(), 32, VIRTQ_DESC_F_INDIRECT, 0);
        driver.publish(&memory, 0);
        assert!(matches!(
            device.pop(&memory),
            Err(QueueError::DescriptorUnreadable { head: 0, .. })
        ));
        // And one whose address wraps around.
        driver.write_descriptor(&memory, 0, u64::MAX - 8, 32, VIRTQ_DESC_F_INDIRECT, 0);
        driver.publish(&memory, 0);
        assert!(matches!(
            device.pop(&memory),
            Err(QueueError::DescriptorUnreadable { head: 0, .. })
        ));
    }

    #[test]
    fn buffers_outside_memory_fail_the_memory_check() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, false);
        let inside = memory.allocate(8, 8);
        driver.add_chain(
            &memory,
            &[
                Buffer::readable(inside, 8),
                Buffer::writable(memory.end() - 4, 8),
            ],
        );
        let chain = device.pop(&memory).unwrap().unwrap();
        assert_eq!(
            chain.check_memory(&memory),
            Err(BufferError::Memory(MemoryError::OutOfBounds {
                gpa: memory.end() - 4,
                len: 8
            }))
        );
        assert!(chain.write(&memory, 0, &[0; 8]).is_err());
    }

    #[test]
    fn default_memory_check_handles_wrapping_and_large_ranges() {
        let memory = TestMemory::standard();
        assert!(memory.check(RAM_BASE, RAM_SIZE as u64).is_ok());
        assert!(memory.check(RAM_BASE, RAM_SIZE as u64 + 1).is_err());
        assert!(memory.check(u64::MAX, 2).is_err());
        assert!(
            memory.check(0, 0).is_ok(),
            "an empty range is always inside"
        );
    }

    #[test]
    fn disabled_queue_is_left_alone() {
        let memory = TestMemory::standard();
        let (mut device, mut driver) = queue_pair(&memory, 8, false);
        let buffer = memory.allocate(8, 8);
        driver.add_chain(&memory, &[Buffer::writable(buffer, 8)]);
        device.disable();
        assert!(!device.is_ready());
        assert_eq!(device.pop(&memory), Ok(None));
        assert_eq!(device.take_notification(&memory), Ok(false));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let loop_error = QueueError::ChainTooLong { head: 3, limit: 8 };
        assert_eq!(
            loop_error.to_string(),
            "chain at descriptor 3 is longer than its table of 8 descriptors (a loop)"
        );
        let setup = QueueSetupError::SizeNotPowerOfTwo { size: 12 };
        assert_eq!(
            setup.to_string(),
            "queue size (QueueNum) 12 is not a power of two"
        );
    }
}
