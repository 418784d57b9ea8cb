//! One entry point for every kind of model the engine runs: a Hugging Face directory, a
//! GGUF file, or a named preset with seeded random weights (speed work without files).

use std::path::Path;

use crate::config::{ModelConfig, PRESET_NAMES};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, model};
use crate::tokenizer::Tokenizer;
use crate::weights::ModelWeights;
use crate::weights::random::random_weights;
use crate::weights::safetensors::load_hf_dir;

/// A model ready for an engine: its config, bf16 weights and (for real checkpoints) its
/// tokenizer.
pub struct Model {
    /// The shapes and hyperparameters.
    pub config: ModelConfig,
    /// Every tensor, bf16, in Hugging Face's layout.
    pub weights: ModelWeights,
    /// `tokenizer.json` of a HF directory, or the GGUF's own vocabulary; `None` for random
    /// weights.
    pub tokenizer: Option<Tokenizer>,
    /// Where it came from, for reports: a path, or `random:<preset>`.
    pub source: String,
}

/// Where a model comes from, as a user names it: a path to a HF directory or a `.gguf`
/// file, or `random:<preset>` (a preset's shapes, seeded random weights).
pub fn load_model(spec: &str, seed: u64) -> Result<Model> {
    if let Some(name) = spec.strip_prefix("random:") {
        let config = ModelConfig::preset(name)?;
        let weights = random_weights(&config, seed);
        return Ok(Model { config, weights, tokenizer: None, source: spec.to_string() });
    }
    let path = Path::new(spec);
    if path.is_dir() {
        let (config, weights) = load_hf_dir(path)?;
        let tokenizer = Some(Tokenizer::from_file(path.join("tokenizer.json"))?);
        return Ok(Model { config, weights, tokenizer, source: spec.to_string() });
    }
    if path.is_file() {
        let file = GgufFile::open(path)?;
        let config = model::config(&file)?;
        let weights = model::weights(&file, &config)?;
        let tokenizer = Some(Tokenizer::from_gguf(&file)?);
        return Ok(Model { config, weights, tokenizer, source: spec.to_string() });
    }
    Err(Error::config(
        "model",
        format!(
            "`{spec}` is neither a directory, a file, nor `random:<preset>` (presets: {})",
            PRESET_NAMES.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_specs_are_errors() {
        assert!(matches!(load_model("/nonexistent/model", 0), Err(Error::Config { .. })));
        assert!(matches!(load_model("random:no-such-preset", 0), Err(Error::UnknownPreset(_))));
    }
}
