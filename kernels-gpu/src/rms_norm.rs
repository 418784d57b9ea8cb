//! # RMSNorm
//!
//! `y[r, :] = bf16( x[r, :] * rsqrt(mean_k(x[r, k]^2) + eps) * g )`, bf16 in and out,
//! f32 arithmetic. The first half of the unfused baseline, and the reference kernel of the
//! pipeline. `rms_norm_interleaved` writes y in the k-interleaved order
//! (`config::interleave`), the order of the fused op's folded weight and the one the decode
//! GEMM wants opposite a natural-order weight.
//!
//! # Parameters
//! `x [rows, k]`, `g [k]`, `y [rows, k]`: row-major bf16, 16-byte aligned; `k % 8 == 0`.
//!
//! # Thread mapping
//! One CTA of 256 threads per row. Thread `t` owns the 16-byte chunks `t, t+256, ...` of
//! the row. Pass 1 sums their squares (warp shuffle, then the 8 warp totals through shared
//! memory); pass 2 re-reads them (L1 hits), normalizes and stores 16 bytes at a time. To
//! interleave, the four lanes that hold a whole block's chunks transpose it by shuffles.
//!
//! # Traffic
//! Reads `2 rows k` bytes of x once from DRAM (the re-read hits L1) and `2k` of g; writes
//! `2 rows k`. No tensor-core work: it is memory-bound.
//!
//! # Launch
//! grid `(rows, 1, 1)`, block `(256, 1, 1)`, dynamic shared memory
//! `config::rms_norm::SMEM_BYTES`; optionally with programmatic stream serialization (the
//! kernel waits for the previous grid before reading x).

