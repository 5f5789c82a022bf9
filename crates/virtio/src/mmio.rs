//! The virtio-mmio (version 2) transport: the register file a driver sees, generic over the device behind it.
//!
//! Register map (VIRTIO 1.2, section 4.2.2), offsets from the device's MMIO base. Control
//! registers are 32 bits wide and only accessed with aligned 32-bit accesses; the
//! device-specific configuration space from 0x100 takes 8, 16 and 32-bit aligned accesses.
//!
//! | offset        | register                       | direction |
//! |---------------|--------------------------------|-----------|
//! | 0x000         | MagicValue (0x74726976)        | R         |
//! | 0x004         | Version (2)                    | R         |
//! | 0x008         | DeviceID                       | R         |
//! | 0x00c         | VendorID                       | R         |
//! | 0x010         | DeviceFeatures                 | R         |
//! | 0x014         | DeviceFeaturesSel              | W         |
//! | 0x020         | DriverFeatures                 | W         |
//! | 0x024         | DriverFeaturesSel              | W         |
//! | 0x030         | QueueSel                       | W         |
//! | 0x034         | QueueNumMax                    | R         |
//! | 0x038         | QueueNum                       | W         |
//! | 0x044         | QueueReady                     | RW        |
//! | 0x050         | QueueNotify                    | W         |
//! | 0x060         | InterruptStatus                | R         |
//! | 0x064         | InterruptACK                   | W         |
//! | 0x070         | Status                         | RW        |
//! | 0x080 / 0x084 | QueueDescLow / High            | W         |
//! | 0x090 / 0x094 | QueueDriverLow / High          | W         |
//! | 0x0a0 / 0x0a4 | QueueDeviceLow / High          | W         |
//! | 0x0ac         | SHMSel                         | W         |
//! | 0x0b0 / 0x0b4 | SHMLenLow / High               | R         |
//! | 0x0b8 / 0x0bc | SHMBaseLow / High              | R         |
//! | 0x0fc         | ConfigGeneration               | R         |
//! | 0x100+        | device configuration space     | RW        |
//!
//! The specification forbids drivers to read write-only registers, write read-only ones,
//! touch queue configuration while the queue is ready, or access anything else; every such
//! access is an [`AccessError`], which the hypervisor turns into an access fault in the
//! capsule. `QueueReset` (0x0c0) is absent because `VIRTIO_F_RING_RESET` is not offered, and
//! there are no shared memory regions, so `SHMLen`/`SHMBase` read as all ones.

use alloc::vec::Vec;
use core::fmt;

use crate::error::DeviceError;
use crate::queue::{GuestMemory, Virtqueue};
use crate::{TRANSPORT_FEATURES_MASK, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};

/// "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The non-legacy virtio-mmio interface.
pub const VERSION: u32 = 2;
/// Keel's virtio subsystem vendor ID: "KEEL" read as a little-endian word.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"KEEL");
/// Size of the MMIO window to describe in the capsule's device tree: the control registers
/// and up to 0x100 bytes of configuration space.
pub const MMIO_WINDOW_SIZE: u64 = 0x200;

const MAGIC_VALUE_OFFSET: u64 = 0x000;
const VERSION_OFFSET: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID_OFFSET: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_LEN_HIGH: u64 = 0x0b4;
const SHM_BASE_LOW: u64 = 0x0b8;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// Device status bits (VIRTIO 1.2, section 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// The guest knows how to drive the device.
pub const STATUS_DRIVER: u8 = 2;
/// The driver is set up and ready to drive the device.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Feature negotiation is complete (set by the driver, kept only if the device agrees).
pub const STATUS_FEATURES_OK: u8 = 8;
/// The device hit an error it cannot recover from without a reset (set by the device).
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// The driver gave up on the device.
pub const STATUS_FAILED: u8 = 128;

/// InterruptStatus bit: a queue has new used buffers.
pub const INTERRUPT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit: the configuration space (or the device status) changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// Transport features this implementation offers to every driver.
const TRANSPORT_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC;

/// Copies the `data.len()` bytes at `offset` of a device's configuration space `config` into
/// `data`, or zeros where the range runs past it: what a [`Device::read_config`] usually does.
pub(crate) fn copy_config(config: &[u8], offset: u32, data: &mut [u8]) {
    let start = offset as usize;
    match config.get(start..start.saturating_add(data.len())) {
        Some(bytes) => data.copy_from_slice(bytes),
        None => data.fill(0),
    }
}

/// A virtio device model behind the transport.
pub trait Device {
    /// `DeviceID`: the virtio device type.
    fn device_id(&self) -> u32;

    /// Device-specific feature bits offered to the driver. Bits 24 to 40 belong to the
    /// transport and are ignored here.
    fn device_features(&self) -> u64;

    /// Called when the driver's feature selection is accepted (`FEATURES_OK`), with the
    /// negotiated features.
    fn set_driver_features(&mut self, features: u64) {
        let _ = features;
    }

    /// Size of the device configuration space in bytes (at most 0x100).
    fn config_len(&self) -> u32 {
        0
    }

