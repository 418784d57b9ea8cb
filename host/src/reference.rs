//! CPU references in plain loops, and the comparisons the tests use.
//!
//! * [`rms_norm`] mirrors the GPU kernel's arithmetic (f32, one rounding to bf16), so the
//!   two agree to about one bf16 ulp.
//! * [`qkv_rows`] is the higher-precision reference for the projection: the normalized
//!   activations are kept in f32 (not rounded) and the dot products are accumulated in
//!   f64. Every GPU path is compared against it.
//!
//! # Panics
//! These are test and benchmark helpers, not the ops' API (which returns typed errors): each
//! function's dimensions are preconditions on its slices' lengths, and a mismatch (or a row
//! index out of range) panics with a message naming it. No input makes them overflow or
//! divide by zero (tests/extremes.rs calls every one with extreme and mismatched values).

use half::bf16;
use nanofuse_kernels_gpu::config::interleave;

use crate::QkvShape;

/// `bf16((x · inv_rms) · g)` per row, `inv_rms = 1 / sqrt(mean(x²) + eps)`, in f32.
pub fn rms_norm(x: &[bf16], g: &[bf16], rows: usize, k: usize, eps: f32) -> Vec<bf16> {
    rms_norm_f32(x, g, rows, k, eps).into_iter().map(bf16::from_f32).collect()
}

/// As [`rms_norm`], without the final rounding.
pub fn rms_norm_f32(x: &[bf16], g: &[bf16], rows: usize, k: usize, eps: f32) -> Vec<f32> {
    assert_eq!(Some(x.len()), rows.checked_mul(k), "rms_norm: x length must be rows * k");
    assert_eq!(g.len(), k, "rms_norm: g length must be k");
    let mut y = Vec::with_capacity(rows * k);
    for row in x.chunks_exact(k.max(1)).take(rows) {
        let inv = inv_rms(row, eps);
        y.extend(row.iter().zip(g).map(|(&xv, &gv)| (xv.to_f32() * inv) * gv.to_f32()));
    }
    y
}

/// Rows of `k` elements rewritten in the k-interleaved order
/// (`nanofuse_kernels_gpu::config::interleave`: the order of the fused op's folded weight
/// and of `rms_norm`'s interleaved output). The map is an involution: applied twice it
/// returns the input.
pub fn interleave_k<T: Copy>(v: &[T], k: usize) -> Vec<T> {
    assert!(k > 0 && v.len().is_multiple_of(k), "interleave_k: v must be rows of k > 0 elements");
    v.chunks_exact(k).flat_map(|row| (0..k).map(|j| row[interleave::source(j, k)])).collect()
}

/// `1 / sqrt(mean(x²) + eps)` with an f32 sum, as the kernels compute it.
pub fn inv_rms(row: &[bf16], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v.to_f32() * v.to_f32()).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// The same in f64 throughout (for the property tests).
pub fn rms_norm_f64(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(a, b)| a * inv * b).collect()
}

/// Rows `rows` of `y = rmsnorm(x) · Wᵀ`, `x [m, k]`, `w [n, k]`, as f32 `[rows.len(), n]`:
/// normalized activations in f32, dot products in f64. Spreads rows over the CPU's cores.
pub fn qkv_rows(x: &[bf16], g: &[bf16], w: &[bf16], k: usize, n: usize, eps: f32, rows: &[usize]) -> Vec<f32> {
    let xn: Vec<Vec<f32>> = rows.iter().map(|&r| rms_norm_f32(row(x, r, k), g, 1, k, eps)).collect();
    matmul_rows(&xn, w, k, n)
}

/// Rows of `y = x · Wᵀ` for bf16 x used as is (no norm; x is widened to f32 exactly), dot
/// products in f64, as [`qkv_rows`].
pub fn gemm_rows(x: &[bf16], w: &[bf16], k: usize, n: usize, rows: &[usize]) -> Vec<f32> {
    let xr: Vec<Vec<f32>> = rows.iter().map(|&r| row(x, r, k).iter().map(|v| v.to_f32()).collect()).collect();
    matmul_rows(&xr, w, k, n)
}

