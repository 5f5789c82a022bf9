//! Fuzzes the virtio-mmio transport and split virtqueues: a block, entropy or network device driven
//! by a sequence of register accesses, descriptor chains and notifications over fuzzed guest memory.
#![no_main]

use std::cell::RefCell;

use arbitrary::Arbitrary;
use keel_virtio::net::{MAX_FRAME_LEN, MIN_FRAME_LEN};
use keel_virtio::{
    BackendError, BlockBackend, BlockOptions, Device, EntropySource, EntropyUnavailable,
    GuestMemory, MemoryError, MmioTransport, VirtioBlock, VirtioConsole, VirtioNet, VirtioRng,
};
use libfuzzer_sys::fuzz_target;

/// The capsule's RAM in this model: `RAM_LEN` bytes from `RAM_BASE`.
const RAM_BASE: u64 = 0x8000_0000;
const RAM_LEN: usize = 32 * 1024;
const SECTOR: usize = 512;

/// virtio-mmio register offsets (VIRTIO 1.2, 4.2.2), for steering accesses at real registers.
const REGISTERS: [u64; 30] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0b4, 0x0b8,
    0x0bc, 0x0fc, 0x100, 0x108,
];
const DRIVER_FEATURES_SEL: u64 = 0x024;
const DRIVER_FEATURES: u64 = 0x020;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;

#[derive(Debug, Arbitrary)]
struct Input {
    /// 240 and up: console; below, by the remainder of division by 3: 0 block, 1 entropy, 2 network.
    /// (Console came last; this mapping keeps the seeds' values meaning the devices they were found for.)
    device: u8,
    read_only: bool,
    disk_sectors: u8,
    /// Backend operations fail once this many have succeeded (255: never).
    backend_failure_after: u8,
    ram: Vec<u8>,
    operations: Vec<Operation>,
}

#[derive(Debug, Arbitrary)]
enum Operation {
    Read {
        register: u16,
        size: u8,
    },
    Write {
        register: u16,
        size: u8,
        value: u32,
    },
    /// The driver's initialisation sequence through the registers, ending in `DRIVER_OK`.
    Setup {
        queue: u8,
        size: u16,
        features: u32,
        desc: u16,
        avail: u16,
        used: u16,
    },
    /// A descriptor chain written into the last set-up queue and published in its available ring.
    Offer {
        head: u8,
        descriptors: Vec<RawDescriptor>,
        notify: bool,
    },
    /// The guest scribbling over its own memory while the device may be looking at it.
    Poke {
        offset: u16,
        bytes: Vec<u8>,
    },
    ProcessQueue {
        queue: u8,
    },
    /// A frame from the outside world for a network card (ignored by the other devices).
    HostFrame {
        bytes: Vec<u8>,
    },
    /// The hypervisor collecting what a network card transmitted.
    TakeTransmitted,
    ConfigChanged,
    Reset,
}

#[derive(Debug, Arbitrary)]
struct RawDescriptor {
    offset: u16,
    len: u16,
    flags: u8,
    next: u8,
}

/// Where the driver put the last queue it set up, so `Offer` can fill it.
#[derive(Clone, Copy)]
struct Layout {
    queue: u16,
    size: u16,
    desc: u64,
    avail: u64,
}

fuzz_target!(|input: Input| {
    let mut ram = vec![0u8; RAM_LEN];
    let initial = input.ram.len().min(RAM_LEN);
    ram[..initial].copy_from_slice(&input.ram[..initial]);
    let memory = Ram(RefCell::new(ram));
    if input.device >= 240 {
        run(MmioTransport::new(VirtioConsole::new()), &input.operations, &memory);
        return;
    }
    match input.device % 3 {
        0 => {
            let disk = Disk {
                sectors: vec![0; usize::from(input.disk_sectors) * SECTOR],
                successes_left: input.backend_failure_after,
            };
            let options = BlockOptions {
                read_only: input.read_only,
                ..BlockOptions::with_id(b"fuzz")
            };
            let device = VirtioBlock::new(disk, options);
            run(MmioTransport::new(device), &input.operations, &memory);
        }
        1 => {
            let source = Entropy {
                successes_left: input.backend_failure_after,
                counter: 0,
            };
            run(
                MmioTransport::new(VirtioRng::new(source)),
                &input.operations,
                &memory,
            );
        }
        _ => {
            let device = VirtioNet::new([0x02, 0x4b, 0x45, 0x45, 0x4c, input.disk_sectors]);
            run(MmioTransport::new(device), &input.operations, &memory);
        }
    }
});

