//! Model configuration: the shapes and constants a decode engine needs, read from a Hugging
//! Face `config.json` ([`ModelConfig::from_hf_json`]), from GGUF metadata
//! ([`crate::gguf::model`]), or taken from a named preset of a real model
//! ([`ModelConfig::preset`]).
//!
//! Two architectures are run, both pre-norm decoders with RMSNorm, rotary embeddings
//! (rotate-half convention), grouped-query attention without biases and a SiLU-gated MLP:
//!
//! * `LlamaForCausalLM` ([`Arch::Llama`]): `head_dim` defaults to `hidden_size /
//!   num_attention_heads`; Llama 3.1+ scale the rotary frequencies (`rope_scaling` of type
//!   `llama3`, [`RopeScaling::Llama3`]);
//! * `Qwen3ForCausalLM` ([`Arch::Qwen3`]): `head_dim` is its own field (128 for every Qwen3,
//!   so `num_heads · head_dim` need not equal `hidden_size`), and q and k are RMSNormed per
//!   head (weights `q_norm`, `k_norm` of `[head_dim]`) before the rotary embedding.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The decoder architecture: which tensors a layer has and how attention is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM2, ...).
    Llama,
    /// `Qwen3ForCausalLM` (dense Qwen3): per-head RMSNorm of q and k.
    Qwen3,
}

impl Arch {
    /// The Hugging Face class name (`architectures[0]` in `config.json`).
    pub const fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The GGUF `general.architecture` value (also the prefix of its metadata keys).
    pub const fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// Whether each layer RMSNorms q and k per head (`q_norm`, `k_norm` weights).
    pub const fn has_qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3)
    }

    /// The architecture of a Hugging Face class name or `model_type`.
    pub fn from_hf(name: &str) -> Result<Arch> {
        match name {
            "LlamaForCausalLM" | "llama" => Ok(Arch::Llama),
            "Qwen3ForCausalLM" | "qwen3" => Ok(Arch::Qwen3),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }
}

/// How the rotary inverse frequencies are modified ([`crate::rope::inv_freq`] applies it).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i / head_dim)`.
    None,
    /// Llama 3.1's scaling (HF `rope_type: "llama3"`): frequencies whose wavelength is
    /// longer than `original_max_position_embeddings / low_freq_factor` are divided by
    /// `factor`, those shorter than `... / high_freq_factor` are kept, and the band between
    /// is interpolated smoothly.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// Per-frequency divisors, `inv_freq[i] / factors[i]` (llama.cpp's `rope_freqs.weight`
    /// tensor, which is how a GGUF converted from a Llama 3.1 checkpoint stores the scaling
    /// above); `head_dim / 2` entries.
    FreqFactors(Vec<f32>),
}

/// What a decode engine needs to know about a model. Every field is checked by
/// [`ModelConfig::validate`], which every constructor runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Vocabulary size V (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// MLP intermediate size I (gate and up project H -> I, down I -> H).
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention: query head h reads KV head
    /// `h / (num_heads / num_kv_heads)`).
    pub num_kv_heads: usize,
    /// Dimension of one head (even: the rotary embedding pairs its two halves).
    pub head_dim: usize,
    /// RMSNorm epsilon (all norms of the model, including Qwen3's q/k norms).
    pub rms_norm_eps: f32,
    /// RoPE base theta.
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The longest context the model was trained for (the RoPE table's default length).
    pub max_position_embeddings: usize,
    /// The LM head is the embedding matrix (no `lm_head.weight` tensor).
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation (Llama 3.1 lists several).
    pub eos_token_ids: Vec<u32>,
}

/// The names [`ModelConfig::preset`] knows.
pub const PRESET_NAMES: &[&str] = &["qwen3-0.6b", "llama-3.2-1b", "llama-3-8b", "smollm2-135m"];

impl ModelConfig {
    /// Width of the query projection output, `num_heads · head_dim`.
    pub const fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key (and of the value) projection output, `num_kv_heads · head_dim`.
    pub const fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Query heads per KV head.
    pub const fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Number of parameters (the embedding counted once when tied).
    pub fn num_params(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let attn = h * self.q_dim() + 2 * h * self.kv_dim() + self.q_dim() * h;
        let qk_norm = if self.arch.has_qk_norm() { 2 * self.head_dim } else { 0 };
        let layer = attn + 3 * h * i + 2 * h + qk_norm;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_layers * layer + h + head
    }