/// Rows `rows` of the MLP's gate/up op, `a = silu(rmsnorm(h) · Wgᵀ) ⊙ (rmsnorm(h) · Wuᵀ)`,
/// `h [m, hidden]`, `wg, wu [inter, hidden]`, as f32 `[rows.len(), inter]`: normalized
/// activations in f32 and dot products in f64 (as [`qkv_rows`]), then rounded like PyTorch's
/// unfused ops on bf16 tensors: gate and up to bf16, `silu(gate)` (in f32) to bf16, and the
/// product left unrounded.
#[allow(clippy::too_many_arguments)]
pub fn gate_up_rows(
    h: &[bf16],
    g: &[bf16],
    wg: &[bf16],
    wu: &[bf16],
    hidden: usize,
    inter: usize,
    eps: f32,
    rows: &[usize],
) -> Vec<f32> {
    let gate = qkv_rows(h, g, wg, hidden, inter, eps, rows);
    let up = qkv_rows(h, g, wu, hidden, inter, eps, rows);
    let round = |v: f32| bf16::from_f32(v).to_f32();
    gate.iter().zip(&up).map(|(&gv, &uv)| round(silu(round(gv))) * round(uv)).collect()
}

/// `v / (1 + e^-v)` in f32.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// Rows `rows` of `out = residual + x · Wᵀ`, `x [m, k]`, `w [n, k]`, `residual [m, n]`, as
/// f32 `[rows.len(), n]`: the product in f64, rounded to bf16 (as PyTorch's `linear` output),
/// plus the residual, unrounded.
pub fn proj_residual_rows(x: &[bf16], w: &[bf16], residual: &[bf16], k: usize, n: usize, rows: &[usize]) -> Vec<f32> {
    let y = gemm_rows(x, w, k, n, rows);
    let mut out = Vec::with_capacity(y.len());
    for (i, &r) in rows.iter().enumerate() {
        let res = row(residual, r, n);
        out.extend(y[i * n..(i + 1) * n].iter().zip(res).map(|(&v, &h)| bf16::from_f32(v).to_f32() + h.to_f32()));
    }
    out
}

/// Row `r` of a row-major matrix of `width`-element rows. Panics (a precondition) if the
/// row is not all inside `v`.
fn row<T>(v: &[T], r: usize, width: usize) -> &[T] {
    let range = r.checked_mul(width).and_then(|a| Some(a..a.checked_add(width)?));
    match range.and_then(|range| v.get(range)) {
        Some(row) => row,
        None => panic!("row {r} of {width} elements is past the slice's {} elements", v.len()),
    }
}

fn matmul_rows(xr: &[Vec<f32>], w: &[bf16], k: usize, n: usize) -> Vec<f32> {
    assert_eq!(Some(w.len()), n.checked_mul(k), "w length must be n * k");
    assert!(k > 0 || n == 0 || xr.is_empty(), "a product over k = 0 elements with n = {n} outputs");
    let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let Some(len) = xr.len().checked_mul(n) else { panic!("{} rows x n = {n} outputs overflow usize", xr.len()) };
    let mut y = vec![0.0f32; len];
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).min(32);
    let cols_per = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        // Each thread owns a range of output columns for all rows.
        let mut parts: Vec<(usize, Vec<f32>)> = Vec::new();
        let handles: Vec<_> = (0..n)
            .step_by(cols_per)
            .map(|c0| {
                let wf = &wf;
                scope.spawn(move || {
                    let c1 = (c0 + cols_per).min(n);
                    let mut out = vec![0.0f32; xr.len() * (c1 - c0)];
                    for (i, x) in xr.iter().enumerate() {
                        for c in c0..c1 {
                            let wrow = &wf[c * k..(c + 1) * k];
                            let dot: f64 = x.iter().zip(wrow).map(|(&a, &b)| a as f64 * b as f64).sum();
                            out[i * (c1 - c0) + (c - c0)] = dot as f32;
                        }
                    }
                    (c0, out)
                })
            })
            .collect();
        for h in handles {
            parts.push(h.join().expect("reference thread panicked"));
        }
        for (c0, out) in parts {
            let width = out.len() / xr.len().max(1);
            for i in 0..xr.len() {
                y[i * n + c0..i * n + c0 + width].copy_from_slice(&out[i * width..(i + 1) * width]);
            }
        }
    });
    y
}

