//! A capsule's virtio devices: the `keel-virtio` models behind virtio-mmio slots, wired to the capsule's RAM, its
//! virtual PLIC and the host devices that back them.
//!
//! Slots sit where QEMU `virt` puts its own virtio-mmio transports (0x1000_1000 upwards, 4 KiB apart, interrupt
//! sources 1 to 8), so a guest kernel configured for `virt` finds them in the usual place. The generated device tree
//! lists only the slots a capsule has.

use alloc::{format, string::String, vec::Vec};

use keel_devicetree::GuestVirtio;
use keel_virtio::net::{RECEIVE_QUEUE, TRANSMIT_QUEUE};
use keel_virtio::{
    console, AccessError, BackendError, BlockBackend, BlockOptions, DeviceError, EntropySource, EntropyUnavailable,
    Frame, MemoryError, MmioTransport, VirtioBlock, VirtioConsole, VirtioNet, VirtioRng,
};

use crate::guest_memory::GuestMemory;
use crate::hostdev;
use crate::vnet;

/// Guest-physical address of the first slot.
pub const FIRST_SLOT_BASE: u64 = 0x1000_1000;
/// Distance between slots, and the size of each slot's window.
pub const SLOT_SIZE: u64 = 0x1000;
/// How many slots a capsule has room for.
pub const SLOTS: usize = 8;
/// Interrupt source of the first slot; slot `n` uses `FIRST_IRQ + n`.
pub const FIRST_IRQ: u32 = 1;
/// Bytes in a virtio-blk sector.
const SECTOR: usize = 512;

impl keel_virtio::GuestMemory for GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        GuestMemory::read(self, gpa, buf).map_err(|()| MemoryError::OutOfBounds { gpa, len: buf.len() as u64 })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        GuestMemory::write(self, gpa, data).map_err(|()| MemoryError::OutOfBounds { gpa, len: data.len() as u64 })
    }

    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        if self.contains(gpa, len) { Ok(()) } else { Err(MemoryError::OutOfBounds { gpa, len }) }
    }
}

/// Entropy for a capsule, drawn from the host's entropy device.
pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyUnavailable> {
        if hostdev::fill_entropy(buf) { Ok(()) } else { Err(EntropyUnavailable) }
    }
}

/// One extent of the host disk, seen by a capsule as a whole disk starting at sector 0.
pub struct DiskExtent {
    /// First host sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
}

impl DiskExtent {
    /// The host sector behind `sector..sector + count`, if all of it is inside the extent. The device model checks
    /// ranges too; this second check keeps the extent's bounds where the host disk is touched.
    fn host_sector(&self, sector: u64, len: usize) -> Option<u64> {
        let count = (len / SECTOR) as u64;
        let end = sector.checked_add(count)?;
        (len.is_multiple_of(SECTOR) && end <= self.sectors).then(|| self.start + sector)
    }
}

impl BlockBackend for DiskExtent {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let count = (buf.len() / SECTOR) as u64;
        let host = self.host_sector(sector, buf.len()).ok_or(BackendError::OutOfRange { sector, count })?;
        hostdev::disk_read(host, buf).map_err(|_| BackendError::ReadFailed { sector, count })
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BackendError> {
        let count = (data.len() / SECTOR) as u64;
        let host = self.host_sector(sector, data.len()).ok_or(BackendError::OutOfRange { sector, count })?;
        hostdev::disk_write(host, data).map_err(|_| BackendError::WriteFailed { sector, count })
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        hostdev::disk_flush().map_err(|_| BackendError::FlushFailed)
    }

    fn sectors(&self) -> u64 {
        self.sectors
    }
}

/// The device model in a slot.
enum Model {
    Entropy(MmioTransport<VirtioRng<HostEntropy>>),
    Disk(MmioTransport<VirtioBlock<DiskExtent>>),
    Net(MmioTransport<VirtioNet>, vnet::Port),
    Console(MmioTransport<VirtioConsole>),
}

/// Calls `$body` with the transport of whichever model `$model` holds.
macro_rules! with_transport {
    ($model:expr, $transport:ident => $body:expr) => {
        match $model {
            Model::Entropy($transport) => $body,
            Model::Disk($transport) => $body,
            Model::Net($transport, _) => $body,
            Model::Console($transport) => $body,
        }
    };
}

