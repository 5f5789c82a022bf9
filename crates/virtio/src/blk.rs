//! virtio-blk: a block device over a [`BlockBackend`], with every sector range checked against the disk before the backend sees it.
//!
//! One request queue. A request (VIRTIO 1.2, section 5.2.6) is a 16-byte header in the
//! device-readable part (`type: u32, reserved: u32, sector: u64`), then data (readable for
//! writes, writable for reads), then one status byte, the last device-writable byte. The
//! device makes no assumption about how the driver split this into descriptors.
//!
//! Offered features: `VIRTIO_BLK_F_SEG_MAX`, `VIRTIO_BLK_F_BLK_SIZE`, `VIRTIO_BLK_F_FLUSH`
//! and, for read-only disks, `VIRTIO_BLK_F_RO`. A driver that does not negotiate
//! `VIRTIO_BLK_F_FLUSH` gets write-through behaviour: every write is flushed to the backend
//! before it completes, as the specification requires when the feature was offered but
//! not accepted.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::error::{DeviceError, RequestError};
use crate::mmio::{copy_config, Device};
use crate::queue::{Completion, DescriptorChain, GuestMemory, Virtqueue};
use crate::VIRTIO_ID_BLOCK;

/// Bytes per sector, the unit of `capacity` and of request `sector` numbers.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device ID string returned by `VIRTIO_BLK_T_GET_ID`.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Feature bit: the maximum number of data segments in a request is in `seg_max`.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature bit: the disk's block size is in `blk_size`.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature bit: the device supports `VIRTIO_BLK_T_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request type: read sectors.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: commit completed writes to stable storage.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: fetch the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request status: device or driver error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request status: request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of the request queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// `seg_max`: data segments per request, leaving room for the header and the status in a
/// chain as long as the queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Size of the request header.
const HEADER_LEN: u64 = 16;
/// Data moves between guest memory and the backend through a buffer of this size.
const TRANSFER_CHUNK: usize = 64 * 1024;

// Configuration space layout (struct virtio_blk_config), offsets in bytes.
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SEG_MAX: usize = 12;
const CONFIG_BLK_SIZE: usize = 20;
/// The configuration up to and including `unused1`, after the write-zeroes fields; fields
/// of features not offered read as zero.
const CONFIG_LEN: usize = 60;

/// Why the storage behind a virtual disk failed an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// Reading `count` sectors from `sector` failed.
    ReadFailed { sector: u64, count: u64 },
    /// Writing `count` sectors at `sector` failed.
    WriteFailed { sector: u64, count: u64 },
    /// Committing written data to stable storage failed.
    FlushFailed,
    /// The backend's own bounds check refused `count` sectors from `sector`.
    OutOfRange { sector: u64, count: u64 },
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BackendError::ReadFailed { sector, count } => {
                write!(f, "reading {count} sectors from sector {sector} failed")
            }
            BackendError::WriteFailed { sector, count } => {
                write!(f, "writing {count} sectors at sector {sector} failed")
            }
            BackendError::FlushFailed => write!(f, "flush to stable storage failed"),
            BackendError::OutOfRange { sector, count } => write!(
                f,
                "{count} sectors from sector {sector} are outside the backing storage"
            ),
        }
    }
}

impl core::error::Error for BackendError {}

/// The storage behind a virtual disk: the capsule's extents of the host disk, addressed in
/// 512-byte sectors from 0 to [`BlockBackend::sectors`].
///
/// The device checks every range against `sectors()` before calling `read` or `write`, and
/// buffers are always whole sectors.
pub trait BlockBackend {
    /// Fills `buf` from the sectors starting at `sector`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Stores `data` in the sectors starting at `sector`.
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Returns once every completed write is on stable storage.
    fn flush(&mut self) -> Result<(), BackendError>;
    /// Size of the disk in sectors.
    fn sectors(&self) -> u64;
}

/// How a virtual disk is presented to the capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockOptions {
    /// Offer `VIRTIO_BLK_F_RO` and refuse writes.
    pub read_only: bool,
    /// The device ID string (NUL-padded).
    pub id: [u8; VIRTIO_BLK_ID_BYTES],
}

