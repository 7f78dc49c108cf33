//! The spec language: serde + schemars types for an mpo experiment.
//!
//! Every field's doc comment becomes its JSON Schema description (`mpo schema`), which editors
//! show on hover; ranges declared with `#[schemars(range(..))]` are enforced by `mpo check`
//! from that same schema, so the schema is the single source of truth for structure. Defaults
//! follow the reference implementation's runs (Qwen2.5-1.5B, TRL PPO) unless a doc comment
//! says otherwise.

use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An mpo experiment: task, policy, reward, meta-reward schedule, PPO settings and where to
/// write results. Relative paths resolve against the directory of the file that wrote them.
/// Every field is part of the run id (the hash of what determines results) unless its doc says
/// otherwise; files enter it by content, not by path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// JSON Schema reference for editors (ignored by mpo).
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Base spec(s) to extend, relative to this file. Mappings merge deeply, lists and scalars
    /// replace; later bases override earlier ones and this file overrides them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<Extends>,
    /// Experiment name: results go to `<output.root>/<name>/<run-id>/`. Letters, digits, `_`,
    /// `-` and `.` only.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]+$"), length(min = 1, max = 100))]
    pub name: String,
    /// Free text describing the experiment (kept in the plan and the manifest). Not part of the
    /// run id.
    #[serde(default)]
    pub description: String,
    /// The task: which of the paper's four, its data and the policy prompt.
    pub task: TaskSpec,
    /// The policy under training.
    #[serde(default)]
    pub policy: PolicySpec,
    /// How a rollout is scored: the judge, the rubric, verifiers and failure handling.
    pub reward: RewardSpec,
    /// The meta-reward model: when and how the rubric is rewritten. With `every: never` no meta
    /// setting is part of the run id (a fixed-rubric arm is the same run in any sweep).
    #[serde(default)]
    pub meta: MetaSpec,
    /// PPO / GRPO hyperparameters (TRL names).
    #[serde(default)]
    pub ppo: PpoSpec,
    /// Evaluation during and after training.
    #[serde(default)]
    pub eval: EvalSpec,
    /// Where and how the run executes.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Where results are written. Not part of the run id.
    #[serde(default)]
    pub output: OutputSpec,
    /// Expand this spec into many runs (an ablation grid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSpec>,
}

/// The name the spec language writes for `value` (its serde name: `critic: shared` ->
/// `shared`), for printing a unit-variant enum; serde's is the one list of these names.
pub fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("<{e}>"),
    }
}

impl Spec {
    /// Seed of the test split (a generated one; files load as written): from `eval.seed`, so
    /// runs that differ in `runtime.seed` are evaluated on the same records.
    pub fn test_seed(&self) -> u64 {
        crate::rng::sub_seed(self.eval.seed, "task/test")
    }

    /// Seed of the training data's subset and order: `task.seed`, else from `runtime.seed`.
    pub fn data_seed(&self) -> u64 {
        self.task.seed.unwrap_or_else(|| crate::rng::sub_seed(self.runtime.seed, "task/data"))
    }
}

/// One base spec path or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Extends {
    One(String),
    Many(Vec<String>),
}

// ------------------------------------------------------------------------------------------
// task
// ------------------------------------------------------------------------------------------

/// Which task of the paper an experiment trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Competition math with boxed final answers (MATH, or generated arithmetic).
    Math,
    /// Argumentative / expository essays from writing prompts.
    EssayWriting,
    /// Summaries of documents against reference summaries.
    Summarization,
    /// Verdicts (RIGHT / WRONG) on real-life anecdotes (Scruples).
    EthicalReasoning,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Math => "math",
            TaskKind::EssayWriting => "essay_writing",
            TaskKind::Summarization => "summarization",
            TaskKind::EthicalReasoning => "ethical_reasoning",
        }
    }
}

/// The task: data and the prompt the policy sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Which of the paper's tasks.
    pub kind: TaskKind,
    /// Training prompts.
    pub train: DataSource,
    /// Held-out prompts for evaluation (`mpo eval`, `eval.every`): the training distribution.
    /// A generated test split draws only problems a generated training split never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<DataSource>,
    /// A second held-out split from another distribution (MATH problems for a policy trained on
    /// generated arithmetic), evaluated with `test` and reported apart as `transfer/<metric>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<DataSource>,
    /// Policy prompt template (minijinja, strict undefined), rendered with the fields of one
    /// record and then wrapped in the model's chat template.
    pub prompt: PathBuf,
    /// Seed of the data stream (shuffle, generator). Default: derived from `runtime.seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Where records come from: a JSONL file or (math) a procedural generator. Exactly one of
/// `path` and `generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// JSONL file, one record per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Record format of `path`. Default: the task's native format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Generate records instead of reading them (math only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<GeneratorSpec>,
    /// Use at most this many records (after a seeded shuffle). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub limit: Option<usize>,
}

/// Record formats mpo reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// MATH: `problem`, `level`, `type`, `solution` (with `\boxed{}`).
    Math,
    /// Essay prompts: `id`, `prompt`.
    EssayPrompts,
    /// SciTLDR: `title`, `text`, `summary`, `summaries`.
    Scitldr,
    /// BillSum: `text`, `summary`, `title`.
    Billsum,
    /// Scruples anecdotes: `title`, `text`, `action`, `binarized_label`.
    Scruples,
}

/// The seeded procedural arithmetic generator: problems with exact answers that a small model
/// can partly solve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// How many problems to generate.
    #[schemars(range(min = 1, max = 1000000))]
    pub count: usize,
    /// Difficulty levels to draw from (1 = one-digit sums ... 5 = multi-step word problems).
    #[serde(default = "default_levels")]
    #[schemars(length(min = 1), inner(range(min = 1, max = 5)))]
    pub levels: Vec<u8>,
}

fn default_levels() -> Vec<u8> {
    vec![1, 2, 3]
}

// ------------------------------------------------------------------------------------------
// policy
// ------------------------------------------------------------------------------------------