/// One occupied virtio-mmio slot.
pub struct Slot {
    pub base: u64,
    pub irq: u32,
    /// What the slot holds, for log lines: `rng`, `disk 'data'`.
    pub label: String,
    model: Model,
}

impl Slot {
    /// Reads a register of the slot.
    pub fn read(&self, offset: u64, width: u8) -> Result<u32, AccessError> {
        with_transport!(&self.model, transport => transport.read(offset, width))
    }

    /// Writes a register of the slot; may process queues in `memory`.
    pub fn write(
        &mut self,
        offset: u64,
        width: u8,
        value: u32,
        memory: &GuestMemory,
    ) -> Result<Option<DeviceError>, AccessError> {
        with_transport!(&mut self.model, transport => transport.write(offset, width, value, memory))
    }

    /// The level of the slot's interrupt line.
    pub fn irq_level(&self) -> bool {
        with_transport!(&self.model, transport => transport.irq_level())
    }

    /// Returns the device to its power-on state (capsule reboot).
    pub fn reset(&mut self) {
        with_transport!(&mut self.model, transport => transport.reset())
    }

    /// The switch port of a network card.
    pub fn net_port(&self) -> Option<&vnet::Port> {
        match &self.model {
            Model::Net(_, port) => Some(port),
            _ => None,
        }
    }

    /// Whether the slot holds the virtio console.
    pub fn is_console(&self) -> bool {
        matches!(self.model, Model::Console(_))
    }

    /// Whether a driver runs the virtio console (false for other slots).
    pub fn console_driver_present(&self) -> bool {
        matches!(&self.model, Model::Console(transport) if transport.device().driver_present())
    }

    /// Passes what the guest wrote to the virtio console to `sink`, letting the device take the rest of the
    /// transmit queue whenever its outbox filled. Returns whether there was any output.
    pub fn take_console_output(
        &mut self,
        memory: &GuestMemory,
        sink: &mut dyn FnMut(&[u8]),
    ) -> (bool, Option<DeviceError>) {
        let Model::Console(transport) = &mut self.model else { return (false, None) };
        let mut any = false;
        let mut error = None;
        // Each round moves at most the outbox's capacity. The rounds are capped so that no guest, whatever it puts
        // in one chain, holds the hart here for long; what is left waits for its next notification.
        for _ in 0..console::QUEUE_SIZE {
            if transport.device().pending_output() > 0 {
                any = true;
                transport.device_mut().take_output(sink);
            }
            if !transport.device().output_stalled() {
                break;
            }
            error = error.or(transport.process_queue(console::TRANSMIT_QUEUE, memory));
        }
        (any, error)
    }

    /// Gives console input to the virtio console and fills the driver's receive buffers with it. Returns how many
    /// bytes it accepted.
    pub fn console_input(&mut self, bytes: &[u8], memory: &GuestMemory) -> (usize, Option<DeviceError>) {
        let Model::Console(transport) = &mut self.model else { return (0, None) };
        let accepted = transport.device_mut().queue_input(bytes);
        (accepted, transport.process_queue(console::RECEIVE_QUEUE, memory))
    }

    /// Takes the frames a network card transmitted, letting it move on to chains it left in the transmit queue
    /// because its outbox was full. Returns the frames and whether chains may still be waiting (the caller
    /// forwards the frames, then asks again).
    pub fn take_transmitted(&mut self, memory: &GuestMemory) -> (Vec<Frame>, bool, Option<DeviceError>) {
        let Model::Net(transport, _) = &mut self.model else { return (Vec::new(), false, None) };
        let frames: Vec<Frame> = transport.device_mut().drain_transmitted().collect();
        let mut error = None;
        if transport.device().transmit_stalled() {
            error = transport.process_queue(TRANSMIT_QUEUE, memory);
        }
        let more = transport.device().pending_transmitted() > 0;
        (frames, more, error)
    }

