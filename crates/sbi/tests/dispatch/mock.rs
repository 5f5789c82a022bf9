//! A recording `Environment` that also checks the guarantees `dispatch` documents.

use std::collections::{HashMap, VecDeque};

use keel_sbi::{Environment, FenceRange, HartSet, HartState, MachineIds, SbiError};

/// One side effect requested by `dispatch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    SetTimer(u64),
    SendIpi(HartSet),
    ClearIpi,
    RemoteFenceI(HartSet),
    RemoteSfenceVma {
        targets: HartSet,
        range: FenceRange,
        asid: Option<usize>,
    },
    HartStart {
        vcpu: usize,
        start_addr: usize,
        opaque: usize,
    },
    ConsoleWrite {
        address: u64,
        len: usize,
    },
    ConsoleRead {
        address: u64,
        len: usize,
    },
    ConsoleWriteByte(u8),
    ConsoleGetchar,
    ReadGuestVirtual(usize),
}

pub struct MockEnvironment {
    pub vcpu_count: usize,
    pub current_vcpu: usize,
    pub machine_ids: MachineIds,
    pub states: Vec<HartState>,
    pub ipi_pending: bool,
    pub hart_start_result: Result<(), SbiError>,
    pub resume_address_result: Result<(), SbiError>,
    /// Result for console_write/console_read: `Ok(n)` transfers `min(n, len)` bytes.
    pub console_result: Result<usize, SbiError>,
    pub input: VecDeque<u8>,
    /// Guest-virtual words readable by `read_guest_virtual_usize`; other addresses fault.
    pub guest_memory: HashMap<usize, usize>,
    pub events: Vec<Event>,
}

impl MockEnvironment {
    /// A capsule with `vcpu_count` vCPUs, vCPU 0 calling and running, the others stopped.
    pub fn new(vcpu_count: usize) -> MockEnvironment {
        let mut states = vec![HartState::Stopped; vcpu_count];
        if let Some(first) = states.first_mut() {
            *first = HartState::Started;
        }
        MockEnvironment {
            vcpu_count,
            current_vcpu: 0,
            machine_ids: MachineIds {
                mvendorid: 0x489,
                marchid: 0x8000_0000_0000_0007,
                mimpid: 0x2021_0427,
            },
            states,
            ipi_pending: false,
            hart_start_result: Ok(()),
            resume_address_result: Ok(()),
            console_result: Ok(usize::MAX),
            input: VecDeque::new(),
            guest_memory: HashMap::new(),
            events: Vec::new(),
        }
    }

    fn check_targets(&self, targets: HartSet) {
        assert!(!targets.is_empty(), "dispatch passed an empty target set");
        assert!(
            targets.iter().all(|vcpu| vcpu < self.vcpu_count),
            "dispatch passed {targets:?} for {} vCPUs",
            self.vcpu_count
        );
    }

    fn check_vcpu(&self, vcpu: usize) {
        assert!(
            vcpu < self.vcpu_count,
            "dispatch passed vCPU {vcpu} for {} vCPUs",
            self.vcpu_count
        );
    }
}

impl Environment for MockEnvironment {
    fn vcpu_count(&self) -> usize {
        self.vcpu_count
    }

    fn current_vcpu(&self) -> usize {
        self.current_vcpu
    }

    fn machine_ids(&self) -> MachineIds {
        self.machine_ids
    }

    fn set_timer(&mut self, stime_value: u64) {
        self.events.push(Event::SetTimer(stime_value));
    }

    fn send_ipi(&mut self, targets: HartSet) {
        self.check_targets(targets);
        self.events.push(Event::SendIpi(targets));
    }

    fn clear_ipi(&mut self) -> bool {
        self.events.push(Event::ClearIpi);
        std::mem::replace(&mut self.ipi_pending, false)
    }

    fn remote_fence_i(&mut self, targets: HartSet) {
        self.check_targets(targets);
        self.events.push(Event::RemoteFenceI(targets));
    }

    fn remote_sfence_vma(&mut self, targets: HartSet, range: FenceRange, asid: Option<usize>) {
        self.check_targets(targets);
        if let FenceRange::Range { start, size } = range {
            assert!(size >= 1, "empty fence range passed");
            assert!(
                start.checked_add(size - 1).is_some(),
                "wrapping fence range"
            );
        }
        self.events.push(Event::RemoteSfenceVma {
            targets,
            range,
            asid,
        });
    }

    fn hart_start(
        &mut self,
        vcpu: usize,
        start_addr: usize,
        opaque: usize,
    ) -> Result<(), SbiError> {
        self.check_vcpu(vcpu);
        assert_ne!(
            vcpu, self.current_vcpu,
            "dispatch asked a vCPU to start itself"
        );
        self.events.push(Event::HartStart {
            vcpu,
            start_addr,
            opaque,
        });
        self.hart_start_result
    }

    fn hart_status(&self, vcpu: usize) -> HartState {
        self.check_vcpu(vcpu);
        self.states[vcpu]
    }

    fn validate_resume_address(&self, _resume_addr: usize) -> Result<(), SbiError> {
        self.resume_address_result
    }

    fn console_write(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError> {
        assert!(len >= 1, "empty console write passed");
        self.events.push(Event::ConsoleWrite {
            address: guest_address,
            len,
        });
        self.console_result
    }

    fn console_read(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError> {
        assert!(len >= 1, "empty console read passed");
        self.events.push(Event::ConsoleRead {
            address: guest_address,
            len,
        });
        self.console_result
    }

    fn console_write_byte(&mut self, byte: u8) {
        self.events.push(Event::ConsoleWriteByte(byte));
    }

    fn console_getchar(&mut self) -> Option<u8> {
        self.events.push(Event::ConsoleGetchar);
        self.input.pop_front()
    }

    fn read_guest_virtual_usize(
        &mut self,
        guest_virtual_address: usize,
    ) -> Result<usize, SbiError> {
        self.events
            .push(Event::ReadGuestVirtual(guest_virtual_address));
        self.guest_memory
            .get(&guest_virtual_address)
            .copied()
            .ok_or(SbiError::InvalidAddress)
    }
}
