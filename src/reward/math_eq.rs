//! Math answer equivalence: is the `\boxed{}` answer of a response the reference answer?
//!
//! Answers are normalised as LaTeX text (`\dfrac`/`\tfrac`, `\left`/`\right`, spacing,
//! `\text{}` units, degrees, percent, thousands separators, `x =` prefixes), then compared as
//! strings, as tuples/intervals element by element, and finally as expressions: a small
//! evaluator understands numbers, `\frac`, `\sqrt`, `\pi`, powers, implicit products and
//! variables, so `0.5 = \frac{1}{2}`, `2x+1 = 1+2x` and `\frac{\sqrt{2}}{2} = \frac{1}{\sqrt2}`
//! (variables are compared at fixed sample points). Pure and total.

/// Normalise a LaTeX answer for comparison.
pub fn normalize(ans: &str) -> String {
    let mut s = ans.trim().to_string();
    if let Some(b) = crate::task::math::last_boxed(&s) {
        s = b;
    }
    s = s.trim_matches('$').trim().to_string();
    for (from, to) in [
        // `4{,}036`: the LaTeX thousands separator
        ("{,}", ","),
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("~", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\div", "/"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\degree", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("\\{", "("),
        ("\\}", ")"),
        // longest first: `\leq` must not become `<=q`
        ("\\leqslant", "<="),
        ("\\geqslant", ">="),
        ("\\leq", "<="),
        ("\\geq", ">="),
        ("\\le", "<="),
        ("\\ge", ">="),
    ] {
        s = s.replace(from, to);
    }
    s = unwrap_text(&s);
    // "5 cm", "12 square units": a number followed by words is the number.
    let t = s.trim();
    if let Some(idx) = t.find(|c: char| c.is_whitespace())
        && t[..idx].parse::<f64>().is_ok()
        && t[idx..].trim().chars().all(|c| c.is_alphabetic() || c.is_whitespace())
    {
        s = t[..idx].to_string();
    }
    s.retain(|c| !c.is_whitespace());
    // "x=5", "k = \frac{1}{2}": the value.
    if let Some((lhs, rhs)) = s.split_once('=')
        && !rhs.is_empty()
        && lhs.len() <= 3
        && lhs.chars().all(|c| c.is_alphabetic() || c == '_')
        && !rhs.contains('=')
    {
        s = rhs.to_string();
    }
    // 1,000,000 -> 1000000 (only when the whole answer is one grouped number)
    let grouped = {
        let digits = s.trim_start_matches('-');
        let int = digits.split('.').next().unwrap_or("");
        let groups: Vec<&str> = int.split(',').collect();
        groups.len() > 1
            && !groups[0].is_empty()
            && groups[0].len() <= 3
            && groups[1..].iter().all(|g| g.len() == 3 && g.chars().all(|c| c.is_ascii_digit()))
            && groups[0].chars().all(|c| c.is_ascii_digit())
    };
    if grouped {
        s.retain(|c| c != ',');
    }
    // ... and inside braces: `\frac{12}{5,525}`
    s = braced_grouped().replace_all(&s, |c: &regex::Captures| format!("{{{}}}", c[1].replace(',', ""))).into_owned();
    s = shorthand_args(&s);
    s.trim_end_matches('.').trim_start_matches('+').to_string()
}

fn braced_grouped() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\{(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?)\}").expect("static regex"))
}

/// `\text{cm}` (a unit) disappears; `\text{(A)}` keeps its content.
fn unwrap_text(s: &str) -> String {
    let mut out = s.to_string();
    for cmd in ["\\text", "\\textbf", "\\mbox", "\\mathrm", "\\textnormal", "\\mathbf"] {
        while let Some(i) = out.find(&format!("{cmd}{{")) {
            let start = i + cmd.len() + 1;
            let Some(len) = crate::task::math::balanced(&out[start..]) else { break };
            let inner = out[start..start + len].to_string();
            let unit = !inner.trim().is_empty()
                && inner.trim().chars().all(|c| c.is_alphabetic() || c.is_whitespace() || c == '^' || c.is_ascii_digit())
                && inner.chars().any(|c| c.is_alphabetic())
                && i > 0;
            let repl = if unit { String::new() } else { inner };
            out.replace_range(i..start + len + 1, &repl);
        }
    }
    out
}

