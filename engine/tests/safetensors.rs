//! Hugging Face checkpoints written here (config.json + safetensors), read back.

mod common;

use common::{hf_config_json, st_bytes, st_entries, through_dtype, tiny_config, write_safetensors};
use nanofuse_engine::config::Arch;
use nanofuse_engine::weights::random::random_weights;
use nanofuse_engine::weights::safetensors::{Checkpoint, load_hf_dir};
use nanofuse_engine::weights::{LayerTensor, ModelWeights, TensorId, tensor_ids};
use nanofuse_engine::{Error, ModelConfig};
use safetensors::tensor::Dtype;

/// Embedding in F32, attention projections in F16, everything else BF16.
fn mixed_dtype(id: TensorId) -> Dtype {
    match id {
        TensorId::Embed => Dtype::F32,
        TensorId::Layer(_, LayerTensor::QProj | LayerTensor::KProj | LayerTensor::VProj | LayerTensor::OProj) => {
            Dtype::F16
        }
        _ => Dtype::BF16,
    }
}

fn write_dir(cfg: &ModelConfig, w: &ModelWeights, shards: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hf_config_json(cfg)).unwrap();
    write_safetensors(dir.path(), &st_entries(cfg, w, mixed_dtype), shards);
    dir
}

fn expected(cfg: &ModelConfig, w: &ModelWeights) -> ModelWeights {
    ModelWeights::assemble(cfg, |id| id.hf_name(), |id| Ok(through_dtype(w.get(id).unwrap(), mixed_dtype(id)))).unwrap()
}

#[test]
fn llama_and_qwen3_round_trip() {
    for (arch, tied, shards) in [(Arch::Llama, false, 1), (Arch::Qwen3, true, 1), (Arch::Llama, true, 3)] {
        let cfg = ModelConfig { tie_word_embeddings: tied, ..tiny_config(arch) };
        let w = random_weights(&cfg, 11);
        let dir = write_dir(&cfg, &w, shards);
        let (got_cfg, got) = load_hf_dir(dir.path()).unwrap();
        assert_eq!(got_cfg, cfg, "{arch:?}");
        assert_eq!(got, expected(&cfg, &w), "{arch:?} tied {tied} shards {shards}");
        assert_eq!(got.layers[0].q_norm.is_some(), arch == Arch::Qwen3);
        assert_eq!(got.lm_head.is_some(), !tied);
    }
}

#[test]
fn bf16_and_f32_are_exact() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 12);
    let dir = write_dir(&cfg, &w, 1);
    let (_, got) = load_hf_dir(dir.path()).unwrap();
    assert_eq!(got.embed_tokens, w.embed_tokens); // F32
    assert_eq!(got.layers[1].down_proj, w.layers[1].down_proj); // BF16
}

/// A tensor the config needs is absent: the error names it.
#[test]
fn missing_tensor_is_named() {
    let cfg = tiny_config(Arch::Qwen3);
    let w = random_weights(&cfg, 13);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hf_config_json(&cfg)).unwrap();
    let mut entries = st_entries(&cfg, &w, |_| Dtype::BF16);
    entries.retain(|(name, ..)| name != "model.layers.1.self_attn.k_norm.weight");
    write_safetensors(dir.path(), &entries, 1);
    match load_hf_dir(dir.path()) {
        Err(Error::MissingTensor { name }) => assert_eq!(name, "model.layers.1.self_attn.k_norm.weight"),
        other => panic!("expected MissingTensor, got {:?}", other.map(|_| ())),
    }
}

/// An untied config needs `lm_head.weight`.
#[test]
fn untied_needs_lm_head() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 14);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hf_config_json(&cfg)).unwrap();
    let mut entries = st_entries(&cfg, &w, |_| Dtype::BF16);
    entries.retain(|(name, ..)| name != "lm_head.weight");
    write_safetensors(dir.path(), &entries, 1);
    assert!(matches!(load_hf_dir(dir.path()), Err(Error::MissingTensor { name }) if name == "lm_head.weight"));
}

#[test]
fn wrong_shape_is_named() {
    let cfg = tiny_config(Arch::Llama);
    // The checkpoint of a model with a wider MLP, read with the tiny config.
    let wide = ModelConfig { intermediate_size: 128, ..cfg.clone() };
    let ww = random_weights(&wide, 15);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hf_config_json(&cfg)).unwrap();
    write_safetensors(dir.path(), &st_entries(&wide, &ww, |_| Dtype::BF16), 1);
    match load_hf_dir(dir.path()) {
        Err(Error::Shape { name, expected, got }) => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!((expected, got), (vec![96, 64], vec![128, 64]));
        }
        other => panic!("expected Shape, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn wrong_dtype_is_named() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 16);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hf_config_json(&cfg)).unwrap();
    let mut entries = st_entries(&cfg, &w, |_| Dtype::BF16);
    // The final norm as 64 int32s (the same bytes per element as F32).
    let norm = entries.iter_mut().find(|(n, ..)| n == "model.norm.weight").unwrap();
    norm.1 = Dtype::I32;
    norm.3 = st_bytes(&w.final_norm, Dtype::F32);
    write_safetensors(dir.path(), &entries, 1);
    match load_hf_dir(dir.path()) {
        Err(Error::Dtype { name, dtype, .. }) => {
            assert_eq!((name.as_str(), dtype.as_str()), ("model.norm.weight", "I32"))
        }
        other => panic!("expected Dtype, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn checkpoint_lists_names_across_shards() {
    let cfg = tiny_config(Arch::Qwen3);
    let w = random_weights(&cfg, 17);
    let dir = write_dir(&cfg, &w, 4);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let mut names: Vec<&str> = ck.names().collect();
    names.sort();
    let mut want: Vec<String> = tensor_ids(&cfg).into_iter().map(TensorId::hf_name).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn truncated_file_is_an_error() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 18);
    let dir = write_dir(&cfg, &w, 1);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(load_hf_dir(dir.path()), Err(Error::Safetensors { .. })));
    std::fs::write(&path, &bytes[..4]).unwrap();
    assert!(matches!(load_hf_dir(dir.path()), Err(Error::Io { .. })));
}
