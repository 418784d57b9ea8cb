//! The decode engine's step and sampling kernels (GPU; skipped without a device):
//! `argmax` (random logits, ties to the lowest index, -inf, NaN ignored, tails of any
//! length), `step_begin` (prompt then slot, the overflow flag at `pos == max_seq` with a
//! guard region after `tokens`, a bad token) and `FusedRmsNormArgmax` (the LM head with
//! the final norm and the argmax fused) over (1024, 151936) Qwen3-0.6B, (576, 49152)
//! SmolLM2-135M, (2048, 128256) Llama-3.2-1B at M in {1, 2, 7, 16}.
//!
//! LM-head bound: the f32 reference logit (`reference::qkv_rows`: f32 norm, f64 dots) of
//! the chosen index is within `tol = 0.02·rms(ref) + 2^-7·|ref max|` of the reference
//! maximum (the kernel's logit differs by the rounding of W·g to bf16 and of the logit to
//! bf16, about one bf16 ulp, plus f32 sums); where the reference top-2 margin exceeds
//! `2·tol` the index is exact.

mod common;

use common::{random_bf16, random_weight};
use nanofuse::cudarc::driver::CudaSlice;
use nanofuse::reference::{self, rms};
use nanofuse::{Error, FusedRmsNormArgmax, Gpu, argmax, argmax_token, bf16, step, step_begin};
use rand::RngExt;

fn slot_of(gpu: &Gpu) -> CudaSlice<u64> {
    gpu.alloc_zeros::<u64>(1).unwrap()
}

fn gpu_argmax(gpu: &Gpu, logits: &[bf16]) -> u32 {
    let d = gpu.upload(logits).unwrap();
    let mut slot = slot_of(gpu);
    argmax(gpu, &d, logits.len(), &mut slot).unwrap();
    argmax_token(gpu.download(&slot).unwrap()[0])
}

#[test]
fn argmax_picks_the_first_largest_and_ignores_nan() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("argmax");
    for n in [1usize, 7, 8, 9, 1000, 2049, 49152, 151936, 128257] {
        let mut v = random_bf16(&mut rng, n, -10.0, 10.0);
        let f: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
        let want = reference::argmax_index(&f).unwrap();
        assert_eq!(gpu_argmax(&gpu, &v) as usize, want, "n={n}");
        // A tie: the maximum copied to a later and an earlier index.
        if n > 2 {
            let (i, j) = (rng.random_range(0..n / 2), rng.random_range(n / 2..n));
            v[i] = bf16::from_f32(100.0);
            v[j] = bf16::from_f32(100.0);
            assert_eq!(gpu_argmax(&gpu, &v) as usize, i, "n={n}: tie at {i} and {j}");
            v[i] = bf16::NAN;
            v[0] = bf16::NAN;
            assert_eq!(gpu_argmax(&gpu, &v) as usize, j, "n={n}: NaN ignored");
        }
    }
    let ninf = vec![bf16::NEG_INFINITY; 300];
    assert_eq!(gpu_argmax(&gpu, &ninf), 0, "all -inf: index 0");
    let mut one = ninf.clone();
    one[299] = bf16::from_f32(-1e30);
    assert_eq!(gpu_argmax(&gpu, &one), 299);
    assert_eq!(gpu_argmax(&gpu, &[bf16::NAN; 100]), u32::MAX, "all NaN: the slot stays empty");
}

/// Runs `step_begin` for one position on `state` and returns (state, slot, tokens with the
/// guard, h).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn step(
    gpu: &Gpu,
    embed: &CudaSlice<bf16>,
    vocab: usize,
    hidden: usize,
    prompt: &CudaSlice<u32>,
    state: &mut CudaSlice<u32>,
    slot: &mut CudaSlice<u64>,
    tokens: &mut CudaSlice<u32>,
) -> (Vec<u32>, u64, Vec<u32>, Vec<bf16>) {
    step_rows(gpu, embed, vocab, hidden, 1, prompt, state, slot, tokens)
}

