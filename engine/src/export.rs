//! Writing a model as a Hugging Face directory (`config.json` + one bf16
//! `model.safetensors`), so that another framework (transformers, a plain PyTorch forward:
//! `scripts/compare_engine.py`) loads exactly the weights the engine runs: random weights of
//! a preset, or a GGUF file after dequantization.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::weights::{ModelWeights, tensor_ids};

/// `config.json` for `cfg`, in transformers' keys. [`RopeScaling::FreqFactors`] (a GGUF's
/// per-frequency divisors) has no `config.json` form: an error.
pub fn hf_config_json(cfg: &ModelConfig) -> Result<String> {
    let rope_scaling = match &cfg.rope_scaling {
        RopeScaling::None => serde_json::Value::Null,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
        RopeScaling::FreqFactors(_) => {
            return Err(Error::config("rope_scaling", "per-frequency factors have no config.json form"));
        }
    };
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => serde_json::Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    Ok(serde_json::to_string_pretty(&json!({
        "architectures": [cfg.arch.hf_name()],
        "model_type": cfg.arch.gguf_name(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": "bfloat16",
    }))
    .expect("a JSON value serializes"))
}

/// Writes `dir/config.json` and `dir/model.safetensors` (every tensor of the config, bf16,
/// Hugging Face names). Creates `dir` if needed.
pub fn save_hf_dir(dir: impl AsRef<Path>, cfg: &ModelConfig, weights: &ModelWeights) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = hf_config_json(cfg)?;
    std::fs::write(dir.join("config.json"), config).map_err(|e| Error::io(dir.join("config.json"), e))?;
    let mut entries = Vec::new();
    for id in tensor_ids(cfg) {
        let t = weights.get(id).ok_or_else(|| Error::MissingTensor { name: id.hf_name() })?;
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        entries.push((id.hf_name(), t.shape.clone(), bytes));
    }
    let path = dir.join("model.safetensors");
    let views = entries
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::BF16, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Safetensors { path: path.clone(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| Error::Safetensors { path: path.clone(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::random::random_weights;
    use crate::weights::safetensors::load_hf_dir;

    #[test]
    fn a_saved_model_loads_back_identical() {
        let mut cfg = ModelConfig::preset("smollm2-135m").unwrap();
        cfg.num_layers = 1;
        cfg.vocab_size = 64;
        let w = random_weights(&cfg, 3);
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(dir.path(), &cfg, &w).unwrap();
        let (cfg2, w2) = load_hf_dir(dir.path()).unwrap();
        assert_eq!(cfg2, cfg);
        assert_eq!(w2, w);
    }

    #[test]
    fn llama3_scaling_round_trips() {
        let mut cfg = ModelConfig::preset("llama-3.2-1b").unwrap();
        cfg.num_layers = 1;
        let text = hf_config_json(&cfg).unwrap();
        assert_eq!(ModelConfig::from_hf_json(&text).unwrap(), cfg);
    }
}
