//! Running vCPUs: each hart's loop, and what Keel does on every kind of guest exit.
//!
//! A trap flows like this: the guest traps → `keel_guest_exit` saves it into the vCPU's [`Context`] and returns
//! from `run_guest` → [`handle_exit`] decides (SBI call, MMIO emulation, injected fault, interrupt) → the loop
//! applies pending cross-hart requests and enters the guest again.

use alloc::{sync::Arc, vec::Vec};
use core::sync::atomic::Ordering;

use keel_insn::{Access, MmioInsn};
use keel_dmfs::RestartPolicy;
use keel_sbi::{
    Call, Environment, FenceRange, HartSet, HartState, MachineIds, Outcome, ResetKind, ResetReason, SbiError,
};

use crate::arch::{self, cause, csr, csr::bits};
use crate::capsule::{self, Capsule, RunState, Vcpu, CAPSULES};
use crate::hart;
use crate::sched::{self, SliceEnd};
use crate::{console, firmware, hostirq, manage, vdev, PLATFORM};

/// A warning about something a capsule did, within the capsule's log budget (see [`capsule::LogLimit`]).
macro_rules! guest_warn {
    ($capsule:expr, $($arg:tt)+) => {
        if $capsule.log_limit.allow(&$capsule.name) {
            log::warn!($($arg)+);
        }
    };
}

/// Sets up the hypervisor CSRs that are the same for every guest on this hart.
pub fn init_hart() {
    csr::hedeleg::write(arch::GUEST_DELEGATED_EXCEPTIONS);
    csr::hideleg::write(arch::GUEST_DELEGATED_INTERRUPTS);
    csr::hcounteren::write(bits::COUNTEREN_CY_TM_IR);
    csr::htimedelta::write(0);
    csr::hvip::write(0);
    let sstc = sched::sstc();
    csr::henvcfg::write(if sstc { bits::HENVCFG_STCE } else { 0 });
    // Keel's own timer stays disarmed until it needs one: with Sstc the firmware may have left stimecmp in the
    // past, which would raise a supervisor timer interrupt at every guest entry.
    sched::arm_timer(u64::MAX);
    // Interrupts that reach Keel while a guest runs: IPIs from other harts, and the host timer and UART.
    csr::sie::write(bits::IRQ_S_SOFT | bits::IRQ_S_EXT | bits::IRQ_S_TIMER);
    arch::hfence_gvma_all();
}

/// What the exit handler wants the run loop to do next.
enum Next {
    Resume,
    /// Give the hart to another vCPU (slice over, WFI, or a waiting vCPU woke up).
    Yield,
    /// The vCPU stopped (HSM stop); it stays queued until it is started again.
    Stop,
    /// The capsule shut down or rebooted.
    Reset(ResetKind, ResetReason),
    /// The capsule did something Keel will not allow; it is stopped.
    Kill,
}

/// Runs `vcpu` (already switched in) until its slice ends, it waits or stops, or its capsule goes away.
#[link_section = ".text.hot.1"]
pub fn run_vcpu(hartid: usize, vcpu: &mut Vcpu) -> SliceEnd {
    let capsule = vcpu.capsule.clone();
    let slice_end = sched::slice_deadline(hartid);
    let mut queued_deadline = sched::queued_deadline(hartid);
    let sstc = sched::sstc();
    let watchdog_period = sched::ticks(TIMER_WATCHDOG_MICROSECONDS);
    let mut watchdog = 0;
    let mut armed = u64::MAX;
    loop {
        apply_requests(vcpu);
        // WFI traps (and yields the hart) only while other vCPUs share the hart; alone, the guest's WFI runs
        // natively and an idle guest costs no exits.
        if sched::shared_hart(hartid) {
            vcpu.context.guest.hstatus |= bits::HSTATUS_VTW;
        } else {
            vcpu.context.guest.hstatus &= !bits::HSTATUS_VTW;
        }
        let mut deadline = slice_end.min(queued_deadline);
        if sstc {
            // Pushed on lazily (at most twice a period) so that busy guests do not re-arm the timer on every exit.
            let now = csr::time::read();
            if watchdog <= now.saturating_add(watchdog_period / 2) {
                watchdog = now.saturating_add(watchdog_period);
            }
            deadline = deadline.min(watchdog);
        } else {
            deadline = deadline.min(vcpu.guest_deadline);
        }
        if deadline != armed {
            sched::arm_timer(deadline);
            armed = deadline;
        }

        crate::vcpu::run_guest(&mut vcpu.context);

        let mut next = handle_exit(vcpu, hartid, slice_end);
        // Work done in this exit (an IPI, a started vCPU, a device interrupt) may have woken a vCPU that shares
        // this hart: let it run now rather than at the end of the slice.
        if matches!(next, Next::Resume) && hart::take_reschedule(hartid) && sched::woken_waiting(hartid) {
            next = Next::Yield;
        }
        if vcpu.context.exit.scause & cause::INTERRUPT != 0 {
            // A kick or a timer may have changed what waits on this hart.
            queued_deadline = sched::queued_deadline(hartid);
            armed = u64::MAX - 1;
        }
        match next {
            Next::Resume => {}
            Next::Yield => return SliceEnd::Requeue,
            Next::Stop => {
                capsule.vcpus[vcpu.index].set_state(RunState::Stopped);
                return SliceEnd::Requeue;
            }
            Next::Reset(kind, reason) => {
                log_exits(&capsule);
                let failed = reason == ResetReason::SystemFailure;
                match kind {
                    ResetKind::Shutdown => after_shutdown(&capsule, vcpu.index, failed),
                    _ => reboot_capsule(&capsule, vcpu.index),
                }
                return SliceEnd::Drop;
            }
            Next::Kill => {
                log_exits(&capsule);
                after_shutdown(&capsule, vcpu.index, true);
                return SliceEnd::Drop;
            }
        }
        if capsule.generation.load(Ordering::Acquire) != vcpu.generation || capsule.stopped.load(Ordering::Acquire) {
            return SliceEnd::Drop;
        }
    }
}

