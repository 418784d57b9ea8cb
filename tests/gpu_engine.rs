//! The GPU decode engine against the CPU f32 reference forward (`nanofuse_engine::reference`)
//! on tiny random models (2 layers, Llama and Qwen3), fused and unfused: logits at every
//! prompt position (fed one position per step) and 20 decode steps; the batched prefill of a
//! 40-token prompt in chunks of 1, 7, 17 and 40 tokens (so the ops run their fused routes
//! and their RMSNorm + cuBLAS routes above M = 16) then 20 decode steps; the greedy tokens,
//! and the bounds of the cache.
//!
//! Bound: relative L2 error of each step's logits vector ≤ 2e-2. The engine keeps bf16
//! activations between kernels (as PyTorch does) where the reference keeps f32, through
//! 2 layers of projections, attention and the LM head; measured errors sit well below it.
//! Greedy tokens must match the reference wherever the reference's top-2 margin exceeds
//! 4 % of its logits' RMS (a clear winner).

mod common;

use std::sync::Arc;

use nanofuse::Gpu;
use nanofuse_engine::config::{Arch, ModelConfig, RopeScaling};
use nanofuse_engine::reference::Reference;
use nanofuse_engine::weights::random::random_weights;
use nanofuse_engine::{Engine, EngineOptions, Error, Mode, ModelWeights, Sampling};

const BOUND: f64 = 2e-2;
const PROMPT: [u32; 7] = [3, 17, 5, 200, 0, 22, 8];
const DECODE_STEPS: usize = 20;

/// 2 layers, H = 128, 4 query heads and 2 KV heads of 64, I = 256, V = 320.
fn tiny(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 320,
        hidden_size: 128,
        intermediate_size: 256,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 64,
        tie_word_embeddings: arch == Arch::Qwen3,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += f64::from(g - w).powi(2);
        den += f64::from(w).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
}

/// The top-2 margin of `v` relative to its RMS.
fn margin(v: &[f32]) -> f32 {
    let mut s: Vec<f32> = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    (s[0] - s[1]) / rms(v)
}

fn engine(gpu: &Arc<Gpu>, cfg: &ModelConfig, w: &ModelWeights, mode: Mode, max_seq: usize) -> Engine {
    Engine::new(gpu, cfg, w, EngineOptions::new(mode, max_seq), |_, _| {}).expect("engine")
}

/// Logits at every prompt position and over `DECODE_STEPS` greedy (reference) steps.
fn check_against_reference(gpu: &Arc<Gpu>, arch: Arch, mode: Mode) -> Vec<Vec<f32>> {
    let cfg = tiny(arch);
    let w = random_weights(&cfg, 11);
    let max_seq = PROMPT.len() + DECODE_STEPS + 1;
    let reference = Reference::new(&cfg, &w, max_seq).unwrap();
    let mut cache = reference.new_cache();
    let want_prompt = reference.forward(&PROMPT, &mut cache).unwrap();
    let mut eng = engine(gpu, &cfg, &w, mode, max_seq);
    let v = cfg.vocab_size;
    let mut all = Vec::new();
    let mut worst = 0.0f64;

    eng.reset(&PROMPT).unwrap();
    for (p, want) in want_prompt.chunks_exact(v).enumerate() {
        let got = eng.step_logits(None).unwrap();
        let e = rel_l2(&got, want);
        worst = worst.max(e);
        assert!(e <= BOUND, "{arch:?} {mode:?} prompt position {p}: logits error {e:.2e} > {BOUND}");
        all.push(got);
    }
    let mut next = nanofuse_engine::sample::argmax(&want_prompt[(PROMPT.len() - 1) * v..]) as u32;
    for s in 0..DECODE_STEPS {
        let want = reference.forward(&[next], &mut cache).unwrap();
        let got = eng.step_logits(Some(next)).unwrap();
        let e = rel_l2(&got, &want);
        worst = worst.max(e);
        assert!(e <= BOUND, "{arch:?} {mode:?} decode step {s}: logits error {e:.2e} > {BOUND}");
        let (g, r) = (nanofuse_engine::sample::argmax(&got), nanofuse_engine::sample::argmax(&want));
        if margin(&want) > 0.04 {
            assert_eq!(g, r, "{arch:?} {mode:?} decode step {s}: greedy token");
        }
        all.push(got);
        next = r as u32;
    }
    println!("{arch:?} {mode:?}: worst logits error {worst:.2e} over {} steps", all.len());
    all
}

