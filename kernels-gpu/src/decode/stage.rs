//! # x staging: the rows of x a decode CTA needs, copied into shared memory
//!
//! Every token row's slice for the CTA's K range (or, with the x ring, one phase of it) is
//! copied by `cp.async`: whole 32-element blocks 16 bytes at a time as they are, since x in
//! shared memory and W in global memory are in opposite k orders (`config::interleave`);
//! with `interleave` (both natural) and for a partial last block, 4-byte copies scatter each
//! bf16 pair to its interleaved slot. Rows are `stride` bytes apart (16 bytes of padding, so
//! the 8 rows an `ldmatrix` phase reads hit 8 bank groups). [`sum_rows`] adds the squares
//! of whole staged rows, for the entries that do not take them from the MMA's B fragments.

use crate::config::decode::WARPS;
use crate::norm::sum_squares_bf16x8;
use crate::ptx::cp_async::{cp_async_ca_shared_global_4, cp_async_ca_shared_global_16};
use crate::ptx::shared::{SharedPtr, ld_shared_v4_u32, st_shared_f32};
use crate::ptx::warp::{bar_warp_sync, shfl_sync_bfly_f32};

/// The rows of x a CTA stages: tokens `0..m`, 16-byte chunks `c0..` of each (`steps` blocks
/// of 32 elements), into shared memory rows `stride` bytes apart.
pub struct StagedRows {
    pub x: *const u16,
    pub xs: SharedPtr<u8>,
    pub stride: u32,
    pub m: u32,
    /// Chunks per row of x (K / 8).
    pub chunks: u32,
    pub c0: u32,
    pub steps: u32,
}

impl StagedRows {
    /// Issues this lane's copies of a ring slice (at most `UNROLL` blocks of each row, 16
    /// chunks), shared by the `groups` warps of one part (`group`: the caller's index among
    /// them): lane l copies chunk l % 16 of rows `group + groups · (l / 16 + 2i)`. Whole
    /// blocks are copied as they are, 16 bytes at a time, unless `interleave`; the rest (a
    /// partial last block, or every block with `interleave`) is scattered by 4-byte copies
    /// into the interleaved order, as in `copy`.
    ///
    /// # Safety
    /// As `copy`, with `steps <= UNROLL`.
    #[inline(always)]
    pub unsafe fn copy_slice(&self, group: u32, groups: u32, lane: u32, interleave: bool) {
        let c = lane & 15;
        if c >= self.steps * 4 {
            return;
        }
        let chunk = self.c0 + c;
        let in_k = chunk < self.chunks;
        // A block lies wholly inside K when its last chunk does.
        let whole = !interleave && self.c0 + (c | 3) < self.chunks;
        let (blk, cc) = (c >> 2, c & 3);
        let mut t = group + groups * (lane >> 4);
        while t < self.m {
            let row = self.xs.byte_add(t * self.stride);
            let src = (self.x as *const [u32; 4]).wrapping_add(t as usize * self.chunks as usize + chunk as usize);
            // SAFETY: chunk < K / 8 of row t < m is inside x (else zero-filled, not read);
            // the destination is inside the row's slice.
            unsafe {
                if whole {
                    cp_async_ca_shared_global_16(row.byte_add(c * 16), src as *const u8, 16);
                } else {
                    for j in 0..4u32 {
                        let dst = row.byte_add(blk * 64 + (4 * j + cc) * 4);
                        let word = (src as *const u32).wrapping_add(j as usize);
                        cp_async_ca_shared_global_4(dst, word as *const u8, if in_k { 4 } else { 0 });
                    }
                }
            }
            t += 2 * groups;
        }
    }

    /// Issues this lane's copies of the rows (`copy`): at M = 1 all 8 warps share the row,
    /// at M = 2 four warps share each row if `share_m2`, otherwise warp w copies rows w,
    /// w + 8.
    ///
    /// # Safety
    /// As `copy`.
    #[inline(always)]
    pub unsafe fn stage(&self, warp: u32, lane: u32, interleave: bool, share_m2: bool) {
        // SAFETY: forwarded to the caller.
        unsafe {
            match self.m {
                1 => self.copy::<3>(warp, lane, interleave),
                2 if share_m2 => self.copy::<2>(warp, lane, interleave),
                _ => self.copy::<0>(warp, lane, interleave),
            }
        }
    }