use crate::config::{VEC, rms_norm::THREADS};
use crate::interleave::transpose_block_quad;
use crate::norm::{inv_rms, normalize_bf16x8, sum_squares_bf16x8};
use crate::ptx::global::{ld_global_nc_v4_u32, st_global_v4_u32};
use crate::ptx::shared::{dynamic_shared_base, ld_shared_f32, st_shared_f32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{block_dim_x, block_idx_x, lane_id, sync_threads, thread_idx_x, warp_id};
use crate::ptx::trap;
use crate::ptx::warp::warp_sum_f32;

const WARPS: u32 = THREADS / 32;

/// See the module documentation: y in natural order.
///
/// # Safety
/// The pointers satisfy the layout above, `y` does not overlap `x` or `g`, and the launch
/// has the shape above (a wrong block size traps).
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn rms_norm(x: *const u16, g: *const u16, y: *mut u16, rows: u32, k: u32, eps: f32) {
    // SAFETY: forwarded to the caller.
    unsafe { rms_norm_rows::<false>(x, g, y, rows, k, eps) }
}

/// `rms_norm` with y written in the k-interleaved order.
///
/// # Safety
/// As `rms_norm`.
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn rms_norm_interleaved(
    x: *const u16,
    g: *const u16,
    y: *mut u16,
    rows: u32,
    k: u32,
    eps: f32,
) {
    // SAFETY: forwarded to the caller.
    unsafe { rms_norm_rows::<true>(x, g, y, rows, k, eps) }
}

#[inline(always)]
unsafe fn rms_norm_rows<const INTERLEAVE: bool>(
    x: *const u16,
    g: *const u16,
    y: *mut u16,
    rows: u32,
    k: u32,
    eps: f32,
) {
    if block_dim_x() != THREADS || !k.is_multiple_of(VEC) {
        trap();
    }
    // Under programmatic dependent launch, x may still be being written by the previous
    // kernel: wait for it before reading anything.
    griddepcontrol_launch_dependents();
    griddepcontrol_wait();
    let row = block_idx_x();
    if row >= rows {
        return;
    }
    let tid = thread_idx_x();
    let chunks = k / VEC;
    let row_offset = row as usize * (chunks as usize);
    // SAFETY: the launch contract above: row < rows, so the row is inside x and y.
    let (xr, yr) = unsafe { ((x as *const [u32; 4]).add(row_offset), (y as *mut [u32; 4]).add(row_offset)) };
    let gr = g as *const [u32; 4];

    // Pass 1: sum of squares.
    let mut acc = 0.0f32;
    let mut c = tid;
    while c < chunks {
        // SAFETY: c < chunks.
        acc += sum_squares_bf16x8(unsafe { ld_global_nc_v4_u32(xr.add(c as usize)) });
        c += THREADS;
    }

    // Block reduction: warp totals -> shared memory -> warp 0 -> broadcast slot.
    let partial = dynamic_shared_base().cast::<f32>();
    let (warp, lane) = (warp_id(), lane_id());
    let warp_total = warp_sum_f32(acc);
    // SAFETY: the launch provides (WARPS + 1) f32 of shared memory; every thread reaches
    // both barriers.
    let inv = unsafe {
        if lane == 0 {
            st_shared_f32(partial.add(warp), warp_total);
        }
        sync_threads();
        if warp == 0 {
            let v = if lane < WARPS { ld_shared_f32(partial.add(lane)) } else { 0.0 };
            let total = warp_sum_f32(v);
            if lane == 0 {
                st_shared_f32(partial.add(WARPS), inv_rms(total, k, eps));
            }
        }
        sync_threads();
        ld_shared_f32(partial.add(WARPS))
    };

    // Pass 2: normalize and store.
    // SAFETY: the row is inside x and y (above); g holds `chunks` chunks.
    unsafe {
        if INTERLEAVE {
            store_row_interleaved(xr, gr, yr, chunks, inv, tid);
        } else {
            store_row(xr, gr, yr, chunks, inv, tid);
        }
    }
}

/// Pass 2 in natural order: thread `tid` normalizes and stores chunks `tid, tid + 256, ...`.
///
/// # Safety
/// `xr`, `gr`, `yr` point at `chunks` readable (writable for `yr`) 16-byte chunks.
#[inline(always)]
unsafe fn store_row(xr: *const [u32; 4], gr: *const [u32; 4], yr: *mut [u32; 4], chunks: u32, inv: f32, tid: u32) {
    let mut c = tid;
    while c < chunks {
        // SAFETY: c < chunks.
        unsafe {
            let xv = ld_global_nc_v4_u32(xr.add(c as usize));
            let gv = ld_global_nc_v4_u32(gr.add(c as usize));
            st_global_v4_u32(yr.add(c as usize), normalize_bf16x8(xv, gv, inv));
        }
        c += THREADS;
    }
}

/// Pass 2 in the k-interleaved order: thread `tid` normalizes chunks `tid, tid + 256, ...`
/// as in [`store_row`] (16-byte loads, L1 hits after pass 1; 16-byte stores), and the four
/// lanes of a quad, which hold the four chunks of one 32-element block, transpose it
/// between them (`transpose_block_quad`): chunk `4b + c` holds word `c` of natural chunks
/// `4b .. 4b + 4`. The loop over whole blocks runs a warp-uniform number of times so that
/// every lane takes part in the shuffles. A partial last block stays in natural order.
/// H100, `nanofuse rmsnorm` (docs/RESULTS.md): 0.1-0.9 µs faster than gathering each
/// output chunk from four 4-byte words of x and g (four times the load instructions, each
/// spanning four 128-byte lines) at 128 and 2048 rows of 1024-8192, level at one row; whole
/// blocks per thread (16-byte stores at a 64-byte lane stride) were slower than both.
///
/// # Safety
/// As [`store_row`].
#[inline(always)]
unsafe fn store_row_interleaved(
    xr: *const [u32; 4],
    gr: *const [u32; 4],
    yr: *mut [u32; 4],
    chunks: u32,
    inv: f32,
    tid: u32,
) {
    let whole = chunks & !3;
    // The warp's first chunk; its lanes take the next 32 (whole quads: 32 and 256 are
    // multiples of 4, and so is `whole`).
    let mut base = tid & !31;
    while base < whole {
        let c = base + (tid & 31);
        let active = c < whole;
        // SAFETY: read and written only where c < whole <= chunks.
        unsafe {
            let v = if active {
                normalize_bf16x8(ld_global_nc_v4_u32(xr.add(c as usize)), ld_global_nc_v4_u32(gr.add(c as usize)), inv)
            } else {
                [0; 4]
            };
            let v = transpose_block_quad(v, tid);
            if active {
                st_global_v4_u32(yr.add(c as usize), v);
            }
        }
        base += THREADS;
    }
    // The partial last block, natural.
    // SAFETY: chunks whole .. chunks are inside the row.
    unsafe {
        let w = whole as usize;
        store_row(xr.add(w), gr.add(w), yr.add(w), chunks - whole, inv, tid);
    }
}
