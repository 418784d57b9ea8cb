//! Text to token ids and back, through the `tokenizers` crate (Hugging Face's tokenizer
//! library, built without its network and C features).
//!
//! Two sources:
//!
//! * a Hugging Face `tokenizer.json` ([`Tokenizer::from_file`]), taken as it is: its
//!   post-processor adds BOS where the model wants one;
//! * the vocabulary a GGUF file carries ([`Tokenizer::from_gguf`]). For
//!   `tokenizer.ggml.model = "gpt2"` (byte-level BPE: GPT-2, SmolLM2, Llama 3, Qwen) the
//!   keys are `tokenizer.ggml.tokens` (strings, index = id, in byte-level form: a space is
//!   `Ġ`), `tokenizer.ggml.merges` (`"left right"` strings, highest priority first),
//!   `tokenizer.ggml.token_type` (1 normal, 3 control, 4 user-defined, ...),
//!   `tokenizer.ggml.bos_token_id` / `eos_token_id` and `tokenizer.ggml.add_bos_token`.
//!   These become a BPE model with GPT-2's byte-level pre-tokenizer and decoder; control
//!   tokens become special tokens (never split, dropped by `decode(.., true)`), user-defined
//!   ones added tokens. `tokenizer.ggml.pre` picks the split before the byte-level step, as
//!   llama.cpp and the models' `tokenizer.json` do ([`pre_tokenizer`]).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A tokenizer: a `tokenizers::Tokenizer` plus the BOS/EOS handling a GGUF asks for.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended by [`Tokenizer::encode`] with `add_special = true` (GGUF's
    /// `add_bos_token`; a `tokenizer.json` does this in its post-processor instead).
    add_bos: Option<u32>,
    /// Appended likewise (GGUF's `add_eos_token`).
    add_eos: Option<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// A Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer { inner, add_bos: None, add_eos: None })
    }

    /// Wraps a `tokenizers::Tokenizer` as it is.
    pub fn from_tokenizers(inner: tokenizers::Tokenizer) -> Tokenizer {
        Tokenizer { inner, add_bos: None, add_eos: None }
    }

    /// The tokenizer a GGUF file carries (module doc). Only `tokenizer.ggml.model = "gpt2"`
    /// is supported.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let get = |k: &str| file.get(k).ok_or_else(|| Error::Tokenizer(format!("`{k}` is missing")));
        let model = get("tokenizer.ggml.model")?.as_str().unwrap_or_default();
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!("tokenizer.ggml.model `{model}` is not supported (gpt2)")));
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            let items = get(k)?.as_array().ok_or_else(|| Error::Tokenizer(format!("`{k}` is not an array")))?;
            items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::Tokenizer(format!("`{k}` is not an array of strings")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(items) => items.iter().map(|v| v.as_f64().unwrap_or(1.0) as i64).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::Tokenizer(format!("{} token types for {} tokens", types.len(), tokens.len())));
        }
        let pre = file.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");

        let mut tok = byte_level_bpe(&tokens, &merges, pre)?;
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.clone(), false).normalized(false))
            .collect();
        tok.inner.add_special_tokens(&special);
        tok.inner.add_tokens(&user);

        let id = |k: &str| file.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let flag = |k: &str| file.get(k).and_then(Value::as_bool).unwrap_or(false);
        tok.add_bos = id("tokenizer.ggml.bos_token_id").filter(|_| flag("tokenizer.ggml.add_bos_token"));
        tok.add_eos = id("tokenizer.ggml.eos_token_id").filter(|_| flag("tokenizer.ggml.add_eos_token"));
        Ok(tok)
    }

    /// Token ids of `text`; with `add_special`, the model's BOS/EOS where it wants them.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && let Some(bos) = self.add_bos {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && let Some(eos) = self.add_eos {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// The text of `ids`; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// A byte-level BPE tokenizer (GPT-2's scheme) from a vocabulary in byte-level form (index
