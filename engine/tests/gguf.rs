//! GGUF files written here, read back: the header and metadata of every value type, the
//! tensor layout, dequantization of every supported type, the llama.cpp tensor mapping
//! with Llama's q/k permutation, the vocabulary as a tokenizer, and the errors.

mod common;

use common::{gguf_metadata, gguf_model, gguf_tokenizer, tiny_config};
use nanofuse_engine::config::{Arch, RopeScaling};
use nanofuse_engine::gguf::writer::{GgufWriter, encode, string_array};
use nanofuse_engine::gguf::{Array, GgmlType, GgufFile, Value, dequant, model};
use nanofuse_engine::reference::Reference;
use nanofuse_engine::weights::random::random_weights;
use nanofuse_engine::weights::{LayerTensor, ModelWeights, Tensor, TensorId};
use nanofuse_engine::{Error, ModelConfig, Tokenizer};

fn write(g: &GgufWriter) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    g.write(&path).unwrap();
    (dir, path)
}

/// Every value type, nested arrays included, reads back as written, in v2 and v3 files.
#[test]
fn metadata_of_every_type() {
    let values = vec![
        ("a.u8", Value::U8(200)),
        ("a.i8", Value::I8(-5)),
        ("a.u16", Value::U16(60_000)),
        ("a.i16", Value::I16(-30_000)),
        ("a.u32", Value::U32(4_000_000_000)),
        ("a.i32", Value::I32(-2_000_000_000)),
        ("a.f32", Value::F32(1.5e-5)),
        ("a.bool", Value::Bool(true)),
        ("a.str", Value::Str("héllo".into())),
        ("a.u64", Value::U64(u64::MAX)),
        ("a.i64", Value::I64(i64::MIN)),
        ("a.f64", Value::F64(-2.25)),
        ("a.strings", string_array(&["x", "", "zz"])),
        ("a.empty", Value::Array(Array { elem_type: 6, values: vec![] })),
        (
            "a.nested",
            Value::Array(Array {
                elem_type: 9,
                values: vec![
                    Value::Array(Array { elem_type: 4, values: vec![Value::U32(1), Value::U32(2)] }),
                    Value::Array(Array { elem_type: 7, values: vec![Value::Bool(false)] }),
                ],
            }),
        ),
    ];
    for version in [2, 3] {
        let mut g = GgufWriter::new().version(version);
        for (k, v) in &values {
            g.meta(k, v.clone());
        }
        let (_dir, path) = write(&g);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, version);
        assert_eq!(f.metadata.len(), values.len());
        for (k, v) in &values {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert!(f.tensors.is_empty());
    }
}

/// Tensor offsets are aligned to `general.alignment` from an aligned data section, and
/// each tensor's bytes are found there.
#[test]
fn tensor_layout_and_alignment() {
    for alignment in [None, Some(64), Some(256)] {
        let mut g = match alignment {
            None => GgufWriter::new(),
            Some(a) => GgufWriter::new().alignment(a),
        };
        let a: Vec<f32> = (0..3).map(|i| i as f32).collect();
        // Integers with 127 in each block: Q8_0's scale is 1, every value exact.
        let b: Vec<f32> = (0..64).map(|i| if i % 32 == 5 { 127.0 } else { i as f32 - 40.0 }).collect();
        g.tensor("a", &[3], &a, GgmlType::F32);
        g.tensor("b", &[2, 32], &b, GgmlType::Q8_0);
        g.tensor("c", &[1, 5], &[1.0; 5], GgmlType::F16);
        let (_dir, path) = write(&g);
        let f = GgufFile::open(&path).unwrap();
        let align = alignment.map_or(32, u64::from);
        assert_eq!(f.alignment, align);
        assert_eq!(f.data_start % align, 0);
        let info = f.tensor_info("b").unwrap();
        assert_eq!((info.dims.as_slice(), info.ggml_type, info.offset), (&[32u64, 2][..], GgmlType::Q8_0, align));
        assert_eq!(info.shape(), [2, 32]);
        assert_eq!(f.tensor_info("c").unwrap().offset % align, 0);
        assert_eq!(f.tensor("a").unwrap().to_f32(), a);
        assert_eq!(f.tensor("b").unwrap().to_f32(), b);
        assert_eq!(f.tensor("c").unwrap().shape, [1, 5]);
    }
}

