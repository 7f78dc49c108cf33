//! Elo tournaments: pairwise LLM judging of several players' responses to the same prompts.
//!
//! Every pair of players meets `matches_per_pair` times on prompts drawn from a seeded stream
//! (which response is shown first is drawn too);
//! each is judged once. Ratings come from sequential Elo updates; since those depend on the
//! order of matches, the tournament replays the judged matches in `repeats` seeded orders and
//! reports mean +- std, plus a percentile bootstrap over matches (resampled with replacement).

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::judge::{Judge, JudgeRequest, JudgeResponse};

/// One competitor: a name and its response per prompt key.
#[derive(Debug, Clone)]
pub struct Player {
    pub name: String,
    /// prompt key -> (question shown to the judge, response)
    pub responses: BTreeMap<String, (String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EloConfig {
    pub k: f64,
    pub initial: f64,
    /// Matches judged per pair of players.
    pub matches_per_pair: usize,
    pub repeats: usize,
    pub bootstrap: usize,
    pub seed: u64,
}

impl Default for EloConfig {
    fn default() -> Self {
        EloConfig { k: 4.0, initial: 1000.0, matches_per_pair: 32, repeats: 5, bootstrap: 1000, seed: 0 }
    }
}

/// How a match ended, from the first player's side.
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
}

/// A judged match. `a`/`b` index players; `shown_first` is the player shown as "Response A".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Match {
    pub prompt: String,
    pub a: usize,
    pub b: usize,
    pub shown_first: usize,
    pub outcome: Outcome,
    pub judge_answer: String,
}

/// Sequential Elo over `matches` in the given order.
pub fn elo(players: usize, matches: &[&Match], k: f64, initial: f64) -> Vec<f64> {
    let mut r = vec![initial; players];
    for m in matches {
        let expected_a = 1.0 / (1.0 + 10f64.powf((r[m.b] - r[m.a]) / 400.0));
        let delta = k * (m.outcome.score_a() - expected_a);
        r[m.a] += delta;
        r[m.b] -= delta;
    }
    r
}

/// The final table of a tournament.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Standing {
    pub player: String,
    pub mean: f64,
    pub std: f64,
    /// 2.5% and 97.5% percentiles of the bootstrap.
    pub ci95: (f64, f64),
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Ratings from judged matches: mean +- std over seeded orders, bootstrap interval.
pub fn standings(names: &[String], matches: &[Match], cfg: &EloConfig) -> Vec<Standing> {
    let n = names.len();
    let mut per_repeat: Vec<Vec<f64>> = Vec::new();
    for rep in 0..cfg.repeats.max(1) {
        let mut order: Vec<&Match> = matches.iter().collect();
        order.shuffle(&mut crate::rng::stream(cfg.seed, &format!("elo/order/{rep}")));
        per_repeat.push(elo(n, &order, cfg.k, cfg.initial));
    }
    let mut boot: Vec<Vec<f64>> = vec![Vec::new(); n];
    if !matches.is_empty() {
        for b in 0..cfg.bootstrap {
            let mut rng = crate::rng::stream(cfg.seed, &format!("elo/bootstrap/{b}"));
            let sample: Vec<&Match> = (0..matches.len()).map(|_| &matches[rng.random_range(0..matches.len())]).collect();
            for (p, r) in elo(n, &sample, cfg.k, cfg.initial).into_iter().enumerate() {
                boot[p].push(r);
            }
        }
    }
    let mut out: Vec<Standing> = (0..n)
        .map(|p| {
            let xs: Vec<f64> = per_repeat.iter().map(|r| r[p]).collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
            let mut bs = boot[p].clone();
            bs.sort_by(f64::total_cmp);
            let (mut w, mut l, mut t) = (0, 0, 0);
            for m in matches {
                let s = if m.a == p {
                    m.outcome.score_a()
                } else if m.b == p {
                    1.0 - m.outcome.score_a()
                } else {
                    continue;
                };
                match s {
                    s if s > 0.5 => w += 1,
                    s if s < 0.5 => l += 1,
                    _ => t += 1,
                }
            }
            Standing {
                player: names[p].clone(),
                mean,
                std,
                ci95: (percentile(&bs, 0.025), percentile(&bs, 0.975)),
                wins: w,
                losses: l,
                ties: t,
            }
        })
        .collect();
    out.sort_by(|a, b| b.mean.total_cmp(&a.mean));
    out
}

