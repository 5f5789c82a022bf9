//! A learning Ethernet switch for the capsules' network cards and the machine's uplink, modelled as a pure state machine.
//!
//! The hypervisor adds one port per capsule network card and one for the machine's own
//! NIC, then asks [`Switch::route`] where each frame goes. The switch only decides; moving
//! the bytes is the caller's job, so nothing here allocates per frame or touches hardware.
//!
//! **Learning.** Every accepted frame teaches the switch that its source MAC address is
//! reachable through the port it came from. The table holds at most
//! [`SwitchConfig::table_capacity`] learned addresses; when it is full, the address seen
//! least recently is forgotten to make room. Addresses not seen for
//! [`SwitchConfig::age_limit`] ticks are forgotten as well, so a station that moved or went
//! away stops attracting traffic. Time is whatever the caller passes to
//! [`Switch::set_time`] (a tick can be a second, a millisecond, a frame count), which
//! keeps the switch deterministic.
//!
//! **Forwarding.** Broadcast and multicast destinations, and unicast destinations not in
//! the table, are flooded to every port except the one the frame came from. A known
//! destination gets the frame on its port alone, unless that is the port the frame came
//! from (the destination already saw it on that segment), in which case it is dropped.
//!
//! **Anti-spoofing.** A capsule's port can be restricted to the capsule's MAC address with
//! [`Switch::restrict`]: frames from it with any other source address are dropped, and the
//! address is pinned to the port: it never ages, is never evicted, and frames from any
//! other port claiming it as their source are dropped, so no one can steal a capsule's
//! traffic. The uplink stays unrestricted, since it carries many stations. Frames whose
//! source address is a group (multicast or broadcast) address or all zeros are never
//! valid and are dropped on every port.
//!
//! **Storage.** The address table is a plain vector searched linearly, and the pinned
//! addresses are read from the ports' restrictions. A Keel machine has a handful of
//! stations (one per capsule, plus what the uplink shows), so scanning a short vector costs
//! no more than walking a tree, and it is far smaller in the hypervisor image: each
//! `BTreeMap` instantiation adds kilobytes of monomorphised code. The table's capacity
//! ([`DEFAULT_TABLE_CAPACITY`] unless configured otherwise) bounds the worst-case scan.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// Length of an Ethernet header: destination address, source address, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Default bound on learned addresses.
pub const DEFAULT_TABLE_CAPACITY: usize = 1024;
/// Default age limit in ticks: the IEEE 802.1D default ageing time of 300 s when the
/// caller's tick is one second.
pub const DEFAULT_AGE_LIMIT: u64 = 300;
/// Most ports a switch has at once.
pub const MAX_PORTS: usize = 4096;

/// A port of the switch. Identifiers of removed ports are reused by later
/// [`Switch::add_port`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(u16);

impl PortId {
    /// The port's number.
    pub fn index(self) -> u16 {
        self.0
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// An Ethernet MAC address (the default is 00:00:00:00:00:00).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddress = MacAddress([0xff; 6]);

    /// Whether this is a group address (multicast, including broadcast): the I/G bit, the
    /// least significant bit of the first byte, is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Whether this is the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether this is 00:00:00:00:00:00, which no station has.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Whether a station may use this address as its own: not a group address, not zero.
    pub fn is_station(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    /// The destination address of `frame`, if it holds a whole Ethernet header.
    pub fn destination_of(frame: &[u8]) -> Option<MacAddress> {
        Self::at(frame, 0)
    }

    /// The source address of `frame`, if it holds a whole Ethernet header.
    pub fn source_of(frame: &[u8]) -> Option<MacAddress> {
        Self::at(frame, 6)
    }

    fn at(frame: &[u8], offset: usize) -> Option<MacAddress> {
        if frame.len() < ETHERNET_HEADER_LEN {
            return None;
        }
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(frame.get(offset..offset + 6)?);
        Some(MacAddress(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Nowhere.
    Drop(DropReason),
    /// To this port only.
    Deliver(PortId),
    /// To every port except the one it came from; [`Switch::flood_ports`] lists them.
    Flood,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The frame came from a port the switch does not have.
    UnknownPort,
    /// The frame is shorter than an Ethernet header.
    Runt,
    /// The source address is a group (multicast or broadcast) address, which no station
    /// sends from.
    MulticastSource,
    /// The source address is all zeros.
    ZeroSource,
    /// The port is restricted to another source address.
    SpoofedSource,
    /// The source address is pinned to another (restricted) port.
    SourcePinnedElsewhere,
    /// The destination is on the port the frame came from.
    SameSegment,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::UnknownPort => "frame from a port the switch does not have",
            DropReason::Runt => "frame shorter than the 14-byte Ethernet header",
            DropReason::MulticastSource => "source address is a multicast or broadcast address",
            DropReason::ZeroSource => "source address is all zeros",
            DropReason::SpoofedSource => "source address is not the one the port is restricted to",
            DropReason::SourcePinnedElsewhere => {
                "source address belongs to another port's restricted station"
            }
            DropReason::SameSegment => "destination is on the port the frame came from",
        })
    }
}

/// A refused change to the switch's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// Every one of the `limit` port identifiers is in use.
    TooManyPorts { limit: usize },
    /// The port does not exist (never added, or removed).
    NoSuchPort(PortId),
    /// A port cannot be restricted to a group or all-zero address.
    NotStationAddress(MacAddress),
    /// The address is already pinned to another restricted port.
    AddressPinnedElsewhere { address: MacAddress, owner: PortId },
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::TooManyPorts { limit } => {
                write!(f, "the switch already has its maximum of {limit} ports")
            }
            SwitchError::NoSuchPort(port) => write!(f, "the switch has no {port}"),
            SwitchError::NotStationAddress(address) => write!(
                f,
                "{address} is a multicast, broadcast or zero address, not a station's"
            ),
            SwitchError::AddressPinnedElsewhere { address, owner } => {
                write!(f, "{address} is already pinned to {owner}")
            }
        }
    }
}

