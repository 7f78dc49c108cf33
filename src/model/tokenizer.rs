//! Tokenizers and chat templates.
//!
//! A model's tokenizer is a `tokenizers::Tokenizer`: read from an HF `tokenizer.json`, or
//! rebuilt from GGUF metadata (vocab, merges, token types, the pre-tokenizer name) into the
//! same byte-level BPE. The chat template is the model's own Jinja template rendered with
//! minijinja (HF's settings: trimmed blocks, Python-style methods).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::gguf::{Gguf, MetaValue};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF tokenizer: {0}")]
    Gguf(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    #[error("cannot read `{path}`: {message}")]
    Io { path: String, message: String },
    #[error("chat template: {0}")]
    Template(String),
}

/// One chat message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// A tokenizer with the special tokens and chat template generation needs.
#[derive(Clone)]
pub struct Tok {
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: u32,
    /// Tokens that end a response (the EOS and end-of-turn markers).
    pub stop_ids: Vec<u32>,
    pub chat_template: Option<String>,
    pub bos_text: String,
    pub eos_text: String,
}

/// llama.cpp's pre-tokenizer regexes for the BPE vocabularies mpo reads from GGUF.
fn pre_tokenizer_regexes(pre: &str) -> Option<Vec<&'static str>> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => vec![r"\p{N}", GPT2],
        "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" => vec![GPT2],
        "llama3" | "llama-bpe" | "llama-v3" | "dbrx" | "smaug-bpe" => vec![LLAMA3],
        "qwen2" | "qwen35" | "hunyuan" => vec![QWEN2],
        _ => return None,
    })
}

