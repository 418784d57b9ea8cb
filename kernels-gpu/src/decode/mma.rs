//! # The MMA steps of a warp whose whole K part is in registers
//!
//! The `_early` entries whose warps hold all their K steps in their two W batches run no
//! main loop: the MMAs over both batches are straight-line code, per K step a token tile's
//! `ldmatrix.x4` and two `mma.m16n8k16` into two accumulator chains (a dependent `mma.sync`
//! waits for the one before it, so two chains keep the tensor core busy). With two token
//! tiles the tiles' steps are interleaved step by step (four chains). The per-step loop of
//! the other entries is in `decode::run`.

use crate::config::decode::UNROLL;
use crate::decode::w_stream::WStep;
use crate::ptx::mma::{ldmatrix_x4, mma_m16n8k16_bf16_f32};
use crate::ptx::shared::SharedPtr;

/// A warp's x operand: the `ldmatrix` row address of each token tile (step 0), and the
/// steps it owns.
pub struct InRegs<const MT: usize> {
    pub tile_base: [u32; MT],
    pub tiles_used: u32,
    /// Steps at and past `end` are not the warp's.
    pub end: u32,
}

impl<const MT: usize> InRegs<MT> {
    /// The accumulators over batches `cur` (steps from `base`) and `next` (from
    /// `base + batch_stride`).
    #[inline(always)]
    pub fn run(&self, cur: &[WStep; UNROLL], next: &[WStep; UNROLL], base: u32, batch_stride: u32) -> [[f32; 4]; MT] {
        let (tile_base, tiles_used, end) = (self.tile_base, self.tiles_used, self.end);
        let mut acc = [[0.0f32; 4]; MT];
        // One K step of token tile t: its `ldmatrix`, then its two MMAs into two accumulator
        // chains (a macro: as a closure it compiled to another schedule of the one-tile
        // entries).
        macro_rules! tile_step {
            ($c0:expr, $c1:expr, $wv:expr, $step:expr, $t:expr) => {{
                // SAFETY: the address is inside a staged token row.
                let b = unsafe { ldmatrix_x4(SharedPtr::from_addr(tile_base[$t] + $step * 64)) };
                $c0 = mma_m16n8k16_bf16_f32([$wv[0], $wv[4], $wv[1], $wv[5]], [b[0], b[1]], $c0);
                $c1 = mma_m16n8k16_bf16_f32([$wv[2], $wv[6], $wv[3], $wv[7]], [b[2], b[3]], $c1);
            }};
        }
        // A batch's steps for token tile t.
        let tile_steps = |acc: [[f32; 4]; 2], batch: &[WStep; UNROLL], s0: u32, t: usize| {
            let [mut acc0, mut acc1] = acc;
            for (u, wv) in batch.iter().enumerate() {
                let step = s0 + u as u32;
                if step < end {
                    tile_step!(acc0, acc1, wv, step, t);
                }
            }
            [acc0, acc1]
        };
        // A batch's steps for every used token tile, interleaved step by step.
        let all_steps = |mut chains: [[[f32; 4]; 2]; MT], batch: &[WStep; UNROLL], s0: u32| {
            for (u, wv) in batch.iter().enumerate() {
                let step = s0 + u as u32;
                if step < end {
                    for (t, [c0, c1]) in chains.iter_mut().enumerate() {
                        // Tile 0 is always used (m >= 1).
                        if t == 0 || (t as u32) < tiles_used {
                            tile_step!(*c0, *c1, wv, step, t);
                        }
                    }
                }
            }
            chains
        };
        if MT == 1 {
            for (t, a) in acc.iter_mut().enumerate() {
                if (t as u32) < tiles_used {
                    let chains = tile_steps([*a, [0.0; 4]], cur, base, t);
                    let [c0, c1] = tile_steps(chains, next, base + batch_stride, t);
                    *a = core::array::from_fn(|i| c0[i] + c1[i]);
                }
            }
        } else {
            let chains = all_steps([[[0.0; 4]; 2]; MT], cur, base);
            let chains = all_steps(chains, next, base + batch_stride);
            for (a, [c0, c1]) in acc.iter_mut().zip(chains.iter()) {
                *a = core::array::from_fn(|i| c0[i] + c1[i]);
            }
        }
        acc
    }
}
