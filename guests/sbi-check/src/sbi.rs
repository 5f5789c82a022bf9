//! The SBI calls the guests make, as typed wrappers over `ecall`.

use crate::SbiResult;
use sbi_spec::{base, dbcn, hsm, legacy, rfnc, spi, srst, time};

use crate::arch;

/// A v0.2+ call with up to six arguments.
pub fn call(eid: usize, fid: usize, args: [usize; 6]) -> SbiResult {
    let (error, value) = arch::ecall(eid, fid, args);
    SbiResult { error, value }
}

fn base_call(fid: usize, argument: usize) -> SbiResult {
    call(base::EID_BASE, fid, [argument, 0, 0, 0, 0, 0])
}

pub fn spec_version() -> SbiResult {
    base_call(base::GET_SBI_SPEC_VERSION, 0)
}

pub fn implementation_id() -> SbiResult {
    base_call(base::GET_SBI_IMPL_ID, 0)
}

pub fn implementation_version() -> SbiResult {
    base_call(base::GET_SBI_IMPL_VERSION, 0)
}

pub fn probe_extension(eid: usize) -> SbiResult {
    base_call(base::PROBE_EXTENSION, eid)
}

pub fn mvendorid() -> SbiResult {
    base_call(base::GET_MVENDORID, 0)
}

pub fn marchid() -> SbiResult {
    base_call(base::GET_MARCHID, 0)
}

pub fn mimpid() -> SbiResult {
    base_call(base::GET_MIMPID, 0)
}

pub fn set_timer(stime_value: u64) -> SbiResult {
    // RV64 passes the whole 64-bit value in a0.
    call(
        time::EID_TIME,
        time::SET_TIMER,
        [stime_value as usize, 0, 0, 0, 0, 0],
    )
}

pub fn send_ipi(hart_mask: usize, hart_mask_base: usize) -> SbiResult {
    call(
        spi::EID_SPI,
        spi::SEND_IPI,
        [hart_mask, hart_mask_base, 0, 0, 0, 0],
    )
}

pub fn remote_fence_i(hart_mask: usize, hart_mask_base: usize) -> SbiResult {
    call(
        rfnc::EID_RFNC,
        rfnc::REMOTE_FENCE_I,
        [hart_mask, hart_mask_base, 0, 0, 0, 0],
    )
}

pub fn remote_sfence_vma(
    hart_mask: usize,
    hart_mask_base: usize,
    start: usize,
    size: usize,
) -> SbiResult {
    call(
        rfnc::EID_RFNC,
        rfnc::REMOTE_SFENCE_VMA,
        [hart_mask, hart_mask_base, start, size, 0, 0],
    )
}

pub fn hart_start(hartid: usize, start_address: usize, opaque: usize) -> SbiResult {
    call(
        hsm::EID_HSM,
        hsm::HART_START,
        [hartid, start_address, opaque, 0, 0, 0],
    )
}

pub fn hart_get_status(hartid: usize) -> SbiResult {
    call(hsm::EID_HSM, hsm::HART_GET_STATUS, [hartid, 0, 0, 0, 0, 0])
}

/// DBCN `sbi_debug_console_write` of `len` bytes at physical `address` (the high half is 0 on RV64).
pub fn console_write(address: usize, len: usize) -> SbiResult {
    call(
        dbcn::EID_DBCN,
        dbcn::CONSOLE_WRITE,
        [len, address, 0, 0, 0, 0],
    )
}

/// Legacy `sbi_console_putchar`; returns `a0`.
pub fn legacy_console_putchar(byte: u8) -> isize {
    arch::ecall(
        legacy::LEGACY_CONSOLE_PUTCHAR,
        0,
        [usize::from(byte), 0, 0, 0, 0, 0],
    )
    .0
}

/// Powers the machine off: SRST shutdown, else the legacy shutdown call, else waits forever.
pub fn shutdown() -> ! {
    call(
        srst::EID_SRST,
        srst::SYSTEM_RESET,
        [
            srst::RESET_TYPE_SHUTDOWN as usize,
            srst::RESET_REASON_NO_REASON as usize,
            0,
            0,
            0,
            0,
        ],
    );
    arch::ecall(legacy::LEGACY_SHUTDOWN, 0, [0; 6]);
    loop {
        arch::wait_for_interrupt();
    }
}
