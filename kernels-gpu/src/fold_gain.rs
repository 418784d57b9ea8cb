//! # Folding RMSNorm's gain into the weight, stored k-interleaved
//!
//! `W[n, k] <- bf16(W[n, k] · g[k])`, in place, written in the k-interleaved order
//! (`config::interleave`: within each whole 32-element block of a row the 4 x 4 matrix of
//! bf16 pairs is transposed). Run once when a fused op is built: then
//! `rmsnorm(x) · Wᵀ = inv_rms · x · (W · diag(g))ᵀ`, and the decode kernel streams the
//! folded weight against raw x with no per-call multiplication by g, staging x with 16-byte
//! copies in its natural order (`qkv_decode`, Tiling).
//!
//! # Parameters
//! `w [n, k]` and `g [k]`, row-major bf16, 16-byte aligned; `k % 8 == 0`.
//!
//! # Arithmetic
//! The product of two bf16 values is exact in f32 (8-bit significands), so each element is
//! rounded once, to nearest-even: the same as the host's `bf16::from_f32(w * g)`.
//!
//! # Thread mapping and traffic
//! CTA `b` takes rows `b, b + gridDim.x, ...`; thread `t` the 16-byte chunks
//! `t, t + 256, ...` of each row, so the four lanes of a quad hold one 32-element block and
//! transpose it with shuffles (`interleave::transpose_quad`) before writing it back. Reads
//! and writes `2 n k` bytes of W once; g is re-read per row (L1/L2 hits).
//!
//! # Launch
//! grid `(min(n, config::fold_gain::MAX_CTAS), 1, 1)`, block `(256, 1, 1)`, no shared memory.

use crate::config::{VEC, fold_gain::THREADS};
use crate::interleave::transpose_quad;
use crate::norm::normalize_bf16x8;
use crate::ptx::global::{ld_global_cg_v4_u32, ld_global_nc_v4_u32, st_global_v4_u32};
use crate::ptx::thread::{block_dim_x, block_idx_x, grid_dim_x, lane_id, thread_idx_x};
use crate::ptx::trap;

/// See the module documentation.
///
/// # Safety
/// The pointers satisfy the layout above; `g` does not overlap `w`; the block has 256
/// threads (else it traps).
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn fold_gain(w: *mut u16, g: *const u16, n: u32, k: u32) {
    if block_dim_x() != THREADS || !k.is_multiple_of(VEC) {
        trap();
    }
    let chunks = k / VEC;
    let lane = lane_id();
    let (wc, gc) = (w as *mut [u32; 4], g as *const [u32; 4]);
    let mut row = block_idx_x();
    while row < n {
        // The loop runs while any lane of the warp has a chunk (the quad transpose needs all
        // 32 lanes); THREADS is a multiple of 32, so `c - lane` is the warp's first chunk.
        let mut c = thread_idx_x();
        while c - lane < chunks {
            let i = row as usize * chunks as usize + c as usize;
            let inside = c < chunks;
            // SAFETY: row < n and c < k / 8: chunk i is inside W and chunk c inside g.
            let v = if inside {
                // bf16((w · 1) · g) = bf16(w · g).
                unsafe {
                    normalize_bf16x8(ld_global_cg_v4_u32(wc.add(i)), ld_global_nc_v4_u32(gc.add(c as usize)), 1.0)
                }
            } else {
                [0; 4]
            };
            // Every lane has loaded its chunk before any stores: the stores wait for the
            // shuffles. A partial last block stays in natural order.
            let t = transpose_quad(v, lane);
            if inside {
                let whole_block = (c | 3) < chunks;
                // SAFETY: as above.
                unsafe { st_global_v4_u32(wc.add(i), if whole_block { t } else { v }) };
            }
            c += THREADS;
        }
        row += grid_dim_x();
    }
}
