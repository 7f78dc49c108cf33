//! The statistics behind every number mpo reports about a run: Wilson score intervals for
//! proportions; for paired 0/1 outcomes (the same prompts answered by two policies) the exact
//! McNemar test and Newcombe's square-and-add interval; for paired continuous scores a sign-flip
//! permutation test (exact up to 16 pairs) and BCa bootstrap intervals. Pure functions, seeded.
//!
//! Written by hand (the normal quantile, the binomial tail): the crates that have them (statrs)
//! pull in a linear-algebra stack for three functions. Every value is pinned in the tests
//! against an independent implementation (scipy, R's contingencytables), named there.

use rand::Rng;

/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The 95% Wilson score interval of `successes` out of `n` (`(0, 1)` when `n` is 0). Unlike the
/// normal approximation it stays inside [0, 1] and is honest at 0 or n successes.
pub fn wilson(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = Z95;
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The exact McNemar test: the two-sided binomial (sign) test of `up` against `down` discordant
/// pairs at probability 1/2, `min(1, 2 P(X <= min(up, down)))`. 1 when there are none.
pub fn mcnemar_exact(up: usize, down: usize) -> f64 {
    let n = up + down;
    let k = up.min(down);
    if n == 0 {
        return 1.0;
    }
    // ln C(n, i) - n ln 2, summed in log space: 2^-n underflows past n = 1074.
    let mut ln_c = 0.0f64;
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(ln_c - n as f64 * std::f64::consts::LN_2);
    }
    let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Newcombe's square-and-add interval (1998, paired data, method 10) for the change
/// `after - before` of a paired 0/1 outcome, from the four cells: `both` succeeded,
/// `before_only`, `after_only`, `neither`. It combines the two Wilson intervals with the
/// correlation of the pairs (phi, continuity-corrected toward 0), so it never has zero width
/// and stays inside [-1, 1].
pub fn newcombe_paired(both: usize, before_only: usize, after_only: usize, neither: usize) -> (f64, f64) {
    let n = both + before_only + after_only + neither;
    if n == 0 {
        return (-1.0, 1.0);
    }
    let nf = n as f64;
    let (x1, x2) = (both + before_only, both + after_only);
    let (p1, p2) = (x1 as f64 / nf, x2 as f64 / nf);
    let ((l1, u1), (l2, u2)) = (wilson(x1, n), wilson(x2, n));
    let margins = [x1, n - x1, x2, n - x2];
    let phi = if margins.contains(&0) {
        0.0
    } else {
        let a = both as f64 * neither as f64 - before_only as f64 * after_only as f64;
        let corrected = if a > nf / 2.0 {
            a - nf / 2.0
        } else if a >= 0.0 {
            0.0
        } else {
            a
        };
        corrected / margins.iter().map(|&m| m as f64).product::<f64>().sqrt()
    };
    // Newcombe's interval is for before - after; the change is its mirror image.
    let d = p1 - p2;
    let lo = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2) - 2.0 * phi * (p1 - l1) * (u2 - p2)).max(0.0).sqrt();
    let hi = d + ((p2 - l2).powi(2) + (u1 - p1).powi(2) - 2.0 * phi * (p2 - l2) * (u1 - p1)).max(0.0).sqrt();
    ((-hi).max(-1.0), (-lo).min(1.0))
}

/// The two-sided sign-flip permutation test of a paired mean difference being 0: under the
/// null each difference is as likely negated. Exact (all 2^n flips) up to 16 pairs; beyond, a
/// seeded Monte Carlo over `draws` flips with the +1 correction, so p is never 0.
pub fn sign_flip_test(diffs: &[f64], seed: u64, draws: usize) -> f64 {
    let n = diffs.len();
    if n == 0 {
        return 1.0;
    }
    let observed = diffs.iter().sum::<f64>().abs();
    // A relative tolerance: a flip that reproduces the observed sum up to rounding counts as
    // at least as extreme.
    let tol = 1e-9 * diffs.iter().map(|d| d.abs()).sum::<f64>().max(1e-300);
    let extreme = |s: f64| s.abs() >= observed - tol;
    if n <= 16 {
        let hits = (0u32..1 << n)
            .filter(|mask| extreme(diffs.iter().enumerate().map(|(i, d)| if mask >> i & 1 == 1 { -d } else { *d }).sum()))
            .count();
        return hits as f64 / (1u64 << n) as f64;
    }
    let mut rng = crate::rng::stream(seed, "stats/sign-flip");
    let hits = (0..draws).filter(|_| extreme(diffs.iter().map(|d| if rng.random_bool(0.5) { -d } else { *d }).sum())).count();
    (hits + 1) as f64 / (draws + 1) as f64
}

