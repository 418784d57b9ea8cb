//! Warp-level data exchange.

use core::arch::asm;

/// All 32 lanes take part.
pub const FULL_MASK: u32 = 0xffff_ffff;

/// `shfl.sync.bfly.b32 d, v, lane_mask, 0x1f, 0xffffffff;` — returns `v` of lane
/// `lane_id ^ lane_mask`. Every lane of the warp must call it with the same `lane_mask`.
#[inline(always)]
pub fn shfl_sync_bfly_f32(v: f32, lane_mask: u32) -> f32 {
    let d: f32;
    // SAFETY: register-only; all kernels call this from warp-uniform control flow.
    unsafe {
        asm!(
            "shfl.sync.bfly.b32 {d}, {v}, {m}, 0x1f, 0xffffffff;",
            d = out(reg32) d, v = in(reg32) v, m = in(reg32) lane_mask,
            options(nomem, nostack),
        );
    }
    d
}

/// `shfl.sync.bfly.b32 d, v, lane_mask, 0x1f, 0xffffffff;` on a `u32` (as
/// [`shfl_sync_bfly_f32`]).
#[inline(always)]
pub fn shfl_sync_bfly_u32(v: u32, lane_mask: u32) -> u32 {
    let d: u32;
    // SAFETY: register-only; all kernels call this from warp-uniform control flow.
    unsafe {
        asm!(
            "shfl.sync.bfly.b32 {d}, {v}, {m}, 0x1f, 0xffffffff;",
            d = out(reg32) d, v = in(reg32) v, m = in(reg32) lane_mask,
            options(nomem, nostack),
        );
    }
    d
}

/// `shfl.sync.idx.b32 d, v, src_lane, 0x1f, 0xffffffff;` — returns `v` of lane `src_lane`
/// (0..32). Every lane of the warp must call it.
#[inline(always)]
pub fn shfl_sync_idx_f32(v: f32, src_lane: u32) -> f32 {
    let d: f32;
    // SAFETY: register-only; all kernels call this from warp-uniform control flow.
    unsafe {
        asm!(
            "shfl.sync.idx.b32 {d}, {v}, {l}, 0x1f, 0xffffffff;",
            d = out(reg32) d, v = in(reg32) v, l = in(reg32) src_lane,
            options(nomem, nostack),
        );
    }
    d
}

/// `shfl.sync.down.b32 d, v, delta, 0x1f, 0xffffffff;` — returns `v` of lane
/// `lane_id + delta`, or this lane's own `v` where that lane is past 31.
#[inline(always)]
pub fn shfl_sync_down_f32(v: f32, delta: u32) -> f32 {
    let d: f32;
    // SAFETY: register-only; all kernels call this from warp-uniform control flow.
    unsafe {
        asm!(
            "shfl.sync.down.b32 {d}, {v}, {n}, 0x1f, 0xffffffff;",
            d = out(reg32) d, v = in(reg32) v, n = in(reg32) delta,
            options(nomem, nostack),
        );
    }
    d
}

/// `bar.warp.sync 0xffffffff;` — wait until all 32 lanes arrive; orders their shared-memory
/// accesses (`__syncwarp()`).
#[inline(always)]
pub fn bar_warp_sync() {
    // SAFETY: no operands; every caller is warp-uniform.
    unsafe { asm!("bar.warp.sync 0xffffffff;", options(nostack)) }
}

/// Maximum of `v` over the warp, returned to every lane (five butterfly shuffles).
#[inline(always)]
pub fn warp_max_f32(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v = v.max(shfl_sync_bfly_f32(v, m));
        m /= 2;
    }
    v
}

/// Sum of `v` over the warp, returned to every lane (five butterfly shuffles).
#[inline(always)]
pub fn warp_sum_f32(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v += shfl_sync_bfly_f32(v, m);
        m /= 2;
    }
    v
}