impl BlockOptions {
    /// Options for a writable disk with the ID `id`, cut to 20 bytes.
    pub fn with_id(id: &[u8]) -> Self {
        let mut options = Self::default();
        let len = id.len().min(VIRTIO_BLK_ID_BYTES);
        options.id[..len].copy_from_slice(&id[..len]);
        options
    }
}

/// A virtio block device.
#[derive(Debug)]
pub struct VirtioBlock<B: BlockBackend> {
    backend: B,
    options: BlockOptions,
    driver_features: u64,
    /// Staging buffer between guest memory and the backend.
    transfer: Vec<u8>,
}

impl<B: BlockBackend> VirtioBlock<B> {
    /// A block device serving `backend`.
    pub fn new(backend: B, options: BlockOptions) -> Self {
        Self {
            backend,
            options,
            driver_features: 0,
            transfer: vec![0; TRANSFER_CHUNK],
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[CONFIG_CAPACITY..CONFIG_CAPACITY + 8]
            .copy_from_slice(&self.backend.sectors().to_le_bytes());
        config[CONFIG_SEG_MAX..CONFIG_SEG_MAX + 4].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[CONFIG_BLK_SIZE..CONFIG_BLK_SIZE + 4]
            .copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config
    }

    /// Carries out one request and writes its status byte.
    fn handle(&mut self, chain: &DescriptorChain, memory: &dyn GuestMemory) -> Completion {
        let writable = chain.writable_len();
        if writable == 0 {
            return Completion {
                written: 0,
                error: Some(RequestError::NoStatusByte),
            };
        }
        let status_offset = writable - 1;
        // Nothing happens until every buffer is known to be inside the capsule's memory,
        // so a bad request never reaches the backend.
        if let Err(error) = chain.check_memory(memory) {
            // Report the failure through the status byte if that byte is itself valid.
            let status_written = chain
                .write(memory, status_offset, &[VIRTIO_BLK_S_IOERR])
                .is_ok();
            return Completion {
                written: u32::from(status_written && writable == 1),
                error: Some(error.into()),
            };
        }
        let outcome = self.execute(chain, memory, status_offset);
        let status = match outcome.error {
            None if outcome.unsupported => VIRTIO_BLK_S_UNSUPP,
            None => VIRTIO_BLK_S_OK,
            Some(_) => VIRTIO_BLK_S_IOERR,
        };
        if let Err(error) = chain.write(memory, status_offset, &[status]) {
            return Completion {
                written: 0,
                error: Some(outcome.error.unwrap_or(error.into())),
            };
        }
        // `written` counts the bytes written from the start of the writable part; the
        // status byte only counts when everything before it was written too.
        let written = if outcome.data_written == status_offset {
            writable
        } else {
            outcome.data_written
        };
        Completion {
            // Chains are at most 2^32 - 1 bytes long.
            written: u32::try_from(written).unwrap_or(0),
            error: outcome.error,
        }
    }

    fn execute(
        &mut self,
        chain: &DescriptorChain,
        memory: &dyn GuestMemory,
        data_writable: u64,
    ) -> Outcome {
        let mut header = [0u8; HEADER_LEN as usize];
        if chain.readable_len() < HEADER_LEN {
            return Outcome::failed(RequestError::HeaderTooShort {
                len: chain.readable_len(),
            });
        }
        if let Err(error) = chain.read(memory, 0, &mut header) {
            return Outcome::failed(error.into());
        }
        let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match request_type {
            VIRTIO_BLK_T_IN => self.read_sectors(chain, memory, sector, data_writable),
            VIRTIO_BLK_T_OUT => {
                let data_len = chain.readable_len() - HEADER_LEN;
                self.write_sectors(chain, memory, sector, data_len)
            }
            VIRTIO_BLK_T_FLUSH => match self.backend.flush() {
                Ok(()) => Outcome::done(0),
                Err(error) => Outcome::failed(error.into()),
            },
            VIRTIO_BLK_T_GET_ID => {
                let len = data_writable.min(VIRTIO_BLK_ID_BYTES as u64) as usize;
                match chain.write(memory, 0, &self.options.id[..len]) {
                    Ok(()) => Outcome::done(len as u64),
                    Err(error) => Outcome::failed(error.into()),
                }
            }
            _ => Outcome {
                data_written: 0,
                error: None,
                unsupported: true,
            },
        }
    }

    /// Checks that `data_len` bytes from `sector` are whole sectors within the disk and
    /// returns the sector count.
    fn check_range(&self, sector: u64, data_len: u64) -> Result<u64, RequestError> {
        if !data_len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::PartialSector { len: data_len });
        }
        let sectors = data_len / SECTOR_SIZE;
        let capacity = self.backend.sectors();
        match sector.checked_add(sectors) {
            Some(end) if end <= capacity => Ok(sectors),
            _ => Err(RequestError::SectorOutOfRange {
                sector,
                sectors,
                capacity,
            }),
        }
    }

    fn read_sectors(
        &mut self,
        chain: &DescriptorChain,
        memory: &dyn GuestMemory,
        sector: u64,
        data_len: u64,
    ) -> Outcome {
        if let Err(error) = self.check_range(sector, data_len) {
            return Outcome::failed(error);
        }
        let mut done = 0u64;
        while done < data_len {
            let chunk = (data_len - done).min(TRANSFER_CHUNK as u64) as usize;
            let buffer = &mut self.transfer[..chunk];
            if let Err(error) = self.backend.read(sector + done / SECTOR_SIZE, buffer) {
                return Outcome::partial(done, error.into());
            }
            if let Err(error) = chain.write(memory, done, buffer) {
                return Outcome::partial(done, error.into());
            }
            done += chunk as u64;
        }
        Outcome::done(done)
    }

    fn write_sectors(
        &mut self,
        chain: &DescriptorChain,
        memory: &dyn GuestMemory,
        sector: u64,
        data_len: u64,
    ) -> Outcome {
        if self.options.read_only {
            return Outcome::failed(RequestError::ReadOnly { sector });
        }
        if let Err(error) = self.check_range(sector, data_len) {
            return Outcome::failed(error);
        }
        let mut done = 0u64;
        while done < data_len {
            let chunk = (data_len - done).min(TRANSFER_CHUNK as u64) as usize;
            let buffer = &mut self.transfer[..chunk];
            if let Err(error) = chain.read(memory, HEADER_LEN + done, buffer) {
                return Outcome::failed(error.into());
            }
            if let Err(error) = self.backend.write(sector + done / SECTOR_SIZE, buffer) {
                return Outcome::failed(error.into());
            }
            done += chunk as u64;
        }
        // Without a negotiated FLUSH the driver assumes a write-through disk.
        if self.driver_features & VIRTIO_BLK_F_FLUSH == 0 {
            if let Err(error) = self.backend.flush() {
                return Outcome::failed(error.into());
            }
        }
        Outcome::done(0)
    }
}

