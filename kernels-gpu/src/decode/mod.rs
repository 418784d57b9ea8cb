//! # The decode kernel: weight-streaming GEMM for small M, in reusable parts
//!
//! `out = epilogue(scale · x · Wᵀ)` for `x [M, K]`, `W [N, K]` (PyTorch `Linear` layout),
//! `1 <= M <= 16`, bf16 in and out, f32 accumulation. `scale` is the row's
//! `inv_rms = rsqrt(Σ_k x² / K + eps)` when the epilogue fuses RMSNorm (its gain folded into
//! W once, when the op is built), else 1. Every decode entry (the fused QKV op and its plain
//! GEMM twin in `qkv_decode`, the fused MLP ops in `mlp_decode`) is one instance of
//! [`run`], built from these parts:
//!
//! | part | file | what |
//! |---|---|---|
//! | W streaming | `w_stream` | a warp's 16 W rows, batches of `UNROLL` K steps straight into MMA fragments, the L2 prefetch of the next batch |
//! | x staging | `stage` | the CTA's rows of x into shared memory by `cp.async` (whole, or one ring phase at a time), sums of squares of staged rows |
//! | MMA main loop | `mma`, and the loop in [`run`] | per K step one `ldmatrix.x4` per token tile and two `mma.m16n8k16` |
//! | reduction | `reduce` | split-K over the warps of a row group (shared memory) and over a cluster's CTAs (distributed shared memory) |
//! | epilogue | `epilogue` | what the finished fragments become: q/k/v, y, SiLU·mul, residual add |
//!
//! # Formulation
//! RMSNorm is split around the GEMM: `out[t, n] = inv_rms[t] · Σ_k x[t, k] · W'[n, k]` with
//! `W' = bf16(W · diag(g))`, equal to `rmsnorm(x) · Wᵀ` up to rounding. The row reduction
//! is only needed in the epilogue, so weight streaming never waits on it.
//!
//! # Why this shape
//! At small M the op reads `2 N K` bytes of W and does `2 M N K` flops: a few flops per
//! byte, so the floor is the weight read. What decides speed is keeping enough W bytes in
//! flight on every SM (16-byte coalesced loads, two CTAs per SM), reading each weight byte
//! once, and hiding the launch (programmatic dependent launch, below).
//!
//! # Tiling
//! * Grid `(k_splits, row_tiles)`: CTA `(s, r)` owns W rows `[r·R, r·R + R)` and the K
//!   range `[s·k_chunk, (s+1)·k_chunk)`, `R = 16 · 8 / warp_split`. The `k_splits` CTAs of
//!   a row tile form one thread-block cluster.
//! * The MMA is used swapped: its M is 16 W rows, its N is 8 tokens (a token tile); one or
//!   two token tiles per warp (`MT`).
//! * Each warp owns 16 W rows and part of the CTA's K steps (32 elements each); the
//!   `warp_split` warps of a row group add their partial sums through shared memory.
//! * Per K step lane `(g, q) = (lane / 4, lane % 4)` holds 16 bytes of W rows `g` and
//!   `g + 8` (elements `32 s + 8 q ..+ 8`): the A fragments of two MMAs, with the k order
//!   inside a step permuted (MMA k-slot `2q + j` / `2q + 8 + j` holds element `8q + j` /
//!   `8q + 2 + j` in the first MMA, `8q + 4 + j` / `8q + 6 + j` in the second).
//! * One `ldmatrix.x4` per token tile gives the B fragments of both MMAs: lane `(g, q)`
//!   gets word `q` of each 16-byte piece of token `g`'s block. Those are the x values its W
//!   registers multiply only if x in shared memory and W are in opposite k orders (one
//!   natural, the other k-interleaved, `config::interleave`). The fused ops store their
//!   folded weight interleaved, so x is staged as it is by 16-byte copies; with
//!   `interleave_x` (both natural) the staging scatters bf16 pairs by 4-byte copies.
//! * Absent tokens of a used token tile read token 0's row; their columns are never stored.
//!
//! # Schedules (the entries of one op)
//! | entry suffix | `MT` | `EARLY` | `RING` | when the planner picks it |
//! |---|---|---|---|---|
//! | (none) | 2 | no | no | one W batch per warp requested before the wait |
//! | `_early` | 2 | yes | no | two batches before the wait: all of each warp's K part |
//! | `_early_m8` | 1 | yes | no | `_early` for M <= 8 (one token tile) |
//! | `_ring` | 2 | no | yes | x for the CTA's whole K range would not let two CTAs share an SM |
//!
//! # Prologue (order matters: see docs/RESULTS.md for the measurements behind it)
//! 1. `griddepcontrol.launch_dependents` first where the plan says (`trigger_first`), else
//!    right after the W loads: the next kernel launches once every CTA has executed it.
//! 2. The first W batch (two in the `_early` entries): weights are never written by the
//!    previous kernel, so they stream before the wait.
//! 3. An L2 prefetch of the warp's next batch, so DRAM keeps busy during the wait.
//! 4. `griddepcontrol.wait`; only then x and the outputs are touched. The one-tile
//!    entries' part-0 warps first request what their epilogue reads from the previous
//!    kernel (`Epilogue::preload`: the residual), so that it arrives during 5.
//! 5. x staged (`stage`); the norm's sums of squares come from the B fragments inside the
//!    main loop (plain and ring entries) or from a pass over the staged rows (`_early`).
//!
//! # Whole part in registers
//! The `_early` entries whose warps hold their whole K part in their two W batches run no
//! main loop: straight-line MMAs over both batches feeding two accumulator chains per token
//! tile (`mma`), since a dependent `mma.sync` waits for the previous one. The loop is
//! skipped by its condition, not by assigning `s = end` in that block: with the assignment,
//! ptxas 13.0 computed addresses the block derives from `s` from the reassigned register
//! (wrong results at M = 9).
//!
//! # X ring
//! The `_ring` entries hold two phases of x instead of the CTA's whole K range: phase `b`
//! is steps `[b·ph, (b+1)·ph)`, `ph = warp_split · UNROLL`, and part `p` of every row group
//! takes steps `b·ph + p·UNROLL ..+ UNROLL` of it (one W batch). The slice a part needs is
//! copied by that part's own warps into slot `b % 2`, one phase ahead; at the top of batch
//! `b` each thread waits for its copies and the part's warps meet at named barrier
//! `1 + part`, which publishes the slice and frees the other slot. Nothing else ties the
//! warps together, so with `warp_split = 8` no warp waits for another.
//!
//! # Split-K across CTAs
//! Only for forced launch shapes (the planner uses the ring instead), and only for
//! elementwise epilogues: the CTAs of a cluster leave partial tiles in shared memory, and
//! after a cluster barrier CTA `r` finishes every `k_splits`-th element, adding all CTAs'
//! partials in rank order (bitwise deterministic).
//!
//! # Traffic (per call)
//! W: `2 N K` bytes from DRAM, read once. x: `2 M K` bytes per row tile (L2). Outputs:
//! `2 M N` bytes (half that for SiLU·mul; the residual add reads as much again).
//!
//! # Launch
//! block `(256, 1, 1)`; grid `(ceil(K / k_chunk), ceil(N / R))`; cluster `(k_splits, 1, 1)`
//! when `k_splits > 1`; dynamic shared memory
//! `config::decode::smem_layout(M, x_cols(ring, warp_split, k_chunk)).bytes`; optionally
//! with programmatic stream serialization. The build adds launch bounds
//! (`config::LAUNCH_BOUNDS`: 256 threads, 2 CTAs per SM: at most 128 registers).

