//! Pairwise tournaments: an LLM judge compares players' responses to the same questions, and
//! the players are rated from the verdicts.
//!
//! - **Players and prompts.** A player is one or more members (runs, or evaluation files) whose
//!   responses are pooled: the seeds of one sweep arm are one player. Prompts are matched by
//!   their question text ([`prompt_key`]: sha256 of the rendered question), never by position,
//!   so two players are only ever compared on the same question; prompts that not every player
//!   answered are dropped and counted.
//! - **Matches.** Every pair of players meets `matches_per_pair` times on prompts drawn from a
//!   seeded stream, each side answered by one of its members that answered the prompt (drawn
//!   too). Every match is judged in **both presentation orders**; its score is the mean of the
//!   two verdicts (two half-games): verdicts that agree give a win, opposite verdicts a tie,
//!   a win and a tie three quarters. A match with an unreadable answer in either order is not
//!   rated (counted as incomplete), so no rated match leans on one order. How often the two
//!   orders agree (position consistency) and how often the response shown first won are
//!   reported: a judge far from 100% and 50% is judging positions, not responses.
//! - **Ratings** ([`rating`](super::rating)): by default a Bradley–Terry maximum-likelihood
//!   fit (order-free, on the Elo scale, mean 1000); or sequential Elo with the paper's K and
//!   repeats over seeded match orders (mean ± std), which depends on the order and shrinks
//!   toward the start with a small K. Either way the 95% interval is a percentile bootstrap over
//!   prompts (prompts resampled with replacement, every match on a drawn prompt kept, refit).

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::rating::{self, Game};
use crate::judge::{Judge, JudgeRequest, JudgeResponse};

/// The format of `elo.json` this code writes (and `mpo report` reads).
pub const FORMAT: u32 = 2;

/// The key of a question: the first 16 hex digits of the sha256 of its text, and `#n` for the
/// n-th repeat of the same text in one evaluation (n from 2).
pub fn prompt_key(question: &str, occurrence: usize) -> String {
    let h = crate::hash::sha256_hex(question.as_bytes());
    if occurrence <= 1 { h[..16].to_string() } else { format!("{}#{occurrence}", &h[..16]) }
}

/// One source of responses: a run's evaluation.
#[derive(Debug, Clone)]
pub struct Member {
    /// `<run id> @<weights>`.
    pub name: String,
    /// prompt key -> (question shown to the judge, response)
    pub responses: BTreeMap<String, (String, String)>,
}

impl Member {
    /// A member from its (question, response) lines, keyed by [`prompt_key`].
    pub fn new(name: impl Into<String>, lines: impl IntoIterator<Item = (String, String)>) -> Member {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut responses = BTreeMap::new();
        for (q, r) in lines {
            let n = seen.entry(q.clone()).or_default();
            *n += 1;
            responses.insert(prompt_key(&q, *n), (q, r));
        }
        Member { name: name.into(), responses }
    }
}

/// One rated competitor: a name and the members whose responses it plays with.
#[derive(Debug, Clone)]
pub struct Player {
    pub name: String,
    pub members: Vec<Member>,
}

/// How players are rated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    /// Bradley–Terry maximum likelihood (order-free).
    #[default]
    BradleyTerry,
    /// Sequential Elo updates, the paper's method (depends on the order of matches).
    SequentialElo,
}

/// A `--rating` that names no rating method.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}`: expected `bt` (Bradley–Terry maximum likelihood) or `elo` (sequential Elo, the paper's)")]
pub struct UnknownRating(pub String);

impl std::str::FromStr for Rating {
    type Err = UnknownRating;
    fn from_str(s: &str) -> Result<Self, UnknownRating> {
        match s {
            "bt" | "bradley-terry" | "bradley_terry" => Ok(Rating::BradleyTerry),
            "elo" | "sequential-elo" | "sequential_elo" => Ok(Rating::SequentialElo),
            o => Err(UnknownRating(o.into())),
        }
    }
}

/// Why a pairwise tournament could not be drawn or rated.
#[derive(Debug, thiserror::Error)]
pub enum EloError {
    #[error("a tournament needs at least 2 players, got {0}")]
    TooFewPlayers(usize),
    #[error("player {0} has no responses")]
    NoResponses(String),
    #[error(
        "the players answered no question in common (questions are matched by their text): evaluate them on the same \
         test split with the same policy prompt (`task.prompt`, `eval.seed`, `eval.samples`)"
    )]
    NoCommonQuestion,
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error(
        "no match could be rated: {unreadable} of {answers} judge answers were unreadable as `Winner: A|B|tie` \
         (see the judge cache in the output directory); check the judge and the pairwise template"
    )]
    NoMatch { unreadable: usize, answers: usize },
    /// The plain maximum likelihood has no finite answer; `extreme`: the players who won or lost
    /// every match, as (name, score, games).
    #[error(
        "the plain Bradley–Terry maximum likelihood has no finite ratings: {}; rate with a prior (`--bt-prior 1`, the default) or more matches",
        who_diverges(.extreme)
    )]
    NoMle { extreme: Vec<(String, f64, usize)> },
}