/// What a request did before its status byte is written.
struct Outcome {
    /// Bytes of data written from the start of the writable part.
    data_written: u64,
    error: Option<RequestError>,
    unsupported: bool,
}

impl Outcome {
    fn done(data_written: u64) -> Self {
        Self {
            data_written,
            error: None,
            unsupported: false,
        }
    }

    fn failed(error: RequestError) -> Self {
        Self::partial(0, error)
    }

    fn partial(data_written: u64, error: RequestError) -> Self {
        Self {
            data_written,
            error: Some(error),
            unsupported: false,
        }
    }
}

impl<B: BlockBackend> Device for VirtioBlock<B> {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn device_features(&self) -> u64 {
        let mut features = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
        if self.options.read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        features
    }

    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features;
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN as u32
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        copy_config(&self.config_bytes(), offset, data);
    }

    fn queue_count(&self) -> u16 {
        1
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
        virtqueue.serve(queue, memory, |chain| self.handle(chain, memory))
    }

    fn reset(&mut self) {
        self.driver_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::MmioTransport;
    use crate::queue::{BufferError, MemoryError, QueueError, VIRTQ_DESC_F_NEXT};
    use crate::rng::EntropySource;
    use crate::testing::*;
    use crate::VIRTIO_F_VERSION_1;

    type Block = MmioTransport<VirtioBlock<VecDisk>>;

    const QUEUE_NOTIFY: u64 = 0x050;
    const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;

    struct Setup {
        transport: Block,
        memory: TestMemory,
        queue: DriverQueue,
    }

    fn setup_with(disk: VecDisk, options: BlockOptions, features: u64) -> Setup {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioBlock::new(disk, options));
        let queue = bring_up(&mut transport, &memory, features, 16);
        Setup {
            transport,
            memory,
            queue,
        }
    }

    fn setup(sectors: u64) -> Setup {
        setup_with(
            VecDisk::with_sectors(sectors),
            BlockOptions::with_id(b"keel-disk-0"),
            FEATURES,
        )
    }

    fn header(memory: &TestMemory, request_type: u32, sector: u64) -> u64 {
        let gpa = memory.allocate(16, 8);
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        memory.put(gpa, &bytes);
        gpa
    }

    fn status_byte(memory: &TestMemory) -> u64 {
        let gpa = memory.allocate(1, 1);
        memory.put(gpa, &[0xff]);
        gpa
    }

    impl Setup {
        fn notify(&mut self) -> Option<DeviceError> {
            write_register(&mut self.transport, &self.memory, QUEUE_NOTIFY, 0)
        }

        fn disk(&self) -> &VecDisk {
            self.transport.device().backend()
        }

        /// Sends a request and returns (status byte, used length, reported error).
        fn request(&mut self, buffers: &[Buffer], status: u64) -> (u8, u32, Option<DeviceError>) {
            let head = self.queue.add_chain(&self.memory, buffers);
            let error = self.notify();
            let (id, written) = self
                .queue
                .pop_used(&self.memory)
                .expect("request completed");
            assert_eq!(id, u32::from(head));
            (self.memory.bytes(status, 1)[0], written, error)
        }

        fn write_sectors(&mut self, sector: u64, data: &[u8]) -> (u8, u32, Option<DeviceError>) {
            let header = header(&self.memory, VIRTIO_BLK_T_OUT, sector);
            let buffer = self.memory.allocate(data.len() as u64, 8);
            self.memory.put(buffer, data);
            let status = status_byte(&self.memory);
            self.request(
                &[
                    Buffer::readable(header, 16),
                    Buffer::readable(buffer, data.len() as u32),
                    Buffer::writable(status, 1),
                ],
                status,
            )
        }

        fn read_sectors(&mut self, sector: u64, len: u32) -> (u8, u32, Vec<u8>) {
            let header = header(&self.memory, VIRTIO_BLK_T_IN, sector);
            let buffer = self.memory.allocate(u64::from(len), 8);
            let status = status_byte(&self.memory);
            let (status, written, error) = self.request(
                &[
                    Buffer::readable(header, 16),
                    Buffer::writable(buffer, len),
                    Buffer::writable(status, 1),
                ],
                status,
            );
            if status == VIRTIO_BLK_S_OK {
                assert_eq!(error, None);
            }
            (status, written, self.memory.bytes(buffer, len as usize))
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn write_then_read_round_trip() {
        let mut setup = setup(64);
        let data = pattern(3 * 512, 7);
        let (status, written, error) = setup.write_sectors(5, &data);
        assert_eq!((status, written, error), (VIRTIO_BLK_S_OK, 1, None));
        assert_eq!(setup.disk().data[5 * 512..8 * 512], data[..]);
        assert_eq!(setup.disk().data[..5 * 512], vec![0; 5 * 512][..]);

        let (status, written, read) = setup.read_sectors(5, 3 * 512);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(written, 3 * 512 + 1, "data and status byte");
        assert_eq!(read, data);
        assert!(setup.transport.irq_level());
    }

    #[test]
    fn transfers_larger_than_the_staging_buffer() {
        let mut setup = setup(512);
        let data = pattern(200 * 1024, 3);
        assert_eq!(setup.write_sectors(10, &data).0, VIRTIO_BLK_S_OK);
        let (status, _, read) = setup.read_sectors(10, data.len() as u32);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(read, data);
        assert!(setup.disk().writes >= 4, "moved in several pieces");
    }

    #[test]
    fn any_descriptor_layout_is_accepted() {
        let mut setup = setup(16);
        let data = pattern(1024, 11);
        setup.transport.device_mut().backend_mut().data[512..1536].copy_from_slice(&data);
        // Header split in two, data split off the sector boundaries, status sharing the
        // last data descriptor.
        let mut request = [0u8; 16];
        request[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        request[8..].copy_from_slice(&1u64.to_le_bytes());
        let header_a = setup.memory.allocate(5, 1);
        let header_b = setup.memory.allocate(11, 1);
        setup.memory.put(header_a, &request[..5]);
        setup.memory.put(header_b, &request[5..]);
        let data_a = setup.memory.allocate(700, 1);
        let data_b = setup.memory.allocate(325, 1);
        let (status, written, error) = setup.request(
            &[
                Buffer::readable(header_a, 5),
                Buffer::readable(header_b, 11),
                Buffer::writable(data_a, 700),
                Buffer::writable(data_b, 325),
            ],
            data_b + 324,
        );
        assert_eq!((status, written, error), (VIRTIO_BLK_S_OK, 1025, None));
        let mut read = setup.memory.bytes(data_a, 700);
        read.extend(setup.memory.bytes(data_b, 324));
        assert_eq!(read, data);
    }

    #[test]
    fn flush_reaches_the_backend_before_completion() {
        let mut setup = setup(16);
        setup.write_sectors(0, &[1; 512]);
        assert_eq!(
            setup.disk().unflushed_writes,
            1,
            "FLUSH negotiated: write-back"
        );
        let header = header(&setup.memory, VIRTIO_BLK_T_FLUSH, 0);
        let status = status_byte(&setup.memory);
        let (status, written, error) = setup.request(
            &[Buffer::readable(header, 16), Buffer::writable(status, 1)],
            status,
        );
        assert_eq!((status, written, error), (VIRTIO_BLK_S_OK, 1, None));
        assert_eq!(setup.disk().flushes, 1);
        assert_eq!(setup.disk().unflushed_writes, 0);
    }

    #[test]
    fn failed_flush_reports_io_error() {
        let mut disk = VecDisk::with_sectors(16);
        disk.fail_flush = true;
        let mut setup = setup_with(disk, BlockOptions::default(), FEATURES);
        let header = header(&setup.memory, VIRTIO_BLK_T_FLUSH, 0);
        let status = status_byte(&setup.memory);
        let (status, _, error) = setup.request(
            &[Buffer::readable(header, 16), Buffer::writable(status, 1)],
            status,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(
            error,
            Some(DeviceError::Request {
                queue: 0,
                head: 0,
                error: RequestError::Backend(BackendError::FlushFailed)
            })
        );
    }

    #[test]
    fn writes_are_write_through_without_negotiated_flush() {
        let mut setup = setup_with(
            VecDisk::with_sectors(16),
            BlockOptions::default(),
            VIRTIO_F_VERSION_1,
        );
        assert_eq!(setup.write_sectors(2, &[9; 1024]).0, VIRTIO_BLK_S_OK);
        assert_eq!(setup.disk().flushes, 1);
        assert_eq!(setup.disk().unflushed_writes, 0);
    }

    #[test]
    fn get_id_returns_the_padded_id() {
        let mut setup = setup(16);
        let header = header(&setup.memory, VIRTIO_BLK_T_GET_ID, 0);
        let id = setup.memory.allocate(20, 1);
        setup.memory.put(id, &[0xaa; 20]);
        let status = status_byte(&setup.memory);
        let (status_value, written, error) = setup.request(
            &[
                Buffer::readable(header, 16),
                Buffer::writable(id, 20),
                Buffer::writable(status, 1),
            ],
            status,
        );
        assert_eq!((status_value, written, error), (VIRTIO_BLK_S_OK, 21, None));
        let mut expected = b"keel-disk-0".to_vec();
        expected.resize(20, 0);
        assert_eq!(setup.memory.bytes(id, 20), expected);
    }

    #[test]
    fn out_of_range_sectors_fail_without_reaching_the_backend() {
        let mut setup = setup(16);
        let (status, written, error) = setup.write_sectors(15, &[1; 1024]);
        assert_eq!((status, written), (VIRTIO_BLK_S_IOERR, 1));
        assert_eq!(
            error,
            Some(DeviceError::Request {
                queue: 0,
                head: 0,
                error: RequestError::SectorOutOfRange {
                    sector: 15,
                    sectors: 2,
                    capacity: 16
                }
            })
        );
        let (status, written, _) = setup.read_sectors(16, 512);
        assert_eq!((status, written), (VIRTIO_BLK_S_IOERR, 0));
        // A sector number that would wrap around.
        let (status, _, _) = setup.read_sectors(u64::MAX, 512);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        // The last sector itself is fine.
        assert_eq!(setup.read_sectors(15, 512).0, VIRTIO_BLK_S_OK);
        let disk = setup.disk();
        assert_eq!(
            (disk.writes, disk.reads, disk.out_of_range_accesses),
            (0, 1, 0)
        );
    }

    #[test]
    fn partial_sectors_are_refused() {
        let mut setup = setup(16);
        let (status, _, error) = setup.write_sectors(0, &[1; 100]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(
            error,
            Some(DeviceError::Request {
                queue: 0,
                head: 0,
                error: RequestError::PartialSector { len: 100 }
            })
        );
        assert_eq!(setup.disk().writes, 0);
    }

    #[test]
    fn descriptor_outside_guest_memory_fails_without_backend_access() {
        let mut setup = setup(16);
        let header = header(&setup.memory, VIRTIO_BLK_T_OUT, 0);
        let status = status_byte(&setup.memory);
        let outside = setup.memory.end() - 256;
        let (status_value, _, error) = setup.request(
            &[
                Buffer::readable(header, 16),
                Buffer::readable(outside, 512),
                Buffer::writable(status, 1),
            ],
            status,
        );
        assert_eq!(status_value, VIRTIO_BLK_S_IOERR);
        assert_eq!(
            error,
            Some(DeviceError::Request {
                queue: 0,
                head: 0,
                error: RequestError::Buffer(BufferError::Memory(MemoryError::OutOfBounds {
                    gpa: outside,
                    len: 512
                }))
            })
        );
        // A read whose destination is outside memory must not read the disk either.
        let header = self::header(&setup.memory, VIRTIO_BLK_T_IN, 0);
        let (_, written, error) = setup.request(
            &[
                Buffer::readable(header, 16),
                Buffer::writable(0x1000, 512),
                Buffer::writable(status, 1),
            ],
            status,
        );
        assert_eq!(written, 0);
        assert!(error.is_some());
        let disk = setup.disk();
        assert_eq!((disk.reads, disk.writes, disk.flushes), (0, 0, 0));
        assert!(setup.disk().data.iter().all(|&byte| byte == 0));
    }

    #[test]
    fn malformed_requests_get_io_error_or_unsupported() {
        let mut setup = setup(16);
        // Header shorter than 16 bytes.
        let short = setup.memory.allocate(8, 8);
        let status = status_byte(&setup.memory);
        let (status_value, _, error) = setup.request(
            &[Buffer::readable(short, 8), Buffer::writable(status, 1)],
            status,
        );
        assert_eq!(status_value, VIRTIO_BLK_S_IOERR);
        assert!(matches!(
            error,
            Some(DeviceError::Request {
                error: RequestError::HeaderTooShort { len: 8 },
                ..
            })
        ));

        // Unknown request type: UNSUPP, which is not an error of the device.
        let header = header(&setup.memory, 77, 0);
        let status = status_byte(&setup.memory);
        let (status_value, written, error) = setup.request(
            &[Buffer::readable(header, 16), Buffer::writable(status, 1)],
            status,
        );
        assert_eq!(
            (status_value, written, error),
            (VIRTIO_BLK_S_UNSUPP, 1, None)
        );

        // No writable byte for the status at all.
        let header = self::header(&setup.memory, VIRTIO_BLK_T_FLUSH, 0);
        let head = setup
            .queue
            .add_chain(&setup.memory, &[Buffer::readable(header, 16)]);
        let error = setup.notify();
        assert_eq!(
            error,
            Some(DeviceError::Request {
                queue: 0,
                head,
                error: RequestError::NoStatusByte
            })
        );
        assert_eq!(
            setup.queue.pop_used(&setup.memory),
            Some((u32::from(head), 0))
        );
        assert_eq!(setup.disk().flushes, 0);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let options = BlockOptions {
            read_only: true,
            ..BlockOptions::default()
        };
        let mut setup = setup_with(
            VecDisk::with_sectors(16),
            options,
            FEATURES | VIRTIO_BLK_F_RO,
        );
        let (status, _, error) = setup.write_sectors(0, &[5; 512]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert!(matches!(
            error,
            Some(DeviceError::Request {
                error: RequestError::ReadOnly { sector: 0 },
                ..
            })
        ));
        assert_eq!(setup.disk().writes, 0);
        assert_eq!(setup.read_sectors(0, 512).0, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn descriptor_loop_fails_the_request_only() {
        let mut setup = setup(16);
        let buffer = setup.memory.allocate(16, 8);
        setup
            .queue
            .write_descriptor(&setup.memory, 0, buffer, 16, VIRTQ_DESC_F_NEXT, 1);
        setup
            .queue
            .write_descriptor(&setup.memory, 1, buffer, 16, VIRTQ_DESC_F_NEXT, 0);
        setup.queue.publish(&setup.memory, 0);
        let error = setup.notify();
        assert_eq!(
            error,
            Some(DeviceError::Queue {
                queue: 0,
                error: QueueError::ChainTooLong { head: 0, limit: 16 }
            })
        );
        assert_eq!(setup.queue.pop_used(&setup.memory), Some((0, 0)));
        assert_eq!(setup.disk().reads + setup.disk().writes, 0);
        // The device is still usable.
        assert_eq!(
            setup.transport.status() & crate::mmio::STATUS_DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(setup.write_sectors(1, &[3; 512]).0, VIRTIO_BLK_S_OK);
    }

    /// Random descriptor tables, rings and headers must never panic the device, never
    /// reach the backend out of range and never produce a used entry for a head that does
    /// not exist.
    #[test]
    fn garbage_descriptor_tables_never_panic() {
        let mut random = TestRandom::new(0x6b65_656c);
        let mut completions = 0usize;
        for _round in 0..300 {
            let mut setup = setup(64);
            let memory_start = RAM_BASE;
            let memory_end = setup.memory.end();
            let size = setup.queue.size;
            // Random descriptors: mostly inside memory, sometimes anywhere.
            for index in 0..size {
                let addr = match random.below(4) {
                    0 => random.next_u64(),
                    _ => memory_start + random.below(memory_end - memory_start),
                };
                let len = match random.below(4) {
                    0 => random.next_u64() as u32,
                    _ => random.below(2048) as u32,
                };
                let flags = random.below(8) as u16;
                let next = random.below(u64::from(size) + 2) as u16;
                setup
                    .queue
                    .write_descriptor(&setup.memory, index, addr, len, flags, next);
            }
            // Random bytes where headers and indirect tables may land.
            let scratch = setup.memory.allocate(4096, 16);
            let mut noise = vec![0u8; 4096];
            random.fill(&mut noise).expect("the test generator never fails");
            setup.memory.put(scratch, &noise);
            for _ in 0..random.below(20) {
                let head = random.below(u64::from(size) + 1) as u16;
                setup.queue.publish(&setup.memory, head);
            }
            if random.below(8) == 0 {
                let index = random.next_u64() as u16;
                setup.queue.set_available_index(&setup.memory, index);
            }
            for _ in 0..3 {
                let _ = setup.notify();
            }
            let disk = setup.disk();
            assert_eq!(disk.out_of_range_accesses, 0);
            while let Some((id, _)) = setup.queue.pop_used(&setup.memory) {
                assert!(id < u32::from(size), "used entry for descriptor {id}");
                completions += 1;
            }
            // The register file still answers.
            assert!(setup.transport.read(0x070, 4).is_ok());
        }
        // The garbage did get processed rather than rejected wholesale.
        assert!(completions > 100, "only {completions} chains completed");
    }
}
