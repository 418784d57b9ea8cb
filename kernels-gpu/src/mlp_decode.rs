//! # The fused MLP block, decode path (M <= 16)
//!
//! Two ops, each an instance of the decode kernel (`decode`: W streaming, x staging, MMA
//! loop, split-K reduction) with its own epilogue, in the four schedules the planner picks
//! from:
//!
//! * `fused_rmsnorm_gate_up_decode*`: `a = silu(rmsnorm(h) · Wgᵀ) ⊙ (rmsnorm(h) · Wuᵀ)`.
//!   The weight is `W' [2I, H]`: RMSNorm's gain folded in (`bf16(W · diag(g))`),
//!   k-interleaved, and its rows in blocks of 16, 8 gate rows then the 8 up rows of the
//!   same intermediate indices (`config::mlp::gate_up_row`), so a warp's 16 rows give each
//!   lane gate and up of the same outputs (epilogue `SiluMul`); the `[M, 2I]` product never
//!   goes to memory.
//! * `proj_residual_decode*`: `out = residual + x · Wᵀ` (the MLP's down projection, and the
//!   attention output projection), `W [N, K]` as given (natural k order: x is interleaved
//!   while staged, `interleave_x = 1`); in place when `out == residual` (epilogue
//!   `ResidualAdd`).
//!
//! # Parameters
//! gate/up: `h [M, H]`, `W' [2I, H]`, `a [M, I]`, `eps`. Projection: `x [M, K]`,
//! `W [N, K]`, `residual [M, N]`, `out [M, N]`. All row-major bf16, 16-byte aligned, every
//! dimension a multiple of 8, `1 <= M <= 16` (`<= 8` for `*_early_m8`); launch shape as for
//! every decode entry. The gate/up epilogue takes no K split across CTAs.
//!
//! # Traffic
//! gate/up: `4 I H` bytes of W read once, `2 M H` of h per row tile (L2), `2 M I` written.
//! Projection: `2 N K` bytes of W, `2 M K` of x per row tile, `2 M N` read and written.

use crate::decode::{ResidualAdd, SiluMul, decode_entries};

decode_entries! {
    /// Fused RMSNorm + gate/up projection + SiLU·mul for small M (see the module
    /// documentation).
    names = [
        fused_rmsnorm_gate_up_decode,
        fused_rmsnorm_gate_up_decode_early,
        fused_rmsnorm_gate_up_decode_early_m8,
        fused_rmsnorm_gate_up_decode_ring
    ],
    params = (h: *const u16, w: *const u16, a: *mut u16, m: u32, k: u32, inter: u32, eps: f32),
    run = (h, w, SiluMul { a, inter }, m, k, eps),
}

decode_entries! {
    /// `out = residual + x · Wᵀ` for small M (see the module documentation).
    names = [proj_residual_decode, proj_residual_decode_early, proj_residual_decode_early_m8, proj_residual_decode_ring],
    params = (x: *const u16, w: *const u16, residual: *const u16, out: *mut u16, m: u32, k: u32, n: u32),
    run = (x, w, ResidualAdd { residual, out, n }, m, k, 0.0),
}
