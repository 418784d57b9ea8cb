//! Device helper for the k-interleaved order (`config::interleave`).

/// The four 16-byte chunks of a whole 32-element block, re-ordered between natural and
/// interleaved (the map is its own inverse): chunk `j` of the result holds word (bf16 pair)
/// `j` of each input chunk, i.e. the block's 4 x 4 word matrix transposed. Pure register
/// renaming, so the kernels that interleave give each thread whole blocks.
#[inline(always)]
pub fn transpose_block(c: [[u32; 4]; 4]) -> [[u32; 4]; 4] {
    core::array::from_fn(|j| [c[0][j], c[1][j], c[2][j], c[3][j]])
}