    /// Hands received frames to a network card and fills the driver's receive buffers with them. Returns how many
    /// were dropped (no driver, inbox full) and any error in the receive queue.
    pub fn receive<'f>(
        &mut self,
        frames: impl Iterator<Item = &'f Frame>,
        memory: &GuestMemory,
    ) -> (usize, Option<DeviceError>) {
        let Model::Net(transport, _) = &mut self.model else { return (0, None) };
        let dropped = frames.filter(|frame| !transport.device_mut().enqueue_received(frame.as_slice())).count();
        (dropped, transport.process_queue(RECEIVE_QUEUE, memory))
    }
}

/// A disk a capsule is given: a name (its virtio-blk ID) and an extent of the host disk.
pub struct DiskSpec<'a> {
    pub name: &'a str,
    pub start_sector: u64,
    pub sectors: u64,
    pub read_only: bool,
}

/// Builds a capsule's slots: its disks first (so the first disk is `/dev/vda`), then its network card if it has a
/// MAC address, then a virtio console (`hvc0`, a second console), then an entropy device when the host has one. Fails if a disk is not inside the host disk or there
/// is no host disk, or another capsule's card has the MAC address.
pub fn build(disks: &[DiskSpec<'_>], mac: Option<[u8; 6]>) -> Result<Vec<Slot>, String> {
    let mut slots = Vec::new();
    // The next free slot's address and interrupt source: slots are filled in order.
    let take_slot = |slots: &Vec<Slot>| -> Result<(u64, u32), String> {
        let index = slots.len();
        if index >= SLOTS {
            return Err(format!("more than {SLOTS} virtio devices"));
        }
        Ok((FIRST_SLOT_BASE + index as u64 * SLOT_SIZE, FIRST_IRQ + index as u32))
    };
    for disk in disks {
        let host_sectors = hostdev::disk_sectors()
            .ok_or_else(|| format!("disk '{}' needs a host disk, and the machine has none", disk.name))?;
        let end = disk.start_sector.checked_add(disk.sectors);
        if end.is_none_or(|end| end > host_sectors) {
            return Err(format!(
                "disk '{}' (sectors {}..{}) lies outside the host disk's {host_sectors} sectors",
                disk.name,
                disk.start_sector,
                disk.start_sector.saturating_add(disk.sectors)
            ));
        }
        let (base, irq) = take_slot(&slots)?;
        let mut options = BlockOptions::with_id(disk.name.as_bytes());
        options.read_only = disk.read_only;
        let extent = DiskExtent { start: disk.start_sector, sectors: disk.sectors };
        slots.push(Slot {
            base,
            irq,
            label: format!("disk '{}'", disk.name),
            model: Model::Disk(MmioTransport::new(VirtioBlock::new(extent, options))),
        });
    }
    if let Some(mac) = mac {
        let port = vnet::attach(mac)?;
        let (base, irq) = take_slot(&slots)?;
        slots.push(Slot {
            base,
            irq,
            label: format!("network card {}", keel_dmfs::MacAddress(mac)),
            model: Model::Net(MmioTransport::new(VirtioNet::new(mac)), port),
        });
    }
    let (base, irq) = take_slot(&slots)?;
    slots.push(Slot {
        base,
        irq,
        label: String::from("virtio console"),
        model: Model::Console(MmioTransport::new(VirtioConsole::new())),
    });
    if hostdev::has_entropy() {
        let (base, irq) = take_slot(&slots)?;
        slots.push(Slot {
            base,
            irq,
            label: String::from("rng"),
            model: Model::Entropy(MmioTransport::new(VirtioRng::new(HostEntropy))),
        });
    }
    Ok(slots)
}

/// The device-tree description of `slots`.
pub fn tree_nodes(slots: &[Slot]) -> Vec<GuestVirtio> {
    slots.iter().map(|slot| GuestVirtio { base: slot.base, size: SLOT_SIZE, irq: slot.irq }).collect()
}

/// The slot whose window holds `[gpa, gpa + width)`, and the offset into it.
pub fn find(slots: &mut [Slot], gpa: u64, width: u8) -> Option<(&mut Slot, u64)> {
    let offset = gpa.checked_sub(FIRST_SLOT_BASE)?;
    let index = (offset / SLOT_SIZE) as usize;
    let within = offset % SLOT_SIZE;
    if within + width as u64 > SLOT_SIZE {
        return None;
    }
    slots.get_mut(index).map(|slot| (slot, within))
}