/// As [`step`], for `rows` positions (a prefill chunk): h is `[rows, hidden]`.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn step_rows(
    gpu: &Gpu,
    embed: &CudaSlice<bf16>,
    vocab: usize,
    hidden: usize,
    rows: usize,
    prompt: &CudaSlice<u32>,
    state: &mut CudaSlice<u32>,
    slot: &mut CudaSlice<u64>,
    tokens: &mut CudaSlice<u32>,
) -> (Vec<u32>, u64, Vec<u32>, Vec<bf16>) {
    let max_seq = prompt.len();
    let mut h = gpu.upload(&vec![bf16::NAN; rows * hidden]).unwrap();
    let mut view = tokens.slice_mut(0..max_seq);
    step_begin(gpu, embed, vocab, hidden, rows, prompt, state, slot, &mut view, &mut h).unwrap();
    (
        gpu.download(state).unwrap(),
        gpu.download(slot).unwrap()[0],
        gpu.download(tokens).unwrap(),
        gpu.download(&h).unwrap(),
    )
}

#[test]
fn step_begin_embeds_a_prefill_chunk_and_flags_the_rows_past_the_cache() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("step_begin rows");
    let (vocab, hidden, max_seq, guard) = (50usize, 264usize, 7usize, 8usize);
    let table = random_bf16(&mut rng, vocab * hidden, -1.0, 1.0);
    let embed = gpu.upload(&table).unwrap();
    let ids: Vec<u32> = vec![7, 11, 13, 17, 19, 0, 0];
    let prompt = gpu.upload(&ids).unwrap();
    let mut s = [0u32; step::LEN];
    s[step::POS] = u32::MAX;
    s[step::PROMPT_LEN] = 5;
    let mut state = gpu.upload(&s).unwrap();
    let mut slot = slot_of(&gpu);
    let sentinel = 0xdead_beef;
    let mut tokens = gpu.upload(&vec![sentinel; max_seq + guard]).unwrap();
    let bits = |x: &[bf16]| x.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
    // Chunks of 3 and 2 rows: the prompt's five tokens, in order.
    let mut at = 0;
    for rows in [3usize, 2] {
        let (st, sl, toks, h) =
            step_rows(&gpu, &embed, vocab, hidden, rows, &prompt, &mut state, &mut slot, &mut tokens);
        assert_eq!(st[step::POS], (at + rows - 1) as u32, "the position of the chunk's last row");
        assert_eq!((st[step::FLAGS], sl), (0, 0));
        assert_eq!(&toks[..at + rows], &ids[..at + rows]);
        for r in 0..rows {
            let t = ids[at + r] as usize;
            assert_eq!(bits(&h[r * hidden..(r + 1) * hidden]), bits(&table[t * hidden..(t + 1) * hidden]), "row {r}");
        }
        at += rows;
    }
    // Past the prompt every row takes the slot's token; rows at max_seq and beyond are
    // flagged and not written.
    let mut k = gpu.upload(&[nanofuse::argmax_key(1.0, 42)]).unwrap();
    std::mem::swap(&mut slot, &mut k);
    let (st, _, toks, h) = step_rows(&gpu, &embed, vocab, hidden, 3, &prompt, &mut state, &mut slot, &mut tokens);
    assert_eq!(st[step::POS], 7);
    assert_eq!(st[step::FLAGS] & step::FLAG_OVERFLOW, step::FLAG_OVERFLOW);
    assert_eq!(&toks[5..7], &[42, 42]);
    assert!(toks[max_seq..].iter().all(|&t| t == sentinel), "written past max_seq: {toks:?}");
    assert_eq!(bits(&h[..hidden]), bits(&table[42 * hidden..43 * hidden]));
}