/// The policy: a causal LM with a LoRA adapter. The reference policy for the KL penalty is the
/// same network with the adapter switched off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySpec {
    /// A known model name (`mpo fetch --list`) or a path to a `.gguf` file or a Hugging Face
    /// model directory (config.json + safetensors + tokenizer.json); `${VAR}` is replaced by the
    /// environment variable's value. A path enters the run id by its files' content: a moved
    /// folder keeps the id, replaced weights change it. `mpo check` checks a folder's config,
    /// weight headers (tensor names, shapes, lengths) and tokenizer without loading it.
    pub model: String,
    /// Chat template file overriding the model's own (Jinja).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<PathBuf>,
    /// System message placed before every policy prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// LoRA adapter trained on top of the frozen base.
    pub lora: LoraSpec,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability mass.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Extra strings that end a response (besides the model's end-of-sequence token).
    pub stop: Vec<String>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            model: "smollm2-135m-instruct".into(),
            chat_template: None,
            system: None,
            lora: LoraSpec::default(),
            top_p: 1.0,
            top_k: 0,
            stop: Vec::new(),
        }
    }
}

/// Where LoRA adapters attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    LmHead,
}

impl LoraTarget {
    /// Every module an adapter can attach to (the paper's setting).
    pub const ALL: [LoraTarget; 8] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down, Self::LmHead];
}

/// LoRA settings (paper: r=64, alpha=128 on every projection and the LM head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSpec {
    /// Adapter rank.
    #[schemars(range(min = 1, max = 4096))]
    pub rank: usize,
    /// Scaling numerator: the update is `alpha / rank * B A x`.
    #[schemars(range(min = 0.0))]
    pub alpha: f64,
    /// Modules that get an adapter.
    #[schemars(length(min = 1))]
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec { rank: 64, alpha: 128.0, targets: LoraTarget::ALL.to_vec() }
    }
}

// ------------------------------------------------------------------------------------------
// judges
// ------------------------------------------------------------------------------------------

/// Where judge calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JudgeBackend {
    /// The in-process burn model (no server needed).
    Local,
    /// Any OpenAI-compatible server: vLLM, SGLang, llama.cpp's llama-server, Ollama, hosted APIs.
    Openai,
    /// Answers only from a judge cache; a miss is an error.
    Replay,
}

/// Which OpenAI endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JudgeApi {
    /// `/v1/chat/completions` (the prompt is sent as a user message).
    Chat,
    /// `/v1/completions` (the prompt is sent as-is).
    Completions,
}

/// How a server is asked to constrain an answer's shape (structured outputs). The reward judge's
/// JSON schema (`extraction: {method: json}`), guided score values and the meta stages' rubric
/// grammar are sent in the fields the server reads; a server that ignores them answers freely
/// and the answer is still parsed (and any failure counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// `response_format: {type: json_schema}` on the chat endpoint (OpenAI, vLLM, SGLang,
    /// llama-server). No grammars: guided values and meta rubrics go unconstrained.
    #[default]
    Openai,
    /// vLLM (>= 0.10.2): `structured_outputs: {json: ...}` or `{grammar: ...}`, on chat and
    /// completions.
    Vllm,
    /// SGLang: `response_format` for JSON, `ebnf` for grammars, on chat and completions.
    Sglang,
    /// llama.cpp's llama-server: `json_schema` and `grammar` (GBNF), on chat and completions.
    LlamaCpp,
}

impl Dialect {
    pub fn is_openai(&self) -> bool {
        *self == Dialect::Openai
    }

    /// Whether this dialect can send a grammar (guided values, meta rubrics).
    pub fn grammars(self) -> bool {
        self != Dialect::Openai
    }

    /// Whether this dialect can send a JSON schema on `api`.
    pub fn schemas_on(self, api: JudgeApi) -> bool {
        self != Dialect::Openai || api == JudgeApi::Chat
    }
}

/// A judge role: the reward model or the meta-reward model. Secrets never appear here, only
/// the names of the environment variables that hold them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSpec {
    /// Where calls go.
    pub backend: JudgeBackend,
    /// `local`: a known model name or path (default: the policy's base model). `openai`: the
    /// model name the server expects (default: whatever the server serves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Environment variable holding the base URL(s); several URLs separated by commas are
    /// load-balanced.
    pub base_url_env: String,
    /// Environment variable holding the API key (may be unset for local servers).
    pub api_key_env: String,
    /// Endpoint flavour.
    pub api: JudgeApi,
    /// `openai` backend: the fields structured outputs are requested in (see README, "Which
    /// judge protocol").
    // Left out of plans while default, so adding it changed no run id.
    #[serde(skip_serializing_if = "Dialect::is_openai")]
    pub dialect: Dialect,
    /// Most tokens a judge answer may use. With `extraction: {method: json}` the answer's
    /// rationales are limited so that a complete answer fits (see `mpo plan`).
    #[schemars(range(min = 1, max = 65536))]
    pub max_tokens: u32,
    /// Sampling temperature of the judge (0 = greedy).
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,
    /// Most requests in flight for this role.
    #[schemars(range(min = 1, max = 4096))]
    pub concurrency: usize,
    /// Per-request timeout in seconds.
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub timeout_s: f64,
    /// Retries on timeouts, 408, 429 and 5xx (with backoff, honouring Retry-After).
    #[schemars(range(max = 20))]
    pub max_retries: u32,
    /// `replay`: directory of a judge cache to answer from (a run's `judge-cache/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_from: Option<PathBuf>,
}

impl JudgeSpec {
    /// Whether this judge's requests carry grammars (a server judge whose dialect has them).
    pub fn sends_grammars(&self) -> bool {
        self.backend == JudgeBackend::Openai && self.dialect.grammars()
    }

    /// Whether this judge's answers are held to shapes (meta rubrics, analyses, free answers,
    /// guided values): the in-process judge always (constrained decoding), a server when its
    /// dialect sends grammars. A replay judge asks what a judge without shapes asked.
    pub fn holds_shapes(&self) -> bool {
        self.backend == JudgeBackend::Local || self.sends_grammars()
    }

    /// Whether a JSON schema can reach this judge (always for in-process and replay judges,
    /// which ignore it).
    pub fn sends_schemas(&self) -> bool {
        self.backend != JudgeBackend::Openai || self.dialect.schemas_on(self.api)
    }
}

