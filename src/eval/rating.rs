//! Ratings from pairwise games: the Bradley–Terry maximum-likelihood fit (the default of
//! `mpo eval --elo`) and sequential Elo (the paper's method). Pure functions.
//!
//! Both answer on the Elo scale: a rating difference `d` means the first player is expected to
//! score `1 / (1 + 10^(-d / 400))` against the second. Bradley–Terry gives player `i` a strength
//! `p_i` with `P(i beats j) = p_i / (p_i + p_j)`; its rating is `400 log10 p_i`, shifted so the
//! players' mean is the anchor (1000). A game's score may be fractional (a tie is half a win; a
//! match judged in both presentation orders scores the mean of its two verdicts), which the
//! likelihood `s log P(a beats b) + (1 - s) log P(b beats a)` takes as it is.
//!
//! The fit maximises the likelihood by Newton's method on the pairwise totals. The maximum
//! likelihood is finite only when every split of the players into two groups has each group
//! scoring against the other (the "beat" graph is strongly connected); an undefeated player has
//! none. `prior` virtual tied games per player against a reference player of strength 1 keep
//! every rating finite and pull ratings toward each other by about `prior / (games + prior)`;
//! `prior = 0` is the plain maximum likelihood, `None` when it does not exist.

/// Elo points per unit of natural log-strength: `400 / ln 10`.
pub const SCALE: f64 = 400.0 / std::f64::consts::LN_10;

/// One rated game: players `a` and `b`, and `a`'s score in [0, 1] (1 a win, 0.5 a tie, 0 a loss).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Game {
    pub a: usize,
    pub b: usize,
    pub score_a: f64,
}

/// The expected score of a player rated `ra` against one rated `rb`.
pub fn expected(ra: f64, rb: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((rb - ra) / 400.0))
}

/// Pairwise totals: games played between i and j, and the score i took from them.
fn totals(n: usize, games: &[Game]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut played = vec![vec![0.0; n]; n];
    let mut scored = vec![vec![0.0; n]; n];
    for g in games {
        if g.a == g.b {
            continue;
        }
        played[g.a][g.b] += 1.0;
        played[g.b][g.a] += 1.0;
        scored[g.a][g.b] += g.score_a;
        scored[g.b][g.a] += 1.0 - g.score_a;
    }
    (played, scored)
}

