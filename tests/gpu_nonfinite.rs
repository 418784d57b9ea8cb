//! Infinities and NaN propagate as in the reference and in PyTorch (GPU; skipped without a
//! device). Shape K = 256, Nq = 64, Nkv = 32 at M = 1, 5 and 40, on every path of
//! `FusedRmsNormQkv` (the decode path where M allows) and both unfused baselines:
//! * a NaN in one element of x: that token's outputs are all NaN; the other tokens'
//!   outputs are finite and correct;
//! * ±inf in one element of x: that token's outputs are all NaN (`inv_rms = 1/sqrt(inf) =
//!   0` and `inf · 0 = NaN`, as PyTorch's `rms_norm` gives); the other tokens are finite and
//!   correct;
//! * +inf in one element of a W row (one row each in Q, K and V; x has no zeros): those
//!   output columns are infinite with the reference's sign in every token; every other
//!   column is finite and correct.
//!
//! * NaN in one element of g: every output of every token is NaN (the NaN is folded into a
//!   whole column of the op's W', and every output sums over it);
//! * +inf in one element `g[j]` (x and W without zeros): every output is infinite, with the
//!   sign of `x[t, j] · W[i, j]`, as the reference and PyTorch give;
//! * NaN in one element of a W row (one row each in Q, K and V): those output columns are
//!   NaN in every token; every other column is finite and correct;
//! * an all-zero token with eps = 0: `inv_rms = 1/sqrt(0) = inf` and `0 · inf = NaN`, so
//!   that token's outputs are all NaN (as PyTorch's `rms_norm`); with eps > 0 they are
//!   exactly zero. The other tokens are finite and correct either way.
//!
//! Element by element: NaN where the reference is NaN, the same infinity where it is
//! infinite, and elsewhere finite and within `0.02·rms(ref) + 0.02·|ref|`, with relative
//! Frobenius error <= 4e-3 over the finite elements (the bounds of tests/gpu_qkv.rs).
//! Outputs start as a finite sentinel (1e30), so an unwritten element fails every check.

mod common;

use std::sync::Arc;

use common::{random_bf16, random_weights};
use nanofuse::plan::DECODE_MAX_M;
use nanofuse::reference::{self, compare, concat_qkv};
use nanofuse::{Baseline, FusedRmsNormQkv, Gpu, QkvShape, Route, UnfusedRmsNormQkv, bf16};
use rand::RngExt;
use rand::rngs::SmallRng;

const SHAPE: QkvShape = QkvShape::new(256, 64, 32, 1e-5);
const MS: [usize; 3] = [1, 5, 40];
const PATHS: [Route; 4] = [Route::FusedDecode, Route::FusedTiled, Route::NormCublas, Route::Auto];
const MAX_REL_FROBENIUS: f64 = 4e-3;
const ELEMENT_TOL: f64 = 0.02;
const SENTINEL: f32 = 1e30;

/// `[m, n]` outputs of every path and baseline for `x`, labelled.
fn run_all(
    gpu: &Arc<Gpu>,
    (op, base): &(FusedRmsNormQkv, UnfusedRmsNormQkv),
    x: &[bf16],
    m: usize,
) -> Vec<(String, Vec<bf16>)> {
    let s = *op.shape();
    let filled = |len: usize| gpu.upload(&vec![bf16::from_f32(SENTINEL); len]).unwrap();
    let dx = gpu.upload(x).unwrap();
    let mut out = Vec::new();
    for path in PATHS {
        if path == Route::FusedDecode && m > DECODE_MAX_M {
            continue;
        }
        let (mut q, mut k, mut v) = (filled(m * s.q_dim), filled(m * s.kv_dim), filled(m * s.kv_dim));
        op.forward_into_with(path, &dx, m, &mut q, &mut k, &mut v).unwrap_or_else(|e| panic!("{path:?} M={m}: {e}"));
        let (q, k, v) = (gpu.download(&q).unwrap(), gpu.download(&k).unwrap(), gpu.download(&v).unwrap());
        out.push((format!("{path:?}"), concat_qkv(&q, &k, &v, m, &s)));
    }
    for which in [Baseline::NormCublas, Baseline::NormNanofuse] {
        let (mut xn, mut y) = (filled(m * s.hidden), filled(m * s.n()));
        base.forward_into(which, &dx, m, &mut xn, &mut y).unwrap_or_else(|e| panic!("{which:?} M={m}: {e}"));
        out.push((format!("baseline {which:?}"), gpu.download(&y).unwrap()));
    }
    out
}

