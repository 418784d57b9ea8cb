//! # The prefill GEMMs (M > 16) on warpgroup MMA fed by the TMA (sm_90a), four epilogues
//!
//! `y = scale · x · Wᵀ` for `x [M, K]`, `W [N, K]` bf16, f32 accumulation, then an
//! epilogue ([`BlockOut`]):
//! * `fused_rmsnorm_qkv_wgmma`: `q, k, v = split(rmsnorm(x) · Wᵀ)`;
//! * `gemm_wgmma`: `y = x · Wᵀ`;
//! * `fused_rmsnorm_gate_up_wgmma`: `a = silu(gate) · up` of `rmsnorm(x) · [Wg; Wu]ᵀ`, W in
//!   the fused MLP's blocked gate/up row order (`config::mlp`);
//! * `proj_residual_wgmma`: `out = residual + x · Wᵀ` (in place when `out == residual`).
//!
//! The fused ops' W is the folded `W' = bf16(W · diag(g))` in the k-interleaved order
//! (`config::interleave`), so `out[m, n] = inv_rms[m] · Σ_k x[m, k] · W'[n, k]`; the plain
//! ones take W as given, in natural order, with `scale = 1`. x is always natural.
//!
//! # Tiling (`config::wgmma`)
//! * CTA tile `BM x BN = 128 tokens x 256 W rows`, K in tiles of `BK = 64`; one CTA per SM
//!   (its shared memory). The output tiles form one walk, token tiles fastest
//!   (`config::wgmma::tile_coords`), so that the tiles in flight at one time walk down the
//!   token tiles of one W tile column first and share their W tiles in L2. CTA `b` of grid
//!   x takes tiles `b, b + gridDim.x, …`: one each where grid x is the tile count, several
//!   where the host launches at most one CTA per SM (a persistent walk: without a split or
//!   pairs). Its pipeline runs on from one tile into the next: the producer and the
//!   consumers count the stages across tiles, so the next tile's first W and x tiles load
//!   while the consumers store the last one's results.
//! * Where the launch asks for pairs (`WgmmaShape::pairs`, off by default: measured slower;
//!   only with two token tiles or more), pairs of CTAs along x (`MULTICAST = 2`; the host
//!   rounds grid x up to whole pairs; a CTA past M computes zeros and stores nothing) share
//!   their W tiles: CTA `x` of a pair loads rows `128 x ..+ 128` of each by a TMA multicast
//!   into both, so L2 serves every W tile once per pair instead of once per CTA. A CTA
//!   without a pair loads both halves itself.
//! * A split over K where the output tiles are too few to fill the SMs, or their last wave
//!   would leave most SMs idle (the host's `split_k` picks `split` in 1, 2, 4, 8): the `split` CTAs along z of a cluster (`MULTICAST x 1 x
//!   split` or `1 x 1 x split`) compute the same output tile over consecutive ranges of
//!   `ceil(k tiles / split)` k tiles each (the last ones may be short or empty). After the
//!   main loop each puts its accumulators and its rows' partial sums of squares into its
//!   own stage memory (`config::wgmma::partial_offset`: consumer thread `u` at the same
//!   offset in every CTA), a cluster barrier, and CTA `z` adds blocks `z · 16 / split ..+ 16
//!   / split` of the tile's sixteen 16-column blocks from all of them through distributed
//!   shared memory (`ld.shared::cluster`), in rank order, so the result is the same in every
//!   run of a launch shape (a different split, e.g. at another M, rounds differently); the row scales come from the summed squares and the epilogue (SiLU·mul, the
//!   residual) runs on the sums. Nothing goes to global memory but the output.
//! * Three warpgroups: warpgroup 0 produces (W by the TMA, x by `cp.async`), warpgroups 1
//!   and 2 consume (tokens `64 (c - 1) ..+ 64` of the tile each, all 256 W rows: one
//!   `wgmma.m64n256k16` per k16 slice, 128 f32 accumulators per thread). `setmaxnreg` gives
//!   the producer 40 registers and the consumers 232.
//! * `STAGES` shared-memory stages, each a W tile `[256][64]` (32 KiB, the TMA's 128-byte
//!   swizzle) and an x tile `[128][64]` (16 KiB, the same swizzle written by `cp.async`:
//!   16-byte chunk `c` of row `r` at chunk `c ^ (r % 8)`), 1024-byte aligned. A `full`
//!   barrier per stage completes when the whole W tile's bytes have landed (both halves:
//!   the producer's leader arms it with `expect_tx` for the tile; the other CTA's half may
//!   land first, which the barrier's transaction count allows) and each of the 128 producer
//!   threads' x copies (thread `t`: chunk `t % 8` of rows `t / 8 + 16 i`, so a warp reads
//!   whole rows) have (`cp.async.mbarrier.arrive.noinc`): count 129. An `empty` barrier per
//!   stage completes when the 8 consumer warps of every CTA its boxes land in are done with
//!   the stage (lane 0 of each arrives on the stage's empty barrier in each CTA of the
//!   pair): count 8 per CTA of the pair, because both CTAs' producers write into it. A
//!   cluster barrier after the barriers' initialization and another before exit keep every
//!   copy, arrival and partial-sum read inside running CTAs.
//!
//! # Why A comes from registers
//! W is in the interleaved k order and x is not; a consumer lane `(g, q)` of warp `w` needs,
//! for the k16 slice pair of each 32-element block, x's natural 16-byte chunk `q` of the
//! block for its rows `16 w + g` and `+ 8` (interleaved slot `2q, 2q + 1` holds natural
//! word `4q`, slot `2q + 8, 2q + 9` word `4q + 1`, and the next slice words `4q + 2`, `4q +
//! 3`): one `ld.shared.v4` per row and block gives the A fragments of two `wgmma`s in the
//! interleaved order, so x never needs rewriting. With a natural W (the plain entries) slice
//! `j`'s slots are word `q` of x's chunks `2j` and `2j + 1`: four `ld.shared.u32` per slice. The same registers give the row's sum of
//! squares for the norm (the four lanes `q` of a row add theirs at the end), in the lanes
//! whose accumulators the row's `inv_rms` scales: the norm costs no shared memory and no
//! barrier. Requires `K % 32 == 0` (whole interleave blocks); the host routes other K
//! elsewhere.
//!
//! # Pipeline and PDL
//! The producer requests the W tiles of the first `STAGES` k tiles before
//! `griddepcontrol.wait` (weights are never written by the previous kernel), x only after
//! it. Per k tile a consumer waits on `full`, loads its A fragments, fences, issues four
//! `wgmma`s, commits, waits for them (`wait_group 0`), and arrives on `empty`.
//!
//! # Epilogue
//! Accumulator `i` of lane `(g, q)` in warp `w` is `[16 w + g + 8 ((i / 2) % 2), 8 (i / 4) +
//! 2q + i % 2]` of the warpgroup's 64 x 256 block; the epilogue gets a row's columns per
//! 16-column block (`BlockOut`: in the gate/up weight's blocked order a block is 8 gate
//! and the 8 matching up rows, so SiLU·mul needs no exchange) and stores pairs of columns as
//! 4-byte words; rows `>= M` and columns `>= N` are skipped. Rounding as the decode
//! epilogues: the GEMM result is rounded to bf16 before the activation or the residual add. Tails: the TMA fills W rows past N and columns past K with zeros, `cp.async`
//! zero-fills x past M and K.
//!
//! # Traffic and work (per call)
//! `2 M N K` flops; W read from L2 once per pair (`ceil(M / BM) / 2` times; once with one
//! token tile), x `ceil(N / BN)` times (L2), `2 M N` bytes written; a split adds `(split -
//! 1) / split` of `4 · 128 · 256` bytes per CTA of distributed shared-memory reads.
//!
//! # Launch
//! block `(384, 1, 1)`, grid `(ctas, 1, split)` in clusters of `(cx, 1, split)`, `cx` 2
//! with two token tiles or more and pairs on, else 1, `split` in 1, 2, 4, 8 and `cx · split
//! <= 8`; `ctas` at most the tiles `cx ceil(ceil(M / 128) / cx) · ceil(N / 256)`, and equal
//! to them with a cluster (pairs or a split); dynamic shared memory `config::wgmma::SMEM_BYTES`;
//! `w_map` a `CUtensorMap` in global memory for W `[N, K]` (box `64 x 128`, half a W tile,
//! 128-byte swizzle, zero fill); optionally with programmatic stream serialization. A launch
//! of another shape traps. Launch bounds 384 threads, 1 CTA per SM (for `setmaxnreg`).

