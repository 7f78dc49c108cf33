//! PPO and GRPO: per-token KL penalty (k1 or k3) against the reference policy, the sequence
//! score added at the last response token (textbook; `ppo.score_at: after_eos` puts it one slot
//! later, inside the value mask, as the reference implementation does), GAE, whitened
//! advantages, clipped policy and value losses, group-normalised GRPO advantages.
//!
//! The math is pure: reward shaping, GAE and whitening work on host vectors of one sequence or
//! batch ([`shape_rewards`], [`gae`], [`whiten`]); the losses ([`ppo_loss`], [`grpo_loss`]) are
//! tensor functions of a mini-batch. All are tested against hand-computed values. The
//! training loop around them lives in `run/`.

use burn::prelude::*;

use crate::spec::{GrpoLoss, KlEstimator};

/// Per-token KL estimate of the policy against the reference from log-probs.
/// k1: `logp - ref`; k3: `(r - 1) - log r` with `r = exp(ref - logp)` (TRL's definitions).
pub fn kl(logp: f64, ref_logp: f64, est: KlEstimator) -> f64 {
    let logr = ref_logp - logp;
    match est {
        KlEstimator::K1 => -logr,
        KlEstimator::K3 => logr.exp() - 1.0 - logr,
    }
}

/// How far the trainer's log-probs of the rollouts' tokens sit from those their generator
/// reported (mpo's decoder or an inference engine), over every response token: the off-policy
/// drift PPO's ratio silently absorbs when the two differ.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Drift {
    /// Tokens compared.
    pub tokens: usize,
    /// Tokens the generator gave no finite log-prob for (left out).
    pub missing: usize,
    /// Mean of |trainer - generator|.
    #[serde(serialize_with = "crate::round::six_or_zero")]
    pub mean_abs: f64,
    /// Largest |trainer - generator|.
    #[serde(serialize_with = "crate::round::six_or_zero")]
    pub max_abs: f64,
    /// Mean of trainer - generator (> 0: the trainer finds the tokens likelier).
    #[serde(serialize_with = "crate::round::six_or_zero")]
    pub mean: f64,
}

impl Drift {
    /// The drift of `(trainer, generator)` log-prob pairs; `None` when no token has both.
    pub fn of(pairs: impl IntoIterator<Item = (f64, f64)>) -> Option<Drift> {
        let mut d = Drift::default();
        let (mut sum, mut sum_abs) = (0.0, 0.0);
        for (t, g) in pairs {
            if !g.is_finite() || !t.is_finite() {
                d.missing += 1;
                continue;
            }
            let x = t - g;
            d.tokens += 1;
            sum += x;
            sum_abs += x.abs();
            d.max_abs = d.max_abs.max(x.abs());
        }
        (d.tokens > 0).then(|| Drift { mean_abs: sum_abs / d.tokens as f64, mean: sum / d.tokens as f64, ..d })
    }
}

/// Per-token rewards of one response: `-kl_coef * kl` at every token, plus `score` at the
/// last one. With `extra_slot` the rewards get one more position after the response (no KL
/// there) and the score goes into it: the reference's placement one slot after EOS. Returns
/// (rewards, per-token kl of the response tokens).
pub fn shape_rewards(
    logps: &[f64],
    ref_logps: &[f64],
    score: f64,
    kl_coef: f64,
    est: KlEstimator,
    extra_slot: bool,
) -> (Vec<f64>, Vec<f64>) {
    let kls: Vec<f64> = logps.iter().zip(ref_logps).map(|(l, r)| kl(*l, *r, est)).collect();
    let mut rewards: Vec<f64> = kls.iter().map(|k| -kl_coef * k).collect();
    if extra_slot {
        rewards.push(0.0);
    }
    if let Some(last) = rewards.last_mut() {
        *last += score;
    }
    (rewards, kls)
}

/// Generalized advantage estimation over one response; (advantages, returns).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        last = delta + gamma * lam * last;
        adv[t] = last;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

/// Whiten values across a batch (mean 0, std 1, unbiased variance as TRL); `shift_mean =
/// false` restores the mean (TRL's reward whitening).
pub fn whiten(xs: &mut [Vec<f64>], shift_mean: bool) {
    let n: usize = xs.iter().map(Vec::len).sum();
    if n < 2 {
        return;
    }
    let mean = xs.iter().flatten().sum::<f64>() / n as f64;
    let var = xs.iter().flatten().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let inv = 1.0 / (var + 1e-8).sqrt();
    for v in xs.iter_mut().flatten() {
        *v = (*v - mean) * inv + if shift_mean { 0.0 } else { mean };
    }
}