#[test]
fn engine_matches_the_cpu_reference_fused_and_unfused() {
    let Some(gpu) = common::gpu() else { return };
    for arch in [Arch::Llama, Arch::Qwen3] {
        let fused = check_against_reference(&gpu, arch, Mode::Fused);
        let unfused = check_against_reference(&gpu, arch, Mode::Unfused);
        for (s, (f, u)) in fused.iter().zip(&unfused).enumerate() {
            let e = rel_l2(f, u);
            assert!(e <= BOUND, "{arch:?} step {s}: fused and unfused differ by {e:.2e}");
        }
    }
}

#[test]
fn batched_prefill_matches_the_reference_at_every_chunk_size() {
    let Some(gpu) = common::gpu() else { return };
    let prompt: Vec<u32> = (0..40u32).map(|i| (i * 97 + 13) % 320).collect();
    for arch in [Arch::Llama, Arch::Qwen3] {
        let cfg = tiny(arch);
        let w = random_weights(&cfg, 23);
        let max_seq = prompt.len() + DECODE_STEPS + 1;
        // The reference: the prompt's last logits, then greedy (reference) tokens and their
        // logits, which every engine below is fed.
        let reference = Reference::new(&cfg, &w, max_seq).unwrap();
        let mut cache = reference.new_cache();
        let v = cfg.vocab_size;
        let all = reference.forward(&prompt, &mut cache).unwrap();
        let mut want = vec![all[(prompt.len() - 1) * v..].to_vec()];
        let mut fed = Vec::new();
        for _ in 0..DECODE_STEPS {
            let t = nanofuse_engine::sample::argmax(want.last().unwrap()) as u32;
            fed.push(t);
            want.push(reference.forward(&[t], &mut cache).unwrap());
        }
        for mode in [Mode::Fused, Mode::Unfused] {
            for chunk in [1, 7, 17, 40] {
                let opts = EngineOptions { mode, max_seq, prefill_chunk: chunk };
                let mut eng = Engine::new(&gpu, &cfg, &w, opts, |_, _| {}).unwrap();
                let what = format!("{arch:?} {mode:?} chunk {chunk}");
                let got = eng.prefill_logits(&prompt).unwrap();
                let e = rel_l2(&got, &want[0]);
                assert!(e <= BOUND, "{what}: prefill logits error {e:.2e} > {BOUND}");
                assert_eq!(eng.position(), prompt.len());
                let mut worst = e;
                for (s, &t) in fed.iter().enumerate() {
                    let got = eng.step_logits(Some(t)).unwrap();
                    let e = rel_l2(&got, &want[s + 1]);
                    worst = worst.max(e);
                    assert!(e <= BOUND, "{what}: decode step {s} after the prefill: logits error {e:.2e}");
                }
                assert_eq!(&eng.tokens().unwrap()[..prompt.len()], &prompt[..], "{what}: the tokens buffer");
                println!("{what}: worst logits error {worst:.2e}");
            }
        }
    }
}

#[test]
fn greedy_argmax_head_matches_the_logits_head() {
    let Some(gpu) = common::gpu() else { return };
    for mode in [Mode::Fused, Mode::Unfused] {
        let cfg = tiny(Arch::Qwen3);
        let w = random_weights(&cfg, 5);
        let mut eng = engine(&gpu, &cfg, &w, mode, 48);
        // Greedy through the argmax head (fused epilogue or argmax kernel)...
        let (tokens, stats) = eng.generate(&PROMPT, 24, Sampling::Greedy, &[], |_| true).unwrap();
        assert_eq!(tokens.len(), 24);
        assert_eq!(stats.decode_tokens, 23);
        // ...and the same sequence re-fed through the logits head: each greedy token is the
        // argmax of the logits there, or within bf16 rounding of it.
        eng.reset(&PROMPT).unwrap();
        let mut logits = Vec::new();
        for _ in 0..PROMPT.len() {
            logits = eng.step_logits(None).unwrap();
        }
        for (i, &t) in tokens.iter().enumerate() {
            let best = nanofuse_engine::sample::argmax(&logits);
            // Two bf16 steps of the largest logit plus 1% of the RMS: the fused head rounds
            // bf16(W·g) against f32 x, the logits head W against bf16(norm(x))·g.
            let ulp = f32::from_bits((logits[best].abs().to_bits() & 0x7f80_0000).saturating_sub(7 << 23));
            let tol = 2.0 * ulp + 1e-2 * rms(&logits);
            assert!(
                logits[best] - logits[t as usize] <= tol,
                "{mode:?} token {i}: greedy {t} (logit {}) vs argmax {best} ({})",
                logits[t as usize],
                logits[best]
            );
            if i + 1 < tokens.len() {
                logits = eng.step_logits(Some(t)).unwrap();
            }
        }
        // Two runs give the same tokens.
        let (again, _) = eng.generate(&PROMPT, 24, Sampling::Greedy, &[], |_| true).unwrap();
        assert_eq!(again, tokens, "{mode:?}: greedy generation is deterministic");
        // The tokens buffer holds the prompt then the fed tokens.
        let fed = eng.tokens().unwrap();
        assert_eq!(&fed[..PROMPT.len()], &PROMPT);
        assert_eq!(&fed[PROMPT.len()..], &tokens[..23]);
    }
}

