//! The decode engine's attention kernels against the CPU references (GPU; skipped without a
//! device): `qk_norm_rope` (with and without Qwen3's q/k norm) and `attention_decode` over
//! the model shapes (16,8,128) Qwen3-0.6B, (32,8,64) Llama-3.2-1B, (9,3,64) SmolLM2-135M,
//! (32,8,128) Llama-3-8B and (8,8,64) (no GQA), at context lengths 1, 2, 31, 64, 100, 1000,
//! 4097; a CUDA graph of `step_begin` + `qk_norm_rope` + `attention_decode` replayed with
//! the position advancing on the device; typed errors that need a device.
//!
//! Inputs fresh and random per case (q in [-3, 3), k, v in [-1, 1)); outputs and caches
//! poisoned with NaN before each launch.
//!
//! Bounds:
//! * rope/norm: per element `|got − ref| <= 2^-7·|ref| + 1e-5·rms(ref)`: one bf16 ulp of
//!   the f32 reference (`reference::qk_norm_rope_rows`), the kernel rounding once (half an
//!   ulp) plus f32 differences (rsqrt.approx, order of the sums) that can move a value
//!   across a rounding boundary. v is copied bitwise; only row `pos` of the caches is
//!   written (every other row keeps its poison).
//! * attention: relative Frobenius error <= 4e-3 and per element
//!   `0.02·rms(ref) + 0.02·|ref|` against `reference::attention_decode_rows` (f64); the
//!   kernel's f32 online softmax with `ex2.approx` and one bf16 rounding of the output is
//!   about 2^-9 relative. Two launches are bitwise identical.

mod common;

use std::sync::Arc;

use common::random_bf16;
use nanofuse::cudarc::driver::CudaSlice;
use nanofuse::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use nanofuse::reference::{self, compare, rms};
use nanofuse::{AttnScratch, AttnShape, Error, Gpu, QkNorm, attention_decode, bf16, qk_norm_rope, step, step_begin};
use rand::RngExt;

/// (num_heads, num_kv_heads, head_dim).
const SHAPES: [(usize, usize, usize); 5] = [(16, 8, 128), (32, 8, 64), (9, 3, 64), (32, 8, 128), (8, 8, 64)];
// 2072: with 64 splits an active split gets no positions (64 x 33 > 2072 + 33).
const LENS: [usize; 8] = [1, 2, 31, 64, 100, 1000, 2072, 4097];
const MAX_SEQ: usize = 4100;
const THETA: f64 = 1_000_000.0;

fn nan_bf16(gpu: &Gpu, len: usize) -> CudaSlice<bf16> {
    gpu.upload(&vec![bf16::NAN; len]).unwrap()
}

/// A state at position `pos` with the whole prompt buffer to feed.
fn state_at(gpu: &Gpu, pos: u32, prompt_len: u32) -> CudaSlice<u32> {
    let mut s = [0u32; step::LEN];
    s[step::POS] = pos;
    s[step::PROMPT_LEN] = prompt_len;
    gpu.upload(&s).unwrap()
}