fn run<D: Device + HostSide>(
    mut transport: MmioTransport<D>,
    operations: &[Operation],
    memory: &Ram,
) {
    let mut layout: Option<Layout> = None;
    for operation in operations.iter().take(64) {
        match operation {
            Operation::Read { register, size } => {
                let _ = transport.read(offset(*register), *size);
            }
            Operation::Write {
                register,
                size,
                value,
            } => {
                let _ = transport.write(offset(*register), *size, *value, memory);
            }
            Operation::Setup {
                queue,
                size,
                features,
                desc,
                avail,
                used,
            } => {
                let queue = u16::from(*queue % 3);
                let desc = RAM_BASE + u64::from(*desc);
                let avail = RAM_BASE + u64::from(*avail);
                let used = RAM_BASE + u64::from(*used);
                let writes = [
                    (STATUS, 0),
                    (STATUS, 1),
                    (STATUS, 3),
                    (DRIVER_FEATURES_SEL, 1),
                    (DRIVER_FEATURES, 1), // VIRTIO_F_VERSION_1
                    (DRIVER_FEATURES_SEL, 0),
                    (
                        DRIVER_FEATURES,
                        *features & transport.offered_features() as u32,
                    ),
                    (STATUS, 0xb),
                    (QUEUE_SEL, u32::from(queue)),
                    (QUEUE_NUM, u32::from(*size)),
                    (QUEUE_DESC_LOW, desc as u32),
                    (QUEUE_DESC_LOW + 4, (desc >> 32) as u32),
                    (QUEUE_DRIVER_LOW, avail as u32),
                    (QUEUE_DRIVER_LOW + 4, (avail >> 32) as u32),
                    (QUEUE_DEVICE_LOW, used as u32),
                    (QUEUE_DEVICE_LOW + 4, (used >> 32) as u32),
                    (QUEUE_READY, 1),
                    (STATUS, 0xf),
                ];
                for (register, value) in writes {
                    let _ = transport.write(register, 4, value, memory);
                }
                layout = Some(Layout {
                    queue,
                    size: *size,
                    desc,
                    avail,
                });
            }
            Operation::Offer {
                head,
                descriptors,
                notify,
            } => {
                let Some(layout) = layout else { continue };
                offer(memory, &layout, *head, descriptors);
                if *notify {
                    let _ = transport.write(QUEUE_NOTIFY, 4, u32::from(layout.queue), memory);
                }
            }
            Operation::Poke { offset, bytes } => {
                let _ = memory.write(RAM_BASE + u64::from(*offset), bytes);
            }
            Operation::ProcessQueue { queue } => {
                let _ = transport.process_queue(u16::from(*queue % 4), memory);
            }
            Operation::HostFrame { bytes } => {
                if let Some(queue) = transport.device_mut().receive(bytes) {
                    let _ = transport.process_queue(queue, memory);
                }
            }
            Operation::TakeTransmitted => transport.device_mut().collect_transmitted(),
            Operation::ConfigChanged => transport.config_changed(),
            Operation::Reset => transport.reset(),
        }
        // The line follows InterruptStatus, and reading it never fails.
        let status = transport
            .read(INTERRUPT_STATUS, 4)
            .expect("InterruptStatus is readable");
        assert_eq!(transport.irq_level(), status != 0);
        let _ = transport.status();
    }
}

/// What the hypervisor does for a device apart from its registers: feed it host input and collect
/// its output. Only the network card and the console have any.
trait HostSide {
    /// Offers a frame from outside; returns the queue to process if the device took it.
    fn receive(&mut self, _frame: &[u8]) -> Option<u16> {
        None
    }

    /// Takes what the device produced for the host.
    fn collect_transmitted(&mut self) {}
}

impl HostSide for VirtioBlock<Disk> {}

impl HostSide for VirtioRng<Entropy> {}

impl HostSide for VirtioNet {
    fn receive(&mut self, frame: &[u8]) -> Option<u16> {
        self.enqueue_received(frame)
            .then_some(keel_virtio::net::RECEIVE_QUEUE)
    }

    fn collect_transmitted(&mut self) {
        for frame in self.drain_transmitted() {
            // Only whole Ethernet frames leave the capsule.
            assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.as_slice().len()));
        }
    }
}

impl HostSide for VirtioConsole {
    fn receive(&mut self, bytes: &[u8]) -> Option<u16> {
        let accepted = self.queue_input(bytes);
        assert!(accepted <= bytes.len());
        assert!(self.pending_input() <= keel_virtio::console::INBOX_CAPACITY);
        (accepted > 0).then_some(keel_virtio::console::RECEIVE_QUEUE)
    }

    fn collect_transmitted(&mut self) {
        // The outbox never grows past its bound, whatever chains the driver offered.
        assert!(self.pending_output() <= keel_virtio::console::OUTBOX_CAPACITY);
        let expected = self.pending_output();
        let mut taken = 0;
        self.take_output(&mut |bytes| taken += bytes.len());
        assert_eq!(taken, expected);
        assert_eq!(self.pending_output(), 0);
    }
}

