//! Rotary position embeddings (RoPE) as Hugging Face checkpoints need them.
//!
//! # Frequencies
//! For a head of dimension `d` there are `d / 2` inverse frequencies
//! `inv_freq[i] = 1 / theta^(2i / d)` (transformers' `_compute_default_rope_parameters`),
//! modified by [`RopeScaling`]: Llama 3.1's `llama3` scaling exactly as transformers'
//! `_compute_llama3_parameters` computes it, or per-frequency divisors from a GGUF.
//! The arithmetic is done in f32 in transformers' order of operations (it computes these
//! tables in float32), so the tables match its to within an ulp of the libm functions.
//!
//! # Rotate-half convention
//! HF's Llama and Qwen3 pair element `i` of a head with element `i + d/2` (not `2i` with
//! `2i + 1`, the GPT-J/"interleaved" convention): with `c = cos(pos · inv_freq[i])` and
//! `s = sin(pos · inv_freq[i])`,
//!
//! ```text
//! x'[i]       = x[i] · c - x[i + d/2] · s
//! x'[i + d/2] = x[i + d/2] · c + x[i] · s        (i < d/2)
//! ```
//!
//! which is `x · cos + rotate_half(x) · sin` with HF's `emb = cat(freqs, freqs)`. The
//! attention scaling factor of both scalings is 1 (the tables are plain cos and sin).
//! GGUF files of Llama store q and k rows permuted for llama.cpp's interleaved pairing;
//! [`crate::gguf::model`] undoes that, so these tables serve both formats.

use crate::config::{ModelConfig, RopeScaling};

/// The `head_dim / 2` inverse frequencies of a model (scaling applied).
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    inv_freq_for(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling)
}

/// The `head_dim / 2` inverse frequencies for base `theta` and a scaling.
pub fn inv_freq_for(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let dim = head_dim as f32;
    let base = theta as f32;
    // transformers: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), in f32.
    let plain = (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim));
    match scaling {
        RopeScaling::None => plain.collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let (factor, low, high) = (*factor as f32, *low_freq_factor as f32, *high_freq_factor as f32);
            let old_context_len = *original_max_position_embeddings as f32;
            plain.map(|f| llama3_scale(f, factor, low, high, old_context_len)).collect()
        }
        RopeScaling::FreqFactors(factors) => plain.zip(factors).map(|(f, d)| f / d).collect(),
    }
}

/// One frequency through transformers' `_compute_llama3_parameters`:
///
/// ```text
/// wavelen = 2π / f
/// wavelen < old_context_len / high  -> f            (high frequencies: kept)
/// wavelen > old_context_len / low   -> f / factor   (low frequencies: slowed)
/// otherwise, smooth = (old_context_len / wavelen - low) / (high - low),
///                   -> (1 - smooth) · f / factor + smooth · f
/// ```
fn llama3_scale(f: f32, factor: f32, low: f32, high: f32, old_context_len: f32) -> f32 {
    let low_freq_wavelen = old_context_len / low;
    let high_freq_wavelen = old_context_len / high;
    let wavelen = 2.0 * std::f32::consts::PI / f;
    if wavelen < high_freq_wavelen {
        f
    } else if wavelen > low_freq_wavelen {
        f / factor
    } else {
        let smooth = (old_context_len / wavelen - low) / (high - low);
        (1.0 - smooth) * f / factor + smooth * f
    }
}

/// cos and sin of `pos · inv_freq[i]` for positions `0..max_seq`, row-major
/// `[max_seq, head_dim / 2]` (HF's tables repeat each row twice, `cat(freqs, freqs)`; one
/// copy is kept).
#[derive(Clone, Debug)]
pub struct RopeTable {
    half: usize,
    max_seq: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// The table of a model for positions `0..max_seq`.
    pub fn new(cfg: &ModelConfig, max_seq: usize) -> RopeTable {
        RopeTable::from_inv_freq(&inv_freq(cfg), max_seq)
    }

