//! Intervals for the numbers a run reports about itself: Wilson score intervals for
//! proportions, seeded percentile bootstraps for means and for paired differences (the same
//! prompts answered before and after training). Pure functions.

use rand::Rng;

/// The 95% Wilson score interval of `successes` out of `n` (`(0, 1)` when `n` is 0). Unlike the
/// normal approximation it stays inside [0, 1] and is honest at 0 or n successes.
pub fn wilson(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_964;
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The 95% percentile-bootstrap interval of the mean of `xs` (`resamples` draws from the
/// stream `seed`).
pub fn bootstrap_mean(xs: &[f64], seed: u64, resamples: usize) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = crate::rng::stream(seed, "stats/bootstrap");
    let mut means: Vec<f64> =
        (0..resamples.max(1)).map(|_| (0..xs.len()).map(|_| xs[rng.random_range(0..xs.len())]).sum::<f64>() / xs.len() as f64).collect();
    means.sort_by(f64::total_cmp);
    (percentile(&means, 0.025), percentile(&means, 0.975))
}

/// The mean of `after - before` over paired items and its 95% paired-bootstrap interval: the
/// pairs are resampled together, so the interval reflects that both were measured on the same
/// prompts.
pub fn paired_difference(before: &[f64], after: &[f64], seed: u64, resamples: usize) -> (f64, f64, f64) {
    let d: Vec<f64> = before.iter().zip(after).map(|(b, a)| a - b).collect();
    if d.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let (lo, hi) = bootstrap_mean(&d, seed, resamples);
    (mean, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_hand_computed_values() {
        // 10 of 20: centre 0.5, half-width 1.96*sqrt(0.25/20 + 0.96/1600)/1.192 = 0.2025
        let (lo, hi) = wilson(10, 20);
        assert!((lo - 0.2993).abs() < 1e-3 && (hi - 0.7007).abs() < 1e-3, "{lo} {hi}");
        // 0 of 32 is not [0, 0]: the upper bound is about 0.107
        let (lo, hi) = wilson(0, 32);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1072).abs() < 1e-3, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(32, 32);
        assert!(lo > 0.89 && hi == 1.0);
    }

    #[test]
    fn bootstraps_are_seeded_and_bracket_the_mean() {
        let xs: Vec<f64> = (0..40).map(|i| (i % 3) as f64).collect();
        let a = bootstrap_mean(&xs, 7, 2000);
        assert_eq!(a, bootstrap_mean(&xs, 7, 2000));
        let m = xs.iter().sum::<f64>() / 40.0;
        assert!(a.0 < m && m < a.1, "{a:?} around {m}");
        // identical before and after: a zero change, and an interval of exactly zero
        assert_eq!(paired_difference(&xs, &xs, 1, 500), (0.0, 0.0, 0.0));
        // every item one better: +1 with no doubt
        let up: Vec<f64> = xs.iter().map(|x| x + 1.0).collect();
        assert_eq!(paired_difference(&xs, &up, 1, 500), (1.0, 1.0, 1.0));
    }
}
