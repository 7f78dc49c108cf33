//! The seeded arithmetic generator: MATH-shaped records (`problem`, `solution` with
//! `\boxed{}`, `answer`, `level`, `type`) whose answers are exact integers, at difficulty levels
//! a 135M-parameter model can partly solve. It exists so the CPU demo has a reward signal the
//! programmatic verifier can check, and a held-out test split of the same distribution.
//!
//! Train and test draw from disjoint parts of the problem space: a problem is held out when
//! the sha256 of its text starts below 52 (about a fifth of every level, the same fifth for
//! every seed), and only a test split draws it. So a generated test split shares no problem
//! with a generated training split, whatever their seeds and counts.

use rand::Rng;
use serde_json::{Value as J, json};
use sha2::{Digest, Sha256};

use super::Split;
use crate::rng;

/// Bumped whenever the generator's output of a split for a given seed changes (it is part of
/// the plan's data hash). v3: test splits draw without replacement; training splits are v2's.
pub fn version(split: Split) -> u32 {
    match split {
        Split::Train => 2,
        Split::Test => 3,
    }
}

/// Whether `problem` belongs to the held-out (test) part of the problem space.
pub fn held_out(problem: &str) -> bool {
    Sha256::digest(problem.as_bytes())[0] < 52
}

/// Consecutive draws of a level that find no new held-out problem before the level counts as
/// exhausted. The smallest level holds 81 problems; with one unused held-out problem left, 2000
/// misses in a row happen with probability (80/81)^2000 ~ 1e-11.
const EXHAUSTED_AFTER: usize = 2000;

/// Up to `count` problems of `split`'s part, drawn round-robin from `levels`, reproducible from
/// `seed`. A training split draws with replacement (a problem may recur, as an epoch would
/// repeat it). A test split draws without: every problem at most once, so intervals over it
/// count distinct prompts; a level whose held-out problems are used up drops out of the
/// rotation, and the split can hold fewer than `count` records (`mpo check` says so).
pub fn arithmetic(seed: u64, count: usize, levels: &[u8], split: Split) -> Vec<J> {
    let mut r = rng::stream(seed, "task/generate/arithmetic");
    let mut levels: Vec<u8> = if levels.is_empty() { vec![1] } else { levels.iter().map(|l| (*l).clamp(1, 5)).collect() };
    let want_held_out = split == Split::Test;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    let mut turn = 0;
    while out.len() < count && !levels.is_empty() {
        let at = turn % levels.len();
        let level = levels[at];
        let mut misses = 0;
        // Every level has problems in both parts (a test checks), so this ends quickly.
        let drawn = loop {
            let p = problem(&mut r, level);
            if held_out(&p.0) == want_held_out && (!want_held_out || !seen.contains(&p.0)) {
                break Some(p);
            }
            misses += 1;
            if want_held_out && misses >= EXHAUSTED_AFTER {
                break None;
            }
        };
        let Some((problem, steps, answer)) = drawn else {
            levels.remove(at);
            continue;
        };
        if want_held_out {
            seen.insert(problem.clone());
        }
        let i = out.len();
        out.push(json!({
            "id": format!("gen/arithmetic/{}/{i:06}", split.as_str()),
            "problem": problem,
            "solution": format!("{steps} The answer is $\\boxed{{{answer}}}$."),
            "answer": answer.to_string(),
            "level": format!("Level {level}"),
            "type": "Arithmetic",
        }));
        turn = at + 1;
    }
    out
}

const NAMES: [&str; 8] = ["Ada", "Ben", "Chloe", "Dev", "Ema", "Farid", "Gus", "Hana"];
const THINGS: [&str; 6] = ["apples", "pencils", "stickers", "marbles", "cookies", "stamps"];

