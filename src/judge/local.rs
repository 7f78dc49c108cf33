//! The in-process judge: the burn model answers judge prompts itself.
//!
//! When the judge is the policy's own base model (the CPU demo), it shares the policy's frozen
//! weights and runs with the adapter switched off, so judging costs no extra memory. Requests
//! are answered in batches through the model's chat template. Sampling draws from a stream
//! derived from the batch's seeds, so a run is reproducible; at temperature 0 (the default for
//! judges) answers are greedy. Answers are held to the shapes servers are held to (a
//! request's `shape`, else its JSON schema; guided values to their ranges) by constrained
//! decoding (`model::constrain`): an answer can be cut off by `max_tokens` only when its shape
//! was not sized to it.

use std::cell::OnceCell;

use burn::prelude::*;

use super::{Judge, JudgeError, JudgeRequest, JudgeResponse, TokenLogprob};
use crate::grammar::Shape;
use crate::model::Llama;
use crate::model::constrain::{ConstrainError, Constraint, Engine, Guide};
use crate::model::generate::{Sampling, fill_fields, generate_guided};
use crate::model::tokenizer::{Message, Tok};
use crate::reward::score::value_shape;

pub struct LocalJudge<B: Backend> {
    pub model: Llama<B>,
    pub tok: Tok,
    /// The model's name in cache keys.
    pub name: String,
    /// Most prompts per forward batch.
    pub batch: usize,
    /// The constraint engine for this tokenizer, built at the first shaped request.
    engine: OnceCell<Result<Engine, ConstrainError>>,
}

impl<B: Backend> LocalJudge<B> {
    pub fn new(model: Llama<B>, tok: Tok, name: String, batch: usize) -> Self {
        LocalJudge { model, tok, name, batch, engine: OnceCell::new() }
    }

    fn engine(&self) -> Result<&Engine, JudgeError> {
        let vocab = self.model.lm_head.weight.val().dims()[1];
        self.engine.get_or_init(|| Engine::new(&self.tok, vocab)).as_ref().map_err(|e| JudgeError::Local { message: e.to_string() })
    }

    /// Guided requests: one prompt pass, then each label forced and its value decoded, held to
    /// an integer in the label's range when the request gives ranges.
    fn answer_guided(&self, reqs: &[(usize, &JudgeRequest)], prompts: &[Vec<u32>]) -> Result<Vec<JudgeResponse>, JudgeError> {
        let r0 = reqs[0].1;
        let value_tokens = (r0.max_tokens as usize).clamp(1, 6);
        let values: Vec<Shape> = r0.guided_ranges.iter().map(|&(lo, hi)| value_shape(lo, hi)).collect();
        let engine = if values.is_empty() { None } else { Some(self.engine()?) };
        let filled = fill_fields(
            &self.model,
            &self.tok,
            prompts,
            &r0.guided,
            value_tokens,
            r0.top_logprobs.unwrap_or(10) as usize,
            engine.map(|e| (e, values.as_slice())),
        )
        .map_err(|e| JudgeError::Local { message: e.to_string() })?;
        Ok(filled
            .into_iter()
            .zip(prompts)
            .map(|(f, p)| JudgeResponse {
                text: f.text,
                prompt_tokens: p.len() as u64,
                completion_tokens: f.generated as u64,
                logprobs: Some(f.tokens.into_iter().map(|(token, logprob, top)| TokenLogprob { token, logprob, top }).collect()),
                cached: false,
                truncated: false,
            })
            .collect())
    }

