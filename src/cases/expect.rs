//! Case expectations checked against scored outcomes: totals and items in ranges, probes at
//! most a share of the range, `order` pairs, known failures; read under the rubric a case file
//! was written for, or as shares of its ranges under another ([`Reading`]).

use std::collections::BTreeMap;

use super::{Case, CaseFile, Outcome};
use crate::rubric::Rubric;

/// An expectation and whether it held.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub case: String,
    /// What was expected, as the report and `known_failures` name it: in the numbers of the
    /// rubric the case file was written for, so the same expectation has the same name under
    /// every rubric it is checked against.
    pub what: String,
    /// The same expectation in the numbers of the rubric checked, when its range differs from
    /// the one the case file was written for (`None`: `what` says it).
    pub means: Option<String>,
    /// What was measured, when it did not hold.
    pub got: Option<String>,
    /// Why a failure is accepted: the reason given in the case file's `known_failures`, or
    /// that the committed snapshot records it.
    pub known: Option<String>,
    /// It failed because a case it reads has no score (the judge failed, or no recording):
    /// not measured, rather than measured wrong.
    pub unmeasured: bool,
}

impl Check {
    pub fn holds(&self) -> bool {
        self.got.is_none()
    }
    /// The key `known_failures` lists it under.
    pub fn key(&self) -> String {
        format!("{}: {}", self.case, self.what)
    }
    /// What was expected, in the numbers of the rubric checked.
    pub fn expected(&self) -> &str {
        self.means.as_deref().unwrap_or(&self.what)
    }
    /// `case: expected ..., got ...`.
    pub fn line(&self) -> String {
        match &self.got {
            Some(got) => format!("{}: expected {}, got {got}", self.case, self.expected()),
            None => format!("{}: {} holds", self.case, self.expected()),
        }
    }
}

pub fn fmt(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// How a case file's numbers are read against the rubric being checked.
///
/// A case file's raw numbers (`expect.total`, `expect.items`) are written for one rubric:
/// `written_for` (a spec's own rubric; in a run, its initial rubric v0). Under another rubric
/// they are read as shares of that rubric's ranges and checked at the same shares of the
/// rubric under test: a total as a share of the whole range (min..max summed over items), an
/// item as a share of its own min..max. Probes are a share of the range already, and `order`
/// pairs compare totals, which no rescaling changes. Under `written_for` itself every number
/// is read as written.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// The rubric the case file's numbers were written for.
    pub written_for: &'a Rubric,
    /// An item expectation on an item the rubric under test lacks fails (`mpo rubric test`:
    /// the spec's own rubric must have the items its case file names); when false it does not
    /// apply (a meta step may drop or rename items: expectations follow the items a rubric
    /// keeps, matched by normalised name).
    pub items_required: bool,
}

/// `v` at the same share of `to` as it is of `from` (as is when the ranges are the same).
fn rescale(v: f64, from: (f64, f64), to: (f64, f64)) -> f64 {
    if from == to || from.1 <= from.0 {
        return v;
    }
    to.0 + (v - from.0) / (from.1 - from.0) * (to.1 - to.0)
}

/// Every expectation of `cases` against `outcomes` under `rubric`, the case file's numbers
/// read as written (`rubric` is the one they were written for).
pub fn check(file: &CaseFile, cases: &[Case], outcomes: &[Outcome], rubric: &Rubric) -> Vec<Check> {
    check_read(file, cases, outcomes, rubric, Reading { written_for: rubric, items_required: true })
}

