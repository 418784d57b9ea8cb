//! # W streaming: a warp's weight rows, batch by batch, straight into MMA fragments
//!
//! Per K step lane `(g, q)` loads 16 bytes of W row `g` and of row `g + 8` of the warp's 16
//! rows at element `32 s + 8 q` (`ld.global.nc.L1::no_allocate.L2::256B.v4`: read once, not
//! kept in L1). A batch is `UNROLL` steps; the body keeps two batches in registers (double
//! buffer). Steps past the warp's part or past K and rows past N load zeros without
//! touching memory. Before the dependency wait the body also asks L2 for the warp's next
//! batch ([`WPrefetch::prefetch_l2`]), so DRAM keeps streaming while the warp waits for the
//! previous kernel and stages x.

use crate::config::decode::{K_STEP, ROWS_PER_WARP, UNROLL};
use crate::ptx::cp_async::cp_async_bulk_prefetch_l2_global;

/// The 8 W registers of one K step: 16 bytes of row `g`, then 16 bytes of row `g + 8`.
pub type WStep = [u32; 8];

/// Binds `$load` in the caller's scope to a loader of this lane's W batches: `$load(s0)`
/// returns the steps `s0 .. s0 + UNROLL` of the CTA's K range (rows past N and steps at or
/// past `$end` load zeros without touching memory). A macro rather than a method, so that
/// the loader is a closure over the caller's locals: as a method or a returned closure it
/// compiled to another load schedule in the `_early` prologues (SASS), which the op's speed
/// depends on (see `decode`, Prologue).
macro_rules! w_batch_loader {
    ($load:ident = $w:expr, n = $n:expr, k = $k:expr, row0 = $row0:expr, k0 = $k0:expr, end = $end:expr, lane = $lane:expr) => {
        let (w_n, w_end) = ($n, $end);
        let w_qq = $lane % 4;
        let w_chunks = $k / $crate::config::VEC;
        let w_c0 = $k0 / $crate::config::VEC;
        let (r_lo, r_hi) = ($row0 + $lane / 4, $row0 + $lane / 4 + 8);
        let wc = $w as *const [u32; 4];
        let lo_base = r_lo as usize * w_chunks as usize + w_c0 as usize + w_qq as usize;
        let hi_base = r_hi as usize * w_chunks as usize + w_c0 as usize + w_qq as usize;
        let $load = |s0: u32| -> [$crate::decode::w_stream::WStep; $crate::config::decode::UNROLL] {
            let mut batch = [[0u32; 8]; $crate::config::decode::UNROLL];
            for (u, step) in batch.iter_mut().enumerate() {
                let s = s0 + u as u32;
                let in_k = s < w_end && w_c0 + s * 4 + w_qq < w_chunks;
                let off = s as usize * 4;
                // SAFETY: a load executes only when its row is < N and its chunk is < K/8,
                // i.e. inside W; otherwise the address is never dereferenced.
                let (lo, hi) = unsafe {
                    (
                        $crate::ptx::global::ld_global_nc_stream_v4_u32(
                            wc.wrapping_add(lo_base + off),
                            in_k && r_lo < w_n,
                        ),
                        $crate::ptx::global::ld_global_nc_stream_v4_u32(
                            wc.wrapping_add(hi_base + off),
                            in_k && r_hi < w_n,
                        ),
                    )
                };
                *step = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
            }
            batch
        };
    };
}
pub(crate) use w_batch_loader;

/// The L2 prefetch of a warp's next W batch.
#[derive(Clone, Copy)]
pub struct WPrefetch {
    pub w: *const u16,
    /// W rows N and K elements.
    pub n: u32,
    pub k: u32,
    /// The warp's first row and the CTA's first K element.
    pub row0: u32,
    pub k0: u32,
    /// Steps at and past `end` (of the CTA's K range) are not the warp's.
    pub end: u32,
    pub lane: u32,
}

impl WPrefetch {
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
