//! Fused RMSNorm + QKV projection: every path and both unfused baselines against the CPU
//! reference, over the four model shapes and one shape with K and N off every tile size
//! (GPU; skipped without a device).
//!
//! Bounds (bf16 inputs and outputs, f32 accumulation): relative Frobenius error at most
//! 4e-3 against the reference (f32 normalized activations, f64 dot products; PyTorch's own
//! bf16 error on these shapes is about 2.4e-3), and every element within
//! `0.02·rms(ref) + 0.02·|ref|` (catches a wrong element without tripping on cancellation).
//! Outputs are poisoned with NaN before each run; every element must have been written.
//! The fused paths agree with baseline (a) (RMSNorm + cuBLAS) within 4e-3 over all
//! elements, and two runs of a path are bitwise identical. The packed forms (one `[M, N]`
//! output) are checked on every path too. The warpgroup-MMA path (`Route::FusedWgmma`)
//! runs where the device has it (compute capability 9.0) and K % 32 == 0.

mod common;

use common::{gather, sample_rows};
use common::{random_bf16, random_weights};
use nanofuse::plan::{DECODE_MAX_M, DecodeShape};
use nanofuse::reference::{self, Comparison, compare, concat_qkv, rms};
use nanofuse::{Baseline, Error, FusedRmsNormQkv, QkvShape, Route, Tuning, UnfusedRmsNormQkv, WgmmaShape, bf16};

const MS: [usize; 10] = [1, 2, 3, 7, 16, 17, 64, 100, 300, 2048];
const PATHS: [Route; 4] = [Route::FusedDecode, Route::FusedTiled, Route::NormCublas, Route::Auto];
const MAX_REL_FROBENIUS: f64 = 4e-3;
const ELEMENT_TOL: f64 = 0.02;

fn check(got_all: &[bf16], m: usize, n: usize, want_rows: &[f32], rows: &[usize]) -> Result<Comparison, String> {
    let unwritten = got_all.iter().filter(|v| v.is_nan()).count();
    if unwritten > 0 {
        return Err(format!("{unwritten} of {} output elements still NaN (unwritten?)", m * n));
    }
    let got = gather(got_all, n, rows);
    let c = compare(&got, want_rows, ELEMENT_TOL * rms(want_rows), ELEMENT_TOL);
    if c.passes(MAX_REL_FROBENIUS) { Ok(c) } else { Err(c.to_string()) }
}

