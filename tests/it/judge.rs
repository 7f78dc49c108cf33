//! Judges against a fault-injecting stub server (timeouts, 5xx with Retry-After, 429, 4xx,
//! malformed and truncated bodies, bad scores, bad meta answers) and against a real
//! llama-server serving SmolLM2 (built by scripts/setup_llama_server.sh).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mpo::bench::stub::{Reply, Stub};
use mpo::judge::cache::CachedJudge;
use mpo::judge::openai::{OpenAiConfig, OpenAiJudge};
use mpo::judge::{Judge, JudgeError, JudgeRequest, TokenUsage};
use mpo::reward::score::ScoreFailure;
use mpo::reward::{self, RewardConfig, Rollout};
use mpo::rubric::Rubric;
use mpo::spec::{Dialect, JudgeApi};
use mpo::spec::{Extraction, FailurePolicy, FailureSpec, JudgeSpec, MixSpec, RewardSpec};
use serde_json::json;

fn judge(urls: Vec<String>, retries: u32, timeout_ms: u64) -> OpenAiJudge {
    OpenAiJudge::new(OpenAiConfig {
        base_urls: urls,
        api_key: Some("sk-test-secret".into()),
        model: Some("stub".into()),
        api: JudgeApi::Chat,
        dialect: Dialect::Openai,
        concurrency: 4,
        timeout: Duration::from_millis(timeout_ms),
        max_retries: retries,
        backoff: Duration::from_millis(20),
    })
    .unwrap()
}

fn req(p: &str) -> JudgeRequest {
    JudgeRequest { prompt: p.into(), max_tokens: 32, temperature: 0.0, seed: 1, ..Default::default() }
}

#[test]
fn timeouts_are_retried() {
    let stub = Stub::start(|r| if r.index == 0 { Reply::Hang } else { Reply::Text("Correct: 3".into()) }).unwrap();
    let mut j = judge(vec![stub.url.clone()], 2, 300);
    let out = j.complete(&[req("a")]);
    assert_eq!(out[0].as_ref().unwrap().text, "Correct: 3");
    assert_eq!(stub.count(), 2);
    // with no retries the timeout is the answer
    let stub = Stub::start(|_| Reply::Hang).unwrap();
    let mut j = judge(vec![stub.url.clone()], 0, 200);
    assert!(matches!(j.complete(&[req("a")])[0], Err(JudgeError::Timeout { .. })));
}

#[test]
fn server_errors_and_rate_limits_honour_retry_after() {
    let stub = Stub::start(|r| match r.index {
        0 => Reply::Status { code: 503, retry_after: Some("0.3".into()), body: "overloaded".into() },
        1 => Reply::Status { code: 429, retry_after: None, body: "slow down".into() },
        2 => Reply::Status { code: 500, retry_after: None, body: "oops".into() },
        _ => Reply::Text("ok".into()),
    })
    .unwrap();
    let mut j = judge(vec![stub.url.clone()], 3, 2000);
    let t = Instant::now();
    let out = j.complete(&[req("a")]);
    assert_eq!(out[0].as_ref().unwrap().text, "ok");
    assert!(t.elapsed() >= Duration::from_millis(300), "Retry-After was not honoured: {:?}", t.elapsed());
    assert_eq!(stub.count(), 4);
}

#[test]
fn client_errors_are_not_retried_and_the_key_stays_in_the_header() {
    let stub = Stub::start(|r| {
        if r.headers.to_lowercase().contains("authorization: bearer sk-test-secret") {
            Reply::Status { code: 400, retry_after: None, body: "bad request".into() }
        } else {
            Reply::Status { code: 401, retry_after: None, body: "no key".into() }
        }
    })
    .unwrap();
    let mut j = judge(vec![stub.url.clone()], 3, 2000);
    let e = j.complete(&[req("a")]).remove(0).unwrap_err();
    assert!(matches!(e, JudgeError::Http { status: 400, .. }), "{e}");
    assert!(!e.to_string().contains("sk-test-secret"));
    assert_eq!(stub.count(), 1);
}