impl Default for JudgeSpec {
    fn default() -> Self {
        JudgeSpec {
            backend: JudgeBackend::Local,
            model: None,
            base_url_env: "OPENAI_BASE_URL".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            api: JudgeApi::Chat,
            dialect: Dialect::Openai,
            max_tokens: 256,
            temperature: 0.0,
            concurrency: 16,
            timeout_s: 120.0,
            max_retries: 3,
            replay_from: None,
        }
    }
}

// ------------------------------------------------------------------------------------------
// reward
// ------------------------------------------------------------------------------------------

/// The reward: an LLM judge scoring each response against the current rubric, optionally mixed
/// with programmatic verifiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    /// The reward model ("junior instructor").
    #[serde(default)]
    pub judge: JudgeSpec,
    /// Initial rubric (markdown; each item `## Name (min-max)` followed by award / deduction
    /// lines). Version 0 of the rubric history.
    pub rubric: PathBuf,
    /// Judge prompt template: rendered with the rubric, the policy prompt, the response and
    /// the record.
    pub prompt: PathBuf,
    /// How item scores are read from the judge's answer.
    #[serde(default)]
    pub extraction: Extraction,
    /// How the judge answers: `free` (its own text: rationales then `Item: score` lines, the
    /// reference protocol) or `guided` (mpo writes each `Item:` label into the answer and the
    /// judge supplies only the score; for small local judges that do not follow formats).
    #[serde(default)]
    pub answer: AnswerMode,
    /// How the judge's item scores become one reward. `item_mean` (the default): each item as a
    /// share of its range, averaged with equal weights, in [0, 1] (the later reference). `sum`:
    /// the summed points (the released reference). `range_share`: the summed points as a share
    /// of the rubric's total range, so items weigh by their point ranges.
    #[serde(default)]
    pub aggregate: Aggregate,
    /// What happens when a judge answer has missing, unparseable or out-of-range scores.
    #[serde(default)]
    pub failure: FailureSpec,
    /// Programmatic checks mixed with the judge.
    #[serde(default)]
    pub verifiers: Vec<VerifierSpec>,
    /// How verifier and judge rewards combine.
    #[serde(default)]
    pub mix: MixSpec,
    /// Rubric test cases (YAML: cases with expectations, hack probes, ordering pairs) that
    /// `mpo rubric test` scores with this judge and rubric. A run reads it only with `meta.gate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<PathBuf>,
}

/// How a judge's item scores become one reward (`reward.aggregate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Each item's score as a share of its range (`(s - min) / (max - min)`, clamped to [0, 1];
    /// `s / max` for the usual `(0-N)` items), averaged with equal weights: the later reference.
    /// Scale-free, so a meta step that rescales an item changes neither its weight nor the
    /// reward's range, and the critic keeps up.
    #[default]
    ItemMean,
    /// The summed points: the released reference. The reward's scale moves with every rubric
    /// the meta step writes.
    Sum,
    /// `(total - min) / (max - min)` over the whole rubric: in [0, 1], but an item's weight is
    /// its share of the points, so the meta judge's point ranges set the weights.
    RangeShare,
}

impl Aggregate {
    /// Whether rewards lie in [0, 1] whatever the rubric.
    pub fn is_normalized(self) -> bool {
        self != Aggregate::Sum
    }
}

impl RewardSpec {
    /// Whether free answers are held to a shape (`reward::score::free_shape`): the judge holds
    /// shapes and answers are read with the default score pattern (a custom pattern may expect
    /// another shape).
    pub fn holds_free_answers(&self) -> bool {
        self.judge.holds_shapes()
            && self.answer == AnswerMode::Free
            && matches!(&self.extraction, Extraction::Regex { pattern } if *pattern == default_score_regex())
    }
}

/// How the judge writes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMode {
    /// The judge writes the whole answer.
    #[default]
    Free,
    /// mpo writes the item labels; the judge writes each score.
    Guided,
}

/// How item scores are read from a judge answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Extraction {
    /// A regular expression with named groups `item` and `score`, applied to the answer.
    Regex {
        /// Default: lines like `Correctness: 3` or `Score for Clarity: 2/4`.
        #[serde(default = "default_score_regex")]
        pattern: String,
    },
    /// A JSON object with one property per rubric item, in rubric order, each
    /// `{"rationale": "...", "score": <integer in the item's range>}`. The schema is sent to
    /// servers that constrain answers (`reward.judge.dialect`), with each rationale limited so
    /// that the whole answer fits `reward.judge.max_tokens`. Answers in the older
    /// `{"items": [{"name", "rationale", "score"}]}` shape are read too.
    Json,
    /// The probability-weighted expectation over score tokens (needs logprobs from the judge).
    Logprobs {
        /// How many top alternatives to request per position.
        #[serde(default = "default_top_logprobs")]
        #[schemars(range(min = 2, max = 20))]
        top_logprobs: u32,
    },
}

pub fn default_score_regex() -> String {
    r"(?mi)^[\W_]*(?:score\s+for\s+)?(?P<item>[^:\n]+?)[\W_]*:\s*(?P<score>-?\d+)\s*(?:/\s*\d+)?[\W_]*$".into()
}

fn default_top_logprobs() -> u32 {
    10
}

impl Default for Extraction {
    fn default() -> Self {
        Extraction::Regex { pattern: default_score_regex() }
    }
}

/// Failure handling for judge answers: retried, then a declared policy. Never a silent 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FailureSpec {
    /// Times a failed answer is asked again before the policy applies.
    #[schemars(range(max = 20))]
    pub retries: u32,
    /// What then happens to the sample.
    pub policy: FailurePolicy,
    /// A retry samples with a fresh seed at `max(judge.temperature, retry_temperature)`, so a
    /// greedy judge can answer differently the second time.
    #[schemars(range(min = 0.0, max = 5.0))]
    pub retry_temperature: f64,
}

impl Default for FailureSpec {
    fn default() -> Self {
        FailureSpec { retries: 2, policy: FailurePolicy::Skip, retry_temperature: 0.7 }
    }
}