use crate::activation::{round_bf16, silu_mul};
use crate::config::wgmma::{
    BK, BLOCKS, BM, BN, CONSUMER_REGS, MULTICAST, PRODUCER_REGS, SPLIT_MAX, STAGE_BYTES, STAGES, THREADS, W_BOX_ROWS,
    W_TILE_BYTES, consumer_rows, partial_offset, partial_ss_offset, split_blocks, split_k_tiles, swizzled, tile_coords,
    token_tiles,
};
use crate::norm::{add_squares_bf16x4, inv_rms};
use crate::ptx::cluster::{
    barrier_cluster_sync, cluster_ctaid_x, cluster_ctaid_z, cluster_ctarank, cluster_nctaid_x, cluster_nctaid_z,
    cluster_nctarank, ld_shared_cluster_v2_f32, ld_shared_cluster_v4_u32, mapa_shared_cluster,
};
use crate::ptx::convert::{cvt_rn_bf16x2_f32, unpack_bf16x2};
use crate::ptx::cp_async::{cp_async_cg_shared_global_16, cp_async_wait_all};
use crate::ptx::mbarrier::{
    cp_async_mbarrier_arrive_noinc_shared, fence_mbarrier_init_release_cluster, mbarrier_arrive_expect_tx_shared,
    mbarrier_arrive_shared_cluster, mbarrier_init_shared, mbarrier_wait_parity,
};
use crate::ptx::shared::{
    SharedPtr, dynamic_shared_base, ld_shared_u32, ld_shared_v4_u32, st_shared_v2_f32, st_shared_v4_u32,
};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{
    bar_sync, block_dim_x, block_idx_x, grid_dim_x, grid_dim_y, grid_dim_z, lane_id, thread_idx_x,
};
use crate::ptx::tma::{
    cp_async_bulk_tensor_2d_global_shared, cp_async_bulk_tensor_2d_global_shared_multicast,
    fence_proxy_tensormap_acquire_sys,
};
use crate::ptx::trap;
use crate::ptx::warp::shfl_sync_bfly_f32;
use crate::ptx::wgmma::{
    desc_k_sw128, setmaxnreg_dec, setmaxnreg_inc, wgmma_commit_group, wgmma_fence, wgmma_m64n256k16_f32_bf16_rs,
    wgmma_wait_group,
};
use crate::qkv_out::QkvOut;

