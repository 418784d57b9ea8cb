//! Seeded random weights of any config, for speed work and tests without checkpoint files.
//!
//! Each tensor has its own generator, seeded from `(seed, TensorId::index)`, so one tensor
//! can be generated alone (e.g. a layer at a time for a GPU upload) and is the same as in
//! [`random_weights`]. Values (uniform):
//!
//! * matrices `[out, in]`: `±1/√in` (activations keep their scale through a projection);
//! * the embedding and LM head: `±1`, `±1/√H`;
//! * norm weights: `[0.8, 1.2)`.
//!
//! The generator is `rand`'s `StdRng`: reproducible for a given `rand` version.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{ModelWeights, Tensor, TensorId};
use crate::config::ModelConfig;

/// Random weights of the whole model.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights {
    ModelWeights::assemble(cfg, |id| id.hf_name(), |id| Ok(random_tensor(cfg, id, seed)))
        .expect("random tensors have the config's shapes")
}

/// The random tensor `id` of [`random_weights`]`(cfg, seed)`.
pub fn random_tensor(cfg: &ModelConfig, id: TensorId, seed: u64) -> Tensor {
    let shape = id.shape(cfg);
    let mut rng = StdRng::seed_from_u64(splitmix64(seed ^ splitmix64(id.index())));
    let (lo, hi) = match (&id, shape.as_slice()) {
        (TensorId::Embed, _) => (-1.0, 1.0),
        (_, [_]) => (0.8, 1.2),
        (_, [_, cols]) => {
            let a = 1.0 / (*cols as f32).sqrt();
            (-a, a)
        }
        _ => unreachable!("tensors are vectors or matrices"),
    };
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_f32(shape, &data)
}

/// SplitMix64's output function: spreads nearby integers over the 64-bit range.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::LayerTensor;

    #[test]
    fn seeded_and_per_tensor() {
        let cfg = ModelConfig {
            num_layers: 2,
            vocab_size: 64,
            hidden_size: 64,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            ..ModelConfig::preset("smollm2-135m").unwrap()
        };
        let a = random_weights(&cfg, 7);
        assert_eq!(a, random_weights(&cfg, 7));
        assert_ne!(a.layers[0].q_proj, random_weights(&cfg, 8).layers[0].q_proj);
        let id = TensorId::Layer(1, LayerTensor::DownProj);
        assert_eq!(&random_tensor(&cfg, id, 7), a.get(id).unwrap());
        assert_ne!(a.layers[0].gate_proj, a.layers[0].up_proj);
        let norm = a.layers[1].attn_norm.to_f32();
        assert!(norm.iter().all(|v| (0.79..=1.21).contains(v)));
        let bound = 1.0 / 1536f32.sqrt() + 1e-3;
        assert!(a.layers[1].down_proj.to_f32().iter().all(|v| v.abs() <= bound));
    }
}
