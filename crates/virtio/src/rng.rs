//! virtio-rng: an entropy device that fills the driver's buffers from an [`EntropySource`].
//!
//! One request queue, no feature bits, no configuration space (VIRTIO 1.2, section 5.4).
//! Each request is a chain of device-writable buffers; the device may fill less than all of
//! it, so a request gets at most [`MAX_BYTES_PER_REQUEST`] bytes and an oversized buffer
//! cannot keep the device busy.

use crate::error::{DeviceError, RequestError};
use crate::mmio::Device;
use crate::queue::{Completion, DescriptorChain, GuestMemory, Virtqueue};
use crate::VIRTIO_ID_ENTROPY;

/// Size of the request queue offered to the driver.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes of entropy handed out per request.
pub const MAX_BYTES_PER_REQUEST: u64 = 4096;

/// Entropy is produced in pieces of this size.
const FILL_CHUNK: usize = 256;

/// Where the device's random bytes come from (on the host, a hardware or seeded generator
/// of the hypervisor's choosing).
pub trait EntropySource {
    /// Fills `buf` with random bytes, or fails without the caller using any of `buf`.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyUnavailable>;
}

/// The entropy source could not deliver; the request completes with what was filled before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyUnavailable;

/// A virtio entropy device.
#[derive(Debug)]
pub struct VirtioRng<E: EntropySource> {
    source: E,
}

impl<E: EntropySource> VirtioRng<E> {
    /// An entropy device drawing from `source`.
    pub fn new(source: E) -> Self {
        Self { source }
    }

    /// The entropy source.
    pub fn source(&self) -> &E {
        &self.source
    }

    fn handle(&mut self, chain: &DescriptorChain, memory: &dyn GuestMemory) -> Completion {
        let wanted = chain.writable_len().min(MAX_BYTES_PER_REQUEST);
        if wanted == 0 {
            return Completion {
                written: 0,
                error: Some(RequestError::NoWritableBuffer),
            };
        }
        let mut chunk = [0u8; FILL_CHUNK];
        let mut done = 0u64;
        while done < wanted {
            let len = (wanted - done).min(FILL_CHUNK as u64) as usize;
            if self.source.fill(&mut chunk[..len]).is_err() {
                return Completion {
                    // Bounded by MAX_BYTES_PER_REQUEST.
                    written: done as u32,
                    error: Some(RequestError::EntropyUnavailable),
                };
            }
            if let Err(error) = chain.write(memory, done, &chunk[..len]) {
                return Completion {
                    // Bounded by MAX_BYTES_PER_REQUEST.
                    written: done as u32,
                    error: Some(error.into()),
                };
            }
            done += len as u64;
        }
        Completion {
            written: done as u32,
            error: None,
        }
    }
}

