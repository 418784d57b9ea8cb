//! Tiny models and the checkpoint files the loader tests write for them.

#![allow(dead_code)] // each test file uses part of this

use std::path::Path;

use half::{bf16, f16};
use nanofuse_engine::config::{Arch, ModelConfig, RopeScaling};
use nanofuse_engine::gguf::writer::{GgufWriter, i32_array, string_array};
use nanofuse_engine::gguf::{GgmlType, Value, model::permute_rows};
use nanofuse_engine::weights::{ModelWeights, Tensor, TensorId, tensor_ids};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

/// 2 layers, H = 64, 4 query heads and 2 KV heads of 16, I = 96, V = 48: every matrix row
/// is whole 32-element blocks, so every GGUF type can store it.
pub fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 48,
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 128,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// The `config.json` transformers would write for `cfg` (the library's export writes it).
pub fn hf_config_json(cfg: &ModelConfig) -> String {
    nanofuse_engine::export::hf_config_json(cfg).expect("test configs have a config.json form")
}

/// Little-endian bytes of `t` in a safetensors dtype (BF16, F16 or F32).
pub fn st_bytes(t: &Tensor, dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => t.data.iter().flat_map(|v| f16::from_f32(v.to_f32()).to_le_bytes()).collect(),
        Dtype::F32 => t.data.iter().flat_map(|v| v.to_f32().to_le_bytes()).collect(),
        other => panic!("st_bytes: {other:?}"),
    }
}

/// What the loader makes of `t` stored as `dtype`: bf16 → f16 → bf16 may round.
pub fn through_dtype(t: &Tensor, dtype: Dtype) -> Tensor {
    match dtype {
        Dtype::F16 => Tensor::new(
            t.shape.clone(),
            t.data.iter().map(|v| bf16::from_f32(f16::from_f32(v.to_f32()).to_f32())).collect(),
        ),
        _ => t.clone(),
    }
}

/// Writes `weights` as safetensors files in `dir`: `(name, dtype, shape, bytes)` entries
/// split over `shards` files (with `model.safetensors.index.json` when more than one).
pub fn write_safetensors(dir: &Path, entries: &[(String, Dtype, Vec<usize>, Vec<u8>)], shards: usize) {
    let per = entries.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in entries.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{s:05}-of-{shards:05}.safetensors")
        };
        let views: Vec<(String, TensorView)> = chunk
            .iter()
            .map(|(name, dtype, shape, bytes)| (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for (name, ..) in chunk {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    if shards > 1 {
        let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

/// The safetensors entries of a model, tensor `id` stored as `dtype(id)`.
pub fn st_entries(
    cfg: &ModelConfig,
    w: &ModelWeights,
    dtype: impl Fn(TensorId) -> Dtype,
) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    tensor_ids(cfg)
        .into_iter()
        .map(|id| {
            let t = w.get(id).unwrap();
            (id.hf_name(), dtype(id), t.shape.clone(), st_bytes(t, dtype(id)))
        })
        .collect()
}

/// The GGUF metadata llama.cpp's converter writes for `cfg` (prefix `general.architecture`).
pub fn gguf_metadata(g: &mut GgufWriter, cfg: &ModelConfig) {
    let a = cfg.arch.gguf_name();
    let u = |v: usize| Value::U32(v as u32);
    g.meta("general.architecture", Value::Str(a.into()));
    g.meta("general.name", Value::Str("tiny".into()));
    g.meta(&format!("{a}.context_length"), u(cfg.max_position_embeddings));
    g.meta(&format!("{a}.embedding_length"), u(cfg.hidden_size));
    g.meta(&format!("{a}.block_count"), u(cfg.num_layers));
    g.meta(&format!("{a}.feed_forward_length"), u(cfg.intermediate_size));
    g.meta(&format!("{a}.attention.head_count"), u(cfg.num_heads));
    g.meta(&format!("{a}.attention.head_count_kv"), u(cfg.num_kv_heads));
    g.meta(&format!("{a}.attention.key_length"), u(cfg.head_dim));
    g.meta(&format!("{a}.attention.value_length"), u(cfg.head_dim));
    g.meta(&format!("{a}.rope.dimension_count"), u(cfg.head_dim));
    g.meta(&format!("{a}.rope.freq_base"), Value::F32(cfg.rope_theta as f32));
    g.meta(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps));
    g.meta(&format!("{a}.vocab_size"), u(cfg.vocab_size));
    g.meta("tokenizer.ggml.bos_token_id", Value::U32(cfg.bos_token_id.unwrap()));
    g.meta("tokenizer.ggml.eos_token_id", Value::U32(cfg.eos_token_ids[0]));
}

/// A GGUF of `w` as llama.cpp's converter writes it: GGUF names, Llama's q/k rows
/// permuted, tensor `id` encoded as `ty(id)`.
pub fn gguf_model(cfg: &ModelConfig, w: &ModelWeights, ty: impl Fn(TensorId) -> GgmlType) -> GgufWriter {
    let mut g = GgufWriter::new();
    gguf_metadata(&mut g, cfg);
    for id in tensor_ids(cfg) {
        let t = w.get(id).unwrap();
        let stored = match (cfg.arch, id) {
            (Arch::Llama, TensorId::Layer(_, nanofuse_engine::weights::LayerTensor::QProj)) => {
                permute_rows(t, cfg.num_heads)
            }
            (Arch::Llama, TensorId::Layer(_, nanofuse_engine::weights::LayerTensor::KProj)) => {
                permute_rows(t, cfg.num_kv_heads)
            }
            _ => t.clone(),
        };
        g.tensor(&id.gguf_name(), &stored.shape, &stored.to_f32(), ty(id));
    }
    g
}

/// GPT-2's byte-to-character table: the 256 byte tokens of a byte-level vocabulary.
pub fn byte_tokens() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// Adds a tiny GPT-2-style vocabulary: the byte tokens, merges building "hello", "Ġworld"
/// and "Ġthe", then the control tokens `<|endoftext|>` (id 259 + merges) and `<|im_start|>`.
/// Returns the tokens.
pub fn gguf_tokenizer(g: &mut GgufWriter, pre: &str, add_bos: bool) -> Vec<String> {
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ t", "Ġt he"];
    let mut tokens = byte_tokens();
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![1i32; tokens.len()];
    for special in ["<|endoftext|>", "<|im_start|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    g.meta("tokenizer.ggml.model", Value::Str("gpt2".into()));
    g.meta("tokenizer.ggml.pre", Value::Str(pre.into()));
    g.meta("tokenizer.ggml.tokens", string_array(&tokens));
    g.meta("tokenizer.ggml.token_type", i32_array(&types));
    g.meta("tokenizer.ggml.merges", string_array(&merges));
    g.meta("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    tokens
}
