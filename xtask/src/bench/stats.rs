//! Summary statistics for repeated measurements, and the order in which compared variants run.

use serde::Serialize;

/// What a set of samples of one figure comes to. Every raw sample is kept beside the summary so a
/// reader can recompute anything else.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max - min) / median, in percent: how far apart the fastest and the slowest run were.
    pub spread_percent: Option<f64>,
}

impl Summary {
    /// `None` when there is nothing to summarise: no samples, or a sample that is not a finite number.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|value| !value.is_finite()) {
            return None;
        }
        let median = median(samples)?;
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Summary {
            samples: samples.to_vec(),
            median,
            min,
            max,
            spread_percent: spread_percent(min, max, median),
        })
    }
}

/// The middle sample; the mean of the two middle ones for an even count. `None` for no samples or
/// for samples that do not order (NaN).
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() || samples.iter().any(|value| value.is_nan()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

/// The range relative to the median, in percent; undefined when the median is zero.
pub fn spread_percent(min: f64, max: f64, median: f64) -> Option<f64> {
    (median != 0.0).then(|| (max - min) / median.abs() * 100.0)
}

/// Keel's median over the baseline's median; undefined without a non-zero baseline.
pub fn ratio(keel: &Summary, baseline: &Summary) -> Option<f64> {
    (baseline.median != 0.0).then(|| keel.median / baseline.median)
}

/// The order in which `variants` run for `reps` repetitions: one run of each variant per round,
/// rounds one after another (A B A B ... for two). Interleaving spreads slow phases of a shared
/// machine over all variants instead of letting them fall on one. Returns (variant index, repetition).
pub fn alternation(variants: usize, reps: u32) -> Vec<(usize, u32)> {
    (0..reps)
        .flat_map(|rep| (0..variants).map(move |variant| (variant, rep)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn median_is_not_pulled_by_an_outlier() {
        assert_eq!(median(&[1.0, 1.1, 0.9, 50.0, 1.05]), Some(1.05));
    }

    #[test]
    fn summary_keeps_samples_and_spread() {
        let summary = Summary::of(&[2.0, 1.5, 2.5, 2.0]).unwrap();
        assert_eq!(summary.samples, vec![2.0, 1.5, 2.5, 2.0]);
        assert_eq!(summary.median, 2.0);
        assert_eq!(summary.min, 1.5);
        assert_eq!(summary.max, 2.5);
        assert_eq!(summary.spread_percent, Some(50.0));

        let single = Summary::of(&[3.0]).unwrap();
        assert_eq!((single.min, single.max), (3.0, 3.0));
        assert_eq!(single.spread_percent, Some(0.0));
    }

    #[test]
    fn summary_refuses_empty_and_non_finite_samples() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::INFINITY]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn spread_and_ratio_need_a_non_zero_reference() {
        assert_eq!(spread_percent(0.0, 0.0, 0.0), None);
        assert_eq!(spread_percent(-1.0, 1.0, -2.0), Some(100.0));
        let keel = Summary::of(&[3.0, 3.0]).unwrap();
        let native = Summary::of(&[1.0, 2.0]).unwrap();
        assert_eq!(ratio(&keel, &native), Some(2.0));
        let zero = Summary::of(&[0.0]).unwrap();
        assert_eq!(ratio(&keel, &zero), None);
    }

    #[test]
    fn alternation_interleaves_variants_round_by_round() {
        assert_eq!(
            alternation(2, 3),
            vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
        );
        assert_eq!(
            alternation(3, 2),
            vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
        );
        assert_eq!(alternation(2, 0), vec![]);
        assert_eq!(alternation(1, 2), vec![(0, 0), (0, 1)]);
    }
}
