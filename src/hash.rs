//! Content hashes, one room for every caller: sha256 as lowercase hex over bytes or over
//! canonical JSON (run ids, input files, caches and their keys, checkpoints, downloads).

use serde_json::Value as J;
use sha2::{Digest, Sha256};

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    hex(&Sha256::digest(bytes.as_ref()))
}

/// The sha256 of a JSON value in its canonical form ([`canonical_json`]).
pub fn sha256_json(v: &J) -> String {
    sha256_hex(canonical_json(v))
}

/// JSON with object keys sorted at every level (the form that is hashed).
pub fn canonical_json(v: &J) -> String {
    fn sort(v: &J) -> J {
        match v {
            J::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                let mut m = serde_json::Map::new();
                for k in keys {
                    m.insert(k.clone(), sort(&o[k]));
                }
                J::Object(m)
            }
            J::Array(a) => J::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(v)).expect("json serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let v: J = serde_json::from_str(r#"{"b": 1, "a": {"d": 2, "c": [3, {"f": 1, "e": 0}]}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":[3,{"e":0,"f":1}],"d":2},"b":1}"#);
    }

    #[test]
    fn sha256_of_nothing_is_the_published_one() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_json(&serde_json::json!({"b": 1, "a": 2})), sha256_hex(r#"{"a":2,"b":1}"#));
    }
}
