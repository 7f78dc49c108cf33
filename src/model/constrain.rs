//! Constrained decoding: the in-process model held to the shape a server would be held to.
//!
//! The engine is llguidance (the structured-output engine llama.cpp, vLLM and SGLang offer).
//! Its token trie is built from mpo's own vocabulary (`tokenizer.json` as the `tokenizers`
//! crate writes it, read by llguidance's own `token_bytes_from_tokenizer_json`), not through
//! `toktrie_hf_tokenizers`, which pins a second copy of `tokenizers`. At each decoding step a
//! [`Guide`] sets the logits of every token the shape does not admit to minus infinity before
//! the seeded draw on the host, so a sampled token outside the shape is impossible and the
//! log-probability of a token is under the distribution it was drawn from (the masked,
//! renormalised one). Only judges are held to shapes; the policy's rollouts never are, so PPO
//! never sees a masked distribution.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use super::tokenizer::Tok;
use crate::grammar::Shape;

/// What an answer is held to.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A regular shape ([`crate::grammar`]).
    Shape(Shape),
    /// A JSON schema, written compactly (`, ` and `: `, no other whitespace), so that its
    /// longest answer is bounded as the judge's budget assumes.
    Json(serde_json::Value),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConstrainError {
    #[error("constrained decoding cannot read this tokenizer: {0}")]
    Vocabulary(String),
    #[error("the constraint engine rejects this grammar: {0}")]
    Grammar(String),
    #[error("constrained decoding failed at a token: {0}")]
    Step(String),
}

/// The vocabulary as llguidance sees it: each token's bytes, and the tokenizer for text.
struct Vocab {
    trie: TokTrie,
    tok: tokenizers::Tokenizer,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tok.encode(String::from_utf8_lossy(s).as_ref(), false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }
}

/// Compiles constraints for one tokenizer (building the trie once).
pub struct Engine {
    factory: ParserFactory,
    eos: u32,
}

impl Engine {
    /// The engine for `tok`, with `vocab` logits per step (the model's head may be wider than
    /// the tokenizer: the extra ids are never admitted).
    pub fn new(tok: &Tok, vocab: usize) -> Result<Engine, ConstrainError> {
        let bad = |e: String| ConstrainError::Vocabulary(e);
        let json: serde_json::Value =
            serde_json::from_str(&tok.inner.to_string(false).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| bad(e.to_string()))?;
        if words.len() > vocab {
            return Err(bad(format!("the tokenizer has {} tokens, more than the model's {vocab} logits", words.len())));
        }
        // ids the model has and the tokenizer does not: special, so no text can use them
        while words.len() < vocab {
            let mut w = format!(".<[{}]>", words.len()).into_bytes();
            w[0] = TokTrie::SPECIAL_TOKEN_MARKER;
            words.push(w);
        }
        let mut info = TokRxInfo::new(vocab as u32, tok.eos);
        info.tok_end_of_turn = Some(tok.eos);
        let env: TokEnv = Arc::new(Vocab { trie: TokTrie::from(&info, &words), tok: tok.inner.clone() });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| bad(e.to_string()))?;
        factory.quiet();
        Ok(Engine { factory, eos: tok.eos })
    }

    /// A fresh guide for one answer.
    pub fn guide(&self, c: &Constraint) -> Result<Guide, ConstrainError> {
        let grammar = match c {
            Constraint::Shape(s) => TopLevelGrammar::from_regex(&s.regex()),
            Constraint::Json(schema) => {
                let mut schema = schema.clone();
                if let Some(o) = schema.as_object_mut() {
                    o.insert(
                        "x-guidance".into(),
                        serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " }),
                    );
                }
                TopLevelGrammar::from_json_schema(schema)
            }
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| ConstrainError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstrainError::Grammar(e));
        }
        Ok(Guide { matcher, eos: self.eos })
    }

    /// Check that `c` compiles (a spec's grammars, before a run starts).
    pub fn check(&self, c: &Constraint) -> Result<(), ConstrainError> {
        self.guide(c).map(|_| ())
    }
}

/// One answer's constraint as it is decoded.
pub struct Guide {
    matcher: Matcher,
    eos: u32,
}