/// What happens to a sample whose judge answer failed after every retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FailurePolicy {
    /// Leave the sample out of the update (counted and logged).
    Skip,
    /// Use this as the judge's reward for the sample (counted and logged; still mixed with the
    /// verifiers when `mix` is weighted).
    Penalty(f64),
    /// Stop the run with an error.
    Fail,
}

/// A programmatic check on a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VerifierSpec {
    /// Math: the `\boxed{}` answer is equivalent to the reference answer (1) or not (0).
    MathAnswer {
        /// Relative tolerance for numeric equality.
        #[serde(default = "default_tolerance")]
        #[schemars(range(min = 0.0, max = 0.1))]
        tolerance: f64,
        /// Without a `\boxed{}` answer, take the number after the last "answer is", else the
        /// last number of the response. Off by default (the paper's check); on for small
        /// policies that rarely box their answer.
        #[serde(default)]
        accept_unboxed: bool,
    },
    /// Ethical reasoning: the verdict tag (RIGHT / WRONG) matches the label (1) or not (0).
    Verdict,
    /// 1 when the word count is within bounds, else 0.
    Length {
        /// Fewest words accepted.
        #[serde(default)]
        min_words: usize,
        /// Most words accepted.
        #[serde(default = "default_max_words")]
        max_words: usize,
    },
    /// 1 when the response matches the regular expression, else 0.
    Format {
        /// Regular expression (Rust `regex` syntax) searched for in the response.
        pattern: String,
    },
}

fn default_tolerance() -> f64 {
    1e-6
}

fn default_max_words() -> usize {
    100_000
}

/// How verifier scores (mean of the verifiers, in [0, 1]) and the judge reward combine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum MixSpec {
    /// `judge_weight * judge + verifier_weight * verifier`.
    Weighted {
        /// Weight of the judge's reward.
        #[serde(default = "one")]
        judge_weight: f64,
        /// Weight of the verifiers' mean score.
        #[serde(default = "one")]
        verifier_weight: f64,
    },
    /// The reference's scheme: a seeded coin per rollout chunk picks the verifier (with
    /// probability `verifier_prob`) or the judge.
    Coin {
        /// Probability that a chunk is scored by the verifiers instead of the judge.
        #[schemars(range(min = 0.0, max = 1.0))]
        verifier_prob: f64,
        /// Rollouts that share one toss.
        #[serde(default = "one_usize")]
        #[schemars(range(min = 1))]
        chunk: usize,
    },
}

fn one() -> f64 {
    1.0
}

fn one_usize() -> usize {
    1
}

impl Default for MixSpec {
    fn default() -> Self {
        MixSpec::Weighted { judge_weight: 1.0, verifier_weight: 1.0 }
    }
}

// ------------------------------------------------------------------------------------------
// meta
// ------------------------------------------------------------------------------------------

/// A schedule: every N updates, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Every {
    #[default]
    Never,
    N(u32),
}

impl Every {
    pub fn interval(self) -> Option<u32> {
        match self {
            Every::Never => None,
            Every::N(n) => Some(n),
        }
    }
}

impl Serialize for Every {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Every::Never => s.serialize_str("never"),
            Every::N(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Every {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Err(serde::de::Error::custom("`every` must be at least 1 (or `never`)")),
            Raw::N(n) => Ok(Every::N(n)),
            Raw::S(s) if s == "never" => Ok(Every::Never),
            Raw::S(s) => Err(serde::de::Error::custom(format!("expected an integer >= 1 or `never`, found `{s}`"))),
        }
    }
}

impl JsonSchema for Every {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Every".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Every N updates (an integer >= 1), or `never`.",
            "anyOf": [
                { "type": "integer", "minimum": 1, "maximum": 4294967295u64 },
                { "const": "never" }
            ]
        })
    }
}

/// Which checkpoints a run keeps (`output.keep_checkpoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    #[default]
    All,
    /// The newest N (and those at planned evaluations).
    Newest(usize),
}

impl Serialize for Keep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Keep::All => s.serialize_str("all"),
            Keep::Newest(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Err(serde::de::Error::custom("`keep_checkpoints` must be at least 1 (or `all`)")),
            Raw::N(n) => Ok(Keep::Newest(n as usize)),
            Raw::S(s) if s == "all" => Ok(Keep::All),
            Raw::S(s) => Err(serde::de::Error::custom(format!("expected an integer >= 1 or `all`, found `{s}`"))),
        }
    }
}

impl JsonSchema for Keep {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Keep".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`all`, or the newest N checkpoints (an integer >= 1) and those at planned evaluations.",
            "anyOf": [
                { "type": "integer", "minimum": 1 },
                { "const": "all" }
            ]
        })
    }
}