/// With Sstc a running guest's timer interrupt never passes through Keel, so a hart that loses one leaves the
/// guest waiting for a tick that does not come. QEMU 7.2 does, now and then: its `riscv_cpu_update_mip` reads the
/// VS timer's pending flag before taking the big lock, so a guest entry (or an `hvip` update) racing with the
/// timer's expiry can withdraw the CPU's interrupt request while the flag stays set. The guest then spins in its
/// idle loop with VSTIP pending but never taken. Any exit repairs it (the next entry recomputes the request, and
/// [`repair_guest_timer`] re-raises it), so Keel makes sure a vCPU never runs longer than this without one. An
/// idle guest pays one exit per period for it.
const TIMER_WATCHDOG_MICROSECONDS: u64 = 1_000_000;

/// On a host timer exit with Sstc (taken at `now`): a guest timer that is already due is written again, which
/// raises its interrupt afresh. Where no interrupt was lost this changes nothing: VSTIP stays pending until the
/// guest moves its deadline.
fn repair_guest_timer(now: u64) {
    let deadline = csr::vstimecmp::read();
    if deadline <= now {
        csr::vstimecmp::write(deadline);
    }
}

/// Reports how often each of a capsule's vCPUs trapped into Keel, by cause.
fn log_exits(capsule: &Capsule) {
    for (index, vcpu) in capsule.vcpus.iter().enumerate() {
        let e = &vcpu.exits;
        log::info!(
            "capsule '{}' vCPU {index}: {} exits (SBI {}, MMIO {}, virtual instruction {}, faults injected {}, host timer {}, host external {}, IPIs {}, other {})",
            capsule.name,
            e.total(),
            e.sbi.get(),
            e.mmio.get(),
            e.virtual_instruction.get(),
            e.injected_faults.get(),
            e.host_timer.get(),
            e.host_external.get(),
            e.host_software.get(),
            e.other.get()
        );
    }
}

/// Applies what other harts (or devices) asked of this vCPU since it last ran.
#[link_section = ".text.hot.1"]
fn apply_requests(vcpu: &mut Vcpu) {
    let shared = vcpu.shared();
    if take_request(&shared.ipi) {
        csr::hvip::set(bits::IRQ_VS_SOFT);
    }
    if take_request(&shared.fence_i) {
        arch::fence_i();
    }
    if take_request(&shared.flush_vvma) {
        arch::hfence_vvma_all();
    }
    if take_request(&shared.irq_changed) {
        apply_external_interrupt(vcpu);
    }
}

/// Clears a request flag and says whether it was set. This runs before every guest entry and the flags are almost
/// always clear, so a plain load comes first: an atomic read-modify-write costs more than a load on every exit.
/// A flag set just after the load is not lost: whoever sets it also kicks this hart, so it is taken at the next
/// entry, as it would be had it been set just after a swap.
#[link_section = ".text.hot.1"]
fn take_request(flag: &core::sync::atomic::AtomicBool) -> bool {
    flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::AcqRel)
}

/// Sets or clears VSEIP to the level the virtual PLIC last asked for this vCPU.
#[link_section = ".text.hot.1"]
fn apply_external_interrupt(vcpu: &Vcpu) {
    if vcpu.shared().external.load(Ordering::Acquire) {
        csr::hvip::set(bits::IRQ_VS_EXT);
    } else {
        csr::hvip::clear(bits::IRQ_VS_EXT);
    }
}