/// Threads of a warpgroup.
const WG: u32 = 128;
/// Warps of the two consumer warpgroups (one arrival each on a stage's empty barrier).
const CONSUMER_WARPS: u32 = 2 * WG / 32;

/// Fused RMSNorm + QKV projection, prefill. See the module documentation.
///
/// # Safety
/// `x [m, k]` bf16 16-byte aligned, `k % 32 == 0`; `w_map` describes the folded,
/// interleaved `W [nq + 2 nkv, k]` as the module documentation says; `q [m, nq]`, `k [m,
/// nkv]`, `v [m, nkv]`; the launch has the documented shape (else it traps).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "gpu-kernel" fn fused_rmsnorm_qkv_wgmma(
    x: *const u16,
    w_map: *const u8,
    q: *mut u16,
    k_out: *mut u16,
    v: *mut u16,
    m: u32,
    k: u32,
    nq: u32,
    nkv: u32,
    eps: f32,
) {
    // SAFETY: forwarded to the caller.
    unsafe { run::<false, _>(x, w_map, Qkv::<true>(QkvOut { q, k: k_out, v, nq, nkv }), m, k, eps) }
}

/// `y = x · Wᵀ`, prefill, W natural. See the module documentation.
///
/// # Safety
/// As [`fused_rmsnorm_qkv_wgmma`] with `y [m, n]` and `w_map` describing a natural W `[n, k]`.
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn gemm_wgmma(x: *const u16, w_map: *const u8, y: *mut u16, m: u32, k: u32, n: u32) {
    let out = QkvOut { q: y, k: y, v: y, nq: n, nkv: 0 };
    // SAFETY: forwarded to the caller.
    unsafe { run::<true, _>(x, w_map, Qkv::<false>(out), m, k, 0.0) }
}

/// Fused RMSNorm + gate/up + SiLU·mul, prefill: `a [m, inter]`. See the module
/// documentation.
///
/// # Safety
/// As [`fused_rmsnorm_qkv_wgmma`] with W the folded, blocked, interleaved `[2 inter, k]`,
/// `inter % 8 == 0`, and `a [m, inter]`.
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn fused_rmsnorm_gate_up_wgmma(
    x: *const u16,
    w_map: *const u8,
    a: *mut u16,
    m: u32,
    k: u32,
    inter: u32,
    eps: f32,
) {
    if !inter.is_multiple_of(8) {
        trap();
    }
    // SAFETY: forwarded to the caller.
    unsafe { run::<false, _>(x, w_map, GateUp { a, inter }, m, k, eps) }
}

/// `out = residual + x · Wᵀ`, prefill, W natural. See the module documentation.
///
/// # Safety
/// As [`gemm_wgmma`] with `residual, out [m, n]` (`out` may be `residual`, nothing else may
/// overlap), `n % 8 == 0`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "gpu-kernel" fn proj_residual_wgmma(
    x: *const u16,
    w_map: *const u8,
    residual: *const u16,
    out: *mut u16,
    m: u32,
    k: u32,
    n: u32,
) {
    if !n.is_multiple_of(8) {
        trap();
    }
    // SAFETY: forwarded to the caller.
    unsafe { run::<true, _>(x, w_map, Residual { residual, out, n }, m, k, 0.0) }
}