    /// Reads `data.len()` bytes of configuration space at `offset`; the transport has
    /// checked that the range lies within [`Device::config_len`].
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }

    /// Writes configuration space; returns false if the bytes are not writable, which
    /// makes the access a fault.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> bool {
        let _ = (offset, data);
        false
    }

    /// Number of virtqueues.
    fn queue_count(&self) -> u16;

    /// `QueueNumMax` of `queue`, a power of two.
    fn queue_max_size(&self, queue: u16) -> u16;

    /// Processes the buffers available in `queue` (the driver notified it, or the device
    /// asked the transport to look again).
    fn notify(
        &mut self,
        queue: u16,
        virtqueue: &mut Virtqueue,
        memory: &dyn GuestMemory,
    ) -> Result<(), DeviceError>;

    /// Returns the device to its initial state (the driver wrote 0 to `Status`).
    fn reset(&mut self);
}

/// Why an access to the MMIO window was refused; the hypervisor answers it with an access
/// fault in the capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// A control register accessed with a width other than 32 bits.
    RegisterWidth { offset: u64, size: u8 },
    /// An access not aligned to its width.
    Misaligned { offset: u64, size: u8 },
    /// A configuration space access with a width other than 8, 16 or 32 bits.
    ConfigWidth { offset: u64, size: u8 },
    /// No register at this offset.
    NoSuchRegister { offset: u64 },
    /// A read of a write-only register.
    WriteOnly { register: &'static str },
    /// A write to a read-only register.
    ReadOnly { register: &'static str },
    /// A queue configuration register written while the selected queue is ready.
    QueueReady { register: &'static str, queue: u32 },
    /// Configuration space access past the device's configuration.
    ConfigOutOfRange {
        offset: u64,
        size: u8,
        config_len: u32,
    },
    /// A configuration space write to bytes the device does not let the driver write.
    ConfigNotWritable { offset: u64, size: u8 },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AccessError::RegisterWidth { offset, size } => write!(
                f,
                "virtio-mmio access of {size} bytes at offset {offset:#x}: control registers take only 4-byte accesses"
            ),
            AccessError::Misaligned { offset, size } => write!(
                f,
                "virtio-mmio access of {size} bytes at offset {offset:#x} is not aligned to its size"
            ),
            AccessError::ConfigWidth { offset, size } => write!(
                f,
                "virtio-mmio configuration access of {size} bytes at offset {offset:#x}: only 1, 2 and 4-byte accesses are allowed"
            ),
            AccessError::NoSuchRegister { offset } => {
                write!(f, "virtio-mmio offset {offset:#x} is not a register")
            }
            AccessError::WriteOnly { register } => {
                write!(f, "virtio-mmio read of the write-only register {register}")
            }
            AccessError::ReadOnly { register } => {
                write!(f, "virtio-mmio write to the read-only register {register}")
            }
            AccessError::QueueReady { register, queue } => write!(
                f,
                "virtio-mmio write to {register} while queue {queue} is ready"
            ),
            AccessError::ConfigOutOfRange { offset, size, config_len } => write!(
                f,
                "virtio-mmio configuration access of {size} bytes at offset {offset:#x} is outside the {config_len}-byte configuration space"
            ),
            AccessError::ConfigNotWritable { offset, size } => write!(
                f,
                "virtio-mmio configuration write of {size} bytes at offset {offset:#x} to read-only configuration"
            ),
        }
    }
}

impl core::error::Error for AccessError {}

/// The name the specification gives the control register at `offset`.
fn register_name(offset: u64) -> &'static str {
    match offset {
        MAGIC_VALUE_OFFSET => "MagicValue",
        VERSION_OFFSET => "Version",
        DEVICE_ID => "DeviceID",
        VENDOR_ID_OFFSET => "VendorID",
        DEVICE_FEATURES => "DeviceFeatures",
        DEVICE_FEATURES_SEL => "DeviceFeaturesSel",
        DRIVER_FEATURES => "DriverFeatures",
        DRIVER_FEATURES_SEL => "DriverFeaturesSel",
        QUEUE_SEL => "QueueSel",
        QUEUE_NUM_MAX => "QueueNumMax",
        QUEUE_NUM => "QueueNum",
        QUEUE_READY => "QueueReady",
        QUEUE_NOTIFY => "QueueNotify",
        INTERRUPT_STATUS => "InterruptStatus",
        INTERRUPT_ACK => "InterruptACK",
        STATUS => "Status",
        QUEUE_DESC_LOW => "QueueDescLow",
        QUEUE_DESC_HIGH => "QueueDescHigh",
        QUEUE_DRIVER_LOW => "QueueDriverLow",
        QUEUE_DRIVER_HIGH => "QueueDriverHigh",
        QUEUE_DEVICE_LOW => "QueueDeviceLow",
        QUEUE_DEVICE_HIGH => "QueueDeviceHigh",
        SHM_SEL => "SHMSel",
        SHM_LEN_LOW => "SHMLenLow",
        SHM_LEN_HIGH => "SHMLenHigh",
        SHM_BASE_LOW => "SHMBaseLow",
        SHM_BASE_HIGH => "SHMBaseHigh",
        CONFIG_GENERATION => "ConfigGeneration",
        _ => "an unknown register",
    }
}

