//! # Fused RMSNorm + QKV projection, decode path (M <= 16)
//!
//! `q, k, v = split(rmsnorm(x) · Wᵀ)`, with RMSNorm's gain g folded into the weight once,
//! when the op is built (`fold_gain`: `W' = bf16(W · diag(g))`, stored k-interleaved);
//! `gemm_decode` is the same kernel without the norm (`y = x · Wᵀ`, x already normalized),
//! for the unfused baseline (b) and `ops::gemm`. Both are instances of the decode kernel
//! (`decode`: W streaming, x staging, MMA loop, split-K reduction) with the epilogues
//! `RowStore<true>` and `RowStore<false>`, each in the four schedules the planner picks from.
//!
//! # Parameters
//! `x [M, K]`, `W' [N, K]` (PyTorch `Linear` layout, rows of Q then K then V,
//! `N = Nq + 2 Nkv`), outputs `q [M, Nq]`, `k [M, Nkv]`, `v [M, Nkv]` (the GEMM: one
//! `y [M, N]`); all row-major bf16, 16-byte aligned, `K % 8 == 0`, `1 <= M <= 16` (`<= 8`
//! for `*_early_m8`). Launch shape: `warp_split`, `k_chunk`, `trigger_first`,
//! `interleave_x` (see `decode`).
//!
//! # Traffic and launch
//! As the decode kernel: `2 N K` bytes of W read once, `2 M N` bytes written; block 256,
//! grid `(k_splits, ceil(N / R))`.

use crate::decode::{RowStore, decode_entries};
use crate::qkv_out::QkvOut;

decode_entries! {
    /// Fused RMSNorm + QKV projection for small M (see the module documentation).
    names = [
        fused_rmsnorm_qkv_decode,
        fused_rmsnorm_qkv_decode_early,
        fused_rmsnorm_qkv_decode_early_m8,
        fused_rmsnorm_qkv_decode_ring
    ],
    params = (
        x: *const u16,
        w: *const u16,
        q: *mut u16,
        k_out: *mut u16,
        v: *mut u16,
        m: u32,
        k: u32,
        nq: u32,
        nkv: u32,
        eps: f32,
    ),
    run = (x, w, RowStore::<true>(QkvOut { q, k: k_out, v, nq, nkv }), m, k, eps),
}

decode_entries! {
    /// `y [M, N] = x · Wᵀ` for small M (x already normalized): the decode kernel without the
    /// fused norm, for the unfused baseline that isolates what fusion buys.
    names = [gemm_decode, gemm_decode_early, gemm_decode_early_m8, gemm_decode_ring],
    params = (x: *const u16, w: *const u16, y: *mut u16, m: u32, k: u32, n: u32),
    run = (x, w, RowStore::<false>(QkvOut { q: y, k: core::ptr::null_mut(), v: core::ptr::null_mut(), nq: n, nkv: 0 }), m, k, 0.0),
}
