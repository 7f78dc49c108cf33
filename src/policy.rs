//! The policy as a plan describes it: the model with the spec's adapters, precision and decode
//! arithmetic, its prompt template and chat template, how it turns a record into token ids and
//! how it samples. A run (rollouts, evaluations), `mpo eval` and `mpo export` all load and
//! prompt it here, so each sees the same policy.

use burn::prelude::Backend;
use serde_json::Value as J;

use crate::model::generate::Sampling;
use crate::model::tokenizer::{Message, Tok, TokenizerError};
use crate::model::{self, Llama, LoraConfig};
use crate::plan::{Plan, PlanFileError};
use crate::spec::Spec;
use crate::template::{TemplateFile, TemplateKind};

/// Why the policy could not be loaded or prompted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("model: {0}")]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    PlanFile(#[from] PlanFileError),
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
}

impl PolicyError {
    /// What the user can do about it, where there is something.
    pub fn help(&self) -> Option<String> {
        match self {
            PolicyError::PlanFile(e) => e.help(),
            PolicyError::Read { path, .. } => crate::plan::relative_path_help(path),
            _ => None,
        }
    }
}

/// Whether the policy carries the spec's LoRA adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapters {
    /// The pretrained model alone (the base policy, the reference).
    Off,
    /// Fresh adapters (B = 0, so still exactly the base) from the run's seed, ready to train or
    /// to receive a checkpoint's weights.
    Fresh,
}

/// The policy model with everything needed to prompt it.
pub struct Policy<B: Backend> {
    pub model: Llama<B>,
    pub tok: Tok,
    /// The plan's policy prompt template.
    pub template: TemplateFile,
    /// `policy.chat_template`'s text, when the spec overrides the model's.
    pub chat: Option<String>,
}

/// Load the plan's policy on `device`.
pub fn load<B: Backend>(plan: &Plan, adapters: Adapters, device: &B::Device, log: &mut dyn FnMut(&str)) -> Result<Policy<B>, PolicyError> {
    let spec = &plan.spec;
    let lora = LoraConfig::from_spec(&spec.policy.lora);
    let lora = (adapters == Adapters::Fresh).then_some(&lora);
    let loaded = model::load::<B>(&plan.inputs.models.policy, lora, crate::rng::sub_seed(spec.runtime.seed, "model/init"), device, log)?
        .quantized_decode(spec.runtime.quantized_decode)
        .precision(spec.runtime.precision);
    let template = plan.template(TemplateKind::Policy)?;
    let chat = match &spec.policy.chat_template {
        Some(p) => {
            Some(std::fs::read_to_string(p).map_err(|e| PolicyError::Read { path: p.display().to_string(), message: e.to_string() })?)
        }
        None => None,
    };
    Ok(Policy { model: loaded.model, tok: loaded.tok, template, chat })
}

/// How the policy samples (rollouts and evaluations differ only in temperature).
pub fn sampling(spec: &Spec, tok: &Tok, temperature: f64) -> Sampling {
    Sampling {
        max_new_tokens: spec.ppo.response_length,
        temperature: temperature as f32,
        top_p: spec.policy.top_p as f32,
        top_k: spec.policy.top_k,
        stop_ids: tok.stop_ids.clone(),
        stop_strings: spec.policy.stop.clone(),
    }
}

/// The policy prompt of a record: the task template, the optional system message, the chat
/// template. Returns (prompt text, chat-formatted token ids).
pub fn prompt(spec: &Spec, template: &TemplateFile, tok: &Tok, chat: Option<&str>, record: &J) -> Result<(String, Vec<u32>), PolicyError> {
    let text = crate::template::render(&template.path.display().to_string(), &template.text, record)?;
    let ids = chat_ids(spec, tok, chat, &text)?;
    Ok((text, ids))
}

/// The policy's token ids for a rendered prompt: `policy.system` and the prompt as the user's
/// turn, through the chat template.
pub fn chat_ids(spec: &Spec, tok: &Tok, chat: Option<&str>, text: &str) -> Result<Vec<u32>, TokenizerError> {
    let mut messages = Vec::new();
    if let Some(s) = &spec.policy.system {
        messages.push(Message::new("system", s.clone()));
    }
    messages.push(Message::new("user", text.to_string()));
    let chat = tok.apply_chat_template(&messages, true, chat)?;
    tok.encode(&chat)
}
