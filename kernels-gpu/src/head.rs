//! Device helpers for one attention head held by a warp: lane `l` holds the `E = hd / 32`
//! contiguous elements `[l·E, (l+1)·E)` of a head row, as `W = E / 2` bf16x2 words.
//! Shared by `qk_norm_rope` and `attention_decode` (which applies [`norm_rope`] itself in
//! its fused-RoPE form).

use crate::ptx::convert::{cvt_rn_bf16x2_f32, rsqrt_approx_f32, unpack_bf16x2};
use crate::ptx::global::{ld_global_cg_u32, ld_global_cg_v2_u32, ld_global_cg_v4_u32};
use crate::ptx::trap;
use crate::ptx::warp::{shfl_sync_bfly_f32, warp_sum_f32};

/// The lane's `W` words of a row, by one 4-, 8- or 16-byte load through L2 (`.cg`: the KV
/// cache is written by the previous kernel, which under PDL may still be running when this
/// one starts, so the read-only `.nc` path's contract would not hold; each row is read once,
/// so L1 would not help anyway).
///
/// # Safety
/// `p` is `4 W`-byte aligned and points at `W` readable words.
#[inline(always)]
pub unsafe fn ld_words<const W: usize>(p: *const u16) -> [u32; W] {
    let mut out = [0u32; W];
    // SAFETY: forwarded to the caller; each arm reads exactly W words.
    unsafe {
        match W {
            1 => out[0] = ld_global_cg_u32(p as *const u32),
            2 => {
                let v = ld_global_cg_v2_u32(p as *const [u32; 2]);
                out[..2].copy_from_slice(&v);
            }
            4 => {
                let v = ld_global_cg_v4_u32(p as *const [u32; 4]);
                out[..4].copy_from_slice(&v);
            }
            _ => trap(),
        }
    }
    out
}

/// `W` bf16x2 words as `E = 2 W` f32 (element order kept).
#[inline(always)]
pub fn unpack_words<const W: usize, const E: usize>(w: [u32; W]) -> [f32; E] {
    let mut out = [0.0f32; E];
    for (i, &word) in w.iter().enumerate() {
        let (lo, hi) = unpack_bf16x2(word);
        out[2 * i] = lo;
        out[2 * i + 1] = hi;
    }
    out
}

/// `E` f32 rounded to bf16 (nearest-even) as `W = E / 2` words.
#[inline(always)]
pub fn pack_words<const W: usize, const E: usize>(v: [f32; E]) -> [u32; W] {
    core::array::from_fn(|i| cvt_rn_bf16x2_f32(v[2 * i], v[2 * i + 1]))
}

/// Qwen3's per-head RMSNorm (with `norm = Some((w, eps))`, `w [hd]` bf16) and rotate-half
/// RoPE from table row `row` (`cos(p·f_i)` for `i < hd/2`, then `sin(p·f_i)`, f32) of the
/// head whose elements the warp holds in `x`, in f32:
/// ```text
/// x  = norm ? x · rsqrt(mean(x²) + eps) · w : x
/// x'[i] = x[i] c_i − x[i + hd/2] s_i,   x'[i + hd/2] = x[i + hd/2] c_i + x[i] s_i
/// ```
/// The rotate-half partner of lane `l`'s element `j` is lane `l ^ 16`'s (one butterfly
/// shuffle per element); the norm's sum is a warp sum. Every lane of the warp calls it.
///
/// # Safety
/// `row` points at `hd = 32 E` readable f32; `w` (if given) at `hd` bf16, 4 W-byte aligned.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
pub unsafe fn norm_rope<const W: usize, const E: usize>(
    mut x: [f32; E],
    lane: u32,
    norm: Option<(*const u16, f32)>,
    row: *const f32,
) -> [f32; E] {
    let hd = 32 * E;
    let elem0 = lane as usize * E;
    // SAFETY (whole body): the lane's elements of w and of the table row, per the caller.
    unsafe {
        if let Some((w, eps)) = norm {
            let mut ss = 0.0f32;
            for xv in x.iter() {
                ss += xv * xv;
            }
            let inv = rsqrt_approx_f32(warp_sum_f32(ss) / hd as f32 + eps);
            let ww: [f32; E] = unpack_words((w.add(elem0) as *const [u32; W]).read());
            for j in 0..E {
                x[j] = x[j] * inv * ww[j];
            }
        }
        let i0 = (lane & 15) as usize * E;
        let upper = lane >= 16;
        let mut y = [0.0f32; E];
        for j in 0..E {
            let partner = shfl_sync_bfly_f32(x[j], 16);
            let (c, s) = (row.add(i0 + j).read(), row.add(hd / 2 + i0 + j).read());
            y[j] = if upper { x[j] * c + partner * s } else { x[j] * c - partner * s };
        }
        y
    }
}
