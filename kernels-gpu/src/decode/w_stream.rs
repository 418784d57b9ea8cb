//! # W streaming: a warp's weight rows, batch by batch, straight into MMA fragments
//!
//! Per K step lane `(g, q)` loads 16 bytes of W row `g` and of row `g + 8` of the warp's 16
//! rows at element `32 s + 8 q` (`ld.global.nc.L1::no_allocate.L2::256B.v4`: read once, not
//! kept in L1). A batch is `UNROLL` steps; the body keeps two batches in registers (double
//! buffer). Steps past the warp's part or past K and rows past N load zeros without
//! touching memory. Before the dependency wait the body also asks L2 for the warp's next
//! batch ([`WStream::prefetch_l2`]), so DRAM keeps streaming while the warp waits for the
//! previous kernel and stages x.

use crate::config::VEC;
use crate::config::decode::{K_STEP, ROWS_PER_WARP, UNROLL};
use crate::ptx::cp_async::cp_async_bulk_prefetch_l2_global;
use crate::ptx::global::ld_global_nc_stream_v4_u32;

/// The 8 W registers of one K step: 16 bytes of row `g`, then 16 bytes of row `g + 8`.
pub type WStep = [u32; 8];

/// One lane's view of its two W rows, in 16-byte chunks from the CTA's K origin.
#[derive(Clone, Copy)]
pub struct WStream {
    w: *const u16,
    wc: *const [u32; 4],
    /// W rows N and K elements.
    n: u32,
    k: u32,
    /// The warp's first row and the CTA's first K element.
    row0: u32,
    k0: u32,
    /// Steps at and past `end` (of the CTA's K range) are not the warp's.
    end: u32,
    lane: u32,
    /// Chunks per row of W, the CTA's first chunk, the lane's chunk within a step.
    chunks: u32,
    c0: u32,
    qq: u32,
    /// The lane's two rows and their first chunk's index in W.
    r_lo: u32,
    r_hi: u32,
    lo_base: usize,
    hi_base: usize,
}

impl WStream {
    #[inline(always)]
    pub fn new(w: *const u16, n: u32, k: u32, row0: u32, k0: u32, end: u32, lane: u32) -> Self {
        let (gq, qq) = (lane / 4, lane % 4);
        let chunks = k / VEC;
        let c0 = k0 / VEC;
        let (r_lo, r_hi) = (row0 + gq, row0 + gq + 8);
        let wc = w as *const [u32; 4];
        let lo_base = r_lo as usize * chunks as usize + c0 as usize + qq as usize;
        let hi_base = r_hi as usize * chunks as usize + c0 as usize + qq as usize;
        WStream { w, wc, n, k, row0, k0, end, lane, chunks, c0, qq, r_lo, r_hi, lo_base, hi_base }
    }

    /// A loader of batches: called with `s0`, the steps `s0 .. s0 + UNROLL` of the CTA's K
    /// range. (A closure over the lane's values: as a method it compiled to another load
    /// schedule, see `decode`.)
    #[inline(always)]
    pub fn batches(&self) -> impl Fn(u32) -> [WStep; UNROLL] {
        let WStream { wc, n, end, chunks, c0, qq, r_lo, r_hi, lo_base, hi_base, .. } = *self;
        move |s0: u32| {
            let mut batch = [[0u32; 8]; UNROLL];
            for (u, step) in batch.iter_mut().enumerate() {
                let s = s0 + u as u32;
                let in_k = s < end && c0 + s * 4 + qq < chunks;
                let off = s as usize * 4;
                // SAFETY: a load executes only when its row is < N and its chunk is < K/8,
                // i.e. inside W; otherwise the address is never dereferenced.
                let (lo, hi) = unsafe {
                    (
                        ld_global_nc_stream_v4_u32(wc.wrapping_add(lo_base + off), in_k && r_lo < n),
                        ld_global_nc_stream_v4_u32(wc.wrapping_add(hi_base + off), in_k && r_hi < n),
                    )
                };
                *step = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
            }
            batch
        }
    }

    /// Asks L2 for the batch of steps from `begin` (one row range per lane 0-15: row g of
    /// the warp's 16; rows past N and steps past the warp's part are skipped).
    #[inline(always)]
    pub fn prefetch_l2(&self, begin: u32) {
        let pf_end = (begin + UNROLL as u32).min(self.end);
        let pf_row = self.row0 + self.lane;
        if self.lane < ROWS_PER_WARP && pf_row < self.n && begin < pf_end {
            let e0 = self.k0 + begin * K_STEP;
            let e1 = (self.k0 + pf_end * K_STEP).min(self.k);
            if e0 < e1 {
                // SAFETY: elements [e0, e1) of row pf_row < N lie inside W (e1 <= K); K % 8 == 0
                // and k0 % 32 == 0 keep both ends 16-byte aligned.
                unsafe {
                    cp_async_bulk_prefetch_l2_global(
                        self.w.wrapping_add(pf_row as usize * self.k as usize + e0 as usize) as *const u8,
                        (e1 - e0) * 2,
                    )
                };
            }
        }
    }
}