    /// Checks that the shapes are usable: every size positive, `num_heads` a multiple of
    /// `num_kv_heads`, `head_dim` even, eps and theta in range, the RoPE scaling consistent.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::config(key, "must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::config(
                "num_key_value_heads",
                format!("{} does not divide num_attention_heads = {}", self.num_kv_heads, self.num_heads),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config("head_dim", format!("{} is odd (RoPE rotates pairs)", self.head_dim)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(Error::config("rms_norm_eps", format!("{} is not a finite value >= 0", self.rms_norm_eps)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::config("rope_theta", format!("{} is not a finite value > 0", self.rope_theta)));
        }
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                if !(factor.is_finite() && *factor > 0.0) {
                    return Err(Error::config("rope_scaling.factor", format!("{factor} is not > 0")));
                }
                if !(low_freq_factor.is_finite() && *low_freq_factor > 0.0 && high_freq_factor > low_freq_factor) {
                    return Err(Error::config(
                        "rope_scaling",
                        format!("need 0 < low_freq_factor ({low_freq_factor}) < high_freq_factor ({high_freq_factor})"),
                    ));
                }
                if *original_max_position_embeddings == 0 {
                    return Err(Error::config("rope_scaling.original_max_position_embeddings", "must be positive"));
                }
            }
            RopeScaling::FreqFactors(f) => {
                if f.len() != self.head_dim / 2 {
                    return Err(Error::config(
                        "rope_freqs",
                        format!("{} factors, expected head_dim / 2 = {}", f.len(), self.head_dim / 2),
                    ));
                }
                if let Some(bad) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return Err(Error::config("rope_freqs", format!("factor {bad} is not > 0")));
                }
            }
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<ModelConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| Error::Json { path: path.into(), source: e })?;
        raw.into_config()
    }

    /// Parses the text of a Hugging Face `config.json`.
    ///
    /// `architectures[0]` (or, without it, `model_type`) picks the [`Arch`]; any other
    /// architecture is [`Error::UnknownArchitecture`]. Required: `vocab_size`,
    /// `hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`.
    /// Defaults as in transformers: `num_key_value_heads = num_attention_heads`,
    /// `head_dim = hidden_size / num_attention_heads` (Llama) or 128 (Qwen3),
    /// `rms_norm_eps = 1e-6`, `rope_theta = 10000`, `tie_word_embeddings = false`,
    /// `max_position_embeddings` 2048 (Llama) or 32768 (Qwen3). Features the engine does not
    /// run are errors, not ignored: an activation other than SiLU, attention or MLP biases,
    /// sliding-window attention, a RoPE scaling other than `llama3`.
    pub fn from_hf_json(text: &str) -> Result<ModelConfig> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| Error::config("config.json", e.to_string()))?;
        raw.into_config()
    }

    /// A named preset with a real model's shapes (no files needed): `qwen3-0.6b`,
    /// `llama-3.2-1b`, `llama-3-8b`, `smollm2-135m` ([`PRESET_NAMES`]). The values are those
    /// of the models' `config.json` (the instruct variants' special tokens).
    pub fn preset(name: &str) -> Result<ModelConfig> {
        let llama3_eos = vec![128_001, 128_008, 128_009];
        let cfg = match name {
            "qwen3-0.6b" => ModelConfig {
                arch: Arch::Qwen3,
                vocab_size: 151_936,
                hidden_size: 1024,
                intermediate_size: 3072,
                num_layers: 28,
                num_heads: 16,
                num_kv_heads: 8,
                head_dim: 128,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                rope_scaling: RopeScaling::None,
                max_position_embeddings: 40_960,
                tie_word_embeddings: true,
                bos_token_id: Some(151_643),
                eos_token_ids: vec![151_645],
            },
            "llama-3.2-1b" => ModelConfig {
                arch: Arch::Llama,
                vocab_size: 128_256,
                hidden_size: 2048,
                intermediate_size: 8192,
                num_layers: 16,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 64,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                rope_scaling: RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                },
                max_position_embeddings: 131_072,
                tie_word_embeddings: true,
                bos_token_id: Some(128_000),
                eos_token_ids: llama3_eos,
            },
            "llama-3-8b" => ModelConfig {
                arch: Arch::Llama,
                vocab_size: 128_256,
                hidden_size: 4096,
                intermediate_size: 14_336,
                num_layers: 32,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                rope_scaling: RopeScaling::None,
                max_position_embeddings: 8192,
                tie_word_embeddings: false,
                bos_token_id: Some(128_000),
                eos_token_ids: vec![128_001, 128_009],
            },
            "smollm2-135m" => ModelConfig {
                arch: Arch::Llama,
                vocab_size: 49_152,
                hidden_size: 576,
                intermediate_size: 1536,
                num_layers: 30,
                num_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
                rms_norm_eps: 1e-5,
                rope_theta: 100_000.0,
                rope_scaling: RopeScaling::None,
                max_position_embeddings: 8192,
                tie_word_embeddings: true,
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
            },
            other => return Err(Error::UnknownPreset(other.to_string())),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `config.json` as written by transformers; only the fields the engine reads. Unknown
/// fields are ignored (configs carry many that do not change the forward pass).
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers v5 moves `rope_theta` and the scaling into one dictionary.
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
}

