//! A GGUF model as a [`ModelConfig`] and [`ModelWeights`] in Hugging Face's layout.
//!
//! # Metadata
//! `general.architecture` (`llama` or `qwen3`) is the prefix `A` of the model keys:
//!
//! | config field | GGUF key | if absent |
//! |---|---|---|
//! | `hidden_size` | `A.embedding_length` | required |
//! | `num_layers` | `A.block_count` | required |
//! | `intermediate_size` | `A.feed_forward_length` | required |
//! | `num_heads` | `A.attention.head_count` | required |
//! | `num_kv_heads` | `A.attention.head_count_kv` | `num_heads` |
//! | `head_dim` | `A.attention.key_length` | `hidden_size / num_heads` |
//! | `rope_theta` | `A.rope.freq_base` | 10000 |
//! | `rms_norm_eps` | `A.attention.layer_norm_rms_epsilon` | required |
//! | `max_position_embeddings` | `A.context_length` | required |
//! | `vocab_size` | `A.vocab_size` | length of `tokenizer.ggml.tokens`, else the embedding's rows |
//! | `tie_word_embeddings` | no `output.weight` tensor | |
//! | `bos_token_id`, `eos_token_ids` | `tokenizer.ggml.bos_token_id`, `eos_token_id` | none |
//!
//! `A.rope.dimension_count` must equal `head_dim` (partial rotary is not run) and
//! `A.rope.scaling.type` must be absent or `none`. A `rope_freqs.weight` tensor (llama.cpp's
//! way of storing Llama 3.1's frequency scaling) becomes [`RopeScaling::FreqFactors`].
//!
//! # Tensors
//! Names as in [`crate::weights::names`]; a tensor's row-major shape is its `ne` reversed.
//! llama.cpp's `convert_hf_to_gguf.py` permutes the rows of Llama's `q_proj` and `k_proj`
//! (`LlamaModel.permute`) so that its rotary kernel can pair adjacent elements: with `d` the
//! head dimension, GGUF row `h·d + 2i + j` holds HF row `h·d + j·d/2 + i` (`i < d/2`,
//! `j ∈ {0, 1}`). [`unpermute_rows`] undoes it, so the weights match HF's rotate-half
//! convention ([`crate::rope`]). Qwen3 (which llama.cpp ropes in the NeoX, rotate-half,
//! order) is stored unpermuted.

use super::{GgufFile, Value};
use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::weights::{LayerTensor, ModelWeights, Tensor, TensorId};

/// llama.cpp's name for the per-frequency RoPE divisors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// Opens a GGUF model: its config and all its weights, dequantized to bf16.
pub fn load(path: impl AsRef<std::path::Path>) -> Result<(GgufFile, ModelConfig, ModelWeights)> {
    let file = GgufFile::open(path)?;
    let cfg = config(&file)?;
    let weights = weights(&file, &cfg)?;
    Ok((file, cfg, weights))
}

/// The model config of a GGUF file's metadata (module doc).
pub fn config(file: &GgufFile) -> Result<ModelConfig> {
    let arch_name = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::config("general.architecture", "missing"))?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen3" => Arch::Qwen3,
        other => return Err(Error::UnknownArchitecture(other.to_string())),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let uint = |k: &str| -> Result<Option<usize>> {
        match file.get(&key(k)) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                Error::config(
                    key(k),
                    format!("{} is not a non-negative integer (per-layer values are not supported)", v.describe()),
                )
            }),
        }
    };
    let required = |k: &str| uint(k)?.ok_or_else(|| Error::config(key(k), "missing"));
    let float = |k: &str| -> Result<Option<f64>> {
        match file.get(&key(k)) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| Error::config(key(k), format!("{} is not a number", v.describe())))
            }
        }
    };

    let hidden_size = required("embedding_length")?;
    let num_heads = required("attention.head_count")?;
    let head_dim = match uint("attention.key_length")? {
        Some(d) => d,
        None if num_heads > 0 => hidden_size / num_heads,
        None => 0,
    };
    if let Some(rot) = uint("rope.dimension_count")?
        && rot != head_dim
    {
        return Err(Error::config(
            key("rope.dimension_count"),
            format!("{rot} != head_dim {head_dim} (partial rotary)"),
        ));
    }
    if let Some(t) = file.get(&key("rope.scaling.type")).and_then(Value::as_str)
        && t != "none"
    {
        return Err(Error::config(key("rope.scaling.type"), format!("`{t}` is not supported")));
    }
    let rope_scaling = if file.tensor_info(ROPE_FREQS).is_some() {
        RopeScaling::FreqFactors(file.tensor(ROPE_FREQS)?.to_f32())
    } else {
        RopeScaling::None
    };
    let vocab_size = match uint("vocab_size")? {
        Some(v) => v,
        None => match file.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(tokens) => tokens.len(),
            None => match file.tensor_info(&TensorId::Embed.gguf_name()) {
                Some(t) => t.shape()[0],
                None => return Err(Error::config(key("vocab_size"), "missing (no tokens, no embedding)")),
            },
        },
    };
    let token = |k: &str| file.get(k).and_then(Value::as_u64).map(|v| v as u32);

    let cfg = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: required("feed_forward_length")?,
        num_layers: required("block_count")?,
        num_heads,
        num_kv_heads: uint("attention.head_count_kv")?.unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| Error::config(key("attention.layer_norm_rms_epsilon"), "missing"))?
            as f32,
        rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: required("context_length")?,
        tie_word_embeddings: file.tensor_info(&TensorId::LmHead.gguf_name()).is_none(),
        bos_token_id: token("tokenizer.ggml.bos_token_id"),
        eos_token_ids: token("tokenizer.ggml.eos_token_id").into_iter().collect(),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The weights of `cfg` from a GGUF file, dequantized to bf16, Llama's q/k rows un-permuted.
