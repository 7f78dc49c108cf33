//! Human-readable renderings of plans (`mpo plan`).

use std::fmt::Write as _;

use super::Plan;
use crate::model::registry::ModelRef;
use crate::reward::score::{AnswerShape, answer_budget};
use crate::spec::{Algorithm, Every, Extraction, FailurePolicy, JudgeBackend, JudgeSpec, MixSpec, VerifierSpec};

fn model_name(m: &ModelRef) -> String {
    match m {
        ModelRef::Known { name, .. } => name.clone(),
        ModelRef::Gguf { path, .. } | ModelRef::HfDir { path, .. } => path.display().to_string(),
        ModelRef::Random { name } => name.clone(),
    }
}

fn list(v: &[u32]) -> String {
    match v.len() {
        0 => "none".into(),
        1..=8 => v.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        n => format!("{}, {}, ..., {} ({n} in all)", v[0], v[1], v[n - 1]),
    }
}

fn every(e: Every) -> String {
    match e {
        Every::Never => "never".into(),
        Every::N(1) => "every update".into(),
        Every::N(n) => format!("every {n} updates"),
    }
}

/// A judge in one phrase: backend, model, endpoint.
pub fn judge(j: &JudgeSpec, model: Option<&ModelRef>) -> String {
    match j.backend {
        JudgeBackend::Local => format!("local {}", model.map(model_name).unwrap_or_default()),
        JudgeBackend::Openai => format!(
            "openai {}{}{} via ${} (concurrency {})",
            j.model.as_deref().unwrap_or("<served model>"),
            match j.api {
                crate::spec::JudgeApi::Chat => "",
                crate::spec::JudgeApi::Completions => " (completions)",
            },
            match j.dialect {
                crate::spec::Dialect::Openai => "",
                crate::spec::Dialect::Vllm => " [vllm]",
                crate::spec::Dialect::Sglang => " [sglang]",
                crate::spec::Dialect::LlamaCpp => " [llama_cpp]",
            },
            j.base_url_env,
            j.concurrency
        ),
        JudgeBackend::Replay => format!("replay from {}", j.replay_from.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The readable summary of one plan.
pub fn render_summary(plan: &Plan) -> String {
    let s = &plan.spec;
    let i = &plan.inputs;
    let mut o = String::new();
    let _ = writeln!(o, "plan {} (run id {})", plan.name, plan.run_id);
    if let Some(c) = &plan.cell {
        let _ = writeln!(o, "  cell      {}: {}", c.index, c.label);
    }
    let data = |d: &super::DataInfo| {
        let used = if d.used < d.records { format!("{} of {}", d.used, d.records) } else { d.records.to_string() };
        let dropped = if d.dropped > 0 { format!(", {} dropped on load", d.dropped) } else { String::new() };
        format!("{used} records from {}{dropped}", d.source)
    };
    let _ = writeln!(o, "  task      {}: train {}", s.task.kind.as_str(), data(&i.train));
    if let Some(t) = &i.test {
        let _ = writeln!(o, "            test {}", data(t));
    }
    if let Some(t) = &i.transfer {
        let _ = writeln!(o, "            transfer {}", data(t));
    }
    let l = &s.policy.lora;
    let targets: Vec<String> = l.targets.iter().map(crate::spec::name_of).collect();
    let _ = writeln!(o, "  policy    {}, LoRA r={} alpha={} on {}", model_name(&i.models.policy), l.rank, l.alpha, targets.join(","));
    let _ = writeln!(
        o,
        "  reward    judge {}; rubric v0 {} item{}, scores {}..{}{}",
        judge(&s.reward.judge, i.models.judge.as_ref()),
        i.rubric_v0.items.len(),
        if i.rubric_v0.items.len() == 1 { "" } else { "s" },
        i.rubric_v0.min_score,
        i.rubric_v0.max_score,
        match s.reward.aggregate {
            crate::spec::Aggregate::ItemMean => ", reward = mean of item shares (0..1)",
            crate::spec::Aggregate::RangeShare => ", reward = share of the total range (0..1)",
            crate::spec::Aggregate::Sum => ", reward = summed points",
        }
    );
    let j = &s.reward.judge;
    let extraction = match &s.reward.extraction {
        Extraction::Regex { .. } if s.reward.holds_free_answers() => {
            let b = answer_budget(AnswerShape::Free, i.rubric_v0.names(), j.max_tokens);
            format!(
                "regex, answers held to a grammar (rationales <= {} chars: at most {} of {} tokens under rubric v0)",
                b.rationale_chars, b.most_tokens, j.max_tokens
            )
        }
        Extraction::Regex { .. } => "regex".to_string(),
        Extraction::Json if !j.sends_schemas() => "json (no schema sent: the openai dialect has none on completions)".to_string(),
        Extraction::Json => {
            let b = answer_budget(AnswerShape::Json, i.rubric_v0.names(), j.max_tokens);
            format!(
                "json, answers held to a schema (rationales <= {} chars: at most {} of {} tokens under rubric v0)",
                b.rationale_chars, b.most_tokens, j.max_tokens
            )
        }
        Extraction::Logprobs { top_logprobs } => format!("logprobs (top {top_logprobs})"),
    };
    let failure = match &s.reward.failure.policy {
        FailurePolicy::Skip => "skip the sample".to_string(),
        FailurePolicy::Penalty(x) => format!("reward {x}"),
        FailurePolicy::Fail => "fail the run".to_string(),
    };
    let _ = writeln!(o, "            scores by {extraction}; on failure retry {}x, then {failure}", s.reward.failure.retries);
    if !s.reward.verifiers.is_empty() {
        let names: Vec<String> = s
            .reward
            .verifiers
            .iter()
            .map(|v| match v {
                VerifierSpec::MathAnswer { accept_unboxed, .. } => {
                    if *accept_unboxed {
                        "math_answer (unboxed accepted)".into()
                    } else {
                        "math_answer".into()
                    }
                }
                VerifierSpec::Verdict => "verdict".into(),
                VerifierSpec::Length { min_words, max_words } => format!("length {min_words}..{max_words} words"),
                VerifierSpec::Format { .. } => "format".into(),
            })
            .collect();
        let mix = match &s.reward.mix {
            MixSpec::Weighted { judge_weight, verifier_weight } => {
                format!("weighted: {judge_weight} x judge + {verifier_weight} x verifier")
            }
            MixSpec::Coin { verifier_prob, chunk } => format!("coin: verifier with p={verifier_prob} per {chunk} rollout(s), else judge"),
        };
        let _ = writeln!(o, "            verifiers {}; mix {mix}", names.join(", "));
    }
    match s.meta.every {
        Every::Never => {
            let _ = writeln!(o, "  meta      never (fixed rubric)");
        }
        e => {
            let stages = if s.meta.stages.as_ref().is_some_and(|st| st.prescreen.is_some()) {
                "prescreen -> analyze -> refine -> merge"
            } else {
                "analyze -> refine -> merge"
            };
            let mj = s.meta.judge.as_ref().unwrap_or(&s.reward.judge);
            let _ =
                writeln!(o, "  meta      {}, {} samples, {stages}; judge {}", every(e), s.meta.samples, judge(mj, i.models.meta.as_ref()));
            if let Ok(shapes) =
                crate::meta::MetaShapes::fit(s.meta.max_items, s.meta.max_tokens).map(|m| m.with_max_points(s.meta.max_points))
            {
                let (r, a) = (shapes.rubric, shapes.analysis);
                let held = if mj.holds_shapes() { "held to" } else { "asked for (this judge takes no grammar)" };
                let lines =
                    if r.lines == 1 { "one award/deduction line".to_string() } else { format!("1-{} award/deduction lines", r.lines) };
                let _ = writeln!(
                    o,
                    "            answers {held}: analyses of {} findings <= {} chars; rubrics of <= {} items (0-N, N <= {}), {lines} <= {} chars each (at most {} of {} tokens)",
                    a.findings,
                    a.chars,
                    r.items,
                    r.max_points,
                    r.line_chars,
                    r.most_tokens(),
                    s.meta.max_tokens
                );
            }
        }
    }
    let p = &s.ppo;
    let algo = match p.algorithm {
        Algorithm::Ppo => {
            format!("ppo (critic {})", crate::spec::name_of(&p.critic))
        }
        Algorithm::Grpo => format!("grpo (groups of {})", p.group_size),
    };
    let _ = writeln!(
        o,
        "  ppo       {algo}: {} updates x {} episodes, {} epochs x {} mini-batches (grad accum {}), lr {:e} {}",
        plan.schedule.updates,
        p.batch_size,
        p.num_ppo_epochs,
        p.num_mini_batches,
        p.gradient_accumulation_steps,
        p.learning_rate,
        crate::spec::name_of(&p.lr_schedule)
    );
    let _ = writeln!(
        o,
        "            kl {} ({}), clip {} / value clip {}, vf {}, gamma {} lam {}, response <= {} tokens at T={}{}, score at {}",
        p.kl_coef,
        crate::spec::name_of(&p.kl_estimator),
        p.cliprange,
        p.cliprange_value,
        p.vf_coef,
        p.gamma,
        p.lam,
        p.response_length,
        p.temperature,
        p.missing_eos_penalty
            .map(|x| match x {
                crate::spec::EosPenalty::Absolute(x) => format!(", missing-EOS penalty {x}"),
                crate::spec::EosPenalty::ShareOfRange { share_of_range } => {
                    let span = (i.rubric_v0.max_score - i.rubric_v0.min_score) as f64;
                    let amount = (x.amount(crate::reward::reward_range(&s.reward, span)) * 1e4).round() / 1e4;
                    format!(", missing-EOS penalty {share_of_range} x reward range ({amount} under rubric v0)")
                }
            })
            .unwrap_or_default(),
        match p.score_at {
            crate::spec::ScoreAt::LastToken => "the last token",
            crate::spec::ScoreAt::AfterEos => "the slot after EOS",
        }
    );
    let r = &s.runtime;
    let decode = if r.quantized_decode { "" } else { ", decode products on the f32 weights (quantized_decode: false)" };
    let _ =
        writeln!(o, "  runtime   {} (device {}), seed {}, rollout batch {}{decode}", r.backend.as_str(), r.device, r.seed, r.rollout_batch);
    let ro = &r.rollouts;
    let _ = match ro.engine {
        crate::spec::RolloutEngine::InProcess => Ok(()),
        crate::spec::RolloutEngine::LlamaServer => writeln!(
            o,
            "  rollouts  on llama-server, restarted with each update's adapter (llama.cpp GGUF), {} requests at a time; evaluations in process",
            ro.concurrency
        ),
        e => writeln!(
            o,
            "  rollouts  on {} at ${}, each update's PEFT adapter loaded from {}, {} requests at a time; evaluations in process",
            e.as_str(),
            ro.base_url_env.as_deref().unwrap_or("?"),
            ro.adapter_dir.as_ref().map_or("?".into(), |d| d.display().to_string()),
            ro.concurrency
        ),
    };
    let sc = &plan.schedule;
    let _ = writeln!(o, "  schedule  meta after update {}", list(&sc.meta_at));
    let _ = writeln!(
        o,
        "            eval after update {}{}",
        list(&sc.eval_at),
        if sc.eval_at.is_empty() { "" } else { " (and the base policy before update 1)" }
    );
    let kept = match s.output.keep_checkpoints {
        crate::spec::Keep::All => "every one kept".to_string(),
        crate::spec::Keep::Newest(n) => format!(
            "the newest {n} kept{}, older ones DELETED (output.keep_checkpoints: {n}; `all` keeps every one)",
            if sc.eval_at.is_empty() { String::new() } else { " with those at evaluated updates".to_string() }
        ),
    };
    let _ = writeln!(o, "            checkpoint after update {} ({kept})", list(&sc.checkpoint_at));
    if let Some(inst) = &s.eval.instrument {
        let _ = writeln!(
            o,
            "            instrument (fixed judge and rubric, every evaluation) {}{}, rubric {}",
            judge(&inst.judge, i.models.instrument.as_ref()),
            if inst.training_judge { " (the training judge, knowingly)" } else { "" },
            inst.rubric.display()
        );
    }
    if let Some(j) = &s.eval.elo.judge {
        let _ = writeln!(o, "            tournament judge (mpo eval --elo) {}", judge(j, i.models.elo.as_ref()));
    }
    let e = &plan.estimates;
    let _ = writeln!(
        o,
        "  estimates {} episodes, <= {} policy tokens, {} judge calls, {} meta calls{}, <= {} judge tokens (retries included){}",
        thousands(e.episodes),
        thousands(e.policy_tokens),
        thousands(e.judge_calls),
        thousands(e.meta_calls),
        if s.meta.partition_by.is_empty() { "" } else { " per rubric family (meta.partition_by)" },
        thousands(e.judge_tokens),
        if e.eval_episodes > 0 { format!(", {} eval episodes", thousands(e.eval_episodes)) } else { String::new() }
    );
    if let Some(m) = &e.memory {
        use crate::model::memory::gib;
        let a = &m.at_spec;
        let _ = writeln!(
            o,
            "  memory    ~{} per device ({} rows x {} positions at the longest training prompt, per backward pass): weights {}, trained + AdamW {}, activations {}, logits {}, generation {}",
            gib(a.peak()),
            m.micro_rows,
            m.seq,
            gib(a.base_weights),
            gib(a.trained),
            gib(a.activations),
            gib(a.logits),
            gib(a.generation)
        );
        if s.ppo.gradient_accumulation_steps > 1 {
            let _ = writeln!(o, "            ~{} without gradient accumulation", gib(m.without_accumulation.peak()));
        }
    }
    if let Some(w) = &e.wall_time {
        o.push_str(&w.render());
    }
    let _ = writeln!(o, "  output    {}/{}/{}/", s.output.root.display(), plan.name, plan.run_id);
    o
}

/// One line per cell of a sweep.
pub fn render_sweep_table(plans: &[Plan]) -> String {
    let mut o = String::new();
    let name = plans.first().map(|p| p.name.as_str()).unwrap_or("");
    let _ = writeln!(o, "sweep {name}: {} cells", plans.len());
    let w = plans.iter().map(|p| p.cell.as_ref().map(|c| c.label.len()).unwrap_or(4)).max().unwrap_or(4).max(4);
    // measured wall time (`?` where no run of the same shape was measured), when looked up
    let timed = plans.iter().any(|p| p.estimates.wall_time.is_some());
    let time = |p: &Plan| match p.estimates.wall_time.as_ref().map(|w| w.total()) {
        Some(Some(t)) => format!("  {:>13}", super::wall_time::range(t)),
        Some(None) => format!("  {:>13}", "?"),
        None => String::new(),
    };
    let header = if timed { format!("  {:>13}", "wall time") } else { String::new() };
    let _ = writeln!(
        o,
        "  {:>4}  {:<12}  {:<w$}  {:>7}  {:>9}  {:>11}{header}",
        "cell", "run id", "factors", "updates", "meta at", "judge calls"
    );
    for p in plans {
        let (idx, label) = p.cell.as_ref().map(|c| (c.index.to_string(), c.label.clone())).unwrap_or(("-".into(), "base".into()));
        let meta = if p.schedule.meta_at.is_empty() { "-".to_string() } else { format!("{}x", p.schedule.meta_at.len()) };
        let _ = writeln!(
            o,
            "  {idx:>4}  {:<12}  {label:<w$}  {:>7}  {meta:>9}  {:>11}{}",
            p.run_id,
            p.schedule.updates,
            thousands(p.estimates.judge_calls),
            time(p)
        );
    }
    if timed && plans.iter().any(|p| p.estimates.wall_time.as_ref().is_some_and(|w| w.total().is_none())) {
        let _ =
            writeln!(o, "  ?: no run of the same shape measured every phase (`mpo plan --json` has each phase under estimates.wall_time)");
    }
    o
}