/// Decides what a guest exit means and carries it out.
#[link_section = ".text.hot.1"]
fn handle_exit(vcpu: &mut Vcpu, hartid: usize, slice_end: u64) -> Next {
    let exit = vcpu.context.exit;
    if exit.scause & cause::INTERRUPT != 0 {
        return handle_interrupt(vcpu, hartid, slice_end, exit.scause & !cause::INTERRUPT);
    }
    match exit.scause {
        cause::VIRTUAL_SUPERVISOR_ECALL => {
            vcpu.shared().exits.sbi.bump();
            handle_sbi(vcpu)
        }
        cause::LOAD_GUEST_PAGE_FAULT | cause::STORE_GUEST_PAGE_FAULT => {
            vcpu.shared().exits.mmio.bump();
            handle_guest_page_fault(vcpu)
        }
        cause::INSTRUCTION_GUEST_PAGE_FAULT => {
            let gpa = (exit.htval << 2) | (exit.stval & 3);
            guest_warn!(
                vcpu.capsule,
                "capsule '{}' vCPU {} fetched from {gpa:#x}, outside its memory; injecting an access fault",
                vcpu.capsule.name,
                vcpu.index
            );
            inject_exception(vcpu, cause::INSTRUCTION_ACCESS_FAULT, exit.stval);
            Next::Resume
        }
        cause::VIRTUAL_INSTRUCTION => {
            vcpu.shared().exits.virtual_instruction.bump();
            if exit.stval == WFI && vcpu.context.guest.hstatus & bits::HSTATUS_VTW != 0 {
                // WFI while other vCPUs share the hart: wait off the hart until an interrupt is pending.
                vcpu.context.guest.sepc += 4;
                vcpu.waiting = true;
                return Next::Yield;
            }
            if vcpu.context.guest.hstatus & bits::HSTATUS_VTVM != 0 {
                if let Some(next) = emulate_translation_insn(vcpu, exit.stval) {
                    return next;
                }
            }
            // Nothing else is emulated this way: the guest used an instruction its privilege does not allow.
            inject_exception(vcpu, cause::ILLEGAL_INSTRUCTION, exit.stval);
            Next::Resume
        }
        other => {
            vcpu.shared().exits.other.bump();
            log::error!(
                "capsule '{}' vCPU {}: unexpected trap cause {other} at pc {:#x} (stval {:#x})",
                vcpu.capsule.name,
                vcpu.index,
                vcpu.context.guest.sepc,
                exit.stval
            );
            Next::Kill
        }
    }
}

/// The encoding of `wfi`, as `stval` reports it for a virtual-instruction exception.
const WFI: u64 = 0x1050_0073;

/// Answers a guest's `satp` access or `sfence.vma` while its paging probe is armed (`hstatus.VTVM`, set at every
/// vCPU reset), or returns `None` for any other instruction.
///
/// A guest's kernel finds its paging mode by writing `satp` and reading it back. Left alone it would see every mode
/// the hart has and pick the deepest (Sv57 on QEMU), so here `satp` offers only Bare and modes up to
/// [`crate::platform::GUEST_PAGING`]: a write naming another mode changes nothing, as on a hart without it. Once the
/// guest turns on a mode Keel offers, its choice is made and the trap is disarmed; from then on its `satp` writes
/// and fences run without exits.
fn emulate_translation_insn(vcpu: &mut Vcpu, stval: u64) -> Option<Next> {
    use keel_insn::translation::{self, CsrOperand, TranslationInsn};

    // From VU-mode these instructions are not the kernel's to answer: they stay illegal, as on the hardware.
    if vcpu.context.guest.sstatus & bits::SSTATUS_SPP == 0 {
        return None;
    }
    let raw = match u32::try_from(stval) {
        Ok(raw) if raw != 0 => raw,
        _ => fetch_guest_instruction(vcpu.context.guest.sepc).ok()?,
    };
    match translation::decode_translation(raw)? {
        TranslationInsn::SfenceVma { .. } => {
            arch::hfence_vvma_all();
            // A hart that traps fences but not satp accesses (QEMU 7.2 does so) let the guest choose its mode
            // unseen; once it translates, nothing is left to answer.
            if translation::satp_mode_of(csr::vsatp::read()) != translation::satp_mode::BARE {
                vcpu.context.guest.hstatus &= !bits::HSTATUS_VTVM;
            }
        }
        TranslationInsn::Csr(insn) if insn.csr == translation::CSR_SATP => {
            let guest = &mut vcpu.context.guest;
            let old = csr::vsatp::read();
            let operand = match insn.operand {
                CsrOperand::Register(rs1) => guest.x[rs1 as usize],
                CsrOperand::Immediate(imm) => u64::from(imm),
            };
            if let Some(written) = insn.written(old, operand) {
                let new = translation::satp_after_write(old, written, crate::platform::GUEST_PAGING);
                csr::vsatp::write(new);
                if translation::satp_mode_of(new) != translation::satp_mode::BARE {
                    guest.hstatus &= !bits::HSTATUS_VTVM;
                }
            }
            if insn.rd != 0 {
                guest.x[insn.rd as usize] = old;
            }
        }
        TranslationInsn::Csr(_) => return None,
    }
    vcpu.context.guest.sepc += 4;
    Some(Next::Resume)
}