pub fn weights(file: &GgufFile, cfg: &ModelConfig) -> Result<ModelWeights> {
    ModelWeights::assemble(
        cfg,
        |id| id.gguf_name(),
        |id| {
            let name = id.gguf_name();
            let info = file.tensor_info(&name).ok_or_else(|| Error::MissingTensor { name: name.clone() })?;
            // Check the shape before reading: a wrong file fails fast, and the un-permutation
            // below needs the right row count.
            let expected = id.shape(cfg);
            if info.shape() != expected {
                return Err(Error::Shape { name, expected, got: info.shape() });
            }
            let t = file.tensor(&name)?;
            Ok(match (cfg.arch, id) {
                (Arch::Llama, TensorId::Layer(_, LayerTensor::QProj)) => unpermute_rows(&t, cfg.num_heads),
                (Arch::Llama, TensorId::Layer(_, LayerTensor::KProj)) => unpermute_rows(&t, cfg.num_kv_heads),
                _ => t,
            })
        },
    )
}

/// Undoes `convert_hf_to_gguf.py`'s `LlamaModel.permute(w, n_head)` on the rows of a
/// `[n_head · d, cols]` matrix: HF row `h·d + j·d/2 + i` is GGUF row `h·d + 2i + j`.
///
/// # Panics
/// If the rows are not `n_head` heads of an even size.
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    assert!(rows.is_multiple_of(2 * n_head), "{rows} rows are not {n_head} heads of an even size");
    let d = rows / n_head;
    let mut data = Vec::with_capacity(t.data.len());
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..d / 2 {
                data.extend_from_slice(t.row(h * d + 2 * i + j));
            }
        }
    }
    debug_assert_eq!(data.len(), rows * cols);
    Tensor::new(t.shape.clone(), data)
}

/// The forward permutation (`LlamaModel.permute`): GGUF row `h·d + 2i + j` takes HF row
/// `h·d + j·d/2 + i`. For writing GGUF files (tests, tools).
pub fn permute_rows(t: &Tensor, n_head: usize) -> Tensor {
    let rows = t.shape[0];
    assert!(rows.is_multiple_of(2 * n_head), "{rows} rows are not {n_head} heads of an even size");
    let d = rows / n_head;
    let mut data = Vec::with_capacity(t.data.len());
    for h in 0..n_head {
        for i in 0..d / 2 {
            for j in 0..2 {
                data.extend_from_slice(t.row(h * d + j * d / 2 + i));
            }
        }
    }
    Tensor::new(t.shape.clone(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_tensor(rows: usize) -> Tensor {
        // Row r holds [r, r + 0.5].
        let data: Vec<f32> = (0..rows).flat_map(|r| [r as f32, r as f32 + 0.5]).collect();
        Tensor::from_f32(vec![rows, 2], &data)
    }

    fn first_col(t: &Tensor) -> Vec<f32> {
        (0..t.shape[0]).map(|r| t.row(r)[0].to_f32()).collect()
    }

    /// `reshape(n_head, 2, d/2).swapaxes(1, 2)` of HF rows [0, 1, 2, 3] (one head, d = 4) is
    /// [[0, 2], [1, 3]]: GGUF rows 0, 2, 1, 3.
    #[test]
    fn permutation_matches_llama_cpp() {
        assert_eq!(first_col(&permute_rows(&rows_tensor(4), 1)), [0.0, 2.0, 1.0, 3.0]);
        // Two heads of d = 6: [0, 3, 1, 4, 2, 5] then the same + 6.
        assert_eq!(
            first_col(&permute_rows(&rows_tensor(12), 2)),
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 6.0, 9.0, 7.0, 10.0, 8.0, 11.0]
        );
    }

    #[test]
    fn unpermute_inverts() {
        let t = rows_tensor(24);
        for heads in [1, 2, 3, 6] {
            assert_eq!(unpermute_rows(&permute_rows(&t, heads), heads), t);
        }
    }
}
