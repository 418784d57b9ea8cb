//! The engine's error type. Every loader and the reference forward return [`Result`]; a bad
//! file or config is an error value that names the file, key or tensor and what was
//! expected, never a panic.

use std::path::PathBuf;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model or running the CPU reference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("reading `{path}` failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config.json, a safetensors header or index) is not valid JSON of the
    /// expected form.
    #[error("`{path}` is not valid: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The config names an architecture the engine does not run.
    #[error("unsupported architecture `{0}` (supported: LlamaForCausalLM, Qwen3ForCausalLM; GGUF: llama, qwen3)")]
    UnknownArchitecture(String),

    /// A config value is missing, has the wrong type, or is outside what the engine runs.
    #[error("config `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// No preset has this name.
    #[error("unknown preset `{0}` (presets: {presets})", presets = crate::config::PRESET_NAMES.join(", "))]
    UnknownPreset(String),

    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String },

    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape { name: String, expected: Vec<usize>, got: Vec<usize> },

    /// A tensor is stored in a data type the loader does not convert.
    #[error("tensor `{name}` has dtype {dtype}, expected one of {expected}")]
    Dtype { name: String, dtype: String, expected: &'static str },

    /// A safetensors file is malformed (header, offsets, sizes).
    #[error("safetensors `{path}`: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    /// A GGUF file is malformed or uses a feature this reader does not support.
    #[error("GGUF: {0}")]
    Gguf(String),

    /// The tokenizer could not be built, or encoding/decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenId { id: u32, vocab: usize },

    /// The KV cache has no room for the tokens given.
    #[error("sequence of {needed} positions exceeds the cache's {capacity}")]
    SequenceTooLong { needed: usize, capacity: usize },

    /// A GPU call failed (no driver, a bad argument to an op, a CUDA error): the host
    /// crate's error.
    #[error(transparent)]
    Gpu(#[from] nanofuse_host::Error),

    /// The step kernels flagged a condition on the device (they refuse to write out of
    /// bounds and set a flag instead).
    #[error("device: {0}")]
    Device(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// An [`Error::Config`] for `key`.
    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config { key: key.into(), reason: reason.into() }
    }
}