/// `eos_token_id` is one id or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

fn required(key: &str, v: Option<usize>) -> Result<usize> {
    v.ok_or_else(|| Error::config(key, "missing"))
}

impl HfConfig {
    fn into_config(self) -> Result<ModelConfig> {
        let arch_name = match (&self.architectures, &self.model_type) {
            (Some(list), _) if !list.is_empty() => list[0].clone(),
            (_, Some(t)) => t.clone(),
            _ => return Err(Error::config("architectures", "missing (and no model_type)")),
        };
        let arch = Arch::from_hf(&arch_name)?;

        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(Error::config("hidden_act", format!("`{act}` is not supported (only silu)")));
        }
        for (key, v) in [("attention_bias", self.attention_bias), ("mlp_bias", self.mlp_bias)] {
            if v == Some(true) {
                return Err(Error::config(key, "biases are not supported"));
            }
        }
        if self.use_sliding_window == Some(true) {
            return Err(Error::config("use_sliding_window", "sliding-window attention is not supported"));
        }

        let hidden_size = required("hidden_size", self.hidden_size)?;
        let num_heads = required("num_attention_heads", self.num_attention_heads)?;
        let head_dim = match (self.head_dim, arch) {
            (Some(d), _) => d,
            (None, Arch::Llama) if num_heads > 0 => hidden_size / num_heads,
            (None, Arch::Llama) => 0, // validate() reports num_attention_heads
            (None, Arch::Qwen3) => 128,
        };

        // The RoPE parameters: `rope_parameters` (transformers v5) or `rope_theta` plus
        // `rope_scaling`.
        let (theta, scaling) = match &self.rope_parameters {
            Some(p) => (p.get("rope_theta").and_then(Value::as_f64).or(self.rope_theta), Some(p)),
            None => (self.rope_theta, self.rope_scaling.as_ref()),
        };
        let rope_scaling = match scaling {
            None | Some(Value::Null) => RopeScaling::None,
            Some(v) => parse_rope_scaling(v)?,
        };

