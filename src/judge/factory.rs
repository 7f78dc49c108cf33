//! Building the judge of a role (reward, meta, elo) from its spec: the backend it names, behind
//! the run's content-addressed cache. URLs and keys come from the environment variables the
//! spec names, read here and nowhere else.

use std::path::Path;

use burn::prelude::*;

use super::cache::CachedJudge;
use super::local::LocalJudge;
use super::openai::{OpenAiConfig, OpenAiJudge};
use super::{Judge, JudgeError};
use crate::model::registry::ModelRef;
use crate::model::tokenizer::Tok;
use crate::model::{self, Llama};
use crate::spec::{JudgeBackend, JudgeSpec};

/// Why a judge could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{role} judge: `backend: replay` needs `replay_from`")]
    ReplayWithoutSource { role: String },
    #[error("{role} judge: environment variable `{var}` is not set")]
    MissingEnv { role: String, var: String },
    #[error("{role} judge: environment variable `{var}` holds no URL")]
    NoUrl { role: String, var: String },
    #[error("{role} judge: {source}")]
    Client { role: String, source: JudgeError },
    #[error("{role} judge model: {source}")]
    Model { role: String, source: model::ModelError },
}

impl BuildError {
    /// What the user can do about it.
    pub fn help(&self) -> Option<String> {
        match self {
            BuildError::ReplayWithoutSource { .. } => Some("set `replay_from` to a run's judge-cache directory".into()),
            BuildError::MissingEnv { var, .. } | BuildError::NoUrl { var, .. } => {
                Some(format!("export {var}=http://HOST:PORT/v1 (the server's base URL; several separated by commas are load-balanced)"))
            }
            _ => None,
        }
    }
}

/// What every judge of a run is built from.
pub struct JudgeEnv<'m, B: Backend> {
    pub policy_ref: &'m ModelRef,
    /// The policy model's inner copy (same base weights) and tokenizer, used when a local
    /// judge is the policy's own model (`None`: load it).
    pub shared: Option<(&'m Llama<B>, &'m Tok)>,
    pub batch: usize,
    pub seed: u64,
    pub device: &'m B::Device,
    pub cache: &'m Path,
    /// `runtime.quantized_decode`, for a judge model loaded here.
    pub quantized_decode: bool,
}

/// The identity the judge `js` answers under (what [`build`] would report), without building
/// it; `None` for a replay judge, which answers as whoever recorded.
pub fn identity(js: &JudgeSpec, mref: Option<&ModelRef>, policy_ref: &ModelRef) -> Option<String> {
    match js.backend {
        JudgeBackend::Replay => None,
        JudgeBackend::Local => Some(format!("local:{}", local_name(mref.unwrap_or(policy_ref)))),
        JudgeBackend::Openai => Some(super::openai::identity(js.api, js.model.as_deref())),
    }
}

fn local_name(mref: &ModelRef) -> String {
    match mref {
        ModelRef::Known { name, .. } | ModelRef::Random { name } => name.clone(),
        // by content where it is known: a moved folder keeps its cached answers
        ModelRef::Gguf { sha256, .. } | ModelRef::HfDir { sha256, .. } if !sha256.is_empty() => format!("sha256:{sha256}"),
        ModelRef::Gguf { path, .. } | ModelRef::HfDir { path, .. } => path.display().to_string(),
    }
}

/// Build the judge of `role`, behind the run's judge cache.
pub fn build<'a, B: Backend + 'a>(
    role: &str,
    js: &JudgeSpec,
    mref: Option<&ModelRef>,
    env: &JudgeEnv<'_, B>,
) -> Result<Box<dyn Judge + 'a>, BuildError> {
    let role_s = || role.to_string();
    let inner: Box<dyn Judge + 'a> = match js.backend {
        JudgeBackend::Replay => {
            let from = js.replay_from.clone().ok_or_else(|| BuildError::ReplayWithoutSource { role: role_s() })?;
            return Ok(Box::new(CachedJudge::replay(&from)));
        }
        JudgeBackend::Local => {
            let mref = mref.cloned().unwrap_or_else(|| env.policy_ref.clone());
            let name = local_name(&mref);
            match env.shared.filter(|_| &mref == env.policy_ref) {
                Some((m, tok)) => Box::new(LocalJudge::new(m.clone(), tok.clone(), name, env.batch)),
                None => {
                    let l = model::load::<B>(&mref, None, env.seed, env.device, &mut |m| eprintln!("{m}"))
                        .map_err(|source| BuildError::Model { role: role_s(), source })?
                        .quantized_decode(env.quantized_decode);
                    Box::new(LocalJudge::new(l.model, l.tok, name, env.batch))
                }
            }
        }
        JudgeBackend::Openai => {
            let urls =
                std::env::var(&js.base_url_env).map_err(|_| BuildError::MissingEnv { role: role_s(), var: js.base_url_env.clone() })?;
            let base_urls = OpenAiConfig::urls_from(&urls);
            if base_urls.is_empty() {
                return Err(BuildError::NoUrl { role: role_s(), var: js.base_url_env.clone() });
            }
            let api_key = std::env::var(&js.api_key_env).ok().filter(|k| !k.is_empty());
            let cfg = OpenAiConfig {
                base_urls,
                api_key,
                model: js.model.clone(),
                api: js.api,
                dialect: js.dialect,
                concurrency: js.concurrency,
                timeout: std::time::Duration::from_secs_f64(js.timeout_s),
                max_retries: js.max_retries,
                backoff: std::time::Duration::from_millis(500),
            };
            Box::new(OpenAiJudge::new(cfg).map_err(|source| BuildError::Client { role: role_s(), source })?)
        }
    };
    Ok(Box::new(CachedJudge::new(inner, env.cache)))
}