/// Each block type through the file: dequantized exactly as the block decoder computes it,
/// and within the type's quantization error of the original values.
#[test]
fn dequantization_through_file() {
    let data: Vec<f32> = (0..4 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
    for (ty, tol) in [
        (GgmlType::F32, 4e-3),
        (GgmlType::F16, 4e-3),
        (GgmlType::BF16, 4e-3),
        (GgmlType::Q8_0, 0.02),
        (GgmlType::Q4_1, 0.1),
        (GgmlType::Q4_0, 0.2),
    ] {
        let mut g = GgufWriter::new();
        g.tensor("w", &[4, 64], &data, ty);
        let (_dir, path) = write(&g);
        let f = GgufFile::open(&path).unwrap();
        let got = f.tensor("w").unwrap();
        assert_eq!(got.shape, [4, 64]);
        let want = dequant::dequantize(ty, &encode(ty, &data), data.len()).unwrap();
        assert_eq!(got.data, want, "{ty:?}");
        let max_err = got.to_f32().iter().zip(&data).map(|(g, d)| (g - d).abs()).fold(0.0, f32::max);
        assert!(max_err <= tol, "{ty:?}: max error {max_err}");
    }
}

fn check_weights(got: &ModelWeights, want: &ModelWeights, cfg: &ModelConfig) {
    for id in nanofuse_engine::weights::tensor_ids(cfg) {
        assert_eq!(got.get(id), want.get(id), "{}", id.gguf_name());
    }
}

/// A Llama written as llama.cpp's converter writes it (q/k rows permuted) loads back into
/// HF's layout; F32 storage makes the round trip exact.
#[test]
fn llama_mapping_and_unpermute() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 21);
    let (_dir, path) = write(&gguf_model(&cfg, &w, |_| GgmlType::F32));
    let (file, got_cfg, got) = model::load(&path).unwrap();
    assert_eq!(got_cfg, cfg);
    check_weights(&got, &w, &cfg);
    // The file itself holds the permuted rows.
    let stored = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_ne!(stored, w.layers[0].q_proj);
    assert_eq!(stored, model::permute_rows(&w.layers[0].q_proj, cfg.num_heads));
    assert_eq!(file.tensor("blk.1.attn_k.weight").unwrap(), model::permute_rows(&w.layers[1].k_proj, cfg.num_kv_heads));
}

/// Qwen3: q/k norms present, nothing permuted, tied head (no `output.weight`).
#[test]
fn qwen3_mapping() {
    let cfg = ModelConfig { tie_word_embeddings: true, ..tiny_config(Arch::Qwen3) };
    let w = random_weights(&cfg, 22);
    let g = gguf_model(&cfg, &w, |_| GgmlType::BF16);
    let (_dir, path) = write(&g);
    let (file, got_cfg, got) = model::load(&path).unwrap();
    assert_eq!(got_cfg, cfg);
    assert!(file.tensor_info("output.weight").is_none());
    assert!(file.tensor_info("blk.1.attn_k_norm.weight").is_some());
    check_weights(&got, &w, &cfg);
}