#[link_section = ".text.hot.1"]
fn handle_interrupt(vcpu: &mut Vcpu, hartid: usize, slice_end: u64, code: u64) -> Next {
    match code {
        cause::IRQ_S_SOFT => {
            vcpu.shared().exits.host_software.bump();
            csr::sip::clear(bits::IRQ_S_SOFT);
        }
        cause::IRQ_S_EXT => {
            vcpu.shared().exits.host_external.bump();
            service_host_external();
        }
        cause::IRQ_S_TIMER => {
            vcpu.shared().exits.host_timer.bump();
            sched::arm_timer(u64::MAX);
            let now = csr::time::read();
            if sched::sstc() {
                repair_guest_timer(now);
            } else if now >= vcpu.guest_deadline {
                // Without Sstc the guest's timer is Keel's: forward it as VSTIP.
                csr::hvip::set(bits::IRQ_VS_TIMER);
                vcpu.guest_deadline = u64::MAX;
            }
            if now >= slice_end {
                return Next::Yield;
            }
        }
        _ => vcpu.shared().exits.other.bump(),
    }
    // Something on this hart may have woken up (a timer deadline, an IPI, console input): let it run.
    if sched::woken_waiting(hartid) {
        return Next::Yield;
    }
    Next::Resume
}

/// Serves the machine's interrupts routed to this hart: the NIC's frames go into the capsules' switch, the UART's
/// input to the focused capsule.
pub fn service_host_external() {
    loop {
        let source = hostirq::claim();
        if source == 0 {
            break;
        }
        if Some(source) == crate::hostnic::irq() {
            crate::vnet::service_uplink();
        } else {
            service_console_input();
        }
        hostirq::complete(source);
    }
}

/// Drains the host UART into the focused capsule, acting on the focus escape sequence on the way.
fn service_console_input() {
    let mut bytes = [0u8; 64];
    let mut count = 0;
    while count < bytes.len() {
        let Some(byte) = console::get_byte() else { break };
        match capsule::focus_filter(byte) {
            Some(byte) => {
                bytes[count] = byte;
                count += 1;
            }
            // Part of a focus escape, which may move the focus: what was typed before it belongs to the
            // capsule that had the focus then, so it is delivered now rather than to the next capsule.
            None => {
                deliver_console_input(&bytes[..count]);
                count = 0;
            }
        }
    }
    deliver_console_input(&bytes[..count]);
}

/// Hands host console input to the capsule that has the focus.
fn deliver_console_input(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Some(target) = capsule::focused() {
        target.console_input(bytes);
    }
}

/// Makes the guest take exception `code` as if the hardware had raised it in VS-mode.
fn inject_exception(vcpu: &mut Vcpu, code: u64, tval: u64) {
    vcpu.shared().exits.injected_faults.bump();
    let guest = &mut vcpu.context.guest;
    let from_supervisor = guest.sstatus & bits::SSTATUS_SPP != 0;
    csr::vsepc::write(guest.sepc);
    csr::vscause::write(code);
    csr::vstval::write(tval);
    let mut vsstatus = csr::vsstatus::read();
    // SPIE <- SIE, SIE <- 0, SPP <- the guest's privilege at the trap.
    let sie = vsstatus & bits::SSTATUS_SIE != 0;
    vsstatus &= !(bits::SSTATUS_SPIE | bits::SSTATUS_SIE | bits::SSTATUS_SPP);
    if sie {
        vsstatus |= bits::SSTATUS_SPIE;
    }
    if from_supervisor {
        vsstatus |= bits::SSTATUS_SPP;
    }
    csr::vsstatus::write(vsstatus);
    guest.sepc = csr::vstvec::read() & !3;
    // The guest's handler runs in VS-mode.
    guest.sstatus |= bits::SSTATUS_SPP;
}

/// Reads the instruction at the guest's pc through its own translation (HLVX), for MMIO decoding when `htinst`
/// does not give it.
fn fetch_guest_instruction(pc: u64) -> Result<u32, u64> {
    if pc.is_multiple_of(4) {
        // Four aligned bytes lie in one page, so when the first two are fetchable the next two are too: one walk
        // instead of two. A compressed instruction keeps only its own half.
        let word = arch::guest_fetch_u32(pc)?;
        return Ok(if word & 3 == 3 { word } else { word & 0xffff });
    }
    let low = arch::guest_fetch_u16(pc)? as u32;
    if low & 3 != 3 {
        return Ok(low);
    }
    let high = arch::guest_fetch_u16(pc.wrapping_add(2))? as u32;
    Ok(low | high << 16)
}