impl core::error::Error for SwitchError {}

/// Table size and ageing of a switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Most addresses learned at once (addresses pinned by [`Switch::restrict`] do not
    /// count).
    pub table_capacity: usize,
    /// A learned address not seen for this many ticks is forgotten.
    pub age_limit: u64,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            table_capacity: DEFAULT_TABLE_CAPACITY,
            age_limit: DEFAULT_AGE_LIMIT,
        }
    }
}

/// Traffic through one port. "Received" is what the port handed to the switch, "sent"
/// what the switch directed to the port (delivered or flooded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received from the port.
    pub received_frames: u64,
    /// Bytes of those frames.
    pub received_bytes: u64,
    /// Frames sent to the port.
    pub sent_frames: u64,
    /// Bytes of those frames.
    pub sent_bytes: u64,
    /// Received frames delivered to one other port.
    pub forwarded: u64,
    /// Received frames flooded to the other ports.
    pub flooded: u64,
    /// Received frames shorter than an Ethernet header.
    pub dropped_runt: u64,
    /// Received frames with a multicast, broadcast or zero source address.
    pub dropped_invalid_source: u64,
    /// Received frames with a source address the port may not use (restricted port, or an
    /// address pinned to another port).
    pub dropped_spoofed: u64,
    /// Received frames for a destination on the same port.
    pub dropped_same_segment: u64,
}

/// Events of the address table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Addresses added to the table.
    pub learned: u64,
    /// Learned addresses that showed up on another port.
    pub moved: u64,
    /// Addresses forgotten to make room in a full table.
    pub evicted: u64,
    /// Addresses forgotten because they were not seen for the age limit.
    pub aged_out: u64,
}

#[derive(Debug, Clone, Default)]
struct Port {
    /// The only source address the port may use, pinned to it.
    restricted_to: Option<MacAddress>,
    counters: PortCounters,
}

#[derive(Debug, Clone, Copy)]
struct LearnedEntry {
    address: MacAddress,
    port: PortId,
    last_seen: u64,
    /// Position of the entry's latest sighting among all sightings, so that entries seen in
    /// the same tick still have an order. Time never runs backwards, so ordering by this
    /// number alone is ordering by `last_seen` with ties broken by arrival.
    sequence: u64,
}

/// A learning Ethernet switch.
#[derive(Debug, Clone)]
pub struct Switch {
    config: SwitchConfig,
    /// Indexed by port number; `None` for removed ports. A port's restriction doubles as
    /// the pin of its address (never aged, never evicted, never moved), so pinned
    /// addresses need no table of their own and vanish with their port.
    ports: Vec<Option<Port>>,
    /// The learned addresses, in no particular order, at most one entry per address and
    /// never a pinned one.
    learned: Vec<LearnedEntry>,
    now: u64,
    next_sequence: u64,
    counters: SwitchCounters,
}

impl Default for Switch {
    fn default() -> Self {
        Self::new()
    }
}

impl Switch {
    /// A switch without ports, with the default table capacity and age limit, at time 0.
    pub fn new() -> Self {
        Self::with_config(SwitchConfig::default())
    }

    /// A switch without ports, at time 0.
    pub fn with_config(config: SwitchConfig) -> Self {
        Self {
            config,
            ports: Vec::new(),
            learned: Vec::new(),
            now: 0,
            next_sequence: 0,
            counters: SwitchCounters::default(),
        }
    }

    /// The table size and ageing in use.
    pub fn config(&self) -> SwitchConfig {
        self.config
    }

    /// Adds an unrestricted port, reusing the lowest free identifier.
    pub fn add_port(&mut self) -> Result<PortId, SwitchError> {
        if let Some(index) = self.ports.iter().position(Option::is_none) {
            self.ports[index] = Some(Port::default());
            // Indices stay below MAX_PORTS, which fits in 16 bits.
            return Ok(PortId(index as u16));
        }
        if self.ports.len() >= MAX_PORTS {
            return Err(SwitchError::TooManyPorts { limit: MAX_PORTS });
        }
        self.ports.push(Some(Port::default()));
        Ok(PortId((self.ports.len() - 1) as u16))
    }

    /// Removes a port, with its restriction and every address learned on it.
    pub fn remove_port(&mut self, port: PortId) -> Result<(), SwitchError> {
        let slot = self
            .ports
            .get_mut(usize::from(port.0))
            .filter(|slot| slot.is_some())
            .ok_or(SwitchError::NoSuchPort(port))?;
        // Emptying the slot also releases the port's pinned address.
        *slot = None;
        self.learned.retain(|entry| entry.port != port);
        Ok(())
    }

    /// Restricts `port` to the source address `address` and pins the address to it (see the
    /// crate documentation). A port already restricted to another address is moved to the
    /// new one.
    pub fn restrict(&mut self, port: PortId, address: MacAddress) -> Result<(), SwitchError> {
        if self.port(port).is_none() {
            return Err(SwitchError::NoSuchPort(port));
        }
        if !address.is_station() {
            return Err(SwitchError::NotStationAddress(address));
        }
        match self.pinned_owner(address) {
            Some(owner) if owner != port => {
                return Err(SwitchError::AddressPinnedElsewhere { address, owner });
            }
            _ => {}
        }
        // Replacing the restriction releases the previously pinned address, if any.
        if let Some(state) = self.port_mut(port) {
            state.restricted_to = Some(address);
        }
        // A pinned address is no longer a learned one, wherever it was learned.
        self.forget(address);
        Ok(())
    }

    /// The address `port` is restricted to, if any.
    pub fn restriction(&self, port: PortId) -> Option<MacAddress> {
        self.port(port).and_then(|state| state.restricted_to)
    }

