//! Capsules: isolated virtual machines built from manifest entries — their RAM, G-stage tables, virtual devices,
//! generated device tree and vCPUs.

use alloc::{boxed::Box, collections::VecDeque, format, string::String, sync::Arc, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use keel_devices::{plic::Plic, uart16550::Uart16550};
use keel_gstage::{GStage, Mode, Perm, TableMemory};
use spin::Mutex;

use crate::guest_memory::GuestMemory;
use crate::platform::Platform;
use crate::vcpu::{Context, FpState, VsCsrs};
use crate::{arch::csr::bits, memory};

/// Where every capsule's RAM starts, as on QEMU `virt`.
pub const RAM_BASE: u64 = 0x8000_0000;
/// The virtual PLIC.
pub const PLIC_BASE: u64 = 0x0c00_0000;
/// Size of the virtual PLIC's register window.
pub const PLIC_SIZE: u64 = 0x400_0000;
/// Interrupt sources of the virtual PLIC (ids 1..PLIC_SOURCES-1), as many as QEMU `virt` has.
pub const PLIC_SOURCES: u32 = 96;
/// The virtual 16550.
pub const UART_BASE: u64 = 0x1000_0000;
/// Size of the 16550's register window.
pub const UART_SIZE: u64 = 0x100;
/// The 16550's interrupt source.
pub const UART_IRQ: u32 = 10;
/// Input clock the 16550 claims to have (QEMU's value).
pub const UART_CLOCK: u32 = 3_686_400;
/// The most vCPUs a capsule may have (SBI hart masks address 64).
pub const MAX_VCPUS: usize = 64;
/// Bytes of console input a capsule buffers before more is dropped.
const INPUT_LIMIT: usize = 4096;

/// Page-table memory for G-stage tables: whole pages from the host page allocator.
pub struct HostTables;

impl TableMemory for HostTables {
    fn alloc_table(&mut self, bytes: usize, align: usize) -> Option<u64> {
        let pages = bytes.div_ceil(memory::PAGE_SIZE);
        let address = memory::alloc_pages(pages)?;
        // The buddy allocator aligns a block to its own size, which covers the 16 KiB root's alignment.
        debug_assert_eq!(address % align, 0);
        crate::guest_memory::ledger::assert_not_guest_ram(address);
        Some(address as u64)
    }

    fn free_table(&mut self, addr: u64, bytes: usize) {
        memory::free_pages(addr as usize, bytes.div_ceil(memory::PAGE_SIZE));
    }

    fn read_pte(&self, addr: u64) -> u64 {
        // SAFETY: the G-stage code only reads entries of tables this type allocated.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }

    fn write_pte(&mut self, addr: u64, pte: u64) {
        // SAFETY: the G-stage code only writes entries of tables this type allocated.
        unsafe { core::ptr::write_volatile(addr as *mut u64, pte) };
    }
}

/// The virtual devices of one capsule.
pub struct Devices {
    pub uart: Uart16550,
    pub plic: Plic,
    /// Console input waiting for room in the UART's receive FIFO.
    pub input: VecDeque<u8>,
    /// The occupied virtio-mmio slots.
    pub virtio: Vec<crate::vdev::Slot>,
    /// Console input goes to the virtio console rather than the UART: the guest last wrote its console output there.
    pub input_to_virtio: bool,
}

impl Devices {
    fn new(vcpus: usize, virtio: Vec<crate::vdev::Slot>) -> Self {
        Devices {
            uart: Uart16550::new(),
            plic: Plic::new(PLIC_SOURCES, vcpus),
            input: VecDeque::new(),
            virtio,
            input_to_virtio: false,
        }
    }


    /// Moves buffered input into the console the guest uses (the UART, or the virtio console once the guest writes
    /// there) and updates the interrupt lines.
    pub fn pump_input(&mut self, memory: &GuestMemory) {
        if self.input_to_virtio {
            if let Some(slot) = self.virtio.iter_mut().find(|slot| slot.console_driver_present()) {
                loop {
                    let (front, _) = self.input.as_slices();
                    let waiting = front.len();
                    if waiting == 0 {
                        break;
                    }
                    // A bad receive chain is the guest's own loss; the device already completed it empty.
                    let (accepted, _) = slot.console_input(front, memory);
                    self.input.drain(..accepted);
                    if accepted < waiting {
                        break;
                    }
                }
                self.sync_irqs();
                return;
            }
        }
        while let Some(&byte) = self.input.front() {
            if !self.uart.receive(byte) {
                break;
            }
            self.input.pop_front();
        }
        self.sync_irqs();
    }

    /// Copies device interrupt levels into the PLIC.
    pub fn sync_irqs(&mut self) {
        let level = self.uart.irq_level();
        self.plic.set_level(UART_IRQ, level);
        for slot in &self.virtio {
            self.plic.set_level(slot.irq, slot.irq_level());
        }
    }
}

/// HSM state of a vCPU, shared between harts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum RunState {
    Stopped = 0,
    StartPending = 1,
    Started = 2,
}

/// What other harts may ask of a vCPU, and its HSM state.
pub struct VcpuShared {
    pub state: AtomicU32,
    pub start_pc: AtomicU64,
    pub start_opaque: AtomicU64,
    /// A software interrupt is to be injected.
    pub ipi: AtomicBool,
    /// `fence.i` before the next guest instruction.
    pub fence_i: AtomicBool,
    /// Flush the VS-stage TLB before the next guest instruction.
    pub flush_vvma: AtomicBool,
    /// The level Keel wants on this vCPU's external interrupt (VSEIP), from its virtual PLIC context.
    pub external: AtomicBool,
    /// `external` changed while the vCPU ran elsewhere: apply it before the next entry.
    pub irq_changed: AtomicBool,
    /// The vCPU's home hart.
    pub hart: AtomicUsize,
    /// The vCPU is on its hart now (switched in).
    pub running: AtomicBool,
    /// Its exits since the capsule (re)started.
    pub exits: crate::stats::ExitCounters,
}

impl VcpuShared {
    fn new(hart: usize) -> Self {
        VcpuShared {
            state: AtomicU32::new(RunState::Stopped as u32),
            start_pc: AtomicU64::new(0),
            start_opaque: AtomicU64::new(0),
            ipi: AtomicBool::new(false),
            fence_i: AtomicBool::new(false),
            flush_vvma: AtomicBool::new(false),
            external: AtomicBool::new(false),
            irq_changed: AtomicBool::new(false),
            hart: AtomicUsize::new(hart),
            running: AtomicBool::new(false),
            exits: Default::default(),
        }
    }

    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Acquire) {
            1 => RunState::StartPending,
            2 => RunState::Started,
            _ => RunState::Stopped,
        }
    }

    /// Moves Stopped -> StartPending atomically; false if the vCPU was not stopped.
    pub fn request_start(&self, pc: u64, opaque: u64) -> bool {
        self.start_pc.store(pc, Ordering::Relaxed);
        self.start_opaque.store(opaque, Ordering::Relaxed);
        self.state
            .compare_exchange(RunState::Stopped as u32, RunState::StartPending as u32, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn set_state(&self, state: RunState) {
        self.state.store(state as u32, Ordering::Release);
    }
}

/// What a capsule was made from.
#[derive(Clone, Copy)]
pub struct Definition {
    pub name: &'static str,
    pub kernel: &'static [u8],
    pub initrd: Option<&'static [u8]>,
    pub cmdline: &'static str,
    pub memory: u64,
    pub vcpus: u32,
    pub boot: bool,
    /// May use the management device.
    pub may_manage: bool,
    /// What to do when the capsule shuts down or fails.
    pub restart: keel_dmfs::RestartPolicy,
    /// Its disks: extents of the machine's disk.
    pub disks: keel_dmfs::Disks<'static>,
    /// The MAC address of its network card; no card without one.
    pub mac: Option<[u8; 6]>,
}

/// A running (or stopped) virtual machine.
pub struct Capsule {
    pub id: u32,
    pub name: String,
    pub definition: Definition,
    pub memory: GuestMemory,
    gstage: Mutex<Option<GStage>>,
    pub hgatp: u64,
    pub devices: Mutex<Devices>,
    pub vcpus: Vec<VcpuShared>,
    /// Bumped on every reboot so harts drop the vCPU state of the previous run.
    pub generation: AtomicU32,
    /// Set when the capsule has shut down for good.
    pub stopped: AtomicBool,
    /// Its side of the management device.
    pub mailbox: Mutex<crate::manage::Mailbox>,
    /// `time` when it was (last) started.
    pub started_at: AtomicU64,
    /// Console output of a capsule without focus, held until its line is complete.
    pub pending_line: Mutex<Vec<u8>>,
    /// Entry point of vCPU 0 and the device tree address, for (re)boots.
    pub entry: AtomicU64,
    pub fdt_addr: AtomicU64,
    /// Bounds how fast the capsule's misdeeds can fill Keel's log.
    pub log_limit: LogLimit,
}

/// A per-capsule budget of log lines about what the guest did wrong: a guest that repeats an illegal access in a
/// loop must not drown the console (or every other capsule's output) in Keel's messages.
pub struct LogLimit {
    window_start: AtomicU64,
    lines: AtomicU32,
    suppressed: AtomicU32,
}

impl LogLimit {
    /// Lines allowed per window.
    const LINES: u32 = 20;

    const fn new() -> Self {
        LogLimit { window_start: AtomicU64::new(0), lines: AtomicU32::new(0), suppressed: AtomicU32::new(0) }
    }

    /// Whether one more line may be logged now; counts it either way. When a new window starts, reports how many
    /// lines the last one suppressed.
    pub fn allow(&self, capsule: &str) -> bool {
        let now = crate::arch::csr::time::read();
        let window = crate::PLATFORM.get().map_or(10_000_000, |p| p.host.timebase_frequency);
        let start = self.window_start.load(Ordering::Acquire);
        if now.wrapping_sub(start) >= window
            && self.window_start.compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.lines.store(0, Ordering::Release);
            let suppressed = self.suppressed.swap(0, Ordering::AcqRel);
            if suppressed > 0 {
                log::warn!("capsule '{capsule}': {suppressed} more messages about it were suppressed");
            }
        }
        if self.lines.fetch_add(1, Ordering::AcqRel) < Self::LINES {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            false
        }
    }
}