/// q `[m, q_dim]`, k and v `[m, kv_dim]` side by side as `[m, q_dim + 2 kv_dim]`: the
/// layout of the packed outputs, the baselines' y and the references.
pub fn concat_qkv(q: &[bf16], k: &[bf16], v: &[bf16], m: usize, s: &QkvShape) -> Vec<bf16> {
    let mut y = Vec::with_capacity(q.len().saturating_add(k.len()).saturating_add(v.len()));
    for r in 0..m {
        y.extend_from_slice(row(q, r, s.q_dim));
        y.extend_from_slice(row(k, r, s.kv_dim));
        y.extend_from_slice(row(v, r, s.kv_dim));
    }
    y
}

/// How a GPU result compares with a reference.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// `‖got − ref‖₂ / ‖ref‖₂` over all elements (infinite if any element is not finite).
    pub rel_frobenius: f64,
    /// Largest `|got − ref|`.
    pub max_abs_err: f64,
    /// Elements outside `atol + rtol·|ref|`.
    pub mismatches: usize,
    /// The first such element: (index, got, reference).
    pub first_mismatch: Option<(usize, f32, f32)>,
    /// Non-finite elements in `got` where the reference is finite (e.g. unwritten NaN
    /// poison).
    pub non_finite: usize,
}

impl Comparison {
    /// True when the Frobenius bound holds and no element is off or non-finite.
    pub fn passes(&self, max_rel_frobenius: f64) -> bool {
        self.non_finite == 0 && self.mismatches == 0 && self.rel_frobenius <= max_rel_frobenius
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rel. Frobenius error {:.3e}, max abs error {:.3e}, {} elements out of tolerance, {} non-finite",
            self.rel_frobenius, self.max_abs_err, self.mismatches, self.non_finite
        )?;
        if let Some((i, got, want)) = self.first_mismatch {
            write!(f, "; first at index {i}: got {got}, expected {want}")?;
        }
        Ok(())
    }
}

/// Compares `got` with `want` element by element (`|got − ref| <= atol + rtol·|ref|`) and
/// as a whole (relative Frobenius error).
pub fn compare(got: &[bf16], want: &[f32], atol: f64, rtol: f64) -> Comparison {
    assert_eq!(got.len(), want.len(), "compare: lengths differ");
    let (mut num, mut den, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    let (mut mismatches, mut non_finite, mut first) = (0, 0, None);
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        let (g, r) = (g.to_f32() as f64, r as f64);
        let err = (g - r).abs();
        if !g.is_finite() && r.is_finite() {
            non_finite += 1;
        }
        let ok = err <= atol + rtol * r.abs() || (g.is_nan() && r.is_nan()) || (g == r);
        if !ok {
            mismatches += 1;
            first.get_or_insert((i, g as f32, r as f32));
        }
        if g.is_finite() && r.is_finite() {
            num += err * err;
            max_abs = max_abs.max(err);
        } else if !(g.is_nan() && r.is_nan()) && g != r {
            num = f64::INFINITY;
        }
        if r.is_finite() {
            den += r * r;
        }
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else if num == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    Comparison { rel_frobenius: rel, max_abs_err: max_abs, mismatches, first_mismatch: first, non_finite }
}

/// Root mean square of a reference (to scale absolute tolerances). NaN if `v` holds a NaN
/// or an infinity: scale tolerances by the finite elements in that case.
pub fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / v.len().max(1) as f64).sqrt()
}