/// Whether the plain maximum-likelihood fit exists: every player reaches every other through
/// "scored something against" edges (a tie or a fractional score counts both ways).
pub fn mle_exists(n: usize, games: &[Game]) -> bool {
    if n < 2 {
        return n == 1;
    }
    let (_, scored) = totals(n, games);
    let reach = |forward: bool| {
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(i) = stack.pop() {
            for j in 0..n {
                let edge = if forward { scored[i][j] > 0.0 } else { scored[j][i] > 0.0 };
                if edge && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        seen.into_iter().all(|s| s)
    };
    reach(true) && reach(false)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `ln sigmoid(x)`, without overflow at either end.
fn ln_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

/// Solve `a x = b` (Gaussian elimination with partial pivoting); `None` if singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let piv = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[piv][c].abs() < 1e-300 {
            return None;
        }
        a.swap(c, piv);
        b.swap(c, piv);
        let pivot = a[c].clone();
        for r in c + 1..n {
            let f = a[r][c] / pivot[c];
            if f != 0.0 {
                a[r][c..].iter_mut().zip(&pivot[c..]).for_each(|(x, p)| *x -= f * p);
                b[r] -= f * b[c];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// Bradley–Terry ratings of `n` players from `games`, the players' mean at `anchor`. With
/// `prior > 0` each player also plays `prior` tied games against a reference player of
/// strength 1 (always finite); with `prior = 0`, `None` when the maximum likelihood does not
/// exist (see the module's notes).
///
/// The log-likelihood in the log-strengths `t` is concave (strictly so with a prior); Newton's
/// method with a backtracking line search reaches its maximum in a few steps whatever the data.
pub fn bradley_terry(n: usize, games: &[Game], prior: f64, anchor: f64) -> Option<Vec<f64>> {
    if n == 0 {
        return Some(Vec::new());
    }
    if prior <= 0.0 && !mle_exists(n, games) {
        return None;
    }
    let prior = prior.max(0.0);
    let (played, scored) = totals(n, games);
    let ll = |t: &[f64]| {
        let mut s = 0.0;
        for i in 0..n {
            for j in 0..n {
                if scored[i][j] > 0.0 {
                    s += scored[i][j] * ln_sigmoid(t[i] - t[j]);
                }
            }
            s += prior * 0.5 * (ln_sigmoid(t[i]) + ln_sigmoid(-t[i]));
        }
        s
    };
    let mut t = vec![0.0f64; n];
    let mut cur = ll(&t);
    for _ in 0..200 {
        // gradient and (negated) Hessian
        let mut g = vec![0.0; n];
        let mut h = vec![vec![0.0; n]; n];
        for i in 0..n {
            for j in 0..n {
                if i == j || played[i][j] == 0.0 {
                    continue;
                }
                let p = sigmoid(t[i] - t[j]);
                g[i] += scored[i][j] - played[i][j] * p;
                let w = played[i][j] * p * (1.0 - p);
                h[i][i] += w;
                h[i][j] -= w;
            }
            let p = sigmoid(t[i]);
            g[i] += prior * (0.5 - p);
            h[i][i] += prior * p * (1.0 - p);
        }
        if prior == 0.0 {
            // the likelihood does not see a common shift: add 1 1^T, which leaves the step
            // orthogonal to it (the gradient is)
            h.iter_mut().for_each(|row| row.iter_mut().for_each(|x| *x += 1.0));
        }
        let step = solve(h, g)?;
        let mut a = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            let next: Vec<f64> = t.iter().zip(&step).map(|(x, d)| x + a * d).collect();
            let v = ll(&next);
            if v >= cur - 1e-12 * cur.abs().max(1.0) {
                t = next;
                cur = v;
                accepted = true;
                break;
            }
            a /= 2.0;
        }
        let size = step.iter().fold(0.0f64, |m, d| m.max((a * d).abs()));
        if !accepted || size < 1e-11 {
            break;
        }
    }
    if t.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mean = t.iter().sum::<f64>() / n as f64;
    Some(t.iter().map(|x| anchor + SCALE * (x - mean)).collect())
}

/// Sequential Elo over `games` in the given order, every player starting at `initial`.
pub fn sequential_elo<'a>(n: usize, games: impl IntoIterator<Item = &'a Game>, k: f64, initial: f64) -> Vec<f64> {
    let mut r = vec![initial; n];
    for g in games {
        let delta = k * (g.score_a - expected(r[g.a], r[g.b]));
        r[g.a] += delta;
        r[g.b] -= delta;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(a: usize, b: usize, s: f64) -> Game {
        Game { a, b, score_a: s }
    }

    #[test]
    fn three_wins_one_loss_is_400_log10_3_apart() {
        let games = [g(0, 1, 1.0), g(0, 1, 1.0), g(1, 0, 0.0), g(0, 1, 0.0)];
        let r = bradley_terry(2, &games, 0.0, 1000.0).unwrap();
        let d = 400.0 * 3f64.log10();
        assert!((r[0] - r[1] - d).abs() < 1e-6, "{r:?}");
        assert!((r[0] - (1000.0 + d / 2.0)).abs() < 1e-6 && (r[1] - (1000.0 - d / 2.0)).abs() < 1e-6, "{r:?}");
        // the fitted expectation is the observed score: 3 of 4
        assert!((expected(r[0], r[1]) - 0.75).abs() < 1e-9);
        // a tie is half a win: 2 wins, 2 ties, 2 losses is even; 1 win 2 ties is 2:1 odds
        let even = [g(0, 1, 1.0), g(0, 1, 1.0), g(0, 1, 0.5), g(0, 1, 0.5), g(0, 1, 0.0), g(0, 1, 0.0)];
        let r = bradley_terry(2, &even, 0.0, 1000.0).unwrap();
        assert!((r[0] - 1000.0).abs() < 1e-6 && (r[1] - 1000.0).abs() < 1e-6, "{r:?}");
        let r = bradley_terry(2, &[g(0, 1, 1.0), g(0, 1, 0.5), g(1, 0, 0.5)], 0.0, 1000.0).unwrap();
        assert!((r[0] - r[1] - 400.0 * 2f64.log10()).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn the_fit_solves_the_likelihood_equations() {
        // four players, uneven schedule, fractional scores: at the maximum each player's
        // expected total score equals its actual one (the score equations of the likelihood)
        let games = [
            g(0, 1, 1.0),
            g(0, 1, 0.75),
            g(0, 1, 0.0),
            g(1, 2, 1.0),
            g(1, 2, 0.5),
            g(2, 1, 0.25),
            g(2, 3, 1.0),
            g(3, 2, 1.0),
            g(0, 3, 1.0),
            g(3, 0, 1.0),
            g(0, 2, 1.0),
            g(1, 3, 0.0),
        ];
        let r = bradley_terry(4, &games, 0.0, 1000.0).unwrap();
        assert!((r.iter().sum::<f64>() / 4.0 - 1000.0).abs() < 1e-9, "anchored at the mean");
        for i in 0..4 {
            let (mut actual, mut want) = (0.0, 0.0);
            for x in &games {
                if x.a == i {
                    actual += x.score_a;
                    want += expected(r[i], r[x.b]);
                } else if x.b == i {
                    actual += 1.0 - x.score_a;
                    want += expected(r[i], r[x.a]);
                }
            }
            assert!((actual - want).abs() < 1e-7, "player {i}: scored {actual}, expected {want}");
        }
        // the same games in another order give the same fit (unlike sequential Elo)
        let mut rev = games;
        rev.reverse();
        let r2 = bradley_terry(4, &rev, 0.0, 1000.0).unwrap();
        assert!(r.iter().zip(&r2).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn an_undefeated_player_has_no_finite_mle_and_the_prior_keeps_it_finite() {
        let games = [g(0, 1, 1.0), g(0, 1, 1.0), g(1, 2, 1.0), g(2, 1, 1.0)];
        assert!(!mle_exists(3, &games));
        assert_eq!(bradley_terry(3, &games, 0.0, 1000.0), None);
        let r = bradley_terry(3, &games, 1.0, 1000.0).unwrap();
        assert!(r[0] > r[1] && r[0] > r[2] && r.iter().all(|x| x.is_finite()), "{r:?}");
        // a player who never played: no plain MLE either
        assert!(!mle_exists(3, &[g(0, 1, 0.5)]));
        assert!(mle_exists(2, &[g(0, 1, 0.5)]));
    }

    #[test]
    fn the_prior_shrinks_toward_the_mean_less_with_more_games() {
        let mut games = vec![g(0, 1, 1.0), g(0, 1, 1.0), g(0, 1, 1.0), g(0, 1, 0.0)];
        let mle = bradley_terry(2, &games, 0.0, 1000.0).unwrap();
        let shrunk = bradley_terry(2, &games, 1.0, 1000.0).unwrap();
        assert!(shrunk[0] < mle[0] && shrunk[0] > 1000.0, "{shrunk:?} vs {mle:?}");
        assert!((shrunk[0] + shrunk[1] - 2000.0).abs() < 1e-9);
        // by symmetry the reference player sits at the mean, so player 0's equation is
        // 3 wins + 1/2 virtual = 4 P(0 beats 1) + 1 P(0 beats the reference)
        let d = (shrunk[0] - shrunk[1]) / SCALE;
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert!((3.5 - 4.0 * sig(d) - sig(d / 2.0)).abs() < 1e-9);
        let gap4 = mle[0] - shrunk[0];
        games = games.iter().cycle().take(40).copied().collect();
        let shrunk40 = bradley_terry(2, &games, 1.0, 1000.0).unwrap();
        assert!(mle[0] - shrunk40[0] < gap4 / 5.0, "{} vs {gap4}", mle[0] - shrunk40[0]);
    }

    #[test]
    fn sequential_elo_by_hand() {
        // equal ratings: expected 0.5, delta = 32 * 0.5
        assert_eq!(sequential_elo(2, &[g(0, 1, 1.0)], 32.0, 1000.0), vec![1016.0, 984.0]);
        assert_eq!(sequential_elo(2, &[g(0, 1, 0.5)], 32.0, 1000.0), vec![1000.0, 1000.0]);
        // a second game from 1016 / 984: expected 1 / (1 + 10^(-32/400))
        let r = sequential_elo(2, &[g(0, 1, 1.0), g(1, 0, 1.0)], 32.0, 1000.0);
        let e = 1.0 / (1.0 + 10f64.powf(-32.0 / 400.0));
        assert!((r[1] - (984.0 + 32.0 * e)).abs() < 1e-9, "{r:?}");
    }
}
