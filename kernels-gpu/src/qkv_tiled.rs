//! # Fused RMSNorm + QKV projection, tiled path (M > 16)
//!
//! `q, k, v = split(rmsnorm(x) · Wᵀ)`; `gemm_tiled_*` is the same kernel without the norm
//! (`y = x · Wᵀ`, x already normalized). Parameters and layouts as in
//! [`crate::qkv_decode`]: `x [M, K]`, `g [K]`, `W [N, K]`, q/k/v or y row-major bf16,
//! 16-byte aligned, `K % 8 == 0`, f32 accumulation.
//!
//! # Formulation
//! With M tokens per CTA tile the whole normalized row cannot sit in shared memory, and a
//! separate pass over x to find `inv_rms` first would re-read `2 BM K` bytes per CTA. So
//! the norm is split around the GEMM, exactly up to rounding:
//! `out[m, n] = inv_rms[m] · Σ_k bf16(x[m, k] · g[k]) · W[n, k]`.
//! Each staged x tile is rewritten in shared memory as `bf16(x · g)` (rounded once) while
//! the same pass accumulates `Σ x²` per row in f32; the epilogue applies
//! `inv_rms = rsqrt(Σ x² / K + eps)`. The normalized activations never reach global memory.
//!
//! # k order
//! The fused kernel takes W in the k-interleaved order of the fused op's folded weight
//! (`config::interleave`): the rewrite pass also stores each whole 32-element block of the x
//! tile in that order, a transpose of the block's 4 x 4 words that costs nothing but
//! register renaming because one thread rewrites a whole block. The plain kernel takes x
//! and W in the same order, whichever it is.

//! # Tiling (`C: TileConfig`, see `config`)
//! * CTA tile `BM x BN` (tokens x W rows), K slices of `BK = 64`; `WARPS_M x WARPS_N` warps,
//!   each owning `MI x NI` MMA tiles of `m16n8k16` (A = activations, B = W rows).
//! * `STAGES`-deep `cp.async.cg` pipeline: per stage the x tile, the W tile and BK entries
//!   of g, 16-byte chunks, zero-filled past M, N and K. Tile rows are 128 bytes, stored with
//!   the XOR swizzle `chunk ^ (row % 8)` so both the `cp.async` writes and the 8-row
//!   `ldmatrix.x4` reads are free of bank conflicts.
//! * Per stage: wait for its copies, barrier, issue the copies of the stage `STAGES - 1`
//!   ahead, (fused: rewrite the x tile as `bf16(x · g)`, barrier), then for each k16:
//!   `ldmatrix.x4` per m16 tile of A and per pair of n8 tiles of B, and `MI x NI` MMAs.
//!
//! # Thread mapping for copies and the norm
//! Thread `t` copies chunk column `t % 8` of tile rows `t / 8 + i · THREADS / 8`. In the
//! fused kernel's rewrite pass thread `t` owns the 32-element blocks `t, t + THREADS, ...`
//! of the x tile (block `b`: row `b / 2`, half `b % 2`; one block per thread in both tile
//! shapes): it reads the block's four chunks (conflict-free: the 32 lanes' chunks spread
//! over the eight swizzled positions, four each), keeps their sums of squares and writes
//! them back; the 2 threads of a row add their sums with one shuffle at the end.

//! # Traffic and work (per call)
//! `2 M N K` flops. Reads W `ceil(M / BM)` times and x `ceil(N / BN)` times (mostly L2
//! hits: CTAs with the same W tile are adjacent in launch order), writes `2 M N` bytes.
//!
//! # Launch
//! block `(C::THREADS, 1, 1)`; grid `(ceil(M / BM), ceil(N / BN))`; dynamic shared memory
//! `C::SMEM_BYTES` (above 48 KiB: the host raises the kernel's limit); optionally with
//! programmatic stream serialization (the kernel waits for the previous grid first).