impl Tok {
    /// Rebuild the tokenizer of a GGUF file (byte-level BPE vocabularies, `tokenizer.ggml.model
    /// = gpt2`).
    pub fn from_gguf(g: &Gguf) -> Result<Tok, TokenizerError> {
        let err = |m: String| TokenizerError::Gguf(m);
        let model = g.meta_str("tokenizer.ggml.model").map_err(|e| err(e.to_string()))?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported from GGUF (only byte-level BPE, `gpt2`); use the model's Hugging Face directory with tokenizer.json"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, TokenizerError> {
            g.meta(key)
                .and_then(MetaValue::as_array)
                .ok_or_else(|| err(format!("`{key}` is missing")))?
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| err(format!("`{key}` holds a non-string"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| err(format!("bad merge `{m}`"))))
            .collect::<Result<_, _>>()?;
        let types: Vec<i64> = g
            .meta("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().map(|x| x as i64).unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| err(e.to_string()))?;
        let mut tk = Tokenizer::new(bpe);
        let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("default");
        let regexes = pre_tokenizer_regexes(pre).ok_or_else(|| {
            err(format!("pre-tokenizer `{pre}` is not known to mpo; use the model's Hugging Face directory with tokenizer.json"))
        })?;
        let mut seq: Vec<PreTokenizerWrapper> = Vec::new();
        for r in regexes {
            let split =
                Split::new(SplitPattern::Regex(r.to_string()), SplitDelimiterBehavior::Isolated, false).map_err(|e| err(e.to_string()))?;
            seq.push(split.into());
        }
        seq.push(ByteLevel::new(false, true, false).into());
        tk.with_pre_tokenizer(Some(Sequence::new(seq)));
        tk.with_decoder(Some(ByteLevelDecoder::default()));
        // Control (3) and user-defined (4) tokens are matched whole, never split by BPE.
        let specials: Vec<AddedToken> =
            tokens.iter().zip(&types).filter(|(_, t)| **t == 3 || **t == 4).map(|(s, t)| AddedToken::from(s.clone(), *t == 3)).collect();
        tk.add_special_tokens(&specials);
        let id = |k: &str| g.meta(k).and_then(MetaValue::as_u64).map(|v| v as u32);
        let eos = id("tokenizer.ggml.eos_token_id").ok_or_else(|| err("`tokenizer.ggml.eos_token_id` is missing".into()))?;
        let bos = id("tokenizer.ggml.bos_token_id");
        let pad = id("tokenizer.ggml.padding_token_id").unwrap_or(eos);
        for (what, i) in [("eos", Some(eos)), ("bos", bos), ("padding", Some(pad))] {
            if let Some(i) = i.filter(|&i| i as usize >= tokens.len()) {
                return Err(err(format!("the {what} token id {i} is outside the vocabulary of {} tokens", tokens.len())));
            }
        }
        let text = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize)).cloned().unwrap_or_default();
        let mut stop_ids = vec![eos];
        for name in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<end_of_turn>"] {
            if let Some(&i) = tokens.iter().position(|t| t == name).map(|p| p as u32).as_ref()
                && !stop_ids.contains(&i)
            {
                stop_ids.push(i);
            }
        }
        let chat_template = g.meta("tokenizer.chat_template").and_then(MetaValue::as_str).map(str::to_string);
        Ok(Tok { inner: tk, bos, eos, pad, stop_ids, chat_template, bos_text: text(bos), eos_text: text(Some(eos)) })
    }

    /// Read `tokenizer.json` (+ `tokenizer_config.json` for the chat template and special
    /// tokens, `generation_config.json` for extra end tokens) from an HF model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Tok, TokenizerError> {
        let read = |name: &str| -> Result<Option<serde_json::Value>, TokenizerError> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let t =
                std::fs::read_to_string(&p).map_err(|e| TokenizerError::Io { path: p.display().to_string(), message: e.to_string() })?;
            serde_json::from_str(&t).map(Some).map_err(|e| TokenizerError::Io { path: p.display().to_string(), message: e.to_string() })
        };
        let inner = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let cfg = read("tokenizer_config.json")?.unwrap_or_default();
        let gen_cfg = read("generation_config.json")?.unwrap_or_default();
        let token_text = |v: &serde_json::Value| -> Option<String> {
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                _ => None,
            }
        };
        let eos_text = cfg.get("eos_token").and_then(token_text).unwrap_or_default();
        let bos_text = cfg.get("bos_token").and_then(token_text).unwrap_or_default();
        let eos = inner
            .token_to_id(&eos_text)
            .or_else(|| {
                gen_cfg.get("eos_token_id").and_then(|v| v.as_u64().or_else(|| v.get(0).and_then(|x| x.as_u64()))).map(|v| v as u32)
            })
            .ok_or_else(|| TokenizerError::Tokenizers("no eos token in tokenizer_config.json or generation_config.json".into()))?;
        let bos = inner.token_to_id(&bos_text);
        let pad = cfg.get("pad_token").and_then(token_text).and_then(|t| inner.token_to_id(&t)).unwrap_or(eos);
        let mut stop_ids = vec![eos];
        if let Some(ids) = gen_cfg.get("eos_token_id").and_then(|v| v.as_array()) {
            stop_ids.extend(ids.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).filter(|x| *x != eos));
        }
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|s| s.as_str()).map(str::to_string)),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        Ok(Tok { inner, bos, eos, pad, stop_ids, chat_template, bos_text, eos_text })
    }

    /// A small byte-level BPE tokenizer (the 256 byte symbols, three merges, the ChatML
    /// specials) with SmolLM2's chat template: the tokenizer of the tiny random test model.
    pub fn tiny() -> Tok {
        let mut vocab = tokenizers::models::bpe::Vocab::new();
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        // all 256 byte-level symbols
        // The alphabet is a HashSet: sort it, or ids would change from process to process.
        let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        tokens.extend(alphabet.iter().map(|c| c.to_string()));
        let merges = vec![("h".to_string(), "e".to_string()), ("l".to_string(), "l".to_string()), ("he".to_string(), "ll".to_string())];
        for (a, b) in &merges {
            tokens.push(format!("{a}{b}"));
        }
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().expect("static tokenizer");
        let mut tk = Tokenizer::new(bpe);
        let seq: Vec<PreTokenizerWrapper> = vec![
            Split::new(SplitPattern::Regex(r"\p{N}".into()), SplitDelimiterBehavior::Isolated, false).expect("static tokenizer").into(),
            ByteLevel::new(false, true, true).into(),
        ];
        tk.with_pre_tokenizer(Some(Sequence::new(seq)));
        tk.with_decoder(Some(ByteLevelDecoder::default()));
        tk.add_special_tokens(&[
            AddedToken::from("<|endoftext|>", true),
            AddedToken::from("<|im_start|>", true),
            AddedToken::from("<|im_end|>", true),
        ]);
        let tmpl = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        Tok {
            inner: tk,
            bos: Some(1),
            eos: 2,
            pad: 2,
            stop_ids: vec![2, 0],
            chat_template: Some(tmpl.into()),
            bos_text: "<|im_start|>".into(),
            eos_text: "<|im_end|>".into(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; special-token strings in it (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Render the chat template (or `override_template`) for `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        override_template: Option<&str>,
    ) -> Result<String, TokenizerError> {
        let tmpl = override_template
            .or(self.chat_template.as_deref())
            .ok_or_else(|| TokenizerError::Template("the model has no chat template; give one with `policy.chat_template`".into()))?;
        let mut env = crate::template::environment();
        // HF templates call raise_exception() to reject bad message orders.
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let t = env.template_from_str(tmpl).map_err(|e| TokenizerError::Template(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_text,
            eos_token => self.eos_text,
        })
        .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn tiny_tok() -> Tok {
        Tok::tiny()
    }

    #[test]
    fn round_trips_text_and_keeps_specials_whole() {
        let t = tiny_tok();
        for s in ["hello world", "Ünïcödé ✓ 123", "  spaces\tand\nlines ", ""] {
            let ids = t.encode(s).unwrap();
            assert_eq!(t.inner.decode(&ids, false).unwrap(), s);
        }
        let ids = t.encode("<|im_start|>hello<|im_end|>").unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(t.decode(&ids).unwrap(), "hello");
        // digits are split individually (the smollm pre-tokenizer)
        assert_eq!(t.encode("12").unwrap().len(), 2);
    }

    #[test]
    fn chat_template_renders_like_hf() {
        let t = tiny_tok();
        let s = t.apply_chat_template(&[Message::new("user", "2+2?")], true, None).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
