//! Fuzzes SBI dispatch: sequences of calls with arbitrary registers against a fake capsule whose
//! environment checks every promise `dispatch` makes about the arguments it passes on.
#![no_main]

use arbitrary::Arbitrary;
use keel_sbi::{
    dispatch, Call, Environment, FenceRange, HartSet, HartState, MachineIds, Outcome, SbiError,
};
use libfuzzer_sys::fuzz_target;

/// Guest RAM of the fake capsule: `RAM_LEN` bytes from `RAM_BASE`; accesses outside it fail as
/// they would in Keel.
const RAM_BASE: u64 = 0x8000_0000;
const RAM_LEN: usize = 16 * 1024;

/// Extension IDs worth reaching often: the implemented extensions and the legacy calls.
const EIDS: [usize; 15] = [
    0x10,        // BASE
    0x5449_4d45, // TIME
    0x73_5049,   // IPI "sPI"
    0x5246_4e43, // RFENCE
    0x48_534d,   // HSM
    0x5352_5354, // SRST
    0x4442_434e, // DBCN
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
];

#[derive(Debug, Arbitrary)]
struct Input {
    vcpus: u8,
    current: u8,
    states: [u8; 8],
    ram: Vec<u8>,
    console_input: Vec<u8>,
    calls: Vec<CallInput>,
}

#[derive(Debug, Arbitrary)]
struct CallInput {
    /// Below `EIDS.len()`: one of the known extensions; otherwise `a7` is used as it is.
    extension: u8,
    /// Keep the function ID small, where the defined functions are.
    small_fid: bool,
    /// Keep address-like arguments near guest RAM, where they can be valid.
    near_ram: u8,
    /// Keep count-like arguments small (below 64), where they can be valid.
    small: u8,
    registers: [u64; 8],
}

fuzz_target!(|input: Input| {
    let vcpus = usize::from(input.vcpus % 9).max(1);
    let states = input.states.map(|state| match state % 7 {
        0 => HartState::Started,
        1 => HartState::Stopped,
        2 => HartState::StartPending,
        3 => HartState::StopPending,
        4 => HartState::Suspended,
        5 => HartState::SuspendPending,
        _ => HartState::ResumePending,
    });
    let mut capsule = FakeCapsule {
        vcpus,
        current: usize::from(input.current) % vcpus,
        states,
        ram: {
            let mut ram = vec![0u8; RAM_LEN];
            let initial = input.ram.len().min(RAM_LEN);
            ram[..initial].copy_from_slice(&input.ram[..initial]);
            ram
        },
        console_input: input.console_input,
        console_output: Vec::new(),
    };
    capsule.states[capsule.current] = HartState::Started;

    for call in input.calls.iter().take(16) {
        let mut registers = call.registers.map(|register| register as usize);
        if let Some(&eid) = EIDS.get(usize::from(call.extension)) {
            registers[7] = eid;
        }
        if call.small_fid {
            registers[6] %= 16;
        }
        for (index, register) in registers.iter_mut().take(6).enumerate() {
            if call.near_ram & (1 << index) != 0 {
                *register = RAM_BASE as usize + *register % (RAM_LEN + 0x100);
            } else if call.small & (1 << index) != 0 {
                *register %= 64;
            }
        }
        let outcome = dispatch(&Call::from_registers(registers), &mut capsule);
        match outcome {
            Outcome::Return { error, value } => {
                if error != 0 {
                    assert!(
                        SbiError::from_code(error).is_some(),
                        "undefined error code {error}"
                    );
                    assert_eq!(value, 0, "a failed call returned a value");
                }
            }
            // Legacy `console_getchar` (EID 2) returns the byte read, or -1 when there is none.
            Outcome::Legacy(code) if registers[7] == 2 => assert!((-1..=255).contains(&code)),
            Outcome::Legacy(code) => assert!(code == 0 || SbiError::from_code(code).is_some()),
            Outcome::Reset { .. } | Outcome::HartStop | Outcome::Suspend(_) => {}
        }
        let _ = format!("{outcome:?}");
    }
});

struct FakeCapsule {
    vcpus: usize,
    current: usize,
    states: [HartState; 8],
    ram: Vec<u8>,
    console_input: Vec<u8>,
    console_output: Vec<u8>,
}

