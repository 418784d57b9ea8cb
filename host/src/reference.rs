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

/// One token's q or k heads `x [heads · head_dim]` after the optional per-head RMSNorm
/// (`norm = Some((w [head_dim], eps))`: `x · 1/sqrt(mean(x²) + eps) · w`) and rotate-half
/// RoPE with the table row `rope_row [head_dim]` (cos for `i < hd/2`, then sin), in f32,
/// unrounded: what `qk_norm_rope` computes before its one rounding. `None` when the
/// lengths do not fit (`head_dim` even and positive, `x` whole heads, `w` and the row
/// `head_dim` long).
pub fn qk_norm_rope_rows(
    x: &[bf16],
    head_dim: usize,
    norm: Option<(&[bf16], f32)>,
    rope_row: &[f32],
) -> Option<Vec<f32>> {
    let hd = head_dim;
    if hd == 0 || !hd.is_multiple_of(2) || !x.len().is_multiple_of(hd) || rope_row.len() != hd {
        return None;
    }
    if norm.is_some_and(|(w, _)| w.len() != hd) {
        return None;
    }
    let half = hd / 2;
    let mut out = Vec::with_capacity(x.len());
    for head in x.chunks_exact(hd) {
        let mut v: Vec<f32> = head.iter().map(|e| e.to_f32()).collect();
        if let Some((w, eps)) = norm {
            let ss: f32 = v.iter().map(|e| e * e).sum();
            let inv = 1.0 / (ss / hd as f32 + eps).sqrt();
            for (e, g) in v.iter_mut().zip(w) {
                *e = *e * inv * g.to_f32();
            }
        }
        let mut r = vec![0.0f32; hd];
        for i in 0..half {
            let (c, s) = (rope_row[i], rope_row[half + i]);
            r[i] = v[i] * c - v[i + half] * s;
            r[i + half] = v[i + half] * c + v[i] * s;
        }
        out.extend(r);
    }
    Some(out)
}

/// One token's decode attention with GQA: `out[h] = softmax(q_h · K_{kvh}ᵀ / sqrt(hd)) ·
/// V_{kvh}` over positions `0..len`, `kvh = h / (num_heads / num_kv_heads)`, for
/// `q [num_heads · hd]` and `k_cache, v_cache [num_kv_heads, max_seq, hd]` (element
/// `(h, p, d)` at `(h·max_seq + p)·hd + d`), scores and sums in f64, as f32
/// `[num_heads · hd]`. `None` when the shape or lengths do not fit (`1 <= len <= max_seq`).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_rows(
    q: &[bf16],
    k_cache: &[bf16],
    v_cache: &[bf16],
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    max_seq: usize,
    len: usize,
) -> Option<Vec<f32>> {
    let qf: Vec<f32> = q.iter().map(|v| v.to_f32()).collect();
    attention_decode_rows_f32q(&qf, k_cache, v_cache, num_heads, num_kv_heads, head_dim, max_seq, len)
}

/// [`attention_decode_rows`] with q in f32 (as the fused-RoPE attention keeps it after
/// RoPE).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_rows_f32q(
    q: &[f32],
    k_cache: &[bf16],
    v_cache: &[bf16],
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    max_seq: usize,
    len: usize,
) -> Option<Vec<f32>> {
    let hd = head_dim;
    if num_kv_heads == 0 || hd == 0 || !num_heads.is_multiple_of(num_kv_heads) || len == 0 || len > max_seq {
        return None;
    }
    let cache = num_kv_heads.checked_mul(max_seq)?.checked_mul(hd)?;
    if q.len() != num_heads.checked_mul(hd)? || k_cache.len() != cache || v_cache.len() != cache {
        return None;
    }
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = Vec::with_capacity(num_heads * hd);
    for h in 0..num_heads {
        let kvh = h / group;
        let qh: Vec<f64> = q[h * hd..(h + 1) * hd].iter().map(|&v| v as f64).collect();
        let row = |p: usize| (kvh * max_seq + p) * hd..(kvh * max_seq + p + 1) * hd;
        let scores: Vec<f64> = (0..len)
            .map(|p| k_cache[row(p)].iter().zip(&qh).map(|(k, q)| k.to_f32() as f64 * q).sum::<f64>() * scale)
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let l: f64 = w.iter().sum();
        let mut o = vec![0.0f64; hd];
        for (p, wp) in w.iter().enumerate() {
            for (od, v) in o.iter_mut().zip(&v_cache[row(p)]) {
                *od += wp * v.to_f32() as f64;
            }
        }
        out.extend(o.iter().map(|v| (v / l) as f32));
    }
    Some(out)
}