#[test]
fn qk_norm_rope_matches_the_reference_and_writes_only_row_pos() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("qk_norm_rope");
    for &(nh, nkv, hd) in &SHAPES {
        for norm in [false, true] {
            let max_seq = 300;
            let shape = AttnShape::new(nh, nkv, hd, max_seq);
            let pos = rng.random_range(0..max_seq);
            let q = random_bf16(&mut rng, nh * hd, -3.0, 3.0);
            let k = random_bf16(&mut rng, nkv * hd, -3.0, 3.0);
            let v = random_bf16(&mut rng, nkv * hd, -3.0, 3.0);
            let (qw, kw) = (random_bf16(&mut rng, hd, 0.5, 1.5), random_bf16(&mut rng, hd, 0.5, 1.5));
            let table = reference::rope_table(max_seq, hd, THETA);
            let row = &table[pos * hd..(pos + 1) * hd];
            let eps = 1e-6;
            let nq = norm.then_some((qw.as_slice(), eps));
            let nk = norm.then_some((kw.as_slice(), eps));
            let want_q = reference::qk_norm_rope_rows(&q, hd, nq, row).unwrap();
            let want_k = reference::qk_norm_rope_rows(&k, hd, nk, row).unwrap();

            let mut qd = gpu.upload(&q).unwrap();
            let (kd, vd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
            let (qwd, kwd) = (gpu.upload(&qw).unwrap(), gpu.upload(&kw).unwrap());
            let rope = gpu.upload(&table).unwrap();
            let mut state = state_at(&gpu, pos as u32, 0);
            let mut kc = nan_bf16(&gpu, shape.cache_len());
            let mut vc = nan_bf16(&gpu, shape.cache_len());
            let qk = norm.then_some(QkNorm { q: &qwd, k: &kwd, eps });
            qk_norm_rope(&gpu, &shape, &mut qd, &kd, &vd, qk, &rope, &mut state, &mut kc, &mut vc).unwrap();
            let (gq, gk, gv) = (gpu.download(&qd).unwrap(), gpu.download(&kc).unwrap(), gpu.download(&vc).unwrap());
            let what = format!("({nh},{nkv},{hd}) norm={norm} pos={pos}");
            let ulp = |got: &[bf16], want: &[f32], part: &str| {
                let c = compare(got, want, 1e-5 * rms(want), 2f64.powi(-7));
                assert!(c.passes(4e-3), "{what} {part}: {c}");
            };
            ulp(&gq, &want_q, "q");
            let mut k_rows = Vec::new();
            for h in 0..nkv {
                for p in 0..max_seq {
                    let at = (h * max_seq + p) * hd;
                    if p == pos {
                        k_rows.extend_from_slice(&gk[at..at + hd]);
                        let bits = |x: &[bf16]| x.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&gv[at..at + hd]), bits(&v[h * hd..(h + 1) * hd]), "{what}: v head {h}");
                    } else {
                        assert!(
                            gk[at..at + hd].iter().chain(&gv[at..at + hd]).all(|x| x.is_nan()),
                            "{what}: row {p} written"
                        );
                    }
                }
            }
            ulp(&k_rows, &want_k, "k");
            assert_eq!(gpu.download(&state).unwrap()[step::FLAGS], 0, "{what}: flags");
        }
    }
}

#[test]
fn qk_norm_rope_past_max_seq_writes_nothing_and_flags_overflow() {
    let Some(gpu) = common::gpu() else { return };
    let shape = AttnShape::new(8, 8, 64, 16);
    let mut q = gpu.upload(&vec![bf16::ONE; shape.q_len()]).unwrap();
    let kv = gpu.upload(&vec![bf16::ONE; shape.kv_len()]).unwrap();
    let rope = gpu.upload(&reference::rope_table(16, 64, THETA)).unwrap();
    let mut state = state_at(&gpu, 16, 0);
    let mut kc = nan_bf16(&gpu, shape.cache_len());
    let mut vc = nan_bf16(&gpu, shape.cache_len());
    qk_norm_rope(&gpu, &shape, &mut q, &kv, &kv, None, &rope, &mut state, &mut kc, &mut vc).unwrap();
    assert_eq!(gpu.download(&state).unwrap()[step::FLAGS], step::FLAG_OVERFLOW);
    assert!(gpu.download(&kc).unwrap().iter().all(|x| x.is_nan()));
    assert!(gpu.download(&q).unwrap().iter().all(|x| *x == bf16::ONE));
}

#[test]
fn attention_matches_the_reference_over_shapes_and_lengths() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("attention_decode");
    for &(nh, nkv, hd) in &SHAPES {
        let shape = AttnShape::new(nh, nkv, hd, MAX_SEQ);
        let mut scratch = AttnScratch::new(&gpu, &shape).unwrap();
        for &len in &LENS {
            let q = random_bf16(&mut rng, shape.q_len(), -3.0, 3.0);
            let k = random_bf16(&mut rng, shape.cache_len(), -1.0, 1.0);
            let v = random_bf16(&mut rng, shape.cache_len(), -1.0, 1.0);
            let want = reference::attention_decode_rows(&q, &k, &v, nh, nkv, hd, MAX_SEQ, len).unwrap();
            let (qd, kd, vd) = (gpu.upload(&q).unwrap(), gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
            let state = state_at(&gpu, len as u32 - 1, 0);
            let mut runs = Vec::new();
            for _ in 0..2 {
                let mut out = nan_bf16(&gpu, shape.q_len());
                attention_decode(&gpu, &shape, &qd, &kd, &vd, &state, &mut scratch, &mut out).unwrap();
                runs.push(gpu.download(&out).unwrap());
            }
            let what = format!("({nh},{nkv},{hd}) len={len} splits={}", scratch.splits());
            let c = compare(&runs[0], &want, 0.02 * rms(&want), 0.02);
            assert!(c.passes(4e-3), "{what}: {c}");
            assert!(runs[0].iter().zip(&runs[1]).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: runs differ");
        }
    }
}

#[test]
fn attention_on_views_of_an_all_layer_cache() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("attention_views");
    let shape = AttnShape::new(16, 8, 128, 256);
    let layers = 3;
    let n = shape.cache_len();
    let k = random_bf16(&mut rng, layers * n, -1.0, 1.0);
    let v = random_bf16(&mut rng, layers * n, -1.0, 1.0);
    let q = random_bf16(&mut rng, shape.q_len(), -3.0, 3.0);
    let (kd, vd, qd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap(), gpu.upload(&q).unwrap());
    let state = state_at(&gpu, 200, 0);
    let mut scratch = AttnScratch::new(&gpu, &shape).unwrap();
    let layer = 1;
    let (kl, vl) = (&k[layer * n..(layer + 1) * n], &v[layer * n..(layer + 1) * n]);
    let want = reference::attention_decode_rows(&q, kl, vl, 16, 8, 128, 256, 201).unwrap();
    let mut out = nan_bf16(&gpu, shape.q_len());
    let (kv, vv) = (kd.slice(layer * n..(layer + 1) * n), vd.slice(layer * n..(layer + 1) * n));
    attention_decode(&gpu, &shape, &qd, &kv, &vv, &state, &mut scratch, &mut out).unwrap();
    let c = compare(&gpu.download(&out).unwrap(), &want, 0.02 * rms(&want), 0.02);
    assert!(c.passes(4e-3), "{c}");
}

