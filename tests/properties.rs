//! Properties of the CPU reference math (CPU, proptest, 64 cases each):
//! * RMSNorm is scale invariant: scaling a row by a power of two `s` in 2^-8..2^8 (exact
//!   in bf16) and eps by `s²` leaves `rms_norm_f32` unchanged to 1e-6 relative (in exact
//!   arithmetic it is bitwise unchanged; eps = 0 is the plain case);
//! * `rms_norm_f32` agrees with `rms_norm_f64` within 1e-5 relative per element;
//! * `qkv_rows` is `gemm_rows` applied to the normalized rows: bitwise when the normalized
//!   rows are exact in bf16, and otherwise within the bf16 rounding of the normalized
//!   activations, `|Δy| <= 2^-8 (1 + 2^-7) Σ|bf16(xn)·w| + 1e-6 |y|` per element;
//! * `compare` reports zero error on identical data, counts NaN poison as non-finite, and
//!   finds one corrupted element (index, values).

mod common;

use common::random_bf16;
use nanofuse::bf16;
use nanofuse::reference::{self, compare};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

const CASES: u32 = 64;

/// A bf16 in ±[2^-10, 4): no zeros, no subnormals, so power-of-two scaling in 2^-8..2^8
/// and squaring stay exact and in the normal range.
fn nonzero_bf16() -> impl Strategy<Value = bf16> {
    (any::<bool>(), -10i32..2, 1.0f32..2.0).prop_map(|(neg, e, f)| {
        let v = bf16::from_f32(f * 2f32.powi(e));
        if neg { -v } else { v }
    })
}

/// Any bf16 in [-4, 4), zeros included.
fn any_bf16() -> impl Strategy<Value = bf16> {
    (-4.0f32..4.0).prop_map(bf16::from_f32)
}

/// `rows x k` activations and `k` gains.
fn rows_and_gains(max_k: usize, x: BoxedStrategy<bf16>) -> impl Strategy<Value = (usize, usize, Vec<bf16>, Vec<bf16>)> {
    (1usize..=4, 1usize..=max_k).prop_flat_map(move |(rows, k)| {
        (Just(rows), Just(k), prop::collection::vec(x.clone(), rows * k), prop::collection::vec(any_bf16(), k))
    })
}

fn eps_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), 1e-6f32..1e-2]
}

