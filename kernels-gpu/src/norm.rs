//! Device helpers shared by the kernels that normalize rows: sums of squares, the
//! per-row inverse RMS, and the normalization of one 16-byte chunk (8 bf16).
//!
//! The normalization matches the CPU reference (`nanofuse_host::reference`): in f32,
//! `y = (x * inv_rms) * g`, rounded once to bf16 (nearest-even).

#[cfg(feature = "sm90a")]
use crate::ptx::convert::fma_rn_f32;
use crate::ptx::convert::{cvt_rn_bf16x2_f32, rsqrt_approx_f32, unpack_bf16x2};

/// Sum of the squares of 8 bf16 values, in f32.
#[inline(always)]
pub fn sum_squares_bf16x8(v: [u32; 4]) -> f32 {
    // Index loops, not `for w in v`: an array's by-value iterator is not unrolled by LLVM
    // and lands in local memory.
    let mut s = 0.0f32;
    for w in &v {
        let (lo, hi) = unpack_bf16x2(*w);
        s += lo * lo + hi * hi;
    }
    s
}

/// `s` plus the squares of the 4 bf16 values packed in `a` and `b`, one FMA each (the
/// warpgroup-MMA kernels' per-fragment form: two words of a row at a time; only the sm_90a
/// module has them).
#[cfg(feature = "sm90a")]
#[inline(always)]
pub fn add_squares_bf16x4(s: f32, a: u32, b: u32) -> f32 {
    let (a0, a1) = unpack_bf16x2(a);
    let (b0, b1) = unpack_bf16x2(b);
    fma_rn_f32(b1, b1, fma_rn_f32(b0, b0, fma_rn_f32(a1, a1, fma_rn_f32(a0, a0, s))))
}

/// `bf16((x * inv_rms) * g)` for 8 packed bf16 values of `x` and `g`.
#[inline(always)]
pub fn normalize_bf16x8(x: [u32; 4], g: [u32; 4], inv_rms: f32) -> [u32; 4] {
    let mut out = [0u32; 4];
    for i in 0..4 {
        out[i] = normalize_bf16x2(x[i], g[i], inv_rms);
    }
    out
}

/// `bf16((x * inv_rms) * g)` for 2 packed bf16 values of `x` and `g`.
#[inline(always)]
fn normalize_bf16x2(x: u32, g: u32, inv_rms: f32) -> u32 {
    let (xl, xh) = unpack_bf16x2(x);
    let (gl, gh) = unpack_bf16x2(g);
    cvt_rn_bf16x2_f32((xl * inv_rms) * gl, (xh * inv_rms) * gh)
}

/// `rsqrt(sum_squares / k + eps)`.
#[inline(always)]
pub fn inv_rms(sum_squares: f32, k: u32, eps: f32) -> f32 {
    rsqrt_approx_f32(sum_squares / k as f32 + eps)
}
