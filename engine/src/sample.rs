//! Choosing the next token from logits on the host: greedy (what the GPU's fused argmax
//! head computes, kept here for the sampling path and for tests), or temperature and
//! nucleus (top-p) sampling with a seeded generator, so a run can be repeated.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How the next token is picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties: the lowest id, as `torch.argmax`). On the GPU engine
    /// this runs in the LM head's epilogue; logits never leave the device.
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of most likely
    /// tokens whose probability reaches `top_p`, sampled with a generator seeded by `seed`.
    Sample { temperature: f32, top_p: f32, seed: u64 },
}

impl Sampling {
    /// Checks the parameters: temperature positive and finite, top-p in (0, 1].
    pub fn validate(&self) -> crate::Result<()> {
        if let Sampling::Sample { temperature, top_p, .. } = *self {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(crate::Error::config("temperature", format!("{temperature} is not a positive number")));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(crate::Error::config("top_p", format!("{top_p} is not in (0, 1]")));
            }
        }
        Ok(())
    }
}

/// A sampler's state: the generator of [`Sampling::Sample`].
pub struct Sampler {
    how: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; [`Sampling::validate`] first.
    pub fn new(how: Sampling) -> crate::Result<Sampler> {
        how.validate()?;
        let seed = if let Sampling::Sample { seed, .. } = how { seed } else { 0 };
        Ok(Sampler { how, rng: StdRng::seed_from_u64(seed) })
    }

    /// Whether the engine must bring logits to the host (anything but greedy).
    pub fn needs_logits(&self) -> bool {
        !matches!(self.how, Sampling::Greedy)
    }

    /// The next token from `logits` (non-finite logits are never picked unless all are).
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        match self.how {
            Sampling::Greedy => argmax(logits) as u32,
            Sampling::Sample { temperature, top_p, .. } => {
                let u: f32 = self.rng.random();
                sample_top_p(logits, temperature, top_p, u) as u32
            }
        }
    }
}

/// Index of the largest finite value, the lowest index on ties; 0 for an empty or
/// all-NaN slice.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &x) in v.iter().enumerate() {
        if !x.is_nan() && (!found || x > best_v) {
            best = i;
            best_v = x;
            found = true;
        }
    }
    best
}

/// Nucleus sampling with the uniform draw `u` in [0, 1): the tokens sorted by probability
/// (ties by id), the shortest prefix whose mass reaches `top_p`, and the token where the
/// cumulative mass of that prefix (renormalized) passes `u`.
pub fn sample_top_p(logits: &[f32], temperature: f32, top_p: f32, u: f32) -> usize {
    let max = logits.iter().copied().filter(|x| x.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return argmax(logits);
    }
    let mut probs: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, if x.is_finite() { ((x - max) / temperature).exp() } else { 0.0 }))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut n = 0;
    for p in &probs {
        kept += p.1;
        n += 1;
        if kept >= top_p * total {
            break;
        }
    }
    let target = u * kept;
    let mut acc = 0.0;
    for p in &probs[..n] {
        acc += p.1;
        if acc > target {
            return p.0;
        }
    }
    probs[n - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, f32::NAN]), 1);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities about 0.665, 0.245, 0.090: top-p 0.5 keeps only the first.
        let logits = [2.0, 1.0, 0.0];
        for u in [0.0, 0.3, 0.99] {
            assert_eq!(sample_top_p(&logits, 1.0, 0.5, u), 0);
        }
        // top-p 1 keeps all three; the draw picks by cumulative mass.
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.1), 0);
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.8), 1);
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.95), 2);
    }

    #[test]
    fn seeded_sampling_repeats() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let how = Sampling::Sample { temperature: 0.8, top_p: 0.9, seed: 7 };
        let run = || {
            let mut s = Sampler::new(how).unwrap();
            (0..20).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn bad_parameters_are_errors() {
        for (t, p) in [(0.0, 0.9), (f32::NAN, 0.9), (1.0, 0.0), (1.0, 1.5)] {
            let how = Sampling::Sample { temperature: t, top_p: p, seed: 0 };
            assert!(Sampler::new(how).is_err(), "temperature {t}, top_p {p}");
        }
    }
}
