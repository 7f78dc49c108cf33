//! Phase 1 of an update: which prompts it answers (epochs of seeded permutations of the training
//! subset, so an update's prompts depend only on the seed and the update number) and the
//! policy's responses to them, sampled on the host from the update's own random streams.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use rand::Rng;

use super::{RunError, Runner};
use crate::engine::Engine;
use crate::judge::Transport;
use crate::model::Llama;
use crate::model::generate::{self, Generated, Sampling};
use crate::model::tokenizer::Tok;
use crate::spec::RolloutEngine;
use crate::task::Dataset;

/// One prompt of an update (a GRPO group repeats it `group_size` times).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Index of its record in the training data.
    pub record: usize,
    /// The policy prompt as rendered (before the chat template).
    pub text: String,
    /// The chat-formatted prompt's token ids.
    pub ids: Vec<u32>,
}

/// An update's prompts and the policy's responses, in the same order.
pub struct Batch {
    pub prompts: Vec<Prompt>,
    pub gens: Vec<Generated>,
    pub seconds: f64,
    /// What the rollout engine did (`None`: generated in process).
    pub engine: Option<EngineUse>,
}

/// One update on a rollout engine.
pub struct EngineUse {
    pub engine: RolloutEngine,
    /// Seconds writing the adapter and having the engine load it.
    pub load_s: f64,
    /// This update's HTTP attempts, retries and failures by cause.
    pub transport: Transport,
}

/// Generate the rollouts of `update`.
pub fn generate<B: AutodiffBackend>(r: &mut Runner<'_, B>, train: &Dataset, update: u32) -> Result<Batch, RunError> {
    let t0 = Instant::now();
    let spec = r.spec;
    r.progress.stage(&format!("update {update}: generating {} rollouts", spec.ppo.batch_size));
    let group = r.group_size();
    let idx = prompt_indices(r.data_seed, train.records.len(), r.plan.inputs.train.used, spec.ppo.batch_size / group, update);
    let mut prompts = Vec::with_capacity(spec.ppo.batch_size);
    for &i in &idx {
        let (text, ids) = crate::policy::prompt(spec, &r.policy_template, &r.tok, r.chat_template.as_deref(), &train.records[i])?;
        for _ in 0..group {
            prompts.push(Prompt { record: i, text: text.clone(), ids: ids.clone() });
        }
    }
    let sampling = crate::policy::sampling(spec, &r.tok, spec.ppo.temperature);
    if let Some(engine) = r.engine.as_mut() {
        let (gens, used) = on_engine(engine, &r.tr.policy, &r.tok, &prompts, &sampling, spec.runtime.seed, update)?;
        return Ok(Batch { prompts, gens, seconds: t0.elapsed().as_secs_f64(), engine: Some(used) });
    }
    let model = r.tr.policy.valid();
    let mut gens = Vec::with_capacity(prompts.len());
    for (c, chunk) in prompts.chunks(spec.runtime.rollout_batch.max(1)).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let mut rng = crate::rng::stream(spec.runtime.seed, &format!("rollout/u{update:06}/c{c}"));
        gens.extend(generate::generate(&model, &r.tok, &ids, &sampling, true, &mut rng)?);
    }
    Ok(Batch { prompts, gens, seconds: t0.elapsed().as_secs_f64(), engine: None })
}

/// The rollouts of `update` on the engine, with `policy`'s current adapter: each prompt sampled
/// with its own seed from the update's stream, each response ended as the in-process decoder
/// ends one.
fn on_engine<B: Backend>(
    engine: &mut Engine,
    policy: &Llama<B>,
    tok: &Tok,
    prompts: &[Prompt],
    sampling: &Sampling,
    seed: u64,
    update: u32,
) -> Result<(Vec<Generated>, EngineUse), RunError> {
    let adapter: crate::export::ByName =
        crate::model::adapter::trained_tensors(policy).into_iter().map(|(name, shape, data)| (name, (shape, data))).collect();
    let mut rng = crate::rng::stream(seed, &format!("rollout/u{update:06}/engine"));
    let seeds: Vec<u32> = prompts.iter().map(|_| rng.random()).collect();
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    // what the in-process decoder refuses, the engine must not be asked (it would cut or fail)
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    if longest + sampling.max_new_tokens > policy.max_positions() {
        return Err(generate::GenerateError::TooLong { prompt: longest, new: sampling.max_new_tokens, max: policy.max_positions() }.into());
    }
    let before = engine.transport();
    let (sampled, timing) = engine.rollouts(&adapter, update, &ids, &seeds, sampling)?;
    let gens =
        sampled.iter().map(|x| generate::from_sampled(tok, sampling, &x.tokens, &x.logprobs, x.ended)).collect::<Result<Vec<_>, _>>()?;
    Ok((gens, EngineUse { engine: engine.kind(), load_s: timing.load_s, transport: engine.transport().since(&before) }))
}

/// Indices of the prompts of `update`: epochs of seeded permutations of the first `used`
/// records of a seeded shuffle.
pub fn prompt_indices(seed: u64, available: usize, used: usize, per_update: usize, update: u32) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut pool: Vec<usize> = (0..available).collect();
    pool.shuffle(&mut crate::rng::stream(seed, "data/subset"));
    pool.truncate(used.max(1));
    let start = (update as usize - 1) * per_update;
    let mut out = Vec::with_capacity(per_update);
    let mut epoch_cache: Option<(usize, Vec<usize>)> = None;
    for k in start..start + per_update {
        let (epoch, pos) = (k / pool.len(), k % pool.len());
        if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut p = pool.clone();
            p.shuffle(&mut crate::rng::stream(seed, &format!("data/epoch{epoch}")));
            epoch_cache = Some((epoch, p));
        }
        out.push(epoch_cache.as_ref().expect("set above").1[pos]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_indices_are_epochs_of_permutations() {
        let a: Vec<usize> = (1..=3).flat_map(|u| prompt_indices(1, 10, 6, 4, u)).collect();
        assert_eq!(a, (1..=3).flat_map(|u| prompt_indices(1, 10, 6, 4, u)).collect::<Vec<_>>());
        // the first epoch (6 prompts) covers the 6-record subset exactly once
        let mut first: Vec<usize> = a[..6].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 6);
        assert!(a.iter().all(|&i| i < 10));
    }
}