/// Why a capsule could not be built.
#[derive(Debug)]
pub enum CreateError {
    OutOfMemory(&'static str),
    Kernel(keel_linux_boot::ImageError),
    Placement(keel_linux_boot::PlacementError),
    DeviceTree(String),
    BadVcpuCount(u32),
    Map(keel_gstage::MapError),
    Devices(String),
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CreateError::OutOfMemory(what) => write!(f, "not enough free memory for its {what}"),
            CreateError::Kernel(error) => write!(f, "kernel rejected: {error}"),
            CreateError::Placement(error) => write!(f, "kernel does not fit its memory: {error}"),
            CreateError::DeviceTree(error) => write!(f, "device tree could not be built: {error}"),
            CreateError::BadVcpuCount(vcpus) => write!(f, "asks for {vcpus} vCPUs; 1 to {MAX_VCPUS} are possible"),
            CreateError::Map(error) => write!(f, "G-stage mapping failed: {error}"),
            CreateError::Devices(error) => write!(f, "devices: {error}"),
        }
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Refuses disks that overlap a disk of a capsule that exists now, or the manifest image at the start of the
/// machine's disk. mkdmfs and the image parser already refuse overlaps within one image; this catches capsules
/// from different images (bundled and on the disk).
fn check_disks_unshared(name: &str, disks: &[crate::vdev::DiskSpec<'_>]) -> Result<(), String> {
    let overlap = |a: (u64, u64), b: (u64, u64)| a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1);
    let stored = crate::storage::sectors_in_use();
    for disk in disks {
        let extent = (disk.start_sector, disk.sectors);
        if stored > 0 && overlap(extent, (0, stored)) {
            return Err(format!("disk '{}' overlaps the manifest image at the start of the machine's disk", disk.name));
        }
        for other in CAPSULES.lock().iter() {
            if let Some(theirs) = { other.definition.disks }.find(|d| overlap(extent, (d.start_sector, d.sectors))) {
                return Err(format!(
                    "disk '{}' of '{name}' overlaps disk '{}' of running capsule '{}'",
                    disk.name, theirs.name, other.name
                ));
            }
        }
    }
    Ok(())
}

impl Capsule {
    /// Builds a capsule: allocates and maps its RAM, loads its kernel, initrd and device tree. Its vCPUs are
    /// neither placed on harts nor started.
    pub fn create(definition: Definition, platform: &Platform, vmid: u16) -> Result<Arc<Capsule>, CreateError> {
        if definition.vcpus == 0 || definition.vcpus as usize > MAX_VCPUS {
            return Err(CreateError::BadVcpuCount(definition.vcpus));
        }
        let disks: Vec<crate::vdev::DiskSpec<'_>> = definition
            .disks
            .map(|disk| crate::vdev::DiskSpec {
                name: disk.name,
                start_sector: disk.start_sector,
                sectors: disk.sectors,
                read_only: disk.read_only,
            })
            .collect();
        check_disks_unshared(definition.name, &disks).map_err(CreateError::Devices)?;
        let virtio = crate::vdev::build(&disks, definition.mac).map_err(CreateError::Devices)?;
        let id = NEXT_ID.fetch_add(1, Ordering::AcqRel);
        let memory = GuestMemory::allocate(RAM_BASE, definition.memory, id).ok_or(CreateError::OutOfMemory("RAM"))?;
        log::info!("capsule '{}' RAM at host {}", definition.name, memory.host_ranges());
        let mut tables = HostTables;
        let mut gstage = GStage::new(&mut tables, Mode::Sv39x4).map_err(CreateError::Map)?;
        for (_, hpa) in memory.chunks() {
            crate::guest_memory::ledger::assert_owned_by(hpa, id);
        }
        for (gpa, hpa, bytes) in memory.extents() {
            gstage
                .map_range(&mut tables, gpa, hpa as u64, bytes, Perm::READ | Perm::WRITE | Perm::EXEC)
                .map_err(CreateError::Map)?;
        }
        let hgatp = gstage.hgatp(vmid).map_err(CreateError::Map)?;
        let vcpus = (0..definition.vcpus as usize)
            .map(|_| VcpuShared::new(platform.online_harts[0]))
            .collect();
        let capsule = Capsule {
            id,
            name: String::from(definition.name),
            definition,
            memory,
            gstage: Mutex::new(Some(gstage)),
            hgatp,
            devices: Mutex::new(Devices::new(definition.vcpus as usize, virtio)),
            vcpus,
            generation: AtomicU32::new(0),
            stopped: AtomicBool::new(false),
            pending_line: Mutex::new(Vec::new()),
            mailbox: Mutex::new(crate::manage::Mailbox::new()),
            started_at: AtomicU64::new(0),
            entry: AtomicU64::new(0),
            fdt_addr: AtomicU64::new(0),
            log_limit: LogLimit::new(),
        };
        capsule.load(platform)?;
        log::info!(
            "capsule {} '{}': G-stage tables use {} KiB ({} GiB of RAM in gigapages)",
            capsule.id,
            capsule.name,
            capsule.overhead_bytes() >> 10,
            capsule.gigapages()
        );
        let capsule = Arc::new(capsule);
        for port in capsule.devices.lock().virtio.iter().filter_map(crate::vdev::Slot::net_port) {
            crate::vnet::bind(port, &capsule);
        }
        Ok(capsule)
    }