fn problem(r: &mut impl Rng, level: u8) -> (String, String, i64) {
    match level {
        1 => {
            let (a, b) = (r.random_range(1..=9i64), r.random_range(1..=9i64));
            (format!("What is ${a} + {b}$?"), format!("${a} + {b} = {}$.", a + b), a + b)
        }
        2 => {
            let (a, b) = (r.random_range(10..=99i64), r.random_range(10..=99i64));
            if r.random_bool(0.5) {
                (format!("What is ${a} + {b}$?"), format!("${a} + {b} = {}$.", a + b), a + b)
            } else {
                let (hi, lo) = (a.max(b), a.min(b));
                (format!("What is ${hi} - {lo}$?"), format!("${hi} - {lo} = {}$.", hi - lo), hi - lo)
            }
        }
        3 => {
            let (a, b) = (r.random_range(2..=12i64), r.random_range(2..=12i64));
            (format!("What is ${a} \\times {b}$?"), format!("${a} \\times {b} = {}$.", a * b), a * b)
        }
        4 => {
            if r.random_bool(0.5) {
                let (a, b, c) = (r.random_range(2..=20i64), r.random_range(2..=20i64), r.random_range(2..=9i64));
                let s = a + b;
                (format!("What is $({a} + {b}) \\times {c}$?"), format!("${a} + {b} = {s}$, and ${s} \\times {c} = {}$.", s * c), s * c)
            } else {
                let (q, d) = (r.random_range(2..=15i64), r.random_range(2..=9i64));
                let n = q * d;
                (format!("What is ${n} \\div {d}$?"), format!("${n} \\div {d} = {q}$ because ${q} \\times {d} = {n}$."), q)
            }
        }
        _ => {
            let name = NAMES[r.random_range(0..NAMES.len())];
            let thing = THINGS[r.random_range(0..THINGS.len())];
            let (a, b, c) = (r.random_range(3..=30i64), r.random_range(2..=6i64), r.random_range(2..=8i64));
            if r.random_bool(0.5) {
                let total = a + b * c;
                (
                    format!(
                        "{name} has {a} {thing}. {name} buys {b} bags with {c} {thing} in each bag. How many {thing} does {name} have now?"
                    ),
                    format!("The bags hold ${b} \\times {c} = {}$ {thing}, so {name} has ${a} + {} = {total}$.", b * c, b * c),
                    total,
                )
            } else {
                let per = r.random_range(2..=9i64);
                let total = per * b;
                let left = total - per;
                (
                    format!(
                        "{name} shares {total} {thing} equally among {b} friends, then one friend gives back all of theirs. How many {thing} do the friends still hold?"
                    ),
                    format!(
                        "Each friend gets ${total} \\div {b} = {per}$; after one returns theirs, ${total} - {per} = {left}$ remain with the friends."
                    ),
                    left,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_answers_match_solutions() {
        let a = arithmetic(3, 50, &[1, 2, 3, 4, 5], Split::Train);
        assert_eq!(a, arithmetic(3, 50, &[1, 2, 3, 4, 5], Split::Train));
        assert_ne!(a, arithmetic(4, 50, &[1, 2, 3, 4, 5], Split::Train));
        for rec in &a {
            let sol = rec["solution"].as_str().unwrap();
            let boxed = crate::task::math::last_boxed(sol).unwrap();
            assert_eq!(boxed, rec["answer"].as_str().unwrap());
        }
        assert_eq!(a[2]["level"], "Level 3");
    }

    #[test]
    fn generated_train_and_test_never_share_a_problem() {
        // Same seed for both, and counts far past the small levels' problem spaces (level 1
        // has 81 problems): the parts still never meet.
        for levels in [vec![1], vec![3], vec![1, 2, 3], vec![1, 2, 3, 4, 5]] {
            let train = arithmetic(0, 2000, &levels, Split::Train);
            let test = arithmetic(0, 500, &levels, Split::Test);
            let seen: std::collections::HashSet<&str> = train.iter().map(|r| r["problem"].as_str().unwrap()).collect();
            assert!(test.iter().all(|r| !seen.contains(r["problem"].as_str().unwrap())), "levels {levels:?}");
            assert!(train.iter().all(|r| !held_out(r["problem"].as_str().unwrap())));
            assert!(test.iter().all(|r| held_out(r["problem"].as_str().unwrap())));
            assert_eq!(crate::task::shared_records(crate::spec::TaskKind::Math, &train, &test), 0);
        }
        // the held-out part is about a fifth of a level, and no level is all one part
        let distinct = |split| {
            arithmetic(1, 3000, &[1], split)
                .iter()
                .map(|r| r["problem"].as_str().unwrap().to_string())
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        let (train, test) = (distinct(Split::Train), distinct(Split::Test));
        assert_eq!(train + test, 81, "level 1 has 81 problems");
        assert!((8..=30).contains(&test), "{test} of 81 held out");
    }

    #[test]
    fn a_test_split_never_repeats_a_problem_and_stops_when_the_levels_run_out() {
        let problems = |recs: &[J]| recs.iter().map(|r| r["problem"].as_str().unwrap().to_string()).collect::<Vec<_>>();
        let distinct = |recs: &[J]| problems(recs).into_iter().collect::<std::collections::HashSet<_>>().len();
        // level 1 alone: every held-out problem once, then no more (asked for 200)
        let l1 = arithmetic(0, 200, &[1], Split::Test);
        assert_eq!(distinct(&l1), l1.len());
        assert!((8..=30).contains(&l1.len()), "{}", l1.len());
        // the same problems whatever the seed: the whole held-out part of level 1
        let mut a = problems(&l1);
        let mut b = problems(&arithmetic(9, 200, &[1], Split::Test));
        a.sort();
        b.sort();
        assert_eq!(a, b);
        // mixed levels: an exhausted level drops out, the rest fill the count, no repeats
        let mixed = arithmetic(0, 200, &[1, 2, 3], Split::Test);
        assert_eq!((mixed.len(), distinct(&mixed)), (200, 200));
        let level = |n: &str| mixed.iter().filter(|r| r["level"] == n).count();
        assert_eq!(level("Level 1"), l1.len());
        assert_eq!(level("Level 3"), arithmetic(0, 500, &[3], Split::Test).len());
        // ids stay dense and records reproducible
        assert_eq!(mixed[199]["id"], "gen/arithmetic/test/000199");
        assert_eq!(mixed, arithmetic(0, 200, &[1, 2, 3], Split::Test));
        // training draws with replacement, as before: 512 of level 1's ~67 training problems
        assert_eq!(arithmetic(0, 512, &[1], Split::Train).len(), 512);
    }
}
