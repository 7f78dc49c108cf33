//! `mpo bench`: performance targets, measured against a baseline taken in the same run.
//!
//! Benchmarks are not tests: they print figures (and ratios) for BENCHMARKS.md and never
//! fail on timing.

pub mod flops;
pub mod generation;
pub mod parity;
pub mod ppo;
pub mod stub;
pub mod train;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::plan;
use crate::resolve;
use crate::spec;

/// The shipped specs the spec benchmark loads.
pub const SHIPPED_SPECS: &[&str] = &[
    "specs/math.yaml",
    "specs/essay_writing.yaml",
    "specs/summarization.yaml",
    "specs/ethical_reasoning.yaml",
    "specs/ablations/meta_every.yaml",
];

/// A 64-cell sweep over the demo spec, resolved as if it lived in `specs/ablations/`.
const SWEEP64: &str = "extends: ../math.yaml\nname: bench-64\nppo: {batch_size: 4, num_mini_batches: 1, total_episodes: 96}\nmeta: {samples: 2}\nsweep:\n  grid:\n    meta.every: [never, 5, 10, 20]\n    runtime.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// check + plan of every shipped spec and a 64-cell sweep, cold (caches cleared) each
/// iteration. Baseline: parsing the same YAML texts into node trees, nothing else.
pub fn spec_bench(iterations: usize) -> anyhow::Result<String> {
    let texts: Vec<(String, String)> =
        SHIPPED_SPECS.iter().map(|p| Ok((p.to_string(), std::fs::read_to_string(p)?))).collect::<std::io::Result<_>>()?;
    let sweep_path = Path::new("specs/ablations/bench-64.yaml");
    let mut full = Vec::new();
    let mut base = Vec::new();
    let mut cells = 0;
    for _ in 0..iterations.max(1) {
        crate::task::clear_cache();
        let t = Instant::now();
        let mut n = 0;
        for (p, _) in &texts {
            let l = resolve::load(Path::new(p), &[]);
            anyhow::ensure!(!l.has_errors(), "{p} has errors:\n{}", l.render_diagnostics());
            n += l.runs.iter().map(plan::compile).count();
        }
        let l = resolve::load_str(sweep_path, SWEEP64, &[]);
        anyhow::ensure!(!l.has_errors(), "sweep has errors:\n{}", l.render_diagnostics());
        let plans: Vec<plan::Plan> = l.runs.iter().map(plan::compile).collect();
        n += plans.len();
        full.push(t.elapsed());
        cells = n;

        let t = Instant::now();
        for (i, (_, text)) in texts.iter().enumerate() {
            let _ = spec::node::parse_yaml(text, i as u32);
        }
        let _ = spec::node::parse_yaml(SWEEP64, 99);
        base.push(t.elapsed());
    }
    let (f, b) = (median(full), median(base));
    Ok(format!(
        "spec bench: check + plan of {} specs and a 64-cell sweep ({cells} plans), {} iterations, cold caches\n  \
         full      median {:.2} ms  (target < 50 ms: {:.0}% of budget)\n  \
         baseline  median {:.3} ms  (YAML parse of the same texts)\n  \
         ratio     {:.1}x the bare parse\n",
        SHIPPED_SPECS.len(),
        iterations,
        ms(f),
        ms(f) / 50.0 * 100.0,
        ms(b),
        f.as_secs_f64() / b.as_secs_f64().max(1e-9)
    ))
}

/// Wall time and cores busy (process CPU time over wall time, all threads) of a stretch of work:
/// a CPU trainer that keeps one of two cores idle shows it here.
pub struct CpuClock {
    wall: Instant,
    cpu: Option<f64>,
}

impl CpuClock {
    pub fn start() -> Self {
        CpuClock { cpu: process_cpu_seconds(), wall: Instant::now() }
    }

    /// (wall seconds, cores busy; 0 where the process CPU time cannot be read).
    pub fn stop(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let busy = match (self.cpu, process_cpu_seconds()) {
            (Some(a), Some(b)) if wall > 0.0 => (b - a) / wall,
            _ => 0.0,
        };
        (wall, busy)
    }
}

/// User + system CPU seconds of this process, all threads (Linux: /proc/self/stat, in the
/// kernel's fixed 100 Hz USER_HZ units); None elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Run a benchmark job on the named backend.
pub fn on_backend<J: crate::model::BackendJob<Output = anyhow::Result<String>>>(
    b: crate::spec::BackendKind,
    job: J,
) -> anyhow::Result<String> {
    crate::model::dispatch(b, 0, job).map_err(|e| anyhow::anyhow!(e))?
}

/// Call `f` with the URL of a llama-server serving the demo GGUF: `url` when given, else one
/// started here (when `start`), else none.
pub fn with_server<T>(
    url: Option<String>,
    start: bool,
    slots: usize,
    f: impl FnOnce(Option<String>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let model = crate::model::fetch::fetch("smollm2-135m-instruct", &mut |m| eprintln!("{m}"))?;
    with_server_on(&model, url, start, slots, f)
}

/// As [`with_server`], serving the GGUF at `model`.
pub fn with_server_on<T>(
    model: &Path,
    url: Option<String>,
    start: bool,
    slots: usize,
    f: impl FnOnce(Option<String>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if url.is_some() || !start {
        return f(url);
    }
    let bin = crate::engine::llama_server::find_binary()
        .ok_or_else(|| anyhow::anyhow!("llama-server is not built: run scripts/setup_llama_server.sh (or set MPO_LLAMA_SERVER)"))?;
    eprintln!("starting {} ...", bin.display());
    let srv = crate::engine::llama_server::LlamaServer::start(&bin, model, slots, 2, 2048, std::time::Duration::from_secs(300))?;
    f(Some(srv.url.clone()))
}

/// The parity check: against the demo GGUF as shipped (quantized), and against an F32 copy
/// of it (no quantization on either side: a check of the model code itself).
pub fn parity(server: Option<String>, steps: usize) -> anyhow::Result<String> {
    let q = crate::model::fetch::fetch("smollm2-135m-instruct", &mut |m| eprintln!("{m}"))?;
    let mut out = with_server_on(&q, server.clone(), server.is_none(), 1, |url| {
        on_backend(
            crate::spec::BackendKind::Cpu,
            parity::ParityBench { server: url.unwrap_or_default(), steps, model: q.clone(), label: "Q4_1 GGUF as shipped".into() },
        )
    })?;
    if server.is_none() {
        let f = q.with_extension("f32.gguf");
        if !f.exists() {
            eprintln!("writing an F32 copy of the GGUF to {}", f.display());
            crate::model::gguf::Gguf::open(&q)?.write_f32(&f)?;
        }
        out += &with_server_on(&f, None, true, 1, |url| {
            on_backend(
                crate::spec::BackendKind::Cpu,
                parity::ParityBench { server: url.unwrap_or_default(), steps, model: f.clone(), label: "the same weights as F32".into() },
            )
        })?;
    }
    Ok(out)
}
