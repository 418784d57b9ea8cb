//! Device helper for the k-interleaved order (`config::interleave`): the transpose of one
//! 32-element block held by the four lanes of a quad.

use crate::ptx::warp::shfl_sync_bfly_u32;

/// Transposes the 4 x 4 word matrix held by the lanes of a quad: lane `c = lane % 4` holds
/// words `4c .. 4c + 4` of a block (its 16-byte chunk `c`) and gets back words `c, 4 + c,
/// 8 + c, 12 + c`, which is chunk `c` of the block in the other order (natural <->
/// interleaved). Two butterfly rounds of two shuffles: first the off-diagonal 2 x 2 blocks
/// are swapped between lanes `c` and `c ^ 2`, then the 2 x 2 blocks are transposed between
/// lanes `c` and `c ^ 1`.
///
/// Warp-collective: all 32 lanes call it (lanes whose result is unused included).
#[inline(always)]
pub fn transpose_quad(v: [u32; 4], lane: u32) -> [u32; 4] {
    let hi = lane & 2 != 0;
    let (s0, s1) = if hi { (v[0], v[1]) } else { (v[2], v[3]) };
    let (r0, r1) = (shfl_sync_bfly_u32(s0, 2), shfl_sync_bfly_u32(s1, 2));
    let v = if hi { [r0, r1, v[2], v[3]] } else { [v[0], v[1], r0, r1] };
    let lo = lane & 1 != 0;
    let (s0, s1) = if lo { (v[0], v[2]) } else { (v[1], v[3]) };
    let (r0, r1) = (shfl_sync_bfly_u32(s0, 1), shfl_sync_bfly_u32(s1, 1));
    if lo { [r0, v[1], r1, v[3]] } else { [v[0], r0, v[2], r1] }
}
