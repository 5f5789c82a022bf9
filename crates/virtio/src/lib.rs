//! virtio devices for Keel capsules, modelled as pure state machines over the virtio-mmio transport.
//!
//! The hypervisor owns one [`MmioTransport`] per virtual device. It forwards the capsule's
//! trapped accesses to the device's MMIO window to [`MmioTransport::read`] and
//! [`MmioTransport::write`], hands in the capsule's RAM through the [`GuestMemory`] trait when
//! a write may touch the virtqueues, and drives the device's line on the capsule's virtual
//! interrupt controller from [`MmioTransport::irq_level`]. Nothing here touches hardware, so
//! every part is tested on the host.
//!
//! - [`mmio`]: the virtio-mmio version 2 register file, feature negotiation, device status.
//! - [`queue`]: split virtqueues; everything read from guest memory is checked before use.
//! - [`blk`]: a virtio block device over a [`BlockBackend`].
//! - [`console`]: a one-port virtio console exchanging bytes with the hypervisor through
//!   bounded input and output queues.
//! - [`net`]: a virtio network card exchanging Ethernet frames with the hypervisor through
//!   bounded inbox and outbox queues.
//! - [`rng`]: a virtio entropy device over an [`EntropySource`].
//!
//! Register offsets, feature bits and ring layouts follow the VIRTIO 1.2 specification.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod blk;
pub mod console;
mod error;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;

#[cfg(test)]
mod testing;

pub use blk::{BackendError, BlockBackend, BlockOptions, VirtioBlock};
pub use console::{ConsoleCounters, VirtioConsole};
pub use error::{DeviceError, RequestError};
pub use mmio::{AccessError, Device, MmioTransport};
pub use net::{Frame, NetCounters, VirtioNet};
pub use queue::{
    BufferError, Completion, Descriptor, DescriptorChain, GuestMemory, MemoryError, QueueError,
    QueueSetupError, Virtqueue,
};
pub use rng::{EntropySource, EntropyUnavailable, VirtioRng};

/// Device ID of a network card (VIRTIO 1.2, section 5 "Device Types").
pub const VIRTIO_ID_NET: u32 = 1;
/// Device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Device ID of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Device ID of an entropy source.
pub const VIRTIO_ID_ENTROPY: u32 = 4;

/// Feature bit: the driver may use descriptors with `VIRTQ_DESC_F_INDIRECT`.
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: `used_event` / `avail_event` notification suppression. Not offered.
pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit: the device complies with VIRTIO 1.0 or later (not a legacy device).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Feature bits 24 to 40 are reserved for the transport and the virtqueue mechanism; the
/// transport decides which of them are offered, whatever a device model reports.
pub const TRANSPORT_FEATURES_MASK: u64 = ((1 << 41) - 1) & !((1 << 24) - 1);