impl FakeCapsule {
    fn ram_range(&self, address: u64, len: usize) -> Result<core::ops::Range<usize>, SbiError> {
        let start = address
            .checked_sub(RAM_BASE)
            .and_then(|offset| usize::try_from(offset).ok())
            .ok_or(SbiError::InvalidParam)?;
        let end = start.checked_add(len).ok_or(SbiError::InvalidParam)?;
        if end > self.ram.len() {
            return Err(SbiError::InvalidParam);
        }
        Ok(start..end)
    }

    fn check_targets(&self, targets: HartSet) {
        assert!(!targets.is_empty(), "dispatch passed an empty hart set");
        assert_eq!(
            targets.bits() & !HartSet::all(self.vcpus).bits(),
            0,
            "dispatch passed a hart set naming vCPUs the capsule does not have"
        );
    }
}

impl Environment for FakeCapsule {
    fn vcpu_count(&self) -> usize {
        self.vcpus
    }

    fn current_vcpu(&self) -> usize {
        self.current
    }

    fn machine_ids(&self) -> MachineIds {
        MachineIds {
            mvendorid: 0,
            marchid: 0x4b,
            mimpid: 1,
        }
    }

    fn set_timer(&mut self, _stime_value: u64) {}

    fn send_ipi(&mut self, targets: HartSet) {
        self.check_targets(targets);
    }

    fn clear_ipi(&mut self) -> bool {
        false
    }

    fn remote_fence_i(&mut self, targets: HartSet) {
        self.check_targets(targets);
    }

    fn remote_sfence_vma(&mut self, targets: HartSet, range: FenceRange, _asid: Option<usize>) {
        self.check_targets(targets);
        if let FenceRange::Range { start, size } = range {
            assert!(size >= 1 && start.checked_add(size - 1).is_some());
        }
    }

    fn hart_start(
        &mut self,
        vcpu: usize,
        start_addr: usize,
        _opaque: usize,
    ) -> Result<(), SbiError> {
        assert!(
            vcpu < self.vcpus && vcpu != self.current,
            "hart_start for vCPU {vcpu}"
        );
        if self.states[vcpu] != HartState::Stopped {
            return Err(SbiError::AlreadyAvailable);
        }
        self.ram_range(start_addr as u64, 4)
            .map_err(|_| SbiError::InvalidAddress)?;
        self.states[vcpu] = HartState::StartPending;
        Ok(())
    }

    fn hart_status(&self, vcpu: usize) -> HartState {
        assert!(vcpu < self.vcpus, "hart_status for vCPU {vcpu}");
        self.states[vcpu]
    }

    fn validate_resume_address(&self, resume_addr: usize) -> Result<(), SbiError> {
        self.ram_range(resume_addr as u64, 4)
            .map(|_| ())
            .map_err(|_| SbiError::InvalidAddress)
    }

    fn console_write(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError> {
        assert!(len >= 1, "console_write of nothing");
        let range = self.ram_range(guest_address, len)?;
        let bytes = self.ram[range].to_vec();
        self.console_output.extend_from_slice(&bytes);
        Ok(bytes.len())
    }

    fn console_read(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError> {
        assert!(len >= 1, "console_read into nothing");
        let range = self.ram_range(guest_address, len)?;
        let count = len.min(self.console_input.len());
        let taken: Vec<u8> = self.console_input.drain(..count).collect();
        self.ram[range.start..range.start + count].copy_from_slice(&taken);
        Ok(count)
    }

    fn console_write_byte(&mut self, byte: u8) {
        self.console_output.push(byte);
    }

    fn console_getchar(&mut self) -> Option<u8> {
        (!self.console_input.is_empty()).then(|| self.console_input.remove(0))
    }

    fn read_guest_virtual_usize(
        &mut self,
        guest_virtual_address: usize,
    ) -> Result<usize, SbiError> {
        // The fake capsule runs with translation off: guest-virtual is guest-physical.
        let range = self
            .ram_range(guest_virtual_address as u64, 8)
            .map_err(|_| SbiError::InvalidAddress)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.ram[range]);
        Ok(u64::from_le_bytes(word) as usize)
    }
}