/// Register offsets mostly at real registers (and the start of configuration space), sometimes
/// anywhere in the window or beyond it.
fn offset(register: u16) -> u64 {
    match REGISTERS.get(usize::from(register)) {
        Some(&offset) => offset,
        None if register & 0x8000 != 0 => 0x100 + u64::from(register & 0x7f),
        None => u64::from(register),
    }
}

/// Writes `descriptors` into the table from `head` on and appends `head` to the available ring.
fn offer(memory: &Ram, layout: &Layout, head: u8, descriptors: &[RawDescriptor]) {
    let size = u64::from(layout.size.max(1));
    let mut index = u64::from(head) % size;
    let first = index;
    for descriptor in descriptors.iter().take(8) {
        let mut entry = [0u8; 16];
        entry[..8].copy_from_slice(&(RAM_BASE + u64::from(descriptor.offset)).to_le_bytes());
        entry[8..12].copy_from_slice(&u32::from(descriptor.len).to_le_bytes());
        // Only the defined flags (NEXT, WRITE, INDIRECT), so chains are mostly well formed.
        entry[12..14].copy_from_slice(&u16::from(descriptor.flags & 0b111).to_le_bytes());
        entry[14..16].copy_from_slice(&u16::from(descriptor.next).to_le_bytes());
        let _ = memory.write(layout.desc + index * 16, &entry);
        index = u64::from(descriptor.next) % size;
    }
    let mut idx = [0u8; 2];
    if memory.read(layout.avail + 2, &mut idx).is_err() {
        return;
    }
    let avail_idx = u16::from_le_bytes(idx);
    let slot = layout.avail + 4 + u64::from(avail_idx) % size * 2;
    let _ = memory.write(slot, &(first as u16).to_le_bytes());
    let _ = memory.write(layout.avail + 2, &avail_idx.wrapping_add(1).to_le_bytes());
}

/// Guest RAM over a vector; every access outside it is refused.
struct Ram(RefCell<Vec<u8>>);

impl Ram {
    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemoryError> {
        let refused = MemoryError::OutOfBounds {
            gpa,
            len: len as u64,
        };
        let start = gpa
            .checked_sub(RAM_BASE)
            .and_then(|offset| usize::try_from(offset).ok())
            .ok_or(refused)?;
        let end = start.checked_add(len).ok_or(refused)?;
        if end > self.0.borrow().len() {
            return Err(refused);
        }
        Ok(start..end)
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let range = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.0.borrow()[range]);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let range = self.range(gpa, data.len())?;
        self.0.borrow_mut()[range].copy_from_slice(data);
        Ok(())
    }
}

/// An in-memory disk that checks the device's promises: whole sectors, always inside the disk.
struct Disk {
    sectors: Vec<u8>,
    successes_left: u8,
}

impl Disk {
    fn range(&mut self, sector: u64, len: usize) -> Option<core::ops::Range<usize>> {
        assert_eq!(len % SECTOR, 0, "the device passed a partial sector");
        let start = usize::try_from(sector).ok()?.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        assert!(
            end <= self.sectors.len(),
            "the device passed sectors beyond the disk"
        );
        if self.successes_left == 0 {
            return None;
        }
        if self.successes_left != u8::MAX {
            self.successes_left -= 1;
        }
        Some(start..end)
    }
}

impl BlockBackend for Disk {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let count = (buf.len() / SECTOR) as u64;
        let range = self
            .range(sector, buf.len())
            .ok_or(BackendError::ReadFailed { sector, count })?;
        buf.copy_from_slice(&self.sectors[range]);
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BackendError> {
        let count = (data.len() / SECTOR) as u64;
        let range = self
            .range(sector, data.len())
            .ok_or(BackendError::WriteFailed { sector, count })?;
        self.sectors[range].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackendError> {
        self.range(0, 0)
            .map(|_| ())
            .ok_or(BackendError::FlushFailed)
    }

    fn sectors(&self) -> u64 {
        (self.sectors.len() / SECTOR) as u64
    }
}

/// A counter standing in for an entropy source, failing after a fuzzed number of requests.
struct Entropy {
    successes_left: u8,
    counter: u8,
}

impl EntropySource for Entropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyUnavailable> {
        if self.successes_left == 0 {
            return Err(EntropyUnavailable);
        }
        if self.successes_left != u8::MAX {
            self.successes_left -= 1;
        }
        for byte in buf {
            self.counter = self.counter.wrapping_add(1);
            *byte = self.counter;
        }
        Ok(())
    }
}