/// The meta-reward model ("senior instructor"): every `every` updates it reads recent rollouts
/// with their scores and rationales and rewrites the rubric (analyze -> refine -> merge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetaSpec {
    /// How often the rubric is rewritten; `never` is fixed-rubric PPO (the baseline).
    pub every: Every,
    /// Rollouts sampled (seeded) from those since the last meta step.
    #[schemars(range(min = 1, max = 10000))]
    pub samples: usize,
    /// How they are drawn: `uniform` (the reference, outside math), or `score_tertiles`: the
    /// pool sorted by the judge's score and cut into three near-equal parts, a third of
    /// `samples` drawn from each (the reference's math step, 2 per part), so low, middle and
    /// high grades all reach the meta judge.
    #[serde(default, skip_serializing_if = "MetaSampling::is_uniform")]
    pub sampling: MetaSampling,
    /// Rubric families: record fields whose values key one rubric each. Every family starts
    /// from `reward.rubric`; the judge scores a rollout with its record's family's rubric, and a
    /// meta step rewrites each family from that family's rollouts alone (its own history under
    /// `rubrics/families/`). The reference's math keeps one per (subject, difficulty cluster):
    /// `[type, cluster]`, 21 families (`scripts/math_clusters.sh` adds `cluster` to MATH
    /// records). Every training record must have every field. Empty: one rubric for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// How a meta step reads its samples: `per_sample` (each analysed and refined on its own,
    /// the refinements merged; the reference outside math) or `joint` (all of them analysed in
    /// one prompt, one refinement and no merge; the reference's math). `joint` templates see
    /// `samples`, a list, where `per_sample` ones see `sample`.
    #[serde(default, skip_serializing_if = "MetaReview::is_per_sample")]
    pub review: MetaReview,
    /// The meta judge. Default: the reward judge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSpec>,
    /// Stage templates. Required unless `every` is `never`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<MetaStages>,
    /// Math: add a fixed one-line hint for the record's MATH subject (`type`) to the analysis
    /// and refinement prompts. mpo's own hints, in no version of the reference: the
    /// reference's per-subject guidance is an evolving rubric per (subject, difficulty cluster),
    /// which is `partition_by: [type, cluster]`.
    pub domain_guidelines: bool,
    /// The widest range a rubric item the meta judge writes may have (`(0-N)`, N at most 10):
    /// held in its answers and checked before a rubric is accepted, so under `reward.aggregate:
    /// sum` or `range_share` no single item swamps the rest. The reference has no bound.
    #[schemars(range(min = 1, max = 10))]
    pub max_points: i64,
    /// Most items a merged rubric may have; a longer one is rejected and the rubric kept. The
    /// reference has no cap: raise it (with `meta.max_tokens`) to come closer.
    #[schemars(range(min = 1, max = 100))]
    pub max_items: usize,
    /// Most tokens per meta-judge answer, the one budget of every meta stage (a
    /// `meta.judge.max_tokens` is not used). Analyses and rubrics are held to (or, on judges that
    /// take no grammar, asked for in) shapes sized to it: `mpo plan` prints them, and `mpo
    /// check` refuses a budget that holds no complete answer. 2048 holds 12 items of one
    /// 97-character line.
    #[schemars(range(min = 16, max = 65536))]
    pub max_tokens: u32,
    /// Score `reward.cases` under every merged rubric and under the rubric in force (with the
    /// reward judge) before the merged one becomes the next version: if an expectation holds
    /// under the rubric in force and fails under the merged one (a regression; one listed in
    /// the case file's `known_failures` does not count), the current rubric is kept. Checks are
    /// scale-free: the case file's numbers are read against the run's initial rubric and
    /// checked as shares of each rubric's ranges, item expectations only on the items a rubric
    /// keeps, so a rubric that rescales or renames items is not refused for it. The history
    /// records what regressed and what fails under both. Off by default: the paper has no gate.
    #[serde(skip_serializing_if = "is_false")]
    pub gate: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for MetaSpec {
    fn default() -> Self {
        MetaSpec {
            every: Every::Never,
            samples: 10,
            sampling: MetaSampling::Uniform,
            partition_by: vec![],
            review: MetaReview::PerSample,
            judge: None,
            stages: None,
            domain_guidelines: false,
            max_points: 10,
            max_items: 12,
            max_tokens: 2048,
            gate: false,
        }
    }
}

/// How a meta step draws its samples from the pool (`meta.sampling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetaSampling {
    /// Every pooled rollout equally likely.
    #[default]
    Uniform,
    /// Stratified by the judge's score: a third of the samples from each score tertile.
    ScoreTertiles,
}

impl MetaSampling {
    pub fn is_uniform(&self) -> bool {
        *self == MetaSampling::Uniform
    }
}

/// How a meta step reads its samples (`meta.review`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetaReview {
    /// Each sample analysed and refined on its own; the refined rubrics merged.
    #[default]
    PerSample,
    /// The samples analysed together in one prompt, then one refinement; no merge.
    Joint,
}

impl MetaReview {
    pub fn is_per_sample(&self) -> bool {
        *self == MetaReview::PerSample
    }
}

/// Templates of the meta stages (minijinja, strict undefined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetaStages {
    /// Optional first pass that drops samples not worth analysing (off in the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prescreen: Option<PathBuf>,
    /// Per sample: what the rubric missed, signs of reward hacking.
    pub analyze: PathBuf,
    /// Per sample: an improved rubric with explicit awards and deductions.
    pub refine: PathBuf,
    /// All refined rubrics merged into the next version. Required with `review: per_sample`;
    /// `joint` has no merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<PathBuf>,
}

// ------------------------------------------------------------------------------------------
// ppo
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// PPO with a critic (TRL's PPOTrainer semantics).
    Ppo,
    /// GRPO: group-normalised advantages, no critic.
    Grpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear decay to 0 over the run.
    Linear,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `log p - log q` (unbiased, can be negative).
    K1,
    /// `(r - 1) - log r` with `r = q / p` (non-negative, lower variance).
    K3,
}

/// The missing-EOS penalty: absolute, or relative to the reward's range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum EosPenalty {
    /// Subtracted as is, whatever the reward's scale (TRL's semantics).
    Absolute(#[schemars(range(min = 0.0))] f64),
    /// This share of the reward's range is subtracted.
    ShareOfRange {
        #[schemars(range(min = 0.0, max = 10.0))]
        share_of_range: f64,
    },
}

impl EosPenalty {
    /// The amount subtracted when the reward spans `range`.
    pub fn amount(&self, range: f64) -> f64 {
        match self {
            EosPenalty::Absolute(x) => *x,
            EosPenalty::ShareOfRange { share_of_range } => share_of_range * range,
        }
    }
}

/// Where the sequence score is placed among the per-token rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScoreAt {
    /// The last response token (textbook PPO).
    LastToken,
    /// One slot after the response, inside the value mask (the reference implementation).
    AfterEos,
}

/// How GRPO reduces per-token losses (TRL's GRPO `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLoss {
    /// Sequence-level: each response's token mean, then the mean over responses (the GRPO
    /// paper; a long response's tokens weigh less).
    Grpo,
    /// Batch-normalised: the mean over every unmasked token of the micro-batch.
    Bnpo,
    /// Dr. GRPO: the token sum over (responses x `response_length`), free of length bias.
    DrGrpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Critic {
    /// LoRA adapters of its own and a value head on the frozen base model (the policy's base is
    /// shared, so memory grows by the adapters only). The reference trains a full copy of the
    /// base as its critic; see ARCHITECTURE.md, "Deviations from the reference".
    Separate,
    /// A value head on the policy's trunk (half the memory; for small machines).
    Shared,
}