/// `step_begin` + `qk_norm_rope` + `attention_decode` captured once and replayed `STEPS`
/// times: each replay advances `state[POS]` on the device, appends one k/v row and attends
/// over one more position. q is reloaded from `q0` inside the graph (rope rotates it in
/// place). Every replay's output is checked against the CPU chain.
#[test]
fn graph_replays_advance_the_position_on_the_device() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("attention_graph");
    const STEPS: usize = 40;
    let (nh, nkv, hd, max_seq) = (16, 8, 128, 64);
    let shape = AttnShape::new(nh, nkv, hd, max_seq);
    let (vocab, hidden) = (32, 64);
    let q0 = random_bf16(&mut rng, shape.q_len(), -3.0, 3.0);
    let k = random_bf16(&mut rng, shape.kv_len(), -1.0, 1.0);
    let v = random_bf16(&mut rng, shape.kv_len(), -1.0, 1.0);
    let table = reference::rope_table(max_seq, hd, THETA);
    let embed = gpu.upload(&random_bf16(&mut rng, vocab * hidden, -1.0, 1.0)).unwrap();
    let prompt = gpu.upload(&vec![3u32; max_seq]).unwrap();
    let mut state = state_at(&gpu, u32::MAX, max_seq as u32);
    let mut slot = gpu.alloc_zeros::<u64>(1).unwrap();
    let mut tokens = gpu.alloc_zeros::<u32>(max_seq).unwrap();
    let mut h = gpu.alloc_zeros::<bf16>(hidden).unwrap();
    let q0d = gpu.upload(&q0).unwrap();
    let mut qd = gpu.upload(&q0).unwrap();
    let (kd, vd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
    let rope = gpu.upload(&table).unwrap();
    let mut kc = gpu.alloc_zeros::<bf16>(shape.cache_len()).unwrap();
    let mut vc = gpu.alloc_zeros::<bf16>(shape.cache_len()).unwrap();
    let mut scratch = AttnScratch::new(&gpu, &shape).unwrap();
    let mut out = nan_bf16(&gpu, shape.q_len());
    gpu.synchronize().unwrap();

    let stream = gpu.stream().clone();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    let issued = (|| -> nanofuse::Result<()> {
        step_begin(&gpu, &embed, vocab, hidden, &prompt, &mut state, &mut slot, &mut tokens, &mut h)?;
        stream.memcpy_dtod(&q0d, &mut qd).map_err(Error::driver("memcpy_dtod"))?;
        qk_norm_rope(&gpu, &shape, &mut qd, &kd, &vd, None, &rope, &mut state, &mut kc, &mut vc)?;
        attention_decode(&gpu, &shape, &qd, &kc, &vc, &state, &mut scratch, &mut out)
    })();
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    issued.unwrap();
    let graph = graph.unwrap().expect("a captured graph");

    // The CPU chain: the caches as the kernel writes them (bf16 of the rotated k).
    let mut k_cache = vec![bf16::ZERO; shape.cache_len()];
    let mut v_cache = vec![bf16::ZERO; shape.cache_len()];
    for p in 0..STEPS {
        graph.launch().unwrap();
        let got = gpu.download(&out).unwrap();
        let row = &table[p * hd..(p + 1) * hd];
        let kr = reference::qk_norm_rope_rows(&k, hd, None, row).unwrap();
        let qr: Vec<bf16> =
            reference::qk_norm_rope_rows(&q0, hd, None, row).unwrap().into_iter().map(bf16::from_f32).collect();
        for hh in 0..nkv {
            let at = (hh * max_seq + p) * hd;
            for d in 0..hd {
                k_cache[at + d] = bf16::from_f32(kr[hh * hd + d]);
                v_cache[at + d] = v[hh * hd + d];
            }
        }
        let want = reference::attention_decode_rows(&qr, &k_cache, &v_cache, nh, nkv, hd, max_seq, p + 1).unwrap();
        let c = compare(&got, &want, 0.02 * rms(&want), 0.02);
        assert!(c.passes(4e-3), "replay {p}: {c}");
    }
    let s = gpu.download(&state).unwrap();
    assert_eq!(s[step::POS], STEPS as u32 - 1);
    assert_eq!(s[step::FLAGS], 0);
    assert!(gpu.download(&tokens).unwrap()[..STEPS].iter().all(|&t| t == 3));
}

