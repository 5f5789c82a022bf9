//! The network between capsules: one learning switch (`keel-switch`) with a port per capsule network card and an
//! uplink port for the machine's own NIC.
//!
//! Frames move in batches. A capsule's transmitted frames are taken out of its card under its own device lock,
//! which is then dropped; [`forward`] asks the switch where each frame goes and hands every destination its share
//! while holding only that destination's lock. No hart ever holds two capsules' device locks at once, so two
//! capsules sending to each other at the same moment cannot deadlock. Frames for the uplink go to the host NIC;
//! frames the host NIC receives enter through the uplink port.
//!
//! A capsule's port is restricted to the MAC address in its manifest: the switch drops frames it sends from any other
//! address and never lets another port claim that address.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;

use keel_switch::{MacAddress, PortId, Route, Switch};
use keel_virtio::Frame;
use spin::{Mutex, Once};

use crate::arch::csr;
use crate::capsule::Capsule;
use crate::PLATFORM;

/// Where a port's frames go.
#[derive(Clone)]
enum Endpoint {
    /// A capsule's network card; the capsule may not exist yet (being built) or any more.
    Capsule(Weak<Capsule>),
    /// The machine's own NIC.
    Uplink,
}

struct Network {
    switch: Switch,
    /// Each port with the ticket of the [`Port`] that owns it and its endpoint: one per capsule card and the uplink.
    endpoints: Vec<(PortId, u64, Endpoint)>,
    uplink: Option<PortId>,
    /// The next ticket. The switch hands out the ids of removed ports again, so a ticket tells a port's owner from
    /// an earlier owner of the same id.
    next_ticket: u64,
}

static NETWORK: Once<Mutex<Network>> = Once::new();

fn network() -> &'static Mutex<Network> {
    NETWORK.call_once(|| {
        Mutex::new(Network { switch: Switch::new(), endpoints: Vec::new(), uplink: None, next_ticket: 1 })
    })
}

/// A capsule's port on the switch. Dropping it takes the port off the switch, so a capsule that is never built, or
/// is gone, leaves nothing behind.
pub struct Port {
    id: PortId,
    ticket: u64,
}

impl Port {
    pub fn id(&self) -> PortId {
        self.id
    }

    /// Takes the port off the switch, forgetting what was learned on it. Harmless if it is already off, even if its
    /// id now belongs to another capsule's port.
    pub fn detach(&self) {
        let mut network = network().lock();
        if let Some(index) = network.endpoints.iter().position(|&(id, ticket, _)| id == self.id && ticket == self.ticket) {
            network.endpoints.swap_remove(index);
            let _ = network.switch.remove_port(self.id);
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Adds a port for a capsule card with address `mac`, restricted to it. Fails if another capsule's card already has
/// the address (two images may each be valid and still share one).
pub fn attach(mac: [u8; 6]) -> Result<Port, alloc::string::String> {
    let mut network = network().lock();
    let id = network.switch.add_port().map_err(|error| alloc::format!("network port: {error}"))?;
    let address = MacAddress(mac);
    if let Err(error) = network.switch.restrict(id, address) {
        let _ = network.switch.remove_port(id);
        return Err(alloc::format!("network card {address}: {error}"));
    }
    let ticket = network.next_ticket;
    network.next_ticket += 1;
    network.endpoints.push((id, ticket, Endpoint::Capsule(Weak::new())));
    Ok(Port { id, ticket })
}

/// Tells the switch which capsule is behind `port`, once the capsule exists.
pub fn bind(port: &Port, capsule: &Arc<Capsule>) {
    let mut network = network().lock();
    if let Some((_, _, endpoint)) =
        network.endpoints.iter_mut().find(|(id, ticket, _)| *id == port.id && *ticket == port.ticket)
    {
        *endpoint = Endpoint::Capsule(Arc::downgrade(capsule));
    }
}

/// Adds the uplink port for the machine's NIC. Called once, when the NIC is found.
pub fn attach_uplink() {
    let mut network = network().lock();
    match network.switch.add_port() {
        Ok(id) => {
            let ticket = network.next_ticket;
            network.next_ticket += 1;
            network.endpoints.push((id, ticket, Endpoint::Uplink));
            network.uplink = Some(id);
        }
        Err(error) => log::warn!("no uplink port on the capsules' switch: {error}"),
    }
}

/// The uplink port, if the machine has a NIC.
pub fn uplink() -> Option<PortId> {
    network().lock().uplink
}

/// Seconds since the machine started, the switch's clock for ageing learned addresses.
fn now_seconds() -> u64 {
    let timebase = PLATFORM.get().map_or(10_000_000, |p| p.host.timebase_frequency).max(1);
    csr::time::read() / timebase
}

/// Sends `frames`, received on `from`, where the switch says they go.
pub fn forward(from: PortId, frames: &[Frame]) {
    if frames.is_empty() {
        return;
    }
    // Decide every frame's destinations under the switch lock, then deliver with it released.
    let mut deliveries: Vec<(Endpoint, Vec<usize>)> = Vec::new();
    {
        let mut network = network().lock();
        network.switch.set_time(now_seconds());
        let mut add = |network: &Network, port: PortId, index: usize| {
            let Some((_, _, endpoint)) = network.endpoints.iter().find(|(id, _, _)| *id == port) else { return };
            let same = |known: &Endpoint| match (known, endpoint) {
                (Endpoint::Uplink, Endpoint::Uplink) => true,
                (Endpoint::Capsule(a), Endpoint::Capsule(b)) => Weak::ptr_eq(a, b),
                _ => false,
            };
            match deliveries.iter_mut().find(|(known, _)| same(known)) {
                Some((_, indices)) => indices.push(index),
                None => deliveries.push((endpoint.clone(), alloc::vec![index])),
            }
        };
        for (index, frame) in frames.iter().enumerate() {
            match network.switch.route(from, frame.as_slice()) {
                Route::Drop(_) => {}
                Route::Deliver(port) => add(&network, port, index),
                Route::Flood => {
                    let ports: Vec<PortId> = network.switch.flood_ports(from).collect();
                    for port in ports {
                        add(&network, port, index);
                    }
                }
            }
        }
    }
    for (endpoint, indices) in deliveries {
        match endpoint {
            Endpoint::Uplink => {
                for index in indices {
                    crate::hostnic::send(frames[index].as_slice());
                }
            }
            Endpoint::Capsule(capsule) => {
                if let Some(capsule) = capsule.upgrade() {
                    capsule.receive_frames(indices.iter().map(|&index| &frames[index]));
                }
            }
        }
    }
}

/// Frames the machine's NIC received, into the switch through the uplink.
pub fn service_uplink() {
    let uplink = uplink();
    loop {
        let frames = crate::hostnic::receive();
        if frames.is_empty() {
            break;
        }
        // Without an uplink port the frames have nowhere to go, but taking them keeps the NIC's buffers posted.
        if let Some(uplink) = uplink {
            forward(uplink, &frames);
        }
    }
}
