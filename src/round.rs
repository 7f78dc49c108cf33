//! Floats as mpo writes them into its records: 6 decimals, a value that rounds to zero from
//! below as 0 (not -0), a non-finite one as `null` (or 0 in a field that has no null). The
//! rounding happens in the serializer (`#[serde(serialize_with = ...)]` on each such field), so
//! rows keep full precision in memory and every writer rounds the same way.

use serde::Serializer;

/// `x` rounded to 6 decimals; `None` when it is not finite.
pub fn round6(x: f64) -> Option<f64> {
    // `+ 0.0` writes a value that rounds to zero from below as 0, not -0
    x.is_finite().then(|| (x * 1e6).round() / 1e6 + 0.0)
}

/// `x` when it is finite.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Serializer of an `Option<f64>` field: 6 decimals, `null` when absent or not finite.
pub fn six<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match x.and_then(round6) {
        Some(v) => s.serialize_f64(v),
        None => s.serialize_none(),
    }
}

/// Serializer of an `f64` field that is never `null`: 6 decimals, 0 when not finite.
pub fn six_or_zero<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round6(*x).unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Row {
        #[serde(serialize_with = "six")]
        a: Option<f64>,
        #[serde(serialize_with = "six")]
        b: Option<f64>,
        #[serde(serialize_with = "six_or_zero")]
        c: f64,
        #[serde(serialize_with = "six_or_zero")]
        d: f64,
    }

    #[test]
    fn floats_are_written_to_six_decimals_and_never_as_nan_or_minus_zero() {
        assert_eq!(round6(0.123_456_789), Some(0.123457));
        assert!(round6(-1e-9).unwrap().is_sign_positive(), "written as 0, not -0");
        assert_eq!(round6(f64::NAN), None);
        let row = Row { a: Some(0.123_456_789), b: Some(f64::NAN), c: -1e-9, d: f64::INFINITY };
        assert_eq!(serde_json::to_string(&row).unwrap(), r#"{"a":0.123457,"b":null,"c":0.0,"d":0.0}"#);
    }
}