/// Where a consumer's finished values go. Per token row and 16-column block `c16` (a
/// multiple of 16) of the W rows, lane `q` holds columns `c16 + 2q, + 1` (`lo`) and
/// `c16 + 8 + 2q, + 1` (`hi`), already scaled; the block is called for every `c16 < rows()`.
trait BlockOut: Copy {
    /// Whether the values are scaled by the row's inv_rms (the fused RMSNorm).
    const NORM: bool;
    /// W rows (N).
    fn rows(&self) -> u32;
    /// Stores one lane's values of `token`'s block `c16`.
    ///
    /// # Safety
    /// `token` is below the M the tensors hold; `c16 < rows()`.
    unsafe fn store(&self, token: u32, c16: u32, q: u32, lo: [f32; 2], hi: [f32; 2]);
}

/// Columns straight to the q, k, v (or one y) tensors.
#[derive(Clone, Copy)]
struct Qkv<const NORM: bool>(QkvOut);

impl<const NORM: bool> BlockOut for Qkv<NORM> {
    const NORM: bool = NORM;
    #[inline(always)]
    fn rows(&self) -> u32 {
        self.0.n()
    }
    #[inline(always)]
    unsafe fn store(&self, token: u32, c16: u32, q: u32, lo: [f32; 2], hi: [f32; 2]) {
        let n = self.0.n();
        // (A closure called twice: iterating over an array of the pairs put it in local
        // memory.)
        let pair = |col: u32, v: [f32; 2]| {
            if col < n {
                // SAFETY: col < n, token per the caller.
                unsafe { self.0.store_pair(token, col, v[0], v[1]) };
            }
        };
        pair(c16 + 2 * q, lo);
        pair(c16 + 8 + 2 * q, hi);
    }
}

/// `a [M, inter] = silu(gate) · up`: in the blocked row order, block `c16 / 16`'s first 8
/// rows are gate rows `c16 / 2 ..+ 8`, its last 8 the up rows of the same indices, so `lo`
/// and `hi` are gate and up of intermediate columns `c16 / 2 + 2q, + 1`.
#[derive(Clone, Copy)]
struct GateUp {
    a: *mut u16,
    inter: u32,
}

impl BlockOut for GateUp {
    const NORM: bool = true;
    #[inline(always)]
    fn rows(&self) -> u32 {
        2 * self.inter
    }
    #[inline(always)]
    unsafe fn store(&self, token: u32, c16: u32, q: u32, lo: [f32; 2], hi: [f32; 2]) {
        let col = c16 / 2 + 2 * q;
        let word = cvt_rn_bf16x2_f32(silu_mul(lo[0], hi[0]), silu_mul(lo[1], hi[1]));
        // SAFETY: col + 1 < inter (c16 < 2 inter, inter % 8 == 0); 4-byte aligned (col even).
        unsafe { (self.a.add(token as usize * self.inter as usize + col as usize) as *mut u32).write(word) };
    }
}

/// `out = bf16(residual + bf16(y))`, each element read and written by one thread.
#[derive(Clone, Copy)]
struct Residual {
    residual: *const u16,
    out: *mut u16,
    n: u32,
}

impl BlockOut for Residual {
    const NORM: bool = false;
    #[inline(always)]
    fn rows(&self) -> u32 {
        self.n
    }
    #[inline(always)]
    unsafe fn store(&self, token: u32, c16: u32, q: u32, lo: [f32; 2], hi: [f32; 2]) {
        let pair = |col: u32, v: [f32; 2]| {
            if col < self.n {
                let off = token as usize * self.n as usize + col as usize;
                // SAFETY: col + 1 < n (both even: n % 8 == 0), 4-byte aligned; token per the
                // caller.
                unsafe {
                    let (r0, r1) = unpack_bf16x2((self.residual.add(off) as *const u32).read());
                    let word = cvt_rn_bf16x2_f32(r0 + round_bf16(v[0]), r1 + round_bf16(v[1]));
                    (self.out.add(off) as *mut u32).write(word);
                }
            }
        };
        pair(c16 + 2 * q, lo);
        pair(c16 + 8 + 2 * q, hi);
    }
}

/// Shared memory of the launch: the stages, then the barriers, from a 1024-byte aligned base.
#[derive(Clone, Copy)]
struct Smem {
    base: u32,
}

impl Smem {
    #[inline(always)]
    fn new() -> Smem {
        let raw = dynamic_shared_base().addr();
        Smem { base: (raw + 1023) & !1023 }
    }
    #[inline(always)]
    fn w_tile(self, s: u32) -> SharedPtr<u8> {
        SharedPtr::from_addr(self.base + s * STAGE_BYTES)
    }
    #[inline(always)]
    fn x_tile(self, s: u32) -> SharedPtr<u8> {
        SharedPtr::from_addr(self.base + s * STAGE_BYTES + W_TILE_BYTES)
    }
    #[inline(always)]
    fn full(self, s: u32) -> SharedPtr<u64> {
        SharedPtr::from_addr(self.base + STAGES * STAGE_BYTES + 8 * s)
    }
    #[inline(always)]
    fn empty(self, s: u32) -> SharedPtr<u64> {
        SharedPtr::from_addr(self.base + STAGES * STAGE_BYTES + 8 * (STAGES + s))
    }
}