/// PPO / GRPO hyperparameters. Names follow TRL; defaults are the reference's run settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PpoSpec {
    /// PPO (with a critic) or GRPO (group-normalised advantages).
    pub algorithm: Algorithm,
    /// AdamW learning rate.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// How the learning rate changes over the run.
    pub lr_schedule: LrSchedule,
    /// AdamW weight decay.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight_decay: f64,
    /// Gradient-norm clipping (0 = off).
    #[schemars(range(min = 0.0))]
    pub max_grad_norm: f64,
    /// Optimisation passes over each rollout batch.
    #[schemars(range(min = 1, max = 100))]
    pub num_ppo_epochs: usize,
    /// Mini-batches per epoch; must divide `batch_size`.
    #[schemars(range(min = 1))]
    pub num_mini_batches: usize,
    /// Episodes (rollouts) per update.
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: usize,
    /// Micro-batches per optimizer step; must divide the mini-batch size.
    #[schemars(range(min = 1))]
    pub gradient_accumulation_steps: usize,
    /// Episodes over the whole run; updates = total_episodes / batch_size.
    #[schemars(range(min = 1))]
    pub total_episodes: usize,
    /// Per-token KL penalty coefficient against the reference policy.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub kl_coef: f64,
    /// Per-token KL estimator.
    pub kl_estimator: KlEstimator,
    /// Policy-ratio clip range.
    #[schemars(range(min = 0.0, max = 10.0))]
    pub cliprange: f64,
    /// Value clip range.
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub cliprange_value: f64,
    /// Value-loss coefficient.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub vf_coef: f64,
    /// GAE discount.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub gamma: f64,
    /// GAE lambda.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub lam: f64,
    /// Whiten the per-token rewards before GAE.
    pub whiten_rewards: bool,
    /// Most tokens a response may have.
    #[schemars(range(min = 1, max = 131072))]
    pub response_length: usize,
    /// Sampling temperature of the policy during rollouts.
    #[schemars(range(min = 0.0, max = 5.0))]
    pub temperature: f64,
    /// Penalty for responses that hit `response_length` without ending (no end-of-sequence token
    /// and no `policy.stop` string): a bare number is subtracted from the reward as is (TRL, the
    /// reference: `1.0`); `{share_of_range: x}` subtracts `x` times the width of the reward's
    /// range under the current rubric and mix (1 for normalised judge rewards, `max - min` of the
    /// rubric otherwise, plus the verifier weight). `null` = no penalty.
    pub missing_eos_penalty: Option<EosPenalty>,
    /// Where the sequence score enters the per-token rewards: at the last response token
    /// (textbook PPO), or one slot after it with that slot in the critic's mask (the reference
    /// implementation; a response filling `response_length` has no such slot and falls back to
    /// its last token).
    pub score_at: ScoreAt,
    /// The value model.
    pub critic: Critic,
    /// GRPO: responses sampled per prompt; must divide `batch_size`.
    #[schemars(range(min = 2, max = 1024))]
    pub group_size: usize,
    /// GRPO: how per-token losses become a micro-batch's loss (TRL's `loss_type`): `bnpo` the
    /// mean over its unmasked tokens, `grpo` per-sequence token means averaged, `dr_grpo` the
    /// token sum over sequences x `response_length`.
    pub grpo_loss: GrpoLoss,
    /// PPO: at the first update under a rubric the meta step just wrote, shift the rollout-time
    /// values by the batch's mean return error (Monte-Carlo return minus value over the critic's
    /// positions) before GAE, so advantages and the value-clipping window start at the new
    /// rubric's reward level instead of ramping a scale change onto the last tokens. The shift
    /// is `critic_shift` in metrics.jsonl.
    pub recenter_critic: bool,
}

impl Default for PpoSpec {
    fn default() -> Self {
        PpoSpec {
            algorithm: Algorithm::Ppo,
            learning_rate: 3e-6,
            lr_schedule: LrSchedule::Linear,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            batch_size: 64,
            gradient_accumulation_steps: 1,
            total_episodes: 10_000,
            kl_coef: 0.02,
            kl_estimator: KlEstimator::K1,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten_rewards: false,
            response_length: 700,
            temperature: 0.7,
            missing_eos_penalty: Some(EosPenalty::ShareOfRange { share_of_range: 0.2 }),
            score_at: ScoreAt::LastToken,
            critic: Critic::Separate,
            group_size: 4,
            grpo_loss: GrpoLoss::Bnpo,
            recenter_critic: false,
        }
    }
}

// ------------------------------------------------------------------------------------------
// eval, runtime, output
// ------------------------------------------------------------------------------------------

/// Evaluation on the task's test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// Evaluate every N updates and after the last, with the base policy measured before the
    /// first (cached under `output.root/.base-eval/`, so the runs of a sweep measure it once);
    /// or `never` (then only `mpo eval`).
    pub every: Every,
    /// Test prompts per evaluation (seeded sample of the test split).
    #[schemars(range(min = 1))]
    pub samples: usize,
    /// Sampling temperature for evaluation (0 = greedy).
    #[schemars(range(min = 0.0, max = 5.0))]
    pub temperature: f64,
    /// Seed of the test prompts and of evaluation sampling. Independent of `runtime.seed`, so
    /// every run of a seed sweep is measured on the same prompts.
    pub seed: u64,
    /// Pairwise tournaments between runs (`mpo eval --elo`): judge, matches, rating.
    pub elo: EloSpec,
    /// A fixed instrument for tasks without a verifier (essays; summarization beside ROUGE):
    /// every evaluation's responses are also scored by this judge under this rubric, neither
    /// of which training ever changes, so the arms of a sweep (MPO and fixed-rubric PPO) are
    /// measured with one instrument, during training and by `mpo eval`. Its metric is
    /// `instrument_score`: the mean over prompts of each response's score aggregated by
    /// `aggregate` (a share in [0, 1]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrument: Option<InstrumentSpec>,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec { every: Every::Never, samples: 64, temperature: 0.0, seed: 0, elo: EloSpec::default(), instrument: None }
    }
}

