//! The set of implemented SBI extensions, names for logging, and per-extension call counters.

use sbi_spec::{
    base::EID_BASE, cppc::EID_CPPC, dbcn::EID_DBCN, dbtr::EID_DBTR, fwft::EID_FWFT, hsm::EID_HSM,
    legacy, mpxy::EID_MPXY, nacl::EID_NACL, pmu::EID_PMU, rfnc::EID_RFNC, spi::EID_SPI,
    srst::EID_SRST, sse::EID_SSE, sta::EID_STA, susp::EID_SUSP, time::EID_TIME,
};

/// First EID of the experimental extension space.
const EXPERIMENTAL_FIRST: usize = 0x0800_0000;
/// Last EID of the experimental range.
const EXPERIMENTAL_LAST: usize = 0x08FF_FFFF;
/// First EID of the vendor-specific range.
const VENDOR_FIRST: usize = 0x0900_0000;
/// Last EID of the vendor-specific range.
const VENDOR_LAST: usize = 0x09FF_FFFF;
/// First EID of the firmware-specific range.
const FIRMWARE_FIRST: usize = 0x0A00_0000;
/// Last EID of the firmware-specific range.
const FIRMWARE_LAST: usize = 0x0AFF_FFFF;
/// Last EID reserved for legacy (v0.1) extensions; 0x09..=0x0F are reserved and unimplemented.
const LEGACY_RESERVED_LAST: usize = 0x0F;

/// An SBI extension this crate implements.
///
/// The legacy v0.1 calls use one EID per function; they are grouped under
/// [`Extension::Legacy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extension {
    /// Base extension (EID 0x10).
    Base,
    /// Timer extension "TIME".
    Timer,
    /// IPI extension "sPI".
    Ipi,
    /// Remote fence extension "RFNC".
    RemoteFence,
    /// Hart state management extension "HSM".
    HartStateManagement,
    /// System reset extension "SRST".
    SystemReset,
    /// Debug console extension "DBCN".
    DebugConsole,
    /// Legacy v0.1 extensions, EIDs 0x00..=0x08.
    Legacy,
}

impl Extension {
    /// Every implemented extension, in [`Extension::index`] order.
    pub const ALL: [Extension; 8] = [
        Extension::Base,
        Extension::Timer,
        Extension::Ipi,
        Extension::RemoteFence,
        Extension::HartStateManagement,
        Extension::SystemReset,
        Extension::DebugConsole,
        Extension::Legacy,
    ];

    /// The implemented extension that owns `eid`, or `None` if `eid` is not implemented.
    ///
    /// EIDs are compared as full registers: the spec passes them as sign-extended 32-bit
    /// values, so a register with stray upper bits names no extension.
    pub const fn from_eid(eid: usize) -> Option<Extension> {
        match eid {
            EID_BASE => Some(Extension::Base),
            EID_TIME => Some(Extension::Timer),
            EID_SPI => Some(Extension::Ipi),
            EID_RFNC => Some(Extension::RemoteFence),
            EID_HSM => Some(Extension::HartStateManagement),
            EID_SRST => Some(Extension::SystemReset),
            EID_DBCN => Some(Extension::DebugConsole),
            legacy::LEGACY_SET_TIMER..=legacy::LEGACY_SHUTDOWN => Some(Extension::Legacy),
            _ => None,
        }
    }

    /// A short, stable position (0..8) usable as an array index.
    pub const fn index(self) -> usize {
        match self {
            Extension::Base => 0,
            Extension::Timer => 1,
            Extension::Ipi => 2,
            Extension::RemoteFence => 3,
            Extension::HartStateManagement => 4,
            Extension::SystemReset => 5,
            Extension::DebugConsole => 6,
            Extension::Legacy => 7,
        }
    }