/// GRPO advantages: each score normalised within its group, the responses sharing a group id
/// (one prompt). Position does not matter: a skipped member leaves its group smaller, never
/// shifts the others into the wrong group.
pub fn group_advantages(scores: &[f64], groups: &[usize]) -> Vec<f64> {
    let mut members: std::collections::BTreeMap<usize, Vec<f64>> = std::collections::BTreeMap::new();
    for (s, g) in scores.iter().zip(groups) {
        members.entry(*g).or_default().push(*s);
    }
    let stats: std::collections::BTreeMap<usize, (f64, f64)> = members
        .into_iter()
        .map(|(g, xs)| {
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let std = if xs.len() > 1 { (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt() } else { 0.0 };
            (g, (mean, std))
        })
        .collect();
    scores.iter().zip(groups).map(|(x, g)| (x - stats[g].0) / (stats[g].1 + 1e-4)).collect()
}

/// `sum(x * mask) / sum(mask)`.
pub fn masked_mean<B: Backend>(x: Tensor<B, 2>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
    (x * mask.clone()).sum().div(mask.sum().clamp_min(1.0))
}

/// Log-probs `[M, R]` of `targets` under `logits` `[M, R, V]` divided by `temperature`, and
/// with `entropy` the per-position entropy `[M, R]` (a statistic: computed off the autodiff graph).
///
/// `log p(y) = z_y - logsumexp(z)`: the taken token's logit minus one log-sum-exp per position,
/// so no full-vocabulary log-softmax is materialised (or differentiated) beside the logits.
pub fn token_logprobs<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    temperature: f64,
    entropy: bool,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let z = logits.div_scalar(t + 1e-7);
    let max = z.clone().detach().max_dim(2);
    let shifted = z.clone() - max.clone();
    let e = shifted.clone().exp();
    let sum = e.clone().sum_dim(2);
    let lse = sum.clone().log() + max;
    let lp = (z.gather(2, targets.unsqueeze_dim::<3>(2)) - lse).squeeze_dim::<2>(2);
    // H = -sum p log p = log s - sum(e * shifted) / s, with e = exp(z - max), s = sum e.
    let ent = entropy.then(|| {
        let (sum, e, shifted) = (sum.detach(), e.detach(), shifted.detach());
        (sum.clone().log() - (e * shifted).sum_dim(2).div(sum)).squeeze_dim::<2>(2)
    });
    (lp, ent)
}

/// The tensors of one PPO mini-batch (`[M, R]` unless noted).
pub struct PpoBatch<B: Backend> {
    pub new_logprobs: Tensor<B, 2>,
    pub old_logprobs: Tensor<B, 2>,
    pub advantages: Tensor<B, 2>,
    pub mask: Tensor<B, 2>,
    /// The critic's targets (absent for GRPO).
    pub values: Option<ValueBatch<B>>,
}

/// Critic outputs now and at rollout time, the GAE returns, and the value mask (the policy
/// mask, plus the score slot under `score_at: after_eos`).
pub struct ValueBatch<B: Backend> {
    pub values: Tensor<B, 2>,
    pub old_values: Tensor<B, 2>,
    pub returns: Tensor<B, 2>,
    pub mask: Tensor<B, 2>,
}

/// Loss and statistics of a mini-batch.
pub struct LossParts<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub policy_loss: Tensor<B, 1>,
    pub value_loss: Option<Tensor<B, 1>>,
    /// Share of tokens whose ratio was clipped.
    pub clipfrac: Tensor<B, 1>,
    /// `0.5 * mean((new - old)^2)`.
    pub approxkl: Tensor<B, 1>,
}

