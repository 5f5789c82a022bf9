//! Test fixtures: bounded fake guest RAM, a driver that lays out split virtqueues like a real one, and simple backends.

use core::cell::{Cell, RefCell};

use crate::blk::{BackendError, BlockBackend, SECTOR_SIZE};
use crate::mmio::{
    Device, MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::queue::{GuestMemory, MemoryError, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::rng::EntropySource;
use crate::DeviceError;

/// Guest RAM base, as in a capsule.
pub const RAM_BASE: u64 = 0x8000_0000;
/// Guest RAM size used by most tests.
pub const RAM_SIZE: usize = 1 << 20;

/// Vec-backed guest RAM covering `[base, base + len)`; anything else is refused.
pub struct TestMemory {
    base: u64,
    bytes: RefCell<Vec<u8>>,
    /// Bump allocator for test buffers.
    next_free: Cell<u64>,
}

impl TestMemory {
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: RefCell::new(vec![0; len]),
            next_free: Cell::new(base),
        }
    }

    pub fn standard() -> Self {
        Self::new(RAM_BASE, RAM_SIZE)
    }

    pub fn end(&self) -> u64 {
        self.base + self.bytes.borrow().len() as u64
    }

    /// Reserves `len` bytes aligned to `alignment` and returns their address.
    pub fn allocate(&self, len: u64, alignment: u64) -> u64 {
        let start = self.next_free.get().next_multiple_of(alignment);
        let end = start + len;
        assert!(end <= self.end(), "test memory exhausted");
        self.next_free.set(end);
        start
    }

    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemoryError> {
        let refused = MemoryError::OutOfBounds {
            gpa,
            len: len as u64,
        };
        let end = gpa.checked_add(len as u64).ok_or(refused)?;
        if gpa < self.base || end > self.end() {
            return Err(refused);
        }
        let start = (gpa - self.base) as usize;
        Ok(start..start + len)
    }

    pub fn bytes(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.read(gpa, &mut buf).expect("test read inside memory");
        buf
    }

    pub fn put(&self, gpa: u64, data: &[u8]) {
        self.write(gpa, data).expect("test write inside memory");
    }

    pub fn u16_at(&self, gpa: u64) -> u16 {
        let bytes = self.bytes(gpa, 2);
        u16::from_le_bytes([bytes[0], bytes[1]])
    }

    pub fn u32_at(&self, gpa: u64) -> u32 {
        let bytes = self.bytes(gpa, 4);
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

impl GuestMemory for TestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let range = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes.borrow()[range]);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let range = self.range(gpa, data.len())?;
        self.bytes.borrow_mut()[range].copy_from_slice(data);
        Ok(())
    }
}

/// One buffer of a chain the test driver builds.
#[derive(Clone, Copy)]
pub struct Buffer {
    pub gpa: u64,
    pub len: u32,
    pub writable: bool,
}

impl Buffer {
    pub fn readable(gpa: u64, len: u32) -> Self {
        Self {
            gpa,
            len,
            writable: false,
        }
    }

    pub fn writable(gpa: u64, len: u32) -> Self {
        Self {
            gpa,
            len,
            writable: true,
        }
    }
}

/// The driver's side of one split virtqueue in [`TestMemory`].
pub struct DriverQueue {
    pub size: u16,
    pub descriptor_table: u64,
    pub available_ring: u64,
    pub used_ring: u64,
    next_descriptor: u16,
    available_index: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Allocates and zeroes the three areas with the alignments the specification asks.
    pub fn new(memory: &TestMemory, size: u16) -> Self {
        let size64 = u64::from(size);
        let descriptor_table = memory.allocate(16 * size64, 16);
        let available_ring = memory.allocate(6 + 2 * size64, 2);
        let used_ring = memory.allocate(6 + 8 * size64, 4);
        memory.put(descriptor_table, &vec![0; 16 * size as usize]);
        memory.put(available_ring, &vec![0; 6 + 2 * size as usize]);
        memory.put(used_ring, &vec![0; 6 + 8 * size as usize]);
        Self {
            size,
            descriptor_table,
            available_ring,
            used_ring,
            next_descriptor: 0,
            available_index: 0,
            last_used: 0,
        }
    }

    /// Writes descriptor `index` as given, without any checks.
    pub fn write_descriptor(
        &self,
        memory: &TestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        write_descriptor(memory, self.descriptor_table, index, addr, len, flags, next);
    }

