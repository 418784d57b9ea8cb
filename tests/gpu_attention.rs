//! The decode engine's attention kernels against the CPU references (GPU; skipped without a
//! device): `qk_norm_rope` (with and without Qwen3's q/k norm, one row and a prefill chunk
//! of rows) and `attention_decode` over the model shapes (16,8,128) Qwen3-0.6B, (32,8,64)
//! Llama-3.2-1B, (9,3,64) SmolLM2-135M, (32,8,128) Llama-3-8B and (8,8,64) (no GQA), at
//! context lengths 1, 2, 31, 64, 100, 1000, 2072, 4097 for one row and causally over
//! prefill chunks of 7 and 64 rows; a CUDA graph of `step_begin` + `qk_norm_rope` +
//! `attention_decode` replayed with the position advancing on the device; typed errors
//! that need a device. q, k, v come packed (`[rows, (nh + 2 nkv) hd]`), as the QKV
//! projection writes them.
//!
//! Inputs fresh and random per case (q in [-3, 3), k, v in [-1, 1)); outputs and caches
//! poisoned with NaN before each launch.
//!
//! Bounds:
//! * rope/norm: per element `|got − ref| <= 2^-7·|ref| + 1e-5·rms(ref)`: one bf16 ulp of
//!   the f32 reference (`reference::qk_norm_rope_rows`), the kernel rounding once (half an
//!   ulp) plus f32 differences (rsqrt.approx, order of the sums) that can move a value
//!   across a rounding boundary. v is copied bitwise; only the rows' positions of the
//!   caches are written (every other position keeps its poison).
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

/// One packed row `[q | k | v]`.
fn packed(q: &[bf16], k: &[bf16], v: &[bf16]) -> Vec<bf16> {
    q.iter().chain(k).chain(v).copied().collect()
}

#[test]
fn qk_norm_rope_matches_the_reference_and_writes_only_the_rows_positions() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("qk_norm_rope");
    let bits = |x: &[bf16]| x.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
    for &(nh, nkv, hd) in &SHAPES {
        for (norm, rows) in [(false, 1), (true, 1), (true, 6)] {
            let max_seq = 300;
            let shape = AttnShape::new(nh, nkv, hd, max_seq);
            let last = rng.random_range(rows - 1..max_seq);
            let first = last + 1 - rows;
            let (q, k, v): (Vec<_>, Vec<_>, Vec<_>) = (0..rows)
                .map(|_| {
                    (
                        random_bf16(&mut rng, nh * hd, -3.0, 3.0),
                        random_bf16(&mut rng, nkv * hd, -3.0, 3.0),
                        random_bf16(&mut rng, nkv * hd, -3.0, 3.0),
                    )
                })
                .fold((vec![], vec![], vec![]), |mut acc, (a, b, c)| {
                    acc.0.push(a);
                    acc.1.push(b);
                    acc.2.push(c);
                    acc
                });
            let qkv: Vec<bf16> = (0..rows).flat_map(|r| packed(&q[r], &k[r], &v[r])).collect();
            let (qw, kw) = (random_bf16(&mut rng, hd, 0.5, 1.5), random_bf16(&mut rng, hd, 0.5, 1.5));
            let table = reference::rope_table(max_seq, hd, THETA);
            let eps = 1e-6;
            let nq = norm.then_some((qw.as_slice(), eps));
            let nk = norm.then_some((kw.as_slice(), eps));

            let mut qd = gpu.upload(&qkv).unwrap();
            let (qwd, kwd) = (gpu.upload(&qw).unwrap(), gpu.upload(&kw).unwrap());
            let rope = gpu.upload(&table).unwrap();
            let mut state = state_at(&gpu, last as u32, 0);
            let mut kc = nan_bf16(&gpu, shape.cache_len());
            let mut vc = nan_bf16(&gpu, shape.cache_len());
            let qk = norm.then_some(QkNorm { q: &qwd, k: &kwd, eps });
            qk_norm_rope(&gpu, &shape, rows, &mut qd, qk, &rope, &mut state, &mut kc, &mut vc).unwrap();
            let (gq, gk, gv) = (gpu.download(&qd).unwrap(), gpu.download(&kc).unwrap(), gpu.download(&vc).unwrap());
            let ulp = |got: &[bf16], want: &[f32], what: &str| {
                let c = compare(got, want, 1e-5 * rms(want), 2f64.powi(-7));
                assert!(c.passes(4e-3), "{what}: {c}");
            };
            let n = shape.qkv_len();
            for r in 0..rows {
                let pos = first + r;
                let what = format!("({nh},{nkv},{hd}) norm={norm} rows={rows} row {r} at {pos}");
                let row = &table[pos * hd..(pos + 1) * hd];
                ulp(&gq[r * n..r * n + nh * hd], &reference::qk_norm_rope_rows(&q[r], hd, nq, row).unwrap(), &what);
                // k and v of the packed input are left as they were.
                assert_eq!(bits(&gq[r * n + nh * hd..(r + 1) * n]), bits(&qkv[r * n + nh * hd..(r + 1) * n]), "{what}");
                let mut k_rows = Vec::new();
                for h in 0..nkv {
                    let at = (h * max_seq + pos) * hd;
                    k_rows.extend_from_slice(&gk[at..at + hd]);
                    assert_eq!(bits(&gv[at..at + hd]), bits(&v[r][h * hd..(h + 1) * hd]), "{what}: v head {h}");
                }
                ulp(&k_rows, &reference::qk_norm_rope_rows(&k[r], hd, nk, row).unwrap(), &what);
            }
            for h in 0..nkv {
                for p in (0..max_seq).filter(|p| !(first..=last).contains(p)) {
                    let at = (h * max_seq + p) * hd;
                    assert!(gk[at..at + hd].iter().chain(&gv[at..at + hd]).all(|x| x.is_nan()), "position {p} written");
                }
            }
            assert_eq!(gpu.download(&state).unwrap()[step::FLAGS], 0, "flags");
        }
    }
}