/// Where a CTA sits in its cluster: `cx` CTAs along x (1 or `MULTICAST`) compute
/// consecutive token tiles and share the W tiles by multicast, `x` this CTA's index among
/// them; `split` CTAs along z (grid z is the split) take `1 / split` of the k tiles each of
/// the same output tile, `z` this CTA's index among them.
#[derive(Clone, Copy)]
struct Place {
    cx: u32,
    x: u32,
    split: u32,
    z: u32,
}

impl Place {
    /// This CTA's place, or a trap where the launch is not a shape the kernel knows.
    #[inline(always)]
    fn get() -> Place {
        // (`max(1)`: the split is never 0, and so the divisions by it need no check.)
        let split = cluster_nctaid_z().max(1);
        let p = Place { cx: cluster_nctaid_x(), x: cluster_ctaid_x(), split, z: cluster_ctaid_z() };
        let split_ok = p.split <= SPLIT_MAX && BLOCKS.is_multiple_of(p.split) && grid_dim_z() == p.split;
        // The rank order (x fastest) that the multicast masks and `mapa` targets assume is
        // checked, not taken on trust: the PTX ISA calls `%cluster_ctarank` only "linear".
        let order_ok = cluster_ctarank() == p.rank(p.x, p.z);
        if !(p.cx == 1 || p.cx == MULTICAST) || !split_ok || p.cx * p.split != cluster_nctarank() || !order_ok {
            trap();
        }
        p
    }

    /// The cluster rank of the CTA at `(x, z)` of this cluster (its y extent is 1).
    #[inline(always)]
    fn rank(self, x: u32, z: u32) -> u32 {
        x + self.cx * z
    }
}

/// The kernel body: W in natural k order (`W_NAT`) or k-interleaved, epilogue `E`.
///
/// # Safety
/// As the entries'.
#[inline(always)]
unsafe fn run<const W_NAT: bool, E: BlockOut>(x: *const u16, w_map: *const u8, out: E, m: u32, k: u32, eps: f32) {
    let place = Place::get();
    if block_dim_x() != THREADS || !k.is_multiple_of(32) || k == 0 || m == 0 || grid_dim_y() != 1 {
        trap();
    }
    let walk = Walk::get(place, m, out.rows(), k);
    let tid = thread_idx_x();
    let sm = Smem::new();
    griddepcontrol_launch_dependents();
    if tid == 0 {
        // SAFETY: the barrier words lie past the stages, inside SMEM_BYTES; w_map per the
        // caller.
        unsafe {
            for s in 0..STAGES {
                mbarrier_init_shared(sm.full(s), WG + 1);
                mbarrier_init_shared(sm.empty(s), place.cx * CONSUMER_WARPS);
            }
            fence_proxy_tensormap_acquire_sys(w_map);
        }
        fence_mbarrier_init_release_cluster();
    }
    // Every CTA of the cluster has its barriers initialized before any copy or arrival
    // reaches them. SAFETY: uniform.
    unsafe { barrier_cluster_sync() };

    if tid < WG {
        setmaxnreg_dec::<PRODUCER_REGS>();
        // SAFETY: forwarded.
        unsafe { produce(sm, place, x, w_map, m, k, walk, tid) };
        if place.split > 1 {
            // The consumers' barrier between writing and reading the partial sums.
            // SAFETY: uniform across the cluster (every CTA has the same split).
            unsafe { barrier_cluster_sync() };
        }
    } else {
        setmaxnreg_inc::<CONSUMER_REGS>();
        // SAFETY: forwarded.
        unsafe { consume::<W_NAT, E>(sm, place, out, m, k, walk, tid % WG, eps) };
    }
    // No CTA leaves while another of its cluster may still arrive on its barriers or read
    // its partial sums. SAFETY: every thread of the cluster gets here.
    unsafe { barrier_cluster_sync() };
}

/// The output tiles of a CTA: tiles `first, first + stride, …` below `total` of the
/// launch's walk (`config::wgmma::tile_coords`: token tiles fastest), each over the k tiles
/// `kt0 ..+ count` (all of them without a split).
#[derive(Clone, Copy)]
struct Walk {
    first: u32,
    stride: u32,
    total: u32,
    token_tiles: u32,
    kt0: u32,
    count: u32,
}

impl Walk {
    /// This CTA's walk: grid x CTAs take the `total` tiles in turn (one each where grid x
    /// is `total`). A trap where grid x exceeds the tiles, or where a CTA of a cluster (a
    /// pair or a split) would take more than one: a split's partial sums reuse the stage
    /// memory that the producer would already be filling for the next tile.
    #[inline(always)]
    fn get(place: Place, m: u32, n: u32, k: u32) -> Walk {
        let token_tiles = token_tiles(m, place.cx);
        let Some(total) = token_tiles.checked_mul(n.div_ceil(BN)) else { trap() };
        let (first, stride) = (block_idx_x(), grid_dim_x());
        if stride > total || (place.cx * place.split > 1 && stride != total) {
            trap();
        }
        let (kt0, count) = split_k_tiles(place.z, place.split, k.div_ceil(BK));
        Walk { first, stride, total, token_tiles, kt0, count }
    }

