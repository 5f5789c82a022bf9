//! The machine's own network card, the uplink of the capsules' switch, driven with `virtio-drivers`' raw virtio-net
//! driver over buffers Keel owns.
//!
//! Sending does not wait for the device: a frame is copied into a free transmit buffer and queued, and buffers the
//! device has finished with are taken back on the next send. (Waiting for each frame, as the crate's buffered
//! driver does, cost about 0.4 ms per frame under QEMU, which held a capsule's upload to a few MB/s.) Receiving is
//! interrupt-driven: the NIC's interrupt goes to the boot hart, which takes every filled receive buffer, posts it
//! again, and hands the frames to the switch.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use keel_virtio::Frame;
use spin::{Mutex, Once};
use virtio_drivers::device::net::VirtIONetRaw;

use crate::hostdev::{KeelHal, Transport0};

/// Descriptors in each of the NIC's queues; every receive buffer and every queued frame takes one.
const QUEUE_SIZE: usize = 64;
/// Bytes in one buffer: the virtio-net header and a full Ethernet frame, rounded up.
const BUFFER_LEN: usize = 2048;
/// Frames that may wait in the transmit queue at once.
const TRANSMIT_BUFFERS: usize = 32;
/// Most frames taken from the NIC in one go, so that a flood cannot hold the boot hart indefinitely.
const RECEIVE_BATCH: usize = 64;
/// How many times a send polls for a finished transmit buffer when all are queued before it drops the frame.
const TRANSMIT_WAIT_POLLS: u32 = 1_000_000;

type Buffer = [u8; BUFFER_LEN];

struct HostNic {
    driver: VirtIONetRaw<KeelHal, Transport0, QUEUE_SIZE>,
    /// Receive buffers, all posted to the device except while one is being read.
    receive: Box<[Buffer; QUEUE_SIZE]>,
    /// The receive buffer behind each receive-queue token.
    receive_token: [usize; QUEUE_SIZE],
    transmit: Box<[Buffer; TRANSMIT_BUFFERS]>,
    /// Transmit buffers not queued.
    transmit_free: Vec<usize>,
    /// For each transmit-queue token in flight: its buffer and the length handed to the device.
    transmit_token: [Option<(usize, usize)>; QUEUE_SIZE],
}

static NIC: Once<Mutex<HostNic>> = Once::new();
/// The NIC's interrupt source (0: no NIC), readable without the NIC's lock.
static IRQ: AtomicU32 = AtomicU32::new(0);

/// Sets up the NIC behind `transport`, posts every receive buffer and turns its interrupt on. Returns its MAC.
pub fn init(transport: Transport0, irq: u32) -> Result<[u8; 6], virtio_drivers::Error> {
    let driver = VirtIONetRaw::<KeelHal, _, QUEUE_SIZE>::new(transport)?;
    let mac = driver.mac_address();
    let mut nic = HostNic {
        driver,
        receive: Box::new([[0; BUFFER_LEN]; QUEUE_SIZE]),
        receive_token: [0; QUEUE_SIZE],
        transmit: Box::new([[0; BUFFER_LEN]; TRANSMIT_BUFFERS]),
        transmit_free: (0..TRANSMIT_BUFFERS).collect(),
        transmit_token: [None; QUEUE_SIZE],
    };
    for index in 0..QUEUE_SIZE {
        nic.post_receive(index)?;
    }
    nic.driver.enable_interrupts();
    NIC.call_once(|| Mutex::new(nic));
    IRQ.store(irq, Ordering::Release);
    Ok(mac)
}

impl HostNic {
    /// Hands receive buffer `index` to the device.
    fn post_receive(&mut self, index: usize) -> Result<(), virtio_drivers::Error> {
        // SAFETY: the buffer lives in a box the NIC owns for as long as the machine runs, and Keel reads it only
        // after the device returned it through `poll_receive` and `receive_complete`.
        let token = unsafe { self.driver.receive_begin(&mut self.receive[index])? };
        *self.receive_token.get_mut(usize::from(token)).ok_or(virtio_drivers::Error::WrongToken)? = index;
        Ok(())
    }