    /// The extension's short name as used in the specification.
    pub const fn name(self) -> &'static str {
        match self {
            Extension::Base => "BASE",
            Extension::Timer => "TIME",
            Extension::Ipi => "IPI",
            Extension::RemoteFence => "RFENCE",
            Extension::HartStateManagement => "HSM",
            Extension::SystemReset => "SRST",
            Extension::DebugConsole => "DBCN",
            Extension::Legacy => "LEGACY",
        }
    }
}

/// A human-readable name for any EID, for log messages.
///
/// Covers the implemented extensions, the other extensions of SBI v2.0 and later (which this
/// crate reports as unavailable), the individual legacy calls and the reserved EID ranges.
pub const fn extension_name(eid: usize) -> &'static str {
    match eid {
        legacy::LEGACY_SET_TIMER => "LEGACY set_timer",
        legacy::LEGACY_CONSOLE_PUTCHAR => "LEGACY console_putchar",
        legacy::LEGACY_CONSOLE_GETCHAR => "LEGACY console_getchar",
        legacy::LEGACY_CLEAR_IPI => "LEGACY clear_ipi",
        legacy::LEGACY_SEND_IPI => "LEGACY send_ipi",
        legacy::LEGACY_REMOTE_FENCE_I => "LEGACY remote_fence_i",
        legacy::LEGACY_REMOTE_SFENCE_VMA => "LEGACY remote_sfence_vma",
        legacy::LEGACY_REMOTE_SFENCE_VMA_ASID => "LEGACY remote_sfence_vma_asid",
        legacy::LEGACY_SHUTDOWN => "LEGACY shutdown",
        0x09..=LEGACY_RESERVED_LAST => "LEGACY reserved",
        EID_BASE => "BASE",
        EID_TIME => "TIME",
        EID_SPI => "IPI",
        EID_RFNC => "RFENCE",
        EID_HSM => "HSM",
        EID_SRST => "SRST",
        EID_PMU => "PMU",
        EID_DBCN => "DBCN",
        EID_SUSP => "SUSP",
        EID_CPPC => "CPPC",
        EID_NACL => "NACL",
        EID_STA => "STA",
        EID_SSE => "SSE",
        EID_FWFT => "FWFT",
        EID_DBTR => "DBTR",
        EID_MPXY => "MPXY",
        EXPERIMENTAL_FIRST..=EXPERIMENTAL_LAST => "experimental",
        VENDOR_FIRST..=VENDOR_LAST => "vendor-specific",
        FIRMWARE_FIRST..=FIRMWARE_LAST => "firmware-specific",
        _ => "unknown",
    }
}

/// Per-extension SBI call counters for one vCPU (or one capsule).
///
/// [`dispatch`](crate::dispatch) does not touch it: the hypervisor keeps one `CallStats` where it
/// likes (typically per vCPU, so no locking is needed) and calls [`CallStats::record`] with each
/// call's EID. Recording is a match and an add; counters saturate instead of wrapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    by_extension: [u64; Extension::ALL.len()],
    unsupported: u64,
}

impl CallStats {
    /// All counters at zero.
    pub const fn new() -> CallStats {
        CallStats {
            by_extension: [0; Extension::ALL.len()],
            unsupported: 0,
        }
    }

    /// Counts one call to `eid`: under its extension if implemented, otherwise as unsupported.
    pub fn record(&mut self, eid: usize) {
        let counter = match Extension::from_eid(eid) {
            Some(extension) => &mut self.by_extension[extension.index()],
            None => &mut self.unsupported,
        };
        *counter = counter.saturating_add(1);
    }

    /// Calls recorded for `extension`.
    pub const fn count(&self, extension: Extension) -> u64 {
        self.by_extension[extension.index()]
    }

    /// Calls recorded to EIDs this crate does not implement.
    pub const fn unsupported(&self) -> u64 {
        self.unsupported
    }

    /// All calls recorded.
    pub fn total(&self) -> u64 {
        self.by_extension
            .iter()
            .fold(self.unsupported, |sum, count| sum.saturating_add(*count))
    }

