//! # Fused RMSNorm + QKV projection, decode path (M <= 16)
//!
//! `q, k, v = split(rmsnorm(x) · Wᵀ)`, with RMSNorm's gain g folded into the weight once,
//! when the op is built (`fold_gain`: `W' = bf16(W · diag(g))`); `gemm_decode` is the same
//! kernel without the norm (`y = x · Wᵀ`, x already normalized), for the unfused baseline.
//! Each comes in four entries from one generic body: the plain one requests one W batch per
//! warp before the dependency wait, `*_early` requests two (see Prologue), `*_early_m8` is
//! `*_early` with one token tile (M <= 8), and `*_ring` is the plain one with x streamed
//! through a ring in shared memory instead of staged whole (X ring); the planner picks.
//!
//! # Parameters
//! `x [M, K]`, `W' [N, K]` (PyTorch `Linear` layout, rows of Q then K then V,
//! `N = Nq + 2 Nkv`), outputs `q [M, Nq]`, `k [M, Nkv]`, `v [M, Nkv]`; all row-major bf16,
//! 16-byte aligned, `K % 8 == 0`. f32 accumulation. `1 <= M <= 16` (`<= 8` for `*_early_m8`).
//! Launch shape: `warp_split` and `k_chunk` (Tiling), `trigger_first` 0 or 1 (Prologue),
//! `interleave_x` 0 (exactly one of x and W k-interleaved) or 1 (both natural; Tiling).
//!
//! # Formulation
//! `out[t, n] = inv_rms[t] · Σ_k x[t, k] · W'[n, k]`, with
//! `inv_rms[t] = rsqrt(Σ_k x[t, k]² / K + eps)`: RMSNorm split around the GEMM, equal to
//! `rmsnorm(x) · Wᵀ` up to rounding (one rounding of `W · g` per weight instead of one of
//! the normalized activation). The row reduction is only needed in the epilogue, so weight
//! streaming never waits on it, and nothing is multiplied by g per call.
//!
//! # Why this shape
//! At small M the op reads `2 N K` bytes of W and does `2 M N K` flops: a few flops per
//! byte, so the floor is the weight read. Tensor cores keep the instruction count low; what
//! decides speed is keeping enough W bytes in flight on every SM (16-byte coalesced loads,
//! enough CTAs), reading each weight byte once, and hiding the launch.
//!
//! # Tiling
//! * Grid `(k_splits, row_tiles)`: CTA `(s, r)` owns W rows `[r·R, r·R + R)` and the K range
//!   `[s·k_chunk, (s+1)·k_chunk)`. `R = 16 · 8 / warp_split`. The `k_splits` CTAs of a row
//!   tile form one thread-block cluster.
//! * The MMA (`m16n8k16`) is used swapped: its M is 16 W rows, its N is 8 tokens (a token
//!   tile); two token tiles per warp (one in `*_early_m8`).
//! * Each warp owns 16 W rows and part of the CTA's K steps (32 elements each): the
//!   `warp_split` warps of a row group split the range and add their sums through shared
//!   memory at the end.
//! * Per K step, lane `(g, q) = (lane / 4, lane % 4)` loads 16 bytes of W row `g` and of
//!   row `g + 8` at element `32 s + 8 q` (`ld.global.nc.L1::no_allocate.L2::256B.v4`,
//!   straight into registers): the A fragments of two MMAs, because the k order inside a
//!   step is permuted: MMA k-slot `2q + j` / `2q + 8 + j` holds element `8q + j` /
//!   `8q + 2 + j` (first MMA) and `8q + 4 + j` / `8q + 6 + j` (second MMA).
//! * One `ldmatrix.x4` per token tile yields the B fragments of both MMAs: lane `(g, q)`
//!   gets word (bf16 pair) `q` of each 16-byte piece of token `g`'s block in shared memory.
//!   Those must be the x values the lane's W registers multiply, so x in shared memory and
//!   W in global memory are in opposite k orders: one natural, the other k-interleaved
//!   (`config::interleave`: the 4 x 4 matrix of a block's words transposed). The fused op
//!   stores its folded weight interleaved (`fold_gain`) and baseline (b)'s RMSNorm writes
//!   its output interleaved, so x is staged as it is, with 16-byte copies. With
//!   `interleave_x` (x and W both natural, `ops::gemm`) the staging scatters each bf16
//!   pair to its interleaved slot with 4-byte copies. A partial last block (`K % 32 != 0`)
//!   is natural in every operand and always scattered.
//!   Rows of absent tokens in a used token tile point at token 0's row: their result
//!   columns are never stored.
//! * W is loaded in batches of `UNROLL` steps, double-buffered in registers: the first two
//!   batches are requested in the prologue, and each later batch as the batch two before it
//!   is multiplied.
//!
//! # Prologue
//! 1. With `trigger_first` (the host's plan decides), `griddepcontrol.launch_dependents`
//!    first (see 3).
//! 2. Issue the first W batch (or two: `*_early`; up to 8 KiB per warp, 64 KiB per CTA):
//!    weights are never written by the previous kernel. In SASS the `*_early` entries issue
//!    their 16 loads in waves: the A fragments need each lane's two rows word by word
//!    (Tiling), so ptxas moves the loaded words into place, and each move, placed right
//!    behind its load, waits for it before the next loads issue. The op is sensitive to
//!    that schedule (H100, `nanofuse tune`, Qwen3-0.6B): builds whose SASS issued all 16
//!    loads back to back were 0.7-1.4 µs slower at M = 1-16 (x as the MMA's A operand and
//!    W as its B, which needs no moves; an unrelated source change after which ptxas placed
//!    the moves after the loads), and explicit waits between groups of loads were slower
//!    the more groups they made. A change to this code can move that schedule: compare the
//!    entries' SASS (ptxas + nvdisasm: the LDG and MOV order before PREEXIT and ACQBULK).
//! 3. Otherwise `griddepcontrol.launch_dependents` now. Under programmatic dependent
//!    launch the next kernel launches once every CTA of this one has executed it; a warp
//!    waits for some of its W loads to land before it issues the rest (step 2), which takes
//!    a while when the memory system is busy, so the trigger going first lets the next
//!    launch start earlier (H100, `nanofuse tune`, M = 1:
//!    Qwen3-0.6B 4.32 -> 3.69 µs, Llama-3-8B 18.75 -> 18.34). At M >= 2 it was slower on
//!    some shapes (Llama-3.2-1B: 0.3-0.7 µs at M = 2-16 in the kernels of 049fed3, 0.15-0.6
//!    µs at M = 2-4 in those of 3054f4f), so for the fused entries the planner asks for it
//!    at M = 1 and, at M <= 8, where every warp requests all its W before the wait
//!    (`DecodePlan::trigger_first`; Qwen3-0.6B M = 2-8: 4.37-4.47 -> 3.94-4.19 µs; since
//!    those warps run no main loop also Llama-3.2-1B's 192 CTAs: 6.08-6.13 -> 5.36-5.66);
//!    for the plain GEMM at M = 1 only (`DecodePlan::gemm_trigger_first`).
//! 4. Ask L2 for the warp's next W batch (`cp.async.bulk.prefetch.L2`, one row range per
//!    lane 0-15): the registers hold all the warp can request, and without it DRAM idles
//!    while the warp waits for the previous kernel and stages x (a timeline probe showed
//!    1.3-1.9 µs per op of that on Llama-3-8B). One batch measured best (Llama-3-8B M = 1:
//!    19.52 -> 18.75 µs, Llama-3-70B M = 16: 73.6 -> 71.4); two or more, or keeping the L2
//!    prefetch a batch ahead through the loop, were slower (congestion). Issued after the
//!    trigger, so the loads-first path does not delay it.
//! 5. `griddepcontrol.wait`: the kernel starts while the previous one drains, streaming W;
//!    it touches x and the outputs only after the wait. When the grid has at most one CTA
//!    per SM (two fit), the next launch's CTAs start beside this one's and request their
//!    weights while this one finishes; that overlap is what the planner aims for.
//! 6. Copy the rows of x for the CTA's K range into shared memory, 16 bytes per `cp.async`
//!    (or, with `interleave_x` and for a partial last block, 4-byte copies that scatter each
//!    bf16 pair to its interleaved slot; see Tiling). Until the folded weight was stored
//!    interleaved every row was scattered, and at M = 16 that was bound by the number of
//!    copy instructions. Warp `w` copies the rows of tokens `w` and `w + 8`. At M = 1 all 8 warps share the row, taking its
//!    128-byte pieces in turn, and in the plain entries at M = 2 four warps share each
//!    row (measured 0.4-1.4 µs faster on Llama-3-8B and Llama-3-70B; on the `_early`
//!    shapes no gain at M = 2-4, where it was slower at M = 4, but at M = 1, once the
//!    trigger went first, 0.05-0.1 µs on Qwen3-0.6B and 0.2-0.3 µs on Llama-3.2-1B and
//!    Llama-3-8B). One CTA barrier publishes the rows (the first of two in the fused
//!    `_early` entries at M = 1, step 7).
//! 7. Sums of squares of x (the norm): the plain entries take them from the B fragments
//!    inside the main loop (each lane sees 8 of a token's 32 values per step; no latency
//!    added, the four lanes of a token and the warps of a row group are added after the
//!    loop). The `_early` entries hold both W batches in registers through the loop, where
//!    the extra state made ptxas spill (two-tile form), so there each
//!    warp sums its own rows before the CTA barrier (one block per lane, butterfly
//!    reduction). At M = 1, where the 8 warps share the row, a first barrier publishes it,
//!    warp 0 sums it and a second barrier publishes the sum (its cost on the chain, against
//!    no sum at all: about 0.1 µs on Qwen3-0.6B, 0.3-0.4 on Llama-3.2-1B, 0.25-0.35 on
//!    Llama-3-8B). Measured slower than that (`nanofuse tune`, Qwen3-0.6B M = 1,
//!    3.58-3.65 µs): every warp summing an eighth of
//!    the row (3.72), the same from global memory while the copies land (3.90), warp 0
//!    summing after its main loop (3.68-4.04), the sums inside the loop (4.00).
//!
//! # Epilogue
//! With one K split, the part-0 warp of each row group scales its accumulators by inv_rms.
//! In the two-tile entries it rounds them to bf16 and stages its 16 rows x 16 tokens in its
//! own reduction slots as [token][row]; lane l then writes rows 8 (l % 2) .. + 8 of token
//! l / 2 with one 16-byte store, so every 32-byte sector of q, k and v is written whole by
//! one instruction. The one-tile entries store each lane's four values directly (2-byte
//! stores), which measured faster there. With a cluster (below), CTA `r` stores the
//! elements it finishes directly.
//!
//! # Whole part in registers
//! The `_early` entries whose warps have their whole K part in their two W batches
//! (Qwen3-0.6B and Llama-3.2-1B) run no main loop: the MMAs over both batches are
//! straight-line code, per K step a token tile's `ldmatrix` and two MMAs, which feed two
//! accumulator chains (a dependent `mma.sync` costs about 24 cycles on H100, against 6 per
//! MMA at full rate: `scripts/mma_rate.py`). The loop ended each batch with `cur = next;
//! next = load(batch + 2)`, which ptxas compiles to register moves right behind the loads
//! they copy (SASS), so every batch waited for the loads just issued, even those predicated
//! off past the warp's part. H100 (`nanofuse tune`, plan rows, two runs in each of three
//! calls): Qwen3-0.6B M = 1 3.61-3.66 -> 3.28-3.30 µs, M = 2-8 3.83-3.96 -> 3.39-3.52;
//! Llama-3.2-1B M = 1 5.69-5.84 -> 5.18-5.27.
//!
//! At M > 8 the two tiles' steps are interleaved (four chains) after one barrier for all
//! rows. Before, the two-tile entries worked tile by tile (the tile split, 8a6873c: tile 0's
//! rows and tile 1's in two commit groups, tile 0 multiplied while tile 1's rows landed,
//! then a second barrier); interleaved, without the second barrier, they measured 0.07-0.11
//! µs faster on Qwen3-0.6B at M = 9-16 and 0.18-0.35 µs on Llama-3.2-1B (`nanofuse tune`,
//! two runs each). The one-tile entries keep their own per-tile code: the same steps
//! written through the interleaved code compiled to a different schedule (SASS), 0.1-0.2 µs
//! slower on Llama-3.2-1B at M <= 8.
//!
//! The main loop is skipped by its condition (`!in_regs`), not by setting `s = end` in that
//! block: with the assignment, ptxas (CUDA 13.0, also the driver's JIT) computed tile-1
//! `ldmatrix` addresses of the block, which PTX derives from `s` before the assignment, from
//! the register after it (SASS: `R7 * 0x40 + R5` once `R7` held `end`), so at M = 9 tile 1
//! read past its rows into the reduction slots: wrong results (`nanofuse-sweep`), and
//! compute-sanitizer racecheck reported the reads against the reduction's stores.
//!
//! # X ring
//! A CTA that stages x whole holds `2 M k_chunk` bytes of it: at M = 16, 128 KiB for
//! K = 4096 and 256 KiB for K = 8192, more than two CTAs can share an SM within the
//! 164 KiB that leave it a large L1 (the planner's `DECODE_SMEM_PER_SM`). The `*_ring`
//! entries hold two phases instead: phase b is steps `[b·ph, (b+1)·ph)` of the CTA's K
//! range, `ph = warp_split · UNROLL`, and in phase b part p of every row group takes steps
//! `b·ph + p·UNROLL ..+ UNROLL` (one W batch), so a warp's W batches are strided by `ph`
//! steps instead of contiguous. The slice of x a part needs (its `UNROLL` blocks of every
//! token row, at most 4 KiB at M = 16) is copied by that part's `8 / warp_split` warps
//! alone (`StagedRows::copy_slice`, lane l: chunk l % 16 of every other row) into slot
//! `b % 2`, one phase ahead; at the top of batch b each thread waits for its copies and
//! the part's warps meet at named barrier `1 + part` (`bar.sync`, `32 · 8 / warp_split`
//! threads), which publishes the slice and frees slot `(b + 1) % 2` for phase b + 1.
//! Nothing else ties the warps together, so with `warp_split = 8` a warp never waits for
//! another. The sums of squares come from the B fragments in the loop (as in the plain
//! entry). Shared memory for x: `M` rows of `2 ph` steps, whatever K is (at M = 16: 16 KiB
//! with `warp_split = 2`, 64 KiB with 8). A first version
//! in which all warps copied every phase together and met at a CTA barrier per phase was
//! 2-7 µs slower on Llama-3-70B at M = 8-16 (`nanofuse tune`): every phase waited for the
//! CTA's slowest warp.
//!
//! # Split-K across CTAs
//! The planner no longer splits K (the ring takes the shapes that needed it); forced launch
//! shapes (`Tuning`) still can. With `k_splits > 1`, the CTAs of a cluster each leave their partial tile and partial
//! sums of squares in shared memory; after a cluster barrier, CTA `r` finishes every
//! `k_splits`-th accumulator element, reading the partials of all CTAs through distributed
//! shared memory (`mapa` + `ld.shared::cluster`) and adding them in rank order (bitwise
//! deterministic); a second cluster barrier keeps every CTA's shared memory alive until all
//! reads are done.
//!
//! # Traffic (per call)
//! W: `2 N K` bytes from DRAM, read once. x: `2 M K` bytes per row tile (L2; with the ring
//! the same bytes, one phase at a time). Outputs: `2 M N` bytes.
//!
//! # Launch
//! block `(256, 1, 1)`; grid `(ceil(K / k_chunk), ceil(N / R))`; cluster `(k_splits, 1, 1)`
//! when `k_splits > 1`; dynamic shared memory
//! `config::decode::smem_layout(M, x_cols(ring, warp_split, k_chunk)).bytes`;
//! optionally with programmatic stream serialization. The build adds launch bounds
//! (`config::LAUNCH_BOUNDS`: 256 threads, 2 CTAs per SM), which cap ptxas at 128 registers.