/// = id) and merges (`"left right"`, highest priority first).
pub fn byte_level_bpe(tokens: &[String], merges: &[String], pre: &str) -> Result<Tokenizer> {
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("merge `{m}` is not two tokens separated by a space")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(Tokenizer { inner, add_bos: None, add_eos: None })
}

/// Llama 3's split (its `tokenizer.json` and llama.cpp's `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2/3's split (as Llama 3's, with single digits).
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer of a `tokenizer.ggml.pre` value:
///
/// * `default`, `gpt2`: GPT-2's byte-level step with its own regex;
/// * `smollm`, `starcoder`, `refact`: single digits split off first, then GPT-2's
///   (SmolLM2's `tokenizer.json`: `Digits(individual)`, `ByteLevel`);
/// * `llama-bpe`, `qwen2`: the model's regex split, then byte-level without a regex.
///
/// Others are an error rather than a silently different tokenization.
pub fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = || ByteLevel::default().add_prefix_space(false);
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(tok_err)?;
        Ok(Sequence::new(vec![split.into(), byte_level().use_regex(false).into()]).into())
    };
    match pre {
        "default" | "gpt2" => Ok(byte_level().into()),
        "smollm" | "starcoder" | "refact" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level().into()]).into())
        }
        "llama-bpe" | "llama3" => split(LLAMA3_PATTERN),
        "qwen2" => split(QWEN2_PATTERN),
        other => Err(Error::Tokenizer(format!(
            "tokenizer.ggml.pre `{other}` is not supported (default, gpt2, smollm, starcoder, refact, llama-bpe, qwen2)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's byte-to-character table (printable bytes stand for themselves, the others
    /// map to U+0100 on), the form byte-level vocabularies are written in.
    fn byte_chars() -> Vec<String> {
        let mut printable: Vec<u32> = (b'!'..=b'~').chain(0xa1..=0xac).chain(0xae..=0xff).map(u32::from).collect();
        printable.sort();
        let mut next = 256;
        (0..256u32)
            .map(|b| {
                if printable.binary_search(&b).is_ok() {
                    char::from_u32(b).unwrap().to_string()
                } else {
                    next += 1;
                    char::from_u32(next - 1).unwrap().to_string()
                }
            })
            .collect()
    }

    /// 256 byte tokens, then "he", "ll", "hell", "hello", "Ġw", "Ġwor", "Ġworld", "<|end|>".
    pub(crate) fn tiny_vocab() -> (Vec<String>, Vec<String>) {
        let mut tokens = byte_chars();
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|end|>".into());
        (tokens, merges.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b' ' as usize], "Ġ");
        assert_eq!(t[b'\n' as usize], "Ċ");
        assert_eq!(t[b'a' as usize], "a");
    }

    #[test]
    fn bpe_merges_and_round_trip() {
        let (tokens, merges) = tiny_vocab();
        let tok = byte_level_bpe(&tokens, &merges, "gpt2").unwrap();
        let id = |s: &str| tokens.iter().position(|t| t == s).unwrap() as u32;
        let ids = tok.encode("hello world", false).unwrap();
        assert_eq!(ids, [id("hello"), id("Ġworld")]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "hello world");
        // Bytes without merges, non-ASCII included, round-trip through the byte tokens.
        let text = "héllo, 12 wörld!\n";
        assert_eq!(tok.decode(&tok.encode(text, false).unwrap(), false).unwrap(), text);
    }

    #[test]
    fn smollm_splits_digits() {
        let (mut tokens, mut merges) = tiny_vocab();
        tokens.push("12".into());
        merges.push("1 2".into());
        let gpt2 = byte_level_bpe(&tokens, &merges, "gpt2").unwrap();
        let smollm = byte_level_bpe(&tokens, &merges, "smollm").unwrap();
        assert_eq!(gpt2.encode("12", false).unwrap().len(), 1);
        assert_eq!(smollm.encode("12", false).unwrap().len(), 2);
        assert!(pre_tokenizer("qwen2").is_ok() && pre_tokenizer("llama-bpe").is_ok());
        assert!(matches!(pre_tokenizer("mystery"), Err(Error::Tokenizer(_))));
    }
}