/// The same model from safetensors-equivalent weights and from a quantized GGUF: the
/// reference logits agree to the quantization's precision, and exactly for F32 storage.
#[test]
fn forward_from_gguf_matches() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 23);
    let prompt = [5u32, 9, 1, 30, 47];
    let logits = |weights: &ModelWeights| {
        let r = Reference::new(&cfg, weights, 8).unwrap();
        r.forward(&prompt, &mut r.new_cache()).unwrap()
    };
    let want = logits(&w);

    let (_d1, exact) = write(&gguf_model(&cfg, &w, |_| GgmlType::F32));
    assert_eq!(logits(&model::load(&exact).unwrap().2), want);

    // llama.cpp's usual mix: norms F32, embedding Q8_0, matrices Q4_1 / Q4_0.
    let mixed = |id: TensorId| match id {
        TensorId::Embed => GgmlType::Q8_0,
        TensorId::Layer(_, LayerTensor::AttnNorm | LayerTensor::MlpNorm) | TensorId::FinalNorm => GgmlType::F32,
        TensorId::Layer(_, LayerTensor::DownProj) => GgmlType::Q4_0,
        _ => GgmlType::Q4_1,
    };
    let (_d2, quant) = write(&gguf_model(&cfg, &w, mixed));
    let got = logits(&model::load(&quant).unwrap().2);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max_err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
    assert!(max_err < 0.15 * scale, "quantized logits off by {max_err} (scale {scale})");
}

/// A `rope_freqs.weight` tensor becomes per-frequency RoPE divisors.
#[test]
fn rope_freqs_tensor() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 24);
    let mut g = gguf_model(&cfg, &w, |_| GgmlType::F32);
    let factors: Vec<f32> = (0..8).map(|i| 1.0 + i as f32).collect();
    g.tensor(model::ROPE_FREQS, &[8], &factors, GgmlType::F32);
    let (_dir, path) = write(&g);
    let got = model::config(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(got.rope_scaling, RopeScaling::FreqFactors(factors));
}

#[test]
fn missing_wrong_shape_and_unsupported_are_named() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 25);

    // Missing: a model without blk.1.ffn_up.
    let mut g = GgufWriter::new();
    gguf_metadata(&mut g, &cfg);
    for id in nanofuse_engine::weights::tensor_ids(&cfg) {
        if id != TensorId::Layer(1, LayerTensor::UpProj) {
            let t = w.get(id).unwrap();
            g.tensor(&id.gguf_name(), &t.shape, &t.to_f32(), GgmlType::F32);
        }
    }
    let (_d, path) = write(&g);
    assert!(matches!(model::load(&path), Err(Error::MissingTensor { name }) if name == "blk.1.ffn_up.weight"));

    // Wrong shape: ne of attn_v transposed.
    let mut g = GgufWriter::new();
    gguf_metadata(&mut g, &cfg);
    for id in nanofuse_engine::weights::tensor_ids(&cfg) {
        let t = w.get(id).unwrap();
        let shape: Vec<usize> = if id == TensorId::Layer(0, LayerTensor::VProj) {
            t.shape.iter().rev().copied().collect()
        } else {
            t.shape.clone()
        };
        g.tensor(&id.gguf_name(), &shape, &t.to_f32(), GgmlType::F32);
    }
    let (_d, path) = write(&g);
    match model::load(&path) {
        Err(Error::Shape { name, expected, got }) => {
            assert_eq!(name, "blk.0.attn_v.weight");
            assert_eq!((expected, got), (vec![32, 64], vec![64, 32]));
        }
        other => panic!("expected Shape, got {:?}", other.map(|_| ())),
    }

    // Unsupported type: a Q4_K tensor (256-element blocks of 144 bytes).
    let mut g = GgufWriter::new();
    g.tensor_raw("k", vec![256], GgmlType::Q4_K, vec![0; 144]);
    let (_d, path) = write(&g);
    let f = GgufFile::open(&path).unwrap();
    match f.tensor("k") {
        Err(Error::Dtype { name, dtype, .. }) => assert_eq!((name.as_str(), dtype.as_str()), ("k", "Q4_K")),
        other => panic!("expected Dtype, got {other:?}"),
    }
}