fn check_shape(name: &str, shape: QkvShape) {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(name);
    let (k, n) = (shape.hidden, shape.n());
    let (g, w) = random_weights(&mut rng, &shape);
    let mut op = FusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap();
    let base = UnfusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap();
    let mut failures = Vec::new();
    // The warpgroup-MMA path where this device and shape have it (sm_90a, K % 32 == 0).
    let mut paths = PATHS.to_vec();
    if common::wgmma_route(&gpu, op.has_wgmma(), k) {
        paths.push(Route::FusedWgmma);
    }
    // Every path; the separate-output fallback both ways (one GEMM + split_qkv, three GEMMs);
    // the warpgroup-MMA path with the launcher's choices and each forced shape
    // (`common::wgmma_test_shapes`).
    let wgmma_shapes = common::wgmma_test_shapes();
    let variants = paths.iter().flat_map(|&p| {
        let shapes: Vec<(Option<bool>, WgmmaShape)> = match p {
            Route::NormCublas => vec![(Some(true), WgmmaShape::default()), (Some(false), WgmmaShape::default())],
            Route::FusedWgmma => wgmma_shapes.iter().map(|&w| (None, w)).collect(),
            _ => vec![(None, WgmmaShape::default())],
        };
        shapes.into_iter().map(move |(s, w)| (p, s, w))
    });
    let variants: Vec<(Route, Option<bool>, WgmmaShape)> = variants.collect();

    for &m in &MS {
        let x = random_bf16(&mut rng, m * k, -3.0, 3.0);
        let rows = sample_rows(m);
        let want = reference::qkv_rows(&x, &g, &w, k, n, shape.eps, &rows);
        let dx = gpu.upload(&x).unwrap();

        // Every path of the op, twice (determinism).
        let mut fused_outputs = Vec::new();
        for &(path, split, wgmma) in &variants {
            op.set_tuning(Tuning { split, wgmma, ..Tuning::default() });
            let label = match (split, wgmma) {
                (Some(true), _) => format!("{path:?} (one GEMM + split)"),
                (Some(false), _) => format!("{path:?} (three GEMMs)"),
                (None, w) if w == WgmmaShape::default() => format!("{path:?}"),
                (None, w) => format!("{path:?} ({w:?})"),
            };
            let mut runs = Vec::new();
            for _ in 0..2 {
                let (mut q, mut kk, mut v) = common::poisoned_qkv(&gpu, m, &shape);
                let r = op.forward_into_with(path, &dx, m, &mut q, &mut kk, &mut v);
                if path == Route::FusedDecode && m > DECODE_MAX_M {
                    assert!(matches!(r, Err(Error::Dimension { arg: "M", .. })), "decode path at M={m}: {r:?}");
                    break;
                }
                if path == Route::FusedWgmma
                    && let Some(arg) = common::wgmma_refusal(m, wgmma)
                {
                    let refused = matches!(&r, Err(Error::Value { arg: a, .. }) if *a == arg);
                    assert!(refused, "{wgmma:?} at M={m}: want an error naming {arg}, got {r:?}");
                    break;
                }
                r.unwrap();
                let (q, kk, v) = (gpu.download(&q).unwrap(), gpu.download(&kk).unwrap(), gpu.download(&v).unwrap());
                runs.push(concat_qkv(&q, &kk, &v, m, &shape));
            }
            if runs.is_empty() {
                continue;
            }
            match check(&runs[0], m, n, &want, &rows) {
                Ok(c) => println!("{name} M={m:<4} {label}: {c}"),
                Err(e) => failures.push(format!("M={m} {label}: {e}")),
            }
            if runs[0].iter().zip(&runs[1]).any(|(a, b)| a.to_bits() != b.to_bits()) {
                failures.push(format!("M={m} {label}: two runs differ bitwise"));
            }
            if matches!(path, Route::FusedDecode | Route::FusedTiled | Route::FusedWgmma) {
                fused_outputs.push((path, runs.swap_remove(0)));
            }
        }

        // The packed forms: one [M, N] output.
        op.set_tuning(Tuning::default());
        for &path in &paths {
            if path == Route::FusedDecode && m > DECODE_MAX_M {
                continue;
            }
            let mut y = gpu.alloc_zeros::<bf16>(m * n).unwrap();
            gpu.fill_nan(&mut y).unwrap();
            op.forward_packed_into_with(path, &dx, m, &mut y).unwrap();
            let y = gpu.download(&y).unwrap();
            match check(&y, m, n, &want, &rows) {
                Ok(c) => println!("{name} M={m:<4} packed {path:?}: {c}"),
                Err(e) => failures.push(format!("M={m} packed {path:?}: {e}")),
            }
        }

        // The unfused baselines, on the same weights.
        let mut baseline_a = None;
        for which in [Baseline::NormCublas, Baseline::NormNanofuse] {
            let mut xn = gpu.alloc_zeros::<bf16>(m * k).unwrap();
            let mut y = gpu.alloc_zeros::<bf16>(m * n).unwrap();
            gpu.fill_nan(&mut y).unwrap();
            base.forward_into(which, &dx, m, &mut xn, &mut y).unwrap();
            let y = gpu.download(&y).unwrap();
            match check(&y, m, n, &want, &rows) {
                Ok(c) => println!("{name} M={m:<4} baseline {which:?}: {c}"),
                Err(e) => failures.push(format!("M={m} baseline {which:?}: {e}")),
            }
            if which == Baseline::NormCublas {
                baseline_a = Some(y);
            }
        }

        // Fused vs baseline (a), every element.
        let a: Vec<f32> = baseline_a.unwrap().iter().map(|v| v.to_f32()).collect();
        for (path, y) in &fused_outputs {
            let c = compare(y, &a, ELEMENT_TOL * rms(&a), ELEMENT_TOL);
            if !c.passes(MAX_REL_FROBENIUS) {
                failures.push(format!("M={m} {path:?} vs RMSNorm+cuBLAS: {c}"));
            }
        }
    }
    assert!(failures.is_empty(), "{name}: {} failures:\n{}", failures.len(), failures.join("\n"));
}

macro_rules! shape_tests {
    ($($test:ident: $name:expr, $k:expr, $nq:expr, $nkv:expr, $eps:expr;)*) => {$(
        #[test]
        fn $test() {
            check_shape($name, QkvShape::new($k, $nq, $nkv, $eps));
        }
    )*};
}

shape_tests! {
    qwen3_0_6b: "Qwen3-0.6B", 1024, 2048, 1024, 1e-6;
    llama_3_2_1b: "Llama-3.2-1B", 2048, 2048, 512, 1e-5;
    llama_3_8b: "Llama-3-8B", 4096, 4096, 1024, 1e-5;
    llama_3_70b: "Llama-3-70B", 8192, 8192, 1024, 1e-5;
    // K = 1000 is a multiple of 8 but not of the 32/64 K steps; N = 341 is odd and off
    // every row tile, and the q/k and k/v boundaries fall inside MMA tiles.
    tails: "tails", 1000, 203, 69, 1e-5;
    // K = 1056 = 16 · 64 + 32 (a half K tile, whole interleave blocks: the warpgroup-MMA
    // path runs it), the same N tails.
    tails_k32: "tails, K % 32 = 0", 1056, 203, 69, 1e-5;
}