        let cfg = ModelConfig {
            arch,
            vocab_size: required("vocab_size", self.vocab_size)?,
            hidden_size,
            intermediate_size: required("intermediate_size", self.intermediate_size)?,
            num_layers: required("num_hidden_layers", self.num_hidden_layers)?,
            num_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta: theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(match arch {
                Arch::Llama => 2048,
                Arch::Qwen3 => 32_768,
            }),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids: match self.eos_token_id {
                None => Vec::new(),
                Some(TokenIds::One(id)) => vec![id],
                Some(TokenIds::Many(ids)) => ids,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `rope_scaling` (or `rope_parameters`): `{"rope_type": "llama3", "factor": 8.0,
/// "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings":
/// 8192}`; older configs spell `rope_type` as `type`. `default` means no scaling.
fn parse_rope_scaling(v: &Value) -> Result<RopeScaling> {
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::config(format!("rope_scaling.{key}"), "missing or not a number"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: v
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    Error::config("rope_scaling.original_max_position_embeddings", "missing or not an integer")
                })? as usize,
        }),
        other => Err(Error::config("rope_scaling.rope_type", format!("`{other}` is not supported (default, llama3)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA_3_2_1B: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
      "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
      "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
      "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
      "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256
    }"#;

    const QWEN3_0_6B: &str = r#"{
      "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
      "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
      "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
      "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
      "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000,
      "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
      "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
      "vocab_size": 151936
    }"#;

    #[test]
    fn llama_3_2_config_matches_preset() {
        let cfg = ModelConfig::from_hf_json(LLAMA_3_2_1B).unwrap();
        assert_eq!(cfg, ModelConfig::preset("llama-3.2-1b").unwrap());
        assert_eq!(cfg.group_size(), 4);
    }

    #[test]
    fn qwen3_config_matches_preset() {
        let cfg = ModelConfig::from_hf_json(QWEN3_0_6B).unwrap();
        assert_eq!(cfg, ModelConfig::preset("qwen3-0.6b").unwrap());
        assert!(cfg.arch.has_qk_norm());
        // Qwen3's head_dim is independent of the hidden size: 16 · 128 = 2048 != 1024.
        assert_eq!(cfg.q_dim(), 2048);
        assert_eq!(cfg.kv_dim(), 1024);
    }

    #[test]
    fn llama_head_dim_defaults_to_hidden_over_heads() {
        let text = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}"#;
        let cfg = ModelConfig::from_hf_json(text).unwrap();
        assert_eq!((cfg.head_dim, cfg.num_kv_heads), (16, 4));
        assert_eq!(cfg.rope_scaling, RopeScaling::None);
        assert!(!cfg.tie_word_embeddings);
        assert!(cfg.eos_token_ids.is_empty());
    }

    #[test]
    fn transformers_v5_rope_parameters() {
        let text = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#;
        let cfg = ModelConfig::from_hf_json(text).unwrap();
        assert_eq!(cfg.rope_theta, 500_000.0);
        assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3 { factor: 8.0, .. }));
    }

    #[test]
    fn smollm2_preset_shapes() {
        let cfg = ModelConfig::preset("smollm2-135m").unwrap();
        assert_eq!((cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads), (576, 30, 9, 3));
        assert_eq!((cfg.head_dim, cfg.intermediate_size, cfg.vocab_size), (64, 1536, 49_152));
        assert!(cfg.tie_word_embeddings);
        // 134.5M parameters, as the model card says (135M).
        assert_eq!(cfg.num_params(), 134_515_008);
    }

    #[test]
    fn every_preset_validates() {
        for name in PRESET_NAMES {
            ModelConfig::preset(name).unwrap();
        }
        assert!(matches!(ModelConfig::preset("gpt-2"), Err(Error::UnknownPreset(_))));
    }

    #[test]
    fn unknown_architecture_is_typed_error() {
        let text = r#"{"architectures": ["MistralForCausalLM"], "vocab_size": 1}"#;
        match ModelConfig::from_hf_json(text) {
            Err(Error::UnknownArchitecture(name)) => assert_eq!(name, "MistralForCausalLM"),
            other => panic!("expected UnknownArchitecture, got {other:?}"),
        }
    }

    #[test]
    fn unsupported_features_are_errors() {
        let base = r#""architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4"#;
        for (extra, key) in [
            (r#""hidden_act": "gelu""#, "hidden_act"),
            (r#""attention_bias": true"#, "attention_bias"),
            (r#""rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#, "rope_scaling.rope_type"),
            (r#""num_key_value_heads": 3"#, "num_key_value_heads"),
            (r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#, "rope_scaling.low_freq_factor"),
        ] {
            let text = format!("{{{base}, {extra}}}");
            match ModelConfig::from_hf_json(&text) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key, "{extra}"),
                other => panic!("{extra}: expected a config error, got {other:?}"),
            }
        }
        let missing = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 100}"#;
        assert!(matches!(ModelConfig::from_hf_json(missing), Err(Error::Config { key, .. }) if key == "hidden_size"));
    }
}