fn who_diverges(extreme: &[(String, f64, usize)]) -> String {
    if extreme.is_empty() {
        "a group of players never scored against the others".to_string()
    } else {
        let named: Vec<String> = extreme.iter().map(|(n, s, g)| format!("{n} ({s} of {g})")).collect();
        format!("{} won or lost every match", named.join(", "))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EloConfig {
    pub rating: Rating,
    /// Sequential Elo: the K-factor.
    pub k: f64,
    /// The players' mean (Bradley–Terry) or starting rating (sequential Elo).
    pub initial: f64,
    /// Matches drawn per pair of players; each is judged in both presentation orders.
    pub matches_per_pair: usize,
    /// Sequential Elo: match orders replayed (mean ± std over them).
    pub repeats: usize,
    /// Bootstrap resamples of the prompts.
    pub bootstrap: usize,
    pub seed: u64,
    /// Bradley–Terry: virtual tied games per player against a reference player at the mean
    /// (keeps an undefeated player finite); 0 = the plain maximum likelihood.
    pub prior: f64,
}

impl Default for EloConfig {
    fn default() -> Self {
        EloConfig {
            rating: Rating::BradleyTerry,
            k: 4.0,
            initial: 1000.0,
            matches_per_pair: 32,
            repeats: 5,
            bootstrap: 1000,
            seed: 0,
            prior: 1.0,
        }
    }
}

impl EloConfig {
    /// What the ratings are, for tables and `elo.json`.
    pub fn method(&self) -> String {
        match self.rating {
            Rating::BradleyTerry => format!(
                "Bradley–Terry maximum likelihood (ties as half wins; Elo scale, mean {}; {})",
                self.initial,
                if self.prior > 0.0 {
                    format!("{} virtual tied game(s) per player against the mean", self.prior)
                } else {
                    "no prior".to_string()
                }
            ),
            Rating::SequentialElo => format!(
                "sequential Elo (the paper's method; order-dependent): K={}, start {}, mean ± std over {} match orders",
                self.k, self.initial, self.repeats
            ),
        }
    }
}

/// A verdict, from the first player's side (or, read from an answer, the first-shown side).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    AWins,
    BWins,
    Tie,
}

impl Outcome {
    fn score_a(self) -> f64 {
        match self {
            Outcome::AWins => 1.0,
            Outcome::BWins => 0.0,
            Outcome::Tie => 0.5,
        }
    }

    fn flip(self) -> Outcome {
        match self {
            Outcome::AWins => Outcome::BWins,
            Outcome::BWins => Outcome::AWins,
            Outcome::Tie => Outcome::Tie,
        }
    }
}

/// A rated match: players `a` and `b` on one prompt, judged in both orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    pub prompt: String,
    pub a: usize,
    pub b: usize,
    /// The members whose responses played.
    pub a_from: String,
    pub b_from: String,
    /// From `a`'s side: `[a shown first, b shown first]`.
    pub verdicts: [Outcome; 2],
    /// The mean of the two verdicts' scores for `a`: 1, 0.75, 0.5, 0.25 or 0.
    pub score_a: f64,
    /// The judge's answers, in the same order.
    pub answers: [String; 2],
}

/// The judge's position bias, over the rated matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Rated matches.
    pub matches: usize,
    /// Matches whose two orders gave the same verdict.
    pub consistent: usize,
    /// `consistent / matches` (1 for a judge that ignores positions).
    #[serde(with = "nan_as_null")]
    pub consistency: f64,
    /// Verdicts (two per match) that named a winner.
    pub decisive: usize,
    /// Of those, the ones won by the response shown first.
    pub first_shown_won: usize,
    /// `first_shown_won / decisive` (0.5 for a judge without position bias; undefined, null in
    /// the file, when no verdict was decisive).
    #[serde(with = "nan_as_null")]
    pub first_shown_rate: f64,
}

/// One row of the final table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub player: String,
    /// Bradley–Terry rating, or sequential Elo's mean over match orders.
    pub rating: f64,
    /// Sequential Elo: the std over match orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// 2.5% and 97.5% percentiles of the bootstrap over prompts (null when no refit succeeded).
    #[serde(with = "nan_as_null::pair")]
    pub ci95: (f64, f64),
    pub games: usize,
    /// Mean score per match (a tie half; null without games).
    #[serde(with = "nan_as_null")]
    pub score: f64,
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
}

/// One pair's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadToHead {
    pub a: String,
    pub b: String,
    pub matches: usize,
    /// `a`'s mean score against `b` (null when they never met).
    #[serde(with = "nan_as_null")]
    pub score_a: f64,
    pub a_wins: usize,
    pub b_wins: usize,
    pub ties: usize,
}

/// A player of the table and the members it pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerInfo {
    pub name: String,
    pub members: Vec<String>,
}

/// A tournament's numbers (everything but the match list): `elo.json` with the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What the ratings are ([`EloConfig::method`]).
    pub method: String,
    pub config: EloConfig,
    pub players: Vec<PlayerInfo>,
    /// Prompts every player answered (the ones matches are drawn from).
    pub prompts: usize,
    /// Prompts some player did not answer (question texts that differ count here).
    pub dropped_prompts: usize,
    /// Rated matches.
    pub matches: usize,
    /// Judge answers that could not be read as a verdict.
    pub unreadable_answers: usize,
    /// Matches not rated because an answer in either order was unreadable.
    pub incomplete_matches: usize,
    pub position: Position,
    pub standings: Vec<Standing>,
    pub head_to_head: Vec<HeadToHead>,
    /// Bootstrap refits without a finite maximum (only with `prior = 0`), left out of the
    /// interval.
    #[serde(default)]
    pub bootstrap_failed: usize,
}

/// The result of a tournament.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tournament {
    pub summary: Summary,
    pub matches: Vec<Match>,
}