#[link_section = ".text.hot.2"]
fn handle_guest_page_fault(vcpu: &mut Vcpu) -> Next {
    let exit = vcpu.context.exit;
    let gpa = (exit.htval << 2) | (exit.stval & 3);
    let is_store = exit.scause == cause::STORE_GUEST_PAGE_FAULT;
    let access_fault = if is_store { cause::STORE_ACCESS_FAULT } else { cause::LOAD_ACCESS_FAULT };

    let decoded = match keel_insn::decode_htinst(exit.htinst) {
        Ok(Some(insn)) => Ok(insn),
        Ok(None) => match fetch_guest_instruction(vcpu.context.guest.sepc) {
            Ok(raw) => keel_insn::decode(raw),
            Err(fault) => {
                guest_warn!(
                    vcpu.capsule,
                    "capsule '{}': could not read the instruction at {:#x} (cause {fault}); retrying",
                    vcpu.capsule.name,
                    vcpu.context.guest.sepc
                );
                return Next::Resume;
            }
        },
        Err(error) => Err(error),
    };
    let insn: MmioInsn = match decoded {
        Ok(insn) => insn,
        Err(error) => {
            guest_warn!(
                vcpu.capsule,
                "capsule '{}' vCPU {}: access to {gpa:#x} at pc {:#x} cannot be emulated ({error}); injecting an access fault",
                vcpu.capsule.name,
                vcpu.index,
                vcpu.context.guest.sepc
            );
            inject_exception(vcpu, access_fault, exit.stval);
            return Next::Resume;
        }
    };

    // Device registers are accessed at their natural alignment; anything else is refused rather than guessed at.
    let aligned = gpa.is_multiple_of(u64::from(insn.width));
    let result = match insn.access {
        _ if !aligned => Err(()),
        Access::Load { rd, signed } => mmio_read(vcpu, gpa, insn.width).map(|raw| {
            if rd != 0 {
                vcpu.context.guest.x[rd as usize] = keel_insn::load_value(raw, insn.width, signed);
            }
        }),
        Access::Store { rs2 } => {
            let value = if rs2 == 0 { 0 } else { vcpu.context.guest.x[rs2 as usize] };
            mmio_write(vcpu, gpa, insn.width, keel_insn::store_value(value, insn.width))
        }
    };
    match result {
        Ok(()) => {
            vcpu.context.guest.sepc += insn.len as u64;
            Next::Resume
        }
        Err(()) => {
            guest_warn!(
                vcpu.capsule,
                "capsule '{}' vCPU {}: {} of {} bytes at {gpa:#x} (pc {:#x}) is outside its memory and devices{}; injecting an access fault",
                vcpu.capsule.name,
                vcpu.index,
                if is_store { "store" } else { "load" },
                insn.width,
                vcpu.context.guest.sepc,
                if aligned { "" } else { " or misaligned" }
            );
            inject_exception(vcpu, access_fault, exit.stval);
            Next::Resume
        }
    }
}

fn in_window(gpa: u64, base: u64, size: u64, width: u8) -> Option<u64> {
    let offset = gpa.checked_sub(base)?;
    (offset.checked_add(width as u64)? <= size).then_some(offset)
}

#[link_section = ".text.hot.2"]
fn mmio_read(vcpu: &mut Vcpu, gpa: u64, width: u8) -> Result<u64, ()> {
    let capsule = vcpu.capsule.clone();
    if let Some(offset) = in_window(gpa, manage::BASE, manage::SIZE, width) {
        return manage::read(&capsule, offset, width);
    }
    let mut devices = capsule.devices.lock();
    let value = if let Some(offset) = in_window(gpa, capsule::UART_BASE, capsule::UART_SIZE, width) {
        if !devices.uart.read_changes_state(offset) {
            // Polling the line status while the guest waits to transmit, above all: nothing moved, so no input
            // to refill and no interrupt line to recompute.
            return Ok(devices.uart.read(offset) as u64);
        }
        let value = devices.uart.read(offset);
        devices.pump_input(&capsule.memory);
        value as u64
    } else if let Some(offset) = in_window(gpa, capsule::PLIC_BASE, capsule::PLIC_SIZE, width) {
        devices.plic.read(offset, width).map_err(|_| ())? as u64
    } else if let Some((slot, offset)) = vdev::find(&mut devices.virtio, gpa, width) {
        match slot.read(offset, width) {
            Ok(value) => value as u64,
            Err(error) => {
                guest_warn!(capsule, "capsule '{}' {}: read at +{offset:#x}: {error}", capsule.name, slot.label);
                return Err(());
            }
        }
    } else {
        return Err(());
    };
    capsule.sync_interrupts(&devices, Some(vcpu.index));
    drop(devices);
    apply_external_interrupt(vcpu);
    Ok(value)
}