/// The standard normal distribution function, through `erfc`.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    // The Chebyshev fit of Press et al., Numerical Recipes 6.2 (fractional error < 1.2e-7
    // everywhere): ample for percentile positions among a few thousand resamples.
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] =
        [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.383_577_518_672_69e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] =
        [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The 95% BCa (bias-corrected and accelerated) bootstrap interval of the mean of `xs`:
/// `resamples` draws from the stream `seed`, bias from the share of resampled means below the
/// mean, acceleration from the jackknife. `None` when it cannot be an interval: fewer than two
/// values, or all equal up to rounding (the caller says so rather than print a zero width).
pub fn bca_mean(xs: &[f64], seed: u64, resamples: usize) -> Option<(f64, f64)> {
    let n = xs.len();
    // "Equal" up to rounding: 0.1 added to different values differs in the last bits.
    let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    if n < 2 || hi - lo <= 1e-12 * lo.abs().max(hi.abs()) {
        return None;
    }
    let nf = n as f64;
    let sum: f64 = xs.iter().sum();
    let mean = sum / nf;
    let mut rng = crate::rng::stream(seed, "stats/bootstrap");
    let b = resamples.max(100);
    let mut means: Vec<f64> = (0..b).map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / nf).collect();
    means.sort_by(f64::total_cmp);
    // Ties at the mean count half (as scipy does), and the share is kept off 0 and 1.
    let below = means.iter().filter(|m| **m < mean).count() as f64 + 0.5 * means.iter().filter(|m| **m == mean).count() as f64;
    let z0 = normal_quantile((below / b as f64).clamp(0.5 / b as f64, 1.0 - 0.5 / b as f64));
    let jack: Vec<f64> = xs.iter().map(|x| (sum - x) / (nf - 1.0)).collect();
    let jbar = jack.iter().sum::<f64>() / nf;
    let (s2, s3) = jack.iter().fold((0.0, 0.0), |(s2, s3), j| (s2 + (jbar - j).powi(2), s3 + (jbar - j).powi(3)));
    let a = if s2 > 0.0 { s3 / (6.0 * s2.powf(1.5)) } else { 0.0 };
    let adjusted = |z: f64| normal_cdf(z0 + (z0 + z) / (1.0 - a * (z0 + z)));
    Some((percentile(&means, adjusted(-Z95)), percentile(&means, adjusted(Z95))))
}