/// Which judge rated a tournament, as recorded in `elo.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeInfo {
    /// Where the judge was named: `--judge FILE`, `eval.elo.judge`, or `--training-judge`.
    pub source: String,
    /// `openai:MODEL`, `local:MODEL` (none for a replay judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Whether it is the runs' own reward judge (the model the policies were optimised
    /// against, which favours them).
    pub training_judge: bool,
    pub spec: crate::spec::JudgeSpec,
}

/// `elo.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EloFile {
    pub format: u32,
    /// RFC 3339, when it was written.
    pub created: String,
    pub judge: JudgeInfo,
    /// Arguments skipped as not runs (`slurm/`, `elo/`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Undefined statistics (a rate of nothing, an interval no refit produced) are NaN in memory;
/// JSON has no NaN, so they are written as null and read back as NaN: `elo.json` always reads.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() { s.serialize_f64(*x) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub mod pair {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(x: &(f64, f64), s: S) -> Result<S::Ok, S::Error> {
            let f = |v: f64| v.is_finite().then_some(v);
            (f(x.0), f(x.1)).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(f64, f64), D::Error> {
            let (a, b) = <(Option<f64>, Option<f64>)>::deserialize(d)?;
            Ok((a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN)))
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn games(matches: &[&Match]) -> Vec<Game> {
    matches.iter().map(|m| Game { a: m.a, b: m.b, score_a: m.score_a }).collect()
}

/// Ratings of `n` players from one set of matches: `(rating, std over orders)`.
fn fit(n: usize, matches: &[&Match], cfg: &EloConfig, order_stream: &str) -> Option<(Vec<f64>, Option<Vec<f64>>)> {
    let gs = games(matches);
    match cfg.rating {
        Rating::BradleyTerry => rating::bradley_terry(n, &gs, cfg.prior, cfg.initial).map(|r| (r, None)),
        Rating::SequentialElo => {
            let mut runs = Vec::new();
            for rep in 0..cfg.repeats.max(1) {
                let mut order = gs.clone();
                order.shuffle(&mut crate::rng::stream(cfg.seed, &format!("{order_stream}/{rep}")));
                runs.push(rating::sequential_elo(n, &order, cfg.k, cfg.initial));
            }
            let mean: Vec<f64> = (0..n).map(|p| runs.iter().map(|r| r[p]).sum::<f64>() / runs.len() as f64).collect();
            let std: Vec<f64> =
                (0..n).map(|p| (runs.iter().map(|r| (r[p] - mean[p]).powi(2)).sum::<f64>() / runs.len() as f64).sqrt()).collect();
            Some((mean, Some(std)))
        }
    }
}

/// Why the plain maximum likelihood has no finite answer, in players' names.
fn no_mle(names: &[String], matches: &[Match]) -> EloError {
    let mut score = vec![(0.0f64, 0usize); names.len()];
    for m in matches {
        score[m.a].0 += m.score_a;
        score[m.a].1 += 1;
        score[m.b].0 += 1.0 - m.score_a;
        score[m.b].1 += 1;
    }
    let extreme = names
        .iter()
        .zip(&score)
        .filter(|(_, (s, g))| *g == 0 || *s == 0.0 || *s == *g as f64)
        .map(|(n, &(s, g))| (n.clone(), s, g))
        .collect();
    EloError::NoMle { extreme }
}

/// Ratings from rated matches: the table, and the bootstrap refits that failed.
pub fn standings(names: &[String], matches: &[Match], cfg: &EloConfig) -> Result<(Vec<Standing>, usize), EloError> {
    let n = names.len();
    let all: Vec<&Match> = matches.iter().collect();
    let (point, std) = fit(n, &all, cfg, "elo/order").ok_or_else(|| no_mle(names, matches))?;
    // the bootstrap resamples prompts: every match on a drawn prompt comes along
    let mut by_prompt: BTreeMap<&str, Vec<&Match>> = BTreeMap::new();
    for m in matches {
        by_prompt.entry(&m.prompt).or_default().push(m);
    }
    let prompts: Vec<&Vec<&Match>> = by_prompt.values().collect();
    let mut boot: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut failed = 0;
    let boot_cfg = EloConfig { repeats: 1, ..cfg.clone() };
    for b in 0..cfg.bootstrap {
        let mut rng = crate::rng::stream(cfg.seed, &format!("elo/bootstrap/{b}"));
        let sample: Vec<&Match> = (0..prompts.len()).flat_map(|_| prompts[rng.random_range(0..prompts.len())].iter().copied()).collect();
        match fit(n, &sample, &boot_cfg, &format!("elo/bootstrap-order/{b}")) {
            Some((r, _)) => r.into_iter().enumerate().for_each(|(p, x)| boot[p].push(x)),
            None => failed += 1,
        }
    }
    let mut out: Vec<Standing> = (0..n)
        .map(|p| {
            let mut bs = boot[p].clone();
            bs.sort_by(f64::total_cmp);
            let (mut w, mut l, mut t, mut games, mut score) = (0, 0, 0, 0, 0.0);
            for m in matches {
                let s = if m.a == p {
                    m.score_a
                } else if m.b == p {
                    1.0 - m.score_a
                } else {
                    continue;
                };
                games += 1;
                score += s;
                match s {
                    s if s > 0.5 => w += 1,
                    s if s < 0.5 => l += 1,
                    _ => t += 1,
                }
            }
            Standing {
                player: names[p].clone(),
                rating: point[p],
                std: std.as_ref().map(|s| s[p]),
                ci95: (percentile(&bs, 0.025), percentile(&bs, 0.975)),
                games,
                score: if games > 0 { score / games as f64 } else { f64::NAN },
                wins: w,
                losses: l,
                ties: t,
            }
        })
        .collect();
    out.sort_by(|a, b| b.rating.total_cmp(&a.rating));
    Ok((out, failed))
}