/// PPO: clipped surrogate `max(-A r, -A clip(r, 1-c, 1+c))` plus `vf_coef` times the clipped
/// value loss `0.5 * max((v - R)^2, (clip(v, v_old +- c_v) - R)^2)`.
pub fn ppo_loss<B: Backend>(b: PpoBatch<B>, cliprange: f64, cliprange_value: f64, vf_coef: f64) -> LossParts<B> {
    let diff = b.new_logprobs - b.old_logprobs;
    let ratio = diff.clone().exp();
    let pg1 = b.advantages.clone().neg() * ratio.clone();
    let pg2 = b.advantages.neg() * ratio.clamp(1.0 - cliprange, 1.0 + cliprange);
    let clipped = pg2.clone().greater(pg1.clone()).float();
    let policy_loss = masked_mean(pg1.max_pair(pg2), b.mask.clone());
    let clipfrac = masked_mean(clipped, b.mask.clone());
    let approxkl = masked_mean(diff.powi_scalar(2), b.mask.clone()).mul_scalar(0.5);
    let value_loss = b.values.map(|ValueBatch { values: v, old_values: v_old, returns, mask }| {
        let vclip = v_old.clone() + (v.clone() - v_old).clamp(-cliprange_value, cliprange_value);
        let l1 = (v - returns.clone()).powi_scalar(2);
        let l2 = (vclip - returns).powi_scalar(2);
        masked_mean(l1.max_pair(l2), mask).mul_scalar(0.5)
    });
    let loss = match &value_loss {
        Some(vl) => policy_loss.clone() + vl.clone().mul_scalar(vf_coef),
        None => policy_loss.clone(),
    };
    LossParts { loss, policy_loss, value_loss, clipfrac, approxkl }
}

/// A per-token loss `[M, R]` reduced to one number as `how` says (TRL's GRPO `loss_type`s):
/// `bnpo` the mean over every unmasked token of the micro-batch, `grpo` each sequence's token
/// mean then the mean over sequences, `dr_grpo` the masked sum over `M x max_len` (a constant
/// denominator, so long responses are not down-weighted).
pub fn aggregate<B: Backend>(x: Tensor<B, 2>, mask: Tensor<B, 2>, how: GrpoLoss, max_len: usize) -> Tensor<B, 1> {
    match how {
        GrpoLoss::Bnpo => masked_mean(x, mask),
        GrpoLoss::Grpo => (x * mask.clone()).sum_dim(1).div(mask.sum_dim(1).clamp_min(1.0)).mean(),
        GrpoLoss::DrGrpo => {
            let rows = x.dims()[0];
            (x * mask).sum().div_scalar((rows * max_len.max(1)) as f64)
        }
    }
}