    /// Loads kernel, initrd and device tree into RAM and makes vCPU 0 ready to start.
    pub fn load(&self, platform: &Platform) -> Result<(), CreateError> {
        let started = crate::arch::csr::time::read();
        let definition = &self.definition;
        let kind = keel_linux_boot::identify(definition.kernel).map_err(CreateError::Kernel)?;
        const FDT_MAX: u64 = 64 * 1024;
        let placement = keel_linux_boot::place(
            RAM_BASE,
            self.memory.size(),
            &kind,
            definition.kernel.len() as u64,
            definition.initrd.map(|initrd| initrd.len() as u64),
            FDT_MAX,
        )
        .map_err(CreateError::Placement)?;
        let fdt = crate::platform::guest_tree(platform, self, placement.initrd).map_err(CreateError::DeviceTree)?;
        if fdt.len() as u64 > FDT_MAX {
            return Err(CreateError::DeviceTree(format!("{} bytes is more than the {FDT_MAX} reserved", fdt.len())));
        }
        let loaded = self
            .memory
            .write(placement.kernel_addr, definition.kernel)
            .and_then(|()| match (definition.initrd, placement.initrd) {
                (Some(initrd), Some((start, _))) => self.memory.write(start, initrd),
                _ => Ok(()),
            })
            .and_then(|()| self.memory.write(placement.fdt_addr, &fdt));
        if loaded.is_err() {
            return Err(CreateError::DeviceTree(String::from("placement outside RAM")));
        }
        self.entry.store(placement.entry, Ordering::Release);
        self.fdt_addr.store(placement.fdt_addr, Ordering::Release);
        log::info!(
            "capsule {} '{}': {} MiB RAM, {} vCPU(s), kernel {} KiB at {:#x}, initrd {}, device tree at {:#x}; loaded in {}",
            self.id,
            self.name,
            self.memory.size() >> 20,
            self.vcpus.len(),
            definition.kernel.len() >> 10,
            placement.kernel_addr,
            match placement.initrd {
                Some((start, end)) => format!("{} KiB at {start:#x}", (end - start) >> 10),
                None => String::from("none"),
            },
            placement.fdt_addr,
            crate::sched::Since(started)
        );
        Ok(())
    }

