//! A judge whose answers come from a function of the request and the call's number (counted
//! from 0 across batches): the one test double for code that talks to judges. Real runs never
//! use it; a mock HTTP server (`bench/stub.rs`) tests the network path instead.

use super::{Judge, JudgeError, JudgeRequest, JudgeResponse};

pub struct ScriptedJudge<F> {
    name: String,
    answer: F,
    /// Requests answered so far.
    pub calls: usize,
}

impl<F> ScriptedJudge<F>
where
    F: FnMut(&JudgeRequest, usize) -> Result<JudgeResponse, JudgeError>,
{
    /// A judge named `name` (its identity in cache keys) answering with `answer`.
    pub fn new(name: &str, answer: F) -> Self {
        ScriptedJudge { name: name.to_string(), answer, calls: 0 }
    }
}

impl<F> Judge for ScriptedJudge<F>
where
    F: FnMut(&JudgeRequest, usize) -> Result<JudgeResponse, JudgeError>,
{
    fn identity(&self) -> String {
        self.name.clone()
    }

    fn complete(&mut self, requests: &[JudgeRequest]) -> Vec<Result<JudgeResponse, JudgeError>> {
        requests
            .iter()
            .map(|r| {
                let a = (self.answer)(r, self.calls);
                self.calls += 1;
                a
            })
            .collect()
    }
}