#[test]
fn qk_norm_rope_past_max_seq_writes_nothing_and_flags_overflow() {
    let Some(gpu) = common::gpu() else { return };
    let shape = AttnShape::new(8, 8, 64, 16);
    let rope = gpu.upload(&reference::rope_table(16, 64, THETA)).unwrap();
    // One row at 16; then a chunk of three at 15, 16, 17: only 15 is written.
    for (rows, last) in [(1usize, 16u32), (3, 17)] {
        let mut qkv = gpu.upload(&vec![bf16::ONE; rows * shape.qkv_len()]).unwrap();
        let mut state = state_at(&gpu, last, 0);
        let mut kc = nan_bf16(&gpu, shape.cache_len());
        let mut vc = nan_bf16(&gpu, shape.cache_len());
        qk_norm_rope(&gpu, &shape, rows, &mut qkv, None, &rope, &mut state, &mut kc, &mut vc).unwrap();
        assert_eq!(gpu.download(&state).unwrap()[step::FLAGS], step::FLAG_OVERFLOW);
        let (kc, got) = (gpu.download(&kc).unwrap(), gpu.download(&qkv).unwrap());
        let written =
            |p: usize| (0..8).any(|h| kc[(h * 16 + p) * 64..(h * 16 + p + 1) * 64].iter().any(|x| !x.is_nan()));
        assert!((0..16).all(|p| written(p) == (rows == 3 && p == 15)), "rows {rows}");
        let n = shape.qkv_len();
        assert!(got[(rows - 1) * n..].iter().all(|x| *x == bf16::ONE), "the overflowing row's q is left alone");
    }
}

/// Row `r` of a chunk of `rows` ending at `len − 1` attends over `len − rows + 1 + r`
/// positions (causal).
fn causal_reference(q_rows: &[Vec<bf16>], k: &[bf16], v: &[bf16], shape: &AttnShape, len: usize) -> Vec<f32> {
    let rows = q_rows.len();
    let (nh, nkv, hd, max_seq) = (shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.max_seq);
    q_rows
        .iter()
        .enumerate()
        .flat_map(|(r, q)| reference::attention_decode_rows(q, k, v, nh, nkv, hd, max_seq, len + 1 + r - rows).unwrap())
        .collect()
}