    /// Issues this lane's copies: each row is copied by `2^SPLIT_LOG2` warps, which take its
    /// pieces in turn (a monomorphized loop: with a run-time shift it was measured slower).
    ///
    /// Whole blocks are copied as they are, 16 bytes per lane (a piece: 512 bytes), unless
    /// `interleave` (x and W in the same k order). The rest, a partial last block (always in
    /// natural order, in x and in W) or, with `interleave`, every block, is scattered by
    /// 4-byte copies: word `4c + j` of a block (chunk `c`) lands at word `4j + c`, the
    /// interleaved order; 32 lanes copy 128 contiguous bytes (a piece) into two whole blocks,
    /// conflict-free.
    ///
    /// # Safety
    /// `x` holds `m` rows of `chunks` chunks; shared memory holds `m` rows of `stride >=
    /// 64 steps` bytes at `xs`. Copies past K zero-fill without reading x.
    #[inline(always)]
    unsafe fn copy<const SPLIT_LOG2: u32>(&self, warp: u32, lane: u32, interleave: bool) {
        let row_chunks = self.steps * 4;
        // Chunks past K (the last CTA's K range may end inside its last block) zero-fill.
        let valid_chunks = self.chunks.saturating_sub(self.c0).min(row_chunks);
        let copied_blocks = if interleave { 0 } else { valid_chunks / 4 };
        let (row_warp, first_piece) = (warp >> SPLIT_LOG2, warp & ((1 << SPLIT_LOG2) - 1));
        // This lane's first piece element: a chunk in part 1, a word in part 2.
        let first = first_piece * 32 + lane;
        // 1. Whole blocks in memory order.
        let copied_chunks = copied_blocks * 4;
        let mut t = row_warp;
        while t < self.m {
            let mut dst = self.xs.byte_add(t * self.stride + first * 16);
            let row = t as usize * self.chunks as usize + self.c0 as usize;
            let mut src = (self.x as *const [u32; 4]).wrapping_add(row + first as usize);
            let mut c = first;
            while c < copied_chunks {
                // SAFETY: chunk c < valid_chunks of row t is inside x; dst is inside the row.
                unsafe { cp_async_ca_shared_global_16(dst, src as *const u8, 16) };
                dst = dst.byte_add(512 << SPLIT_LOG2);
                src = src.wrapping_add(32 << SPLIT_LOG2);
                c += 32 << SPLIT_LOG2;
            }
            t += WARPS >> SPLIT_LOG2;
        }
        // 2. The remaining blocks, scattered into the interleaved order.
        let (row_words, valid_words) = ((row_chunks - copied_chunks) * 4, (valid_chunks - copied_chunks) * 4);
        let lane_dst = first_piece * 128 + (lane >> 4) * 64 + (lane & 3) * 16 + ((lane >> 2) & 3) * 4;
        let mut t = row_warp;
        while t < self.m {
            let mut dst = self.xs.byte_add(t * self.stride + copied_blocks * 64 + lane_dst);
            let row = (t as usize * self.chunks as usize + (self.c0 + copied_chunks) as usize) * 4;
            let mut src = (self.x as *const u32).wrapping_add(row + first as usize);
            let mut g = first;
            while g < row_words {
                // SAFETY: word g < valid_words of the remaining part of row t is inside x;
                // dst is inside the row.
                unsafe { cp_async_ca_shared_global_4(dst, src as *const u8, if g < valid_words { 4 } else { 0 }) };
                dst = dst.byte_add(128 << SPLIT_LOG2);
                src = src.wrapping_add(32 << SPLIT_LOG2);
                g += 32 << SPLIT_LOG2;
            }
            t += WARPS >> SPLIT_LOG2;
        }
    }

    /// Each warp sums the squares of the whole rows of tokens `warp + 8i` (the rows it
    /// copied; at M = 1 warp 0 sums the row all warps copied) into `sum_sq[token]`: one block
    /// per lane at a time, its pieces read in a lane-rotated order so that the 8 lanes of a
    /// shared-memory phase hit 8 bank groups; the rows' butterfly reductions interleaved.
    ///
    /// # Safety
    /// The rows were copied by this warp and its `wait_group` for them has returned (or, at
    /// M = 1, a CTA barrier published the row); `sum_sq` holds `m` f32.
    #[inline(always)]
    pub unsafe fn sum_rows<const MT: usize>(&self, warp: u32, lane: u32, sum_sq: SharedPtr<f32>) {
        let (xs, stride, m, steps) = (self.xs, self.stride, self.m, self.steps);
        // SAFETY: per the caller; every read is inside a staged row.
        unsafe {
            bar_warp_sync();
            let rot = (lane >> 1) & 3;
            let mut ss = [0.0f32; MT];
            for (i, v) in ss.iter_mut().enumerate() {
                let t = warp + i as u32 * WARPS;
                if t < m {
                    let row = xs.byte_add(t * stride);
                    let mut blk = lane;
                    while blk < steps {
                        let p = row.byte_add(blk * 64).cast::<[u32; 4]>();
                        for j in 0..4 {
                            *v += sum_squares_bf16x8(ld_shared_v4_u32(p.add((j + rot) & 3)));
                        }
                        blk += 32;
                    }
                }
            }
            let mut mask = 16;
            while mask > 0 {
                for v in ss.iter_mut() {
                    *v += shfl_sync_bfly_f32(*v, mask);
                }
                mask /= 2;
            }
            for (i, v) in ss.iter().enumerate() {
                let t = warp + i as u32 * WARPS;
                if lane == 0 && t < m {
                    st_shared_f32(sum_sq.add(t), *v);
                }
            }
        }
    }
}
