//! The seeded arithmetic generator: MATH-shaped records (`problem`, `solution` with
//! `\boxed{}`, `answer`, `level`, `type`) whose answers are exact integers, at difficulty levels
//! a 135M-parameter model can partly solve. It exists so the CPU demo has a reward signal the
//! programmatic verifier can check.

use rand::Rng;
use serde_json::{Value as J, json};

use crate::rng;

/// Bumped whenever the generator's output for a given seed changes (it is part of the plan).
pub const GENERATOR_VERSION: u32 = 1;

/// `count` problems drawn round-robin from `levels`, reproducible from `seed`.
pub fn arithmetic(seed: u64, count: usize, levels: &[u8]) -> Vec<J> {
    let mut r = rng::stream(seed, "task/generate/arithmetic");
    let levels: Vec<u8> = if levels.is_empty() { vec![1] } else { levels.to_vec() };
    (0..count)
        .map(|i| {
            let level = levels[i % levels.len()].clamp(1, 5);
            let (problem, steps, answer) = problem(&mut r, level);
            json!({
                "id": format!("gen/arithmetic/{i:06}"),
                "problem": problem,
                "solution": format!("{steps} The answer is $\\boxed{{{answer}}}$."),
                "answer": answer.to_string(),
                "level": format!("Level {level}"),
                "type": "Arithmetic",
            })
        })
        .collect()
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
        let a = arithmetic(3, 50, &[1, 2, 3, 4, 5]);
        assert_eq!(a, arithmetic(3, 50, &[1, 2, 3, 4, 5]));
        assert_ne!(a, arithmetic(4, 50, &[1, 2, 3, 4, 5]));
        for rec in &a {
            let sol = rec["solution"].as_str().unwrap();
            let boxed = crate::task::math::last_boxed(sol).unwrap();
            assert_eq!(boxed, rec["answer"].as_str().unwrap());
        }
        assert_eq!(a[2]["level"], "Level 3");
    }
}
