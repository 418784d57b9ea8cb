//! Device helpers for the MLP's activation, rounded like PyTorch's unfused ops on bf16
//! tensors: the GEMM result is a bf16 tensor, `F.silu` rounds its output to bf16, and the
//! product with `up` is rounded once more.

use crate::ptx::convert::{cvt_rn_bf16x2_f32, ex2_approx_f32, rcp_approx_f32, unpack_bf16x2};

/// `silu(v) = v / (1 + e^-v)` in f32 (`ex2.approx` and `rcp.approx`: a few ulp, far below
/// the bf16 rounding that follows; `-inf` gives `-0`, NaN stays NaN).
#[inline(always)]
pub fn silu(v: f32) -> f32 {
    const LOG2_E: f32 = core::f32::consts::LOG2_E;
    v * rcp_approx_f32(1.0 + ex2_approx_f32(-v * LOG2_E))
}

/// Rounds to bf16 and back (the rounding of a bf16 tensor between two ops).
#[inline(always)]
pub fn round_bf16(v: f32) -> f32 {
    unpack_bf16x2(cvt_rn_bf16x2_f32(v, 0.0)).0
}

/// `bf16(silu(bf16(gate)) · bf16(up))` before the final rounding: PyTorch's
/// `F.silu(gate) * up` on bf16 tensors.
#[inline(always)]
pub fn silu_mul(gate: f32, up: f32) -> f32 {
    round_bf16(silu(round_bf16(gate))) * round_bf16(up)
}

/// [`silu_mul`] of 8 packed bf16 gate and up values, rounded to 8 packed bf16.
#[inline(always)]
pub fn silu_mul_bf16x8(gate: [u32; 4], up: [u32; 4]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for i in 0..4 {
        let (gl, gh) = unpack_bf16x2(gate[i]);
        let (ul, uh) = unpack_bf16x2(up[i]);
        out[i] = cvt_rn_bf16x2_f32(silu_mul(gl, ul), silu_mul(gh, uh));
    }
    out
}

/// `bf16(a + b)` of 8 packed bf16 pairs (the residual add).
#[inline(always)]
pub fn add_bf16x8(a: [u32; 4], b: [u32; 4]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for i in 0..4 {
        let (al, ah) = unpack_bf16x2(a[i]);
        let (bl, bh) = unpack_bf16x2(b[i]);
        out[i] = cvt_rn_bf16x2_f32(al + bl, ah + bh);
    }
    out
}