/// GRPO: per token the clipped surrogate with group advantages plus `kl_coef` times the k3 KL to
/// the reference (the KL is in the loss, not the reward), reduced by [`aggregate`] with `how`
/// (`max_len`: `ppo.response_length`, `dr_grpo`'s denominator).
pub fn grpo_loss<B: Backend>(
    b: PpoBatch<B>,
    ref_logprobs: Tensor<B, 2>,
    cliprange: f64,
    kl_coef: f64,
    how: GrpoLoss,
    max_len: usize,
) -> LossParts<B> {
    let logr = ref_logprobs - b.new_logprobs.clone();
    let k3 = logr.clone().exp() - logr - 1.0;
    let diff = b.new_logprobs - b.old_logprobs;
    let ratio = diff.clone().exp();
    let pg1 = b.advantages.clone().neg() * ratio.clone();
    let pg2 = b.advantages.neg() * ratio.clamp(1.0 - cliprange, 1.0 + cliprange);
    let clipped = pg2.clone().greater(pg1.clone()).float();
    let pg = pg1.max_pair(pg2);
    let loss = aggregate(pg.clone() + k3.mul_scalar(kl_coef), b.mask.clone(), how, max_len);
    let policy_loss = aggregate(pg, b.mask.clone(), how, max_len);
    let clipfrac = masked_mean(clipped, b.mask.clone());
    let approxkl = masked_mean(diff.powi_scalar(2), b.mask).mul_scalar(0.5);
    LossParts { loss, policy_loss, value_loss: None, clipfrac, approxkl }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    type TB = burn::backend::Flex;

    #[test]
    fn drift_is_trainer_minus_generator_over_finite_pairs() {
        let d = Drift::of([(-1.0, -1.5), (-2.0, -1.0), (-0.5, f64::NAN), (-0.1, -0.1)]).unwrap();
        assert_eq!((d.tokens, d.missing), (3, 1));
        assert!((d.mean_abs - 0.5).abs() < 1e-12 && (d.max_abs - 1.0).abs() < 1e-12);
        assert!((d.mean - (0.5 - 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(Drift::of([(-1.0, f64::NEG_INFINITY)]), None);
    }

    fn t2(v: &[f32], m: usize, r: usize) -> Tensor<TB, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [m, r]), &Default::default())
    }

    fn scalar(t: Tensor<TB, 1>) -> f64 {
        t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
    }

    #[test]
    fn kl_estimators_by_hand() {
        // logp = -1, ref = -2: k1 = 1; k3 = e^-1 - 1 + 1 = 0.3679
        assert!((kl(-1.0, -2.0, KlEstimator::K1) - 1.0).abs() < 1e-12);
        assert!((kl(-1.0, -2.0, KlEstimator::K3) - (-1f64).exp()).abs() < 1e-12);
        assert_eq!(kl(-1.0, -1.0, KlEstimator::K3), 0.0);
        // k3 is never negative; k1 can be
        assert!(kl(-2.0, -1.0, KlEstimator::K1) < 0.0 && kl(-2.0, -1.0, KlEstimator::K3) > 0.0);
    }

    #[test]
    fn reward_shaping_and_gae_by_hand() {
        let (r, k) = shape_rewards(&[-1.0, -1.0], &[-1.5, -1.0], 2.0, 0.1, KlEstimator::K1, false);
        assert_eq!(k, vec![0.5, 0.0]);
        assert!((r[0] - -0.05).abs() < 1e-12 && (r[1] - 2.0).abs() < 1e-12);
        // gamma = 1, lam = 0.5, values [1, 2]:
        // t=1: delta = 2 - 2 = 0, A1 = 0; t=0: delta = -0.05 + 2 - 1 = 0.95, A0 = 0.95 + 0.5 * 0 = 0.95
        let (a, ret) = gae(&r, &[1.0, 2.0], 1.0, 0.5);
        assert!((a[0] - 0.95).abs() < 1e-12 && a[1].abs() < 1e-12);
        assert!((ret[0] - 1.95).abs() < 1e-12 && (ret[1] - 2.0).abs() < 1e-12);
        // gamma = 0.9, lam = 1 on three steps with zero values: discounted sums
        let (a, _) = gae(&[1.0, 1.0, 1.0], &[0.0; 3], 0.9, 1.0);
        assert!((a[0] - (1.0 + 0.9 + 0.81)).abs() < 1e-12);
    }

    #[test]
    fn whitening_by_hand() {
        let mut x = vec![vec![1.0, 2.0], vec![3.0]];
        whiten(&mut x, true);
        // mean 2, unbiased var 1
        assert!((x[0][0] + 1.0).abs() < 1e-6 && x[0][1].abs() < 1e-9 && (x[1][0] - 1.0).abs() < 1e-6);
        let mut y = vec![vec![1.0, 2.0, 3.0]];
        whiten(&mut y, false);
        assert!((y[0][0] - 1.0).abs() < 1e-6, "mean kept: {:?}", y);
        let g = group_advantages(&[1.0, 3.0, 5.0, 5.0], &[0, 0, 1, 1]);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((g[0] + h).abs() < 1e-3 && (g[1] - h).abs() < 1e-3);
        assert_eq!((g[2], g[3]), (0.0, 0.0));
    }

    #[test]
    fn score_after_eos_by_hand() {
        // Two response tokens, no KL, score 3. Textbook: rewards [0, 3]. After EOS: [0, 0, 3],
        // the third slot being the one after the response (inside the value mask).
        let (r, k) = shape_rewards(&[-1.0, -2.0], &[-1.0, -2.0], 3.0, 0.1, KlEstimator::K1, false);
        assert_eq!((r, k.len()), (vec![0.0, 3.0], 2));
        let (r, k) = shape_rewards(&[-1.0, -2.0], &[-1.0, -2.0], 3.0, 0.1, KlEstimator::K1, true);
        assert_eq!((r.clone(), k.len()), (vec![0.0, 0.0, 3.0], 2));
        // gamma = 1, lam = 1, values [1, 2, 0.5]: A2 = 3 - 0.5 = 2.5; A1 = 0 + 0.5 - 2 + 2.5 = 1;
        // A0 = 0 + 2 - 1 + 1 = 2. Textbook on [0, 3] with values [1, 2]: A1 = 1, A0 = 2.
        let (a, ret) = gae(&r, &[1.0, 2.0, 0.5], 1.0, 1.0);
        assert_eq!(a, vec![2.0, 1.0, 2.5]);
        assert_eq!(ret, vec![3.0, 3.0, 3.0]);
        let (a, _) = gae(&[0.0, 3.0], &[1.0, 2.0], 1.0, 1.0);
        assert_eq!(a, vec![2.0, 1.0]);
    }

    #[test]
    fn groups_are_formed_by_id_not_position() {
        // 2 prompts x 2 samples, the first sample skipped: B's pair stays together, A's lone
        // survivor has no spread (advantage 0) instead of being compared with B's answers.
        let g = group_advantages(&[1.0, 0.0, 2.0], &[0, 1, 1]);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert_eq!(g[0], 0.0);
        assert!((g[1] + h).abs() < 1e-3 && (g[2] - h).abs() < 1e-3, "{g:?}");
    }

    #[test]
    fn value_loss_uses_its_own_mask() {
        let t = |v: &[f32]| t2(v, 1, 2);
        let p = ppo_loss(
            PpoBatch {
                new_logprobs: t(&[0.0, 0.0]),
                old_logprobs: t(&[0.0, 0.0]),
                advantages: t(&[1.0, 1.0]),
                mask: t(&[1.0, 0.0]),
                values: Some(ValueBatch {
                    values: t(&[0.0, 0.0]),
                    old_values: t(&[0.0, 0.0]),
                    returns: t(&[1.0, 3.0]),
                    mask: t(&[1.0, 1.0]),
                }),
            },
            0.2,
            10.0,
            1.0,
        );
        // 0.5 * mean(1, 9) = 2.5: the score slot counts for the critic, not for the policy
        assert!((scalar(p.value_loss.unwrap()) - 2.5).abs() < 1e-5);
        assert!((scalar(p.policy_loss) + 1.0).abs() < 1e-5);
    }

    #[test]
    fn ppo_losses_by_hand() {
        // one sequence, two tokens (second masked out)
        let new = t2(&[(1.5f32).ln(), 0.0], 1, 2);
        let old = t2(&[0.0, 0.0], 1, 2);
        let adv = t2(&[1.0, 5.0], 1, 2);
        let mask = t2(&[1.0, 0.0], 1, 2);
        let v = t2(&[0.5, 9.0], 1, 2);
        let v_old = t2(&[0.0, 0.0], 1, 2);
        let ret = t2(&[1.0, 0.0], 1, 2);
        let p = ppo_loss(
            PpoBatch {
                new_logprobs: new,
                old_logprobs: old,
                advantages: adv,
                mask: mask.clone(),
                values: Some(ValueBatch { values: v, old_values: v_old, returns: ret, mask }),
            },
            0.2,
            0.2,
            0.1,
        );
        // ratio 1.5 > 1.2: pg1 = -1.5, pg2 = -1.2, max = -1.2; clipped
        assert!((scalar(p.policy_loss) + 1.2).abs() < 1e-5);
        assert!((scalar(p.clipfrac) - 1.0).abs() < 1e-6);
        // v = 0.5, clipped to 0.2: l1 = 0.25, l2 = 0.64; 0.5 * 0.64 = 0.32
        assert!((scalar(p.value_loss.unwrap()) - 0.32).abs() < 1e-5);
        assert!((scalar(p.loss) - (-1.2 + 0.1 * 0.32)).abs() < 1e-5);
        assert!((scalar(p.approxkl) - 0.5 * 1.5f64.ln().powi(2)).abs() < 1e-5);
        // negative advantage: ratio 0.5 < 0.8 -> pg1 = 0.5, pg2 = 0.8 -> max 0.8
        let g = grpo_loss(
            PpoBatch {
                new_logprobs: t2(&[(0.5f32).ln()], 1, 1),
                old_logprobs: t2(&[0.0], 1, 1),
                advantages: t2(&[-1.0], 1, 1),
                mask: t2(&[1.0], 1, 1),
                values: None,
            },
            t2(&[(0.5f32).ln()], 1, 1),
            0.2,
            0.5,
            GrpoLoss::Bnpo,
            1,
        );
        assert!((scalar(g.policy_loss) - 0.8).abs() < 1e-5);
        assert!((scalar(g.loss) - 0.8).abs() < 1e-5, "k3 is 0 when ref = new");
    }

    #[test]
    fn grpo_loss_types_by_hand() {
        // Two sequences: the first has 1 unmasked token of loss 1, the second 3 of loss 3.
        // ratio 1 (new = old = ref), so the per-token loss is -A and k3 is 0.
        let adv = t2(&[-1.0, 0.0, 0.0, 0.0, -3.0, -3.0, -3.0, 0.0], 2, 4);
        let mask = t2(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], 2, 4);
        let zeros = || t2(&[0.0; 8], 2, 4);
        let run = |how, max_len| {
            let b = PpoBatch { new_logprobs: zeros(), old_logprobs: zeros(), advantages: adv.clone(), mask: mask.clone(), values: None };
            let p = grpo_loss(b, zeros(), 0.2, 0.1, how, max_len);
            (scalar(p.loss), scalar(p.policy_loss))
        };
        // bnpo: (1 + 3 + 3 + 3) / 4 tokens = 2.5
        let (l, p) = run(GrpoLoss::Bnpo, 4);
        assert!((l - 2.5).abs() < 1e-6 && (p - 2.5).abs() < 1e-6);
        // grpo: mean(1/1, 9/3) = 2
        assert!((run(GrpoLoss::Grpo, 4).0 - 2.0).abs() < 1e-6);
        // dr_grpo: 10 / (2 sequences x response_length 5) = 1
        assert!((run(GrpoLoss::DrGrpo, 5).0 - 1.0).abs() < 1e-6);
        // the KL term is aggregated the same way: new = ln 0.5 against ref 0 on the masked
        // tokens only gives k3 = 2 - ln 2 - 1 per token; sequence means keep it per token
        let new = t2(&[(0.5f32).ln(); 8], 2, 4);
        let b = PpoBatch { new_logprobs: new.clone(), old_logprobs: new, advantages: zeros(), mask: mask.clone(), values: None };
        let g = grpo_loss(b, zeros(), 0.2, 0.1, GrpoLoss::Grpo, 4);
        assert!((scalar(g.loss) - 0.1 * (1.0 - 2f64.ln())).abs() < 1e-5);
    }

    /// The log-sum-exp form has log_softmax's values and gradients (to float rounding).
    #[test]
    fn token_logprobs_gradients_match_log_softmax() {
        type AB = burn::backend::Autodiff<TB>;
        let dev = Default::default();
        let data: Vec<f32> = (0..2 * 3 * 50).map(|i| ((i * 7919) % 97) as f32 / 9.0 - 5.0).collect();
        let tg: Vec<i64> = vec![3, 49, 0, 17, 25, 8];
        let run = |fused: bool| {
            let z: Tensor<AB, 3> = Tensor::from_data(TensorData::new(data.clone(), [2, 3, 50]), &dev).require_grad();
            let t: Tensor<AB, 2, Int> = Tensor::from_data(TensorData::new(tg.clone(), [2, 3]), &dev);
            let lp = if fused {
                token_logprobs(z.clone(), t, 0.7, false).0
            } else {
                burn::tensor::activation::log_softmax(z.clone().div_scalar(0.7 + 1e-7), 2)
                    .gather(2, t.unsqueeze_dim::<3>(2))
                    .squeeze_dim::<2>(2)
            };
            let w: Tensor<AB, 2> = Tensor::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5, 3.0, 1.5, -1.0], [2, 3]), &dev);
            let g = (lp.clone() * w).sum().backward();
            let grad = z.grad(&g).unwrap().into_data().convert::<f32>().to_vec::<f32>().unwrap();
            (lp.into_data().convert::<f32>().to_vec::<f32>().unwrap(), grad)
        };
        let ((a, ga), (b, gb)) = (run(true), run(false));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "{a:?} vs {b:?}");
        assert!(ga.iter().zip(&gb).all(|(x, y)| (x - y).abs() < 1e-5));
    }

    #[test]
    fn token_logprobs_match_log_softmax() {
        let logits: Tensor<TB, 3> = Tensor::from_data(TensorData::new(vec![0.0f32, 1.0, 2.0], [1, 1, 3]), &Default::default());
        let tg: Tensor<TB, 2, Int> = Tensor::from_data(TensorData::new(vec![2i64], [1, 1]), &Default::default());
        let (lp, ent) = token_logprobs(logits, tg, 1.0, true);
        let ent = ent.unwrap();
        let z = (0f64.exp() + 1f64.exp() + 2f64.exp()).ln();
        let lp = lp.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0];
        assert!((lp - (2.0 - z)).abs() < 1e-5);
        let p: Vec<f64> = [0.0, 1.0, 2.0].iter().map(|x: &f64| (x - z).exp()).collect();
        let h: f64 = -p.iter().map(|q| q * q.ln()).sum::<f64>();
        assert!((ent.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0] - h).abs() < 1e-5);
    }
}