    /// The first token and the first W row of tile `t`.
    #[inline(always)]
    fn origin(self, t: u32) -> (u32, u32) {
        let (tx, ty) = tile_coords(t, self.token_tiles);
        (tx * BM, ty * BN)
    }
}

/// The producer warpgroup, over the CTA's tiles and each tile's k tiles in one sequence
/// of stages (`g` counts them across tiles, so the next tile's loads start while the
/// consumers store the last one's): thread 0 copies the W tiles by the TMA; thread `t`
/// copies chunk `t % 8` of rows `t / 8 + 16 i` (`i` = 0..8) of each x tile (16 bytes each,
/// zero past M and K), so the 8 lanes of a row read its 128 bytes together.
///
/// # Safety
/// As [`run`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn produce(sm: Smem, place: Place, x: *const u16, w_map: *const u8, m: u32, k: u32, walk: Walk, t: u32) {
    // With a multicast pair, this CTA's share of each W tile is rows `W_BOX_ROWS · x ..+
    // W_BOX_ROWS`, into both CTAs of its pair; alone, it loads both halves. Either way each
    // CTA's full barrier waits for the whole tile's bytes.
    let load_w = |g: u32, n0: u32, i: u32| {
        let s = g % STAGES;
        let c0 = ((walk.kt0 + i) * BK) as i32;
        if t == 0 {
            // SAFETY: stage s is free in every CTA the box lands in (the empty barrier counts
            // the consumers of both CTAs of a pair); each box lands in its rows of the W tile.
            unsafe {
                mbarrier_arrive_expect_tx_shared(sm.full(s), W_TILE_BYTES);
                if place.cx == MULTICAST {
                    let share = place.x * W_BOX_ROWS;
                    let pair = ((1u32 << MULTICAST) - 1) << place.rank(0, place.z);
                    cp_async_bulk_tensor_2d_global_shared_multicast(
                        sm.w_tile(s).byte_add(share * 128),
                        w_map,
                        c0,
                        (n0 + share) as i32,
                        sm.full(s),
                        pair as u16,
                    );
                } else {
                    for h in 0..MULTICAST {
                        let rows = h * W_BOX_ROWS;
                        cp_async_bulk_tensor_2d_global_shared(
                            sm.w_tile(s).byte_add(rows * 128),
                            w_map,
                            c0,
                            (n0 + rows) as i32,
                            sm.full(s),
                        );
                    }
                }
            }
        }
    };
    // Weights before the dependency wait: the first tile's first STAGES k tiles (their
    // buffers are free).
    let pre = if walk.first < walk.total { walk.count.min(STAGES) } else { 0 };
    let (_, n_first) = walk.origin(walk.first);
    for i in 0..pre {
        load_w(i, n_first, i);
    }
    griddepcontrol_wait();
    // Thread t copies chunk t % 8 of tile rows t / 8 + 16 i: each warp instruction reads four
    // whole 128-byte rows of x.
    let chunk = t % 8;
    let mut g = 0;
    let mut tile = walk.first;
    while tile < walk.total {
        let (m0, n0) = walk.origin(tile);
        // The tile's rows of x from this thread's first (a tile past M has none).
        let rows = m.saturating_sub(m0);
        let x0 = x.wrapping_add(m0 as usize * k as usize);
        for i in 0..walk.count {
            let s = g % STAGES;
            let phase = (g / STAGES) & 1;
            if g >= pre {
                if g >= STAGES {
                    // SAFETY: an initialized barrier of this CTA.
                    unsafe { mbarrier_wait_parity(sm.empty(s), phase ^ 1) };
                }
                load_w(g, n0, i);
            }
            let xt = sm.x_tile(s);
            let col = (walk.kt0 + i) * BK + 8 * chunk;
            for j in 0..(BM / 16) {
                let r = t / 8 + 16 * j;
                let ok = r < rows && col < k;
                let src = if ok { x0.wrapping_add(r as usize * k as usize + col as usize) } else { x };
                // SAFETY: the chunk lies in row r of the stage's x tile; src is read only when ok.
                unsafe {
                    cp_async_cg_shared_global_16(xt.byte_add(swizzled(r, chunk)), src.cast(), if ok { 16 } else { 0 })
                };
            }
            // SAFETY: the stage's full barrier counts this thread's arrival.
            unsafe { cp_async_mbarrier_arrive_noinc_shared(sm.full(s)) };
            g += 1;
        }
        tile += walk.stride;
    }
    // The thread's last copies (and their arrivals) complete before it exits.
    cp_async_wait_all();
}