/// Compares `got` with `want` (both `[m, n]`) element by element under the non-finite
/// rules, and the finite elements under the usual bounds. Returns the failures.
fn check(label: &str, got: &[bf16], want: &[f32], n: usize) -> Vec<String> {
    let mut failures = Vec::new();
    let mut bad = 0;
    let (mut got_finite, mut want_finite) = (Vec::new(), Vec::new());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g32 = g.to_f32();
        let ok = if w.is_nan() {
            g32.is_nan()
        } else if w.is_infinite() {
            g32 == w
        } else {
            got_finite.push(g);
            want_finite.push(w);
            g32.is_finite()
        };
        if !ok {
            bad += 1;
            if bad <= 5 {
                failures.push(format!("{label}: [{}, {}] = {g32}, reference {w}", i / n, i % n));
            }
        }
    }
    if bad > 5 {
        failures.push(format!("{label}: {bad} non-finite mismatches in all"));
    }
    let rms = reference::rms(&want_finite);
    let c = compare(&got_finite, &want_finite, ELEMENT_TOL * rms, ELEMENT_TOL);
    if !c.passes(MAX_REL_FROBENIUS) {
        failures.push(format!("{label}, finite elements: {c}"));
    }
    failures
}

/// x in ±[0.25, 3): no zeros (so an infinite weight gives an infinite product).
fn nonzero_x(rng: &mut SmallRng, len: usize) -> Vec<bf16> {
    (0..len)
        .map(|_| {
            let v = rng.random_range(0.25f32..3.0);
            bf16::from_f32(if rng.random_range(0..2) == 0 { v } else { -v })
        })
        .collect()
}