#[test]
fn the_cache_bounds_are_typed_errors() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = tiny(Arch::Llama);
    let w = random_weights(&cfg, 3);
    let mut eng = engine(&gpu, &cfg, &w, Mode::Fused, PROMPT.len());
    eng.prefill(&PROMPT).unwrap();
    assert!(matches!(eng.decode_step(), Err(Error::SequenceTooLong { .. })));
    assert!(matches!(eng.reset(&[0; 8]), Err(Error::SequenceTooLong { .. })));
    assert!(matches!(eng.reset(&[]), Err(Error::Config { .. })));
    assert!(matches!(eng.reset(&[320]), Err(Error::TokenId { .. })));
    let r = eng.generate(&PROMPT, 2, Sampling::Greedy, &[], |_| true);
    assert!(matches!(r, Err(Error::SequenceTooLong { .. })), "{r:?}");
    // The engine is still usable after the errors.
    eng.prefill(&PROMPT[..3]).unwrap();
    eng.decode_step().unwrap();
}

#[test]
fn seeded_sampling_repeats_on_the_gpu() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = tiny(Arch::Llama);
    let w = random_weights(&cfg, 9);
    let mut eng = engine(&gpu, &cfg, &w, Mode::Fused, 40);
    let how = Sampling::Sample { temperature: 0.9, top_p: 0.95, seed: 42 };
    let (a, _) = eng.generate(&PROMPT, 16, how, &[], |_| true).unwrap();
    let (b, _) = eng.generate(&PROMPT, 16, how, &[], |_| true).unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|&t| (t as usize) < cfg.vocab_size));
}

#[test]
fn the_stage_profile_times_every_stage() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = tiny(Arch::Qwen3);
    let w = random_weights(&cfg, 2);
    for mode in [Mode::Fused, Mode::Unfused] {
        let mut eng = engine(&gpu, &cfg, &w, mode, 16);
        eng.prefill(&PROMPT).unwrap();
        let stages = eng.profile_step(3).unwrap();
        let names: Vec<_> = stages.iter().map(|s| s.0).collect();
        // The fused step does RoPE inside its attention kernel.
        let want: &[&str] = match mode {
            Mode::Fused => &["step_begin", "qkv", "attention", "o_proj", "gate_up", "down", "head"],
            Mode::Unfused => &["step_begin", "qkv", "rope", "attention", "o_proj", "gate_up", "down", "head"],
        };
        assert_eq!(names, want, "{mode:?}");
        assert!(stages.iter().all(|s| s.1 > 0.0 && s.1 < 1e5), "{mode:?}: {stages:?}");
        assert_eq!(eng.position(), PROMPT.len() + 3);
        // Decoding goes on after the profile.
        eng.decode_step().unwrap();
    }
}

#[test]
fn the_leave_one_out_profile_times_the_step_without_each_stage() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = tiny(Arch::Qwen3);
    let w = random_weights(&cfg, 3);
    for mode in [Mode::Fused, Mode::Unfused] {
        let steps = 4;
        let mut eng = engine(&gpu, &cfg, &w, mode, PROMPT.len() + 9 * (steps + 1) + 8);
        let (want, _) = eng.generate(&PROMPT, 4, Sampling::Greedy, &[], |_| true).unwrap();
        eng.prefill(&PROMPT).unwrap();
        let variants = eng.profile_leave_one_out(steps).unwrap();
        let names: Vec<_> = variants.iter().map(|s| s.0).collect();
        let want_names: &[&str] = match mode {
            Mode::Fused => &["full", "qkv", "attention", "o_proj", "gate_up", "down", "head", "full"],
            Mode::Unfused => &["full", "qkv", "rope", "attention", "o_proj", "gate_up", "down", "head", "full"],
        };
        assert_eq!(names, want_names, "{mode:?}");
        assert!(variants.iter().all(|s| s.1 > 0.0 && s.1 < 1e5), "{mode:?}: {variants:?}");
        assert_eq!(eng.position(), PROMPT.len() + want_names.len() * (steps + 1));
        // A cache too short for the variants is a typed error, before anything runs.
        assert!(matches!(eng.profile_leave_one_out(1000), Err(Error::SequenceTooLong { .. })));
        // After a reset the engine generates as before (its own graphs are untouched).
        let (again, _) = eng.generate(&PROMPT, 4, Sampling::Greedy, &[], |_| true).unwrap();
        assert_eq!(again, want, "{mode:?}");
    }
}