#[test]
fn malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let open = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        GgufFile::open(&path)
    };
    let mut g = GgufWriter::new();
    g.meta("general.architecture", Value::Str("llama".into()));
    g.tensor("t", &[64], &[0.5; 64], GgmlType::F32);
    let good = g.to_bytes();
    assert!(open(&good).is_ok());

    let msg = |r: nanofuse_engine::Result<GgufFile>| match r {
        Err(Error::Gguf(m)) => m,
        other => panic!("expected a GGUF error, got {other:?}"),
    };
    assert!(msg(open(b"GGML\x03\0\0\0")).contains("not a GGUF file"));
    let mut v1 = good.clone();
    v1[4] = 1;
    assert!(msg(open(&v1)).contains("version 1"));
    let mut be = good.clone();
    be[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(msg(open(&be)).contains("big-endian"));
    // Cut inside the metadata, and cut inside the tensor data.
    assert!(msg(open(&good[..40])).contains("truncated"));
    assert!(msg(open(&good[..good.len() - 4])).contains("past the end"));
    // A string length larger than the file.
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(msg(open(&huge)).contains("truncated"));
}

/// The GGUF vocabulary as a byte-level BPE tokenizer: merges applied, control tokens kept
/// whole, text round-trips, BOS added when the file asks for it.
#[test]
fn tokenizer_from_gguf() {
    for (pre, add_bos) in [("gpt2", false), ("smollm", true)] {
        let mut g = GgufWriter::new();
        let tokens = gguf_tokenizer(&mut g, pre, add_bos);
        g.meta("tokenizer.ggml.bos_token_id", Value::U32(266));
        g.meta("tokenizer.ggml.eos_token_id", Value::U32(267));
        let (_dir, path) = write(&g);
        let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let id = |s: &str| tokens.iter().position(|t| t == s).unwrap() as u32;
        assert_eq!(tok.vocab_size(), tokens.len());

        let ids = tok.encode("hello world<|endoftext|> the", false).unwrap();
        assert_eq!(ids, [id("hello"), id("Ġworld"), id("<|endoftext|>"), id("Ġthe")], "{pre}");
        assert_eq!(tok.decode(&ids, false).unwrap(), "hello world<|endoftext|> the");
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello world the");

        let with_special = tok.encode("hello", true).unwrap();
        assert_eq!(with_special, if add_bos { vec![266, id("hello")] } else { vec![id("hello")] });

        for text in ["Grüße, 2025!\n\ttabs  and  spaces", "<|im_start|>user\nhi"] {
            assert_eq!(tok.decode(&tok.encode(text, false).unwrap(), false).unwrap(), text, "{pre}");
        }
    }
}

#[test]
fn tokenizer_json_round_trip() {
    // A tokenizer.json written by the tokenizers crate itself, read back through the engine.
    let mut g = GgufWriter::new();
    let tokens = gguf_tokenizer(&mut g, "gpt2", false);
    let (dir, path) = write(&g);
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let json = dir.path().join("tokenizer.json");
    tok.inner().save(&json, false).unwrap();
    let back = Tokenizer::from_file(&json).unwrap();
    let text = "hello world, the end<|endoftext|>";
    assert_eq!(back.encode(text, false).unwrap(), tok.encode(text, false).unwrap());
    assert_eq!(back.decode(&back.encode(text, false).unwrap(), false).unwrap(), text);
    assert_eq!(back.token_to_id("Ġworld"), Some(tokens.iter().position(|t| t == "Ġworld").unwrap() as u32));
}

/// Tensor rows of the embedding in GGUF order (ne[0] = H fastest) are the HF rows.
#[test]
fn dims_order_is_reversed_shape() {
    let t = Tensor::from_f32(vec![3, 32], &(0..96).map(|i| i as f32).collect::<Vec<_>>());
    let mut g = GgufWriter::new();
    g.tensor("e", &t.shape, &t.to_f32(), GgmlType::F32);
    let (_dir, path) = write(&g);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_info("e").unwrap().dims, [32, 3]);
    let back = f.tensor("e").unwrap();
    assert_eq!(back.row(2)[0].to_f32(), 64.0);
}