/// One element of one token of x set to `bad`: that token NaN, the rest finite.
fn poisoned_token(test: &str, bad: f32) {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(test);
    let (k, n) = (SHAPE.hidden, SHAPE.n());
    let (g, w) = random_weights(&mut rng, &SHAPE);
    let op = (FusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap(), UnfusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap());
    let mut failures = Vec::new();
    for m in MS {
        let mut x = random_bf16(&mut rng, m * k, -3.0, 3.0);
        let (row, col) = (rng.random_range(0..m), rng.random_range(0..k));
        x[row * k + col] = bf16::from_f32(bad);
        let rows: Vec<usize> = (0..m).collect();
        let want = reference::qkv_rows(&x, &g, &w, k, n, SHAPE.eps, &rows);
        // The reference itself: the token is NaN throughout, the others finite.
        for (i, v) in want.iter().enumerate() {
            assert_eq!(v.is_nan(), i / n == row, "reference [{}, {}] = {v} (x[{row}, {col}] = {bad})", i / n, i % n);
        }
        for (label, got) in run_all(&gpu, &op, &x, m) {
            let label = format!("M={m} x[{row}, {col}] = {bad}, {label}");
            let f = check(&label, &got, &want, n);
            if f.is_empty() {
                println!("{label}: ok");
            }
            failures.extend(f);
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn nan_in_x_makes_its_token_nan() {
    poisoned_token("nan_in_x_makes_its_token_nan", f32::NAN);
}

#[test]
fn inf_in_x_makes_its_token_nan() {
    poisoned_token("inf_in_x_makes_its_token_nan", f32::INFINITY);
}

#[test]
fn negative_inf_in_x_makes_its_token_nan() {
    poisoned_token("negative_inf_in_x_makes_its_token_nan", f32::NEG_INFINITY);
}

/// One +inf in one W row each of Q, K and V: those columns infinite with the reference's
/// sign, the rest finite.
#[test]
fn inf_in_w_makes_its_column_infinite() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("inf_in_w_makes_its_column_infinite");
    let (k, n, nq, nkv) = (SHAPE.hidden, SHAPE.n(), SHAPE.q_dim, SHAPE.kv_dim);
    let (g, mut w) = random_weights(&mut rng, &SHAPE);
    let cols = [rng.random_range(0..nq), nq + rng.random_range(0..nkv), nq + nkv + rng.random_range(0..nkv)];
    for &c in &cols {
        w[c * k + rng.random_range(0..k)] = bf16::INFINITY;
    }
    let op = (FusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap(), UnfusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap());
    let mut failures = Vec::new();
    for m in MS {
        let x = nonzero_x(&mut rng, m * k);
        let rows: Vec<usize> = (0..m).collect();
        let want = reference::qkv_rows(&x, &g, &w, k, n, SHAPE.eps, &rows);
        // The reference itself: exactly the poisoned columns are infinite.
        for (i, v) in want.iter().enumerate() {
            let poisoned = cols.contains(&(i % n));
            assert!(if poisoned { v.is_infinite() } else { v.is_finite() }, "reference [{}, {}] = {v}", i / n, i % n);
        }
        for (label, got) in run_all(&gpu, &op, &x, m) {
            let label = format!("M={m} inf in W rows {cols:?}, {label}");
            let f = check(&label, &got, &want, n);
            if f.is_empty() {
                println!("{label}: ok");
            }
            failures.extend(f);
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Builds the op and the baselines on `(g, w)`, runs every path at every M on x from
/// `x_of`, checks the reference against `expect(token, column, value)` first (so that the
/// test states the behaviour, not only agreement), then every path against the reference.
fn poisoned_case(
    test: &str,
    shape: QkvShape,
    (g, w): (Vec<bf16>, Vec<bf16>),
    mut x_of: impl FnMut(&mut SmallRng, usize) -> Vec<bf16>,
    expect: impl Fn(&[bf16], usize, usize, f32) -> bool,
    rng: &mut SmallRng,
) {
    let Some(gpu) = common::gpu() else { return };
    let (k, n) = (shape.hidden, shape.n());
    let op = (FusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap(), UnfusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap());
    let mut failures = Vec::new();
    for m in MS {
        let x = x_of(rng, m);
        let rows: Vec<usize> = (0..m).collect();
        let want = reference::qkv_rows(&x, &g, &w, k, n, shape.eps, &rows);
        for (i, &v) in want.iter().enumerate() {
            assert!(expect(&x, i / n, i % n, v), "{test}: reference [{}, {}] = {v}", i / n, i % n);
        }
        for (label, got) in run_all(&gpu, &op, &x, m) {
            let label = format!("{test} M={m}, {label}");
            let f = check(&label, &got, &want, n);
            if f.is_empty() {
                println!("{label}: ok");
            }
            failures.extend(f);
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Random weights of `SHAPE` without a zero in W (so an infinite gain gives infinite products).
fn nonzero_weights(rng: &mut SmallRng) -> (Vec<bf16>, Vec<bf16>) {
    let (g, mut w) = random_weights(rng, &SHAPE);
    for v in w.iter_mut().filter(|v| v.to_f32() == 0.0) {
        *v = bf16::from_f32(1e-3);
    }
    (g, w)
}

#[test]
fn nan_in_g_makes_every_output_nan() {
    if common::gpu().is_none() {
        return;
    }
    let mut rng = common::rng("nan_in_g_makes_every_output_nan");
    let (mut g, w) = random_weights(&mut rng, &SHAPE);
    g[rng.random_range(0..SHAPE.hidden)] = bf16::NAN;
    let x_of = |rng: &mut SmallRng, m: usize| random_bf16(rng, m * SHAPE.hidden, -3.0, 3.0);
    poisoned_case("nan in g", SHAPE, (g, w), x_of, |_, _, _, v| v.is_nan(), &mut rng);
}

#[test]
fn inf_in_g_makes_every_output_infinite() {
    if common::gpu().is_none() {
        return;
    }
    let mut rng = common::rng("inf_in_g_makes_every_output_infinite");
    let (mut g, w) = nonzero_weights(&mut rng);
    let j = rng.random_range(0..SHAPE.hidden);
    g[j] = bf16::INFINITY;
    let k = SHAPE.hidden;
    let w_signs: Vec<f32> = (0..SHAPE.n()).map(|i| w[i * k + j].to_f32().signum()).collect();
    let expect =
        |x: &[bf16], t: usize, i: usize, v: f32| v == f32::INFINITY * x[t * k + j].to_f32().signum() * w_signs[i];
    poisoned_case("inf in g", SHAPE, (g, w), |rng, m| nonzero_x(rng, m * k), expect, &mut rng);
}

#[test]
fn nan_in_w_makes_its_column_nan() {
    if common::gpu().is_none() {
        return;
    }
    let mut rng = common::rng("nan_in_w_makes_its_column_nan");
    let (k, nq, nkv) = (SHAPE.hidden, SHAPE.q_dim, SHAPE.kv_dim);
    let (g, mut w) = random_weights(&mut rng, &SHAPE);
    let cols = [rng.random_range(0..nq), nq + rng.random_range(0..nkv), nq + nkv + rng.random_range(0..nkv)];
    for &c in &cols {
        w[c * k + rng.random_range(0..k)] = bf16::NAN;
    }
    let x_of = |rng: &mut SmallRng, m: usize| random_bf16(rng, m * k, -3.0, 3.0);
    let expect = |_: &[bf16], _, i: usize, v: f32| if cols.contains(&i) { v.is_nan() } else { v.is_finite() };
    poisoned_case("nan in W", SHAPE, (g, w), x_of, expect, &mut rng);
}

/// x with token `m / 2` all zeros.
fn zero_token(rng: &mut SmallRng, m: usize) -> Vec<bf16> {
    let k = SHAPE.hidden;
    let mut x = random_bf16(rng, m * k, -3.0, 3.0);
    x[m / 2 * k..(m / 2 + 1) * k].fill(bf16::ZERO);
    x
}

#[test]
fn zero_token_with_eps_zero_is_nan() {
    if common::gpu().is_none() {
        return;
    }
    let mut rng = common::rng("zero_token_with_eps_zero_is_nan");
    let shape = QkvShape::new(SHAPE.hidden, SHAPE.q_dim, SHAPE.kv_dim, 0.0);
    let weights = random_weights(&mut rng, &shape);
    let expect =
        |x: &[bf16], t: usize, _, v: f32| if t == x.len() / SHAPE.hidden / 2 { v.is_nan() } else { v.is_finite() };
    poisoned_case("zero token, eps = 0", shape, weights, zero_token, expect, &mut rng);
}

#[test]
fn zero_token_with_eps_is_zero() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("zero_token_with_eps_is_zero");
    let (k, n) = (SHAPE.hidden, SHAPE.n());
    let (g, w) = random_weights(&mut rng, &SHAPE);
    let expect = |x: &[bf16], t: usize, _, v: f32| if t == x.len() / k / 2 { v == 0.0 } else { v.is_finite() };
    poisoned_case("zero token, eps > 0", SHAPE, (g.clone(), w.clone()), zero_token, expect, &mut rng);
    // Exactly zero on every path too (the tolerance of `check` would let a small value pass).
    let op = (FusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap(), UnfusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap());
    for m in MS {
        let x = zero_token(&mut rng, m);
        for (label, got) in run_all(&gpu, &op, &x, m) {
            let row = &got[m / 2 * n..(m / 2 + 1) * n];
            assert!(row.iter().all(|v| v.to_f32() == 0.0), "M={m} {label}: zero token gave {row:?}");
        }
    }
}
