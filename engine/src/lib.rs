//! # nanofuse-engine
//!
//! The foundation of a decode engine that runs whole Qwen3 and Llama models on nanofuse's
//! fused kernels: everything that can be built and tested on a CPU.
//!
//! * [`config`]: [`ModelConfig`] from a Hugging Face `config.json`, GGUF metadata or a
//!   named preset of a real model's shapes;
//! * [`rope`]: rotary inverse frequencies (Llama 3.1 scaling included) and cos/sin tables;
//! * [`weights`]: bf16 [`ModelWeights`] in Hugging Face's layout, from safetensors, GGUF
//!   ([`gguf`]: a reader, dequantization, the llama.cpp tensor mapping) or seeded random;
//! * [`tokenizer`]: `tokenizer.json` or a GGUF's vocabulary through the `tokenizers` crate;
//! * [`reference`]: a plain-loop f32 forward pass with a KV cache, the correctness
//!   reference for the GPU engine;
//! * [`gpu`]: the GPU decode [`Engine`] (fused or unfused), one CUDA graph per step;
//! * [`sample`]: greedy and seeded temperature/top-p sampling; [`load`]: a model from a
//!   path or a preset.
//!
//! The crate sits above `nanofuse-host` and drives its ops; nothing below depends on it.
//! It takes an opened `Gpu` (the root `nanofuse` crate's `open`, which embeds the PTX).

pub mod config;
pub mod error;
pub mod export;
pub mod gguf;
pub mod gpu;
pub mod load;
pub mod reference;
pub mod rope;
pub mod sample;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use gpu::{DEFAULT_PREFILL_CHUNK, Engine, EngineOptions, GenerateStats, Mode};
pub use load::{Model, load_model};
pub use sample::Sampling;
pub use tokenizer::Tokenizer;
pub use weights::{ModelWeights, Tensor};
