//! A model's weights in bf16, in Hugging Face's layout, whatever file they came from.
//!
//! * [`safetensors`]: a Hugging Face checkpoint directory (bf16, f16 or f32 tensors);
//! * [`crate::gguf::model`]: a llama.cpp GGUF file (dequantized; Llama's q/k rows un-permuted);
//! * [`random`]: seeded random weights of any config (speed work without files).
//!
//! Every loader goes through [`ModelWeights::assemble`], which asks for each tensor of
//! [`names::tensor_ids`] and checks its shape against the config, so a missing tensor or a
//! wrong shape is an error naming the tensor, the same for every format.

pub mod names;
pub mod random;
pub mod safetensors;

use half::bf16;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
pub use names::{LayerTensor, TensorId, tensor_ids};

/// A dense row-major bf16 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (a matrix is `[rows, cols]`).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements, the last dimension contiguous.
    pub data: Vec<bf16>,
}

impl Tensor {
    /// A tensor from bf16 values.
    ///
    /// # Panics
    /// If `data.len()` is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<bf16>) -> Tensor {
        assert_eq!(data.len(), shape.iter().product::<usize>(), "tensor data does not match shape {shape:?}");
        Tensor { shape, data }
    }

    /// A tensor from f32 values, each rounded to bf16 (round to nearest even).
    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> Tensor {
        Tensor::new(shape, data.iter().map(|&v| bf16::from_f32(v)).collect())
    }

    /// The values as f32 (exact).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|v| v.to_f32()).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Row `r` of a matrix (`shape = [rows, cols]`).
    pub fn row(&self, r: usize) -> &[bf16] {
        let cols = self.shape[1];
        &self.data[r * cols..(r + 1) * cols]
    }
}

/// The weights of one decoder layer (HF layout, module [`names`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// `input_layernorm`, `[H]`.
    pub attn_norm: Tensor,
    /// `[nh·d, H]`.
    pub q_proj: Tensor,
    /// `[nkv·d, H]`.
    pub k_proj: Tensor,
    /// `[nkv·d, H]`.
    pub v_proj: Tensor,
    /// `[H, nh·d]`.
    pub o_proj: Tensor,
    /// Qwen3's per-head q RMSNorm weight, `[d]`; `None` for Llama.
    pub q_norm: Option<Tensor>,
    /// Qwen3's per-head k RMSNorm weight, `[d]`; `None` for Llama.
    pub k_norm: Option<Tensor>,
    /// `post_attention_layernorm`, `[H]`.
    pub mlp_norm: Tensor,
    /// `[I, H]`.
    pub gate_proj: Tensor,
    /// `[I, H]`.
    pub up_proj: Tensor,
    /// `[H, I]`.
    pub down_proj: Tensor,
}

/// All weights of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    /// `[V, H]`.
    pub embed_tokens: Tensor,
    pub layers: Vec<LayerWeights>,
    /// `model.norm`, `[H]`.
    pub final_norm: Tensor,
    /// `[V, H]`; `None` when the config ties it to the embedding.
    pub lm_head: Option<Tensor>,
}

impl ModelWeights {
    /// The LM head: its own matrix, or the embedding when tied.
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The tensor `id` (`None` for q/k norms of a Llama, or the LM head when tied).
    pub fn get(&self, id: TensorId) -> Option<&Tensor> {
        match id {
            TensorId::Embed => Some(&self.embed_tokens),
            TensorId::FinalNorm => Some(&self.final_norm),
            TensorId::LmHead => self.lm_head.as_ref(),
            TensorId::Layer(l, t) => {
                let w = self.layers.get(l)?;
                match t {
                    LayerTensor::AttnNorm => Some(&w.attn_norm),
                    LayerTensor::QProj => Some(&w.q_proj),
                    LayerTensor::KProj => Some(&w.k_proj),
                    LayerTensor::VProj => Some(&w.v_proj),
                    LayerTensor::OProj => Some(&w.o_proj),
                    LayerTensor::QNorm => w.q_norm.as_ref(),
                    LayerTensor::KNorm => w.k_norm.as_ref(),
                    LayerTensor::MlpNorm => Some(&w.mlp_norm),
                    LayerTensor::GateProj => Some(&w.gate_proj),
                    LayerTensor::UpProj => Some(&w.up_proj),
                    LayerTensor::DownProj => Some(&w.down_proj),
                }
            }
        }
    }

    /// Builds the weights of `cfg` from `load`, which returns one tensor (or an error, e.g.
    /// [`Error::MissingTensor`]) for each id of [`tensor_ids`]; each shape is checked against
    /// [`TensorId::shape`], a mismatch being [`Error::Shape`] with `name(id)` as its name.
    pub fn assemble(
        cfg: &ModelConfig,
        name: impl Fn(TensorId) -> String,
        mut load: impl FnMut(TensorId) -> Result<Tensor>,
    ) -> Result<ModelWeights> {
        let mut take = |id: TensorId| -> Result<Tensor> {
            let t = load(id)?;
            let expected = id.shape(cfg);
            if t.shape != expected {
                return Err(Error::Shape { name: name(id), expected, got: t.shape });
            }
            Ok(t)
        };
        let embed_tokens = take(TensorId::Embed)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let mut t = |lt| take(TensorId::Layer(l, lt));
            let qk = cfg.arch.has_qk_norm();
            layers.push(LayerWeights {
                attn_norm: t(LayerTensor::AttnNorm)?,
                q_proj: t(LayerTensor::QProj)?,
                k_proj: t(LayerTensor::KProj)?,
                v_proj: t(LayerTensor::VProj)?,
                o_proj: t(LayerTensor::OProj)?,
                q_norm: if qk { Some(t(LayerTensor::QNorm)?) } else { None },
                k_norm: if qk { Some(t(LayerTensor::KNorm)?) } else { None },
                mlp_norm: t(LayerTensor::MlpNorm)?,
                gate_proj: t(LayerTensor::GateProj)?,
                up_proj: t(LayerTensor::UpProj)?,
                down_proj: t(LayerTensor::DownProj)?,
            });
        }
        let final_norm = take(TensorId::FinalNorm)?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(take(TensorId::LmHead)?) };
        Ok(ModelWeights { embed_tokens, layers, final_norm, lm_head })
    }
}