/// Every (a, b, c) of three lists, a slowest.
fn iproduct<A: Copy, B: Copy, C: Copy, const X: usize, const Y: usize, const Z: usize>(
    a: [A; X],
    b: [B; Y],
    c: [C; Z],
) -> impl Iterator<Item = (A, B, C)> {
    a.into_iter().flat_map(move |a| b.into_iter().flat_map(move |b| c.into_iter().map(move |c| (a, b, c))))
}

/// Every decode launch shape (warps per row group x CTAs along K, x staged whole or through
/// the ring), so the split-K reduction across CTAs and across warps and the ring's phases
/// are exercised whatever the planner picks. Same bounds as above; each shape also runs
/// twice, bitwise identical.
fn check_decode_shapes(name: &str, shape: QkvShape) {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(name);
    let (k, n) = (shape.hidden, shape.n());
    let (g, w) = random_weights(&mut rng, &shape);
    let mut op = FusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap();
    let mut failures = Vec::new();
    let mut tried = 0;
    for m in [1, 5, 9, 16] {
        let x = random_bf16(&mut rng, m * k, -3.0, 3.0);
        let rows = sample_rows(m);
        let want = reference::qkv_rows(&x, &g, &w, k, n, shape.eps, &rows);
        let dx = gpu.upload(&x).unwrap();
        for (warp_split, k_splits, ring) in iproduct([1, 2, 4, 8], [1, 2, 3, 5, 8], [false, true]) {
            // Alternate the entry (early or not) with the shape, so both run on every test shape.
            let early = Some((warp_split + k_splits) % 2 == 0);
            let decode = DecodeShape { warp_split, k_splits, early, trigger_first: None, ring: Some(ring) };
            op.set_tuning(Tuning { decode: Some(decode), ..Tuning::default() });
            let mut runs = Vec::new();
            for _ in 0..2 {
                let (mut q, mut kk, mut v) = common::poisoned_qkv(&gpu, m, &shape);
                match op.forward_into_with(Route::FusedDecode, &dx, m, &mut q, &mut kk, &mut v) {
                    Ok(()) => {}
                    // This split leaves an empty K slice (or its slice does not fit).
                    Err(Error::Value { arg: "k_splits", .. } | Error::TooLarge { .. }) => break,
                    Err(e) => panic!("M={m} ws={warp_split} ks={k_splits} ring={ring}: {e}"),
                }
                let (q, kk, v) = (gpu.download(&q).unwrap(), gpu.download(&kk).unwrap(), gpu.download(&v).unwrap());
                runs.push(concat_qkv(&q, &kk, &v, m, &shape));
            }
            if runs.is_empty() {
                continue;
            }
            tried += 1;
            if let Err(e) = check(&runs[0], m, n, &want, &rows) {
                failures.push(format!("M={m} ws={warp_split} ks={k_splits} ring={ring}: {e}"));
            }
            if runs[0].iter().zip(&runs[1]).any(|(a, b)| a.to_bits() != b.to_bits()) {
                failures.push(format!("M={m} ws={warp_split} ks={k_splits} ring={ring}: two runs differ bitwise"));
            }
        }
    }
    println!("{name}: {tried} decode launch shapes checked");
    assert!(tried >= 120, "only {tried} decode shapes ran");
    assert!(failures.is_empty(), "{name}: {} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn decode_shapes_tails() {
    check_decode_shapes("decode shapes, tails", QkvShape::new(1000, 203, 69, 1e-5));
}

#[test]
fn decode_shapes_llama_3_8b() {
    check_decode_shapes("decode shapes, Llama-3-8B", QkvShape::new(4096, 4096, 1024, 1e-5));
}

/// The gain folded into the weight at construction is `bf16(W · g)` per element, bitwise
/// (one rounding of an exact f32 product), stored in the k-interleaved order, including a K
/// that is not a multiple of 32 (a partial last block, kept in natural order) or of 256.
#[test]
fn folded_weight_is_bf16_of_w_times_g() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("folded_weight_is_bf16_of_w_times_g");
    for shape in [QkvShape::new(1000, 203, 69, 1e-5), QkvShape::new(2048, 2048, 512, 1e-5)] {
        let (k, n) = (shape.hidden, shape.n());
        let (g, w) = random_weights(&mut rng, &shape);
        let op = FusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap();
        let got = gpu.download(op.folded_weight()).unwrap();
        assert_eq!(got.len(), n * k);
        let folded: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(w[i].to_f32() * g[i % k].to_f32())).collect();
        let want = reference::interleave_k(&folded, k);
        let bad = (0..n * k).filter(|&i| got[i].to_bits() != want[i].to_bits());
        let bad: Vec<usize> = bad.take(5).collect();
        assert!(bad.is_empty(), "K={k} N={n}: folded weight differs at {bad:?}");
        println!("K={k} N={n}: folded weight bitwise equal to bf16(W · g), interleaved");
    }
}