#[test]
fn step_begin_feeds_the_prompt_then_the_slot_and_flags_overflow_and_bad_tokens() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("step_begin");
    let (vocab, hidden, max_seq, guard) = (50usize, 576usize, 6usize, 8usize);
    let table = random_bf16(&mut rng, vocab * hidden, -1.0, 1.0);
    let embed = gpu.upload(&table).unwrap();
    let prompt_tokens: Vec<u32> = vec![7, 11, 13, 0, 0, 0];
    let prompt = gpu.upload(&prompt_tokens).unwrap();
    let mut s = [0u32; step::LEN];
    s[step::POS] = u32::MAX;
    s[step::PROMPT_LEN] = 3;
    let mut state = gpu.upload(&s).unwrap();
    let mut slot = slot_of(&gpu);
    let sentinel = 0xdead_beef;
    let mut tokens = gpu.upload(&vec![sentinel; max_seq + guard]).unwrap();
    let row = |t: usize| &table[t * hidden..(t + 1) * hidden];
    let bits = |x: &[bf16]| x.iter().map(|b| b.to_bits()).collect::<Vec<_>>();
    let mut fed = Vec::new();
    for pos in 0..max_seq {
        // After the prompt, the "LM head" chose token 20 + pos.
        let want = if pos < 3 { prompt_tokens[pos] } else { 20 + pos as u32 };
        if pos >= 3 {
            let key = nanofuse::argmax_key(1.0, want);
            let mut k = gpu.upload(&[key]).unwrap();
            std::mem::swap(&mut slot, &mut k);
        }
        let (st, sl, toks, h) = step(&gpu, &embed, vocab, hidden, &prompt, &mut state, &mut slot, &mut tokens);
        fed.push(want);
        assert_eq!(st[step::POS], pos as u32);
        assert_eq!(st[step::FLAGS], 0, "pos {pos}");
        assert_eq!(sl, 0, "the slot is emptied");
        assert_eq!(&toks[..=pos], &fed[..], "pos {pos}");
        assert_eq!(bits(&h), bits(row(want as usize)), "pos {pos}: embedding row");
    }
    // pos == max_seq: no token written (the guard keeps its sentinel), FLAG_OVERFLOW.
    let (st, _, toks, _) = step(&gpu, &embed, vocab, hidden, &prompt, &mut state, &mut slot, &mut tokens);
    assert_eq!(st[step::POS], max_seq as u32);
    assert_eq!(st[step::FLAGS] & step::FLAG_OVERFLOW, step::FLAG_OVERFLOW);
    assert!(toks[max_seq..].iter().all(|&t| t == sentinel), "written past max_seq: {toks:?}");
    // A bad token: zeros and FLAG_BAD_TOKEN.
    s[step::POS] = 3;
    s[step::FLAGS] = 0;
    state = gpu.upload(&s).unwrap();
    slot = gpu.upload(&[nanofuse::argmax_key(1.0, vocab as u32)]).unwrap();
    let (st, _, toks, h) = step(&gpu, &embed, vocab, hidden, &prompt, &mut state, &mut slot, &mut tokens);
    assert_eq!(st[step::FLAGS], step::FLAG_BAD_TOKEN);
    assert_eq!(toks[4], vocab as u32);
    assert!(h.iter().all(|x| x.to_f32() == 0.0));
    // An empty slot (no LM head ran) is a bad token too.
    s[step::POS] = 3;
    s[step::FLAGS] = 0;
    state = gpu.upload(&s).unwrap();
    slot = slot_of(&gpu);
    let (st, ..) = step(&gpu, &embed, vocab, hidden, &prompt, &mut state, &mut slot, &mut tokens);
    assert_eq!(st[step::FLAGS], step::FLAG_BAD_TOKEN);
}

