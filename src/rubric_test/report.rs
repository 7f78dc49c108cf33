//! What `mpo rubric test` prints and writes beside its verdict: the snapshot diff per case and
//! item, the table of outcomes, JUnit XML.

use std::collections::BTreeMap;

use crate::cases::{Check, Outcome, fmt};

use super::Snapshot;

/// What changed from `old` to `new`, one line per case (items named), rationales ignored.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    if old.judge != new.judge {
        lines.push(format!("judge: {} -> {}", old.judge, new.judge));
    }
    if old.rubric_sha256 != new.rubric_sha256 {
        lines.push(format!("rubric: sha256 {}.. -> {}..", &old.rubric_sha256[..12.min(old.rubric_sha256.len())], &new.rubric_sha256[..12]));
    }
    let show = |o: &Outcome| match o.total {
        Some(t) => fmt(t),
        None => format!("failed ({})", o.failure.as_deref().unwrap_or("no answer")),
    };
    let olds: BTreeMap<&str, &Outcome> = old.cases.iter().map(|o| (o.id.as_str(), o)).collect();
    for n in &new.cases {
        let Some(o) = olds.get(n.id.as_str()) else {
            lines.push(format!("{}: new case, total {}", n.id, show(n)));
            continue;
        };
        if o.items == n.items && o.total == n.total && o.failure == n.failure {
            continue;
        }
        let mut parts = vec![format!("total {} -> {}", show(o), show(n))];
        let names: Vec<&String> = {
            let mut v: Vec<&String> = o.items.iter().map(|(k, _)| k).collect();
            v.extend(n.items.iter().map(|(k, _)| k).filter(|k| !o.items.iter().any(|(j, _)| j == *k)));
            v
        };
        for name in names {
            let get = |x: &Outcome| x.items.iter().find(|(k, _)| k == name).map(|(_, s)| fmt(*s)).unwrap_or_else(|| "-".into());
            let (a, b) = (get(o), get(n));
            if a != b {
                parts.push(format!("{name} {a} -> {b}"));
            }
        }
        lines.push(format!("{}: {}", n.id, parts.join("; ")));
    }
    for k in new.failing.keys().filter(|k| !old.failing.contains_key(*k)) {
        lines.push(format!("{k}: no longer holds ({})", new.failing[k]));
    }
    for k in old.failing.keys().filter(|k| !new.failing.contains_key(*k)) {
        lines.push(format!("{k}: holds now"));
    }
    for o in &old.cases {
        if !new.cases.iter().any(|n| n.id == o.id) {
            lines.push(format!("{}: case removed (was {})", o.id, show(o)));
        }
    }
    lines
}

/// One line per case: total and items.
pub fn table(s: &Snapshot) -> Vec<String> {
    s.cases
        .iter()
        .map(|o| {
            let items: Vec<String> = o.items.iter().map(|(n, v)| format!("{n} {}", fmt(*v))).collect();
            match o.total {
                Some(t) => format!("{:<28} {:>6}  {}", o.id, fmt(t), items.join(", ")),
                None => format!("{:<28} {:>6}  {}", o.id, "-", o.failure.as_deref().unwrap_or("no answer")),
            }
        })
        .collect()
}

/// A JUnit test suite: one test case per rubric case; a failure per expectation that does not hold
/// (and is not a known failure), per changed outcome and per missing recording.
pub fn junit(suite: &str, outcomes: &[Outcome], checks: &[Check], changed: &[String], unrecorded: &[String]) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let mut body = String::new();
    let mut failures = 0;
    for o in outcomes {
        let mut why: Vec<String> = checks
            .iter()
            .filter(|c| c.case == o.id && !c.holds() && c.known.is_none())
            .map(|c| format!("expected {}, got {}", c.what, c.got.as_deref().unwrap_or("")))
            .collect();
        why.extend(changed.iter().filter(|l| l.starts_with(&format!("{}:", o.id))).map(|l| format!("changed: {l}")));
        if unrecorded.contains(&o.id) {
            why.push("no recorded judge answer for this prompt: run `mpo rubric test --record`".into());
        }
        body.push_str(&format!("    <testcase classname=\"{}\" name=\"{}\"", esc(suite), esc(&o.id)));
        if why.is_empty() {
            body.push_str("/>\n");
        } else {
            failures += 1;
            body.push_str(&format!(">\n      <failure message=\"{}\"/>\n    </testcase>\n", esc(&why.join("; "))));
        }
    }
    format!("  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">\n{body}  </testsuite>\n", esc(suite), outcomes.len())
}

/// A JUnit document of `suites` (from [`junit`]).
pub fn junit_document(suites: &[String]) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n{}</testsuites>\n", suites.concat())
}