use crate::config::VEC;
use crate::config::decode::{
    K_STEP, MAX_K_SPLITS, MAX_TOKENS, ROWS_PER_WARP, THREADS, TOKEN_TILE, UNROLL, WARPS, smem_layout, x_cols,
};
use crate::norm::{inv_rms, sum_squares_bf16x8};
use crate::ptx::cluster::{barrier_cluster_sync, cluster_ctarank, ld_shared_cluster_f32, mapa_shared_cluster};
use crate::ptx::convert::cvt_rn_bf16x2_f32;
use crate::ptx::cp_async::{
    cp_async_bulk_prefetch_l2_global, cp_async_ca_shared_global_4, cp_async_ca_shared_global_16, cp_async_commit_group,
    cp_async_wait_group,
};
use crate::ptx::global::ld_global_nc_stream_v4_u32;
use crate::ptx::mma::{ldmatrix_x4, mma_m16n8k16_bf16_f32};
use crate::ptx::shared::{
    SharedPtr, dynamic_shared_base, ld_shared_f32, ld_shared_v4_u32, st_shared_f32, st_shared_u16, st_shared_v4_u32,
};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{bar_sync, block_dim_x, block_idx_x, block_idx_y, grid_dim_x, lane_id, sync_threads, warp_id};
use crate::ptx::trap;
use crate::ptx::warp::{bar_warp_sync, shfl_sync_bfly_f32, shfl_sync_idx_f32};
use crate::qkv_out::QkvOut;

