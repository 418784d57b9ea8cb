//! Device helpers for one attention head held by a warp: lane `l` holds the `E = hd / 32`
//! contiguous elements `[l·E, (l+1)·E)` of a head row, as `W = E / 2` bf16x2 words.
//! Shared by `qk_norm_rope` and `attention_decode`.

use crate::ptx::convert::{cvt_rn_bf16x2_f32, unpack_bf16x2};
use crate::ptx::global::{ld_global_cg_u32, ld_global_cg_v2_u32, ld_global_cg_v4_u32};
use crate::ptx::trap;

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