/// `\frac12` -> `\frac{1}{2}`, `\sqrt2` -> `\sqrt{2}`.
fn shorthand_args(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().collect();
        let (cmd, nargs) = if rest.starts_with("\\frac") {
            ("\\frac", 2)
        } else if rest.starts_with("\\sqrt") {
            ("\\sqrt", 1)
        } else {
            out.push(chars[i]);
            i += 1;
            continue;
        };
        out.push_str(cmd);
        i += cmd.chars().count();
        for _ in 0..nargs {
            match chars.get(i) {
                Some('{') | Some('[') | None => break,
                Some(c) if c.is_alphanumeric() => {
                    out.push('{');
                    out.push(*c);
                    out.push('}');
                    i += 1;
                }
                _ => break,
            }
        }
    }
    out
}

/// Are `response_answer` and `reference` the same answer (relative tolerance `tol`)?
pub fn equivalent(response_answer: &str, reference: &str, tol: f64) -> bool {
    let (a, b) = (normalize(response_answer), normalize(reference));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let (pa, pb) = (split_top(&a), split_top(&b));
    if pa.1.len() > 1 || pb.1.len() > 1 {
        return pa.0 == pb.0 && pa.1.len() == pb.1.len() && pa.1.iter().zip(&pb.1).all(|(x, y)| x == y || expr_equal(x, y, tol));
    }
    expr_equal(&a, &b, tol)
}

/// Split `(a,b]` / `a,b` at top-level commas; returns the brackets and the parts.
fn split_top(s: &str) -> ((char, char), Vec<String>) {
    let chars: Vec<char> = s.chars().collect();
    let (mut open, mut close, mut body) = (' ', ' ', s);
    if chars.len() >= 2 && "([".contains(chars[0]) && ")]".contains(chars[chars.len() - 1]) {
        // only when the brackets enclose everything
        let inner = &s[chars[0].len_utf8()..s.len() - chars[chars.len() - 1].len_utf8()];
        let mut depth = 0i32;
        let ok = inner.chars().all(|c| {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            }
            depth >= 0
        });
        if ok && depth == 0 && inner.contains(',') {
            open = chars[0];
            close = chars[chars.len() - 1];
            body = inner;
        }
    }
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in body.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    ((open, close), parts)
}

fn expr_equal(a: &str, b: &str, tol: f64) -> bool {
    let (Some(ea), Some(eb)) = (Expr::parse(a), Expr::parse(b)) else { return false };
    let mut vars = ea.vars();
    let vb = eb.vars();
    if vars != vb {
        return false;
    }
    vars.sort();
    // Fixed sample points: deterministic, and unlikely to be special for either side.
    let points: &[f64] = if vars.is_empty() { &[0.0] } else { &[0.731, 1.913, -2.417] };
    points.iter().all(|&p| {
        let env: Vec<(char, f64)> = vars.iter().enumerate().map(|(i, v)| (*v, p + 0.37 * i as f64)).collect();
        match (ea.eval(&env), eb.eval(&env)) {
            (Some(x), Some(y)) => close(x, y, tol),
            _ => false,
        }
    })
}

fn close(x: f64, y: f64, tol: f64) -> bool {
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    // Two whole numbers are equal or not: a relative tolerance would make 2036161 == 2036162.
    if x.fract() == 0.0 && y.fract() == 0.0 && x.abs() < 9.0e15 && y.abs() < 9.0e15 {
        return x == y;
    }
    x.is_finite() && y.is_finite() && (x - y).abs() <= tol.max(1e-9) * 1f64.max(x.abs()).max(y.abs())
}

