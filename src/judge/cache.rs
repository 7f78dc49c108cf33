//! The content-addressed judge cache: `judge-cache/<aa>/<sha256>.json`, one file per request.
//!
//! The key is the sha256 of the canonical JSON of the request; each entry records which judge
//! answered. A cached judge only accepts answers from its own identity (a changed judge asks
//! again); a replay judge accepts the recorded answer, so a replayed run gets the same answers
//! bit for bit. Files are written atomically; a corrupt file reads as a miss and is replaced.

use std::path::{Path, PathBuf};

use super::{Judge, JudgeError, JudgeRequest, JudgeResponse};

/// The cache key of a request.
pub fn key(req: &JudgeRequest) -> String {
    let v = serde_json::to_value(req).unwrap_or_default();
    crate::hash::sha256_json(&v)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    judge: String,
    request: JudgeRequest,
    response: JudgeResponse,
}

/// A judge behind a cache directory. With no inner judge it is a replay judge: a miss is an
/// error.
pub struct CachedJudge<'a> {
    inner: Option<Box<dyn Judge + 'a>>,
    dir: PathBuf,
    identity: String,
    /// Replay only answers recorded under `identity`.
    strict: bool,
    pub hits: u64,
    pub misses: u64,
}

impl<'a> CachedJudge<'a> {
    pub fn new(inner: Box<dyn Judge + 'a>, dir: &Path) -> Self {
        let identity = inner.identity();
        CachedJudge { inner: Some(inner), dir: dir.to_path_buf(), identity, strict: false, hits: 0, misses: 0 }
    }

    /// Answer only from `dir`, whichever judge recorded the answers.
    pub fn replay(dir: &Path) -> Self {
        CachedJudge {
            inner: None,
            dir: dir.to_path_buf(),
            identity: format!("replay:{}", dir.display()),
            strict: false,
            hits: 0,
            misses: 0,
        }
    }

    /// Answer only from `dir`, and only answers recorded by the judge `identity` (rubric
    /// tests: a recording made with another judge is a miss, never a stand-in).
    pub fn replay_as(dir: &Path, identity: &str) -> Self {
        let mut j = Self::replay(dir);
        j.identity = identity.to_string();
        j.strict = true;
        j
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    fn lookup(&self, key: &str) -> Option<JudgeResponse> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        let e: Entry = serde_json::from_str(&text).ok()?;
        if (self.inner.is_some() || self.strict) && e.judge != self.identity {
            return None;
        }
        Some(JudgeResponse { cached: true, ..e.response })
    }

    fn store(&self, key: &str, req: &JudgeRequest, resp: &JudgeResponse) -> std::io::Result<()> {
        let e = Entry { judge: self.identity.clone(), request: req.clone(), response: resp.clone() };
        let text = serde_json::to_string_pretty(&e).map_err(std::io::Error::other)?;
        crate::fsx::write_atomic(&self.path(key), text.as_bytes())
    }
}

impl Judge for CachedJudge<'_> {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn transport(&self) -> Option<super::Transport> {
        self.inner.as_ref().and_then(|j| j.transport())
    }

    fn complete(&mut self, requests: &[JudgeRequest]) -> Vec<Result<JudgeResponse, JudgeError>> {
        let keys: Vec<String> = requests.iter().map(key).collect();
        let mut out: Vec<Option<Result<JudgeResponse, JudgeError>>> = keys.iter().map(|k| self.lookup(k).map(Ok)).collect();
        let missing: Vec<usize> = (0..requests.len()).filter(|&i| out[i].is_none()).collect();
        self.hits += (requests.len() - missing.len()) as u64;
        self.misses += missing.len() as u64;
        if !missing.is_empty() {
            match self.inner.as_mut() {
                None => {
                    for &i in &missing {
                        out[i] = Some(Err(JudgeError::CacheMiss { key: keys[i].clone() }));
                    }
                }
                Some(inner) => {
                    let batch: Vec<JudgeRequest> = missing.iter().map(|&i| requests[i].clone()).collect();
                    let answers = inner.complete(&batch);
                    for (&i, a) in missing.iter().zip(answers) {
                        if let Ok(resp) = &a
                            && let Err(e) = self.store(&keys[i], &requests[i], resp)
                        {
                            // A cache that cannot be written is an error, not a silent loss of
                            // replayability.
                            out[i] = Some(Err(JudgeError::Config { message: format!("cannot write the judge cache: {e}") }));
                            continue;
                        }
                        out[i] = Some(a);
                    }
                }
            }
        }
        out.into_iter().map(|o| o.expect("every slot filled")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::judge::scripted::ScriptedJudge;

    fn counting() -> impl Judge {
        ScriptedJudge::new("test:counting", |r, _| {
            Ok(JudgeResponse { prompt_tokens: 3, completion_tokens: 2, ..JudgeResponse::answer(format!("answer to {}", r.prompt)) })
        })
    }

    fn req(p: &str) -> JudgeRequest {
        JudgeRequest { prompt: p.into(), max_tokens: 8, temperature: 0.0, seed: 0, ..Default::default() }
    }

    #[test]
    fn caches_and_replays_exactly() {
        let dir = std::env::temp_dir().join(format!("mpo-cache-{}", std::process::id()));
        let mut j = CachedJudge::new(Box::new(counting()), &dir);
        let a = j.complete(&[req("a"), req("b")]);
        let b = j.complete(&[req("b"), req("a"), req("c")]);
        assert_eq!((j.hits, j.misses), (2, 3));
        assert_eq!(a[0].as_ref().unwrap().text, b[1].as_ref().unwrap().text);
        assert!(b[0].as_ref().unwrap().cached);
        let mut replay = CachedJudge::replay(&dir);
        let r = replay.complete(&[req("a"), req("zzz")]);
        assert_eq!(r[0].as_ref().unwrap().text, "answer to a");
        assert!(matches!(r[1], Err(JudgeError::CacheMiss { .. })));
        // a different live judge does not take another judge's answers: it asks again
        let other_judge = ScriptedJudge::new("test:other", |_, _| Ok(JudgeResponse::answer("other")));
        let mut other = CachedJudge::new(Box::new(other_judge), &dir);
        assert_eq!(other.complete(&[req("a")])[0].as_ref().unwrap().text, "other");
        let _ = std::fs::remove_dir_all(dir);
    }
}
