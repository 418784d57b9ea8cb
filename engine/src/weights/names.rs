//! Which tensors a model has, what each format calls them and what shape each must have.
//!
//! Shapes are in Hugging Face's row-major `[out_features, in_features]` order (a linear
//! layer computes `y = x · Wᵀ`); GGUF lists the same dimensions reversed (its `ne[0]` is the
//! fastest-varying, `in_features`), which [`crate::gguf::TensorInfo::shape`] undoes.
//!
//! | tensor | HF name | GGUF name | shape |
//! |---|---|---|---|
//! | embedding | `model.embed_tokens.weight` | `token_embd.weight` | `[V, H]` |
//! | attention norm | `model.layers.N.input_layernorm.weight` | `blk.N.attn_norm.weight` | `[H]` |
//! | q | `model.layers.N.self_attn.q_proj.weight` | `blk.N.attn_q.weight` | `[nh·d, H]` |
//! | k | `... self_attn.k_proj.weight` | `blk.N.attn_k.weight` | `[nkv·d, H]` |
//! | v | `... self_attn.v_proj.weight` | `blk.N.attn_v.weight` | `[nkv·d, H]` |
//! | o | `... self_attn.o_proj.weight` | `blk.N.attn_output.weight` | `[H, nh·d]` |
//! | q norm (Qwen3) | `... self_attn.q_norm.weight` | `blk.N.attn_q_norm.weight` | `[d]` |
//! | k norm (Qwen3) | `... self_attn.k_norm.weight` | `blk.N.attn_k_norm.weight` | `[d]` |
//! | MLP norm | `model.layers.N.post_attention_layernorm.weight` | `blk.N.ffn_norm.weight` | `[H]` |
//! | gate | `... mlp.gate_proj.weight` | `blk.N.ffn_gate.weight` | `[I, H]` |
//! | up | `... mlp.up_proj.weight` | `blk.N.ffn_up.weight` | `[I, H]` |
//! | down | `... mlp.down_proj.weight` | `blk.N.ffn_down.weight` | `[H, I]` |
//! | final norm | `model.norm.weight` | `output_norm.weight` | `[H]` |
//! | LM head (untied only) | `lm_head.weight` | `output.weight` | `[V, H]` |

use crate::config::ModelConfig;

/// A tensor of one decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    AttnNorm,
    QProj,
    KProj,
    VProj,
    OProj,
    QNorm,
    KNorm,
    MlpNorm,
    GateProj,
    UpProj,
    DownProj,
}

impl LayerTensor {
    /// Every layer tensor, in checkpoint order.
    pub const ALL: [LayerTensor; 11] = [
        LayerTensor::AttnNorm,
        LayerTensor::QProj,
        LayerTensor::KProj,
        LayerTensor::VProj,
        LayerTensor::OProj,
        LayerTensor::QNorm,
        LayerTensor::KNorm,
        LayerTensor::MlpNorm,
        LayerTensor::GateProj,
        LayerTensor::UpProj,
        LayerTensor::DownProj,
    ];

    const fn hf_suffix(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "input_layernorm",
            LayerTensor::QProj => "self_attn.q_proj",
            LayerTensor::KProj => "self_attn.k_proj",
            LayerTensor::VProj => "self_attn.v_proj",
            LayerTensor::OProj => "self_attn.o_proj",
            LayerTensor::QNorm => "self_attn.q_norm",
            LayerTensor::KNorm => "self_attn.k_norm",
            LayerTensor::MlpNorm => "post_attention_layernorm",
            LayerTensor::GateProj => "mlp.gate_proj",
            LayerTensor::UpProj => "mlp.up_proj",
            LayerTensor::DownProj => "mlp.down_proj",
        }
    }

    const fn gguf_suffix(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "attn_norm",
            LayerTensor::QProj => "attn_q",
            LayerTensor::KProj => "attn_k",
            LayerTensor::VProj => "attn_v",
            LayerTensor::OProj => "attn_output",
            LayerTensor::QNorm => "attn_q_norm",
            LayerTensor::KNorm => "attn_k_norm",
            LayerTensor::MlpNorm => "ffn_norm",
            LayerTensor::GateProj => "ffn_gate",
            LayerTensor::UpProj => "ffn_up",
            LayerTensor::DownProj => "ffn_down",
        }
    }
}

/// One tensor of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorId {
    Embed,
    Layer(usize, LayerTensor),
    FinalNorm,
    LmHead,
}