    /// The ports, in identifier order.
    pub fn ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.is_some())
            // Indices stay below MAX_PORTS, which fits in 16 bits.
            .map(|(index, _)| PortId(index as u16))
    }

    /// The ports a frame from `from` is flooded to: all but `from`.
    pub fn flood_ports(&self, from: PortId) -> impl Iterator<Item = PortId> + '_ {
        self.ports().filter(move |&port| port != from)
    }

    /// The current time in ticks.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Advances the clock to `now` and forgets the addresses not seen for the age limit.
    /// Time never runs backwards: an earlier `now` is ignored.
    pub fn set_time(&mut self, now: u64) {
        if now < self.now {
            return;
        }
        let age_limit = self.config.age_limit;
        // The call that last moved the clock forgot every entry due by then, and every entry
        // seen since (or since creation, at time 0) was seen at that same time. So when the
        // clock stands still, only an age limit that expires an entry in the tick it was seen
        // can find anything to forget; otherwise the scan is skipped, which keeps repeated
        // calls within one tick cheap.
        if now == self.now && now.saturating_add(age_limit) > now {
            return;
        }
        self.now = now;
        let before = self.learned.len();
        self.learned
            .retain(|entry| entry.last_seen.saturating_add(age_limit) > now);
        self.counters.aged_out += (before - self.learned.len()) as u64;
    }

    /// The port `address` is reachable through, if the switch knows it (pinned or learned).
    pub fn lookup(&self, address: MacAddress) -> Option<PortId> {
        self.pinned_owner(address).or_else(|| {
            self.learned
                .iter()
                .find(|entry| entry.address == address)
                .map(|entry| entry.port)
        })
    }

    /// Number of learned addresses (pinned ones not included).
    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// Traffic through `port`, if it exists.
    pub fn port_counters(&self, port: PortId) -> Option<&PortCounters> {
        self.port(port).map(|state| &state.counters)
    }

    /// Address table events.
    pub fn counters(&self) -> &SwitchCounters {
        &self.counters
    }

    /// Decides where `frame`, received on `from`, goes, learning its source address on the
    /// way, and counts it.
    pub fn route(&mut self, from: PortId, frame: &[u8]) -> Route {
        let len = frame.len() as u64;
        let Some(port) = self.port_mut(from) else {
            return Route::Drop(DropReason::UnknownPort);
        };
        port.counters.received_frames += 1;
        port.counters.received_bytes += len;
        let route = self.decide(from, frame);
        self.account(from, route, len);
        route
    }

    fn decide(&mut self, from: PortId, frame: &[u8]) -> Route {
        let (Some(destination), Some(source)) = (
            MacAddress::destination_of(frame),
            MacAddress::source_of(frame),
        ) else {
            return Route::Drop(DropReason::Runt);
        };
        if source.is_multicast() {
            return Route::Drop(DropReason::MulticastSource);
        }
        if source.is_zero() {
            return Route::Drop(DropReason::ZeroSource);
        }
        if let Some(allowed) = self.restriction(from) {
            if source != allowed {
                return Route::Drop(DropReason::SpoofedSource);
            }
        }
        match self.pinned_owner(source) {
            Some(owner) if owner != from => return Route::Drop(DropReason::SourcePinnedElsewhere),
            // The port's own pinned address: nothing to learn.
            Some(_) => {}
            None => self.learn(source, from),
        }
        if destination.is_multicast() {
            return Route::Flood;
        }
        match self.lookup(destination) {
            None => Route::Flood,
            Some(to) if to == from => Route::Drop(DropReason::SameSegment),
            Some(to) => Route::Deliver(to),
        }
    }

    fn account(&mut self, from: PortId, route: Route, len: u64) {
        match route {
            Route::Drop(reason) => {
                if let Some(port) = self.port_mut(from) {
                    let counters = &mut port.counters;
                    match reason {
                        DropReason::UnknownPort => {}
                        DropReason::Runt => counters.dropped_runt += 1,
                        DropReason::MulticastSource | DropReason::ZeroSource => {
                            counters.dropped_invalid_source += 1;
                        }
                        DropReason::SpoofedSource | DropReason::SourcePinnedElsewhere => {
                            counters.dropped_spoofed += 1;
                        }
                        DropReason::SameSegment => counters.dropped_same_segment += 1,
                    }
                }
            }
            Route::Deliver(to) => {
                if let Some(port) = self.port_mut(from) {
                    port.counters.forwarded += 1;
                }
                if let Some(port) = self.port_mut(to) {
                    port.counters.sent_frames += 1;
                    port.counters.sent_bytes += len;
                }
            }
            Route::Flood => {
                for (index, slot) in self.ports.iter_mut().enumerate() {
                    let Some(port) = slot else { continue };
                    if index == usize::from(from.0) {
                        port.counters.flooded += 1;
                    } else {
                        port.counters.sent_frames += 1;
                        port.counters.sent_bytes += len;
                    }
                }
            }
        }
    }

    /// Records that `address` was just seen on `port` (an unpinned address).
    fn learn(&mut self, address: MacAddress, port: PortId) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let now = self.now;
        if let Some(entry) = self
            .learned
            .iter_mut()
            .find(|entry| entry.address == address)
        {
            if entry.port != port {
                // A station moved (or shares the address); the latest port wins, as only
                // unrestricted ports get here.
                entry.port = port;
                self.counters.moved += 1;
            }
            entry.last_seen = now;
            entry.sequence = sequence;
            return;
        }
        if self.config.table_capacity == 0 {
            return;
        }
        if self.learned.len() >= self.config.table_capacity {
            // Full: forget the least recently seen address. The capacity never changes, so
            // one eviction makes room; the table is unordered, so swapping the last entry
            // into the hole is fine.
            let oldest = self
                .learned
                .iter()
                .enumerate()
                .min_by_key(|(_, entry)| entry.sequence)
                .map(|(index, _)| index);
            if let Some(oldest) = oldest {
                self.learned.swap_remove(oldest);
                self.counters.evicted += 1;
            }
        }
        self.learned.push(LearnedEntry {
            address,
            port,
            last_seen: now,
            sequence,
        });
        self.counters.learned += 1;
    }

    /// Removes a learned address, if it is one.
    fn forget(&mut self, address: MacAddress) {
        if let Some(index) = self
            .learned
            .iter()
            .position(|entry| entry.address == address)
        {
            self.learned.swap_remove(index);
        }
    }

    /// The restricted port `address` is pinned to, if any.
    fn pinned_owner(&self, address: MacAddress) -> Option<PortId> {
        self.ports
            .iter()
            .position(|slot| {
                slot.as_ref()
                    .is_some_and(|state| state.restricted_to == Some(address))
            })
            // Indices stay below MAX_PORTS, which fits in 16 bits.
            .map(|index| PortId(index as u16))
    }

    fn port(&self, port: PortId) -> Option<&Port> {
        self.ports.get(usize::from(port.0))?.as_ref()
    }

    fn port_mut(&mut self, port: PortId) -> Option<&mut Port> {
        self.ports.get_mut(usize::from(port.0))?.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPLINK_HOST: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
    const OTHER_HOST: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);
    const CAPSULE_A: MacAddress = MacAddress([0x02, 0x4b, 0x45, 0x45, 0x4c, 0x0a]);
    const CAPSULE_B: MacAddress = MacAddress([0x02, 0x4b, 0x45, 0x45, 0x4c, 0x0b]);
    /// IPv4 multicast 224.0.0.251 (mDNS) and IPv6 all-nodes.
    const IPV4_MULTICAST: MacAddress = MacAddress([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
    const IPV6_ALL_NODES: MacAddress = MacAddress([0x33, 0x33, 0x00, 0x00, 0x00, 0x01]);

    fn frame(destination: MacAddress, source: MacAddress, len: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len.max(ETHERNET_HEADER_LEN));
        bytes.extend_from_slice(&destination.0);
        bytes.extend_from_slice(&source.0);
        bytes.extend_from_slice(&0x0800u16.to_be_bytes());
        bytes.resize(len.max(ETHERNET_HEADER_LEN), 0x5a);
        bytes
    }

    fn station(number: u32) -> MacAddress {
        let [a, b, c, d] = number.to_be_bytes();
        MacAddress([0x06, 0x00, a, b, c, d])
    }

    /// A switch with an uplink and two capsule ports.
    fn three_ports(config: SwitchConfig) -> (Switch, PortId, PortId, PortId) {
        let mut switch = Switch::with_config(config);
        let uplink = switch.add_port().unwrap();
        let a = switch.add_port().unwrap();
        let b = switch.add_port().unwrap();
        (switch, uplink, a, b)
    }

    fn ports() -> (Switch, PortId, PortId, PortId) {
        three_ports(SwitchConfig::default())
    }

    #[test]
    fn learns_sources_and_delivers_to_known_destinations() {
        let (mut switch, uplink, a, _b) = ports();
        // A's first frame to an unknown host floods and teaches the switch where A is.
        assert_eq!(
            switch.route(a, &frame(UPLINK_HOST, CAPSULE_A, 60)),
            Route::Flood
        );
        assert_eq!(switch.lookup(CAPSULE_A), Some(a));
        // The reply goes to A alone, and teaches the switch where the host is.
        assert_eq!(
            switch.route(uplink, &frame(CAPSULE_A, UPLINK_HOST, 60)),
            Route::Deliver(a)
        );
        assert_eq!(switch.lookup(UPLINK_HOST), Some(uplink));
        assert_eq!(
            switch.route(a, &frame(UPLINK_HOST, CAPSULE_A, 100)),
            Route::Deliver(uplink)
        );
        assert_eq!(switch.learned_len(), 2);
        assert_eq!(switch.counters().learned, 2);
    }

    #[test]
    fn unknown_unicast_floods_to_all_other_ports() {
        let (mut switch, uplink, a, b) = ports();
        assert_eq!(
            switch.route(a, &frame(OTHER_HOST, CAPSULE_A, 80)),
            Route::Flood
        );
        assert_eq!(switch.flood_ports(a).collect::<Vec<_>>(), [uplink, b]);
        assert_eq!(switch.flood_ports(uplink).collect::<Vec<_>>(), [a, b]);
        let counters_a = switch.port_counters(a).unwrap();
        assert_eq!((counters_a.flooded, counters_a.sent_frames), (1, 0));
        for port in [uplink, b] {
            let counters = switch.port_counters(port).unwrap();
            assert_eq!((counters.sent_frames, counters.sent_bytes), (1, 80));
        }
    }

    #[test]
    fn broadcast_and_multicast_flood_even_when_learned() {
        let (mut switch, uplink, a, _b) = ports();
        for destination in [MacAddress::BROADCAST, IPV4_MULTICAST, IPV6_ALL_NODES] {
            assert_eq!(
                switch.route(a, &frame(destination, CAPSULE_A, 60)),
                Route::Flood
            );
            assert_eq!(
                switch.route(uplink, &frame(destination, UPLINK_HOST, 60)),
                Route::Flood
            );
        }
        assert!(MacAddress::BROADCAST.is_broadcast());
        assert!(IPV4_MULTICAST.is_multicast() && !IPV4_MULTICAST.is_broadcast());
        assert_eq!(switch.port_counters(a).unwrap().flooded, 3);
        // Group addresses are never learned as destinations.
        assert_eq!(switch.lookup(MacAddress::BROADCAST), None);
        assert_eq!(switch.learned_len(), 2);
    }

    #[test]
    fn runt_frames_are_dropped() {
        let (mut switch, _uplink, a, _b) = ports();
        let full = frame(UPLINK_HOST, CAPSULE_A, 14);
        assert_eq!(switch.route(a, &full[..13]), Route::Drop(DropReason::Runt));
        assert_eq!(switch.route(a, &[]), Route::Drop(DropReason::Runt));
        assert_eq!(switch.learned_len(), 0);
        // A bare header is a frame.
        assert_eq!(switch.route(a, &full), Route::Flood);
        let counters = switch.port_counters(a).unwrap();
        assert_eq!(
            (
                counters.received_frames,
                counters.received_bytes,
                counters.dropped_runt
            ),
            (3, 27, 2)
        );
    }

    #[test]
    fn group_and_zero_source_addresses_are_dropped() {
        let (mut switch, uplink, _a, _b) = ports();
        let cases = [
            (MacAddress::BROADCAST, DropReason::MulticastSource),
            (IPV4_MULTICAST, DropReason::MulticastSource),
            (MacAddress([0; 6]), DropReason::ZeroSource),
        ];
        for (source, reason) in cases {
            assert_eq!(
                switch.route(uplink, &frame(CAPSULE_A, source, 60)),
                Route::Drop(reason)
            );
            assert_eq!(switch.lookup(source), None, "{source} not learned");
        }
        assert_eq!(switch.learned_len(), 0);
        assert_eq!(
            switch.port_counters(uplink).unwrap().dropped_invalid_source,
            3
        );
    }

    #[test]
    fn destination_on_the_same_port_is_dropped() {
        let (mut switch, uplink, _a, _b) = ports();
        switch.route(uplink, &frame(MacAddress::BROADCAST, OTHER_HOST, 60));
        assert_eq!(
            switch.route(uplink, &frame(OTHER_HOST, UPLINK_HOST, 60)),
            Route::Drop(DropReason::SameSegment)
        );
        assert_eq!(
            switch.port_counters(uplink).unwrap().dropped_same_segment,
            1
        );
        // The source was still learned: the frame was valid, just not for us.
        assert_eq!(switch.lookup(UPLINK_HOST), Some(uplink));
    }

    #[test]
    fn station_moving_between_unrestricted_ports_is_followed() {
        let (mut switch, uplink, a, b) = ports();
        switch.route(uplink, &frame(MacAddress::BROADCAST, OTHER_HOST, 60));
        switch.route(a, &frame(MacAddress::BROADCAST, OTHER_HOST, 60));
        assert_eq!(switch.lookup(OTHER_HOST), Some(a));
        assert_eq!(switch.counters().moved, 1);
        assert_eq!(
            switch.route(b, &frame(OTHER_HOST, CAPSULE_B, 60)),
            Route::Deliver(a)
        );
    }

    #[test]
    fn addresses_age_out() {
        let config = SwitchConfig {
            table_capacity: 16,
            age_limit: 100,
        };
        let (mut switch, uplink, a, _b) = three_ports(config);
        switch.set_time(1000);
        switch.route(uplink, &frame(MacAddress::BROADCAST, UPLINK_HOST, 60));
        switch.set_time(1050);
        switch.route(uplink, &frame(MacAddress::BROADCAST, OTHER_HOST, 60));

        switch.set_time(1099);
        assert_eq!(switch.lookup(UPLINK_HOST), Some(uplink));
        switch.set_time(1100);
        assert_eq!(switch.lookup(UPLINK_HOST), None, "not seen for 100 ticks");
        assert_eq!(switch.lookup(OTHER_HOST), Some(uplink));
        assert_eq!(
            switch.route(a, &frame(UPLINK_HOST, CAPSULE_A, 60)),
            Route::Flood
        );
        assert_eq!(switch.counters().aged_out, 1);

        // Seeing a station again restarts its age.
        switch.set_time(1140);
        switch.route(uplink, &frame(CAPSULE_A, OTHER_HOST, 60));
        switch.set_time(1239);
        assert_eq!(switch.lookup(OTHER_HOST), Some(uplink));
        // Time does not run backwards.
        switch.set_time(5);
        assert_eq!(switch.now(), 1239);
        switch.set_time(1240);
        assert_eq!(switch.lookup(OTHER_HOST), None);
        assert_eq!(switch.lookup(CAPSULE_A), None);
        assert_eq!(switch.learned_len(), 0);
    }

    #[test]
    fn full_table_evicts_the_least_recently_seen() {
        let config = SwitchConfig {
            table_capacity: 4,
            age_limit: u64::MAX,
        };
        let (mut switch, uplink, a, _b) = three_ports(config);
        for number in 0..4 {
            switch.set_time(u64::from(number));
            switch.route(uplink, &frame(MacAddress::BROADCAST, station(number), 60));
        }
        // Station 0 speaks again, so station 1 is now the least recently seen.
        switch.set_time(10);
        switch.route(uplink, &frame(MacAddress::BROADCAST, station(0), 60));
        switch.route(uplink, &frame(MacAddress::BROADCAST, station(4), 60));
        assert_eq!(switch.learned_len(), 4);
        assert_eq!(switch.lookup(station(1)), None);
        for number in [0, 2, 3, 4] {
            assert_eq!(switch.lookup(station(number)), Some(uplink));
        }
        assert_eq!(switch.counters().evicted, 1);
        assert_eq!(
            switch.route(a, &frame(station(1), CAPSULE_A, 60)),
            Route::Flood
        );
        // That frame taught CAPSULE_A, evicting station 2 (oldest at time 2).
        assert_eq!(switch.lookup(station(2)), None);
        assert_eq!(switch.lookup(CAPSULE_A), Some(a));

        // Many stations seen in the same tick leave in the order they arrived.
        for number in 100..110 {
            switch.route(uplink, &frame(MacAddress::BROADCAST, station(number), 60));
        }
        let known: Vec<u32> = (100..110)
            .filter(|&number| switch.lookup(station(number)).is_some())
            .collect();
        assert_eq!(known, [106, 107, 108, 109]);
        assert_eq!(switch.learned_len(), 4);
    }

    #[test]
    fn zero_capacity_table_learns_nothing() {
        let config = SwitchConfig {
            table_capacity: 0,
            age_limit: 10,
        };
        let (mut switch, uplink, a, _b) = three_ports(config);
        switch.route(uplink, &frame(MacAddress::BROADCAST, UPLINK_HOST, 60));
        assert_eq!(switch.learned_len(), 0);
        assert_eq!(
            switch.route(a, &frame(UPLINK_HOST, CAPSULE_A, 60)),
            Route::Flood
        );
        // Pinned addresses work without a table.
        switch.restrict(a, CAPSULE_A).unwrap();
        assert_eq!(
            switch.route(uplink, &frame(CAPSULE_A, UPLINK_HOST, 60)),
            Route::Deliver(a)
        );
    }

    #[test]
    fn restricted_port_drops_other_source_addresses() {
        let (mut switch, uplink, a, _b) = ports();
        switch.restrict(a, CAPSULE_A).unwrap();
        assert_eq!(switch.restriction(a), Some(CAPSULE_A));
        assert_eq!(switch.restriction(uplink), None);
        // Known before the capsule says anything, so traffic for it is never flooded.
        assert_eq!(switch.lookup(CAPSULE_A), Some(a));
        assert_eq!(
            switch.route(uplink, &frame(CAPSULE_A, UPLINK_HOST, 60)),
            Route::Deliver(a)
        );
        assert_eq!(
            switch.route(a, &frame(UPLINK_HOST, CAPSULE_A, 60)),
            Route::Deliver(uplink)
        );
        assert_eq!(
            switch.route(a, &frame(UPLINK_HOST, OTHER_HOST, 60)),
            Route::Drop(DropReason::SpoofedSource)
        );
        assert_eq!(
            switch.lookup(OTHER_HOST),
            None,
            "spoofed source not learned"
        );
        assert_eq!(switch.port_counters(a).unwrap().dropped_spoofed, 1);
        // The uplink is unrestricted.
        assert_eq!(
            switch.route(uplink, &frame(MacAddress::BROADCAST, OTHER_HOST, 60)),
            Route::Flood
        );
        // Pinned addresses never age out.
        switch.set_time(DEFAULT_AGE_LIMIT * 10);
        assert_eq!(switch.lookup(CAPSULE_A), Some(a));
        assert_eq!(switch.lookup(UPLINK_HOST), None);
    }

    #[test]
    fn pinned_address_cannot_be_stolen() {
        let (mut switch, uplink, a, b) = ports();
        // The address was first learned on the uplink (someone claimed it before the
        // capsule started); restricting the capsule's port takes it over.
        switch.route(uplink, &frame(MacAddress::BROADCAST, CAPSULE_A, 60));
        assert_eq!(switch.lookup(CAPSULE_A), Some(uplink));
        switch.restrict(a, CAPSULE_A).unwrap();
        assert_eq!(switch.lookup(CAPSULE_A), Some(a));
        assert_eq!(switch.learned_len(), 0);

        for thief in [uplink, b] {
            assert_eq!(
                switch.route(thief, &frame(MacAddress::BROADCAST, CAPSULE_A, 60)),
                Route::Drop(DropReason::SourcePinnedElsewhere)
            );
            assert_eq!(switch.lookup(CAPSULE_A), Some(a));
        }
        assert_eq!(
            switch.restrict(b, CAPSULE_A),
            Err(SwitchError::AddressPinnedElsewhere {
                address: CAPSULE_A,
                owner: a
            })
        );
        // A restricted port cannot claim the other's address either.
        switch.restrict(b, CAPSULE_B).unwrap();
        assert_eq!(
            switch.route(b, &frame(MacAddress::BROADCAST, CAPSULE_A, 60)),
            Route::Drop(DropReason::SpoofedSource)
        );
        assert_eq!(switch.port_counters(uplink).unwrap().dropped_spoofed, 1);
        assert_eq!(switch.port_counters(b).unwrap().dropped_spoofed, 2);
    }

    #[test]
    fn restriction_can_be_changed_and_is_checked() {
        let (mut switch, uplink, a, b) = ports();
        switch.restrict(a, CAPSULE_A).unwrap();
        switch.restrict(a, CAPSULE_B).unwrap();
        assert_eq!(switch.lookup(CAPSULE_A), None, "old address released");
        assert_eq!(switch.lookup(CAPSULE_B), Some(a));
        switch.restrict(b, CAPSULE_A).unwrap();
        // Restricting again to the same address is harmless.
        switch.restrict(b, CAPSULE_A).unwrap();
        assert_eq!(switch.lookup(CAPSULE_A), Some(b));

        for bad in [MacAddress::BROADCAST, IPV4_MULTICAST, MacAddress([0; 6])] {
            assert_eq!(
                switch.restrict(uplink, bad),
                Err(SwitchError::NotStationAddress(bad))
            );
        }
        assert_eq!(
            switch.restrict(PortId(77), OTHER_HOST),
            Err(SwitchError::NoSuchPort(PortId(77)))
        );
        assert_eq!(switch.restriction(uplink), None);
    }

    #[test]
    fn removing_a_port_forgets_its_addresses() {
        let (mut switch, uplink, a, b) = ports();
        switch.restrict(a, CAPSULE_A).unwrap();
        switch.route(b, &frame(MacAddress::BROADCAST, CAPSULE_B, 60));
        switch.route(b, &frame(MacAddress::BROADCAST, OTHER_HOST, 60));
        switch.route(uplink, &frame(MacAddress::BROADCAST, UPLINK_HOST, 60));

        switch.remove_port(b).unwrap();
        assert_eq!(switch.lookup(CAPSULE_B), None);
        assert_eq!(switch.lookup(OTHER_HOST), None);
        assert_eq!(switch.lookup(UPLINK_HOST), Some(uplink));
        assert_eq!(switch.learned_len(), 1);
        assert_eq!(switch.ports().collect::<Vec<_>>(), [uplink, a]);
        assert_eq!(switch.flood_ports(uplink).collect::<Vec<_>>(), [a]);
        assert_eq!(
            switch.route(b, &frame(UPLINK_HOST, CAPSULE_B, 60)),
            Route::Drop(DropReason::UnknownPort)
        );
        assert_eq!(switch.port_counters(b), None);
        assert_eq!(switch.remove_port(b), Err(SwitchError::NoSuchPort(b)));
        assert_eq!(
            switch.route(uplink, &frame(CAPSULE_B, UPLINK_HOST, 60)),
            Route::Flood
        );

        // The pinned address goes with its port and may be pinned again elsewhere.
        switch.remove_port(a).unwrap();
        assert_eq!(switch.lookup(CAPSULE_A), None);
        // Identifiers are reused, and the new port starts clean.
        let reused = switch.add_port().unwrap();
        assert_eq!(reused, a);
        assert_eq!(switch.restriction(reused), None);
        assert_eq!(switch.port_counters(reused), Some(&PortCounters::default()));
        switch.restrict(reused, CAPSULE_A).unwrap();
        assert_eq!(switch.add_port().unwrap(), b);
    }

    #[test]
    fn port_counters_add_up() {
        let (mut switch, uplink, a, b) = ports();
        switch.restrict(a, CAPSULE_A).unwrap();
        switch.route(a, &frame(MacAddress::BROADCAST, CAPSULE_A, 100));
        switch.route(uplink, &frame(CAPSULE_A, UPLINK_HOST, 200));
        switch.route(a, &frame(UPLINK_HOST, CAPSULE_A, 300));
        switch.route(a, &frame(UPLINK_HOST, OTHER_HOST, 400));
        let counters = *switch.port_counters(a).unwrap();
        assert_eq!(
            counters,
            PortCounters {
                received_frames: 3,
                received_bytes: 800,
                sent_frames: 1,
                sent_bytes: 200,
                forwarded: 1,
                flooded: 1,
                dropped_spoofed: 1,
                ..PortCounters::default()
            }
        );
        let uplink_counters = switch.port_counters(uplink).unwrap();
        assert_eq!(
            (
                uplink_counters.received_frames,
                uplink_counters.forwarded,
                uplink_counters.sent_frames,
                uplink_counters.sent_bytes
            ),
            (1, 1, 2, 400)
        );
        assert_eq!(switch.port_counters(b).unwrap().sent_bytes, 100);
    }

    #[test]
    fn port_limit_is_enforced() {
        let mut switch = Switch::new();
        for expected in 0..MAX_PORTS {
            assert_eq!(switch.add_port().map(PortId::index), Ok(expected as u16));
        }
        assert_eq!(
            switch.add_port(),
            Err(SwitchError::TooManyPorts { limit: MAX_PORTS })
        );
        switch.remove_port(PortId(10)).unwrap();
        assert_eq!(switch.add_port(), Ok(PortId(10)));
    }

    #[test]
    fn zero_age_limit_forgets_at_the_next_clock_reading() {
        let config = SwitchConfig {
            table_capacity: 16,
            age_limit: 0,
        };
        let (mut switch, uplink, _a, _b) = three_ports(config);
        switch.set_time(7);
        switch.route(uplink, &frame(MacAddress::BROADCAST, UPLINK_HOST, 60));
        assert_eq!(switch.lookup(UPLINK_HOST), Some(uplink));
        // Reading the same time again still ages with a zero limit.
        switch.set_time(7);
        assert_eq!(switch.lookup(UPLINK_HOST), None);
        assert_eq!(switch.counters().aged_out, 1);

        // At the end of time every entry is due at once, whatever the limit.
        let config = SwitchConfig {
            table_capacity: 16,
            age_limit: 1000,
        };
        let (mut switch, uplink, _a, _b) = three_ports(config);
        switch.set_time(u64::MAX);
        switch.route(uplink, &frame(MacAddress::BROADCAST, OTHER_HOST, 60));
        assert_eq!(switch.lookup(OTHER_HOST), Some(uplink));
        switch.set_time(u64::MAX);
        assert_eq!(switch.lookup(OTHER_HOST), None);
        assert_eq!(switch.counters().aged_out, 1);
    }

    #[test]
    fn repeated_clock_readings_keep_fresh_entries() {
        let config = SwitchConfig {
            table_capacity: 16,
            age_limit: 10,
        };
        let (mut switch, uplink, a, _b) = three_ports(config);
        switch.set_time(20);
        switch.route(uplink, &frame(MacAddress::BROADCAST, UPLINK_HOST, 60));
        switch.set_time(20);
        switch.set_time(29);
        switch.route(a, &frame(MacAddress::BROADCAST, CAPSULE_A, 60));
        switch.set_time(29);
        assert_eq!(switch.lookup(UPLINK_HOST), Some(uplink));
        switch.set_time(30);
        assert_eq!(switch.lookup(UPLINK_HOST), None);
        assert_eq!(switch.lookup(CAPSULE_A), Some(a));
        assert_eq!(switch.counters().aged_out, 1);
    }

    /// The address table of a learning switch written the obvious way: a list kept in
    /// the order addresses were last seen, oldest first.
    struct ReferenceTable {
        capacity: usize,
        age_limit: u64,
        now: u64,
        /// (address, port, last seen), least recently seen first.
        entries: Vec<(MacAddress, PortId, u64)>,
        counters: SwitchCounters,
    }

    impl ReferenceTable {
        fn learn(&mut self, address: MacAddress, port: PortId) {
            if let Some(index) = self.entries.iter().position(|entry| entry.0 == address) {
                let (_, old_port, _) = self.entries.remove(index);
                if old_port != port {
                    self.counters.moved += 1;
                }
                self.entries.push((address, port, self.now));
                return;
            }
            if self.capacity == 0 {
                return;
            }
            if self.entries.len() == self.capacity {
                self.entries.remove(0);
                self.counters.evicted += 1;
            }
            self.entries.push((address, port, self.now));
            self.counters.learned += 1;
        }

        fn set_time(&mut self, now: u64) {
            if now < self.now {
                return;
            }
            self.now = now;
            let before = self.entries.len();
            let age_limit = self.age_limit;
            self.entries
                .retain(|entry| entry.2.saturating_add(age_limit) > now);
            self.counters.aged_out += (before - self.entries.len()) as u64;
        }

        fn lookup(&self, address: MacAddress) -> Option<PortId> {
            self.entries
                .iter()
                .find(|entry| entry.0 == address)
                .map(|entry| entry.1)
        }

        fn route(&mut self, from: PortId, destination: MacAddress, source: MacAddress) -> Route {
            self.learn(source, from);
            if destination.is_multicast() {
                return Route::Flood;
            }
            match self.lookup(destination) {
                None => Route::Flood,
                Some(to) if to == from => Route::Drop(DropReason::SameSegment),
                Some(to) => Route::Deliver(to),
            }
        }
    }

    /// Learning, moving, eviction, ageing and port removal on unrestricted ports agree, step
    /// by step, with the reference table, for several capacities and age limits.
    #[test]
    fn table_matches_a_recency_ordered_reference() {
        let mut state = 0x6b65_656c_7377u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for (table_capacity, age_limit) in [(8, 0), (8, 3), (5, 40), (1, 1000), (0, 10), (24, 20)] {
            let config = SwitchConfig {
                table_capacity,
                age_limit,
            };
            let mut switch = Switch::with_config(config);
            let mut reference = ReferenceTable {
                capacity: table_capacity,
                age_limit,
                now: 0,
                entries: Vec::new(),
                counters: SwitchCounters::default(),
            };
            let ports: Vec<PortId> = (0..4).map(|_| switch.add_port().unwrap()).collect();
            let mut now = 0;
            for _ in 0..5_000 {
                match next(20) {
                    0 | 1 => {
                        now += next(4);
                        switch.set_time(now);
                        reference.set_time(now);
                    }
                    2 => {
                        let port = ports[next(4) as usize];
                        switch.remove_port(port).unwrap();
                        assert_eq!(switch.add_port(), Ok(port));
                        reference.entries.retain(|entry| entry.1 != port);
                    }
                    _ => {}
                }
                let from = ports[next(4) as usize];
                let source = station(next(24) as u32);
                let destination = match next(6) {
                    0 => MacAddress::BROADCAST,
                    _ => station(next(24) as u32),
                };
                assert_eq!(
                    switch.route(from, &frame(destination, source, 60)),
                    reference.route(from, destination, source)
                );
                assert_eq!(switch.learned_len(), reference.entries.len());
                assert_eq!(*switch.counters(), reference.counters);
                for number in 0..24 {
                    assert_eq!(
                        switch.lookup(station(number)),
                        reference.lookup(station(number))
                    );
                }
            }
            assert!(table_capacity == 0 || switch.counters().learned > 0);
        }
    }

    #[test]
    fn frame_from_unknown_port_is_dropped_without_learning() {
        let mut switch = Switch::new();
        assert_eq!(
            switch.route(PortId(0), &frame(UPLINK_HOST, CAPSULE_A, 60)),
            Route::Drop(DropReason::UnknownPort)
        );
        assert_eq!(switch.learned_len(), 0);
    }

    /// Random traffic, spoofing, restrictions, port churn and time steps: the switch never
    /// panics, never exceeds its table, and never routes to a missing port or back to the
    /// sender.
    #[test]
    fn random_traffic_keeps_the_invariants() {
        let mut state = 0x7377_6974_6368u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let config = SwitchConfig {
            table_capacity: 32,
            age_limit: 50,
        };
        let mut switch = Switch::with_config(config);
        let mut ports: Vec<PortId> = (0..6).map(|_| switch.add_port().unwrap()).collect();
        let mut delivered = 0;
        for step in 0..20_000u64 {
            match next(100) {
                0 if ports.len() > 2 => {
                    let port = ports.swap_remove(next(ports.len() as u64) as usize);
                    switch.remove_port(port).unwrap();
                }
                1 => ports.push(switch.add_port().unwrap()),
                2 => {
                    let port = ports[next(ports.len() as u64) as usize];
                    let _ = switch.restrict(port, station(next(64) as u32));
                }
                3 => switch.set_time(step),
                _ => {}
            }
            let from = ports[next(ports.len() as u64) as usize];
            let destination = match next(8) {
                0 => MacAddress::BROADCAST,
                _ => station(next(64) as u32),
            };
            let source = match next(16) {
                0 => IPV4_MULTICAST,
                _ => station(next(64) as u32),
            };
            let len = next(100) as usize;
            let mut bytes = frame(destination, source, 60);
            bytes.truncate(len.max(10));
            match switch.route(from, &bytes) {
                Route::Deliver(to) => {
                    assert_ne!(to, from);
                    assert!(switch.port_counters(to).is_some(), "{to} exists");
                    delivered += 1;
                }
                Route::Drop(DropReason::UnknownPort) => panic!("{from} exists"),
                Route::Drop(_) | Route::Flood => {}
            }
            assert!(switch.learned_len() <= 32);
            for port in switch.ports() {
                if let Some(address) = switch.restriction(port) {
                    assert_eq!(switch.lookup(address), Some(port));
                }
            }
        }
        assert!(delivered > 1000, "only {delivered} frames delivered");
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(CAPSULE_A.to_string(), "02:4b:45:45:4c:0a");
        assert_eq!(format!("{CAPSULE_A:?}"), "02:4b:45:45:4c:0a");
        assert_eq!(PortId(3).to_string(), "port 3");
        assert_eq!(
            SwitchError::AddressPinnedElsewhere {
                address: CAPSULE_A,
                owner: PortId(1)
            }
            .to_string(),
            "02:4b:45:45:4c:0a is already pinned to port 1"
        );
        assert_eq!(
            SwitchError::NoSuchPort(PortId(9)).to_string(),
            "the switch has no port 9"
        );
        assert_eq!(
            DropReason::Runt.to_string(),
            "frame shorter than the 14-byte Ethernet header"
        );
        assert!(SwitchError::NotStationAddress(MacAddress::BROADCAST)
            .to_string()
            .starts_with("ff:ff:ff:ff:ff:ff is a multicast"));
    }

    #[test]
    fn addresses_are_read_from_frames() {
        let bytes = frame(CAPSULE_B, CAPSULE_A, 14);
        assert_eq!(MacAddress::destination_of(&bytes), Some(CAPSULE_B));
        assert_eq!(MacAddress::source_of(&bytes), Some(CAPSULE_A));
        assert_eq!(MacAddress::source_of(&bytes[..13]), None);
        assert!(CAPSULE_A.is_station());
        assert!(!MacAddress([0; 6]).is_station());
    }
}