/// The judge's verdict from its answer: the guided value after `Winner:` (or the text), read as
/// A, B or tie. With log-probs, the more probable of A and B wins unless "tie" is likelier.
pub fn parse_verdict(r: &JudgeResponse) -> Option<Outcome> {
    if let Some(lp) = r.logprobs.as_ref().and_then(|l| l.first()) {
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

/// The result of a tournament.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tournament {
    pub config: EloConfig,
    pub prompts: usize,
    pub matches: Vec<Match>,
    /// Matches whose answer could not be read (not rated).
    pub unreadable: usize,
    pub standings: Vec<Standing>,
}

/// Draw the matches, judge them (in batches through `judge`), rate the players.
pub fn tournament(
    judge: &mut dyn Judge,
    players: &[Player],
    template: (&str, &str),
    task: &str,
    cfg: &EloConfig,
) -> Result<Tournament, String> {
    if players.len() < 2 {
        return Err(format!("an Elo tournament needs at least 2 players, got {}", players.len()));
    }
    let common: Vec<&String> = players[0].responses.keys().filter(|k| players.iter().all(|p| p.responses.contains_key(*k))).collect();
    if common.is_empty() {
        return Err(
            "the players answered no prompt in common: evaluate them on the same test split (same spec task and eval settings)".into()
        );
    }
    let mut rng = crate::rng::stream(cfg.seed, "elo/matches");
    let mut drawn = Vec::new();
    for a in 0..players.len() {
        for b in a + 1..players.len() {
            for _ in 0..cfg.matches_per_pair {
                let prompt = common[rng.random_range(0..common.len())].clone();
                // which response is shown first is drawn too: LLM judges favour a position
                let first = if rng.random_bool(0.5) { a } else { b };
                drawn.push((prompt, a, b, first));
            }
        }
    }
    let requests: Vec<JudgeRequest> = drawn
        .iter()
        .map(|(prompt, a, b, first)| {
            let second = if first == a { *b } else { *a };
            let (question, ra) = &players[*first].responses[prompt];
            let rb = &players[second].responses[prompt].1;
            let ctx = crate::template::context::PairwiseContext { task, question, response_a: ra, response_b: rb };
            let text = crate::template::render(template.0, template.1, &ctx).map_err(|e| e.to_string())?;
            Ok(JudgeRequest {
                prompt: text,
                max_tokens: 2,
                temperature: 0.0,
                seed: cfg.seed,
                top_logprobs: Some(10),
                guided: vec!["Winner".into()],
                ..Default::default()
            })
        })
        .collect::<Result<_, String>>()?;
    let answers = judge.complete(&requests);
    let mut matches = Vec::new();
    let mut unreadable = 0;
    for ((prompt, a, b, first), ans) in drawn.into_iter().zip(answers) {
        let Ok(resp) = ans else {
            unreadable += 1;
            continue;
        };
        let Some(shown) = parse_verdict(&resp) else {
            unreadable += 1;
            continue;
        };
        // The verdict names the position; map it back to players a and b.
        let outcome = match (shown, first == a) {
            (Outcome::Tie, _) => Outcome::Tie,
            (o, true) => o,
            (Outcome::AWins, false) => Outcome::BWins,
            (Outcome::BWins, false) => Outcome::AWins,
        };
        matches.push(Match { prompt, a, b, shown_first: first, outcome, judge_answer: resp.text });
    }
    let names: Vec<String> = players.iter().map(|p| p.name.clone()).collect();
    let standings = standings(&names, &matches, cfg);
    Ok(Tournament { config: cfg.clone(), prompts: common.len(), matches, unreadable, standings })
}

/// The standings as a text table.
pub fn table(t: &Tournament) -> String {
    let mut rows = vec![["rank", "player", "elo (mean ± std)", "95% bootstrap", "w/l/t"].map(String::from).to_vec()];
    for (i, s) in t.standings.iter().enumerate() {
        rows.push(vec![
            (i + 1).to_string(),
            s.player.clone(),
            format!("{:.1} ± {:.1}", s.mean, s.std),
            format!("[{:.1}, {:.1}]", s.ci95.0, s.ci95.1),
            format!("{}/{}/{}", s.wins, s.losses, s.ties),
        ]);
    }
    crate::sweep::table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::scripted::ScriptedJudge;

    fn quality(s: &str) -> i64 {
        s.split("quality ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Prefers the response with the higher `quality N`; `noise` flips a seeded share of verdicts.
    fn quality_judge(noise: f64) -> impl Judge {
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
            Ok(JudgeResponse { prompt_tokens: 1, completion_tokens: 1, ..JudgeResponse::answer(format!("Winner: {w}")) })
        })
    }

    fn players(qualities: &[i64]) -> Vec<Player> {
        qualities
            .iter()
            .enumerate()
            .map(|(i, q)| Player {
                name: format!("p{i}"),
                responses: (0..20).map(|k| (format!("k{k}"), (format!("question {k}"), format!("answer with quality {q} ok")))).collect(),
            })
            .collect()
    }

    const TEMPLATE: &str = "Q: {{ question }}\nResponse A:\n{{ response_a }}\nResponse B:\n{{ response_b }}\n";

    #[test]
    fn a_deterministic_judge_recovers_the_true_order() {
        let ps = players(&[2, 5, 1, 4, 3]);
        let cfg = EloConfig { k: 16.0, matches_per_pair: 30, repeats: 10, bootstrap: 200, ..EloConfig::default() };
        let t = tournament(&mut quality_judge(0.0), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        let order: Vec<&str> = t.standings.iter().map(|s| s.player.as_str()).collect();
        assert_eq!(order, ["p1", "p3", "p4", "p0", "p2"]);
        assert_eq!(t.unreadable, 0);
        assert_eq!(t.matches.len(), 300);
        // the bootstrap interval contains the mean, and the best is clear of the worst
        for s in &t.standings {
            assert!(s.ci95.0 <= s.mean + 1e-9 && s.mean - 1e-9 <= s.ci95.1, "{s:?}");
        }
        assert!(t.standings[0].ci95.0 > t.standings[4].ci95.1);
        // seeded: the same config gives the same tournament
        let again = tournament(&mut quality_judge(0.0), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), serde_json::to_string(&again).unwrap());
    }

    #[test]
    fn a_noisy_judge_still_ranks_best_and_worst() {
        let ps = players(&[1, 2, 3]);
        let cfg = EloConfig { k: 16.0, matches_per_pair: 200, repeats: 10, bootstrap: 100, ..EloConfig::default() };
        let t = tournament(&mut quality_judge(0.2), &ps, ("t", TEMPLATE), "math", &cfg).unwrap();
        let order: Vec<&str> = t.standings.iter().map(|s| s.player.as_str()).collect();
        assert_eq!(order, ["p2", "p1", "p0"]);
    }

    #[test]
    fn elo_update_by_hand() {
        let m = Match { prompt: "x".into(), a: 0, b: 1, shown_first: 0, outcome: Outcome::AWins, judge_answer: String::new() };
        // equal ratings: expected 0.5, delta = 32 * 0.5
        assert_eq!(elo(2, &[&m], 32.0, 1000.0), vec![1016.0, 984.0]);
        let tie = Match { outcome: Outcome::Tie, ..m };
        let r = elo(2, &[&tie], 32.0, 1000.0);
        assert_eq!(r, vec![1000.0, 1000.0]);
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
    }

    #[test]
    fn fewer_than_two_players_or_no_common_prompt_is_an_error() {
        let mut j = quality_judge(0.0);
        assert!(tournament(&mut j, &players(&[1]), ("t", TEMPLATE), "math", &EloConfig::default()).is_err());
        let mut ps = players(&[1, 2]);
        ps[1].responses = BTreeMap::from([("other".to_string(), ("q".to_string(), "r".to_string()))]);
        assert!(tournament(&mut j, &ps, ("t", TEMPLATE), "math", &EloConfig::default()).unwrap_err().contains("no prompt in common"));
    }
}