use crate::config::{Large, Small, TileConfig, VEC};
use crate::interleave::transpose_block;
use crate::norm::{inv_rms, normalize_bf16x8, sum_squares_bf16x8};
use crate::ptx::cp_async::{cp_async_cg_shared_global_16, cp_async_commit_group, cp_async_wait_group};
use crate::ptx::mma::{ldmatrix_x4, mma_m16n8k16_bf16_f32};
use crate::ptx::shared::{
    SharedPtr, dynamic_shared_base, ld_shared_f32, ld_shared_v4_u32, st_shared_f32, st_shared_v4_u32,
};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{block_dim_x, block_idx_x, block_idx_y, lane_id, sync_threads, thread_idx_x, warp_id};
use crate::ptx::trap;
use crate::ptx::warp::shfl_sync_bfly_f32;
use crate::qkv_out::QkvOut;

/// Tile rows are `BK = 64` bf16 = 128 bytes.
const ROW_BYTES: u32 = 128;
/// Most x-tile chunks one thread copies per stage (checked per config below).
const MAX_SLOTS: usize = 4;

macro_rules! tiled_entries {
    ($cfg:ty, $fused:ident, $plain:ident) => {
        /// Fused RMSNorm + QKV projection, tiled. See the module documentation.
        ///
        /// # Safety
        /// Pointers and sizes as in the module documentation; outputs do not overlap
        /// inputs; the launch has the documented shape (a wrong block size traps).
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $fused(
            x: *const u16,
            g: *const u16,
            w: *const u16,
            q: *mut u16,
            k_out: *mut u16,
            v: *mut u16,
            m: u32,
            k: u32,
            nq: u32,
            nkv: u32,
            eps: f32,
        ) {
            let out = QkvOut { q, k: k_out, v, nq, nkv };
            // SAFETY: forwarded to the caller.
            unsafe { tiled::<$cfg, { <$cfg>::MI as usize }, { <$cfg>::NI as usize }, true>(x, g, w, out, m, k, eps) }
        }

        /// `y [M, N] = x · Wᵀ`, tiled, x already normalized: the GEMM core of the fused
        /// kernel without the norm.
        ///
        /// # Safety
        /// As the fused kernel, with `y` in place of q/k/v.
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $plain(x: *const u16, w: *const u16, y: *mut u16, m: u32, k: u32, n: u32) {
            let null = core::ptr::null_mut();
            let out = QkvOut { q: y, k: null, v: null, nq: n, nkv: 0 };
            // SAFETY: forwarded to the caller.
            unsafe {
                tiled::<$cfg, { <$cfg>::MI as usize }, { <$cfg>::NI as usize }, false>(
                    x,
                    core::ptr::null(),
                    w,
                    out,
                    m,
                    k,
                    0.0,
                )
            }
        }
    };
}

tiled_entries!(Large, fused_rmsnorm_qkv_tiled_large, gemm_tiled_large);
tiled_entries!(Small, fused_rmsnorm_qkv_tiled_small, gemm_tiled_small);

/// Byte offset of logical 16-byte chunk `c` of tile row `row` (XOR swizzle).
#[inline(always)]
fn swizzle(row: u32, c: u32) -> u32 {
    row * ROW_BYTES + ((c ^ (row % 8)) * 16)
}

/// `cp.async.wait_group (STAGES - 2)`: the stage about to be used has landed.
#[inline(always)]
fn wait_for_oldest_stage<C: TileConfig>() {
    match C::STAGES {
        3 => cp_async_wait_group::<1>(),
        4 => cp_async_wait_group::<2>(),
        _ => cp_async_wait_group::<0>(), // correct for any depth, merely less overlap
    }
}