/// The judge's verdict from its answer: the guided value after `Winner:` (or the text), read as
/// A, B or tie. With log-probs, the more probable of A and B wins unless "tie" is likelier; they
/// are read at the first token the judge wrote (a guided answer's log-probs start with the label
/// mpo wrote, at log-prob 0 without alternatives).
pub fn parse_verdict(r: &JudgeResponse) -> Option<Outcome> {
    let written = |t: &&crate::judge::TokenLogprob| !(t.token.trim().is_empty() || (t.logprob == 0.0 && t.top.is_empty()));
    if let Some(lp) = r.logprobs.as_ref().and_then(|l| l.iter().find(written)) {
        let mut p = BTreeMap::from([("a", 0.0f64), ("b", 0.0), ("tie", 0.0)]);
        let mut seen = false;
        let cands = if lp.top.is_empty() { vec![(lp.token.clone(), lp.logprob)] } else { lp.top.clone() };
        for (tok, l) in cands {
            let t = tok.trim().to_lowercase();
            if let Some(v) = p.get_mut(t.as_str()) {
                *v += (l as f64).exp();
                seen = true;
            }
        }
        if seen {
            let (a, b, tie) = (p["a"], p["b"], p["tie"]);
            return Some(if tie > a && tie > b {
                Outcome::Tie
            } else if a > b {
                Outcome::AWins
            } else if b > a {
                Outcome::BWins
            } else {
                Outcome::Tie
            });
        }
    }
    let text = r.text.rsplit("Winner:").next().unwrap_or(&r.text).trim().to_lowercase();
    let first = text.split(|c: char| !c.is_alphanumeric()).find(|w| !w.is_empty())?;
    match first {
        "a" => Some(Outcome::AWins),
        "b" => Some(Outcome::BWins),
        "tie" => Some(Outcome::Tie),
        _ => None,
    }
}

/// The members of `p` that answered `key`.
fn answering(p: &Player, key: &str) -> Vec<usize> {
    p.members.iter().enumerate().filter(|(_, m)| m.responses.contains_key(key)).map(|(i, _)| i).collect()
}

/// Draw the matches, judge each in both orders (in one batch through `judge`), rate the players.
pub fn tournament(
    judge: &mut dyn Judge,
    players: &[Player],
    template: (&str, &str),
    task: &str,
    cfg: &EloConfig,
) -> Result<Tournament, EloError> {
    if players.len() < 2 {
        return Err(EloError::TooFewPlayers(players.len()));
    }
    if let Some(p) = players.iter().find(|p| p.members.is_empty()) {
        return Err(EloError::NoResponses(p.name.clone()));
    }
    let union: BTreeSet<&String> = players.iter().flat_map(|p| p.members.iter().flat_map(|m| m.responses.keys())).collect();
    let common: Vec<&String> =
        union.iter().copied().filter(|k| players.iter().all(|p| p.members.iter().any(|m| m.responses.contains_key(*k)))).collect();
    if common.is_empty() {
        return Err(EloError::NoCommonQuestion);
    }
    let mut rng = crate::rng::stream(cfg.seed, "elo/matches");
    // (prompt, a, b, member of a, member of b)
    let mut drawn = Vec::new();
    for a in 0..players.len() {
        for b in a + 1..players.len() {
            for _ in 0..cfg.matches_per_pair {
                let prompt = common[rng.random_range(0..common.len())].clone();
                let (ca, cb) = (answering(&players[a], &prompt), answering(&players[b], &prompt));
                let ma = ca[rng.random_range(0..ca.len())];
                let mb = cb[rng.random_range(0..cb.len())];
                drawn.push((prompt, a, b, ma, mb));
            }
        }
    }
    let request = |question: &str, first: &str, second: &str| -> Result<JudgeRequest, EloError> {
        let ctx = crate::template::context::PairwiseContext { task, question, response_a: first, response_b: second };
        let text = crate::template::render(template.0, template.1, &ctx)?;
        Ok(JudgeRequest {
            prompt: text,
            max_tokens: 2,
            temperature: 0.0,
            seed: cfg.seed,
            top_logprobs: Some(10),
            guided: vec!["Winner".into()],
            ..Default::default()
        })
    };
    let mut requests = Vec::with_capacity(2 * drawn.len());
    for (prompt, a, b, ma, mb) in &drawn {
        let (question, ra) = &players[*a].members[*ma].responses[prompt];
        let rb = &players[*b].members[*mb].responses[prompt].1;
        requests.push(request(question, ra, rb)?);
        requests.push(request(question, rb, ra)?);
    }
    let answers = judge.complete(&requests);
    let mut answers = answers.into_iter();
    let mut matches = Vec::new();
    let (mut unreadable, mut incomplete) = (0, 0);
    let mut position = Position::default();
    for (prompt, a, b, ma, mb) in drawn {
        let read = |ans: Option<Result<JudgeResponse, crate::judge::JudgeError>>| {
            let resp = ans.and_then(Result::ok)?;
            parse_verdict(&resp).map(|v| (v, resp.text))
        };
        let (first, second) = (read(answers.next()), read(answers.next()));
        unreadable += usize::from(first.is_none()) + usize::from(second.is_none());
        let (Some((v0, t0)), Some((v1, t1))) = (first, second) else {
            incomplete += 1;
            continue;
        };
        // both verdicts name positions: "A" is the response shown first
        for v in [v0, v1] {
            if v != Outcome::Tie {
                position.decisive += 1;
                position.first_shown_won += usize::from(v == Outcome::AWins);
            }
        }
        let verdicts = [v0, v1.flip()];
        position.matches += 1;
        position.consistent += usize::from(verdicts[0] == verdicts[1]);
        matches.push(Match {
            prompt,
            a,
            b,
            a_from: players[a].members[ma].name.clone(),
            b_from: players[b].members[mb].name.clone(),
            verdicts,
            score_a: (verdicts[0].score_a() + verdicts[1].score_a()) / 2.0,
            answers: [t0, t1],
        });
    }
    let ratio = |x: usize, n: usize| if n > 0 { x as f64 / n as f64 } else { f64::NAN };
    position.consistency = ratio(position.consistent, position.matches);
    position.first_shown_rate = ratio(position.first_shown_won, position.decisive);
    if matches.is_empty() {
        return Err(EloError::NoMatch { unreadable, answers: requests.len() });
    }
    let names: Vec<String> = players.iter().map(|p| p.name.clone()).collect();
    let (standings, bootstrap_failed) = standings(&names, &matches, cfg)?;
    let mut head_to_head = Vec::new();
    for a in 0..players.len() {
        for b in a + 1..players.len() {
            let ms: Vec<&Match> = matches.iter().filter(|m| m.a == a && m.b == b).collect();
            let n = ms.len();
            head_to_head.push(HeadToHead {
                a: names[a].clone(),
                b: names[b].clone(),
                matches: n,
                score_a: if n > 0 { ms.iter().map(|m| m.score_a).sum::<f64>() / n as f64 } else { f64::NAN },
                a_wins: ms.iter().filter(|m| m.score_a > 0.5).count(),
                b_wins: ms.iter().filter(|m| m.score_a < 0.5).count(),
                ties: ms.iter().filter(|m| m.score_a == 0.5).count(),
            });
        }
    }
    let summary = Summary {
        method: cfg.method(),
        config: cfg.clone(),
        players: players
            .iter()
            .map(|p| PlayerInfo { name: p.name.clone(), members: p.members.iter().map(|m| m.name.clone()).collect() })
            .collect(),
        prompts: common.len(),
        dropped_prompts: union.len() - common.len(),
        matches: matches.len(),
        unreadable_answers: unreadable,
        incomplete_matches: incomplete,
        position,
        standings,
        head_to_head,
        bootstrap_failed,
    };
    Ok(Tournament { summary, matches })
}