    /// Marks vCPU 0 to start at the kernel entry and kicks its hart.
    pub fn start(&self) {
        self.started_at.store(crate::arch::csr::time::read(), Ordering::Release);
        let entry = self.entry.load(Ordering::Acquire);
        let fdt = self.fdt_addr.load(Ordering::Acquire);
        if self.vcpus[0].request_start(entry, fdt) {
            crate::hart::kick(self.vcpus[0].hart.load(Ordering::Acquire));
        }
    }

    /// How many gibibytes of this capsule's RAM its G-stage tables map with gigapages, as read back from the tables.
    pub fn gigapages(&self) -> usize {
        use crate::guest_memory::GIGAPAGE;
        let gstage = self.gstage.lock();
        let Some(gstage) = gstage.as_ref() else { return 0 };
        let start = self.memory.base().next_multiple_of(GIGAPAGE);
        let end = self.memory.base() + self.memory.size();
        (start..end)
            .step_by(GIGAPAGE as usize)
            .filter(|&gpa| {
                gstage
                    .translate(&HostTables, gpa)
                    .is_some_and(|translation| translation.page_size == keel_gstage::PageSize::Size1G)
            })
            .count()
    }

    /// Memory Keel spends on this capsule beyond its RAM: G-stage tables.
    pub fn overhead_bytes(&self) -> u64 {
        self.gstage.lock().as_ref().map_or(0, |g| g.table_bytes())
    }