/// A parsed arithmetic expression.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Num(f64),
    Var(char),
    Neg(Box<Expr>),
    Bin(char, Box<Expr>, Box<Expr>),
    Sqrt(Box<Expr>, Option<Box<Expr>>),
}

struct P<'a> {
    s: &'a [char],
    i: usize,
}

impl Expr {
    fn parse(s: &str) -> Option<Expr> {
        let chars: Vec<char> = s.chars().collect();
        let mut p = P { s: &chars, i: 0 };
        let e = p.expr()?;
        (p.i == chars.len()).then_some(e)
    }

    fn vars(&self) -> Vec<char> {
        let mut v = Vec::new();
        fn walk(e: &Expr, v: &mut Vec<char>) {
            match e {
                Expr::Var(c) => {
                    if !v.contains(c) {
                        v.push(*c)
                    }
                }
                Expr::Neg(a) => walk(a, v),
                Expr::Bin(_, a, b) => {
                    walk(a, v);
                    walk(b, v);
                }
                Expr::Sqrt(a, n) => {
                    walk(a, v);
                    if let Some(n) = n {
                        walk(n, v);
                    }
                }
                Expr::Num(_) => {}
            }
        }
        walk(self, &mut v);
        v
    }

    fn eval(&self, env: &[(char, f64)]) -> Option<f64> {
        Some(match self {
            Expr::Num(x) => *x,
            Expr::Var(c) => env.iter().find(|(v, _)| v == c)?.1,
            Expr::Neg(a) => -a.eval(env)?,
            Expr::Bin(op, a, b) => {
                let (x, y) = (a.eval(env)?, b.eval(env)?);
                match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    '/' => x / y,
                    '^' => x.powf(y),
                    _ => return None,
                }
            }
            Expr::Sqrt(a, n) => {
                let x = a.eval(env)?;
                match n {
                    Some(n) => x.powf(1.0 / n.eval(env)?),
                    None => x.sqrt(),
                }
            }
        })
    }
}