#[test]
fn malformed_and_truncated_bodies_are_typed_failures() {
    let stub = Stub::start(|r| if r.index % 2 == 0 { Reply::Malformed("{not json".into()) } else { Reply::Truncated }).unwrap();
    let mut j = judge(vec![stub.url.clone()], 2, 2000);
    match j.complete(&[req("a")]).remove(0) {
        Err(JudgeError::Exhausted { attempts: 3, last }) => {
            assert!(matches!(*last, JudgeError::Malformed { .. } | JudgeError::Transport { .. }))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.count(), 3);
}

#[test]
fn base_urls_are_load_balanced_and_fail_over() {
    let a = Stub::start(|_| Reply::Text("from a".into())).unwrap();
    let b = Stub::start(|_| Reply::Text("from b".into())).unwrap();
    let mut j = judge(vec![a.url.clone(), b.url.clone()], 0, 2000);
    let reqs: Vec<JudgeRequest> = (0..10).map(|i| req(&format!("p{i}"))).collect();
    assert!(j.complete(&reqs).iter().all(|r| r.is_ok()));
    assert_eq!((a.count(), b.count()), (5, 5));
    // a dead URL: its requests move to the live one on retry
    let mut j = judge(vec!["http://127.0.0.1:9".into(), a.url.clone()], 1, 2000);
    assert!(j.complete(&reqs).iter().all(|r| r.as_ref().map(|x| x.text == "from a").unwrap_or(false)));
}

fn reward_cfg(retries: u32, policy: FailurePolicy) -> RewardConfig {
    let spec = RewardSpec {
        judge: JudgeSpec { max_tokens: 64, ..JudgeSpec::default() },
        rubric: "r.md".into(),
        prompt: "j.j2".into(),
        extraction: Extraction::default(),
        answer: mpo::spec::AnswerMode::Free,
        aggregate: mpo::spec::Aggregate::RangeShare,
        failure: FailureSpec { retries, policy, ..FailureSpec::default() },
        verifiers: vec![],
        mix: MixSpec::default(),
        cases: None,
    };
    let template = std::fs::read_to_string("prompt_templates/math/judge.j2").unwrap();
    RewardConfig::new(spec, "math", template, "judge.j2".into()).unwrap()
}

#[test]
fn out_of_range_scores_are_retried_then_handled_by_policy() {
    let rubric = Rubric::parse("## Correct (0-4)\n## Clear (0-2)\n").unwrap();
    let rec = json!({"problem": "2+2?", "answer": "4"});
    let rs = vec![Rollout { id: "u1-r0".into(), question: "2+2?".into(), response: "\\boxed{4}".into(), record: &rec }];
    let stub = Stub::start(|_| Reply::Text("Correct: 7\nClear: 1".into())).unwrap();
    let mut j = judge(vec![stub.url.clone()], 0, 2000);
    let mut usage = TokenUsage::default();
    let s = reward::score_batch(&mut j, &reward_cfg(2, FailurePolicy::Skip), &rubric, &rs, 0, 1, &mut usage).unwrap();
    assert_eq!(stub.count(), 3);
    assert_eq!(s[0].judge_answers.len(), 3);
    assert!(matches!(s[0].failure, Some(ScoreFailure::OutOfRange { score: 7.0, .. })));
    assert_eq!(s[0].reward, None);
    assert_eq!((usage.calls, usage.prompt_tokens), (3, 60));
}

#[test]
fn bad_meta_answers_keep_the_rubric() {
    use mpo::meta::{MetaConfig, MetaSample, run};
    let t = |name: &str| (name.to_string(), std::fs::read_to_string(format!("prompt_templates/meta/{name}.j2")).unwrap());
    let cfg = MetaConfig {
        task: "math".into(),
        prescreen: None,
        analyze: t("analyze"),
        refine: t("refine"),
        merge: Some(t("merge")),
        review: mpo::spec::MetaReview::PerSample,
        samples: 2,
        sampling: mpo::spec::MetaSampling::Uniform,
        domain_guidelines: false,
        max_tokens: 640,
        temperature: 0.0,
        shapes: mpo::meta::MetaShapes::fit(6, 640).unwrap(),
        held: false,
    };
    let samples: Vec<MetaSample> = (0..3)
        .map(|i| MetaSample {
            id: format!("s{i}"),
            question: "q".into(),
            response: "r".into(),
            score: Some(1.0),
            max_score: 4.0,
            rationale: "Correct: 1".into(),
            verifier: None,
            record: json!({}),
        })
        .collect();
    let current = Rubric::parse("## Correct (0-4)\n").unwrap();
    // the refine stage answers prose that is no rubric at all
    let stub = Stub::start(|r| {
        let p = r.body["messages"][0]["content"].as_str().unwrap_or("").to_string();
        if p.contains("Your review will be used") {
            Reply::Text("It misses units.".into())
        } else {
            Reply::Text("I would improve it a lot.".into())
        }
    })
    .unwrap();
    let mut j = judge(vec![stub.url.clone()], 0, 2000);
    let o = run(&mut j, &cfg, &current, &samples, 0, 2, "");
    let e = o.result.unwrap_err().to_string();
    assert!(e.contains("of 2 asked for, 2 not a rubric"), "{e}");
    // an empty merged rubric
    let stub = Stub::start(|r| {
        let p = r.body["messages"][0]["content"].as_str().unwrap_or("").to_string();
        if p.contains("Combine them into one rubric") {
            Reply::Text(String::new())
        } else {
            Reply::Text("## Correct (0-4)\n- Award 4.\n## Units (0-1)\n- Award 1.".into())
        }
    })
    .unwrap();
    let mut j = judge(vec![stub.url.clone()], 0, 2000);
    let o = run(&mut j, &cfg, &current, &samples, 0, 2, "");
    assert!(o.result.unwrap_err().to_string().contains("no items"));
    assert_eq!(o.merged_raw.as_deref(), Some(""));
}

// ---- a real llama-server ---------------------------------------------------------------------

fn llama_server() -> &'static str {
    static SERVER: OnceLock<mpo::engine::llama_server::LlamaServer> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let bin = mpo::engine::llama_server::find_binary().unwrap_or_else(|| {
                panic!(
                    "this test needs a real llama-server and none is built: run `scripts/setup_llama_server.sh` once (~12 min, \
                     cached under ~/.cache/mpo), or run the tests with the README's command `scripts/test.sh`, which does"
                )
            });
            let model = crate::demo_model();
            mpo::engine::llama_server::LlamaServer::start(&bin, &model, 4, 2, 2048, Duration::from_secs(300)).unwrap()
        })
        .url
}