fn scaled(x: &[bf16], s: f32) -> Vec<bf16> {
    x.iter()
        .map(|v| {
            let y = bf16::from_f32(v.to_f32() * s);
            assert_eq!(y.to_f32(), v.to_f32() * s, "scaling {v} by {s} is not exact");
            y
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn rms_norm_is_scale_invariant(
        (rows, k, x, g) in rows_and_gains(512, nonzero_bf16().boxed()),
        e in -8i32..=8,
        eps in eps_strategy(),
    ) {
        scale_invariance(rows, k, &x, &g, e, eps)?;
    }

    #[test]
    fn rms_norm_f32_matches_f64((rows, k, x, g) in rows_and_gains(4096, any_bf16().boxed()), eps in eps_strategy()) {
        f32_matches_f64(rows, k, &x, &g, eps)?;
    }

    #[test]
    fn qkv_rows_is_gemm_rows_of_exact_normalized_rows(
        (m, k, n) in (1usize..=6, 1usize..=96, 1usize..=40),
        seed in any::<u64>(),
    ) {
        exact_normalized_rows(m, k, n, seed)?;
    }

    #[test]
    fn qkv_rows_is_gemm_rows_of_the_normalized_rows(
        (m, k, n) in (1usize..=6, 1usize..=256, 1usize..=40),
        eps in eps_strategy(),
        seed in any::<u64>(),
    ) {
        rounded_normalized_rows(m, k, n, eps, seed)?;
    }

    #[test]
    fn compare_identical_is_exact(want in prop::collection::vec(any_bf16(), 1..300)) {
        compare_identical(&want)?;
    }

    #[test]
    fn compare_counts_nan_poison(
        want in prop::collection::vec(any_bf16(), 1..300),
        poison in prop::collection::vec(any::<prop::sample::Index>(), 1..20),
    ) {
        compare_poison(&want, &poison)?;
    }

    #[test]
    fn compare_finds_one_corrupted_element(
        want in prop::collection::vec(any_bf16(), 1..300),
        at in any::<prop::sample::Index>(),
    ) {
        compare_corrupted(&want, at)?;
    }
}

fn scale_invariance(rows: usize, k: usize, x: &[bf16], g: &[bf16], e: i32, eps: f32) -> Result<(), TestCaseError> {
    let s = 2f32.powi(e);
    let base = reference::rms_norm_f32(x, g, rows, k, eps);
    let scaled_out = reference::rms_norm_f32(&scaled(x, s), g, rows, k, eps * s * s);
    for (i, (&a, &b)) in base.iter().zip(&scaled_out).enumerate() {
        prop_assert!(a.is_finite(), "element {i} not finite: {a}");
        prop_assert!((a - b).abs() <= 1e-6 * a.abs(), "s = 2^{e}, eps {eps}: element {i}: {a} vs {b}");
    }
    Ok(())
}

fn f32_matches_f64(rows: usize, k: usize, x: &[bf16], g: &[bf16], eps: f32) -> Result<(), TestCaseError> {
    let y32 = reference::rms_norm_f32(x, g, rows, k, eps);
    let gr: Vec<f64> = g.iter().map(|v| v.to_f64()).collect();
    for r in 0..rows {
        let xr: Vec<f64> = x[r * k..(r + 1) * k].iter().map(|v| v.to_f64()).collect();
        if eps == 0.0 && xr.iter().all(|&v| v == 0.0) {
            continue; // 0/0: both NaN, nothing to compare
        }
        let y64 = reference::rms_norm_f64(&xr, &gr, eps as f64);
        for (c, (&a, &b)) in y32[r * k..(r + 1) * k].iter().zip(&y64).enumerate() {
            let a = a as f64;
            prop_assert!((a - b).abs() <= 1e-5 * b.abs(), "row {r} col {c} (k {k}, eps {eps}): f32 {a} vs f64 {b}");
        }
    }
    Ok(())
}

/// With `|x| = 2^e` across a row and eps = 0, the normalized row is `±g` exactly, so
/// rounding it to bf16 loses nothing and both references must agree bitwise, for any
/// selection and order of rows (repeats included).
fn exact_normalized_rows(m: usize, k: usize, n: usize, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(m * k);
    for _ in 0..m {
        let mag = 2f32.powi(rng.random_range(-6..6));
        x.extend((0..k).map(|_| bf16::from_f32(if rng.random_range(0..2) == 0 { mag } else { -mag })));
    }
    let g = random_bf16(&mut rng, k, -2.0, 2.0);
    let w = random_bf16(&mut rng, n * k, -1.0, 1.0);
    let rows: Vec<usize> = (0..rng.random_range(1..=2 * m)).map(|_| rng.random_range(0..m)).collect();

    let xn = reference::rms_norm_f32(&x, &g, m, k, 0.0);
    let xn_bf16 = reference::rms_norm(&x, &g, m, k, 0.0);
    for (i, (&a, b)) in xn.iter().zip(&xn_bf16).enumerate() {
        prop_assert_eq!(a, b.to_f32(), "normalized element {} is not exact in bf16", i);
    }
    let fused = reference::qkv_rows(&x, &g, &w, k, n, 0.0, &rows);
    let unfused = reference::gemm_rows(&xn_bf16, &w, k, n, &rows);
    prop_assert_eq!(fused.len(), rows.len() * n);
    for (i, (&a, &b)) in fused.iter().zip(&unfused).enumerate() {
        let (r, c) = (rows[i / n], i % n);
        prop_assert_eq!(a.to_bits(), b.to_bits(), "element {} (row {}, col {}): {} vs {}", i, r, c, a, b);
    }
    Ok(())
}

/// General rows: `qkv_rows` keeps the normalized rows in f32, `gemm_rows` takes them
/// rounded to bf16 (relative error <= 2^-8, bf16's unit roundoff); the difference is
/// bounded by `2^-8 (1 + 2^-7) Σ|bf16(xn_i) w_i| + 1e-6 |y|` (the factor: |xn| from
/// |bf16(xn)|; the last term: f32 rounding of the outputs).
fn rounded_normalized_rows(m: usize, k: usize, n: usize, eps: f32, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let x = random_bf16(&mut rng, m * k, -3.0, 3.0);
    let g = random_bf16(&mut rng, k, 0.5, 1.5);
    let w = random_bf16(&mut rng, n * k, -1.0, 1.0);
    let rows: Vec<usize> = (0..m).rev().collect();

    let xn_bf16 = reference::rms_norm(&x, &g, m, k, eps);
    let fused = reference::qkv_rows(&x, &g, &w, k, n, eps, &rows);
    let unfused = reference::gemm_rows(&xn_bf16, &w, k, n, &rows);
    let abs = |v: &[bf16]| v.iter().map(|x| bf16::from_bits(x.to_bits() & 0x7fff)).collect::<Vec<_>>();
    let magnitude = reference::gemm_rows(&abs(&xn_bf16), &abs(&w), k, n, &rows);
    prop_assert_eq!(fused.len(), rows.len() * n);
    for i in 0..fused.len() {
        let (a, b, s) = (fused[i] as f64, unfused[i] as f64, magnitude[i] as f64);
        let bound = 2f64.powi(-8) * (1.0 + 2f64.powi(-7)) * s + 1e-6 * a.abs() + 1e-30;
        let (r, c) = (rows[i / n], i % n);
        prop_assert!((a - b).abs() <= bound, "element {i} (row {r}, col {c}): {a} vs {b} (bound {bound:e})");
    }
    Ok(())
}

fn compare_identical(want: &[bf16]) -> Result<(), TestCaseError> {
    let ref32: Vec<f32> = want.iter().map(|v| v.to_f32()).collect();
    let c = compare(want, &ref32, 0.0, 0.0);
    prop_assert_eq!(c.rel_frobenius, 0.0);
    prop_assert_eq!(c.max_abs_err, 0.0);
    prop_assert_eq!(c.mismatches, 0);
    prop_assert_eq!(c.non_finite, 0);
    prop_assert!(c.first_mismatch.is_none());
    prop_assert!(c.passes(0.0), "{}", c);
    Ok(())
}

fn compare_poison(want: &[bf16], poison: &[prop::sample::Index]) -> Result<(), TestCaseError> {
    let ref32: Vec<f32> = want.iter().map(|v| v.to_f32()).collect();
    let mut got = want.to_vec();
    let mut poisoned: Vec<usize> = poison.iter().map(|i| i.index(got.len())).collect();
    poisoned.sort_unstable();
    poisoned.dedup();
    for &i in &poisoned {
        got[i] = bf16::NAN;
    }
    let c = compare(&got, &ref32, 0.02 * reference::rms(&ref32), 0.02);
    prop_assert_eq!(c.non_finite, poisoned.len(), "{}", c);
    prop_assert_eq!(c.mismatches, poisoned.len(), "{}", c);
    prop_assert_eq!(c.first_mismatch.map(|f| f.0), Some(poisoned[0]), "{}", c);
    prop_assert!(c.rel_frobenius.is_infinite(), "{}", c);
    prop_assert!(!c.passes(f64::MAX), "{}", c);
    Ok(())
}

fn compare_corrupted(want: &[bf16], at: prop::sample::Index) -> Result<(), TestCaseError> {
    let ref32: Vec<f32> = want.iter().map(|v| v.to_f32()).collect();
    let i = at.index(want.len());
    let mut got = want.to_vec();
    // Off by 1 + |ref|: far outside 0.02·rms + 0.02·|ref| (rms <= 4).
    let w = ref32[i];
    got[i] = bf16::from_f32(w + (1.0 + w.abs()) * if w < 0.0 { -1.0 } else { 1.0 });
    let c = compare(&got, &ref32, 0.02 * reference::rms(&ref32), 0.02);
    prop_assert_eq!(c.mismatches, 1, "{}", c);
    prop_assert_eq!(c.non_finite, 0, "{}", c);
    prop_assert_eq!(c.first_mismatch, Some((i, got[i].to_f32(), w)), "{}", c);
    prop_assert!((c.max_abs_err - (got[i].to_f32() - w).abs() as f64).abs() < 1e-9, "{}", c);
    prop_assert!(c.rel_frobenius > 0.0, "{}", c);
    prop_assert!(!c.passes(f64::MAX), "{}", c);
    Ok(())
}

/// The non-finite rules the GPU tests rely on: NaN matches NaN, equal infinities match,
/// opposite infinities and NaN against a finite reference do not.
#[test]
fn compare_non_finite_rules() {
    let inf = f32::INFINITY;
    let got = [bf16::NAN, bf16::INFINITY, bf16::NEG_INFINITY, bf16::ONE];
    let c = compare(&got, &[f32::NAN, inf, -inf, 1.0], 0.0, 0.0);
    assert_eq!((c.mismatches, c.non_finite), (0, 0), "{c}");
    assert!(c.passes(0.0), "{c}");
    let c = compare(&got, &[f32::NAN, -inf, inf, 1.0], 0.0, 0.0);
    assert_eq!((c.mismatches, c.non_finite), (2, 0), "{c}");
    assert_eq!(c.first_mismatch.map(|f| f.0), Some(1), "{c}");
    let c = compare(&got, &[1.0, 1.0, 1.0, 1.0], 0.0, 0.0);
    assert_eq!((c.mismatches, c.non_finite), (3, 3), "{c}");
    assert!(!c.passes(f64::MAX), "{c}");
}

/// The k-interleaved order: within each whole 32-element block, word (bf16 pair) `4c + j`
/// holds natural word `4j + c`; a partial last block and the pairs' halves stay in place;
/// applied twice it is the identity; a dot product is unchanged when both operands are
/// interleaved (exact here: small integers).
#[test]
fn interleave_k_is_the_block_word_transpose() {
    for k in [8usize, 24, 32, 40, 64, 1000, 1024] {
        let rows = 3;
        let v: Vec<u32> = (0..(rows * k) as u32).collect();
        let t = reference::interleave_k(&v, k);
        for r in 0..rows {
            for j in 0..k {
                let (base, e) = (j - j % 32, j % 32);
                let want = if base + 32 > k {
                    j
                } else {
                    let (word, half) = (e / 2, e % 2);
                    base + 2 * (4 * (word % 4) + word / 4) + half
                };
                assert_eq!(t[r * k + j] as usize, r * k + want, "K={k} row {r} index {j}");
            }
        }
        assert_eq!(reference::interleave_k(&t, k), v, "K={k}: not an involution");
        let a: Vec<i64> = (0..k as i64).map(|i| (i * 7) % 13 - 6).collect();
        let b: Vec<i64> = (0..k as i64).map(|i| (i * 5) % 11 - 5).collect();
        let dot = |x: &[i64], y: &[i64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<i64>();
        let (ai, bi) = (reference::interleave_k(&a, k), reference::interleave_k(&b, k));
        assert_eq!(dot(&ai, &bi), dot(&a, &b), "K={k}: dot product changed");
    }
}
