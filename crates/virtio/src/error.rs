//! Errors a device reports while serving its queues, for the hypervisor to log against the capsule.

use core::fmt;

use crate::blk::BackendError;
use crate::queue::{BufferError, QueueError, QueueSetupError};

/// Something a capsule's driver got wrong (or a backend failure) while the device worked.
///
/// None of these is an access fault: the MMIO access that triggered the work was valid.
/// The device has already answered the driver as well as it could (a failed request
/// completes with an error status; a broken queue sets `DEVICE_NEEDS_RESET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// A queue or descriptor chain is malformed.
    Queue { queue: u16, error: QueueError },
    /// The driver's queue configuration was refused when it wrote `QueueReady`.
    QueueSetup { queue: u16, error: QueueSetupError },
    /// One request failed; it was completed with an error status.
    Request {
        queue: u16,
        head: u16,
        error: RequestError,
    },
    /// `QueueNotify` named a queue the device does not have.
    NoSuchQueue { queue: u32 },
}

impl DeviceError {
    /// Whether the error left the device needing a reset (`DEVICE_NEEDS_RESET`).
    pub fn needs_reset(&self) -> bool {
        matches!(self, DeviceError::Queue { error, .. } if error.breaks_queue())
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Queue { queue, error } => write!(f, "queue {queue}: {error}"),
            DeviceError::QueueSetup { queue, error } => {
                write!(f, "queue {queue} not enabled: {error}")
            }
            DeviceError::Request { queue, head, error } => {
                write!(f, "queue {queue}, request at descriptor {head}: {error}")
            }
            DeviceError::NoSuchQueue { queue } => {
                write!(
                    f,
                    "notification for queue {queue}, which the device does not have"
                )
            }
        }
    }
}

impl core::error::Error for DeviceError {}

/// Why one request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// A buffer of the request is outside the capsule's memory, or the request is shorter
    /// than its layout requires.
    Buffer(BufferError),
    /// The chain has no device-writable byte for the status.
    NoStatusByte,
    /// The device-readable part is shorter than the 16-byte block request header.
    HeaderTooShort { len: u64 },
    /// The data of a read or write is not a whole number of 512-byte sectors.
    PartialSector { len: u64 },
    /// A read or write reaches past the end of the disk.
    SectorOutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    /// A write to a read-only disk.
    ReadOnly { sector: u64 },
    /// The block backend failed.
    Backend(BackendError),
    /// An entropy request has no device-writable buffer to fill.
    NoWritableBuffer,
    /// The hypervisor's entropy source failed.
    EntropyUnavailable,
    /// A network buffer's device-readable part is shorter than the 12-byte
    /// `virtio_net_hdr`.
    NetHeaderTooShort { len: u64 },
    /// A transmitted `virtio_net_hdr` asks for checksum or segmentation offload, which was
    /// not negotiated.
    NetOffloadRequested { flags: u8, gso_type: u8 },
    /// A transmitted frame is shorter than an Ethernet header or longer than the MTU allows.
    FrameLength {
        len: u64,
        minimum: u64,
        maximum: u64,
    },
    /// A receive buffer cannot hold the header and the frame waiting for it.
    ReceiveBufferTooSmall { needed: u64, available: u64 },
    /// A chain in a transmitq has device-writable buffers (`len` bytes of them); the
    /// specification allows only device-readable buffers there.
    WritableInTransmitChain { len: u64 },
    /// A chain in a receiveq has device-readable buffers (`len` bytes of them); the
    /// specification allows only device-writable buffers there.
    ReadableInReceiveChain { len: u64 },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RequestError::Buffer(error) => write!(f, "{error}"),
            RequestError::NoStatusByte => {
                write!(f, "no device-writable byte for the status")
            }
            RequestError::HeaderTooShort { len } => write!(
                f,
                "device-readable part is {len} bytes, shorter than the 16-byte request header"
            ),
            RequestError::PartialSector { len } => write!(
                f,
                "data length {len} is not a multiple of the 512-byte sector"
            ),
            RequestError::SectorOutOfRange {
                sector,
                sectors,
                capacity,
            } => write!(
                f,
                "{sectors} sectors from sector {sector} reach past the disk's {capacity} sectors"
            ),
            RequestError::ReadOnly { sector } => {
                write!(f, "write at sector {sector} to a read-only disk")
            }
            RequestError::Backend(error) => write!(f, "backend: {error}"),
            RequestError::NoWritableBuffer => {
                write!(f, "no device-writable buffer to fill")
            }
            RequestError::EntropyUnavailable => write!(f, "the host entropy source failed"),
            RequestError::NetHeaderTooShort { len } => write!(
                f,
                "device-readable part is {len} bytes, shorter than the 12-byte virtio_net_hdr"
            ),
            RequestError::NetOffloadRequested { flags, gso_type } => write!(
                f,
                "virtio_net_hdr asks for offloads that were not negotiated (flags {flags:#x}, gso_type {gso_type})"
            ),
            RequestError::FrameLength {
                len,
                minimum,
                maximum,
            } => write!(
                f,
                "frame of {len} bytes is outside the Ethernet range of {minimum} to {maximum} bytes"
            ),
            RequestError::ReceiveBufferTooSmall { needed, available } => write!(
                f,
                "receive buffer of {available} bytes cannot hold the {needed} bytes of header and frame"
            ),
            RequestError::WritableInTransmitChain { len } => write!(
                f,
                "transmit chain has device-writable buffers ({len} bytes); a transmitq takes only device-readable ones"
            ),
            RequestError::ReadableInReceiveChain { len } => write!(
                f,
                "receive chain has device-readable buffers ({len} bytes); a receiveq takes only device-writable ones"
            ),
        }
    }
}

impl core::error::Error for RequestError {}

impl From<BufferError> for RequestError {
    fn from(error: BufferError) -> Self {
        RequestError::Buffer(error)
    }
}

impl From<BackendError> for RequestError {
    fn from(error: BackendError) -> Self {
        RequestError::Backend(error)
    }
}