/// Whether scores are a proportion (each 0 or 1: a Wilson interval and the exact test apply).
pub fn is_proportion(scores: &[f64]) -> bool {
    scores.iter().all(|&x| x == 0.0 || x == 1.0)
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
    fn the_exact_mcnemar_test_matches_scipy() {
        // scipy 1.17.1: stats.binomtest(k, n, 0.5).pvalue
        for (up, down, p) in [
            (4, 0, 0.125),
            (3, 0, 0.25),
            (5, 0, 0.0625),
            (10, 0, 0.001953125),
            (6, 16, 0.052478790283203125),
            (16, 6, 0.052478790283203125),
            (1, 7, 0.0703125),
            (7, 7, 1.0),
        ] {
            let got = mcnemar_exact(up, down);
            assert!((got - p).abs() < 1e-12, "{up}/{down}: {got} vs {p}");
        }
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // far past 2^-1074: stats.binomtest(900, 2000, 0.5).pvalue = 8.457e-6
        let big = mcnemar_exact(900, 1100);
        assert!((big / 8.457_089_535_503_81e-6 - 1.0).abs() < 1e-6, "{big}");
    }

    #[test]
    fn newcombes_interval_matches_the_published_value() {
        // Fagerland, Lydersen & Laake (2017), "Statistical Analysis of Contingency Tables",
        // ch. 8, complete response before/after consolidation therapy (Cavo et al. 2012):
        // table [[59, 6], [16, 80]], before - after = -0.0621 (95% CI -0.1186 to -0.0046), as
        // R's contingencytables::Newcombe_square_and_add_CI_paired_2x2 prints it.
        let (lo, hi) = newcombe_paired(59, 6, 16, 80);
        assert!((lo - 0.0046).abs() < 5e-5 && (hi - 0.1186).abs() < 5e-5, "{lo} {hi}");
        // no discordant pairs: still a real interval around 0
        let (lo, hi) = newcombe_paired(3, 0, 0, 29);
        assert!(lo < -0.05 && hi > 0.05, "{lo} {hi}");
        // everything flipped up: near +1 but inside [-1, 1]
        let (lo, hi) = newcombe_paired(0, 0, 32, 0);
        assert!(lo > 0.8 && hi == 1.0, "{lo} {hi}");
    }

    #[test]
    fn sign_flips_are_exact_for_few_pairs() {
        // 4 equal positive differences: 2 of the 16 flips are as extreme (all +, all -)
        assert_eq!(sign_flip_test(&[1.0, 1.0, 1.0, 1.0], 0, 0), 0.125);
        // paired 0/1 differences: the same p as the exact McNemar test (ties are zeros)
        let d = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(sign_flip_test(&d, 0, 0), mcnemar_exact(4, 0));
        assert_eq!(sign_flip_test(&[0.0; 5], 0, 0), 1.0);
        // beyond 16 pairs: Monte Carlo, seeded, never 0
        let many: Vec<f64> = (0..40).map(|i| 0.5 + (i % 3) as f64).collect();
        let p = sign_flip_test(&many, 3, 2000);
        assert_eq!(p, sign_flip_test(&many, 3, 2000));
        assert!(p > 0.0 && p < 0.001, "{p}");
    }

    #[test]
    fn the_normal_functions_match_scipy() {
        // scipy 1.17.1: stats.norm.cdf / stats.norm.ppf
        for (x, c) in [(0.0, 0.5), (1.959963984540054, 0.975), (-1.0, 0.15865525393145707), (3.0, 0.9986501019683699)] {
            assert!((normal_cdf(x) - c).abs() < 2e-7, "cdf({x})");
        }
        for (p, q) in [(0.975, 1.959963984540054), (0.5, 0.0), (0.01, -2.3263478740408408), (0.9999, 3.719016485455709)] {
            assert!((normal_quantile(p) - q).abs() < 1e-8, "ppf({p})");
        }
    }

    #[test]
    fn bca_intervals_are_seeded_cover_and_refuse_a_constant() {
        let xs: Vec<f64> = (0..40).map(|i| (i % 3) as f64).collect();
        let a = bca_mean(&xs, 7, 2000).unwrap();
        assert_eq!(Some(a), bca_mean(&xs, 7, 2000));
        let m = xs.iter().sum::<f64>() / 40.0;
        assert!(a.0 < m && m < a.1, "{a:?} around {m}");
        assert_eq!(bca_mean(&[0.3; 9], 1, 500), None);
        assert_eq!(bca_mean(&[1.0], 1, 500), None);
        // coverage on skewed data (exponential, n = 20): the share of 300 seeded samples whose
        // interval holds the true mean 1 is near 95% (the percentile bootstrap sits near 91% here)
        let mut covered = 0;
        for s in 0..300u64 {
            let mut r = crate::rng::stream(s, "test/exponential");
            let xs: Vec<f64> = (0..20).map(|_| -(1.0 - r.random::<f64>()).ln()).collect();
            let (lo, hi) = bca_mean(&xs, s, 1000).unwrap();
            covered += usize::from(lo <= 1.0 && 1.0 <= hi);
        }
        assert!((270..=294).contains(&covered), "{covered} of 300");
    }
}