#[test]
fn lm_head_argmax_picks_the_reference_maximum() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("lm_head_argmax");
    let eps = 1e-6;
    for (hidden, vocab) in [(1024usize, 151936usize), (576, 49152), (2048, 128256)] {
        let g = random_bf16(&mut rng, hidden, 0.5, 1.5);
        let w = random_weight(&mut rng, vocab, hidden);
        let op = FusedRmsNormArgmax::new(&gpu, hidden, vocab, eps, &g, &w).unwrap();
        for m in [1usize, 2, 7, 16] {
            let h = random_bf16(&mut rng, m * hidden, -3.0, 3.0);
            let hd = gpu.upload(&h).unwrap();
            let mut slots = gpu.alloc_zeros::<u64>(m).unwrap();
            op.forward_into(&hd, m, &mut slots).unwrap();
            let got: Vec<u32> = gpu.download(&slots).unwrap().into_iter().map(argmax_token).collect();
            let rows: Vec<usize> = (0..m).collect();
            let want = reference::qkv_rows(&h, &g, &w, hidden, vocab, eps, &rows);
            for (t, logits) in want.chunks_exact(vocab).enumerate() {
                let best = reference::argmax_index(logits).unwrap();
                let mut sorted: Vec<f32> = logits.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let tol = 0.02 * rms(logits) + 2f64.powi(-7) * sorted[0].abs() as f64;
                let what = format!("({hidden}, {vocab}) m={m} token {t}");
                let chosen = got[t] as usize;
                assert!(chosen < vocab, "{what}: slot empty or out of range ({chosen})");
                assert!(
                    (sorted[0] - logits[chosen]) as f64 <= tol,
                    "{what}: chose {chosen} (ref {}), the reference max is {} at {best}, tol {tol}",
                    logits[chosen],
                    sorted[0]
                );
                if ((sorted[0] - sorted[1]) as f64) > 2.0 * tol {
                    assert_eq!(chosen, best, "{what}: clear maximum missed");
                }
            }
        }
    }
}

#[test]
fn sampling_ops_refuse_bad_arguments() {
    let Some(gpu) = common::gpu() else { return };
    let logits = gpu.alloc_zeros::<bf16>(64).unwrap();
    let mut slot = slot_of(&gpu);
    assert!(matches!(argmax(&gpu, &logits, 0, &mut slot), Err(Error::Dimension { arg: "n", .. })));
    assert!(matches!(argmax(&gpu, &logits, 63, &mut slot), Err(Error::Length { arg: "logits", .. })));
    let view = logits.slice(1..33);
    assert!(matches!(argmax(&gpu, &view, 32, &mut slot), Err(Error::Misaligned { arg: "logits", .. })));
    let (hidden, vocab) = (64, 256);
    let g = vec![bf16::ONE; hidden];
    let w = vec![bf16::ONE; hidden * vocab];
    assert!(matches!(
        FusedRmsNormArgmax::new(&gpu, hidden, vocab, 1e-6, &g[..8], &w),
        Err(Error::Length { arg: "g", .. })
    ));
    assert!(matches!(FusedRmsNormArgmax::new(&gpu, 60, vocab, 1e-6, &g, &w), Err(Error::Dimension { .. })));
    let op = FusedRmsNormArgmax::new(&gpu, hidden, vocab, 1e-6, &g, &w).unwrap();
    let h = gpu.alloc_zeros::<bf16>(17 * hidden).unwrap();
    let mut slots = gpu.alloc_zeros::<u64>(17).unwrap();
    assert!(matches!(op.forward_into(&h, 17, &mut slots), Err(Error::TooLarge { arg: "m", .. })));
    let mut two = gpu.alloc_zeros::<u64>(2).unwrap();
    assert!(matches!(op.forward_into(&h.slice(0..hidden), 1, &mut two), Err(Error::Length { arg: "slot", .. })));
    let (gd, wd) = (gpu.upload(&g).unwrap(), gpu.upload(&w).unwrap());
    let op2 = FusedRmsNormArgmax::from_device(&gpu, hidden, vocab, 1e-6, &gd, &wd).unwrap();
    assert_eq!(op2.dims(), (hidden, vocab));
}