    /// Sends this capsule's console output to the host console. The focused capsule writes straight through, so its
    /// prompt and echo appear at once; while several capsules run, the others are held back a line at a time, so
    /// their lines do not break into the focused capsule's.
    pub fn console_output(&self, bytes: &[u8]) {
        const LINE_LIMIT: usize = 240;
        if !crate::console::tagging() || FOCUS.load(Ordering::Acquire) == self.id {
            self.flush_console();
            crate::console::write_capsule(self.id, &self.name, bytes);
            return;
        }
        let mut line = self.pending_line.lock();
        for &byte in bytes {
            line.push(byte);
            if byte == b'\n' || line.len() >= LINE_LIMIT {
                crate::console::write_capsule(self.id, &self.name, &line);
                line.clear();
            }
        }
    }

    /// Writes out console output held back for a partial line.
    pub fn flush_console(&self) {
        let mut line = self.pending_line.lock();
        if !line.is_empty() {
            crate::console::write_capsule(self.id, &self.name, &line);
            line.clear();
        }
    }

    /// Delivers console input to this capsule's UART.
    pub fn console_input(&self, bytes: &[u8]) {
        let mut devices = self.devices.lock();
        for &byte in bytes {
            if devices.input.len() < INPUT_LIMIT {
                devices.input.push_back(byte);
            }
        }
        devices.pump_input(&self.memory);
        self.sync_interrupts(&devices, None);
    }

    /// Hands frames from the switch to the capsule's network card.
    pub fn receive_frames<'f>(&self, frames: impl Iterator<Item = &'f keel_virtio::Frame>) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let mut devices = self.devices.lock();
        let Some(slot) = devices.virtio.iter_mut().find(|slot| slot.net_port().is_some()) else { return };
        let (_dropped, error) = slot.receive(frames, &self.memory);
        if let Some(error) = error {
            if self.log_limit.allow(&self.name) {
                log::warn!("capsule '{}' {}: {error}", self.name, slot.label);
            }
        }
        devices.sync_irqs();
        self.sync_interrupts(&devices, None);
    }

    /// Takes the capsule's network card off the switch (it stops for good); frames for it are dropped from now on.
    pub fn disconnect_network(&self) {
        for port in self.devices.lock().virtio.iter().filter_map(crate::vdev::Slot::net_port) {
            port.detach();
        }
    }

    /// Recomputes every vCPU's external-interrupt level from the virtual PLIC and tells the vCPUs whose level
    /// changed (except `caller`, the vCPU on this hart, which applies its own level itself).
    pub fn sync_interrupts(&self, devices: &Devices, caller: Option<usize>) {
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            let level = devices.plic.context_pending(index);
            if vcpu.external.swap(level, Ordering::AcqRel) != level && Some(index) != caller {
                vcpu.irq_changed.store(true, Ordering::Release);
                crate::hart::kick(vcpu.hart.load(Ordering::Acquire));
            }
        }
    }
}

impl Drop for Capsule {
    fn drop(&mut self) {
        if let Some(gstage) = self.gstage.lock().take() {
            gstage.destroy(&mut HostTables);
        }
    }
}