    /// Lays `buffers` out as a chain in consecutive descriptors and returns its head.
    pub fn add_chain_descriptors(&mut self, memory: &TestMemory, buffers: &[Buffer]) -> u16 {
        let head = self.next_descriptor;
        for (position, buffer) in buffers.iter().enumerate() {
            let index = (head + position as u16) % self.size;
            let last = position + 1 == buffers.len();
            let mut flags = if last { 0 } else { VIRTQ_DESC_F_NEXT };
            if buffer.writable {
                flags |= VIRTQ_DESC_F_WRITE;
            }
            let next = (index + 1) % self.size;
            self.write_descriptor(memory, index, buffer.gpa, buffer.len, flags, next);
        }
        self.next_descriptor = (head + buffers.len() as u16) % self.size;
        head
    }

    /// Publishes `head` in the available ring.
    pub fn publish(&mut self, memory: &TestMemory, head: u16) {
        let slot = u64::from(self.available_index % self.size);
        memory.put(self.available_ring + 4 + 2 * slot, &head.to_le_bytes());
        self.available_index = self.available_index.wrapping_add(1);
        memory.put(self.available_ring + 2, &self.available_index.to_le_bytes());
    }

    /// Adds and publishes a chain.
    pub fn add_chain(&mut self, memory: &TestMemory, buffers: &[Buffer]) -> u16 {
        let head = self.add_chain_descriptors(memory, buffers);
        self.publish(memory, head);
        head
    }

    /// Sets or clears `VIRTQ_AVAIL_F_NO_INTERRUPT`.
    pub fn set_no_interrupt(&self, memory: &TestMemory, suppress: bool) {
        memory.put(self.available_ring, &u16::from(suppress).to_le_bytes());
    }

    /// Overwrites the available index directly.
    pub fn set_available_index(&mut self, memory: &TestMemory, index: u16) {
        self.available_index = index;
        memory.put(self.available_ring + 2, &index.to_le_bytes());
    }

    /// The used ring index as the device left it.
    pub fn used_index(&self, memory: &TestMemory) -> u16 {
        memory.u16_at(self.used_ring + 2)
    }

    /// Takes the next used entry, as `(head, written)`.
    pub fn pop_used(&mut self, memory: &TestMemory) -> Option<(u32, u32)> {
        if self.used_index(memory) == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let entry = self.used_ring + 4 + 8 * slot;
        self.last_used = self.last_used.wrapping_add(1);
        Some((memory.u32_at(entry), memory.u32_at(entry + 4)))
    }
}

pub fn write_descriptor(
    memory: &TestMemory,
    table: u64,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut bytes = [0u8; 16];
    bytes[0..8].copy_from_slice(&addr.to_le_bytes());
    bytes[8..12].copy_from_slice(&len.to_le_bytes());
    bytes[12..14].copy_from_slice(&flags.to_le_bytes());
    bytes[14..16].copy_from_slice(&next.to_le_bytes());
    memory.put(table + 16 * u64::from(index), &bytes);
}

/// 32-bit register helpers that fail the test on an access error.
pub fn read_register<D: Device>(transport: &MmioTransport<D>, offset: u64) -> u32 {
    transport.read(offset, 4).expect("register read")
}

pub fn write_register<D: Device>(
    transport: &mut MmioTransport<D>,
    memory: &TestMemory,
    offset: u64,
    value: u32,
) -> Option<DeviceError> {
    transport
        .write(offset, 4, value, memory)
        .expect("register write")
}

/// Offers the driver's side of feature negotiation and returns the status read back.
pub fn negotiate<D: Device>(
    transport: &mut MmioTransport<D>,
    memory: &TestMemory,
    features: u64,
) -> u8 {
    write_register(transport, memory, 0x070, 0);
    write_register(transport, memory, 0x070, u32::from(STATUS_ACKNOWLEDGE));
    write_register(
        transport,
        memory,
        0x070,
        u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
    );
    write_register(transport, memory, 0x024, 0);
    write_register(transport, memory, 0x020, features as u32);
    write_register(transport, memory, 0x024, 1);
    write_register(transport, memory, 0x020, (features >> 32) as u32);
    write_register(
        transport,
        memory,
        0x070,
        u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
    );
    read_register(transport, 0x070) as u8
}