#[test]
fn attention_and_rope_refuse_bad_arguments() {
    let Some(gpu) = common::gpu() else { return };
    let gpu: &Arc<Gpu> = &gpu;
    let shape = AttnShape::new(16, 8, 128, 64);
    let mut scratch = AttnScratch::new(gpu, &shape).unwrap();
    let q = gpu.alloc_zeros::<bf16>(shape.q_len() + 8).unwrap();
    let kc = gpu.alloc_zeros::<bf16>(shape.cache_len()).unwrap();
    let state = state_at(gpu, 0, 0);
    let mut out = gpu.alloc_zeros::<bf16>(shape.q_len()).unwrap();
    // Wrong length.
    let e = attention_decode(gpu, &shape, &q, &kc, &kc, &state, &mut scratch, &mut out).unwrap_err();
    assert!(matches!(e, Error::Length { arg: "q", .. }), "{e}");
    // Misaligned view.
    let qv = q.slice(1..1 + shape.q_len());
    let e = attention_decode(gpu, &shape, &qv, &kc, &kc, &state, &mut scratch, &mut out).unwrap_err();
    assert!(matches!(e, Error::Misaligned { arg: "q", .. }), "{e}");
    // A scratch made for another shape.
    let other = AttnShape::new(8, 8, 128, 64);
    let q2 = gpu.alloc_zeros::<bf16>(other.q_len()).unwrap();
    let kc2 = gpu.alloc_zeros::<bf16>(other.cache_len()).unwrap();
    let mut out2 = gpu.alloc_zeros::<bf16>(other.q_len()).unwrap();
    let e = attention_decode(gpu, &other, &q2, &kc2, &kc2, &state, &mut scratch, &mut out2).unwrap_err();
    assert!(matches!(e, Error::Value { arg: "scratch", .. }), "{e}");
    // Unsupported shapes.
    for bad in [AttnShape::new(16, 8, 96, 64), AttnShape::new(12, 8, 128, 64)] {
        assert!(matches!(AttnScratch::new(gpu, &bad), Err(Error::Dimension { .. })), "{bad:?}");
    }
    // rope: a short table; the caches as two views of one buffer are fine.
    let mut qq = gpu.alloc_zeros::<bf16>(shape.q_len()).unwrap();
    let kv = gpu.alloc_zeros::<bf16>(shape.kv_len()).unwrap();
    let short = gpu.alloc_zeros::<f32>(shape.rope_len() - 1).unwrap();
    let mut st = state_at(gpu, 0, 0);
    let mut both = gpu.alloc_zeros::<bf16>(2 * shape.cache_len()).unwrap();
    let (mut a, mut b) = both.split_at_mut(shape.cache_len());
    let e = qk_norm_rope(gpu, &shape, &mut qq, &kv, &kv, None, &short, &mut st, &mut a, &mut b).unwrap_err();
    assert!(matches!(e, Error::Length { arg: "rope", .. }), "{e}");
    let rope = gpu.alloc_zeros::<f32>(shape.rope_len()).unwrap();
    qk_norm_rope(gpu, &shape, &mut qq, &kv, &kv, None, &rope, &mut st, &mut a, &mut b).unwrap();
    gpu.synchronize().unwrap();
}