    /// The table for given inverse frequencies. The angle `pos · inv_freq[i]` is rounded to
    /// f32 as in transformers (an f32 product), its cos and sin computed in f64 and rounded.
    pub fn from_inv_freq(inv_freq: &[f32], max_seq: usize) -> RopeTable {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_seq * half);
        let mut sin = Vec::with_capacity(max_seq * half);
        for pos in 0..max_seq {
            for &f in inv_freq {
                let angle = f64::from(pos as f32 * f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { half, max_seq, cos, sin }
    }

    /// Number of positions in the table.
    pub const fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// `head_dim / 2`.
    pub const fn half_dim(&self) -> usize {
        self.half
    }

    /// `cos(pos · inv_freq[i])` for `i < head_dim / 2`.
    pub fn cos(&self, pos: usize) -> &[f32] {
        &self.cos[pos * self.half..(pos + 1) * self.half]
    }

    /// `sin(pos · inv_freq[i])` for `i < head_dim / 2`.
    pub fn sin(&self, pos: usize) -> &[f32] {
        &self.sin[pos * self.half..(pos + 1) * self.half]
    }

    /// Rotates one head `x` (`head_dim` elements) in place for position `pos`, rotate-half
    /// convention (module doc).
    ///
    /// # Panics
    /// If `x.len() != head_dim` or `pos >= max_seq`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        assert_eq!(x.len(), 2 * self.half, "RoPE: head of {} elements, table for {}", x.len(), 2 * self.half);
        assert!(pos < self.max_seq, "RoPE: position {pos} outside the table of {}", self.max_seq);
        let (lo, hi) = x.split_at_mut(self.half);
        for (((a, b), &c), &s) in lo.iter_mut().zip(hi).zip(self.cos(pos)).zip(self.sin(pos)) {
            let (x1, x2) = (*a, *b);
            *a = x1 * c - x2 * s;
            *b = x2 * c + x1 * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f32, want: f64, rtol: f64) -> bool {
        (f64::from(got) - want).abs() <= rtol * want.abs()
    }

    #[test]
    fn default_frequencies() {
        let f = inv_freq_for(128, 10_000.0, &RopeScaling::None);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        // 10000^(-2/128) and 10000^(-126/128), computed in f64.
        assert!(close(f[1], 0.865_964_323_360_065_3, 1e-6), "{}", f[1]);
        assert!(close(f[63], 1.154_781_984_689_458_2e-4, 1e-6), "{}", f[63]);
    }

    /// Llama 3.1 8B (theta 500000, head_dim 128, factor 8, low 1, high 4, context 8192): the
    /// wavelength thresholds 2048 and 8192 put indices 0..=28 in the kept band, 29..=34 in the
    /// smoothed band and 35..64 in the divided band. Expected values: the formula in f64.
    #[test]
    fn llama3_scaling_known_values() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let f = inv_freq_for(128, 500_000.0, &scaling);
        let plain = inv_freq_for(128, 500_000.0, &RopeScaling::None);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[28], plain[28], "kept band");
        assert!(close(f[28], 0.003_211_445_994_752_591_3, 1e-6));
        assert!(close(f[29], 0.002_166_570_763_503_359, 1e-5), "smoothed: {}", f[29]);
        assert!(close(f[34], 1.785_078_127_679_963_8e-4, 1e-5), "smoothed: {}", f[34]);
        assert!(close(f[35], 0.000_764_496_988_317_174_7 / 8.0, 1e-6), "divided: {}", f[35]);
        assert!(close(f[63], 3.068_925_988_914_511e-7, 1e-6), "divided: {}", f[63]);
        for i in 35..64 {
            assert_eq!(f[i], plain[i] / 8.0);
        }
    }

    #[test]
    fn freq_factors_divide() {
        let factors = vec![1.0, 2.0, 4.0, 8.0];
        let f = inv_freq_for(8, 10_000.0, &RopeScaling::FreqFactors(factors));
        let plain = inv_freq_for(8, 10_000.0, &RopeScaling::None);
        for i in 0..4 {
            assert_eq!(f[i], plain[i] / [1.0, 2.0, 4.0, 8.0][i]);
        }
    }

    #[test]
    fn table_values() {
        let inv = [1.0f32, 0.5, 0.01];
        let t = RopeTable::from_inv_freq(&inv, 4);
        assert_eq!(t.cos(0), &[1.0, 1.0, 1.0]);
        assert_eq!(t.sin(0), &[0.0, 0.0, 0.0]);
        assert_eq!(t.cos(3)[0], 3.0f64.cos() as f32);
        assert_eq!(t.sin(3)[1], 1.5f64.sin() as f32);
    }

    /// Rotate-half pairing: element i moves with element i + d/2.
    #[test]
    fn apply_pairs_halves() {
        let t = RopeTable::from_inv_freq(&[1.0, 0.0], 2);
        // Position 1: pair (x0, x2) rotated by 1 radian, pair (x1, x3) by 0.
        let mut x = [1.0, 2.0, 0.0, 3.0];
        t.apply(&mut x, 1);
        let (c, s) = (1.0f64.cos() as f32, 1.0f64.sin() as f32);
        assert_eq!(x, [c, 2.0, s, 3.0]);
    }

    /// q·k after RoPE depends only on the distance of the positions.
    #[test]
    fn relative_position() {
        let cfg = ModelConfig::preset("smollm2-135m").unwrap();
        let t = RopeTable::new(&cfg, 64);
        let q: Vec<f32> = (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let k: Vec<f32> = (0..64).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
        let dot_at = |pq: usize, pk: usize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            t.apply(&mut a, pq);
            t.apply(&mut b, pk);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        let d0 = dot_at(5, 2);
        for (pq, pk) in [(3, 0), (10, 7), (40, 37)] {
            assert!((dot_at(pq, pk) - d0).abs() < 1e-3, "{pq},{pk}: {} vs {d0}", dot_at(pq, pk));
        }
    }
}