#[test]
fn attention_matches_the_reference_over_shapes_lengths_and_prefill_rows() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("attention_decode");
    for &(nh, nkv, hd) in &SHAPES {
        let shape = AttnShape::new(nh, nkv, hd, MAX_SEQ);
        let mut scratch = AttnScratch::with_rows(&gpu, &shape, 64).unwrap();
        let cases = LENS.iter().map(|&l| (l, 1)).chain([(64, 7), (64, 64), (1000, 7), (1000, 64)]);
        for (len, rows) in cases {
            let q: Vec<Vec<bf16>> = (0..rows).map(|_| random_bf16(&mut rng, shape.q_len(), -3.0, 3.0)).collect();
            // k and v columns of the packed rows are not read: NaN shows it.
            let nan = vec![bf16::NAN; shape.kv_len()];
            let qkv: Vec<bf16> = q.iter().flat_map(|qr| packed(qr, &nan, &nan)).collect();
            let k = random_bf16(&mut rng, shape.cache_len(), -1.0, 1.0);
            let v = random_bf16(&mut rng, shape.cache_len(), -1.0, 1.0);
            let want = causal_reference(&q, &k, &v, &shape, len);
            let (qd, kd, vd) = (gpu.upload(&qkv).unwrap(), gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
            let state = state_at(&gpu, len as u32 - 1, 0);
            let mut runs = Vec::new();
            for _ in 0..2 {
                let mut out = nan_bf16(&gpu, rows * shape.q_len());
                attention_decode(&gpu, &shape, rows, &qd, &kd, &vd, &state, &mut scratch, &mut out).unwrap();
                runs.push(gpu.download(&out).unwrap());
            }
            let what = format!("({nh},{nkv},{hd}) len={len} rows={rows} splits={}", scratch.splits(rows));
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
    let kv_cols = random_bf16(&mut rng, shape.kv_len(), -1.0, 1.0);
    let qkv = packed(&q, &kv_cols, &kv_cols);
    let (kd, vd, qd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap(), gpu.upload(&qkv).unwrap());
    let state = state_at(&gpu, 200, 0);
    let mut scratch = AttnScratch::new(&gpu, &shape).unwrap();
    let layer = 1;
    let (kl, vl) = (&k[layer * n..(layer + 1) * n], &v[layer * n..(layer + 1) * n]);
    let want = reference::attention_decode_rows(&q, kl, vl, 16, 8, 128, 256, 201).unwrap();
    let mut out = nan_bf16(&gpu, shape.q_len());
    let (kv, vv) = (kd.slice(layer * n..(layer + 1) * n), vd.slice(layer * n..(layer + 1) * n));
    attention_decode(&gpu, &shape, 1, &qd, &kv, &vv, &state, &mut scratch, &mut out).unwrap();
    let c = compare(&gpu.download(&out).unwrap(), &want, 0.02 * rms(&want), 0.02);
    assert!(c.passes(4e-3), "{c}");
}

/// `step_begin` + `qk_norm_rope` + `attention_decode` captured once and replayed `STEPS`
/// times: each replay advances `state[POS]` on the device, appends one k/v row and attends
/// over one more position. The packed qkv is reloaded from `qkv0` inside the graph (rope
/// rotates its q in place). Every replay's output is checked against the CPU chain.
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
    let qkv0 = gpu.upload(&packed(&q0, &k, &v)).unwrap();
    let mut qkv = gpu.alloc_zeros::<bf16>(shape.qkv_len()).unwrap();
    let rope = gpu.upload(&table).unwrap();
    let mut kc = gpu.alloc_zeros::<bf16>(shape.cache_len()).unwrap();
    let mut vc = gpu.alloc_zeros::<bf16>(shape.cache_len()).unwrap();
    let mut scratch = AttnScratch::new(&gpu, &shape).unwrap();
    let mut out = nan_bf16(&gpu, shape.q_len());
    gpu.synchronize().unwrap();

    let stream = gpu.stream().clone();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    let issued = (|| -> nanofuse::Result<()> {
        step_begin(&gpu, &embed, vocab, hidden, 1, &prompt, &mut state, &mut slot, &mut tokens, &mut h)?;
        stream.memcpy_dtod(&qkv0, &mut qkv).map_err(Error::driver("memcpy_dtod"))?;
        qk_norm_rope(&gpu, &shape, 1, &mut qkv, None, &rope, &mut state, &mut kc, &mut vc)?;
        attention_decode(&gpu, &shape, 1, &qkv, &kc, &vc, &state, &mut scratch, &mut out)
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
    let q = gpu.alloc_zeros::<bf16>(shape.qkv_len() + 8).unwrap();
    let kc = gpu.alloc_zeros::<bf16>(shape.cache_len()).unwrap();
    let state = state_at(gpu, 0, 0);
    let mut out = gpu.alloc_zeros::<bf16>(shape.q_len()).unwrap();
    // Wrong length.
    let e = attention_decode(gpu, &shape, 1, &q, &kc, &kc, &state, &mut scratch, &mut out).unwrap_err();
    assert!(matches!(e, Error::Length { arg: "qkv", .. }), "{e}");
    // Misaligned view.
    let qv = q.slice(1..1 + shape.qkv_len());
    let e = attention_decode(gpu, &shape, 1, &qv, &kc, &kc, &state, &mut scratch, &mut out).unwrap_err();
    assert!(matches!(e, Error::Misaligned { arg: "qkv", .. }), "{e}");
    // No rows, or more rows than the scratch was made for.
    let qv = q.slice(..shape.qkv_len());
    let e = attention_decode(gpu, &shape, 0, &qv, &kc, &kc, &state, &mut scratch, &mut out).unwrap_err();
    assert!(matches!(e, Error::Dimension { arg: "rows", .. }), "{e}");
    let q2 = gpu.alloc_zeros::<bf16>(2 * shape.qkv_len()).unwrap();
    let mut out2 = gpu.alloc_zeros::<bf16>(2 * shape.q_len()).unwrap();
    let e = attention_decode(gpu, &shape, 2, &q2, &kc, &kc, &state, &mut scratch, &mut out2).unwrap_err();
    assert!(matches!(e, Error::Value { arg: "scratch", .. }), "{e}");
    // A scratch made for another shape.
    let other = AttnShape::new(8, 8, 128, 64);
    let q2 = gpu.alloc_zeros::<bf16>(other.qkv_len()).unwrap();
    let kc2 = gpu.alloc_zeros::<bf16>(other.cache_len()).unwrap();
    let mut out2 = gpu.alloc_zeros::<bf16>(other.q_len()).unwrap();
    let e = attention_decode(gpu, &other, 1, &q2, &kc2, &kc2, &state, &mut scratch, &mut out2).unwrap_err();
    assert!(matches!(e, Error::Value { arg: "scratch", .. }), "{e}");
    // Unsupported shapes.
    for bad in [AttnShape::new(16, 8, 96, 64), AttnShape::new(12, 8, 128, 64)] {
        assert!(matches!(AttnScratch::new(gpu, &bad), Err(Error::Dimension { .. })), "{bad:?}");
    }
    // rope: a short table; the caches as two views of one buffer are fine.
    let mut qq = gpu.alloc_zeros::<bf16>(shape.qkv_len()).unwrap();
    let short = gpu.alloc_zeros::<f32>(shape.rope_len() - 1).unwrap();
    let mut st = state_at(gpu, 0, 0);
    let mut both = gpu.alloc_zeros::<bf16>(2 * shape.cache_len()).unwrap();
    let (mut a, mut b) = both.split_at_mut(shape.cache_len());
    let e = qk_norm_rope(gpu, &shape, 1, &mut qq, None, &short, &mut st, &mut a, &mut b).unwrap_err();
    assert!(matches!(e, Error::Length { arg: "rope", .. }), "{e}");
    let rope = gpu.alloc_zeros::<f32>(shape.rope_len()).unwrap();
    let e = qk_norm_rope(gpu, &shape, 0, &mut qq, None, &rope, &mut st, &mut a, &mut b).unwrap_err();
    assert!(matches!(e, Error::Dimension { arg: "rows", .. }), "{e}");
    qk_norm_rope(gpu, &shape, 1, &mut qq, None, &rope, &mut st, &mut a, &mut b).unwrap();
    gpu.synchronize().unwrap();
}

/// The fused decode form against the two kernels it replaces: the same k and v rows in the
/// caches (bitwise), only position `pos` written, and each form's `out` within the
/// attention bound of the reference for its q (the fused form keeps q in f32 after RoPE).
/// Lengths include 2072 on (9,3,64), where 64 splits leave the last one empty and `pos`
/// falls in the one before it.
#[test]
fn fused_rope_attention_matches_the_two_kernels() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("attention_rope");
    let bits = |x: &[bf16]| x.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
    let cases = [(16, 8, 128, 1, true), (16, 8, 128, 100, true), (32, 8, 64, 1000, false), (9, 3, 64, 2072, false)];
    for (nh, nkv, hd, len, norm) in cases {
        let max_seq = 2100;
        let shape = AttnShape::new(nh, nkv, hd, max_seq);
        let pos = len - 1;
        let qkv = random_bf16(&mut rng, shape.qkv_len(), -3.0, 3.0);
        let (qw, kw) = (random_bf16(&mut rng, hd, 0.5, 1.5), random_bf16(&mut rng, hd, 0.5, 1.5));
        let mut cache_k = random_bf16(&mut rng, shape.cache_len(), -1.0, 1.0);
        let mut cache_v = random_bf16(&mut rng, shape.cache_len(), -1.0, 1.0);
        for h in 0..nkv {
            let at = (h * max_seq + pos) * hd;
            cache_k[at..at + hd].fill(bf16::NAN);
            cache_v[at..at + hd].fill(bf16::NAN);
        }
        let table = reference::rope_table(max_seq, hd, THETA);
        let rope = gpu.upload(&table).unwrap();
        let (qwd, kwd) = (gpu.upload(&qw).unwrap(), gpu.upload(&kw).unwrap());
        let qk = norm.then_some(QkNorm { q: &qwd, k: &kwd, eps: 1e-6 });
        let state = state_at(&gpu, pos as u32, 0);
        let mut scratch = AttnScratch::new(&gpu, &shape).unwrap();
        let what = format!("({nh},{nkv},{hd}) len={len} norm={norm}");

        // Two kernels.
        let (mut kc2, mut vc2) = (gpu.upload(&cache_k).unwrap(), gpu.upload(&cache_v).unwrap());
        let mut q2 = gpu.upload(&qkv).unwrap();
        let mut st2 = state_at(&gpu, pos as u32, 0);
        qk_norm_rope(&gpu, &shape, 1, &mut q2, qk, &rope, &mut st2, &mut kc2, &mut vc2).unwrap();
        let mut out2 = nan_bf16(&gpu, shape.q_len());
        attention_decode(&gpu, &shape, 1, &q2, &kc2, &vc2, &st2, &mut scratch, &mut out2).unwrap();
        // Fused.
        let (mut kc1, mut vc1) = (gpu.upload(&cache_k).unwrap(), gpu.upload(&cache_v).unwrap());
        let q1 = gpu.upload(&qkv).unwrap();
        let mut out1 = nan_bf16(&gpu, shape.q_len());
        nanofuse::attention_decode_rope(
            &gpu,
            &shape,
            &q1,
            qk,
            &rope,
            &state,
            &mut kc1,
            &mut vc1,
            &mut scratch,
            &mut out1,
        )
        .unwrap();
        assert_eq!(bits(&gpu.download(&kc1).unwrap()), bits(&gpu.download(&kc2).unwrap()), "{what}: k cache");
        assert_eq!(bits(&gpu.download(&vc1).unwrap()), bits(&gpu.download(&vc2).unwrap()), "{what}: v cache");
        assert_eq!(bits(&gpu.download(&q1).unwrap()), bits(&qkv), "{what}: qkv is left unchanged");
        // Each form against the reference of its own q: the fused form's f32 q after RoPE,
        // the two kernels' bf16 q (the difference between the two is the rounding of q,
        // which at long contexts moves the output by about that bound itself).
        let (kc, vc) = (gpu.download(&kc2).unwrap(), gpu.download(&vc2).unwrap());
        let row = &table[pos * hd..(pos + 1) * hd];
        let nq = norm.then_some((qw.as_slice(), 1e-6));
        let q_f32 = reference::qk_norm_rope_rows(&qkv[..shape.q_len()], hd, nq, row).unwrap();
        let want = reference::attention_decode_rows_f32q(&q_f32, &kc, &vc, nh, nkv, hd, max_seq, len).unwrap();
        let c = compare(&gpu.download(&out1).unwrap(), &want, 0.02 * rms(&want), 0.02);
        assert!(c.passes(4e-3), "{what}: fused vs reference: {c}");
        let q_bf16 = gpu.download(&q2).unwrap();
        let want =
            reference::attention_decode_rows(&q_bf16[..shape.q_len()], &kc, &vc, nh, nkv, hd, max_seq, len).unwrap();
        let c = compare(&gpu.download(&out2).unwrap(), &want, 0.02 * rms(&want), 0.02);
        assert!(c.passes(4e-3), "{what}: two kernels vs reference: {c}");
    }
    // Past the cache: nothing written, the caches keep their poison.
    let shape = AttnShape::new(8, 8, 64, 16);
    let q = gpu.upload(&vec![bf16::ONE; shape.qkv_len()]).unwrap();
    let rope = gpu.upload(&reference::rope_table(16, 64, THETA)).unwrap();
    let state = state_at(&gpu, 16, 0);
    let (mut kc, mut vc) = (nan_bf16(&gpu, shape.cache_len()), nan_bf16(&gpu, shape.cache_len()));
    let mut scratch = AttnScratch::new(&gpu, &shape).unwrap();
    let mut out = nan_bf16(&gpu, shape.q_len());
    nanofuse::attention_decode_rope(&gpu, &shape, &q, None, &rope, &state, &mut kc, &mut vc, &mut scratch, &mut out)
        .unwrap();
    assert!(gpu.download(&kc).unwrap().iter().chain(&gpu.download(&vc).unwrap()).all(|x| x.is_nan()));
}