impl P<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn starts(&self, w: &str) -> bool {
        let w: Vec<char> = w.chars().collect();
        self.s.len() >= self.i + w.len() && self.s[self.i..self.i + w.len()] == w[..]
    }
    fn expr(&mut self) -> Option<Expr> {
        let mut e = self.term()?;
        loop {
            if self.eat('+') {
                e = Expr::Bin('+', Box::new(e), Box::new(self.term()?));
            } else if self.eat('-') {
                e = Expr::Bin('-', Box::new(e), Box::new(self.term()?));
            } else {
                return Some(e);
            }
        }
    }
    fn term(&mut self) -> Option<Expr> {
        let mut e = self.power()?;
        loop {
            if self.eat('*') {
                e = Expr::Bin('*', Box::new(e), Box::new(self.power()?));
            } else if self.eat('/') {
                e = Expr::Bin('/', Box::new(e), Box::new(self.power()?));
            } else if self.starts_primary() {
                e = Expr::Bin('*', Box::new(e), Box::new(self.power()?));
            } else {
                return Some(e);
            }
        }
    }
    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(c) => {
                c.is_ascii_digit()
                    || c.is_alphabetic()
                    || c == '('
                    || c == '{'
                    || c == '.'
                    || (c == '\\' && (self.starts("\\frac") || self.starts("\\sqrt") || self.starts("\\pi")))
            }
            None => false,
        }
    }
    fn power(&mut self) -> Option<Expr> {
        let base = self.unary()?;
        if self.eat('^') {
            let exp = self.unary_power()?;
            return Some(Expr::Bin('^', Box::new(base), Box::new(exp)));
        }
        Some(base)
    }
    /// The exponent binds tightly: `2^3x` is `(2^3) x`, `2^{3x}` is grouped.
    fn unary_power(&mut self) -> Option<Expr> {
        if self.eat('-') {
            return Some(Expr::Neg(Box::new(self.unary_power()?)));
        }
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            let c = self.s[self.i];
            self.i += 1;
            return Some(Expr::Num(c.to_digit(10)? as f64));
        }
        self.primary()
    }
    fn unary(&mut self) -> Option<Expr> {
        if self.eat('-') {
            return Some(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat('+') {
            return self.unary();
        }
        self.primary()
    }
    fn group(&mut self, open: char, close: char) -> Option<Expr> {
        if !self.eat(open) {
            return None;
        }
        let e = self.expr()?;
        self.eat(close).then_some(e)
    }
    fn primary(&mut self) -> Option<Expr> {
        let c = self.peek()?;
        if c.is_ascii_digit() || c == '.' {
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                self.i += 1;
            }
            let t: String = self.s[start..self.i].iter().collect();
            return t.parse().ok().map(Expr::Num);
        }
        if c == '(' {
            return self.group('(', ')');
        }
        if c == '{' {
            return self.group('{', '}');
        }
        if self.starts("\\frac") {
            self.i += 5;
            let a = self.group('{', '}')?;
            let b = self.group('{', '}')?;
            return Some(Expr::Bin('/', Box::new(a), Box::new(b)));
        }
        if self.starts("\\sqrt") {
            self.i += 5;
            let n = if self.peek() == Some('[') { Some(Box::new(self.group('[', ']')?)) } else { None };
            let a = self.group('{', '}')?;
            return Some(Expr::Sqrt(Box::new(a), n));
        }
        if self.starts("\\pi") {
            self.i += 3;
            return Some(Expr::Num(std::f64::consts::PI));
        }
        if self.starts("\\infty") {
            self.i += 6;
            return Some(Expr::Num(f64::INFINITY));
        }
        if c.is_alphabetic() {
            self.i += 1;
            return Some(Expr::Var(c));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_forms() {
        let yes = [
            ("\\boxed{\\frac{1}{2}}", "0.5"),
            ("\\dfrac{1}{2}", "\\frac12"),
            ("\\tfrac{3}{4}", "0.75"),
            ("5.0", "5"),
            ("5.00", "\\boxed{5}"),
            ("1,000", "1000"),
            ("90^\\circ", "90"),
            ("50\\%", "50"),
            ("12\\text{ cm}", "12"),
            ("x = 7", "7"),
            ("\\left( 1, 2 \\right)", "(1,2)"),
            ("2x+1", "1+2x"),
            ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt2}"),
            ("2\\pi", "2*\\pi"),
            ("3\\sqrt{3}", "\\sqrt{27}"),
            ("x^2-1", "(x-1)(x+1)"),
            ("\\$18.90", "18.9"),
            ("\\text{(C)}", "(C)"),
            ("(-\\infty, 3]", "(-\\infty,3]"),
            ("\\sqrt[3]{8}", "2"),
            ("-\\frac{3}{2}", "-1.5"),
            // real MATH test answers written with separators, against what a model writes
            ("4{,}036", "4036"),
            ("90{,}900{,}909", "90900909"),
            ("8{,}880", "8,880"),
            ("10{,}000", "10000"),
            ("371,\\!043,\\!400", "371043400"),
            ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
            ("\\$15,\\!000", "15000"),
            ("\\frac{12}{5,\\!525}", "\\frac{12}{5525}"),
            ("x \\le 3", "x \\leq 3"),
            ("x \\geq -2", "x\\ge-2"),
            ("-2", "\\boxed{-2}"),
        ];
        for (a, b) in yes {
            assert!(equivalent(a, b, 1e-6), "{a} should equal {b} (normalized {:?} vs {:?})", normalize(a), normalize(b));
        }
        let no = [
            ("\\frac{1}{3}", "0.33"),
            ("2x", "2y"),
            ("(1,2)", "(2,1)"),
            ("[1,2]", "(1,2)"),
            ("12", "21"),
            ("", "1"),
            ("x^2", "2x"),
            ("\\text{(A)}", "(B)"),
            ("x \\le 3", "x \\ge 3"),
            ("4{,}036", "4{,}037"),
        ];
        for (a, b) in no {
            assert!(!equivalent(a, b, 1e-6), "{a} should differ from {b}");
        }
    }

    #[test]
    fn never_panics_on_junk() {
        for s in ["\\frac{", "}{", "^^", "\\sqrt[", "((((", "\\boxed{", "1/0", "0/0", "é∂ƒ", "\\text{"] {
            let _ = equivalent(s, s, 1e-6);
            let _ = equivalent(s, "1", 1e-6);
        }
        // identical text is equal even when it does not evaluate
        assert!(equivalent("1/0", "1/0", 1e-6));
        assert!(!equivalent("0/0", "1", 1e-6));
    }

    /// Pairs built from the boxed answers of the committed MATH samples (500 real solutions):
    /// each answer against rewrites a grader must accept (dfrac/frac, \left/\right, spaces,
    /// trailing zeros, the decimal of a simple fraction, a boxed response sentence), and
    /// against answers it must reject (a perturbed answer; another problem's different answer).
    #[test]
    fn real_math_answers_and_their_rewrites() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/math");
        let mut answers = Vec::new();
        for f in ["test_sample.jsonl", "train_sample.jsonl"] {
            for line in std::fs::read_to_string(root.join(f)).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(a) = crate::task::math::last_boxed(v["solution"].as_str().unwrap()) {
                    answers.push(a);
                }
            }
        }
        assert!(answers.len() >= 450, "{} boxed answers", answers.len());
        let (mut yes, mut no) = (Vec::new(), Vec::new());
        for (i, a) in answers.iter().enumerate() {
            yes.push((format!("so the answer is $\\boxed{{{a}}}$."), a.clone()));
            if a.contains("\\frac") {
                yes.push((a.replace("\\frac", "\\dfrac"), a.clone()));
            }
            if a.contains("\\dfrac") {
                yes.push((a.replace("\\dfrac", "\\frac"), a.clone()));
            }
            if a.contains('(') && a.contains(')') && !a.contains("\\left") {
                yes.push((a.replace('(', "\\left(").replace(')', "\\right)"), a.clone()));
            }
            if a.contains(',') || a.contains('+') || a.contains('=') {
                yes.push((a.replace(',', ", ").replace('+', " + ").replace('=', " = "), a.clone()));
            }
            if let Ok(n) = a.parse::<i64>() {
                yes.push((format!("{n}.00"), a.clone()));
                no.push((format!("{}", n + 1), a.clone()));
                no.push((format!("{}", n * 10 + 3), a.clone()));
            }
            if let Some((p, q)) = a.strip_prefix("\\frac{").and_then(|r| r.strip_suffix('}')).and_then(|r| r.split_once("}{"))
                && let (Ok(p), Ok(q)) = (p.parse::<i64>(), q.parse::<i64>())
            {
                if [2, 4, 5, 8, 10, 20, 25].contains(&q) {
                    yes.push((format!("{}", p as f64 / q as f64), a.clone()));
                }
                no.push((format!("\\frac{{{}}}{{{q}}}", p + 1), a.clone()));
            }
            // another problem's answer that differs after normalisation
            let b = &answers[(i * 7 + 13) % answers.len()];
            if normalize(a) != normalize(b) {
                no.push((b.clone(), a.clone()));
            }
        }
        assert!(yes.len() >= 200 && no.len() >= 200, "{} equivalent, {} different pairs", yes.len(), no.len());
        eprintln!("{} answers: {} equivalent pairs, {} different pairs", answers.len(), yes.len(), no.len());
        let wrong_yes: Vec<_> = yes.iter().filter(|(r, a)| !equivalent(r, a, 1e-6)).collect();
        let wrong_no: Vec<_> = no.iter().filter(|(r, a)| equivalent(r, a, 1e-6)).collect();
        assert!(wrong_yes.is_empty(), "{} of {} equivalent pairs rejected: {wrong_yes:#?}", wrong_yes.len(), yes.len());
        assert!(wrong_no.is_empty(), "{} of {} different pairs accepted: {wrong_no:#?}", wrong_no.len(), no.len());
    }
}