/// Replaces the low or high 32 bits of `value`.
fn set_half(value: u64, half: u32, high: bool) -> u64 {
    if high {
        (value & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (value & !0xffff_ffff) | u64::from(half)
    }
}

/// A virtio device behind its virtio-mmio register file.
#[derive(Debug)]
pub struct MmioTransport<D: Device> {
    device: D,
    queues: Vec<Virtqueue>,
    status: u8,
    device_features_select: u32,
    driver_features_select: u32,
    /// Feature bits the driver wrote, bits 0 to 63.
    driver_features: u64,
    /// The driver wrote non-zero feature bits beyond bit 63, which no device offers.
    driver_features_beyond_64: bool,
    /// The features agreed at `FEATURES_OK`.
    negotiated_features: u64,
    queue_select: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl<D: Device> MmioTransport<D> {
    /// Puts `device` behind a transport in the reset state.
    pub fn new(device: D) -> Self {
        let queues = (0..device.queue_count())
            .map(|queue| Virtqueue::new(device.queue_max_size(queue)))
            .collect();
        Self {
            device,
            queues,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            negotiated_features: 0,
            queue_select: 0,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, for the hypervisor to feed it (host input, backend events).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The `Status` register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features agreed with the driver; 0 until `FEATURES_OK` is accepted.
    pub fn negotiated_features(&self) -> u64 {
        self.negotiated_features
    }

    /// Feature bits offered in `DeviceFeatures`.
    pub fn offered_features(&self) -> u64 {
        (self.device.device_features() & !TRANSPORT_FEATURES_MASK) | TRANSPORT_FEATURES
    }

    /// The level of the device's interrupt line: high while any `InterruptStatus` bit is set.
    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    /// Device reset, as when the driver writes 0 to `Status`: the device model, all queues,
    /// feature negotiation and pending interrupts are cleared.
    pub fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.negotiated_features = 0;
        self.queue_select = 0;
        self.interrupt_status = 0;
    }

    /// Tells the driver the configuration space changed (a new `ConfigGeneration` and,
    /// once the driver is running, a configuration change interrupt).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt_status |= INTERRUPT_CONFIG_CHANGE;
        }
    }

    /// Has the device look at `queue` again, for work that does not come from a driver
    /// notification (for example host input that can now fill waiting receive buffers).
    pub fn process_queue(&mut self, queue: u16, memory: &dyn GuestMemory) -> Option<DeviceError> {
        if !self.running() {
            return None;
        }
        let index = usize::from(queue);
        let virtqueue = self.queues.get_mut(index)?;
        if !virtqueue.is_ready() {
            return None;
        }
        let outcome = self.device.notify(queue, virtqueue, memory);
        let notification = virtqueue.take_notification(memory);
        let mut reported = outcome.err();
        match notification {
            Ok(true) => self.interrupt_status |= INTERRUPT_USED_BUFFER,
            Ok(false) => {}
            Err(error) => {
                reported = Some(DeviceError::Queue { queue, error });
            }
        }
        if reported.is_some_and(|error| error.needs_reset()) {
            self.enter_needs_reset();
        }
        reported
    }

    /// Whether the device may consume buffers: the driver finished initialisation, the
    /// features were accepted and nothing has failed.
    fn running(&self) -> bool {
        let required = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        self.status & required == required
            && self.status & (STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED) == 0
    }

    /// Marks the device broken until the driver resets it, telling a running driver
    /// through a configuration change interrupt as the specification asks.
    fn enter_needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt_status |= INTERRUPT_CONFIG_CHANGE;
        }
    }

    fn selected_queue(&self) -> Option<&Virtqueue> {
        self.queues.get(self.queue_select as usize)
    }

    /// Reads `size` bytes at `offset` in the MMIO window.
    pub fn read(&self, offset: u64, size: u8) -> Result<u32, AccessError> {
        if offset >= CONFIG {
            return self.read_config(offset, size);
        }
        check_register_access(offset, size)?;
        let value = match offset {
            MAGIC_VALUE_OFFSET => MAGIC_VALUE,
            VERSION_OFFSET => VERSION,
            DEVICE_ID => self.device.device_id(),
            VENDOR_ID_OFFSET => VENDOR_ID,
            DEVICE_FEATURES => {
                let features = self.offered_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            QUEUE_NUM_MAX => self
                .selected_queue()
                .map_or(0, |queue| u32::from(queue.max_size())),
            QUEUE_READY => self
                .selected_queue()
                .map_or(0, |queue| u32::from(queue.is_ready())),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => u32::from(self.status),
            // No shared memory regions: length and base of a missing region read as -1.
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            DEVICE_FEATURES_SEL | DRIVER_FEATURES | DRIVER_FEATURES_SEL | QUEUE_SEL | QUEUE_NUM
            | QUEUE_NOTIFY | INTERRUPT_ACK | QUEUE_DESC_LOW | QUEUE_DESC_HIGH
            | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH
            | SHM_SEL => {
                return Err(AccessError::WriteOnly {
                    register: register_name(offset),
                })
            }
            _ => return Err(AccessError::NoSuchRegister { offset }),
        };
        Ok(value)
    }

    /// Writes the low `size` bytes of `value` at `offset` in the MMIO window.
    ///
    /// `Ok(Some(error))` means the access itself was valid but the device ran into a
    /// problem with the driver's queues or requests while acting on it; the hypervisor
    /// logs it against the capsule.
    pub fn write(
        &mut self,
        offset: u64,
        size: u8,
        value: u32,
        memory: &dyn GuestMemory,
    ) -> Result<Option<DeviceError>, AccessError> {
        if offset >= CONFIG {
            self.write_config(offset, size, value)?;
            return Ok(None);
        }
        check_register_access(offset, size)?;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            DRIVER_FEATURES_SEL => self.driver_features_select = value,
            QUEUE_SEL => self.queue_select = value,
            QUEUE_NUM | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                self.write_queue_config(offset, value)?;
            }
            QUEUE_READY => return Ok(self.write_queue_ready(value, memory)),
            QUEUE_NOTIFY => return Ok(self.notify(value, memory)),
            INTERRUPT_ACK => self.interrupt_status &= !value,
            STATUS => return Ok(self.write_status(value, memory)),
            // There are no shared memory regions to select; the value is irrelevant.
            SHM_SEL => {}
            MAGIC_VALUE_OFFSET | VERSION_OFFSET | DEVICE_ID | VENDOR_ID_OFFSET
            | DEVICE_FEATURES | QUEUE_NUM_MAX | INTERRUPT_STATUS | SHM_LEN_LOW | SHM_LEN_HIGH
            | SHM_BASE_LOW | SHM_BASE_HIGH | CONFIG_GENERATION => {
                return Err(AccessError::ReadOnly {
                    register: register_name(offset),
                })
            }
            _ => return Err(AccessError::NoSuchRegister { offset }),
        }
        Ok(None)
    }

    fn write_driver_features(&mut self, value: u32) {
        // The selection is frozen once the device accepted it.
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = set_half(self.driver_features, value, false),
            1 => self.driver_features = set_half(self.driver_features, value, true),
            _ => {
                if value != 0 {
                    self.driver_features_beyond_64 = true;
                }
            }
        }
    }

    fn write_queue_config(&mut self, offset: u64, value: u32) -> Result<(), AccessError> {
        let queue_select = self.queue_select;
        // Writes for a queue the device does not have go nowhere; the driver finds out
        // from QueueNumMax reading 0.
        let Some(queue) = self.queues.get_mut(queue_select as usize) else {
            return Ok(());
        };
        if queue.is_ready() {
            return Err(AccessError::QueueReady {
                register: register_name(offset),
                queue: queue_select,
            });
        }
        match offset {
            QUEUE_NUM => queue.set_requested_size(value),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => {
                let gpa = set_half(queue.descriptor_table(), value, offset == QUEUE_DESC_HIGH);
                queue.set_descriptor_table(gpa);
            }
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => {
                let gpa = set_half(queue.available_ring(), value, offset == QUEUE_DRIVER_HIGH);
                queue.set_available_ring(gpa);
            }
            _ => {
                let gpa = set_half(queue.used_ring(), value, offset == QUEUE_DEVICE_HIGH);
                queue.set_used_ring(gpa);
            }
        }
        Ok(())
    }

    fn write_queue_ready(&mut self, value: u32, memory: &dyn GuestMemory) -> Option<DeviceError> {
        let queue_select = self.queue_select;
        let indirect = self.negotiated_features & VIRTIO_F_INDIRECT_DESC != 0;
        let queue = self.queues.get_mut(queue_select as usize)?;
        if value == 0 {
            queue.disable();
            return None;
        }
        if queue.is_ready() {
            return None;
        }
        // A queue index that fits the queue list fits in 16 bits.
        let queue_index = queue_select as u16;
        queue
            .enable(memory, indirect)
            .err()
            .map(|error| DeviceError::QueueSetup {
                queue: queue_index,
                error,
            })
    }

    fn notify(&mut self, value: u32, memory: &dyn GuestMemory) -> Option<DeviceError> {
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
        match u16::try_from(value) {
            Ok(queue) if usize::from(queue) < self.queues.len() => {
                self.process_queue(queue, memory)
            }
            _ => Some(DeviceError::NoSuchQueue { queue: value }),
        }
    }

    fn write_status(&mut self, value: u32, memory: &dyn GuestMemory) -> Option<DeviceError> {
        if value == 0 {
            self.reset();
            return None;
        }
        let was_running = self.running();
        // The driver only sets bits (it must not clear them); DEVICE_NEEDS_RESET belongs
        // to the device.
        let requested = (value as u8) & !STATUS_DEVICE_NEEDS_RESET;
        let mut status = self.status | requested;
        if requested & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            if self.features_acceptable() {
                self.negotiated_features = self.driver_features;
                self.device.set_driver_features(self.driver_features);
            } else {
                // Leaving FEATURES_OK clear is how the device refuses the selection.
                status &= !STATUS_FEATURES_OK;
            }
        }
        self.status = status;
        if was_running || !self.running() {
            return None;
        }
        // The driver may have made buffers available before DRIVER_OK, when the device
        // was not allowed to touch them; look at every ready queue now.
        let mut first_error = None;
        for queue in 0..self.device.queue_count() {
            if let Some(error) = self.process_queue(queue, memory) {
                first_error.get_or_insert(error);
            }
        }
        first_error
    }

    /// The driver's selection is a subset of the offered features and includes
    /// `VIRTIO_F_VERSION_1`, without which only the legacy interface applies.
    fn features_acceptable(&self) -> bool {
        !self.driver_features_beyond_64
            && self.driver_features & !self.offered_features() == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn config_range(&self, offset: u64, size: u8) -> Result<u32, AccessError> {
        if !matches!(size, 1 | 2 | 4) {
            return Err(AccessError::ConfigWidth { offset, size });
        }
        if !offset.is_multiple_of(u64::from(size)) {
            return Err(AccessError::Misaligned { offset, size });
        }
        let config_len = self.device.config_len().min(0x100);
        let relative = offset - CONFIG;
        if relative + u64::from(size) > u64::from(config_len) {
            return Err(AccessError::ConfigOutOfRange {
                offset,
                size,
                config_len,
            });
        }
        // Bounded by config_len above.
        Ok(relative as u32)
    }

    fn read_config(&self, offset: u64, size: u8) -> Result<u32, AccessError> {
        let relative = self.config_range(offset, size)?;
        let mut bytes = [0u8; 4];
        self.device
            .read_config(relative, &mut bytes[..usize::from(size)]);
        Ok(u32::from_le_bytes(bytes))
    }

    fn write_config(&mut self, offset: u64, size: u8, value: u32) -> Result<(), AccessError> {
        let relative = self.config_range(offset, size)?;
        let bytes = value.to_le_bytes();
        if self
            .device
            .write_config(relative, &bytes[..usize::from(size)])
        {
            Ok(())
        } else {
            Err(AccessError::ConfigNotWritable { offset, size })
        }
    }
}