/// Defines a fused decode entry point; `EARLY` selects how many W batches each warp
/// requests before the dependency wait (see the module documentation).
macro_rules! fused_decode_entry {
    ($(#[$doc:meta])* $name:ident, tiles = $tiles:literal, early = $early:literal, ring = $ring:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Pointers and sizes as in the module documentation; outputs do not overlap inputs;
        /// the launch has the documented shape (a wrong block size, `warp_split`, `k_chunk`,
        /// cluster or M traps).
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $name(
            x: *const u16,
            w: *const u16,
            q: *mut u16,
            k_out: *mut u16,
            v: *mut u16,
            m: u32,
            k: u32,
            nq: u32,
            nkv: u32,
            eps: f32,
            warp_split: u32,
            k_chunk: u32,
            trigger_first: u32,
            interleave_x: u32,
        ) {
            let out = QkvOut { q, k: k_out, v, nq, nkv };
            let launch = Launch { warp_split, k_chunk, trigger_first: trigger_first != 0, interleave_x: interleave_x != 0 };
            // SAFETY: forwarded to the caller.
            unsafe { decode::<$tiles, true, $early, $ring>(x, w, out, m, k, eps, launch) }
        }
    };
}

/// Defines a plain decode GEMM entry point (`y [M, N] = x · Wᵀ`, y in place of q, no norm).
macro_rules! gemm_decode_entry {
    ($(#[$doc:meta])* $name:ident, tiles = $tiles:literal, early = $early:literal, ring = $ring:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the fused entries, with `y` in place of q/k/v.
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $name(
            x: *const u16,
            w: *const u16,
            y: *mut u16,
            m: u32,
            k: u32,
            n: u32,
            warp_split: u32,
            k_chunk: u32,
            trigger_first: u32,
            interleave_x: u32,
        ) {
            let null = core::ptr::null_mut();
            let out = QkvOut { q: y, k: null, v: null, nq: n, nkv: 0 };
            let launch = Launch { warp_split, k_chunk, trigger_first: trigger_first != 0, interleave_x: interleave_x != 0 };
            // SAFETY: forwarded to the caller.
            unsafe { decode::<$tiles, false, $early, $ring>(x, w, out, m, k, 0.0, launch) }
        }
    };
}

fused_decode_entry! {
    /// Fused RMSNorm + QKV projection for small M, one W batch per warp requested before the
    /// dependency wait. See the module documentation.
    fused_rmsnorm_qkv_decode, tiles = 2, early = false, ring = false
}
fused_decode_entry! {
    /// `fused_rmsnorm_qkv_decode` requesting its first two W batches before the dependency
    /// wait (the planner's choice when that is all of each warp's K part).
    fused_rmsnorm_qkv_decode_early, tiles = 2, early = true, ring = false
}
fused_decode_entry! {
    /// `fused_rmsnorm_qkv_decode_early` for M <= 8 (one token tile).
    fused_rmsnorm_qkv_decode_early_m8, tiles = 1, early = true, ring = false
}
fused_decode_entry! {
    /// `fused_rmsnorm_qkv_decode` with x staged through a two-phase ring (see X ring).
    fused_rmsnorm_qkv_decode_ring, tiles = 2, early = false, ring = true
}
gemm_decode_entry! {
    /// `y [M, N] = x · Wᵀ` for small M (x already normalized): the decode kernel without the
    /// fused norm, for the unfused baseline that isolates what fusion buys.
    gemm_decode, tiles = 2, early = false, ring = false
}
gemm_decode_entry! {
    /// `gemm_decode` requesting its first two W batches before the dependency wait.
    gemm_decode_early, tiles = 2, early = true, ring = false
}
gemm_decode_entry! {
    /// `gemm_decode_early` for M <= 8 (one token tile).
    gemm_decode_early_m8, tiles = 1, early = true, ring = false
}

gemm_decode_entry! {
    /// `gemm_decode` with x staged through a two-phase ring (see X ring).
    gemm_decode_ring, tiles = 2, early = false, ring = true
}

/// The launch-shape arguments of the decode entries (module documentation: Tiling,
/// Prologue).
struct Launch {
    /// Warps that split a 16-row group's K steps (1, 2, 4 or 8).
    warp_split: u32,
    /// K elements per CTA (a multiple of 32).
    k_chunk: u32,
    /// Trigger the dependent launch before the W loads instead of after them.
    trigger_first: bool,
    /// x and W are in the same k order: interleave x while staging it (4-byte scatter)
    /// instead of copying it as it is (Tiling).
    interleave_x: bool,
}

/// The 8 W registers of one K step: 16 bytes of row `g`, then 16 bytes of row `g + 8`.
type WStep = [u32; 8];
#[inline(always)]
unsafe fn decode<const MT: usize, const FUSE: bool, const EARLY: bool, const RING: bool>(
    x: *const u16,
    w: *const u16,
    out: QkvOut,
    m: u32,
    k: u32,
    eps: f32,
    launch: Launch,
) {
    let Launch { warp_split, k_chunk, trigger_first, interleave_x } = launch;
    let split_ok = matches!(warp_split, 1 | 2 | 4 | 8);
    let max_m = (MT as u32) * TOKEN_TILE;
    let (kslice, row_tile, k_splits) = (block_idx_x(), block_idx_y(), grid_dim_x());
    if block_dim_x() != THREADS
        || !split_ok
        || k_chunk == 0
        || !k_chunk.is_multiple_of(K_STEP)
        || m == 0
        || m > max_m
        || !k.is_multiple_of(VEC)
        || k_splits > MAX_K_SPLITS
        || cluster_ctarank() != kslice
    {
        trap();
    }
    let n = out.n();
    let (warp, lane) = (warp_id(), lane_id());

    // 1. Map the CTA to a K range and W rows, the warp to 16 rows and part of the range.
    let k0 = kslice * k_chunk;
    let k_len = if k0 + k_chunk < k { k_chunk } else { k.saturating_sub(k0) };
    let steps = k_len.div_ceil(K_STEP);
    // warp_split is a power of two (checked above): divide by shifting.
    let split_log2 = warp_split.trailing_zeros();
    let cta_rows = ROWS_PER_WARP * (WARPS >> split_log2); // = rows_per_cta(warp_split)
    let row0 = row_tile * cta_rows + (warp >> split_log2) * ROWS_PER_WARP;
    let part = warp & (warp_split - 1);
    let per_part = (steps + warp_split - 1) >> split_log2;
    let s_begin = if part * per_part < steps { part * per_part } else { steps };
    let s_end = if s_begin + per_part < steps { s_begin + per_part } else { steps };
    // The warp's K steps, batch by batch: batch b holds steps `base + b·batch_stride + u` (u <
    // UNROLL) that lie below `end`. Without the ring a warp's part is one contiguous range;
    // with it the CTA's warps work through phases of `ph` steps together (X ring).
    let ph = warp_split * UNROLL as u32;
    let (base, batch_stride, end) =
        if RING { (part * UNROLL as u32, ph, steps) } else { (s_begin, UNROLL as u32, s_end) };

    // This lane's two W rows, in 16-byte chunks from the CTA's K origin; rows past N and
    // chunks past K load zeros.
    let (gq, qq) = (lane / 4, lane % 4);
    let chunks = k / VEC;
    let c0 = k0 / VEC;
    let (r_lo, r_hi) = (row0 + gq, row0 + gq + 8);
    let wc = w as *const [u32; 4];
    let lo_base = r_lo as usize * chunks as usize + c0 as usize + qq as usize;
    let hi_base = r_hi as usize * chunks as usize + c0 as usize + qq as usize;
    let load_batch = |s0: u32| -> [WStep; UNROLL] {
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
    };
    // Let the next kernel launch (it too streams weights first, then waits for this one):
    // before or after the W loads, as the launch says (Prologue, steps 1-3).
    if trigger_first {
        griddepcontrol_launch_dependents();
    }
    let mut cur = load_batch(base);
    let mut next = if EARLY { load_batch(base + batch_stride) } else { [[0u32; 8]; UNROLL] };
    if !trigger_first {
        griddepcontrol_launch_dependents();
    }
    // Prologue, step 4: L2 prefetch of the batch after those in registers, row g of the
    // warp's 16 by lane g < 16 (rows past N and steps past the warp's part are skipped).
    let pf_begin = base + if EARLY { 2 } else { 1 } * batch_stride;
    let pf_end = (pf_begin + UNROLL as u32).min(end);
    let pf_row = row0 + lane;
    if lane < ROWS_PER_WARP && pf_row < n && pf_begin < pf_end {
        let e0 = k0 + pf_begin * K_STEP;
        let e1 = (k0 + pf_end * K_STEP).min(k);
        if e0 < e1 {
            // SAFETY: elements [e0, e1) of row pf_row < N lie inside W (e1 <= K); K % 8 == 0
            // and k0 % 32 == 0 keep both ends 16-byte aligned.
            unsafe {
                cp_async_bulk_prefetch_l2_global(
                    w.wrapping_add(pf_row as usize * k as usize + e0 as usize) as *const u8,
                    (e1 - e0) * 2,
                )
            };
        }
    }

    let smem = dynamic_shared_base();
    let layout = smem_layout(m, x_cols(RING, warp_split, k_chunk));
    let xs = smem.byte_add(layout.x as u32);
    let stride = layout.row_stride as u32;
    let sum_sq = smem.byte_add(layout.sum_sq as u32).cast::<f32>();

    // 2. Wait for the previous kernel before touching x or the outputs.
    griddepcontrol_wait();

    // 3. Stage x (Prologue, step 6): each token row is copied by one warp, or by all 8 at
    // M = 1, or by 4 in the plain entries at M = 2; the fused `_early` entries also sum its
    // squares (step 7). One CTA barrier publishes the rows and the sums (two at M = 1 in the
    // fused `_early` entries: rows, then warp 0's sum).
    // SAFETY: each copy reads x only inside it (else zero-fills) into its token's row (a
    // piece starting before `row_words` lies inside the row: the row holds `k_chunk / 32`
    // blocks); after `wait_group` and the warp barrier a warp's copies are visible to all
    // its lanes (at M = 1, where all warps copy the row, the CTA barrier before the sum
    // publishes it); the CTA barriers are uniform (m is a kernel argument).
    // With the ring, only the warp part's slice of phase 0 is copied here, by the warps of
    // that part; the main loop waits for it.
    let slice_rows = |b: u32| {
        let first = b * ph + part * UNROLL as u32;
        StagedRows {
            x,
            xs: xs.byte_add(((b & 1) * ph + part * UNROLL as u32) * 64),
            stride,
            m,
            chunks,
            c0: c0 + first * 4,
            steps: steps.saturating_sub(first).min(UNROLL as u32),
        }
    };
    // The `_early` entries where the warp's whole K part is in its two W batches: no main
    // loop (Whole part in registers).
    let in_regs = EARLY && end <= base + 2 * batch_stride;
    unsafe {
        if RING {
            slice_rows(0).copy_slice(warp >> split_log2, WARPS >> split_log2, lane, interleave_x);
        } else {
            StagedRows { x, xs, stride, m, chunks, c0, steps }.stage(warp, lane, interleave_x, !EARLY);
        }
        cp_async_commit_group();
    }
    // The fused `_early` entries: each warp sums the squares of the whole rows of tokens
    // w + 8i (the rows it copied; at M = 1 warp 0 sums the row all warps
    // copied, published before): one block per lane at a time, its pieces read in a
    // lane-rotated order so that the 8 lanes of a shared-memory phase hit 8 bank groups; the
    // rows' butterfly reductions interleaved.
    // SAFETY (of the call): the rows were copied by this warp, and its `wait_group` for
    // them has returned (or, at M = 1, a CTA barrier published the row).
    let sum_rows = || unsafe {
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
    };
    // SAFETY: as above.
    if !RING {
        unsafe {
            cp_async_wait_group::<0>();
            if FUSE && EARLY && m == 1 {
                // The row came from all warps: publish it before warp 0 sums it.
                sync_threads();
            }
            if FUSE && EARLY {
                sum_rows();
            }
            sync_threads();
        }
    }

    // 4. Main loop: per K step, two MMAs per token tile. Lane l of `ldmatrix.x4` gives the
    // address of row l % 8 (token 8t + l % 8) of matrix l / 8 (piece l / 8 of the step's
    // block). Absent tokens of a used tile read token 0's row: their columns of the MMA
    // result (and their sums of squares) are never stored.
    let (mat, mrow) = (lane / 8, lane % 8);
    let tile_base = core::array::from_fn::<u32, MT, _>(|t| {
        let tok = t as u32 * TOKEN_TILE + mrow;
        let row = if tok < m { tok } else { 0 };
        xs.byte_add(row * stride + mat * 16).addr()
    });
    let tiles_used = m.div_ceil(TOKEN_TILE);
    let mut acc = [[0.0f32; 4]; MT];
    // The plain entries take the sums of squares over the warp's K part from the B
    // fragments (Prologue, step 7): lane (g, q) sees 8 of the 32 values of token 8t + g in
    // every step.
    let ss_in_loop = FUSE && (!EARLY || RING);
    let mut ss = [0.0f32; MT];
    // With the ring: phases of the CTA's K range (ph is a power of two: divide by shifting).
    let batches = (steps + ph - 1) >> ph.trailing_zeros();
    let (mut s, mut b) = (base, 0);
    if in_regs {
        // Whole part in registers: straight-line MMAs over both W batches. One K step of
        // token tile t: its `ldmatrix`, then its two MMAs into two accumulator chains (a
        // macro: as a closure it changed the one-tile entries' SASS, which is kept as
        // measured; see Whole part in registers).
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
                    let chains = tile_steps([*a, [0.0; 4]], &cur, base, t);
                    let [c0, c1] = tile_steps(chains, &next, base + batch_stride, t);
                    *a = core::array::from_fn(|i| c0[i] + c1[i]);
                }
            }
        } else {
            let chains = all_steps([[[0.0; 4]; 2]; MT], &cur, base);
            let chains = all_steps(chains, &next, base + batch_stride);
            for (a, [c0, c1]) in acc.iter_mut().zip(chains.iter()) {
                *a = core::array::from_fn(|i| c0[i] + c1[i]);
            }
        }
    }
    // Where the warp's whole K part is in its two W batches (the block above) there is no
    // main loop. (Not by `s = end` in that block: ptxas 13.0 then recomputed addresses
    // derived from `s` in the block from the reassigned register; see Whole part in
    // registers.)
    while !in_regs && if RING { b < batches } else { s < end } {
        if RING {
            // X ring: the part's slice of phase b has landed (this thread's copies; the
            // barrier of the part's warps publishes every thread's), and those warps are done
            // with phase b - 1, whose slot phase b + 1 now takes.
            // SAFETY: the part's warps all reach barrier 1 + part (batches is CTA-uniform);
            // the slice's copies stay inside its slot (as in the prologue).
            unsafe {
                cp_async_wait_group::<0>();
                bar_sync(1 + part, (WARPS >> split_log2) * 32);
                if b + 1 < batches {
                    slice_rows(b + 1).copy_slice(warp >> split_log2, WARPS >> split_log2, lane, interleave_x);
                }
                cp_async_commit_group();
            }
        }
        if !EARLY {
            next = load_batch(s + batch_stride);
        }
        // Where step s's x lies in shared memory, in steps.
        let x_step = if RING { (b & 1) * ph + part * UNROLL as u32 } else { s };
        for (u, wv) in cur.iter().enumerate() {
            let step = s + u as u32;
            if step < end {
                let a_k0 = [wv[0], wv[4], wv[1], wv[5]];
                let a_k1 = [wv[2], wv[6], wv[3], wv[7]];
                for t in 0..MT {
                    if (t as u32) < tiles_used {
                        // SAFETY: the address is inside a staged token row.
                        let x_at = tile_base[t] + (x_step + u as u32) * 64;
                        let b = unsafe { ldmatrix_x4(SharedPtr::from_addr(x_at)) };
                        acc[t] = mma_m16n8k16_bf16_f32(a_k0, [b[0], b[1]], acc[t]);
                        acc[t] = mma_m16n8k16_bf16_f32(a_k1, [b[2], b[3]], acc[t]);
                        if ss_in_loop {
                            ss[t] += sum_squares_bf16x8(b);
                        }
                    }
                }
            }
        }
        cur = next;
        if EARLY {
            next = load_batch(s + 2 * batch_stride);
        }
        s += batch_stride;
        b += 1;
    }

    // 5. Add the partial sums of the warps of a row group. Sums of squares too (plain
    // entries): the four lanes of a token add theirs first, so lane (g, q) holds token
    // 8t + g's.
    if ss_in_loop {
        for v in ss.iter_mut() {
            *v += shfl_sync_bfly_f32(*v, 1);
            *v += shfl_sync_bfly_f32(*v, 2);
        }
    }
    let red = smem.byte_add(layout.reduce as u32).cast::<[u32; 4]>();
    let slot = red.add((warp * 32 + lane) * MT as u32);
    let ss_part = smem.byte_add(layout.ss_part as u32).cast::<f32>();
    let ss_slot = |w: u32, t: usize| ss_part.add(w * MAX_TOKENS + t as u32 * TOKEN_TILE + gq);
    // SAFETY: the reduction areas hold 4 f32 per token tile per lane and MAX_TOKENS f32 per
    // warp; the barrier is CTA-uniform (warp_split is a kernel argument).
    unsafe {
        if warp_split > 1 {
            for (t, a) in acc.iter().enumerate() {
                if (t as u32) < tiles_used {
                    st_shared_v4_u32(slot.add(t as u32), a.map(f32::to_bits));
                    if ss_in_loop && qq == 0 {
                        st_shared_f32(ss_slot(warp, t), ss[t]);
                    }
                }
            }
            sync_threads();
            if part == 0 {
                for p in 1..warp_split {
                    let other = red.add(((warp + p) * 32 + lane) * MT as u32);
                    for (t, a) in acc.iter_mut().enumerate() {
                        if (t as u32) < tiles_used {
                            let v = ld_shared_v4_u32(other.add(t as u32));
                            for i in 0..4 {
                                a[i] += f32::from_bits(v[i]);
                            }
                            if ss_in_loop {
                                ss[t] += ld_shared_f32(ss_slot(warp + p, t));
                            }
                        }
                    }
                }
            }
        }
    }

    // 6. Epilogue. Fragment element i of token tile t: row g + 8(i / 2), token 8t + 2q + i % 2.
    let elem = |t: u32, i: u32| (row0 + gq + (i / 2) * 8, t * TOKEN_TILE + 2 * qq + i % 2);
    let scale = |ss: f32| if FUSE { inv_rms(ss, k, eps) } else { 1.0 };
    if k_splits == 1 {
        if part == 0 {
            // Two-tile entries: the warp's 16 rows x 16 tokens go out through its own
            // reduction slots (no other warp reads them), staged as bf16 [token][16 rows], 32
            // bytes per token: lane l then stores rows 8 (l % 2) .. 8 (l % 2) + 8 of token
            // l / 2 with one 16-byte store, so each 32-byte sector of the output is written
            // whole by one instruction. (Each lane storing its four values by 2-byte stores,
            // two half-sectors per token, measured up to 0.8 µs slower at Qwen3-0.6B M =
            // 13-15, depending on where the outputs lie, and 0.8 µs at Llama-3-70B M = 1.)
            // The one-tile entries (M <= 8 on one-wave grids) keep those 2-byte stores: the
            // staging measured 0.1-0.3 µs slower there (Qwen3-0.6B and Llama-3-8B at M = 1).
            let staged = MT > 1;
            let stage = red.add(warp * 32 * MT as u32).cast::<u8>();
            for (t, a) in acc.iter().enumerate() {
                // The lane's two tokens of the tile (elements i and i + 2 share one).
                let tok0 = t as u32 * TOKEN_TILE + 2 * qq;
                // Token 8t + 2q + j's sum of squares: in the fused plain entries held by
                // lanes 4 (2q + j) to 4 (2q + j) + 3, in the fused `_early` ones in shared
                // memory (the plain GEMM does not scale).
                let sc = [0, 1].map(|j| {
                    let tok = tok0 + j;
                    let ss_tok = if ss_in_loop {
                        shfl_sync_idx_f32(ss[t], 4 * (2 * qq + j))
                    } else if FUSE && tok < m {
                        // SAFETY: sum_sq[tok] was written for tok < m.
                        unsafe { ld_shared_f32(sum_sq.add(tok)) }
                    } else {
                        0.0
                    };
                    if tok < m { scale(ss_tok) } else { 0.0 }
                });
                // Element i: token tok0 + i % 2, row g + 8 (i / 2) (written out: a loop over
                // the fragment kept it in local memory).
                let put = |tok: u32, row: u32, value: f32| {
                    let bits = cvt_rn_bf16x2_f32(value, 0.0) as u16;
                    // SAFETY: 8 MT tokens of 32 bytes fit the warp's 32 x MT slots of 16 bytes.
                    unsafe { st_shared_u16(stage.byte_add(tok * 32 + row * 2).cast(), bits) };
                };
                if staged {
                    put(tok0, gq, a[0] * sc[0]);
                    put(tok0 + 1, gq, a[1] * sc[1]);
                    put(tok0, gq + 8, a[2] * sc[0]);
                    put(tok0 + 1, gq + 8, a[3] * sc[1]);
                } else {
                    for (i, &value) in a.iter().enumerate() {
                        let (row, tok) = elem(t as u32, i as u32);
                        if row < n && tok < m {
                            // SAFETY: row < N, tok < M.
                            unsafe { out.store(tok, row, value * sc[i % 2]) };
                        }
                    }
                }
            }
            if staged {
                bar_warp_sync();
                let (tok, row) = (lane / 2, row0 + 8 * (lane % 2));
                if tok < m && row < n {
                    // SAFETY: the warp's own staged tile (published by the warp barrier);
                    // row < N and tok < M.
                    unsafe { out.store8(tok, row, ld_shared_v4_u32(stage.byte_add(lane * 16).cast())) };
                }
            }
        }
        return;
    }

    // Split-K across the CTAs of the cluster: each leaves its partials in shared memory
    // (part-0 warps in their own reduction slots), then CTA r finishes accumulator elements
    // r, r + k_splits, ... of every lane, adding all CTAs' partials in rank order.
    // SAFETY: every thread of every CTA of the cluster reaches both cluster barriers; remote
    // addresses come from `mapa` of addresses inside the layout; the second barrier keeps
    // each CTA's shared memory alive until all remote reads are done.
    unsafe {
        // Warp 0 (part 0 of row group 0) publishes the CTA's sums of squares (the `_early`
        // entries have them there already).
        if ss_in_loop && warp == 0 && qq == 0 {
            for (t, v) in ss.iter().enumerate() {
                st_shared_f32(sum_sq.add(t as u32 * TOKEN_TILE + gq), *v);
            }
        }
        if part == 0 {
            // Only this warp's own slot: the warp reduction above read the other parts'.
            for (t, a) in acc.iter().enumerate() {
                st_shared_v4_u32(slot.add(t as u32), a.map(f32::to_bits));
            }
        }
        barrier_cluster_sync();
        if part == 0 {
            let slot_f32 = slot.cast::<f32>();
            let mut j = kslice;
            while j < MT as u32 * 4 {
                let (row, tok) = elem(j / 4, j % 4);
                if row < n && tok < m {
                    let (mut total, mut ss) = (0.0f32, 0.0f32);
                    for rank in 0..k_splits {
                        total += ld_shared_cluster_f32(mapa_shared_cluster(slot_f32.add(j), rank));
                        if FUSE {
                            ss += ld_shared_cluster_f32(mapa_shared_cluster(sum_sq.add(tok), rank));
                        }
                    }
                    out.store(tok, row, total * scale(ss));
                }
                j += k_splits;
            }
        }
        barrier_cluster_sync();
    }
}

/// The rows of x a CTA stages: tokens `0..m`, 16-byte chunks `c0..` of each (`steps` blocks
/// of 32 elements), into shared memory rows `stride` bytes apart (Prologue, step 6).
struct StagedRows {
    x: *const u16,
    xs: SharedPtr<u8>,
    stride: u32,
    m: u32,
    /// Chunks per row of x (K / 8).
    chunks: u32,
    c0: u32,
    steps: u32,
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
    unsafe fn copy_slice(&self, group: u32, groups: u32, lane: u32, interleave: bool) {
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
    unsafe fn stage(&self, warp: u32, lane: u32, interleave: bool, share_m2: bool) {
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
}