impl TensorId {
    /// The Hugging Face (safetensors) name.
    pub fn hf_name(self) -> String {
        match self {
            TensorId::Embed => "model.embed_tokens.weight".into(),
            TensorId::Layer(l, t) => format!("model.layers.{l}.{}.weight", t.hf_suffix()),
            TensorId::FinalNorm => "model.norm.weight".into(),
            TensorId::LmHead => "lm_head.weight".into(),
        }
    }

    /// The GGUF (llama.cpp) name.
    pub fn gguf_name(self) -> String {
        match self {
            TensorId::Embed => "token_embd.weight".into(),
            TensorId::Layer(l, t) => format!("blk.{l}.{}.weight", t.gguf_suffix()),
            TensorId::FinalNorm => "output_norm.weight".into(),
            TensorId::LmHead => "output.weight".into(),
        }
    }

    /// The shape the config implies, HF order (`[out, in]` for a matrix).
    pub fn shape(self, cfg: &ModelConfig) -> Vec<usize> {
        let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        match self {
            TensorId::Embed | TensorId::LmHead => vec![cfg.vocab_size, h],
            TensorId::FinalNorm => vec![h],
            TensorId::Layer(_, t) => match t {
                LayerTensor::AttnNorm | LayerTensor::MlpNorm => vec![h],
                LayerTensor::QProj => vec![cfg.q_dim(), h],
                LayerTensor::KProj | LayerTensor::VProj => vec![cfg.kv_dim(), h],
                LayerTensor::OProj => vec![h, cfg.q_dim()],
                LayerTensor::QNorm | LayerTensor::KNorm => vec![d],
                LayerTensor::GateProj | LayerTensor::UpProj => vec![i, h],
                LayerTensor::DownProj => vec![h, i],
            },
        }
    }

    /// A stable index (for per-tensor random seeds): embedding 0, final norm 1, LM head 2,
    /// layer tensors from 3 on, 16 per layer.
    pub fn index(self) -> u64 {
        match self {
            TensorId::Embed => 0,
            TensorId::FinalNorm => 1,
            TensorId::LmHead => 2,
            TensorId::Layer(l, t) => {
                let pos = LayerTensor::ALL.iter().position(|&x| x == t).expect("in ALL");
                3 + 16 * l as u64 + pos as u64
            }
        }
    }
}

/// The tensors a model of this config has: the embedding, each layer's (with q/k norms for
/// Qwen3 only), the final norm and, unless tied, the LM head.
pub fn tensor_ids(cfg: &ModelConfig) -> Vec<TensorId> {
    let mut ids = vec![TensorId::Embed];
    for l in 0..cfg.num_layers {
        for t in LayerTensor::ALL {
            if matches!(t, LayerTensor::QNorm | LayerTensor::KNorm) && !cfg.arch.has_qk_norm() {
                continue;
            }
            ids.push(TensorId::Layer(l, t));
        }
    }
    ids.push(TensorId::FinalNorm);
    if !cfg.tie_word_embeddings {
        ids.push(TensorId::LmHead);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counts() {
        let cfg = ModelConfig::preset("qwen3-0.6b").unwrap();
        let ids = tensor_ids(&cfg);
        assert_eq!(ids.len(), 1 + 28 * 11 + 1); // tied: no LM head
        assert_eq!(TensorId::Layer(3, LayerTensor::KNorm).hf_name(), "model.layers.3.self_attn.k_norm.weight");
        assert_eq!(TensorId::Layer(3, LayerTensor::OProj).gguf_name(), "blk.3.attn_output.weight");
        assert_eq!(TensorId::Layer(0, LayerTensor::QProj).shape(&cfg), [2048, 1024]);
        assert_eq!(TensorId::Layer(0, LayerTensor::OProj).shape(&cfg), [1024, 2048]);

        let llama = ModelConfig::preset("llama-3-8b").unwrap();
        let ids = tensor_ids(&llama);
        assert_eq!(ids.len(), 1 + 32 * 9 + 2); // no q/k norms, untied
        assert_eq!(ids.last(), Some(&TensorId::LmHead));
    }

    #[test]
    fn indices_are_distinct() {
        let cfg = ModelConfig::preset("qwen3-0.6b").unwrap();
        let mut idx: Vec<u64> = tensor_ids(&cfg).into_iter().map(TensorId::index).collect();
        idx.push(TensorId::LmHead.index());
        let n = idx.len();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), n);
    }
}