/// A consumer warpgroup (`t` its thread, 0..128), per tile of the CTA's walk: tokens `64 c
/// ..+ 64` of the tile, `c` the consumer index, all BN W rows, over the tile's k tiles
/// (stages counted across tiles as the producer counts them); then the tile's epilogue,
/// through the split's sum where there is one (a split's CTA has one tile).
///
/// # Safety
/// As [`run`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn consume<const W_NAT: bool, E: BlockOut>(
    sm: Smem,
    place: Place,
    out: E,
    m: u32,
    k: u32,
    walk: Walk,
    t: u32,
    eps: f32,
) {
    // Every read of this warpgroup's inputs follows a `full` barrier that the producer's
    // copies after its dependency wait complete; waiting here too costs nothing and does not
    // rest the epilogue's residual reads and stores on that chain.
    griddepcontrol_wait();
    let c = (thread_idx_x() / WG) - 1;
    let q = lane_id() % 4;
    // The lane's rows of the x tile (a0/a2 and a1/a3 of the A fragment, and of D).
    let (r0, r1) = consumer_rows(c, t);
    // (Zero for a split's CTA without k tiles; otherwise each tile's first `wgmma` ignores it.)
    let mut acc = [0.0f32; 128];
    let mut g = 0;
    let mut tile = walk.first;
    while tile < walk.total {
        let (m0, n0) = walk.origin(tile);
        tile += walk.stride;
        let mut ss = [0.0f32; 2];
        for i in 0..walk.count {
            let s = g % STAGES;
            let phase = (g / STAGES) & 1;
            g += 1;
            // SAFETY: an initialized barrier; after it the stage's W (async proxy, through the
            // barrier) and x (this CTA's cp.async, through the barrier) are visible.
            unsafe { mbarrier_wait_parity(sm.full(s), phase) };
            let xt = sm.x_tile(s);
            let wt = sm.w_tile(s).addr();
            // The four k16 slices' A fragments (module documentation, "Why A comes from registers").
            let a: [[u32; 4]; 4] = if W_NAT {
                // W natural: slice j's slots 2q, 2q + 1 / 2q + 8, 2q + 9 are word q of chunks 2j / 2j + 1.
                // SAFETY: inside the stage's x tile.
                let ld = |r: u32, chunk: u32| unsafe { ld_shared_u32(xt.byte_add(swizzled(r, chunk) + 4 * q).cast()) };
                core::array::from_fn(|j| {
                    let j = j as u32;
                    [ld(r0, 2 * j), ld(r1, 2 * j), ld(r0, 2 * j + 1), ld(r1, 2 * j + 1)]
                })
            } else {
                // W interleaved: natural chunk q of each 32-element block holds two slices' A words.
                // SAFETY: inside the stage's x tile.
                let ld = |r: u32, chunk: u32| unsafe { ld_shared_v4_u32(xt.byte_add(swizzled(r, chunk)).cast()) };
                let (b0r0, b0r1, b1r0, b1r1) = (ld(r0, q), ld(r1, q), ld(r0, 4 + q), ld(r1, 4 + q));
                [
                    [b0r0[0], b0r1[0], b0r0[1], b0r1[1]],
                    [b0r0[2], b0r1[2], b0r0[3], b0r1[3]],
                    [b1r0[0], b1r1[0], b1r0[1], b1r1[1]],
                    [b1r0[2], b1r1[2], b1r0[3], b1r1[3]],
                ]
            };
            if E::NORM {
                // Rows r0 (words a0, a2) and r1 (a1, a3): the lane's 16 elements of each per k tile.
                for f in a.iter() {
                    ss[0] = add_squares_bf16x4(ss[0], f[0], f[2]);
                    ss[1] = add_squares_bf16x4(ss[1], f[1], f[3]);
                }
            }
            wgmma_fence();
            // SAFETY: the stage's W tile, seen through its full barrier; the warpgroup issues
            // these together with the same descriptors.
            unsafe {
                wgmma_m64n256k16_f32_bf16_rs(&mut acc, a[0], desc_k_sw128(wt, 0), i > 0);
                wgmma_m64n256k16_f32_bf16_rs(&mut acc, a[1], desc_k_sw128(wt, 1), true);
                wgmma_m64n256k16_f32_bf16_rs(&mut acc, a[2], desc_k_sw128(wt, 2), true);
                wgmma_m64n256k16_f32_bf16_rs(&mut acc, a[3], desc_k_sw128(wt, 3), true);
            }
            wgmma_commit_group();
            wgmma_wait_group::<0>(&mut acc);
            if lane_id() == 0 {
                // The warp no longer reads the stage (its loads came before its `wgmma`s, which
                // completed): free it in every CTA its producer's boxes land in.
                for x in 0..place.cx {
                    // SAFETY: an initialized barrier of a running CTA of the cluster (none leaves
                    // before the final cluster barrier).
                    unsafe { mbarrier_arrive_shared_cluster(mapa_shared_cluster(sm.empty(s), place.rank(x, place.z))) };
                }
            }
        }
        if E::NORM {
            // The four lanes `q` of a row hold its k range's sum of squares between them.
            for v in ss.iter_mut() {
                *v += shfl_sync_bfly_f32(*v, 1);
                *v += shfl_sync_bfly_f32(*v, 2);
            }
        }

        // Epilogue: the row scales, then pairs of columns.
        let scales = |ss: [f32; 2]| if E::NORM { ss.map(|v| inv_rms(v, k, eps)) } else { [1.0f32; 2] };
        let n = out.rows();
        let (row0, row1) = (m0 + r0, m0 + r1);
        // 16-column block b: accumulators 8 b ..+ 8 (columns 16 b + 2q, + 1 of both rows, then
        // 16 b + 8 + 2q, + 1).
        let store = |b: u32, a: [f32; 8], sc: [f32; 2]| {
            let c16 = n0 + 16 * b;
            if c16 < n {
                // SAFETY: rows checked against m, c16 < n.
                unsafe {
                    if row0 < m {
                        out.store(row0, c16, q, [a[0] * sc[0], a[1] * sc[0]], [a[4] * sc[0], a[5] * sc[0]]);
                    }
                    if row1 < m {
                        out.store(row1, c16, q, [a[2] * sc[1], a[3] * sc[1]], [a[6] * sc[1], a[7] * sc[1]]);
                    }
                }
            }
        };
        if place.split == 1 {
            let sc = scales(ss);
            // Written out for each block (a macro, not a loop) so that every accumulator index is
            // a constant: a run-time index would move the accumulators to local memory.
            macro_rules! store_all {
                ($($b:literal)*) => {
                    $(store($b, core::array::from_fn(|i| acc[8 * $b + i]), sc);)*
                };
            }
            store_all!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
            continue;
        }

        // A split over K: every CTA of the split puts its partial sums in its stage memory; CTA
        // `z` then adds blocks `z · BLOCKS / split ..+ BLOCKS / split` of all of them, in rank
        // order (the same order in every run), and stores those.
        let u = thread_idx_x() - WG;
        let base = sm.w_tile(0);
        // Both consumer warpgroups are done with the stages (their last `wgmma`s completed, and
        // every box addressed to this CTA has landed: each was awaited) before either overwrites
        // them. SAFETY: the 256 consumer threads, and nothing else uses barrier 1.
        unsafe { bar_sync(1, 2 * WG) };
        let put = |b: u32, h: u32, v: [f32; 4]| {
            // SAFETY: inside the stage memory (`config::wgmma`'s assertion), 16-byte aligned.
            unsafe { st_shared_v4_u32(base.byte_add(partial_offset(b, h, u)).cast(), v.map(f32::to_bits)) }
        };
        macro_rules! put_all {
            ($($b:literal)*) => {
                $(
                    put($b, 0, core::array::from_fn(|i| acc[8 * $b + i]));
                    put($b, 1, core::array::from_fn(|i| acc[8 * $b + 4 + i]));
                )*
            };
        }
        put_all!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        if E::NORM {
            // SAFETY: as `put`.
            unsafe { st_shared_v2_f32(base.byte_add(partial_ss_offset(u)).cast(), ss) };
        }
        // The partial sums of every CTA of the split are visible to all of them.
        // SAFETY: uniform across the cluster (the producers take part too).
        unsafe { barrier_cluster_sync() };
        let peer = |z: u32| mapa_shared_cluster(base, place.rank(place.x, z));
        let mut total = [0.0f32; 2];
        if E::NORM {
            for z in 0..place.split {
                // SAFETY: a running CTA's partial sums, written before the cluster barrier.
                let v = unsafe { ld_shared_cluster_v2_f32(peer(z) + partial_ss_offset(u)) };
                total[0] += v[0];
                total[1] += v[1];
            }
        }
        let sc = scales(total);
        let (first, mine) = split_blocks(place.z, place.split);
        for b in first..first + mine {
            let (mut lo, mut hi) = ([0.0f32; 4], [0.0f32; 4]);
            for z in 0..place.split {
                // SAFETY: as above; 16-byte aligned.
                let (pl, ph) = unsafe {
                    let at = peer(z);
                    (
                        ld_shared_cluster_v4_u32(at + partial_offset(b, 0, u)),
                        ld_shared_cluster_v4_u32(at + partial_offset(b, 1, u)),
                    )
                };
                for i in 0..4 {
                    lo[i] += f32::from_bits(pl[i]);
                    hi[i] += f32::from_bits(ph[i]);
                }
            }
            store(b, [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]], sc);
        }
    }
}