impl Guide {
    /// Set the logits of tokens the shape does not admit here to minus infinity. Once the shape
    /// is complete only the end token is admitted.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstrainError> {
        let m = self.matcher.compute_mask_or_eos().map_err(|e| ConstrainError::Step(e.to_string()))?;
        if m.num_set() == 0 {
            return Err(ConstrainError::Step("no token can continue the answer".into()));
        }
        for (i, x) in logits.iter_mut().enumerate() {
            if !m.is_allowed(i as u32) {
                *x = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Record the token that was drawn.
    pub fn advance(&mut self, token: u32) -> Result<(), ConstrainError> {
        if token == self.eos && self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| ConstrainError::Step(e.to_string()))
    }

    /// Whether what was drawn so far is a complete answer.
    pub fn complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generate::{Sampling, sample_row};
    use rand::Rng;

    /// Random logits, any seed: what the guide lets through is always an answer of the shape.
    #[test]
    fn a_guided_draw_always_completes_its_shape() {
        let tok = Tok::tiny();
        let vocab = tok.vocab_size() + 5;
        let engine = Engine::new(&tok, vocab).unwrap();
        let shape = Shape::seq([
            Shape::lit("## "),
            Shape::class("A-Z"),
            Shape::class("a-z").repeat(1, 6),
            Shape::lit(" (0-"),
            Shape::integers(1, 10),
            Shape::lit(")\n"),
            Shape::seq([
                Shape::lit("- Award "),
                Shape::integers(1, 3),
                Shape::lit(" when "),
                Shape::not("\n."),
                Shape::not("\n.").repeat(0, 8),
                Shape::lit(".\n"),
            ])
            .repeat(1, 2),
        ]);
        let budget = shape.longest_bytes() + 1;
        let mut scratch = Vec::new();
        for seed in 0..40u64 {
            let mut rng = crate::rng::stream(seed, "constrain/test");
            let s =
                Sampling { max_new_tokens: budget, temperature: 1.5, top_p: 1.0, top_k: 0, stop_ids: vec![tok.eos], stop_strings: vec![] };
            let mut g = engine.guide(&Constraint::Shape(shape.clone())).unwrap();
            let mut ids = Vec::new();
            let mut ended = false;
            for _ in 0..budget {
                let mut logits: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>() * 8.0 - 4.0).collect();
                g.mask(&mut logits).unwrap();
                let (id, lp) = sample_row(&logits, &s, &mut rng, &mut scratch);
                assert!(lp.is_finite() && lp <= 0.0);
                g.advance(id).unwrap();
                if id == tok.eos {
                    ended = true;
                    break;
                }
                ids.push(id);
            }
            let text = tok.inner.decode(&ids, false).unwrap();
            assert!(ended, "seed {seed}: no end within the shape's own budget of {budget}: {text:?}");
            assert!(shape.matches(&text), "seed {seed}: {text:?}");
        }
    }

    /// Draw one answer under `shape` from random logits; the text and whether it ended.
    fn draw(engine: &Engine, tok: &Tok, shape: &Shape, seed: u64, temperature: f32) -> (String, bool) {
        let vocab = tok.vocab_size();
        let budget = shape.longest_bytes() + 1;
        let mut rng = crate::rng::stream(seed, "constrain/prop");
        let s = Sampling { max_new_tokens: budget, temperature, top_p: 1.0, top_k: 0, stop_ids: vec![tok.eos], stop_strings: vec![] };
        let mut g = engine.guide(&Constraint::Shape(shape.clone())).unwrap();
        let (mut ids, mut scratch) = (Vec::new(), Vec::new());
        for _ in 0..budget {
            let mut logits: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>() * 8.0 - 4.0).collect();
            g.mask(&mut logits).unwrap();
            let (id, _) = sample_row(&logits, &s, &mut rng, &mut scratch);
            g.advance(id).unwrap();
            if id == tok.eos {
                return (tok.inner.decode(&ids, false).unwrap(), true);
            }
            ids.push(id);
        }
        (tok.inner.decode(&ids, false).unwrap(), false)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
        /// Every shape mpo ships, random logits, any seed and temperature: the answer is whole
        /// (it ends within the budget its shape was sized to) and of its shape.
        #[test]
        fn every_shipped_shape_is_drawn_whole(seed in 0u64..1_000_000, temperature in 0.3f32..2.5) {
            let tok = Tok::tiny();
            let engine = Engine::new(&tok, tok.vocab_size()).unwrap();
            let v0 = crate::rubric::Rubric::parse("## Correct final answer (0-4)\n## Answer in a box (0-1)\n").unwrap();
            let shapes = [
                crate::rubric::RubricShape::fit(2, 400).unwrap().shape(),
                crate::meta::AnalysisShape::fit(300).unwrap().shape(),
                crate::reward::score::free_shape(&v0, 24),
                Shape::seq([crate::reward::score::value_shape(0, 4), Shape::lit("\n")]),
            ];
            for shape in &shapes {
                let (text, ended) = draw(&engine, &tok, shape, seed, temperature);
                proptest::prop_assert!(ended && shape.matches(&text), "{text:?}");
            }
        }
    }

    #[test]
    fn json_answers_are_compact_and_follow_the_schema() {
        let tok = Tok::tiny();
        let engine = Engine::new(&tok, tok.vocab_size()).unwrap();
        let schema = serde_json::json!({"type": "object", "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 3}}, "required": ["score"], "additionalProperties": false});
        let mut g = engine.guide(&Constraint::Json(schema)).unwrap();
        let s = Sampling { max_new_tokens: 20, temperature: 1.0, top_p: 1.0, top_k: 0, stop_ids: vec![tok.eos], stop_strings: vec![] };
        let mut rng = crate::rng::stream(3, "constrain/json");
        let (mut ids, mut scratch) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let mut logits: Vec<f32> = (0..tok.vocab_size()).map(|_| rng.random::<f32>()).collect();
            g.mask(&mut logits).unwrap();
            let (id, _) = sample_row(&logits, &s, &mut rng, &mut scratch);
            g.advance(id).unwrap();
            if id == tok.eos {
                break;
            }
            ids.push(id);
        }
        let text = tok.inner.decode(&ids, false).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["score"].as_i64().is_some_and(|x| (0..=3).contains(&x)), "{text}");
        assert!(!text.contains("  ") && !text.contains('\n'), "{text:?}");
    }

    #[test]
    fn a_grammar_the_engine_rejects_is_an_error_not_a_panic() {
        let tok = Tok::tiny();
        let engine = Engine::new(&tok, tok.vocab_size()).unwrap();
        let bad = serde_json::json!({"type": "object", "properties": {"x": {"type": "no-such-type"}}, "required": ["x"]});
        assert!(matches!(engine.check(&Constraint::Json(bad)), Err(ConstrainError::Grammar(_))));
    }
}