/// Every expectation of `cases` against `outcomes` under `rubric`, the case file's numbers
/// read as `reading` says.
pub fn check_read(file: &CaseFile, cases: &[Case], outcomes: &[Outcome], rubric: &Rubric, reading: Reading) -> Vec<Check> {
    let range = |r: &Rubric| (r.min_score() as f64, r.max_score() as f64);
    let (here, there) = (range(rubric), range(reading.written_for));
    let item = |r: &Rubric, name: &str| {
        let key = crate::rubric::normalize_name(name);
        r.items.iter().find(|i| crate::rubric::normalize_name(&i.name) == key).map(|i| (i.min as f64, i.max as f64))
    };
    let by_id: BTreeMap<&str, &Outcome> = outcomes.iter().map(|o| (o.id.as_str(), o)).collect();
    let unscored = |o: &Outcome| format!("no score ({})", o.failure.as_deref().unwrap_or("no answer"));
    let mut out = Vec::new();
    let mut push = |case: &str, what: String, means: Option<String>, got: Option<String>| {
        // `unscored` below is the only source of "no score (": a failure it wrote is unmeasured.
        let unmeasured = got.as_deref().is_some_and(|g| g.contains("no score ("));
        let mut c = Check { case: case.into(), what, means, got, known: None, unmeasured };
        c.known = file.known_failures.get(&c.key()).or_else(|| file.known_failures.get(case)).cloned();
        out.push(c);
    };
    let span = |(a, b): (f64, f64)| format!("{}..={}", fmt(a), fmt(b));
    for c in cases {
        let Some(o) = by_id.get(c.id.as_str()) else { continue };
        // `name in a..=b` as written, and what it means in `to` when that differs from `from`.
        let within = |name: &str, v: Option<f64>, [a, b]: [f64; 2], from: (f64, f64), to: (f64, f64)| {
            let what = format!("{name} in {}", span((a, b)));
            let (lo, hi) = (rescale(a, from, to), rescale(b, from, to));
            let means = (from != to)
                .then(|| format!("{name} in {} of {} (the case file's {} of {})", span((lo, hi)), span(to), span((a, b)), span(from)));
            let got = match v {
                None => Some(unscored(o)),
                Some(v) if v < lo - 1e-9 || v > hi + 1e-9 => Some(format!("{name} {}", fmt(v))),
                Some(_) => None,
            };
            (what, means, got)
        };
        if let Some(t) = c.expect.total {
            let (w, m, g) = within("total", o.total, t, there, here);
            push(&c.id, w, m, g);
        }
        for (name, r) in &c.expect.items {
            let label = format!("`{name}`");
            match (item(reading.written_for, name), item(rubric, name)) {
                (Some(from), Some(to)) => {
                    let key = crate::rubric::normalize_name(name);
                    let v = o.total.map(|_| o.items.iter().find(|(n, _)| crate::rubric::normalize_name(n) == key).map(|(_, s)| *s));
                    match v {
                        Some(None) => {
                            push(&c.id, format!("{label} in {}", span((r[0], r[1]))), None, Some(format!("no score for {label}")))
                        }
                        v => {
                            let (w, m, g) = within(&label, v.flatten(), *r, from, to);
                            push(&c.id, w, m, g);
                        }
                    }
                }
                (_, None) if reading.items_required => {
                    push(&c.id, format!("item {label}"), None, Some("the rubric in force has no such item".into()))
                }
                // An item the rubric under test (or the one the file was written for) does not
                // have: the expectation does not apply.
                _ => {}
            }
        }
        if let Some(share) = c.at_most {
            let bound = |(lo, hi): (f64, f64)| {
                format!("total <= {} (the bottom {:.0}% of {})", fmt(lo + share * (hi - lo)), share * 100.0, span((lo, hi)))
            };
            let limit = here.0 + share * (here.1 - here.0);
            let got = match o.total {
                None => Some(unscored(o)),
                Some(t) if t > limit + 1e-9 => Some(format!("total {}", fmt(t))),
                Some(_) => None,
            };
            push(&c.id, bound(there), (there != here).then(|| bound(here)), got);
        }
    }
    for [a, b] in &file.order {
        let (Some(x), Some(y)) = (by_id.get(a.as_str()), by_id.get(b.as_str())) else {
            // A case without an outcome (no recorded answer) is reported as such, not here.
            let exists = |id: &String| cases.iter().any(|c| &c.id == id);
            if !(exists(a) && exists(b)) {
                push(a, format!("above `{b}`"), None, Some("the case file's `order` names a case that does not exist".into()));
            }
            continue;
        };
        let got = match (x.total, y.total) {
            (Some(p), Some(q)) if p > q => None,
            (Some(p), Some(q)) => Some(format!("{} vs {}", fmt(p), fmt(q))),
            _ => Some(format!("{} vs {}", x.total.map_or_else(|| unscored(x), fmt), y.total.map_or_else(|| unscored(y), fmt))),
        };
        push(a, format!("above `{b}`"), None, got);
    }
    out
}