fn real_judge(api: JudgeApi) -> OpenAiJudge {
    OpenAiJudge::new(OpenAiConfig {
        base_urls: vec![llama_server().to_string()],
        api_key: None,
        model: None,
        api,
        dialect: Dialect::LlamaCpp,
        concurrency: 4,
        timeout: Duration::from_secs(120),
        max_retries: 2,
        backoff: Duration::from_millis(200),
    })
    .unwrap()
}

fn math_rubric_v0() -> Rubric {
    Rubric::parse(&std::fs::read_to_string("prompt_templates/math/rubric_v0.md").unwrap().replace("{{ task }}", "math")).unwrap()
}

/// `n` records "What is i + add?".
fn sums(n: usize, add: usize) -> Vec<serde_json::Value> {
    (0..n).map(|i| json!({"problem": format!("What is {i} + {add}?"), "answer": format!("{}", i + add)})).collect()
}

fn rollouts(recs: &[serde_json::Value], response: impl Fn(usize) -> String) -> Vec<Rollout<'_>> {
    recs.iter()
        .enumerate()
        .map(|(i, r)| Rollout { id: format!("u1-r{i}"), question: r["problem"].as_str().unwrap().into(), response: response(i), record: r })
        .collect()
}

#[test]
fn real_llama_server_scores_and_replays_exactly() {
    let rubric = math_rubric_v0();
    let recs = sums(3, 2);
    let rs = rollouts(&recs, |i| format!("It is \\boxed{{{}}}.", i + 2));
    let cfg = reward_cfg(1, FailurePolicy::Skip);
    let dir = std::env::temp_dir().join(format!("mpo-real-cache-{}", std::process::id()));
    let mut usage = TokenUsage::default();
    let mut cached = CachedJudge::new(Box::new(real_judge(JudgeApi::Chat)), &dir);
    let first = reward::score_batch(&mut cached, &cfg, &rubric, &rs, 0, 1, &mut usage).unwrap();
    assert!(usage.prompt_tokens > 100 && usage.completion_tokens > 0, "{usage:?}");
    for s in &first {
        // a 135M judge may not follow the format: then the failure is typed and kept, never a 0
        assert!(s.reward.is_some() == s.failure.is_none(), "{s:?}");
        assert!(!s.judge_answers.is_empty());
    }
    let mut replay = CachedJudge::replay(&dir);
    let again = reward::score_batch(&mut replay, &cfg, &rubric, &rs, 0, 1, &mut TokenUsage::default()).unwrap();
    assert_eq!(again, first, "replay reproduces the rewards exactly");
    assert_eq!(replay.misses, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn real_llama_server_completions_with_logprobs() {
    let mut j = real_judge(JudgeApi::Completions);
    let r = JudgeRequest {
        prompt: "Score from 0 to 4. Score:".into(),
        max_tokens: 3,
        temperature: 0.0,
        seed: 0,
        top_logprobs: Some(5),
        ..Default::default()
    };
    let out = j.complete(&[r]).remove(0).unwrap();
    let lp = out.logprobs.expect("logprobs");
    assert!(!lp.is_empty());
    assert!(lp[0].top.len() >= 2, "{lp:?}");
    assert!(lp[0].logprob <= 0.0);
}

// ---- the structured judge protocol on a real llama-server ------------------------------------

/// `mpo run` of the structured-judge spec against the real llama-server; its run directory.
fn structured_run(tag: &str, overrides: &[&str]) -> std::path::PathBuf {
    run_structured(tag, overrides, Some(llama_server()))
}

/// The same spec with the demo model as the in-process judge (constrained decoding, no server).
fn local_structured_run(tag: &str, overrides: &[&str]) -> std::path::PathBuf {
    // The whole judge replaced (a server's fields are an error on the in-process judge).
    let local = ["reward.judge=null", "reward.judge={backend: local, model: smollm2-135m-instruct, max_tokens: 320}"];
    let all: Vec<&str> = local.iter().copied().chain(overrides.iter().copied()).collect();
    run_structured(&format!("local-{tag}"), &all, None)
}

fn run_structured(tag: &str, overrides: &[&str], server: Option<&str>) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("mpo-structured-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mpo"));
    cmd.args(["run", "tests/specs/valid/structured_judge.yaml", &format!("output.root={}", root.display()), "--quiet"])
        // 768-token meta answers from a server that shares 2 cores with the rest of the suite
        // (the wgpu tests among it): the default 120 s per request timed out under that load.
        .args(overrides);
    if let Some(url) = server {
        cmd.arg("reward.judge.timeout_s=600").env("MPO_TEST_JUDGE_URL", url);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_dir(root.join("structured")).unwrap().next().unwrap().unwrap().path()
}

fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every scored sample of a run: (rubric version, item scores), after checking none failed.
fn judged(dir: &std::path::Path) -> Vec<(u64, Vec<(String, f64)>)> {
    let mut out = vec![];
    for row in jsonl(&dir.join("metrics.jsonl")) {
        let failures = row.get("judge_failures").cloned().unwrap_or(json!({}));
        assert!(failures.as_object().is_none_or(|o| o.is_empty()), "update {}: judge failures {failures}", row["update"]);
        assert_eq!(row["skipped"], 0, "update {}: skipped samples", row["update"]);
        let samples = jsonl(&dir.join(format!("samples/update-{:06}.jsonl", row["update"].as_u64().unwrap())));
        for s in samples {
            assert!(s["failure"].is_null(), "{}: {}", s["id"], s["failure"]);
            let scores: Vec<(String, f64)> = serde_json::from_value(s["item_scores"]["scores"].clone()).unwrap();
            out.push((row["rubric_version"].as_u64().unwrap(), scores));
        }
    }
    out
}

fn rubric_version(dir: &std::path::Path, v: u64) -> Rubric {
    Rubric::parse(&std::fs::read_to_string(dir.join(format!("rubrics/v{v:03}.md"))).unwrap()).unwrap()
}

#[test]
fn real_llama_server_structured_answers_always_parse_and_stay_in_range() {
    structured_answers_parse_and_stay_in_range(&structured_run("reward", &[]));
}

#[test]
fn the_in_process_judge_holds_structured_answers_as_the_server_does() {
    structured_answers_parse_and_stay_in_range(&local_structured_run("reward", &[]));
}

#[test]
fn the_in_process_meta_judge_writes_sound_rubrics_and_loses_no_step_to_shape() {
    let dir = local_structured_run("meta", &["meta.every=1"]);
    let history = jsonl(&dir.join("rubrics/history.jsonl"));
    let steps: Vec<&serde_json::Value> = history.iter().filter(|e| e["trigger_update"].as_u64() > Some(0)).collect();
    assert_eq!(steps.len(), 1, "a meta step after update 1 (the last update has none): {history:?}");
    for step in steps {
        let analyses: Vec<String> = serde_json::from_value(step["analyses"].clone()).unwrap();
        let shape = mpo::meta::MetaShapes::fit(4, 768).unwrap();
        for a in &analyses {
            assert!(shape.analysis.shape().matches(a), "an analysis outside its shape:\n{a}");
        }
        let refined: Vec<String> = serde_json::from_value(step["refined"].clone()).unwrap();
        assert_eq!(refined.len(), 2, "{step}");
        for r in &refined {
            let parsed = Rubric::parse(r).unwrap_or_else(|e| panic!("a refined rubric does not parse ({e}):\n{r}"));
            assert!(parsed.items.len() <= 4 && shape.rubric.shape().matches(r), "{r}");
        }
        let merged = step["merged_raw"].as_str().expect("a merge answer");
        Rubric::parse(merged).unwrap_or_else(|e| panic!("the merged rubric does not parse ({e}):\n{merged}"));
        // kept only for a reason that is not the judge's shape or budget (the 135M judge does
        // write an item again with another range: a refusal of what it meant, not of its shape)
        if let Some(why) = step["kept_because"].as_str() {
            for lost in ["cut off", "not a rubric", "invalid", "not an item name", "mid-sentence"] {
                assert!(!why.contains(lost), "a meta step lost to its answer's shape: {why}");
            }
        }
    }
}

fn structured_answers_parse_and_stay_in_range(dir: &std::path::Path) {
    let judged = judged(dir);
    assert_eq!(judged.len(), 8, "every rollout of both updates scored");
    let rubric = rubric_version(dir, 0);
    for (_, scores) in &judged {
        assert_eq!(scores.len(), rubric.items.len());
        for ((name, s), item) in scores.iter().zip(&rubric.items) {
            assert_eq!(name, &item.name);
            assert!(s.fract() == 0.0 && *s >= item.min as f64 && *s <= item.max as f64, "{name}: {s} outside {}..={}", item.min, item.max);
        }
    }
}

#[test]
fn real_llama_server_meta_step_writes_a_rubric_that_parses() {
    let dir = structured_run("meta", &["meta.every=1"]);
    let history = jsonl(&dir.join("rubrics/history.jsonl"));
    let step = history.iter().find(|e| e["trigger_update"] == 1).expect("a meta step after update 1");
    let shape = mpo::meta::MetaShapes::fit(4, 768).unwrap();
    let refined: Vec<String> = serde_json::from_value(step["refined"].clone()).unwrap();
    assert!(!refined.is_empty(), "{step}");
    for r in &refined {
        let parsed = Rubric::parse(r).unwrap_or_else(|e| panic!("a refined rubric does not parse ({e}):\n{r}"));
        assert!(parsed.items.len() <= 4 && shape.rubric.shape().matches(r), "outside the grammar:\n{r}");
    }
    let merged = step["merged_raw"].as_str().expect("a merge answer");
    let parsed = Rubric::parse(merged).unwrap_or_else(|e| panic!("the merged rubric does not parse ({e}):\n{merged}"));
    parsed.validate(4).unwrap();
    assert!(shape.rubric.shape().matches(merged), "the server's grammar and mpo's shape disagree:\n{merged}");
    match step["version"].as_u64() {
        // the next update is judged under it, through its own schema, without a failure
        Some(1) => {
            let v1 = rubric_version(&dir, 1);
            for (version, scores) in judged(&dir) {
                let rubric = if version == 1 { &v1 } else { continue };
                for ((name, s), item) in scores.iter().zip(&rubric.items) {
                    assert!(*s >= item.min as f64 && *s <= item.max as f64, "{name}: {s}");
                }
            }
        }
        // kept for what the rubric says, never for its shape or budget
        _ => {
            let why = step["kept_because"].as_str().unwrap_or_default();
            for lost in ["cut off", "not a rubric", "invalid", "not an item name", "mid-sentence"] {
                assert!(!why.contains(lost), "a meta step lost to its answer's shape: {why}");
            }
        }
    }
}

#[test]
fn real_llama_server_guided_answers_hold_every_value_to_its_range() {
    let rubric = math_rubric_v0();
    let recs = sums(4, 5);
    let rs =
        rollouts(&recs, |i| if i % 2 == 0 { format!("{i} + 5 = {}, so \\boxed{{{}}}.", i + 5, i + 5) } else { "I like turtles.".into() });
    for (api, extraction) in [
        (JudgeApi::Chat, Extraction::default()),
        (JudgeApi::Completions, Extraction::default()),
        (JudgeApi::Completions, Extraction::Logprobs { top_logprobs: 10 }),
    ] {
        let mut cfg = reward_cfg(0, FailurePolicy::Fail);
        cfg.spec.answer = mpo::spec::AnswerMode::Guided;
        cfg.spec.judge.max_tokens = 3;
        cfg.spec.extraction = extraction.clone();
        let mut usage = TokenUsage::default();
        let scored = reward::score_batch(&mut real_judge(api), &cfg, &rubric, &rs, 0, 1, &mut usage)
            .unwrap_or_else(|e| panic!("{api:?} {extraction:?}: {e}"));
        for s in &scored {
            let items = s.item_scores.as_ref().unwrap_or_else(|| panic!("{api:?} {extraction:?}: {s:?}"));
            for ((name, v), item) in items.scores.iter().zip(&rubric.items) {
                assert!(*v >= item.min as f64 && *v <= item.max as f64, "{api:?}: {name} = {v}");
            }
            // one line per label, written by mpo, with the judge's value after it
            let labels: Vec<&str> = s.judge_answers[0].lines().map(|l| l.split(':').next().unwrap()).collect();
            assert_eq!(labels, rubric.items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>());
        }
    }
}