/// Configures and enables queue `index` at the driver queue's addresses.
pub fn setup_queue<D: Device>(
    transport: &mut MmioTransport<D>,
    memory: &TestMemory,
    index: u32,
    queue: &DriverQueue,
) -> Option<DeviceError> {
    write_register(transport, memory, 0x030, index);
    write_register(transport, memory, 0x038, u32::from(queue.size));
    write_register(transport, memory, 0x080, queue.descriptor_table as u32);
    write_register(
        transport,
        memory,
        0x084,
        (queue.descriptor_table >> 32) as u32,
    );
    write_register(transport, memory, 0x090, queue.available_ring as u32);
    write_register(
        transport,
        memory,
        0x094,
        (queue.available_ring >> 32) as u32,
    );
    write_register(transport, memory, 0x0a0, queue.used_ring as u32);
    write_register(transport, memory, 0x0a4, (queue.used_ring >> 32) as u32);
    write_register(transport, memory, 0x044, 1)
}

/// The whole initialisation sequence for a one-queue device; returns the driver queue.
pub fn bring_up<D: Device>(
    transport: &mut MmioTransport<D>,
    memory: &TestMemory,
    features: u64,
    queue_size: u16,
) -> DriverQueue {
    bring_up_queues(transport, memory, features, &[queue_size]).remove(0)
}

/// The whole initialisation sequence, enabling queues 0, 1, ... with the given sizes;
/// returns the driver queues in the same order.
pub fn bring_up_queues<D: Device>(
    transport: &mut MmioTransport<D>,
    memory: &TestMemory,
    features: u64,
    queue_sizes: &[u16],
) -> Vec<DriverQueue> {
    let status = negotiate(transport, memory, features);
    assert_ne!(status & STATUS_FEATURES_OK, 0, "features refused");
    let mut queues = Vec::new();
    for (index, &size) in queue_sizes.iter().enumerate() {
        let queue = DriverQueue::new(memory, size);
        assert_eq!(setup_queue(transport, memory, index as u32, &queue), None);
        queues.push(queue);
    }
    let status = read_register(transport, 0x070);
    write_register(
        transport,
        memory,
        0x070,
        status | u32::from(STATUS_DRIVER_OK),
    );
    queues
}

/// A Vec-backed disk that counts what reaches it and records any out-of-range access.
#[derive(Default)]
pub struct VecDisk {
    pub data: Vec<u8>,
    pub reads: usize,
    pub writes: usize,
    pub flushes: usize,
    /// Writes since the last flush, to check write-through behaviour.
    pub unflushed_writes: usize,
    pub out_of_range_accesses: usize,
    pub fail_flush: bool,
    /// Reported size in sectors when set, without storage behind it (for config tests).
    pub claimed_sectors: Option<u64>,
}

impl VecDisk {
    pub fn with_sectors(sectors: u64) -> Self {
        Self {
            data: vec![0; (sectors * SECTOR_SIZE) as usize],
            ..Self::default()
        }
    }

    fn range(&mut self, sector: u64, len: usize) -> Result<core::ops::Range<usize>, BackendError> {
        let count = len as u64 / SECTOR_SIZE;
        let start = sector.checked_mul(SECTOR_SIZE);
        match start.and_then(|start| start.checked_add(len as u64)) {
            Some(end)
                if end <= self.data.len() as u64 && (len as u64).is_multiple_of(SECTOR_SIZE) =>
            {
                let start = (sector * SECTOR_SIZE) as usize;
                Ok(start..end as usize)
            }
            _ => {
                self.out_of_range_accesses += 1;
                Err(BackendError::OutOfRange { sector, count })
            }
        }
    }
}

impl BlockBackend for VecDisk {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let range = self.range(sector, buf.len())?;
        self.reads += 1;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BackendError> {
        let range = self.range(sector, data.len())?;
        self.writes += 1;
        self.unflushed_writes += 1;
        self.data[range].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        if self.fail_flush {
            return Err(BackendError::FlushFailed);
        }
        self.flushes += 1;
        self.unflushed_writes = 0;
        Ok(())
    }

    fn sectors(&self) -> u64 {
        self.claimed_sectors
            .unwrap_or(self.data.len() as u64 / SECTOR_SIZE)
    }
}

/// xorshift64*: deterministic pseudo-random numbers for tests.
pub struct TestRandom(u64);

impl TestRandom {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

impl EntropySource for TestRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), crate::EntropyUnavailable> {
        for byte in buf {
            *byte = self.next_u64() as u8;
        }
        Ok(())
    }
}