    /// Takes back the transmit buffers the device has finished with.
    fn reclaim_transmitted(&mut self) {
        while let Some(token) = self.driver.poll_transmit() {
            let Some((index, len)) = self.transmit_token.get_mut(usize::from(token)).and_then(Option::take) else {
                log::warn!("host NIC: the device completed transmit token {token}, which Keel never queued");
                return;
            };
            // SAFETY: `index` and `len` are the buffer and length queued under this token.
            if let Err(error) = unsafe { self.driver.transmit_complete(token, &self.transmit[index][..len]) } {
                log::warn!("host NIC: transmit completion {token}: {error}");
            }
            self.transmit_free.push(index);
        }
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        self.reclaim_transmitted();
        let mut polls = 0;
        while self.transmit_free.is_empty() {
            if polls == TRANSMIT_WAIT_POLLS {
                return false;
            }
            polls += 1;
            core::hint::spin_loop();
            self.reclaim_transmitted();
        }
        let Some(index) = self.transmit_free.pop() else { return false };
        let buffer = &mut self.transmit[index];
        let Ok(header) = self.driver.fill_buffer_header(buffer) else {
            self.transmit_free.push(index);
            return false;
        };
        let len = header + frame.len();
        let Some(room) = buffer.get_mut(header..len) else {
            self.transmit_free.push(index);
            return false;
        };
        room.copy_from_slice(frame);
        // SAFETY: the buffer stays untouched in the NIC's box until `reclaim_transmitted` sees the device finish.
        match unsafe { self.driver.transmit_begin(&self.transmit[index][..len]) } {
            Ok(token) => match self.transmit_token.get_mut(usize::from(token)) {
                Some(slot) => {
                    *slot = Some((index, len));
                    true
                }
                None => false,
            },
            Err(_) => {
                self.transmit_free.push(index);
                false
            }
        }
    }

    fn receive(&mut self, frames: &mut Vec<Frame>) {
        while frames.len() < RECEIVE_BATCH {
            let Some(token) = self.driver.poll_receive() else { break };
            let Some(&index) = self.receive_token.get(usize::from(token)) else { break };
            // SAFETY: `index` is the buffer posted under this token.
            match unsafe { self.driver.receive_complete(token, &mut self.receive[index]) } {
                Ok((header, len)) => {
                    // Frames of a length no Ethernet frame has are dropped.
                    if let Some(frame) = self.receive[index].get(header..header + len).and_then(Frame::new) {
                        frames.push(frame);
                    }
                }
                Err(error) => log::warn!("host NIC: receive completion {token}: {error}"),
            }
            if let Err(error) = self.post_receive(index) {
                log::warn!("host NIC: a receive buffer could not be posted again: {error}");
            }
        }
    }
}

/// The NIC's interrupt source, if there is a NIC.
pub fn irq() -> Option<u32> {
    Some(IRQ.load(Ordering::Acquire)).filter(|&irq| irq != 0)
}

/// Queues one Ethernet frame for the NIC. Returns false if there is no NIC, or it kept every transmit buffer busy
/// for too long, or refused the frame: the frame is lost, as on a congested wire.
pub fn send(frame: &[u8]) -> bool {
    NIC.get().is_some_and(|nic| nic.lock().send(frame))
}

/// Acknowledges the NIC's interrupt and takes up to a batch of received frames, posting their buffers again.
pub fn receive() -> Vec<Frame> {
    let mut frames = Vec::new();
    if let Some(nic) = NIC.get() {
        let mut nic = nic.lock();
        // Acknowledge first: a frame that lands after the last poll raises the line again.
        nic.driver.ack_interrupt();
        nic.receive(&mut frames);
    }
    frames
}