#[link_section = ".text.hot.2"]
fn mmio_write(vcpu: &mut Vcpu, gpa: u64, width: u8, value: u64) -> Result<(), ()> {
    let capsule = vcpu.capsule.clone();
    if let Some(offset) = in_window(gpa, manage::BASE, manage::SIZE, width) {
        // Not under the device lock: a command may stop or restart capsules.
        return manage::write(&capsule, offset, width, value);
    }
    let mut devices = capsule.devices.lock();
    if let Some(offset) = in_window(gpa, capsule::UART_BASE, capsule::UART_SIZE, width) {
        let mut wrote = false;
        devices.uart.write(offset, value as u8, &mut |byte| {
            wrote = true;
            capsule.console_output(&[byte]);
        });
        if wrote {
            devices.input_to_virtio = false;
        }
        devices.sync_irqs();
    } else if let Some(offset) = in_window(gpa, capsule::PLIC_BASE, capsule::PLIC_SIZE, width) {
        devices.plic.write(offset, width, value as u32).map_err(|_| ())?;
    } else if let Some((slot, offset)) = vdev::find(&mut devices.virtio, gpa, width) {
        match slot.write(offset, width, value as u32, &capsule.memory) {
            Ok(None) => {}
            Ok(Some(error)) => {
                guest_warn!(capsule, "capsule '{}' {}: {error}", capsule.name, slot.label);
            }
            Err(error) => {
                guest_warn!(capsule, "capsule '{}' {}: write at +{offset:#x}: {error}", capsule.name, slot.label);
                return Err(());
            }
        }
        if slot.is_console() {
            let (wrote, error) = slot.take_console_output(&capsule.memory, &mut |bytes| capsule.console_output(bytes));
            if let Some(error) = error {
                guest_warn!(capsule, "capsule '{}' {}: {error}", capsule.name, slot.label);
            }
            if wrote {
                devices.input_to_virtio = true;
            }
            // The guest may have posted receive buffers for input that is waiting.
            devices.pump_input(&capsule.memory);
        } else if let Some(port) = slot.net_port().map(crate::vnet::Port::id) {
            let index = ((gpa - vdev::FIRST_SLOT_BASE) / vdev::SLOT_SIZE) as usize;
            drop(devices);
            send_frames(&capsule, index, port);
            devices = capsule.devices.lock();
        }
        devices.sync_irqs();
    } else {
        return Err(());
    }
    capsule.sync_interrupts(&devices, Some(vcpu.index));
    drop(devices);
    apply_external_interrupt(vcpu);
    Ok(())
}

/// Forwards what the network card in slot `index` transmitted, a batch at a time, with the capsule's device lock
/// released while the frames travel (the switch may deliver them to any other capsule).
fn send_frames(capsule: &Arc<Capsule>, index: usize, port: keel_switch::PortId) {
    loop {
        let (frames, more) = {
            let mut devices = capsule.devices.lock();
            let Some(slot) = devices.virtio.get_mut(index) else { return };
            let (frames, more, error) = slot.take_transmitted(&capsule.memory);
            if let Some(error) = error {
                guest_warn!(capsule, "capsule '{}' {}: {error}", capsule.name, slot.label);
            }
            (frames, more)
        };
        crate::vnet::forward(port, &frames);
        if !more {
            return;
        }
    }
}

/// The SBI environment of the vCPU that made the call.
struct SbiEnvironment<'a> {
    vcpu: &'a mut Vcpu,
}

impl SbiEnvironment<'_> {
    fn capsule(&self) -> &Capsule {
        &self.vcpu.capsule
    }

    /// Marks a request on each target vCPU and kicks their harts; the calling vCPU applies its own before it
    /// re-enters the guest.
    fn request(&mut self, targets: HartSet, flag: impl Fn(&capsule::VcpuShared) -> &core::sync::atomic::AtomicBool) {
        let me = self.vcpu.index;
        for target in targets.iter() {
            if let Some(shared) = self.vcpu.capsule.vcpus.get(target) {
                flag(shared).store(true, Ordering::Release);
                if target != me {
                    hart::kick(shared.hart.load(Ordering::Acquire));
                }
            }
        }
    }

    /// Like `request`, but returns only once every started target has taken the request, so that a remote fence
    /// has happened before the guest's call returns. While waiting, this vCPU serves requests aimed at it, so two
    /// vCPUs fencing each other cannot deadlock.
    fn request_and_wait(
        &mut self,
        targets: HartSet,
        flag: impl Fn(&capsule::VcpuShared) -> &core::sync::atomic::AtomicBool + Copy,
    ) {
        self.request(targets, flag);
        let me = self.vcpu.index;
        let capsule = self.vcpu.capsule.clone();
        for target in targets.iter().filter(|&t| t != me) {
            let Some(shared) = capsule.vcpus.get(target) else { continue };
            // A vCPU that is not on a hart applies the request before it runs again, so only a running one is
            // waited for.
            while flag(shared).load(Ordering::Acquire)
                && shared.running.load(Ordering::Acquire)
                && !capsule.stopped.load(Ordering::Acquire)
            {
                apply_requests(self.vcpu);
                core::hint::spin_loop();
            }
        }
    }
}

