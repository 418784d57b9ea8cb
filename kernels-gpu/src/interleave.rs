//! Device helpers for the k-interleaved order (`config::interleave`).

use crate::ptx::warp::shfl_sync_bfly_f32;

/// The four 16-byte chunks of a whole 32-element block, re-ordered between natural and
/// interleaved (the map is its own inverse): chunk `j` of the result holds word (bf16 pair)
/// `j` of each input chunk, i.e. the block's 4 x 4 word matrix transposed. Pure register
/// renaming, so the kernels that interleave give each thread whole blocks.
#[inline(always)]
pub fn transpose_block(c: [[u32; 4]; 4]) -> [[u32; 4]; 4] {
    core::array::from_fn(|j| [c[0][j], c[1][j], c[2][j], c[3][j]])
}

/// [`transpose_block`] with the block spread over the four lanes of a quad: lane
/// `4i + j` (`lane`) passes chunk `j` and gets chunk `j` of the transposed block. Two
/// butterfly exchanges (lane distance 2, then 1), each swapping two words with the partner
/// lane: the words whose index differs from the lane's in that bit.
///
/// Every lane of the warp must call it (warp-uniform control flow: `shfl.sync` with the full
/// mask).
#[inline(always)]
pub fn transpose_block_quad(c: [u32; 4], lane: u32) -> [u32; 4] {
    // Two calls, not a loop over the (distance, indices) pairs: an array's by-value
    // iterator is not unrolled by LLVM, and the words would land in local memory.
    let a = exchange_words::<2, 0, 1>(c, lane);
    exchange_words::<1, 0, 2>(a, lane)
}

/// One butterfly step of [`transpose_block_quad`] at lane distance `D`; `I0`, `I1` are the
/// word indices with bit `D` clear. The lower lane of a pair gives its words `I0 | D`,
/// `I1 | D` and takes the partner's `I0`, `I1` into them; the upper lane the other way round.
#[inline(always)]
fn exchange_words<const D: u32, const I0: usize, const I1: usize>(mut a: [u32; 4], lane: u32) -> [u32; 4] {
    let (j0, j1) = (I0 | D as usize, I1 | D as usize);
    let upper = lane & D != 0;
    let (s0, s1) = if upper { (a[I0], a[I1]) } else { (a[j0], a[j1]) };
    let r0 = shfl_sync_bfly_f32(f32::from_bits(s0), D).to_bits();
    let r1 = shfl_sync_bfly_f32(f32::from_bits(s1), D).to_bits();
    if upper {
        (a[I0], a[I1]) = (r0, r1);
    } else {
        (a[j0], a[j1]) = (r0, r1);
    }
    a
}