mod epilogue;
mod mma;
mod reduce;
mod stage;
mod w_stream;

pub use epilogue::{ArgMax, Epilogue, ResidualAdd, RowStore, SiluMul};
use w_stream::{WPrefetch, w_batch_loader};

use crate::config::VEC;
use crate::config::decode::{
    K_STEP, MAX_K_SPLITS, ROWS_PER_WARP, THREADS, TOKEN_TILE, UNROLL, WARPS, smem_layout, x_cols,
};
use crate::norm::{inv_rms, sum_squares_bf16x8};
use crate::ptx::cluster::cluster_ctarank;
use crate::ptx::cp_async::{cp_async_commit_group, cp_async_wait_group};
use crate::ptx::mma::{ldmatrix_x4, mma_m16n8k16_bf16_f32};
use crate::ptx::shared::{SharedPtr, dynamic_shared_base, ld_shared_f32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{bar_sync, block_dim_x, block_idx_x, block_idx_y, grid_dim_x, lane_id, sync_threads, warp_id};
use crate::ptx::trap;
use crate::ptx::warp::{bar_warp_sync, shfl_sync_bfly_f32, shfl_sync_idx_f32};
use stage::StagedRows;

/// The launch-shape arguments every decode entry takes after its tensors (Tiling,
/// Prologue).
pub struct Launch {
    /// Warps that split a 16-row group's K steps (1, 2, 4 or 8).
    pub warp_split: u32,
    /// K elements per CTA (a multiple of 32).
    pub k_chunk: u32,
    /// Trigger the dependent launch before the W loads instead of after them.
    pub trigger_first: bool,
    /// x and W are in the same k order: interleave x while staging it (4-byte scatter)
    /// instead of copying it as it is (Tiling).
    pub interleave_x: bool,
}

/// Defines the four decode entries of one op (see Schedules): `params` are the op's own
/// parameters, in order (the [`Launch`] arguments `warp_split, k_chunk, trigger_first,
/// interleave_x` follow them), and `run = (x, w, epilogue, m, k, eps)` says what [`run`]
/// gets.
macro_rules! decode_entries {
    (
        $(#[$doc:meta])*
        names = [$plain:ident, $early:ident, $early_m8:ident, $ring:ident],
        params = ($($p:ident: $t:ty),* $(,)?),
        run = ($x:expr, $w:expr, $epi:expr, $m:expr, $k:expr, $eps:expr $(,)?) $(,)?
    ) => {
        $crate::decode::decode_entries!(@one $(#[$doc])* $plain, 2, false, false, ($($p: $t),*), ($x, $w, $epi, $m, $k, $eps));
        $crate::decode::decode_entries!(@one $(#[$doc])* $early, 2, true, false, ($($p: $t),*), ($x, $w, $epi, $m, $k, $eps));
        $crate::decode::decode_entries!(@one $(#[$doc])* $early_m8, 1, true, false, ($($p: $t),*), ($x, $w, $epi, $m, $k, $eps));
        $crate::decode::decode_entries!(@one $(#[$doc])* $ring, 2, false, true, ($($p: $t),*), ($x, $w, $epi, $m, $k, $eps));
    };
    (@one $(#[$doc:meta])* $name:ident, $tiles:literal, $early:literal, $ring:literal,
        ($($p:ident: $t:ty),*), ($x:expr, $w:expr, $epi:expr, $m:expr, $k:expr, $eps:expr)) => {
        $(#[$doc])*
        ///
        /// One of the op's four schedules: see the `decode` module (Schedules).
        ///
        /// # Safety
        /// Pointers and sizes as in the op's module documentation; outputs do not overlap
        /// inputs (except where the op says); the launch has the documented shape (a wrong
        /// block size, `warp_split`, `k_chunk`, cluster or M traps).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "gpu-kernel" fn $name(
            $($p: $t,)*
            warp_split: u32,
            k_chunk: u32,
            trigger_first: u32,
            interleave_x: u32,
        ) {
            let launch = $crate::decode::Launch {
                warp_split,
                k_chunk,
                trigger_first: trigger_first != 0,
                interleave_x: interleave_x != 0,
            };
            // SAFETY: forwarded to the caller.
            unsafe { $crate::decode::run::<$tiles, $early, $ring, _>($x, $w, $epi, $m, $k, $eps, launch) }
        }
    };
}
pub(crate) use decode_entries;

/// The decode kernel's body: `MT` token tiles, `EARLY` (two W batches before the wait),
/// `RING` (x through the two-phase ring), epilogue `E` (see the module documentation).
///
/// # Safety
/// `x [m, k]` and `w [E::rows(), k]` bf16, 16-byte aligned, `k % 8 == 0`; the epilogue's
/// tensors hold `m` rows; the launch has the documented shape (else it traps).
#[inline(always)]
pub unsafe fn run<const MT: usize, const EARLY: bool, const RING: bool, E: Epilogue>(
    x: *const u16,
    w: *const u16,
    epi: E,
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
        || (!E::ELEMENTWISE && k_splits > 1)
        || cluster_ctarank() != kslice
    {
        trap();
    }
    let n = epi.rows();
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
    let (gq, qq) = (lane / 4, lane % 4);
    let chunks = k / VEC;
    let c0 = k0 / VEC;
    w_batch_loader!(load_batch = w, n = n, k = k, row0 = row0, k0 = k0, end = end, lane = lane);
    let prefetch = WPrefetch { w, n, k, row0, k0, end, lane };

    // 2. Prologue: the trigger before or after the first W batches, then the L2 prefetch of
    // the batch after those in registers.
    if trigger_first {
        griddepcontrol_launch_dependents();
    }
    let mut cur = load_batch(base);
    let mut next = if EARLY { load_batch(base + batch_stride) } else { [[0u32; 8]; UNROLL] };
    if !trigger_first {
        griddepcontrol_launch_dependents();
    }
    prefetch.prefetch_l2(base + if EARLY { 2 } else { 1 } * batch_stride);

    let smem = dynamic_shared_base();
    let layout = smem_layout(m, x_cols(RING, warp_split, k_chunk));
    let xs = smem.byte_add(layout.x as u32);
    let stride = layout.row_stride as u32;
    let sum_sq = smem.byte_add(layout.sum_sq as u32).cast::<f32>();

    // 3. Wait for the previous kernel before touching x or the outputs; then the
    // epilogue's own input from it (the residual) where the warp will store one token tile
    // directly, so that the load overlaps x staging and the MMAs.
    griddepcontrol_wait();
    let pre = if MT == 1 && k_splits == 1 && part == 0 {
        // SAFETY: after the wait; the epilogue's tensors hold m tokens.
        unsafe { epi.preload(row0, gq, qq, m) }
    } else {
        E::Pre::default()
    };

    // 4. Stage x: each token row is copied by one warp, or by all 8 at M = 1, or by 4 in the
    // plain entries at M = 2; the fused `_early` entries also sum its squares. One CTA
    // barrier publishes the rows and the sums (two at M = 1 in the fused `_early` entries:
    // rows, then warp 0's sum). With the ring, only the part's slice of phase 0 is copied
    // here, by the warps of that part; the main loop waits for it.
    // SAFETY: each copy reads x only inside it (else zero-fills) into its token's row; after
    // `wait_group` and the warp barrier a warp's copies are visible to all its lanes (at
    // M = 1 the CTA barrier before the sum publishes the row); the CTA barriers are uniform
    // (m is a kernel argument).
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
    let whole = StagedRows { x, xs, stride, m, chunks, c0, steps };
    // The `_early` entries where the warp's whole K part is in its two W batches: no main
    // loop (Whole part in registers).
    let in_regs = EARLY && end <= base + 2 * batch_stride;
    unsafe {
        if RING {
            slice_rows(0).copy_slice(warp >> split_log2, WARPS >> split_log2, lane, interleave_x);
        } else {
            whole.stage(warp, lane, interleave_x, !EARLY);
        }
        cp_async_commit_group();
    }
    if !RING {
        // SAFETY: as above; `sum_rows` runs after this warp's `wait_group` (and at M = 1
        // after the barrier that publishes the shared row).
        unsafe {
            cp_async_wait_group::<0>();
            if E::NORM && EARLY && m == 1 {
                // The row came from all warps: publish it before warp 0 sums it.
                sync_threads();
            }
            if E::NORM && EARLY {
                whole.sum_rows::<MT>(warp, lane, sum_sq);
            }
            sync_threads();
        }
    }

    // 5. Main loop: per K step, two MMAs per token tile. Lane l of `ldmatrix.x4` gives the
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
    // The plain and ring entries take the sums of squares over the warp's K part from the
    // B fragments: lane (g, q) sees 8 of the 32 values of token 8t + g in every step.
    let ss_in_loop = E::NORM && (!EARLY || RING);
    let mut ss = [0.0f32; MT];
    // With the ring: phases of the CTA's K range (ph is a power of two: divide by shifting).
    let batches = (steps + ph - 1) >> ph.trailing_zeros();
    let (mut s, mut b) = (base, 0);
    if in_regs {
        let regs = mma::InRegs { tile_base, tiles_used, end };
        acc = regs.run(&cur, &next, base, batch_stride);
    }
    // Where the warp's whole K part is in its two W batches (the block above) there is no
    // main loop; it is skipped by its condition (Whole part in registers).
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

    // 6. Add the partial sums of the warps of a row group. Sums of squares too (plain
    // entries): the four lanes of a token add theirs first, so lane (g, q) holds token
    // 8t + g's.
    if ss_in_loop {
        for v in ss.iter_mut() {
            *v += shfl_sync_bfly_f32(*v, 1);
            *v += shfl_sync_bfly_f32(*v, 2);
        }
    }
    let parts = reduce::Parts::<MT> { smem, layout: &layout, warp, lane, part, warp_split, tiles_used, gq };
    // SAFETY: the layout's reduction areas; the barrier inside is CTA-uniform.
    unsafe { parts.add(&mut acc, &mut ss, ss_in_loop) };

    // 7. Epilogue. Fragment element i of token tile t: row g + 8(i / 2), token 8t + 2q + i % 2.
    let scale = |ss: f32| if E::NORM { inv_rms(ss, k, eps) } else { 1.0 };
    if k_splits == 1 {
        if part == 0 {
            // Two-tile entries: the warp's 16 rows x 16 tokens go out through its own
            // reduction slots (no other warp reads them), so that each 32-byte sector of the
            // output is written whole by one instruction; the one-tile entries (M <= 8 on
            // one-wave grids) store each lane's values directly, which measured faster there.
            let staged = MT > 1;
            let stage = parts.stage_area();
            for (t, a) in acc.iter().enumerate() {
                // The lane's two tokens of the tile (elements i and i + 2 share one).
                let tok0 = t as u32 * TOKEN_TILE + 2 * qq;
                // Token 8t + 2q + j's sum of squares: with the sums in the loop held by lanes
                // 4 (2q + j) to 4 (2q + j) + 3, else in shared memory (the plain GEMM does not
                // scale).
                let sc = [0, 1].map(|j| {
                    let tok = tok0 + j;
                    let ss_tok = if ss_in_loop {
                        shfl_sync_idx_f32(ss[t], 4 * (2 * qq + j))
                    } else if E::NORM && tok < m {
                        // SAFETY: sum_sq[tok] was written for tok < m.
                        unsafe { ld_shared_f32(sum_sq.add(tok)) }
                    } else {
                        0.0
                    };
                    if tok < m { scale(ss_tok) } else { 0.0 }
                });
                // SAFETY: 8 MT tokens of 32 bytes fit the warp's staging slots; the
                // epilogue's tensors hold m tokens.
                unsafe {
                    if staged {
                        epi.stage(stage, t as u32, gq, qq, *a, sc);
                    } else {
                        let pre = if t == 0 { pre } else { E::Pre::default() };
                        epi.store_fragment(row0, t as u32, gq, qq, *a, sc, m, pre);
                    }
                }
            }
            if staged {
                bar_warp_sync();
                // SAFETY: the warp's own staged tile, published by the warp barrier.
                unsafe { epi.store_staged(stage, lane, row0, m) };
            }
        }
        return;
    }

    // Split-K across the CTAs of the cluster.
    let cluster = reduce::Cluster { kslice, k_splits, row0, gq, qq, m, n };
    // SAFETY: every thread of every CTA of the cluster reaches both cluster barriers inside
    // (k_splits is grid-uniform); the epilogue is elementwise (checked at entry).
    unsafe { cluster.finish::<MT, E>(&parts, &acc, &ss, ss_in_loop, sum_sq, epi, scale) };
}