impl Environment for SbiEnvironment<'_> {
    fn vcpu_count(&self) -> usize {
        self.capsule().vcpus.len()
    }

    fn current_vcpu(&self) -> usize {
        self.vcpu.index
    }

    fn machine_ids(&self) -> MachineIds {
        let (mvendorid, marchid, mimpid) = crate::MACHINE_IDS.get().copied().unwrap_or((0, 0, 0));
        MachineIds { mvendorid, marchid, mimpid }
    }

    fn set_timer(&mut self, stime_value: u64) {
        if sched::sstc() {
            csr::vstimecmp::write(stime_value);
        } else {
            // Armed by the run loop, together with the slice timer.
            csr::hvip::clear(bits::IRQ_VS_TIMER);
            self.vcpu.guest_deadline = stime_value;
        }
    }

    fn send_ipi(&mut self, targets: HartSet) {
        self.request(targets, |shared| &shared.ipi);
    }

    fn clear_ipi(&mut self) -> bool {
        let pending = csr::hvip::read() & bits::IRQ_VS_SOFT != 0;
        csr::hvip::clear(bits::IRQ_VS_SOFT);
        pending
    }

    fn remote_fence_i(&mut self, targets: HartSet) {
        self.request_and_wait(targets, |shared| &shared.fence_i);
    }

    fn remote_sfence_vma(&mut self, targets: HartSet, _range: FenceRange, _asid: Option<usize>) {
        // Flushing the whole VS-stage of the VMID is always correct, and cheap next to the exit itself.
        self.request_and_wait(targets, |shared| &shared.flush_vvma);
    }

    fn hart_start(&mut self, vcpu: usize, start_addr: usize, opaque: usize) -> Result<(), SbiError> {
        if !self.capsule().memory.contains(start_addr as u64, 4) {
            return Err(SbiError::InvalidAddress);
        }
        let shared = &self.capsule().vcpus[vcpu];
        if !shared.request_start(start_addr as u64, opaque as u64) {
            return Err(SbiError::AlreadyAvailable);
        }
        hart::kick(shared.hart.load(Ordering::Acquire));
        Ok(())
    }

    fn hart_status(&self, vcpu: usize) -> HartState {
        match self.capsule().vcpus[vcpu].state() {
            RunState::Stopped => HartState::Stopped,
            RunState::StartPending => HartState::StartPending,
            RunState::Started => HartState::Started,
        }
    }

    fn validate_resume_address(&self, resume_addr: usize) -> Result<(), SbiError> {
        if self.capsule().memory.contains(resume_addr as u64, 4) { Ok(()) } else { Err(SbiError::InvalidAddress) }
    }

    fn console_write(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError> {
        // The whole buffer the guest names must be its memory, even though only a first part is written now.
        if !self.capsule().memory.contains(guest_address, len as u64) {
            return Err(SbiError::InvalidParam);
        }
        let mut buffer = [0u8; 256];
        let len = len.min(buffer.len());
        self.capsule().memory.read(guest_address, &mut buffer[..len]).map_err(|()| SbiError::InvalidParam)?;
        self.vcpu.capsule.console_output(&buffer[..len]);
        Ok(len)
    }

    fn console_read(&mut self, guest_address: u64, len: usize) -> Result<usize, SbiError> {
        if !self.capsule().memory.contains(guest_address, len as u64) {
            return Err(SbiError::InvalidParam);
        }
        let mut buffer = [0u8; 64];
        let mut count = 0;
        {
            let mut devices = self.capsule().devices.lock();
            while count < len.min(buffer.len()) {
                match devices.input.pop_front() {
                    Some(byte) => {
                        buffer[count] = byte;
                        count += 1;
                    }
                    None => break,
                }
            }
        }
        self.capsule().memory.write(guest_address, &buffer[..count]).map_err(|()| SbiError::InvalidParam)?;
        Ok(count)
    }

    fn console_write_byte(&mut self, byte: u8) {
        self.vcpu.capsule.console_output(&[byte]);
    }

    fn console_getchar(&mut self) -> Option<u8> {
        self.capsule().devices.lock().input.pop_front()
    }

    fn read_guest_virtual_usize(&mut self, guest_virtual_address: usize) -> Result<usize, SbiError> {
        arch::guest_load_u64(guest_virtual_address as u64).map(|v| v as usize).map_err(|_| SbiError::InvalidAddress)
    }
}

