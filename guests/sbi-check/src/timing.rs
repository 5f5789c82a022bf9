//! Nanoseconds per operation from `rdtime` ticks, in integer arithmetic (the guest keeps the FPU off).

use core::fmt;

/// A duration per operation in thousandths of a nanosecond, printed as a decimal like `123.456`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NanosPerOperation {
    pub picoseconds: u128,
}

impl NanosPerOperation {
    /// `ticks` of a `timebase_hz` clock spent on `operations` operations, or `None` when either
    /// count is zero (there is no meaningful rate then).
    pub fn from_ticks(ticks: u64, operations: u64, timebase_hz: u64) -> Option<NanosPerOperation> {
        if operations == 0 || timebase_hz == 0 {
            return None;
        }
        // ticks * 10^12 / (operations * hz) picoseconds. Each product has two factors below 2^64
        // (10^12 < 2^40), so neither overflows a u128.
        let numerator = u128::from(ticks) * 1_000_000_000_000;
        let denominator = u128::from(operations) * u128::from(timebase_hz);
        Some(NanosPerOperation {
            picoseconds: numerator / denominator,
        })
    }
}

impl fmt::Display for NanosPerOperation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}.{:03}",
            self.picoseconds / 1000,
            self.picoseconds % 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::NanosPerOperation;

    #[test]
    fn ten_megahertz_ticks_become_nanoseconds() {
        // QEMU virt's timebase is 10 MHz: one tick is 100 ns.
        let rate = NanosPerOperation::from_ticks(1, 1, 10_000_000).unwrap();
        assert_eq!(rate.to_string(), "100.000");
        // 100000 operations in 12345 ticks: 1234500000 ns / 100000 = 12345 ns each.
        let rate = NanosPerOperation::from_ticks(12_345, 100_000, 10_000_000).unwrap();
        assert_eq!(rate.to_string(), "12.345");
        let rate = NanosPerOperation::from_ticks(7, 3, 1_000_000_000).unwrap();
        assert_eq!(rate.to_string(), "2.333");
    }

    #[test]
    fn output_parses_as_a_float() {
        let rate = NanosPerOperation::from_ticks(1_000_003, 100_000, 10_000_000).unwrap();
        let text = rate.to_string();
        let parsed: f64 = text.parse().unwrap();
        assert!((parsed - 1000.003).abs() < 1e-9, "{text}");
    }

    #[test]
    fn zero_counts_have_no_rate_and_huge_ones_do_not_overflow() {
        assert_eq!(NanosPerOperation::from_ticks(5, 0, 10_000_000), None);
        assert_eq!(NanosPerOperation::from_ticks(5, 1, 0), None);
        let rate = NanosPerOperation::from_ticks(u64::MAX, 1, 1).unwrap();
        assert_eq!(rate.picoseconds, u128::from(u64::MAX) * 1_000_000_000_000);
        assert_eq!(
            NanosPerOperation::from_ticks(0, 100_000, 10_000_000)
                .unwrap()
                .to_string(),
            "0.000"
        );
    }
}