#[inline(always)]
unsafe fn tiled<C: TileConfig, const MI: usize, const NI: usize, const FUSE: bool>(
    x: *const u16,
    g: *const u16,
    w: *const u16,
    out: QkvOut,
    m: u32,
    k: u32,
    eps: f32,
) {
    const {
        assert!(MI == C::MI as usize && NI == C::NI as usize && NI.is_multiple_of(2));
        assert!((C::BM * 8 / C::THREADS) as usize <= MAX_SLOTS && C::BK == 64);
        assert!((C::BM * 2).is_multiple_of(C::THREADS) && (C::BM * 2 / C::THREADS) as usize <= MAX_SLOTS);
    }
    if block_dim_x() != C::THREADS || !k.is_multiple_of(VEC) {
        trap();
    }
    // Under programmatic dependent launch: let the next kernel launch, and wait for the
    // previous one before reading x or writing outputs.
    griddepcontrol_launch_dependents();
    griddepcontrol_wait();
    let n = out.n();
    let (tid, warp, lane) = (thread_idx_x(), warp_id(), lane_id());
    let (m0, n0) = (block_idx_x() * C::BM, block_idx_y() * C::BN);
    let ktiles = k.div_ceil(C::BK);
    let row_chunks = k / VEC;

    // 1. Shared-memory carve-up.
    let smem = dynamic_shared_base();
    let a_tile = |s: u32| smem.byte_add(s * C::STAGE_BYTES);
    let b_tile = |s: u32| a_tile(s).byte_add(C::BM * ROW_BYTES);
    let g_tile = |s: u32| b_tile(s).byte_add(C::BN * ROW_BYTES);
    let inv_rows = smem.byte_add(C::STAGES * C::STAGE_BYTES).cast::<f32>();

    // 2. Copies of one stage: this thread's chunk column, rows r0 + i * ROW_STEP.
    let (chunk, r0) = (tid % 8, tid / 8);
    let row_step = C::THREADS / 8;
    let (a_slots, b_slots) = (C::BM / row_step, C::BN / row_step);
    // The rewrite pass (fused): thread t owns the 32-element blocks t, t + THREADS, ... of
    // the x tile (block b: row b / 2, half b % 2).
    let norm_slots = C::BM * (C::BK / 32) / C::THREADS;
    let (xc, wc, gc) = (x as *const [u32; 4], w as *const [u32; 4], g as *const [u32; 4]);
    let load_stage = |s: u32, kt: u32| {
        let kc = kt * 8 + chunk;
        let k_ok = kc < row_chunks;
        // SAFETY: a copy reads global memory only when its row and chunk are inside the
        // matrix (src_bytes = 16); otherwise it zero-fills and reads nothing.
        unsafe {
            for i in 0..a_slots {
                let r = r0 + i * row_step;
                let ok = k_ok && m0 + r < m;
                let src = xc.wrapping_add((m0 + r) as usize * row_chunks as usize + kc as usize);
                let dst = a_tile(s).byte_add(swizzle(r, chunk));
                cp_async_cg_shared_global_16(dst, src as *const u8, if ok { 16 } else { 0 });
            }
            for i in 0..b_slots {
                let r = r0 + i * row_step;
                let ok = k_ok && n0 + r < n;
                let src = wc.wrapping_add((n0 + r) as usize * row_chunks as usize + kc as usize);
                let dst = b_tile(s).byte_add(swizzle(r, chunk));
                cp_async_cg_shared_global_16(dst, src as *const u8, if ok { 16 } else { 0 });
            }
            if FUSE && tid < 8 {
                let kc = kt * 8 + tid;
                let src = gc.wrapping_add(kc as usize);
                let bytes = if kc < row_chunks { 16 } else { 0 };
                cp_async_cg_shared_global_16(g_tile(s).byte_add(tid * 16), src as *const u8, bytes);
            }
        }
    };

    // 3. Pipeline prologue: the first STAGES - 1 stages in flight.
    for s in 0..C::STAGES - 1 {
        if s < ktiles {
            load_stage(s, s);
        }
        cp_async_commit_group();
    }

    // 4. Main loop over K slices.
    let (wm0, wn0) = ((warp / C::WARPS_N) * (C::BM / C::WARPS_M), (warp % C::WARPS_N) * (C::BN / C::WARPS_N));
    let mut acc = [[[0.0f32; 4]; NI]; MI];
    let mut sum_sq = [0.0f32; MAX_SLOTS];
    for kt in 0..ktiles {
        wait_for_oldest_stage::<C>();
        // SAFETY: uniform barrier; see the module documentation for the stage protocol.
        unsafe { sync_threads() };
        let ahead = kt + C::STAGES - 1;
        if ahead < ktiles {
            load_stage(ahead % C::STAGES, ahead);
        }
        cp_async_commit_group();
        let s = kt % C::STAGES;

        if FUSE {
            // SAFETY: this thread's blocks of the landed stage; uniform barrier.
            unsafe {
                for (i, ss) in sum_sq.iter_mut().enumerate() {
                    if (i as u32) < norm_slots {
                        let b = tid + i as u32 * C::THREADS;
                        let (r, c0) = (b / 2, (b % 2) * 4);
                        let chunks = core::array::from_fn::<_, 4, _>(|j| a_tile(s).byte_add(swizzle(r, c0 + j as u32)));
                        let mut y = [[0u32; 4]; 4];
                        for (j, yj) in y.iter_mut().enumerate() {
                            let xv = ld_shared_v4_u32(chunks[j].cast());
                            let gv = ld_shared_v4_u32(g_tile(s).byte_add((c0 + j as u32) * 16).cast());
                            *ss += sum_squares_bf16x8(xv);
                            *yj = normalize_bf16x8(xv, gv, 1.0);
                        }
                        // A whole block goes back in the folded weight's interleaved order
                        // (chunk j takes word j of each chunk), a partial last block as it is.
                        let whole_block = kt * C::BK + (c0 / 4 + 1) * 32 <= k;
                        let y = if whole_block { transpose_block(y) } else { y };
                        // Index loops: an array's by-value iterator lands in local memory.
                        for j in 0..4 {
                            st_shared_v4_u32(chunks[j].cast(), y[j]);
                        }
                    }
                }
                sync_threads();
            }
        }

        for kk in 0..C::BK / 16 {
            let mut a = [[0u32; 4]; MI];
            for (mi, a_mi) in a.iter_mut().enumerate() {
                let row = wm0 + mi as u32 * 16 + lane % 16;
                // SAFETY: inside the landed A tile.
                *a_mi = unsafe { ldmatrix_x4(a_tile(s).byte_add(swizzle(row, kk * 2 + lane / 16))) };
            }
            let mut b = [[0u32; 2]; NI];
            for nj in 0..NI / 2 {
                let row = wn0 + nj as u32 * 16 + (lane / 16) * 8 + lane % 8;
                let p: SharedPtr<u8> = b_tile(s).byte_add(swizzle(row, kk * 2 + (lane / 8) % 2));
                // SAFETY: inside the landed B tile.
                let t = unsafe { ldmatrix_x4(p) };
                b[2 * nj] = [t[0], t[1]];
                b[2 * nj + 1] = [t[2], t[3]];
            }
            for mi in 0..MI {
                for ni in 0..NI {
                    acc[mi][ni] = mma_m16n8k16_bf16_f32(a[mi], b[ni], acc[mi][ni]);
                }
            }
        }
    }
    cp_async_wait_group::<0>();

    // 5. Fused: per-row inv_rms from the 2 threads that share each x-tile row in the rewrite
    // pass.
    if FUSE {
        for (i, &ss) in sum_sq.iter().enumerate() {
            let total = ss + shfl_sync_bfly_f32(ss, 1);
            if tid % 2 == 0 && (i as u32) < norm_slots {
                // SAFETY: BM f32 after the stages; the row is < BM.
                unsafe { st_shared_f32(inv_rows.add((tid + i as u32 * C::THREADS) / 2), inv_rms(total, k, eps)) };
            }
        }
        // SAFETY: uniform barrier.
        unsafe { sync_threads() };
    }

    // 6. Epilogue: d0 = (row g, col 2q), d1 = (g, 2q+1), d2 = (g+8, 2q), d3 = (g+8, 2q+1).
    let (gq, qq) = (lane / 4, lane % 4);
    for (mi, acc_mi) in acc.iter().enumerate() {
        for half in 0..2 {
            let row = wm0 + mi as u32 * 16 + gq + half * 8;
            if m0 + row >= m {
                continue;
            }
            // SAFETY: row < BM.
            let scale = if FUSE { unsafe { ld_shared_f32(inv_rows.add(row)) } } else { 1.0 };
            for (ni, d) in acc_mi.iter().enumerate() {
                let col = n0 + wn0 + ni as u32 * 8 + 2 * qq;
                if col < n {
                    let (lo, hi) = (d[2 * half as usize] * scale, d[2 * half as usize + 1] * scale);
                    // SAFETY: token < M and col < N.
                    unsafe { out.store_pair(m0 + row, col, lo, hi) };
                }
            }
        }
    }
}