fn rows(s: &Summary) -> Vec<Vec<String>> {
    let rating = match s.config.rating {
        Rating::BradleyTerry => "BT rating",
        Rating::SequentialElo => "seq. Elo (mean ± std)",
    };
    let pooled = s.players.iter().any(|p| p.members.len() > 1);
    let mut head = vec!["rank", "player", rating, "95% CI (prompts)", "score", "w/l/t"];
    if pooled {
        head.push("runs");
    }
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for (i, st) in s.standings.iter().enumerate() {
        let mut row = vec![
            (i + 1).to_string(),
            st.player.clone(),
            match st.std {
                Some(sd) => format!("{:.1} ± {:.1}", st.rating, sd),
                None => format!("{:.1}", st.rating),
            },
            format!("[{:.1}, {:.1}]", st.ci95.0, st.ci95.1),
            format!("{:.3}", st.score),
            format!("{}/{}/{}", st.wins, st.losses, st.ties),
        ];
        if pooled {
            row.push(s.players.iter().find(|p| p.name == st.player).map(|p| p.members.len()).unwrap_or(0).to_string());
        }
        rows.push(row);
    }
    rows
}

/// The lines under a table: what was rated, and the judge's position bias.
pub fn notes(s: &Summary) -> Vec<String> {
    let mut out = vec![
        format!("ratings: {}", s.method),
        format!(
            "{} matches on {} prompts, each judged in both orders (score = mean of the two verdicts); {} incomplete (an unreadable answer), {} prompts not answered by every player dropped",
            s.matches, s.prompts, s.incomplete_matches, s.dropped_prompts
        ),
        format!(
            "position consistency {:.1}% ({} of {} matches gave the same verdict in both orders); the response shown first won {:.1}% of {} decisive verdicts",
            100.0 * s.position.consistency,
            s.position.consistent,
            s.position.matches,
            100.0 * s.position.first_shown_rate,
            s.position.decisive
        ),
    ];
    if s.bootstrap_failed > 0 {
        out.push(format!(
            "{} of {} bootstrap refits had no finite maximum and are left out of the interval",
            s.bootstrap_failed, s.config.bootstrap
        ));
    }
    out
}

/// The standings as a text table.
pub fn table(t: &Tournament) -> String {
    crate::sweep::table(&rows(&t.summary))
}

/// The head-to-head records as a text table.
pub fn head_to_head_table(s: &Summary) -> String {
    let mut out = vec![["a", "b", "matches", "a's score", "a/b/tie"].map(String::from).to_vec()];
    for h in &s.head_to_head {
        out.push(vec![
            h.a.clone(),
            h.b.clone(),
            h.matches.to_string(),
            format!("{:.3}", h.score_a),
            format!("{}/{}/{}", h.a_wins, h.b_wins, h.ties),
        ]);
    }
    crate::sweep::table(&out)
}