#[link_section = ".text.hot.1"]
fn handle_sbi(vcpu: &mut Vcpu) -> Next {
    let x = &vcpu.context.guest.x;
    let call = Call::from_registers([x[10], x[11], x[12], x[13], x[14], x[15], x[16], x[17]].map(|r| r as usize));
    let outcome = keel_sbi::dispatch(&call, &mut SbiEnvironment { vcpu });
    let guest = &mut vcpu.context.guest;
    match outcome {
        Outcome::Return { error, value } => {
            guest.x[10] = error as u64;
            guest.x[11] = value as u64;
            guest.sepc += 4;
            Next::Resume
        }
        Outcome::Legacy(value) => {
            guest.x[10] = value as u64;
            guest.sepc += 4;
            Next::Resume
        }
        Outcome::Reset { kind, reason } => {
            log::info!("capsule '{}' asked for {:?} ({:?})", vcpu.capsule.name, kind, reason);
            Next::Reset(kind, reason)
        }
        Outcome::HartStop => Next::Stop,
        Outcome::Suspend(suspend) => {
            guest.x[10] = 0;
            guest.x[11] = 0;
            guest.sepc += 4;
            if let keel_sbi::HartSuspend::NonRetentive { resume_addr, opaque } = suspend {
                // Resume as if started afresh at `resume_addr`, translation and interrupts off.
                let index = vcpu.index;
                vcpu.reset_to(resume_addr as u64, opaque as u64);
                vcpu.context.guest.x[10] = index as u64;
            }
            // Either way the vCPU waits for an interrupt off the hart, like WFI.
            vcpu.waiting = true;
            Next::Yield
        }
    }
}

/// A capsule has shut down (`failed`: it asked with the system-failure reason, or Keel stopped it for doing
/// something illegal). Its restart policy decides: restart it, or stop it. The boot capsule stopping for good
/// powers the machine off.
fn after_shutdown(capsule: &Arc<Capsule>, caller: usize, failed: bool) {
    let policy = capsule.definition.restart;
    let restart = match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Always => true,
    };
    let how = if failed { "failed" } else { "shut down" };
    if restart {
        log::warn!("capsule {} '{}' {how}; restarting it (restart policy {policy})", capsule.id, capsule.name);
        reboot_capsule(capsule, caller);
        return;
    }
    if capsule.definition.boot {
        log::info!("boot capsule '{}' {how}: powering off", capsule.name);
        let error = if failed { firmware::shutdown_failure() } else { firmware::system_reset(false) };
        log::error!("the firmware could not power off (SBI error {})", error.0);
    }
    log::info!("capsule {} '{}' {how}; stopped (restart policy {policy})", capsule.id, capsule.name);
    stop_capsule(capsule);
}

/// Restarts a capsule from its definition: every vCPU leaves its hart, RAM is scrubbed, kernel, initrd and device
/// tree are loaded again and vCPU 0 starts. `caller` is the capsule's vCPU (on this hart) that asked, or
/// `usize::MAX` when another capsule asked.
pub fn reboot_capsule(capsule: &Arc<Capsule>, caller: usize) {
    log::info!("capsule {} '{}' reboots", capsule.id, capsule.name);
    capsule.generation.fetch_add(1, Ordering::AcqRel);
    for vcpu in &capsule.vcpus {
        vcpu.set_state(RunState::Stopped);
        hart::kick(vcpu.hart.load(Ordering::Acquire));
    }
    // No other vCPU may run the old kernel while its memory is rewritten.
    for (index, vcpu) in capsule.vcpus.iter().enumerate() {
        while index != caller && vcpu.running.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
    for vcpu in &capsule.vcpus {
        vcpu.exits.reset();
    }
    capsule.memory.scrub();
    {
        let mut devices = capsule.devices.lock();
        devices.uart.reset();
        devices.plic.reset();
        devices.input.clear();
        devices.input_to_virtio = false;
        for slot in &mut devices.virtio {
            slot.reset();
        }
    }
    let platform = PLATFORM.get().expect("platform known after boot");
    match capsule.load(platform) {
        Ok(()) => {
            sched::requeue_fresh(capsule);
            capsule.start();
        }
        Err(error) => {
            log::error!("capsule '{}' could not be reloaded: {error}", capsule.name);
            stop_capsule(capsule);
        }
    }
}

/// Stops a capsule for good: its vCPUs stop and, once no hart holds it, its memory is scrubbed and freed.
pub fn stop_capsule(capsule: &Arc<Capsule>) {
    capsule.stopped.store(true, Ordering::Release);
    capsule.disconnect_network();
    sched::remove_capsule(capsule);
    for vcpu in &capsule.vcpus {
        vcpu.set_state(RunState::Stopped);
        hart::kick(vcpu.hart.load(Ordering::Acquire));
    }
    CAPSULES.lock().retain(|c| !Arc::ptr_eq(c, capsule));
    let remaining: Vec<_> = CAPSULES.lock().iter().map(|c| c.name.clone()).collect();
    if remaining.is_empty() {
        log::info!("no capsules left running: powering off");
        firmware::system_reset(false);
    }
}