/// `eval.instrument`: a judge, rubric and prompt that score held-out responses and are never
/// rewritten. The judge must not be the training judge (`reward.judge`), which the policies
/// were optimised against and so favours them, unless `training_judge: true` says it knowingly
/// (then every summary says so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstrumentSpec {
    /// The instrument's judge, best a stronger model than `reward.judge`.
    pub judge: JudgeSpec,
    /// The fixed rubric (markdown, as `reward.rubric`); the expert rubrics
    /// `prompt_templates/<task>/rubric_expert.md` are written for this.
    pub rubric: PathBuf,
    /// Judge prompt template (the context of `reward.prompt`).
    pub prompt: PathBuf,
    /// How item scores are read from the judge's answer (as `reward.extraction`).
    #[serde(default)]
    pub extraction: Extraction,
    /// How the judge answers (as `reward.answer`).
    #[serde(default)]
    pub answer: AnswerMode,
    /// How item scores become one score (as `reward.aggregate`; `sum` is refused: the score
    /// must be a share to be compared and averaged).
    #[serde(default)]
    pub aggregate: Aggregate,
    /// Times an unusable answer is asked again (at `reward.failure.retry_temperature`); a
    /// response still unscored after them has no instrument score and is counted in
    /// `instrument_failures`.
    #[serde(default = "default_instrument_retries")]
    #[schemars(range(max = 10))]
    pub retries: u32,
    /// Allow the training judge's model as the instrument (printed beside every score).
    #[serde(default)]
    pub training_judge: bool,
}

fn default_instrument_retries() -> u32 {
    2
}

impl InstrumentSpec {
    /// The reward settings the instrument scores with: its judge, rubric, prompt and reading;
    /// the judge alone (no verifiers); an answer unusable after `retries` leaves the response
    /// unscored (`skip`), never a number.
    pub fn as_reward(&self, retry_temperature: f64) -> RewardSpec {
        RewardSpec {
            judge: self.judge.clone(),
            rubric: self.rubric.clone(),
            prompt: self.prompt.clone(),
            extraction: self.extraction.clone(),
            answer: self.answer,
            aggregate: self.aggregate,
            failure: FailureSpec { retries: self.retries, policy: FailurePolicy::Skip, retry_temperature },
            verifiers: Vec::new(),
            mix: MixSpec::Weighted { judge_weight: 1.0, verifier_weight: 0.0 },
            cases: None,
        }
    }
}

/// Pairwise tournaments (`mpo eval --elo`): a judge compares the responses of several runs or
/// checkpoints to the same test questions, each match in both presentation orders; players are
/// rated by a Bradley–Terry fit (default) or by the paper's sequential Elo (`--rating elo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EloSpec {
    /// Sequential Elo (`--rating elo`): the K-factor (rating change per game).
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub k: f64,
    /// The players' mean rating (Bradley–Terry), or every player's start (sequential Elo).
    pub start: f64,
    /// Sequential Elo (`--rating elo`): match orders replayed (mean +- std over them).
    #[schemars(range(min = 1, max = 1000))]
    pub repeats: usize,
    /// Matches per pair of players; each is judged in both presentation orders.
    #[schemars(range(min = 1))]
    pub matches: usize,
    /// Pairwise judge template (default: built in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PathBuf>,
    /// The tournament's judge, best a stronger model distinct from `reward.judge` (which the
    /// policies were optimised against, and so favours them). Not part of the run's identity:
    /// adding it changes no run id. Unset: `mpo eval --elo` needs `--judge FILE`, or
    /// `--training-judge` to reuse `reward.judge` knowingly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSpec>,
}

impl Default for EloSpec {
    fn default() -> Self {
        EloSpec { k: 4.0, start: 1000.0, repeats: 5, matches: 32, prompt: None, judge: None }
    }
}