impl<E: EntropySource> Device for VirtioRng<E> {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_ENTROPY
    }

    fn device_features(&self) -> u64 {
        0
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

    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::MmioTransport;
    use crate::queue::{BufferError, MemoryError};
    use crate::testing::*;
    use crate::{VIRTIO_F_VERSION_1, VIRTIO_ID_ENTROPY};

    const QUEUE_NOTIFY: u64 = 0x050;

    /// A source that counts up, so the device's output is predictable.
    struct Counter(u8);

    impl EntropySource for Counter {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyUnavailable> {
            for byte in buf {
                self.0 = self.0.wrapping_add(1);
                *byte = self.0;
            }
            Ok(())
        }
    }

    fn setup() -> (MmioTransport<VirtioRng<Counter>>, TestMemory, DriverQueue) {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioRng::new(Counter(0)));
        let queue = bring_up(&mut transport, &memory, VIRTIO_F_VERSION_1, 16);
        (transport, memory, queue)
    }

    #[test]
    fn identifies_as_entropy_device_without_config() {
        let transport = MmioTransport::new(VirtioRng::new(Counter(0)));
        assert_eq!(read_register(&transport, 0x008), VIRTIO_ID_ENTROPY);
        assert_eq!(read_register(&transport, 0x034), 64);
        assert!(transport.read(0x100, 1).is_err(), "no configuration space");
    }

    #[test]
    fn fills_the_driver_buffer() {
        let (mut transport, memory, mut queue) = setup();
        let first = memory.allocate(40, 8);
        let second = memory.allocate(24, 8);
        let head = queue.add_chain(
            &memory,
            &[Buffer::writable(first, 40), Buffer::writable(second, 24)],
        );
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 0),
            None
        );
        assert_eq!(queue.pop_used(&memory), Some((u32::from(head), 64)));
        let mut filled = memory.bytes(first, 40);
        filled.extend(memory.bytes(second, 24));
        let expected: Vec<u8> = (1..=64).collect();
        assert_eq!(filled, expected);
        assert!(transport.irq_level());
    }

    #[test]
    fn large_requests_are_capped() {
        let (mut transport, memory, mut queue) = setup();
        let buffer = memory.allocate(10_000, 8);
        queue.add_chain(&memory, &[Buffer::writable(buffer, 10_000)]);
        write_register(&mut transport, &memory, QUEUE_NOTIFY, 0);
        assert_eq!(queue.pop_used(&memory).map(|(_, len)| len), Some(4096));
        assert!(memory
            .bytes(buffer + 4096, 100)
            .iter()
            .all(|&byte| byte == 0));
    }

    #[test]
    fn request_without_writable_buffer_is_reported() {
        let (mut transport, memory, mut queue) = setup();
        let buffer = memory.allocate(16, 8);
        let head = queue.add_chain(&memory, &[Buffer::readable(buffer, 16)]);
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 0),
            Some(DeviceError::Request {
                queue: 0,
                head,
                error: RequestError::NoWritableBuffer
            })
        );
        assert_eq!(queue.pop_used(&memory), Some((u32::from(head), 0)));
    }

    /// A source that fails after handing out `left` bytes.
    struct Failing {
        left: usize,
    }

    impl EntropySource for Failing {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyUnavailable> {
            if buf.len() > self.left {
                return Err(EntropyUnavailable);
            }
            self.left -= buf.len();
            buf.fill(0xa5);
            Ok(())
        }
    }

    #[test]
    fn failing_source_completes_with_what_was_filled() {
        let memory = TestMemory::standard();
        let mut transport = MmioTransport::new(VirtioRng::new(Failing { left: 256 }));
        let mut queue = bring_up(&mut transport, &memory, VIRTIO_F_VERSION_1, 16);
        let buffer = memory.allocate(1024, 8);
        let head = queue.add_chain(&memory, &[Buffer::writable(buffer, 1024)]);
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 0),
            Some(DeviceError::Request {
                queue: 0,
                head,
                error: RequestError::EntropyUnavailable
            })
        );
        assert_eq!(queue.pop_used(&memory), Some((u32::from(head), 256)));
        assert!(memory.bytes(buffer + 256, 768).iter().all(|&byte| byte == 0));
    }

    #[test]
    fn buffer_outside_memory_is_reported() {
        let (mut transport, memory, mut queue) = setup();
        let inside = memory.allocate(8, 8);
        let head = queue.add_chain(
            &memory,
            &[
                Buffer::writable(inside, 8),
                Buffer::writable(memory.end() - 4, 16),
            ],
        );
        assert_eq!(
            write_register(&mut transport, &memory, QUEUE_NOTIFY, 0),
            Some(DeviceError::Request {
                queue: 0,
                head,
                error: RequestError::Buffer(BufferError::Memory(MemoryError::OutOfBounds {
                    gpa: memory.end() - 4,
                    len: 16
                }))
            })
        );
        // Only the bytes written from the start count.
        assert_eq!(queue.pop_used(&memory), Some((u32::from(head), 0)));
    }
}