/// A vCPU's private state, owned by the hart that runs it.
pub struct Vcpu {
    pub context: Context,
    pub vs: VsCsrs,
    pub fp: FpState,
    pub capsule: Arc<Capsule>,
    pub index: usize,
    pub generation: u32,
    /// Waiting for an interrupt (WFI or HSM suspend) off the hart.
    pub waiting: bool,
    /// The guest's timer deadline when Keel emulates it (no Sstc); with Sstc it is `vs.vstimecmp`.
    pub guest_deadline: u64,
}

impl Vcpu {
    /// A vCPU in reset state.
    pub fn new(capsule: Arc<Capsule>, index: usize) -> Box<Vcpu> {
        let generation = capsule.generation.load(Ordering::Acquire);
        Box::new(Vcpu {
            context: Context::default(),
            vs: VsCsrs::reset(),
            fp: FpState::default(),
            capsule,
            index,
            generation,
            waiting: false,
            guest_deadline: u64::MAX,
        })
    }

    /// Resets registers to enter the guest at `pc` with a0 = vCPU id, a1 = `opaque`, translation off.
    pub fn reset_to(&mut self, pc: u64, opaque: u64) {
        self.context = Context::default();
        self.context.guest.x[10] = self.index as u64;
        self.context.guest.x[11] = opaque;
        self.context.guest.sepc = pc;
        self.context.guest.sstatus = bits::SSTATUS_SPP | bits::SSTATUS_FS_INITIAL | bits::SSTATUS_UXL_64;
        // VTVM: the guest's satp accesses trap until it has chosen a paging mode Keel offers (see `run`).
        self.context.guest.hstatus =
            bits::HSTATUS_SPV | bits::HSTATUS_SPVP | bits::HSTATUS_VSXL_64 | bits::HSTATUS_VTVM;
        self.vs = VsCsrs::reset();
        self.fp = FpState::default();
        self.guest_deadline = u64::MAX;
        self.waiting = false;
    }

    pub fn shared(&self) -> &VcpuShared {
        &self.capsule.vcpus[self.index]
    }

    /// When this vCPU's timer fires next.
    pub fn timer_deadline(&self, sstc: bool) -> u64 {
        if sstc { self.vs.vstimecmp } else { self.guest_deadline }
    }
}

/// Every capsule that exists.
pub static CAPSULES: Mutex<Vec<Arc<Capsule>>> = Mutex::new(Vec::new());

/// The capsule that receives console input.
pub static FOCUS: AtomicU32 = AtomicU32::new(0);

/// The capsule with console focus, if it exists.
pub fn focused() -> Option<Arc<Capsule>> {
    let id = FOCUS.load(Ordering::Acquire);
    CAPSULES.lock().iter().find(|c| c.id == id).cloned()
}

/// The console escape: Ctrl-] (0x1d). Followed by `n` (next capsule), a digit (the capsule with that id), or
/// another Ctrl-] (a literal 0x1d for the focused capsule). See docs/console.md.
pub const FOCUS_ESCAPE: u8 = 0x1d;
static ESCAPE_PENDING: AtomicBool = AtomicBool::new(false);

/// Handles the focus escape sequence in host console input; returns the byte to deliver, if any.
pub fn focus_filter(byte: u8) -> Option<u8> {
    if !ESCAPE_PENDING.swap(false, Ordering::AcqRel) {
        if byte == FOCUS_ESCAPE {
            ESCAPE_PENDING.store(true, Ordering::Release);
            return None;
        }
        return Some(byte);
    }
    let capsules = CAPSULES.lock();
    let current = FOCUS.load(Ordering::Acquire);
    let target = match byte {
        FOCUS_ESCAPE => return Some(FOCUS_ESCAPE),
        b'n' | b'\t' => {
            let position = capsules.iter().position(|c| c.id == current).unwrap_or(0);
            capsules.get((position + 1) % capsules.len().max(1)).cloned()
        }
        b'1'..=b'9' => capsules.iter().find(|c| c.id == u32::from(byte - b'0')).cloned(),
        _ => None,
    };
    drop(capsules);
    match target {
        Some(capsule) => {
            FOCUS.store(capsule.id, Ordering::Release);
            log::info!("console input now goes to capsule {} '{}'", capsule.id, capsule.name);
            capsule.flush_console();
        }
        None => log::warn!("console escape: no such capsule (Ctrl-] then n, a capsule id, or Ctrl-] again)"),
    }
    None
}
