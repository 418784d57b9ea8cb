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
//! CTA `b` takes rows `b, b + gridDim.x, ...`; thread `t` the 32-element blocks
//! `t, t + 256, ...` of each row (four 16-byte chunks), which it reads whole, folds, and
//! writes back transposed (`interleave::transpose_block`, register renaming). Reads and
//! writes `2 n k` bytes of W once; g is re-read per row (L1/L2 hits).
//!
//! # Launch
//! grid `(min(n, config::fold_gain::MAX_CTAS), 1, 1)`, block `(256, 1, 1)`, no shared memory.

use crate::config::{VEC, fold_gain::THREADS};
use crate::interleave::transpose_block;
use crate::norm::normalize_bf16x8;
use crate::ptx::global::{ld_global_cg_v4_u32, ld_global_nc_v4_u32, st_global_v4_u32};
use crate::ptx::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};
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
    let (wc, gc) = (w as *mut [u32; 4], g as *const [u32; 4]);
    let mut row = block_idx_x();
    while row < n {
        let base = row as usize * chunks as usize;
        let mut c0 = thread_idx_x() * 4;
        while c0 < chunks {
            // bf16((w · 1) · g) = bf16(w · g) for chunk c of the row.
            // SAFETY (callers): row < n and c < chunks, so chunk base + c is inside W and
            // chunk c inside g.
            let fold = |c: u32| unsafe {
                normalize_bf16x8(
                    ld_global_cg_v4_u32(wc.add(base + c as usize)),
                    ld_global_nc_v4_u32(gc.add(c as usize)),
                    1.0,
                )
            };
            if c0 + 4 <= chunks {
                // A whole block: read all four chunks, then write them back transposed.
                let y = transpose_block(core::array::from_fn(|j| fold(c0 + j as u32)));
                for (j, v) in y.iter().enumerate() {
                    // SAFETY: c0 + j < chunks.
                    unsafe { st_global_v4_u32(wc.add(base + c0 as usize + j), *v) };
                }
            } else {
                // A partial last block stays in natural order.
                for c in c0..chunks {
                    // SAFETY: c < chunks.
                    unsafe { st_global_v4_u32(wc.add(base + c as usize), fold(c)) };
                }
            }
            c0 += THREADS * 4;
        }
        row += grid_dim_x();
    }
}