    /// `(extension, count)` for every implemented extension, in [`Extension::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Extension, u64)> + '_ {
        Extension::ALL
            .into_iter()
            .map(|extension| (extension, self.count(extension)))
    }
}

#[cfg(test)]
mod tests {
    use super::{extension_name, CallStats, Extension};

    #[test]
    fn index_matches_position_in_all() {
        for (position, extension) in Extension::ALL.into_iter().enumerate() {
            assert_eq!(extension.index(), position);
        }
    }

    #[test]
    fn from_eid_recognises_exactly_the_implemented_set() {
        assert_eq!(Extension::from_eid(0x10), Some(Extension::Base));
        assert_eq!(Extension::from_eid(0x5449_4D45), Some(Extension::Timer));
        assert_eq!(Extension::from_eid(0x73_5049), Some(Extension::Ipi));
        assert_eq!(
            Extension::from_eid(0x5246_4E43),
            Some(Extension::RemoteFence)
        );
        assert_eq!(
            Extension::from_eid(0x48_534D),
            Some(Extension::HartStateManagement)
        );
        assert_eq!(
            Extension::from_eid(0x5352_5354),
            Some(Extension::SystemReset)
        );
        assert_eq!(
            Extension::from_eid(0x4442_434E),
            Some(Extension::DebugConsole)
        );
        for eid in 0..=8 {
            assert_eq!(Extension::from_eid(eid), Some(Extension::Legacy));
        }
        for eid in [0x09, 0x0F, 0x11, 0x50_4D55, 0x5355_5350, 0x4350_5043] {
            assert_eq!(Extension::from_eid(eid), None, "{eid:#x}");
        }
        // Upper register bits are not ignored.
        assert_eq!(Extension::from_eid(0x1_0000_0010), None);
    }

    #[test]
    fn names_cover_known_and_reserved_ranges() {
        assert_eq!(extension_name(0x10), "BASE");
        assert_eq!(extension_name(0x4442_434E), "DBCN");
        assert_eq!(extension_name(0x50_4D55), "PMU");
        assert_eq!(extension_name(0x5355_5350), "SUSP");
        assert_eq!(extension_name(0x4350_5043), "CPPC");
        assert_eq!(extension_name(0x02), "LEGACY console_getchar");
        assert_eq!(extension_name(0x0C), "LEGACY reserved");
        assert_eq!(extension_name(0x0800_0001), "experimental");
        assert_eq!(extension_name(0x0912_3456), "vendor-specific");
        assert_eq!(extension_name(0x0A00_0000), "firmware-specific");
        assert_eq!(extension_name(0x4B45_4C00), "unknown");
        assert_eq!(extension_name(usize::MAX), "unknown");
    }

    #[test]
    fn stats_count_by_extension() {
        let mut stats = CallStats::new();
        stats.record(0x10);
        stats.record(0x10);
        stats.record(0x5449_4D45);
        stats.record(0x00);
        stats.record(0x08);
        stats.record(0x50_4D55);
        assert_eq!(stats.count(Extension::Base), 2);
        assert_eq!(stats.count(Extension::Timer), 1);
        assert_eq!(stats.count(Extension::Legacy), 2);
        assert_eq!(stats.count(Extension::Ipi), 0);
        assert_eq!(stats.unsupported(), 1);
        assert_eq!(stats.total(), 6);
        let listed: Vec<_> = stats.iter().filter(|(_, count)| *count > 0).collect();
        assert_eq!(
            listed,
            vec![
                (Extension::Base, 2),
                (Extension::Timer, 1),
                (Extension::Legacy, 2)
            ]
        );
    }

    #[test]
    fn stats_saturate() {
        let mut stats = CallStats::new();
        stats.unsupported = u64::MAX;
        stats.record(0x1234);
        assert_eq!(stats.unsupported(), u64::MAX);
        assert_eq!(stats.total(), u64::MAX);
    }
}