    fn answer_group(&self, reqs: &[(usize, &JudgeRequest)]) -> Result<Vec<JudgeResponse>, JudgeError> {
        let local = |e: String| JudgeError::Local { message: e };
        let prompts: Vec<Vec<u32>> = reqs
            .iter()
            .map(|(_, r)| {
                let text = self
                    .tok
                    .apply_chat_template(&[Message::new("user", r.prompt.clone())], true, None)
                    .map_err(|e| local(e.to_string()))?;
                self.tok.encode(&text).map_err(|e| local(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let r0 = reqs[0].1;
        if !r0.guided.is_empty() {
            return self.answer_guided(reqs, &prompts);
        }
        let s = Sampling {
            max_new_tokens: r0.max_tokens as usize,
            temperature: r0.temperature as f32,
            top_p: 1.0,
            top_k: 0,
            stop_ids: self.tok.stop_ids.clone(),
            stop_strings: vec![],
        };
        // One stream per group, derived from the members' seeds and attempts: reproducible.
        let seed = reqs.iter().fold(0u64, |a, (_, r)| a.wrapping_mul(31).wrapping_add(r.seed ^ ((r.attempt as u64) << 48)));
        let mut rng = crate::rng::stream(seed, "judge/local");
        // Each answer held to its request's shape, or its JSON schema.
        let mut guides: Vec<Option<Guide>> = reqs
            .iter()
            .map(|(_, r)| {
                let c = match (&r.shape, &r.json_schema) {
                    (Some(shape), _) => Constraint::Shape(shape.clone()),
                    (None, Some(schema)) => Constraint::Json(schema.clone()),
                    (None, None) => return Ok(None),
                };
                self.engine()?.guide(&c).map(Some).map_err(|e| local(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let gens = generate_guided(&self.model, &self.tok, &prompts, &s, false, &mut rng, &mut guides).map_err(|e| local(e.to_string()))?;
        Ok(gens
            .into_iter()
            .zip(&prompts)
            .zip(reqs)
            .map(|((g, p), (_, r))| {
                let logprobs = r.top_logprobs.map(|_| {
                    g.tokens
                        .iter()
                        .zip(&g.logprobs)
                        .map(|(t, lp)| TokenLogprob {
                            token: self.tok.inner.decode(&[*t], false).unwrap_or_default(),
                            logprob: *lp,
                            top: vec![],
                        })
                        .collect()
                });
                JudgeResponse {
                    text: g.text,
                    prompt_tokens: p.len() as u64,
                    completion_tokens: g.tokens.len() as u64,
                    logprobs,
                    cached: false,
                    // out of new tokens before an end token: the answer is incomplete
                    truncated: g.finish == crate::model::generate::Finish::Length,
                }
            })
            .collect())
    }
}

impl<B: Backend> Judge for LocalJudge<B> {
    fn identity(&self) -> String {
        format!("local:{}", self.name)
    }

    fn complete(&mut self, requests: &[JudgeRequest]) -> Vec<Result<JudgeResponse, JudgeError>> {
        let mut out: Vec<Option<Result<JudgeResponse, JudgeError>>> = vec![None; requests.len()];
        // Requests batch together when they sample alike.
        let mut groups: Vec<Vec<(usize, &JudgeRequest)>> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| g.len() < self.batch.max(1) && g[0].1.max_tokens == r.max_tokens && g[0].1.temperature == r.temperature)
            {
                Some(g) => g.push((i, r)),
                None => groups.push(vec![(i, r)]),
            }
        }
        for g in groups {
            match self.answer_group(&g) {
                Ok(answers) => {
                    for ((i, _), a) in g.iter().zip(answers) {
                        out[*i] = Some(Ok(a));
                    }
                }
                Err(e) => {
                    for (i, _) in &g {
                        out[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter().map(|o| o.unwrap_or_else(|| Err(JudgeError::Local { message: "unanswered".into() }))).collect()
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    fn judge() -> LocalJudge<burn::backend::Flex> {
        let cfg = crate::model::weights::LlamaConfig::tiny(300);
        let model =
            Llama::load(&cfg, &crate::model::weights::RandomWeights { config: cfg.clone(), seed: 7 }, None, 512, 1, &Default::default())
                .unwrap();
        LocalJudge::new(model, crate::model::tokenizer::tests::tiny_tok(), "tiny".into(), 4)
    }

    fn request(max_tokens: u32, guided: Vec<String>) -> JudgeRequest {
        JudgeRequest { prompt: "Grade: 2+2=4".into(), max_tokens, temperature: 0.0, seed: 1, guided, ..Default::default() }
    }

    #[test]
    fn answers_held_to_a_shape_are_complete_and_of_the_shape() {
        let mut j = judge();
        // a meta rubric sized to its budget, and a free answer: a random-weight model writes
        // neither on its own, and held to them it writes both, whole, at any seed
        let rubric = crate::rubric::RubricShape::fit(1, 200).unwrap();
        let r = crate::rubric::Rubric::parse("## Correct (0-2)\n## Clear (0-1)\n").unwrap();
        let free = crate::reward::score::free_shape(&r, 20);
        for (shape, budget) in [(rubric.shape(), rubric.most_tokens()), (free.clone(), free.longest_bytes() as u32 + 1)] {
            let reqs: Vec<JudgeRequest> = (0..3)
                .map(|seed| JudgeRequest { seed, temperature: 1.0, ..request(budget, vec![]) }.held_to(Some(shape.clone())))
                .collect();
            for a in j.complete(&reqs) {
                let a = a.unwrap();
                assert!(!a.truncated && shape.matches(&a.text), "{:?}", a.text);
            }
        }
        // guided values stay in their ranges
        let guided = JudgeRequest { guided_ranges: vec![(0, 2), (0, 1)], ..request(3, vec!["Correct".into(), "Clear".into()]) };
        let a = j.complete(&[guided]).remove(0).unwrap();
        let s = crate::reward::score::by_regex(&r, &regex::Regex::new(&crate::spec::default_score_regex()).unwrap(), &a.text);
        assert!(s.is_ok(), "{:?}: {s:?}", a.text);
    }

    #[test]
    fn an_answer_cut_by_max_tokens_is_truncated() {
        let mut j = judge();
        // a random-weight model does not end within 3 tokens: the free answer is cut off
        let free = j.complete(&[request(3, vec![])]).remove(0).unwrap();
        assert_eq!(free.completion_tokens, 3);
        assert!(free.truncated);
        // guided answers write bounded values per label by design: never truncated
        let guided = j.complete(&[request(3, vec!["Correct".into()])]).remove(0).unwrap();
        assert!(!guided.truncated);
    }
}