/// `elo.json` as a markdown section (for `mpo report`).
pub fn markdown(f: &EloFile) -> String {
    let s = &f.summary;
    let mut md = String::new();
    let r = rows(s);
    md.push_str(&format!("| {} |\n", r[0].join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(r[0].len())));
    for row in &r[1..] {
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    md.push('\n');
    let judge = f.judge.identity.clone().unwrap_or_else(|| "a replayed judge cache".into());
    md.push_str(&format!("- judge: {judge} ({})", f.judge.source));
    if f.judge.training_judge {
        md.push_str(
            " — **the runs' own training judge**: the policies were optimised against it, so it favours them; prefer a distinct judge",
        );
    }
    md.push('\n');
    for n in notes(s) {
        md.push_str(&format!("- {n}\n"));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::scripted::ScriptedJudge;

    fn quality(s: &str) -> i64 {
        s.split("quality ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    fn verdict(w: &str) -> Result<JudgeResponse, crate::judge::JudgeError> {
        Ok(JudgeResponse { prompt_tokens: 1, completion_tokens: 1, ..JudgeResponse::answer(format!("Winner: {w}")) })
    }

    /// Prefers the response with the higher `quality N`; `noise` flips a seeded share of verdicts.
    fn quality_judge(noise: f64) -> ScriptedJudge<impl FnMut(&JudgeRequest, usize) -> Result<JudgeResponse, crate::judge::JudgeError>> {
        ScriptedJudge::new("quality", move |r, k| {
            let a = quality(r.prompt.split("Response A:").nth(1).unwrap_or(""));
            let b = quality(r.prompt.split("Response B:").nth(1).unwrap_or(""));
            let mut w = if a > b {
                "A"
            } else if b > a {
                "B"
            } else {
                "tie"
            };
            // calls are numbered from 1 in the noise stream
            if crate::rng::stream(k as u64 + 1, "noise").random_bool(noise) {
                w = if w == "A" { "B" } else { "A" };
            }
            verdict(w)
        })
    }

    fn member(name: &str, q: i64) -> Member {
        Member::new(name, (0..20).map(|k| (format!("question {k}"), format!("answer with quality {q} ok"))))
    }

    fn players(qualities: &[i64]) -> Vec<Player> {
        qualities.iter().enumerate().map(|(i, q)| Player { name: format!("p{i}"), members: vec![member(&format!("r{i}"), *q)] }).collect()
    }

    const TEMPLATE: &str = "Q: {{ question }}\nResponse A:\n{{ response_a }}\nResponse B:\n{{ response_b }}\n";

    fn order(t: &Tournament) -> Vec<&str> {
        t.summary.standings.iter().map(|s| s.player.as_str()).collect()
    }

    #[test]
    fn a_deterministic_judge_recovers_the_true_order() {
        let ps = players(&[2, 5, 1, 4, 3]);
        let cfg = EloConfig { matches_per_pair: 30, bootstrap: 200, ..EloConfig::default() };
        let mut j = quality_judge(0.0);
        let t = tournament(&mut j, &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        assert_eq!(order(&t), ["p1", "p3", "p4", "p0", "p2"]);
        let s = &t.summary;
        assert_eq!((s.unreadable_answers, s.incomplete_matches, s.matches), (0, 0, 300));
        // both orders of every match were judged, and this judge ignores positions
        assert_eq!(j.calls, 600);
        assert_eq!((s.position.consistent, s.position.consistency, s.position.first_shown_rate), (300, 1.0, 0.5));
        assert_eq!(s.prompts, 20);
        assert_eq!(s.dropped_prompts, 0);
        // every match is decided: each player's record is its place in the order
        assert_eq!(s.standings[0].wins, 120);
        assert_eq!(s.standings[4].losses, 120);
        for st in &s.standings {
            assert!(st.ci95.0 <= st.rating + 1e-9 && st.rating - 1e-9 <= st.ci95.1, "{st:?}");
            assert_eq!(st.std, None, "Bradley–Terry has no order to vary");
        }
        assert!(s.standings[0].ci95.0 > s.standings[4].ci95.1);
        assert!((s.standings.iter().map(|x| x.rating).sum::<f64>() / 5.0 - 1000.0).abs() < 1e-6, "mean anchored at 1000");
        assert!(s.method.starts_with("Bradley–Terry"));
        assert_eq!(s.head_to_head.len(), 10);
        assert!(s.head_to_head.iter().all(|h| h.matches == 30 && h.ties == 0));
        // seeded: the same config gives the same tournament
        let again = tournament(&mut quality_judge(0.0), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        assert_eq!(t, again);
    }

    #[test]
    fn a_noisy_judge_still_ranks_best_and_worst() {
        let ps = players(&[1, 2, 3]);
        for rating in [Rating::BradleyTerry, Rating::SequentialElo] {
            let cfg = EloConfig { rating, k: 16.0, matches_per_pair: 200, repeats: 10, bootstrap: 100, ..EloConfig::default() };
            let t = tournament(&mut quality_judge(0.2), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
            assert_eq!(order(&t), ["p2", "p1", "p0"], "{rating:?}");
            // flips make the two orders disagree on some matches: 2 * 0.2 * 0.8 of them expected
            let c = t.summary.position.consistency;
            assert!((0.58..0.78).contains(&c), "{c}");
        }
    }

    #[test]
    fn a_judge_that_always_picks_the_first_response_rates_everyone_equal() {
        // the position bias that one order per match would turn into ratings
        let ps = players(&[1, 5]);
        let cfg = EloConfig { matches_per_pair: 40, bootstrap: 50, ..EloConfig::default() };
        let mut first = ScriptedJudge::new("first", |_, _| verdict("A"));
        let t = tournament(&mut first, &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        let s = &t.summary;
        assert_eq!((s.position.consistency, s.position.first_shown_rate), (0.0, 1.0));
        assert!(t.matches.iter().all(|m| m.score_a == 0.5 && m.verdicts == [Outcome::AWins, Outcome::BWins]));
        assert!(s.standings.iter().all(|x| (x.rating - 1000.0).abs() < 1e-6 && x.ties == 40), "{:?}", s.standings);
    }

    #[test]
    fn a_match_scores_the_mean_of_its_two_verdicts() {
        // the judge prefers p1 when p1 is shown first, and says tie otherwise: 0.75 for p1
        let ps = players(&[1, 2]);
        let cfg = EloConfig { matches_per_pair: 8, bootstrap: 20, prior: 0.0, ..EloConfig::default() };
        let mut j = ScriptedJudge::new("lean", |r, _| {
            let first = quality(r.prompt.split("Response A:").nth(1).unwrap_or(""));
            verdict(if first == 2 { "A" } else { "tie" })
        });
        let t = tournament(&mut j, &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        assert!(t.matches.iter().all(|m| m.score_a == 0.25 && m.verdicts == [Outcome::Tie, Outcome::BWins]));
        let s = &t.summary;
        assert_eq!(s.standings[0].player, "p1");
        assert_eq!(s.standings[0].wins, 8);
        // 0.75 per match: odds 3:1, the BT difference is 400 log10 3
        let d = s.standings[0].rating - s.standings[1].rating;
        assert!((d - 400.0 * 3f64.log10()).abs() < 1e-6, "{d}");
        assert_eq!(s.position.consistent, 0);
    }

    #[test]
    fn unreadable_answers_leave_the_match_unrated() {
        let ps = players(&[1, 2]);
        let cfg = EloConfig { matches_per_pair: 10, bootstrap: 10, ..EloConfig::default() };
        // every third answer is unreadable
        let mut j = ScriptedJudge::new("flaky", |r, k| {
            if k % 3 == 0 {
                return verdict("maybe");
            }
            let a = quality(r.prompt.split("Response A:").nth(1).unwrap_or(""));
            verdict(if a == 2 { "A" } else { "B" })
        });
        let t = tournament(&mut j, &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        let s = &t.summary;
        assert_eq!(s.unreadable_answers, 7); // calls 0, 3, ..., 18 of 20
        assert_eq!(s.matches + s.incomplete_matches, 10);
        assert_eq!(s.incomplete_matches, 7, "no match had both answers unreadable");
        assert!(t.matches.iter().all(|m| m.score_a == 0.0));
        let mut never = ScriptedJudge::new("never", |_, _| verdict("no idea"));
        let e = tournament(&mut never, &ps, ("t", TEMPLATE), "math", &cfg).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("no match could be rated: 20 of 20"), "{e}");
    }

    #[test]
    fn players_meet_only_on_the_same_question() {
        // p1 answered questions 0..20 but in another order, and five other questions; p0's
        // question 3 text differs: matched by text, so 0..20 minus 3 are common
        let mut ps = players(&[1, 2]);
        ps[0].members[0] = Member::new(
            "r0",
            (0..20)
                .map(|k| (if k == 3 { "question three".to_string() } else { format!("question {k}") }, "answer with quality 1 ok".into())),
        );
        ps[1].members[0] =
            Member::new("r1", (0..25).rev().map(|k| (format!("question {k}"), format!("answer with quality 2 to question {k}"))));
        let cfg = EloConfig { matches_per_pair: 60, bootstrap: 10, ..EloConfig::default() };
        let mut seen = Vec::new();
        let mut j = ScriptedJudge::new("check", |r, _| {
            // the question shown is the one both responses answer
            let q = r.prompt.lines().next().unwrap().trim_start_matches("Q: ").to_string();
            let other = r.prompt.split("to ").nth(1).map(|s| s.lines().next().unwrap().to_string());
            assert_eq!(other.as_deref(), Some(q.as_str()), "{}", r.prompt);
            seen.push(q);
            verdict("B")
        });
        let t = tournament(&mut j, &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        assert_eq!(t.summary.prompts, 19);
        assert_eq!(t.summary.dropped_prompts, 7, "question three, question 3 and questions 20..24");
        assert!(!seen.iter().any(|q| q == "question 3" || q == "question three"));
        // nothing in common: a clear error
        let mut ps = players(&[1, 2]);
        ps[1].members[0] = Member::new("r1", [("another question".to_string(), "r".to_string())]);
        let e = tournament(&mut quality_judge(0.0), &ps, ("t", TEMPLATE), "math", &EloConfig::default()).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("no question in common") && e.contains("matched by their text"), "{e}");
        assert!(tournament(&mut quality_judge(0.0), &players(&[1]), ("t", TEMPLATE), "math", &EloConfig::default()).is_err());
    }

    #[test]
    fn repeated_question_text_keeps_each_occurrence() {
        let m = Member::new("r", [("q".to_string(), "one".to_string()), ("q".to_string(), "two".to_string())]);
        assert_eq!(m.responses.len(), 2);
        assert_eq!(m.responses[&prompt_key("q", 1)].1, "one");
        assert_eq!(m.responses[&prompt_key("q", 2)].1, "two");
        assert_eq!(prompt_key("q", 1).len(), 16);
        assert_ne!(prompt_key("q", 1), prompt_key("q ", 1));
    }

    #[test]
    fn pooled_players_draw_their_members_and_never_meet_themselves() {
        // arm x: two seeds of quality 3 and 4; arm y: three seeds of quality 1, 2, 2
        let ps = vec![
            Player { name: "x".into(), members: vec![member("x0", 3), member("x1", 4)] },
            Player { name: "y".into(), members: vec![member("y0", 1), member("y1", 2), member("y2", 2)] },
        ];
        let cfg = EloConfig { matches_per_pair: 90, bootstrap: 20, ..EloConfig::default() };
        let t = tournament(&mut quality_judge(0.0), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        assert_eq!(t.matches.len(), 90);
        assert!(t.matches.iter().all(|m| m.a == 0 && m.b == 1 && m.score_a == 1.0));
        let used: BTreeSet<&str> = t.matches.iter().flat_map(|m| [m.a_from.as_str(), m.b_from.as_str()]).collect();
        assert_eq!(used, BTreeSet::from(["x0", "x1", "y0", "y1", "y2"]), "every member plays");
        assert_eq!(t.summary.players[1].members, ["y0", "y1", "y2"]);
        assert!(table(&t).contains("runs"));
    }

    #[test]
    fn sequential_elo_is_labelled_and_varies_with_the_order() {
        let ps = players(&[1, 2, 3]);
        let cfg = EloConfig { rating: Rating::SequentialElo, matches_per_pair: 20, repeats: 5, bootstrap: 20, ..EloConfig::default() };
        let t = tournament(&mut quality_judge(0.1), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        assert!(t.summary.method.starts_with("sequential Elo (the paper's method; order-dependent)"), "{}", t.summary.method);
        assert!(t.summary.standings.iter().all(|s| s.std.is_some()));
        assert!(t.summary.standings.iter().any(|s| s.std.unwrap() > 0.0));
        // K=4 over 40 games each: the paper's Elo stays within a few dozen points of 1000
        assert!(t.summary.standings.iter().all(|s| (s.rating - 1000.0).abs() < 100.0));
        assert!(table(&t).contains("seq. Elo (mean ± std)"));
    }

    #[test]
    fn the_plain_mle_is_refused_when_a_player_wins_everything() {
        let ps = players(&[1, 2]);
        let cfg = EloConfig { matches_per_pair: 5, bootstrap: 5, prior: 0.0, ..EloConfig::default() };
        let e = tournament(&mut quality_judge(0.0), &ps, ("t", TEMPLATE), "math", &cfg).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("no finite ratings") && e.contains("p1 (5 of 5)") && e.contains("--bt-prior"), "{e}");
    }

    #[test]
    fn verdicts_from_text_and_logprobs() {
        let text = JudgeResponse::answer;
        assert_eq!(parse_verdict(&text("Winner: B")), Some(Outcome::BWins));
        assert_eq!(parse_verdict(&text(" A")), Some(Outcome::AWins));
        assert_eq!(parse_verdict(&text("Winner: tie")), Some(Outcome::Tie));
        assert_eq!(parse_verdict(&text("I cannot decide")), None);
        let lp = JudgeResponse {
            logprobs: Some(vec![crate::judge::TokenLogprob {
                token: " A".into(),
                logprob: -0.9,
                top: vec![(" A".into(), -0.9), (" B".into(), -0.6)],
            }]),
            ..text(" A")
        };
        assert_eq!(parse_verdict(&lp), Some(Outcome::BWins), "B is more probable than the sampled A");
        // a guided answer: the label's tokens first (mpo wrote them), then the judge's
        let tok = |t: &str, l: f32, top: Vec<(String, f32)>| crate::judge::TokenLogprob { token: t.into(), logprob: l, top };
        let guided = JudgeResponse {
            logprobs: Some(vec![
                tok("Winner", 0.0, vec![]),
                tok(":", 0.0, vec![]),
                tok(" A", -0.9, vec![(" A".into(), -0.9), (" tie".into(), -0.2)]),
            ]),
            ..text("Winner: A\n")
        };
        assert_eq!(parse_verdict(&guided), Some(Outcome::Tie), "tie is the likeliest first written token");
    }

    #[test]
    fn elo_json_round_trips_and_renders() {
        let ps = players(&[1, 2]);
        let cfg = EloConfig { matches_per_pair: 4, bootstrap: 10, ..EloConfig::default() };
        let t = tournament(&mut quality_judge(0.0), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        let f = EloFile {
            format: FORMAT,
            created: "2025-01-01T00:00:00Z".into(),
            judge: JudgeInfo {
                source: "--training-judge".into(),
                identity: Some("local:x".into()),
                training_judge: true,
                spec: Default::default(),
            },
            skipped: vec![],
            summary: t.summary.clone(),
        };
        let text = serde_json::to_string_pretty(&f).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["standings"][0]["player"], "p1");
        assert_eq!(v["judge"]["training_judge"], true);
        assert_eq!(serde_json::from_str::<EloFile>(&text).unwrap(), f);
        let md = markdown(&f);
        assert!(md.contains("| 1 | p1 |") && md.contains("own training judge") && md.contains("position consistency 100.0%"), "{md}");
        // a judge that always says tie: no decisive verdict, so the first-shown rate is
        // undefined; the file says null and reads back (NaN is not JSON)
        let t = tournament(&mut quality_judge(0.0), &players(&[3, 3]), ("t", TEMPLATE), "math", &cfg).unwrap();
        assert!(t.summary.position.first_shown_rate.is_nan());
        let tied = EloFile { summary: t.summary, ..f };
        let text = serde_json::to_string_pretty(&tied).unwrap();
        assert!(text.contains("\"first_shown_rate\": null"), "{text}");
        let back: EloFile = serde_json::from_str(&text).unwrap();
        assert!(back.summary.position.first_shown_rate.is_nan());
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
    }
}