/// The index of the largest value (the lowest among equal ones, `torch.argmax`), NaN
/// ignored and `-0.0` equal to `+0.0`, as the argmax kernels; `None` if every value is NaN
/// (or `v` is empty).
pub fn argmax_index(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// The rotate-half RoPE table `[max_seq, head_dim]` f32 for inverse frequencies
/// `f_i = theta^(-2i / hd)`: row p is `cos(p·f_i)` for `i < hd/2`, then `sin(p·f_i)`
/// (angles in f64, as the engine's table).
pub fn rope_table(max_seq: usize, head_dim: usize, theta: f64) -> Vec<f32> {
    let half = head_dim / 2;
    let mut t = Vec::with_capacity(max_seq * head_dim);
    for p in 0..max_seq {
        let angles: Vec<f64> = (0..half).map(|i| p as f64 * theta.powf(-(2.0 * i as f64) / head_dim as f64)).collect();
        t.extend(angles.iter().map(|a| a.cos() as f32));
        t.extend(angles.iter().map(|a| a.sin() as f32));
    }
    t
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn argmax_index_ties_nan_and_empty() {
        assert_eq!(argmax_index(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax_index(&[f32::NAN, -1.0, f32::NAN]), Some(1));
        assert_eq!(argmax_index(&[f32::NEG_INFINITY; 3]), Some(0));
        assert_eq!(argmax_index(&[-0.0, 0.0]), Some(0));
        assert_eq!(argmax_index(&[f32::NAN]), None);
        assert_eq!(argmax_index(&[]), None);
    }

    #[test]
    fn rope_at_position_zero_is_the_identity_and_bad_lengths_are_none() {
        let x: Vec<bf16> = (0..128).map(|i| bf16::from_f32(i as f32 / 7.0 - 9.0)).collect();
        let t = rope_table(4, 64, 10000.0);
        let r = qk_norm_rope_rows(&x, 64, None, &t[..64]).unwrap();
        assert!(r.iter().zip(&x).all(|(a, b)| *a == b.to_f32()));
        assert!(qk_norm_rope_rows(&x[..100], 64, None, &t[..64]).is_none());
        assert!(qk_norm_rope_rows(&x, 64, None, &t[..63]).is_none());
        assert!(qk_norm_rope_rows(&x, 64, Some((&x[..10], 1e-6)), &t[..64]).is_none());
    }

    #[test]
    fn attention_of_one_position_is_its_value_row() {
        let (nh, nkv, hd, ms) = (4, 2, 8, 3);
        let q: Vec<bf16> = (0..nh * hd).map(|i| bf16::from_f32((i % 5) as f32)).collect();
        let k: Vec<bf16> = (0..nkv * ms * hd).map(|i| bf16::from_f32((i % 3) as f32)).collect();
        let v: Vec<bf16> = (0..nkv * ms * hd).map(|i| bf16::from_f32(i as f32)).collect();
        let o = attention_decode_rows(&q, &k, &v, nh, nkv, hd, ms, 1).unwrap();
        for h in 0..nh {
            let kvh = h / 2;
            for d in 0..hd {
                assert_eq!(o[h * hd + d], v[kvh * ms * hd + d].to_f32());
            }
        }
        assert!(attention_decode_rows(&q, &k, &v, nh, nkv, hd, ms, 0).is_none());
        assert!(attention_decode_rows(&q, &k, &v, nh, nkv, hd, ms, 4).is_none());
        assert!(attention_decode_rows(&q, &k, &v, 3, 2, hd, ms, 1).is_none());
    }
}
