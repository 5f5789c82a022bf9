//! The `Environment` trait through which dispatch queries and changes the calling vCPU's capsule.

use sbi_spec::hsm::hart_state;

use crate::{HartSet, SbiError};

/// Values the BASE extension reports for the machine identification CSRs.
///
/// 0 is always a legal value for each of them (SBI v2.0 §4.5–4.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineIds {
    /// Reported for `mvendorid`.
    pub mvendorid: usize,
    /// Reported for `marchid`.
    pub marchid: usize,
    /// Reported for `mimpid`.
    pub mimpid: usize,
}

/// The HSM state of a vCPU (SBI v2.0 §9, table "HSM Hart States").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HartState {
    /// Executing normally.
    Started,
    /// Not executing in VS-mode or VU-mode.
    Stopped,
    /// A start was requested and has not completed yet.
    StartPending,
    /// A stop was requested and has not completed yet.
    StopPending,
    /// In a suspend state.
    Suspended,
    /// A suspend was requested and has not completed yet.
    SuspendPending,
    /// Waking from a suspend state and not executing yet.
    ResumePending,
}

impl HartState {
    /// The HSM state id returned by `sbi_hart_get_status`.
    pub const fn id(self) -> usize {
        match self {
            HartState::Started => hart_state::STARTED,
            HartState::Stopped => hart_state::STOPPED,
            HartState::StartPending => hart_state::START_PENDING,
            HartState::StopPending => hart_state::STOP_PENDING,
            HartState::Suspended => hart_state::SUSPENDED,
            HartState::SuspendPending => hart_state::SUSPEND_PENDING,
            HartState::ResumePending => hart_state::RESUME_PENDING,
        }
    }
}

/// The guest-virtual address range a remote `SFENCE.VMA` must cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FenceRange {
    /// The whole address space.
    All,
    /// `size` bytes starting at `start`; `size` is at least 1 and `start + size` does not
    /// exceed 2^XLEN.
    Range {
        /// First guest-virtual address to fence.
        start: usize,
        /// Length of the range in bytes.
        size: usize,
    },
}

impl FenceRange {
    /// Interprets the `(start_addr, size)` arguments of an RFENCE call.
    ///
    /// Per the spec, `start_addr == 0 && size == 0` and `size == usize::MAX` (2^XLEN - 1) both
    /// mean the whole address space. A range that would wrap past the top of the address space
    /// is also widened to the whole address space: fencing more than asked is always correct,
    /// while failing the call would leave stale translations in a guest that ignores errors.
    /// Returns `None` for an empty range (`size == 0` with a non-zero start), which needs no
    /// fence at all.
    pub const fn new(start: usize, size: usize) -> Option<FenceRange> {
        if (start == 0 && size == 0) || size == usize::MAX {
            return Some(FenceRange::All);
        }
        if size == 0 {
            return None;
        }
        // The last byte is `start + size - 1`; it must not wrap.
        match start.checked_add(size - 1) {
            Some(_) => Some(FenceRange::Range { start, size }),
            None => Some(FenceRange::All),
        }
    }
}

/// What the hypervisor provides for the vCPU that executed the `ecall`.
///
/// [`dispatch`](crate::dispatch) validates every argument the SBI specification defines an error
/// for before calling a method, so implementations receive only in-range vCPU ids and
/// [`HartSet`]s whose members exist. Methods that return `Result` may fail with the errors the
/// specification lists for the corresponding call; those errors go to the guest unchanged.
pub trait Environment {
    /// Number of vCPUs in the capsule (vCPU ids are `0..vcpu_count`). At most
    /// [`HartSet::MAX_HARTS`] are addressable; a larger count is treated as that maximum.
    fn vcpu_count(&self) -> usize;

    /// Id of the vCPU that made the call.
    fn current_vcpu(&self) -> usize;

    /// Values to report for `mvendorid`, `marchid` and `mimpid`.
    fn machine_ids(&self) -> MachineIds;

    /// Programs the calling vCPU's supervisor timer to fire at the absolute time `stime_value`
    /// and, as the spec requires, clears its pending timer interrupt if that time is in the future.
    fn set_timer(&mut self, stime_value: u64);

    /// Makes a supervisor software interrupt pending on each vCPU in `targets` (never empty).
    fn send_ipi(&mut self, targets: HartSet);

    /// Clears the calling vCPU's pending supervisor software interrupt; returns whether one was
    /// pending. Only the legacy `sbi_clear_ipi` uses this.
    fn clear_ipi(&mut self) -> bool;

    /// Makes each vCPU in `targets` (never empty) execute `FENCE.I` before it next runs guest
    /// code.
    fn remote_fence_i(&mut self, targets: HartSet);

    /// Flushes the guest's VS-stage translations for `range` on each vCPU in `targets` (never
    /// empty), limited to `asid` when it is `Some`.
    fn remote_sfence_vma(&mut self, targets: HartSet, range: FenceRange, asid: Option<usize>);

    /// Starts the stopped vCPU `vcpu` (an id other than the caller's, below `vcpu_count`) in
    /// VS-mode at guest-physical `start_addr` with `a0 = vcpu`, `a1 = opaque`, `satp = 0` and
    /// `sstatus.SIE = 0`.
    ///
    /// Should fail with [`SbiError::AlreadyAvailable`] if the vCPU is not stopped and
    /// [`SbiError::InvalidAddress`] if `start_addr` is not executable guest memory. The check
    /// and the state change must be one atomic step, since several vCPUs may race to start
    /// the same one.
    fn hart_start(&mut self, vcpu: usize, start_addr: usize, opaque: usize)
        -> Result<(), SbiError>;

    /// The HSM state of `vcpu` (below `vcpu_count`).
    fn hart_status(&self, vcpu: usize) -> HartState;

    /// Checks that guest-physical `resume_addr` may be resumed at after a non-retentive
    /// suspend; fails with [`SbiError::InvalidAddress`] otherwise.
    fn validate_resume_address(&self, resume_addr: usize) -> Result<(), SbiError>;

    /// Writes up to `len` (at least 1) bytes from guest-physical `guest_address` to the debug
    /// console; returns how many were written. Should fail with [`SbiError::InvalidParam`]
    /// if the buffer is not entirely inside the capsule's RAM.
    fn console_write(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError>;

    /// Reads up to `len` (at least 1) bytes from the debug console into guest-physical
    /// `guest_address`, without blocking; returns how many were read. Should fail with
    /// [`SbiError::InvalidParam`] if the buffer is not entirely inside the capsule's RAM.
    fn console_read(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError>;

    /// Writes one byte to the debug console, blocking until it is accepted.
    fn console_write_byte(&mut self, byte: u8);

    /// Reads one byte from the debug console without blocking.
    fn console_getchar(&mut self) -> Option<u8>;

    /// Reads an `unsigned long` at guest-virtual `guest_virtual_address`, translating it through
    /// the calling vCPU's current VS-stage and G-stage tables (as `HLV.D` would). Used for the
    /// legacy calls' hart-mask pointers.
    fn read_guest_virtual_usize(&mut self, guest_virtual_address: usize)
        -> Result<usize, SbiError>;
}
