//! Device helpers of the argmax slot (`config::argmax`): the key of a bf16 logit and the
//! u64 max across lanes. Shared by `argmax_bf16` and the LM head's `ArgMax` epilogue.

use crate::config::argmax::key;
use crate::ptx::warp::shfl_sync_bfly_u32;

/// The slot key of bf16 `bits` at index `i` (0 for a NaN).
#[inline(always)]
pub fn key_bf16(bits: u16, i: u32) -> u64 {
    key((bits as u32) << 16, i)
}

/// The larger of `v` and lane `lane ^ mask`'s `v` (two 32-bit butterfly shuffles). Every
/// lane of the warp calls it with the same `mask`.
#[inline(always)]
pub fn max_bfly_u64(v: u64, mask: u32) -> u64 {
    let lo = shfl_sync_bfly_u32(v as u32, mask);
    let hi = shfl_sync_bfly_u32((v >> 32) as u32, mask);
    let other = ((hi as u64) << 32) | lo as u64;
    if other > v { other } else { v }
}

/// The largest `v` of the warp, in every lane.
#[inline(always)]
pub fn warp_max_u64(mut v: u64) -> u64 {
    let mut m = 16;
    while m > 0 {
        v = max_bfly_u64(v, m);
        m /= 2;
    }
    v
}