fn check_register_access(offset: u64, size: u8) -> Result<(), AccessError> {
    if size != 4 {
        return Err(AccessError::RegisterWidth { offset, size });
    }
    if !offset.is_multiple_of(4) {
        return Err(AccessError::Misaligned { offset, size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blk::{BlockOptions, VirtioBlock, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_IN};
    use crate::queue::{QueueArea, QueueError, QueueSetupError};
    use crate::testing::*;
    use crate::{VIRTIO_F_EVENT_IDX, VIRTIO_ID_BLOCK};

    type Block = MmioTransport<VirtioBlock<VecDisk>>;

    fn block_transport(sectors: u64) -> Block {
        MmioTransport::new(VirtioBlock::new(
            VecDisk::with_sectors(sectors),
            BlockOptions::with_id(b"keel-disk"),
        ))
    }

    /// Queues a one-sector read of sector 0 and returns the status byte's address.
    fn queue_read(memory: &TestMemory, queue: &mut DriverQueue) -> u64 {
        let header = memory.allocate(16, 8);
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        memory.put(header, &bytes);
        let data = memory.allocate(512, 8);
        let status = memory.allocate(1, 1);
        memory.put(status, &[0xff]);
        queue.add_chain(
            memory,
            &[
                Buffer::readable(header, 16),
                Buffer::writable(data, 512),
                Buffer::writable(status, 1),
            ],
        );
        status
    }

    const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;

    #[test]
    fn identification_registers() {
        let transport = block_transport(8);
        assert_eq!(read_register(&transport, MAGIC_VALUE_OFFSET), 0x7472_6976);
        assert_eq!(read_register(&transport, VERSION_OFFSET), 2);
        assert_eq!(read_register(&transport, DEVICE_ID), VIRTIO_ID_BLOCK);
        assert_eq!(read_register(&transport, VENDOR_ID_OFFSET), VENDOR_ID);
        assert_eq!(read_register(&transport, QUEUE_NUM_MAX), 256);
        assert_eq!(read_register(&transport, STATUS), 0);
    }

    #[test]
    fn device_features_are_read_through_the_selector() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        write_register(&mut transport, &memory, DEVICE_FEATURES_SEL, 0);
        let low = read_register(&transport, DEVICE_FEATURES);
        assert_ne!(low & (1 << 9), 0, "VIRTIO_BLK_F_FLUSH offered");
        assert_ne!(low & (1 << 28), 0, "VIRTIO_F_INDIRECT_DESC offered");
        assert_eq!(low & (1 << 29), 0, "VIRTIO_F_EVENT_IDX not offered");
        write_register(&mut transport, &memory, DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read_register(&transport, DEVICE_FEATURES),
            1,
            "VIRTIO_F_VERSION_1 only"
        );
        write_register(&mut transport, &memory, DEVICE_FEATURES_SEL, 2);
        assert_eq!(read_register(&transport, DEVICE_FEATURES), 0);
    }

    #[test]
    fn initialisation_handshake_reaches_driver_ok() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let queue = bring_up(&mut transport, &memory, FEATURES, 16);
        assert_eq!(
            transport.status(),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
        );
        assert_eq!(transport.negotiated_features(), FEATURES);
        write_register(&mut transport, &memory, QUEUE_SEL, 0);
        assert_eq!(read_register(&transport, QUEUE_READY), 1);
        assert_eq!(queue.used_index(&memory), 0);
        assert!(!transport.irq_level());
    }

    #[test]
    fn features_ok_refused_without_version_1() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let status = negotiate(&mut transport, &memory, VIRTIO_BLK_F_FLUSH);
        assert_eq!(status & STATUS_FEATURES_OK, 0);
        assert_eq!(status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert_eq!(transport.negotiated_features(), 0);
    }

    #[test]
    fn features_ok_refused_for_features_not_offered() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let status = negotiate(
            &mut transport,
            &memory,
            VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX,
        );
        assert_eq!(status & STATUS_FEATURES_OK, 0);

        // Bits beyond 63 are never offered either.
        let status = negotiate(&mut transport, &memory, VIRTIO_F_VERSION_1);
        assert_ne!(status & STATUS_FEATURES_OK, 0);
        write_register(&mut transport, &memory, STATUS, 0);
        write_register(&mut transport, &memory, DRIVER_FEATURES_SEL, 0);
        write_register(&mut transport, &memory, DRIVER_FEATURES, 0);
        write_register(&mut transport, &memory, DRIVER_FEATURES_SEL, 1);
        write_register(&mut transport, &memory, DRIVER_FEATURES, 1);
        write_register(&mut transport, &memory, DRIVER_FEATURES_SEL, 2);
        write_register(&mut transport, &memory, DRIVER_FEATURES, 1);
        write_register(
            &mut transport,
            &memory,
            STATUS,
            u32::from(STATUS_FEATURES_OK),
        );
        assert_eq!(transport.status() & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_features_frozen_after_features_ok() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        negotiate(&mut transport, &memory, VIRTIO_F_VERSION_1);
        write_register(&mut transport, &memory, DRIVER_FEATURES_SEL, 0);
        write_register(&mut transport, &memory, DRIVER_FEATURES, 1 << 9);
        assert_eq!(transport.negotiated_features(), VIRTIO_F_VERSION_1);
    }

    #[test]
    fn bad_register_accesses_are_refused() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        assert_eq!(
            transport.read(STATUS, 1),
            Err(AccessError::RegisterWidth {
                offset: STATUS,
                size: 1
            })
        );
        assert_eq!(
            transport.read(0x072, 4),
            Err(AccessError::Misaligned {
                offset: 0x072,
                size: 4
            })
        );
        assert_eq!(
            transport.read(0x018, 4),
            Err(AccessError::NoSuchRegister { offset: 0x018 })
        );
        assert_eq!(
            transport.read(0x0c0, 4),
            Err(AccessError::NoSuchRegister { offset: 0x0c0 })
        );
        assert_eq!(
            transport.read(QUEUE_NOTIFY, 4),
            Err(AccessError::WriteOnly {
                register: "QueueNotify"
            })
        );
        assert_eq!(
            transport.write(MAGIC_VALUE_OFFSET, 4, 0, &memory),
            Err(AccessError::ReadOnly {
                register: "MagicValue"
            })
        );
        assert_eq!(
            transport.write(STATUS, 8, 1, &memory),
            Err(AccessError::RegisterWidth {
                offset: STATUS,
                size: 8
            })
        );
        // Refused accesses change nothing.
        assert_eq!(transport.status(), 0);
        let message = AccessError::WriteOnly {
            register: "QueueNotify",
        }
        .to_string();
        assert!(message.contains("QueueNotify"), "{message}");
    }

    #[test]
    fn queue_configuration_refused_while_ready() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        bring_up(&mut transport, &memory, FEATURES, 16);
        assert_eq!(
            transport.write(QUEUE_DESC_LOW, 4, 0x1000, &memory),
            Err(AccessError::QueueReady {
                register: "QueueDescLow",
                queue: 0
            })
        );
        assert_eq!(
            transport.write(QUEUE_NUM, 4, 8, &memory),
            Err(AccessError::QueueReady {
                register: "QueueNum",
                queue: 0
            })
        );
        // After QueueReady = 0 the queue may be reconfigured.
        write_register(&mut transport, &memory, QUEUE_READY, 0);
        assert_eq!(read_register(&transport, QUEUE_READY), 0);
        assert_eq!(transport.write(QUEUE_NUM, 4, 8, &memory), Ok(None));
    }

    #[test]
    fn queue_size_not_power_of_two_is_refused() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        negotiate(&mut transport, &memory, FEATURES);
        let mut queue = DriverQueue::new(&memory, 16);
        queue.size = 12;
        let error = setup_queue(&mut transport, &memory, 0, &queue);
        assert_eq!(
            error,
            Some(DeviceError::QueueSetup {
                queue: 0,
                error: QueueSetupError::SizeNotPowerOfTwo { size: 12 }
            })
        );
        assert_eq!(read_register(&transport, QUEUE_READY), 0);
    }

    #[test]
    fn queue_setup_checks_size_alignment_and_memory() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        negotiate(&mut transport, &memory, FEATURES);
        let good = DriverQueue::new(&memory, 16);

        let mut queue = DriverQueue::new(&memory, 16);
        queue.size = 512;
        assert_eq!(
            setup_queue(&mut transport, &memory, 0, &queue),
            Some(DeviceError::QueueSetup {
                queue: 0,
                error: QueueSetupError::SizeAboveMaximum {
                    size: 512,
                    maximum: 256
                }
            })
        );
        queue.size = 0;
        assert_eq!(
            setup_queue(&mut transport, &memory, 0, &queue),
            Some(DeviceError::QueueSetup {
                queue: 0,
                error: QueueSetupError::SizeZero
            })
        );

        let mut misaligned = DriverQueue::new(&memory, 16);
        misaligned.used_ring = good.used_ring + 2;
        assert_eq!(
            setup_queue(&mut transport, &memory, 0, &misaligned),
            Some(DeviceError::QueueSetup {
                queue: 0,
                error: QueueSetupError::Misaligned {
                    area: QueueArea::UsedRing,
                    gpa: good.used_ring + 2,
                    alignment: 4
                }
            })
        );

        let mut outside = DriverQueue::new(&memory, 16);
        outside.descriptor_table = memory.end() - 16 * 8;
        assert_eq!(
            setup_queue(&mut transport, &memory, 0, &outside),
            Some(DeviceError::QueueSetup {
                queue: 0,
                error: QueueSetupError::OutsideMemory {
                    area: QueueArea::DescriptorTable,
                    gpa: memory.end() - 16 * 8,
                    len: 256
                }
            })
        );
        assert_eq!(read_register(&transport, QUEUE_READY), 0);
        assert_eq!(setup_queue(&mut transport, &memory, 0, &good), None);
        assert_eq!(read_register(&transport, QUEUE_READY), 1);
    }

    #[test]
    fn missing_queue_reads_as_unavailable() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        write_register(&mut transport, &memory, QUEUE_SEL, 1);
        assert_eq!(read_register(&transport, QUEUE_NUM_MAX), 0);
        assert_eq!(read_register(&transport, QUEUE_READY), 0);
        // Writes for it go nowhere and enabling it does nothing.
        assert_eq!(write_register(&mut transport, &memory, QUEUE_NUM, 16), None);
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_READY, 1),
            None
        );
        assert_eq!(read_register(&transport, QUEUE_READY), 0);
    }

    #[test]
    fn config_space_accesses() {
        let mut transport = block_transport(0);
        transport.device_mut().backend_mut().claimed_sectors = Some(0x1_2345_6789);
        let memory = TestMemory::standard();
        // capacity, byte by byte and as two 32-bit halves.
        let bytes: Vec<u32> = (0..8)
            .map(|index| transport.read(CONFIG + index, 1).unwrap())
            .collect();
        assert_eq!(bytes, [0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0]);
        assert_eq!(transport.read(CONFIG, 4), Ok(0x2345_6789));
        assert_eq!(transport.read(CONFIG + 4, 4), Ok(1));
        assert_eq!(transport.read(CONFIG, 2), Ok(0x6789));
        // seg_max and blk_size.
        assert_eq!(transport.read(CONFIG + 12, 4), Ok(254));
        assert_eq!(transport.read(CONFIG + 20, 4), Ok(512));
        assert_eq!(
            transport.read(CONFIG, 8),
            Err(AccessError::ConfigWidth {
                offset: CONFIG,
                size: 8
            })
        );
        assert_eq!(
            transport.read(CONFIG + 1, 2),
            Err(AccessError::Misaligned {
                offset: CONFIG + 1,
                size: 2
            })
        );
        assert_eq!(
            transport.read(CONFIG + 60, 4),
            Err(AccessError::ConfigOutOfRange {
                offset: CONFIG + 60,
                size: 4,
                config_len: 60
            })
        );
        assert_eq!(
            transport.write(CONFIG, 4, 0, &memory),
            Err(AccessError::ConfigNotWritable {
                offset: CONFIG,
                size: 4
            })
        );
        assert_eq!(transport.read(CONFIG, 4), Ok(0x2345_6789));
    }

    #[test]
    fn config_change_bumps_generation_and_interrupts_running_driver() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let before = read_register(&transport, CONFIG_GENERATION);
        transport.config_changed();
        assert_ne!(read_register(&transport, CONFIG_GENERATION), before);
        assert!(!transport.irq_level(), "no interrupt before DRIVER_OK");
        bring_up(&mut transport, &memory, FEATURES, 16);
        transport.config_changed();
        assert_eq!(
            read_register(&transport, INTERRUPT_STATUS),
            INTERRUPT_CONFIG_CHANGE
        );
    }

    #[test]
    fn shared_memory_registers_report_no_region() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        write_register(&mut transport, &memory, SHM_SEL, 0);
        assert_eq!(read_register(&transport, SHM_LEN_LOW), u32::MAX);
        assert_eq!(read_register(&transport, SHM_BASE_HIGH), u32::MAX);
    }

    #[test]
    fn used_buffer_interrupt_and_acknowledge() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let mut queue = bring_up(&mut transport, &memory, FEATURES, 16);
        let status = queue_read(&memory, &mut queue);
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 0),
            None
        );
        assert_eq!(memory.bytes(status, 1), [0]);
        assert!(transport.irq_level());
        assert_eq!(
            read_register(&transport, INTERRUPT_STATUS),
            INTERRUPT_USED_BUFFER
        );
        write_register(
            &mut transport,
            &memory,
            INTERRUPT_ACK,
            INTERRUPT_USED_BUFFER,
        );
        assert!(!transport.irq_level());
        assert_eq!(read_register(&transport, INTERRUPT_STATUS), 0);
    }

    #[test]
    fn no_interrupt_flag_suppresses_used_buffer_interrupt() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let mut queue = bring_up(&mut transport, &memory, FEATURES, 16);
        queue.set_no_interrupt(&memory, true);
        queue_read(&memory, &mut queue);
        write_register(&mut transport, &memory, QUEUE_NOTIFY, 0);
        assert_eq!(queue.pop_used(&memory).map(|(_, len)| len), Some(513));
        assert!(!transport.irq_level());
    }

    #[test]
    fn buffers_are_not_touched_before_driver_ok() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        negotiate(&mut transport, &memory, FEATURES);
        let mut queue = DriverQueue::new(&memory, 16);
        assert_eq!(setup_queue(&mut transport, &memory, 0, &queue), None);
        let status = queue_read(&memory, &mut queue);
        write_register(&mut transport, &memory, QUEUE_NOTIFY, 0);
        assert_eq!(queue.used_index(&memory), 0);
        assert_eq!(memory.bytes(status, 1), [0xff]);
        // Setting DRIVER_OK makes the device pick up what is already available.
        let current = read_register(&transport, STATUS);
        write_register(
            &mut transport,
            &memory,
            STATUS,
            current | u32::from(STATUS_DRIVER_OK),
        );
        assert_eq!(queue.used_index(&memory), 1);
        assert_eq!(memory.bytes(status, 1), [0]);
        assert!(transport.irq_level());
    }

    #[test]
    fn notify_for_missing_queue_is_reported() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        bring_up(&mut transport, &memory, FEATURES, 16);
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 3),
            Some(DeviceError::NoSuchQueue { queue: 3 })
        );
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 0x1_0000),
            Some(DeviceError::NoSuchQueue { queue: 0x1_0000 })
        );
    }

    #[test]
    fn broken_queue_sets_device_needs_reset() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let mut queue = bring_up(&mut transport, &memory, FEATURES, 16);
        queue.set_available_index(&memory, 40);
        let error = write_register(&mut transport, &memory, QUEUE_NOTIFY, 0);
        assert_eq!(
            error,
            Some(DeviceError::Queue {
                queue: 0,
                error: QueueError::AvailableIndexJump {
                    seen: 0,
                    published: 40,
                    size: 16
                }
            })
        );
        assert!(error.is_some_and(|error| error.needs_reset()));
        assert_ne!(transport.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(
            read_register(&transport, INTERRUPT_STATUS),
            INTERRUPT_CONFIG_CHANGE
        );
        // The device stays away from the queue until it is reset, even if the driver
        // writes the status back with the bit set.
        queue.set_available_index(&memory, 1);
        let current = read_register(&transport, STATUS);
        write_register(&mut transport, &memory, STATUS, current);
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 0),
            None
        );
        assert_eq!(queue.used_index(&memory), 0);
    }

    #[test]
    fn reset_clears_device_state() {
        let mut transport = block_transport(8);
        let memory = TestMemory::standard();
        let mut queue = bring_up(&mut transport, &memory, FEATURES, 16);
        queue_read(&memory, &mut queue);
        write_register(&mut transport, &memory, QUEUE_NOTIFY, 0);
        assert!(transport.irq_level());

        write_register(&mut transport, &memory, STATUS, 0);
        assert_eq!(read_register(&transport, STATUS), 0);
        assert_eq!(read_register(&transport, INTERRUPT_STATUS), 0);
        assert!(!transport.irq_level());
        assert_eq!(transport.negotiated_features(), 0);
        write_register(&mut transport, &memory, QUEUE_SEL, 0);
        assert_eq!(read_register(&transport, QUEUE_READY), 0);

        // A fresh driver starts over with new rings and used index 0.
        let mut queue = bring_up(&mut transport, &memory, FEATURES, 8);
        queue_read(&memory, &mut queue);
        write_register(&mut transport, &memory, QUEUE_NOTIFY, 0);
        assert_eq!(queue.pop_used(&memory), Some((0, 513)));
        assert_eq!(queue.used_index(&memory), 1);
    }
}