/// Compute backend (each but `cpu` is a cargo feature of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// burn's CPU backend (flex); always compiled in.
    Cpu,
    /// burn-wgpu (Vulkan, Metal, DX12); `--features wgpu`.
    Wgpu,
    /// burn-cuda (NVIDIA); `--features cuda`.
    Cuda,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        self.as_str()
    }

    /// How to build an mpo with this backend. CUDA builds need no toolkit when
    /// `CUDARC_CUDA_VERSION` names the driver API to bind (the node's driver is loaded at run time).
    pub fn build_hint(self) -> String {
        let env = if self == BackendKind::Cuda { "CUDARC_CUDA_VERSION=13000 " } else { "" };
        format!("build with `{env}cargo build --release --features {}` (see the README's \"Backends\")", self.feature())
    }

    pub fn compiled_in(self) -> bool {
        match self {
            BackendKind::Cpu => cfg!(feature = "cpu"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }
}

/// Where and how a run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSpec {
    /// Compute backend.
    pub backend: BackendKind,
    /// Device index for GPU backends.
    pub device: usize,
    /// Master seed; every random choice derives from it through named streams.
    pub seed: u64,
    /// CPU threads (default: all cores). Does not change the plan's hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<usize>,
    /// Write a checkpoint every N updates (and after the last).
    pub checkpoint_every: Every,
    /// Most sequences per forward batch: rollouts, evaluation prompts, the in-process judge's
    /// prompts and PPO's no-grad passes. Larger batches generate faster on the CPU (decoding
    /// is bound by reading the weights) and take more memory. Part of the run id: rows padded
    /// to another batch's length can be summed in another order, so the floats can differ.
    #[schemars(range(min = 1, max = 4096))]
    pub rollout_batch: usize,
    /// Memory of the device a run is meant for, in GiB (e.g. 80 for an H100): `mpo check` warns
    /// when the plan's estimate exceeds it and names the gradient accumulation that fits. Not
    /// part of the run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1))]
    pub device_memory_gib: Option<f64>,
    /// On the CPU backend with a GGUF model stored in Q4_1 / Q8_0 blocks: products of up to 32
    /// rows that need no gradient (the decode steps of rollouts, evaluation and in-process
    /// judges) read the file's blocks instead of the f32 copy: the same weights, summed in
    /// another order, so a token can differ where two were within float rounding; ~1.5-1.9x
    /// faster generation. `false`: every product on the f32 copy (mpo's arithmetic before
    /// 2026-12-04). Part of the run id only when `false`.
    #[serde(skip_serializing_if = "is_true")]
    pub quantized_decode: bool,
    /// Where the policy's rollouts are generated: mpo's own decoder (the default) or an
    /// inference engine serving the current adapter. Evaluations always decode in process, so a
    /// run's evaluations compare with any other run's.
    #[serde(skip_serializing_if = "RolloutsSpec::is_in_process")]
    pub rollouts: RolloutsSpec,
    /// Arithmetic of the policy and critic: `f32` (the default), or `bf16` mixed precision: the
    /// frozen base's projections, embedding and LM head stored in bf16 (half the memory) and
    /// their products, with attention's two products, in bf16 with f32 accumulation; LoRA
    /// adapters, value head, norms, softmax, log-softmax, losses and the optimizer stay f32.
    /// For GPUs (cuda); wgpu has no bf16, and the CPU backend converts every bf16 product to
    /// f32 and back (slower than f32: for checking numerics). Part of the run id only when bf16.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Arithmetic of the policy and critic (`runtime.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 storage and products of the frozen base, f32 everywhere else (mixed precision).
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The generator of a run's rollouts (`runtime.rollouts`).
///
/// With an engine, each update exports the policy's current adapter, has the engine load it,
/// sends the update's prompts as token ids (each with its own seed from the update's random
/// stream), and reads back token ids and the engine's log-probs. PPO's old log-probs and values
/// are recomputed in the trainer as always; the gap between the two log-probs of every response
/// token is logged as `rollouts.drift` (the off-policy drift of engine-generated rollouts). On a
/// CPU the in-process decoder is the faster one; an engine pays at GPU scale, where generation is
/// most of an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutsSpec {
    pub engine: RolloutEngine,
    /// `vllm` / `sglang`: the environment variable holding the server's base URL (the root, or
    /// ending in `/v1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url_env: Option<String>,
    /// `vllm` / `sglang`: the environment variable holding an API key, if the server wants one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// `vllm` / `sglang`: a directory both mpo and the server read (a shared filesystem): each
    /// update's PEFT adapter is written here, loaded by the server, and removed once the next one
    /// is loaded (the durable copies are the run's checkpoints: `mpo export`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_dir: Option<PathBuf>,
    /// Requests in flight at once (llama-server: its parallel slots). An engine batches the
    /// requests in flight together, and which ones meet changes its sums in the last bits, so
    /// seeded rollouts repeat exactly only one at a time (`concurrency: 1`, measured on
    /// llama-server); mpo's in-process decoder repeats them at any batch size.
    #[schemars(range(min = 1, max = 4096))]
    pub concurrency: usize,
    /// Seconds one request may take.
    #[schemars(range(min = 1.0))]
    pub timeout_s: f64,
    /// Retries of a request that timed out, failed to connect or got a 408, 429 or 5xx.
    #[schemars(range(max = 20))]
    pub max_retries: u32,
}

impl Default for RolloutsSpec {
    fn default() -> Self {
        RolloutsSpec {
            engine: RolloutEngine::InProcess,
            base_url_env: None,
            api_key_env: None,
            adapter_dir: None,
            concurrency: 64,
            timeout_s: 600.0,
            max_retries: 3,
        }
    }
}

impl RolloutsSpec {
    pub fn is_in_process(&self) -> bool {
        self.engine == RolloutEngine::InProcess
    }
}

/// What generates rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutEngine {
    /// mpo's KV-cache decoder, on the run's backend.
    #[default]
    InProcess,
    /// llama.cpp's llama-server, started by mpo on the policy's GGUF and restarted with each
    /// update's adapter (`--lora`): the CPU case (`scripts/setup_llama_server.sh` builds it).
    LlamaServer,
    /// A running vLLM server started with `--enable-lora` (and `--max-lora-rank` at least the
    /// policy's rank) and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, and `--logprobs-mode
    /// processed_logprobs` so that its log-probs are of the tempered distribution, as mpo's.
    Vllm,
    /// A running SGLang server started with `--enable-lora`, `--max-lora-rank` and
    /// `--lora-target-modules` covering the policy's LoRA.
    Sglang,
}

impl RolloutEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutEngine::InProcess => "in_process",
            RolloutEngine::LlamaServer => "llama_server",
            RolloutEngine::Vllm => "vllm",
            RolloutEngine::Sglang => "sglang",
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec {
            backend: BackendKind::Cpu,
            device: 0,
            seed: 0,
            threads: None,
            checkpoint_every: Every::N(20),
            rollout_batch: 8,
            device_memory_gib: None,
            quantized_decode: true,
            rollouts: RolloutsSpec::default(),
            precision: Precision::F32,
        }
    }
}

/// Where results go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSpec {
    /// Results root. Written in a spec, relative to that file; by default `results` in the
    /// directory mpo runs in. Does not change the plan's hash.
    pub root: PathBuf,
    /// Checkpoints kept: `all` (the default: nothing a run writes is deleted, and `mpo eval
    /// --checkpoint` and `mpo export` reach every one), or N: the newest N and every checkpoint
    /// at a planned evaluation; older ones are then deleted (`mpo plan` says which survive).
    pub keep_checkpoints: Keep,
    /// Write every rollout (prompt, response, judge transcript, score) to `samples/`.
    pub samples: bool,
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec { root: PathBuf::from("results"), keep_checkpoints: Keep::All, samples: true }
    }
}

// ------------------------------------------------------------------------------------------
// sweep
// ------------------------------------------------------------------------------------------

/// A sweep: the base spec (everything outside `sweep:`) expanded into cells. Keys are dotted
/// paths (`meta.every`), values are lists. Cells = ablate variants x zip rows x grid product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Cartesian product of every listed value.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub grid: IndexMap<String, Vec<serde_json::Value>>,
    /// Paired lists (all the same length): row i takes the i-th value of each.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub zip: IndexMap<String, Vec<serde_json::Value>>,
    /// One factor at a time from the base: the base cell plus one cell per listed value.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub ablate: IndexMap<String, Vec<serde_json::Value>>,
}
