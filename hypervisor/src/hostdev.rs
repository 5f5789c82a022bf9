//! The machine's own virtio devices (under QEMU: virtio-mmio slots), driven through the `virtio-drivers` crate.
//!
//! Keel finds them in the host device tree at boot and keeps one driver per kind it uses: an entropy source that
//! feeds the capsules' virtio-rng devices, a disk whose extents back the capsules' virtio-blk devices, and a NIC that
//! is the uplink of the capsules' switch (`hostnic.rs`). Entropy and disk requests poll: one is submitted and Keel
//! waits for its completion on the hart that asked, which holds that hart for the length of one request.

use core::ptr::NonNull;

use keel_devicetree::HostVirtio;
use spin::{Mutex, Once};
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::memory;

/// DMA memory and address translation for the drivers. Keel runs with translation off and QEMU `virt` has no
/// IOMMU, so a buffer's physical address is its address.
pub struct KeelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory owned by the driver until `dma_dealloc`; addresses are
// identity mapped, so the physical addresses handed to the device are exactly the buffers' addresses.
unsafe impl Hal for KeelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let address = memory::alloc_pages(pages).expect("out of memory for a host virtio queue");
        let pointer = NonNull::new(address as *mut u8).expect("the page allocator never returns address 0");
        (address as PhysAddr, pointer)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        memory::free_pages(paddr as usize, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("a device at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The transport of every host device: virtio-mmio, mapped for as long as the machine runs.
pub type Transport0 = MmioTransport<'static>;

/// The host's entropy device, if it has one.
static ENTROPY: Once<Mutex<VirtIORng<KeelHal, Transport0>>> = Once::new();
/// The host's disk, if it has one.
static DISK: Once<Mutex<HostDisk>> = Once::new();

/// The host disk and what Keel knows of it.
pub struct HostDisk {
    driver: VirtIOBlk<KeelHal, Transport0>,
    sectors: u64,
}

/// Probes every virtio-mmio slot the host device tree lists and takes the first entropy device and the first disk.
pub fn init(slots: &[HostVirtio]) {
    for slot in slots {
        let Some(header) = NonNull::new(slot.base as *mut VirtIOHeader) else { continue };
        // SAFETY: the device tree names this window as a virtio-mmio register block; nothing else in Keel maps or
        // touches it, and it stays valid for as long as the machine runs.
        let transport = match unsafe { MmioTransport::new(header, slot.size as usize) } {
            Ok(transport) => transport,
            // An empty slot reports device ID 0, which the driver crate refuses; that is no error here.
            Err(_) => continue,
        };
        match transport.device_type() {
            DeviceType::EntropySource if ENTROPY.get().is_none() => match VirtIORng::<KeelHal, _>::new(transport) {
                Ok(driver) => {
                    log::info!("host entropy source: virtio-rng at {:#x}", slot.base);
                    ENTROPY.call_once(|| Mutex::new(driver));
                }
                Err(error) => log::warn!("virtio-rng at {:#x} could not be set up: {error}", slot.base),
            },
            DeviceType::Block if DISK.get().is_none() => match VirtIOBlk::<KeelHal, _>::new(transport) {
                Ok(driver) => {
                    let sectors = driver.capacity();
                    log::info!(
                        "host disk: virtio-blk at {:#x}, {} MiB{}",
                        slot.base,
                        (sectors * SECTOR_SIZE as u64) >> 20,
                        if driver.readonly() { ", read-only" } else { "" }
                    );
                    DISK.call_once(|| Mutex::new(HostDisk { driver, sectors }));
                }
                Err(error) => log::warn!("virtio-blk at {:#x} could not be set up: {error}", slot.base),
            },
            DeviceType::Network if crate::hostnic::irq().is_none() => match crate::hostnic::init(transport, slot.irq) {
                Ok(mac) => {
                    log::info!(
                        "host NIC: virtio-net at {:#x}, MAC {}, uplink of the capsules' switch",
                        slot.base,
                        keel_dmfs::MacAddress(mac)
                    );
                    crate::vnet::attach_uplink();
                }
                Err(error) => log::warn!("virtio-net at {:#x} could not be set up: {error}", slot.base),
            },
            other => log::info!("host virtio device at {:#x} ({other:?}) is not used", slot.base),
        }
    }
}

/// Whether the host has an entropy device to feed capsules' virtio-rng.
pub fn has_entropy() -> bool {
    ENTROPY.get().is_some()
}

/// Fills `buf` with bytes from the host entropy device. Returns false if there is none or it failed, in which case
/// `buf` must not be used.
pub fn fill_entropy(buf: &mut [u8]) -> bool {
    let Some(device) = ENTROPY.get() else { return false };
    let mut device = device.lock();
    let mut done = 0;
    while done < buf.len() {
        match device.request_entropy(&mut buf[done..]) {
            Ok(0) | Err(_) => return false,
            Ok(count) => done += count.min(buf.len() - done),
        }
    }
    true
}

/// Size of the host disk in 512-byte sectors, if there is one.
pub fn disk_sectors() -> Option<u64> {
    DISK.get().map(|disk| disk.lock().sectors)
}

/// Why a host disk operation failed.
#[derive(Debug, Clone, Copy)]
pub enum DiskError {
    NoDisk,
    OutOfRange,
    Device,
}

/// Reads whole sectors from the host disk.
pub fn disk_read(sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
    let disk = DISK.get().ok_or(DiskError::NoDisk)?;
    let mut disk = disk.lock();
    check_range(&disk, sector, buf.len())?;
    disk.driver.read_blocks(sector as usize, buf).map_err(|_| DiskError::Device)
}

/// Writes whole sectors to the host disk.
pub fn disk_write(sector: u64, data: &[u8]) -> Result<(), DiskError> {
    let disk = DISK.get().ok_or(DiskError::NoDisk)?;
    let mut disk = disk.lock();
    check_range(&disk, sector, data.len())?;
    disk.driver.write_blocks(sector as usize, data).map_err(|_| DiskError::Device)
}

/// Returns once everything written so far is on the disk's stable storage.
pub fn disk_flush() -> Result<(), DiskError> {
    let disk = DISK.get().ok_or(DiskError::NoDisk)?;
    disk.lock().driver.flush().map_err(|_| DiskError::Device)
}

fn check_range(disk: &HostDisk, sector: u64, len: usize) -> Result<(), DiskError> {
    let count = (len / SECTOR_SIZE) as u64;
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) || sector.checked_add(count).is_none_or(|end| end > disk.sectors) {
        return Err(DiskError::OutOfRange);
    }
    Ok(())
}
