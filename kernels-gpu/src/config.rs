//! Launch constants shared by the kernels and the host launchers.
//!
//! This module is compiled twice: into the PTX (where the kernels use these numbers for
//! their tiling) and into the host crate (where the launchers derive grid sizes and
//! dynamic shared-memory bytes from them). Nothing here may depend on the target.

/// bf16 elements in one 16-byte vector access (`ld.global.nc.v4.u32`, `cp.async` 16 B).
pub const VEC: u32 = 8;

/// Name of the kernels' dynamic shared-memory symbol (`.extern .shared`).
pub const SMEM_SYMBOL: &str = "NANOFUSE_SMEM";

/// Launch bounds the build adds to kernels' PTX entries (`.maxntid THREADS, 1, 1` and
/// `.minnctapersm MIN_CTAS`, CUDA's `__launch_bounds__`, which rustc does not emit): ptxas
/// then keeps each kernel's registers low enough for `MIN_CTAS` CTAs per SM.
pub const LAUNCH_BOUNDS: [(&str, u32, u32); 23] = [
    ("fused_rmsnorm_qkv_decode", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_qkv_decode_early", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_qkv_decode_early_m8", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("gemm_decode", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("gemm_decode_early", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("gemm_decode_early_m8", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_qkv_decode_ring", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("gemm_decode_ring", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_gate_up_decode", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_gate_up_decode_early", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_gate_up_decode_early_m8", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_gate_up_decode_ring", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("proj_residual_decode", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("proj_residual_decode_early", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("proj_residual_decode_early_m8", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("proj_residual_decode_ring", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_argmax_decode", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_argmax_decode_early", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_argmax_decode_early_m8", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("fused_rmsnorm_argmax_decode_ring", decode::THREADS, decode::MIN_CTAS_PER_SM),
    ("attention_decode", attention::THREADS, attention::MIN_CTAS_PER_SM),
    ("qk_norm_rope", rope::THREADS, 1),
    ("argmax_bf16", argmax::THREADS, 1),
];

/// Launch bounds of the sm_90a module's kernels (see [`LAUNCH_BOUNDS`]): one CTA per SM, which
/// also gives them the register cap at entry that `setmaxnreg` needs.
pub const LAUNCH_BOUNDS_SM90A: [(&str, u32, u32); 4] = [
    ("fused_rmsnorm_qkv_wgmma", wgmma::THREADS, 1),
    ("gemm_wgmma", wgmma::THREADS, 1),
    ("fused_rmsnorm_gate_up_wgmma", wgmma::THREADS, 1),
    ("proj_residual_wgmma", wgmma::THREADS, 1),
];

/// The decode engine's per-sequence device state: `state [LEN]` u32, read and advanced on
/// the device so that one captured CUDA graph replays every step.
pub mod step {
    /// Elements of the state array.
    pub const LEN: usize = 4;
    /// Position of the current step's token (`u32::MAX` before the first step:
    /// `decode_step_begin` adds one, wrapping).
    pub const POS: usize = 0;
    /// Tokens of the prompt buffer to feed: a position below it takes its token from the
    /// prompt, others from the argmax slot.
    pub const PROMPT_LEN: usize = 1;
    /// Error bits the kernels OR in instead of reading or writing out of bounds.
    pub const FLAGS: usize = 2;
    /// The position reached `max_seq`: nothing was written at it.
    pub const FLAG_OVERFLOW: u32 = 1;
    /// A token at or past the vocabulary (or an empty argmax slot): its embedding is zeros.
    pub const FLAG_BAD_TOKEN: u32 = 2;
    /// Threads of `decode_step_begin`'s one CTA.
    pub const THREADS: u32 = 256;
}

/// The argmax slot: one `u64` per token that `atom.global.max.u64` reduces into.
///
/// `key(logit, i) = (ord(bits) << 32) | (u32::MAX - i)`: the largest logit wins, and among
/// equal logits the lowest index (`torch.argmax`). `ord` maps f32 bits to a u32 whose
/// unsigned order is the float order (`-0.0` is taken as `+0.0`). A NaN's key is 0, the
/// empty slot: NaN logits are ignored, and a slot of all-NaN logits stays empty, whose
/// [`argmax::token`] is `u32::MAX` (past any vocabulary: `decode_step_begin` flags it).
pub mod argmax {
    /// Threads per CTA of `argmax_bf16`.
    pub const THREADS: u32 = 256;
    /// Most CTAs of an `argmax_bf16` launch (each thread then takes several 16-byte chunks).
    pub const MAX_CTAS: u32 = 512;
    /// Dynamic shared memory of `argmax_bf16`: one u64 key per warp.
    pub const SMEM_BYTES: u32 = THREADS / 32 * 8;

    /// The order-preserving map of f32 bits to u32 (NaN excluded).
    pub const fn ord(bits: u32) -> u32 {
        let bits = if bits == 0x8000_0000 { 0 } else { bits };
        if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 }
    }

    /// The slot key of f32 `bits` at index `i`; 0 (never chosen) for a NaN.
    pub const fn key(bits: u32, i: u32) -> u64 {
        if bits & 0x7fff_ffff > 0x7f80_0000 {
            return 0;
        }
        ((ord(bits) as u64) << 32) | (u32::MAX - i) as u64
    }

    /// The index a slot holds (`u32::MAX` for the empty slot 0).
    pub const fn token(key: u64) -> u32 {
        u32::MAX - key as u32
    }
}

/// `qk_norm_rope`: one warp per q or k head of one token.
pub mod rope {
    /// Warps (heads) per CTA.
    pub const WARPS: u32 = 4;
    /// Threads per CTA.
    pub const THREADS: u32 = WARPS * 32;
    /// The head dimensions the kernel takes (lane `l` holds `hd / 32` contiguous elements,
    /// its rotate-half partner is lane `l ^ 16`).
    pub const HEAD_DIMS: [u32; 3] = [64, 128, 256];
}

/// `attention_decode`: flash-decoding for one token, the context split across CTAs.
pub mod attention {
    /// Warps per CTA; each takes every `WARPS`-th position of the CTA's chunk.
    pub const WARPS: u32 = 4;
    /// Threads per CTA.
    pub const THREADS: u32 = WARPS * 32;
    /// CTAs per SM the launch bounds ask ptxas to fit.
    pub const MIN_CTAS_PER_SM: u32 = 2;
    /// Positions a warp loads per iteration (K and V rows in flight together).
    pub const UNROLL: u32 = 4;
    /// Fewest positions a split takes: `active = min(splits, ceil(len / MIN_CHUNK))`.
    pub const MIN_CHUNK: u32 = 32;
    /// Splits whose partial `o` the merging CTA loads before using any.
    pub const MERGE_UNROLL: u32 = 4;
    /// Most splits (CTAs per kv head) of a launch.
    pub const MAX_SPLITS: u32 = 64;
    /// Most q heads per kv head.
    pub const MAX_GROUP: u32 = 8;
    /// The head dimensions the kernel takes.
    pub const HEAD_DIMS: [u32; 2] = [64, 128];
    /// The largest of them (shared memory is sized for it).
    pub const MAX_HEAD_DIM: u32 = 128;
    /// f32 per (q head, split) partial: `m`, `l`, then `o [head_dim]` (`ML` floats first so
    /// that `o` stays 16-byte aligned).
    pub const ML: u32 = 4;

    /// Dynamic shared memory: every warp's `(m, l, o)` per q head (`MAX_GROUP` of them),
    /// then the last-CTA flag.
    pub const SMEM_BYTES: u32 = WARPS * MAX_GROUP * (ML + MAX_HEAD_DIM) * 4 + 16;

    /// Splits of a launch over `rows` positions on a device of `sm_count` SMs: about two
    /// CTAs per SM over the rows and kv heads (a prefill chunk of many rows needs fewer
    /// splits of each row's context to fill the GPU), from 1 to `MAX_SPLITS`.
    pub const fn splits(sm_count: u32, num_kv_heads: u32, rows: u32) -> u32 {
        let kv = if num_kv_heads == 0 { 1 } else { num_kv_heads };
        let rows = if rows == 0 { 1 } else { rows };
        let ctas = kv.saturating_mul(rows);
        let s = (2 * sm_count).div_ceil(ctas);
        if s < 1 {
            1
        } else if s > MAX_SPLITS {
            MAX_SPLITS
        } else {
            s
        }
    }

    /// Splits that take positions for a context of `len` positions.
    pub const fn active(splits: u32, len: u32) -> u32 {
        let a = len.div_ceil(MIN_CHUNK);
        let a = if a < splits { a } else { splits };
        if a == 0 { 1 } else { a }
    }
}

/// The k-interleaved order in which the fused op stores its weight (`fold_gain`) and in
/// which `rms_norm_interleaved` writes its output, so that the decode kernel stages x with 16-byte
/// copies (see `qkv_decode`, Tiling).
///
/// Within each whole block of [`interleave::BLOCK`] elements of a row, read as 16 bf16 pairs
/// (words), memory word `4c + j` holds the natural word `4j + c` (`c, j < 4`): the 4 x 4
/// word matrix of the block is transposed. An involution; a partial last block (`K % 32`
/// elements) stays in natural order. A dot product over k is the same in either order (up
/// to the order of the f32 additions), so a GEMM is correct with both operands in the same
/// order; the decode kernel's 16-byte staging wants exactly one of them interleaved.
pub mod interleave {
    /// Elements per interleaved block (the decode kernel's K step).
    pub const BLOCK: u32 = 32;

    /// The natural index of the element stored at index `j` of an interleaved row of `k`
    /// elements (and, the map being an involution, where natural element `j` is stored).
    pub const fn source(j: usize, k: usize) -> usize {
        let block = BLOCK as usize;
        let base = j - j % block;
        if base + block > k {
            return j;
        }
        let (word, half) = ((j % block) / 2, j % 2);
        let (c, p) = (word / 4, word % 4);
        base + 2 * (4 * p + c) + half
    }
}

/// The standalone RMSNorm kernels (`rms_norm`, `rms_norm_interleaved`): one CTA per row.
pub mod rms_norm {
    /// Threads per CTA; each thread owns every 256th 16-byte chunk of the row.
    pub const THREADS: u32 = 256;
    /// Dynamic shared memory: one f32 partial sum per warp, plus the broadcast slot.
    pub const SMEM_BYTES: u32 = (THREADS / 32 + 1) * 4;
}

/// `fold_gain` (`W <- bf16(W · diag(g))`, once per fused op): CTAs stride over rows.
pub mod fold_gain {
    /// Threads per CTA; each thread owns every 256th 16-byte chunk of a row.
    pub const THREADS: u32 = 256;
    /// Most CTAs of a launch.
    pub const MAX_CTAS: u32 = 1024;
}

/// `split_qkv` (packed `y [M, N]` into q, k, v, in the separate-output fallback): CTAs
/// stride over rows.
pub mod split_qkv {
    /// Threads per CTA; each thread owns every 256th 16-byte chunk (or element) of a row.
    pub const THREADS: u32 = 256;
    /// Most CTAs of a launch.
    pub const MAX_CTAS: u32 = 1024;
}

/// `silu_mul` and `residual_add` (the unfused MLP's elementwise kernels).
pub mod elementwise {
    /// Threads per CTA; each thread owns 16-byte chunks.
    pub const THREADS: u32 = 256;
    /// Most CTAs of a launch.
    pub const MAX_CTAS: u32 = 1024;
}

/// The fused MLP's gate/up weight layout: rows in blocks of `2 · GATE_UP_BLOCK`, the
/// block's gate rows, then the up rows of the same intermediate indices, so that a decode
/// warp's 16 rows (`decode::ROWS_PER_WARP`) hold gate and up of the same 8 outputs.
pub mod mlp {
    /// Gate rows (and up rows) per block.
    pub const GATE_UP_BLOCK: u32 = 8;

    const _: () = assert!(2 * GATE_UP_BLOCK == super::decode::ROWS_PER_WARP);

    /// The row of the blocked gate/up weight that holds gate row `j` (`up = false`) or up
    /// row `j` (`up = true`) of the intermediate index `j`.
    pub const fn gate_up_row(j: usize, up: bool) -> usize {
        let b = GATE_UP_BLOCK as usize;
        2 * b * (j / b) + j % b + if up { b } else { 0 }
    }
}

/// The decode (small-M, weight-streaming) kernels `fused_rmsnorm_qkv_decode` and
/// `gemm_decode`.
///
/// The MMA is used "swapped": W rows are the MMA's M (16 per warp tile) and tokens are its N
/// (8 per token tile), so a single token wastes 7/8 of an MMA instead of 15/16.
pub mod decode {
    /// Warps per CTA.
    pub const WARPS: u32 = 8;
    /// Threads per CTA.
    pub const THREADS: u32 = WARPS * 32;
    /// CTAs that must fit on one SM (registers at most 65536 / (2 · 256) = 128 per thread):
    /// the planner counts on two per SM, to request every weight byte in the first wave or
    /// to let the next launch's CTAs start beside this launch's.
    pub const MIN_CTAS_PER_SM: u32 = 2;
    /// W rows per warp tile (the m of `mma.m16n8k16`).
    pub const ROWS_PER_WARP: u32 = 16;
    /// K elements per step: each lane loads 16 bytes of two W rows, which feed two MMAs.
    pub const K_STEP: u32 = 32;
    /// Steps loaded per batch. Two batches live in registers (double buffer): both are
    /// requested before the dependency wait, and then the batch after next is requested as
    /// each batch is multiplied, so a warp keeps up to `2 * UNROLL` KiB of W in flight.
    pub const UNROLL: usize = 4;
    /// Tokens per token tile (the n of `mma.m16n8k16`).
    pub const TOKEN_TILE: u32 = 8;
    /// Token tiles per warp.
    pub const TILES: u32 = 2;
    /// Most tokens the decode kernels take.
    pub const MAX_TOKENS: u32 = TOKEN_TILE * TILES;
    /// Most CTAs along K (the cluster size of the split-K reduction; 8 is the portable
    /// maximum).
    pub const MAX_K_SPLITS: u32 = 8;

    /// The `warp_split` values the kernel accepts: warps of a CTA that share one 16-row
    /// group and split the CTA's K range. The CTA then covers `16 * WARPS / warp_split` W
    /// rows.
    pub const WARP_SPLITS: [u32; 4] = [1, 2, 4, 8];

    const _: () = assert!(WARPS == 8 && K_STEP == 32 && TOKEN_TILE == 8);

    /// W rows one CTA covers for a given `warp_split`.
    pub const fn rows_per_cta(warp_split: u32) -> u32 {
        ROWS_PER_WARP * (WARPS / warp_split)
    }

    /// K elements of x a decode CTA holds in shared memory: its whole K range
    /// (`k_chunk`), or, with the x ring, two phases of `warp_split · UNROLL` steps where
    /// that is less (see `qkv_decode`, X ring).
    pub const fn x_cols(ring: bool, warp_split: u32, k_chunk: u32) -> u32 {
        let two_phases = 2 * warp_split * UNROLL as u32 * K_STEP;
        if ring && two_phases < k_chunk { two_phases } else { k_chunk }
    }

    /// Byte offsets of the decode kernels' dynamic shared memory. Every offset is 16-byte
    /// aligned.
    pub struct SmemLayout {
        /// `tokens` rows of x (in the k order opposite to W's, see `qkv_decode`) for the
        /// CTA's K range, `row_stride` bytes apart.
        pub x: u64,
        pub row_stride: u64,
        /// Partial sums: 4 f32 per token tile per lane of every warp (for the reduction
        /// across the warps of a row group, then across the CTAs of a cluster).
        pub reduce: u64,
        /// Per-warp, per-token sums of squares of x over the warp's K part (`MAX_TOKENS` f32
        /// per warp), added across the warps of a row group.
        pub ss_part: u64,
        /// Per-token sum of squares of x over the CTA's K range (`MAX_TOKENS` f32), read by
        /// the other CTAs of a cluster.
        pub sum_sq: u64,
        pub bytes: u64,
    }

    /// The layout for a CTA holding `tokens` rows of a `k_chunk`-element K range (a
    /// multiple of 32).
    pub const fn smem_layout(tokens: u32, k_chunk: u32) -> SmemLayout {
        let x = 0;
        // 16 bytes of padding: the 8 rows an ldmatrix phase reads hit 8 bank groups.
        let row_stride = k_chunk as u64 * 2 + 16;
        let reduce = x + row_stride * tokens as u64;
        let ss_part = reduce + (WARPS * 32 * TILES * 16) as u64;
        let sum_sq = ss_part + (WARPS * MAX_TOKENS * 4) as u64;
        SmemLayout { x, row_stride, reduce, ss_part, sum_sq, bytes: sum_sq + MAX_TOKENS as u64 * 4 }
    }
}

/// A tile shape of the tiled (prefill) kernels `fused_rmsnorm_qkv_tiled_*` and
/// `gemm_tiled_*`: a CTA computes a `BM x BN` output tile, looping over K in `BK` slices
/// staged through `STAGES` shared-memory buffers by `cp.async`.
pub trait TileConfig {
    /// Output rows (tokens) per CTA.
    const BM: u32;
    /// Output columns (W rows) per CTA.
    const BN: u32;
    /// K elements per stage: 64 bf16 = 128 bytes per tile row = 8 chunks of 16 bytes,
    /// stored with the XOR swizzle `chunk ^ (row % 8)`.
    const BK: u32 = 64;
    /// Warps along M and along N; each warp owns a `BM/WARPS_M x BN/WARPS_N` sub-tile.
    const WARPS_M: u32;
    const WARPS_N: u32;
    /// Shared-memory pipeline depth.
    const STAGES: u32;
    /// Suffix of the kernel names built with this shape.
    const NAME: &'static str;

    /// Threads per CTA.
    const THREADS: u32 = Self::WARPS_M * Self::WARPS_N * 32;
    /// m16 tiles per warp.
    const MI: u32 = Self::BM / Self::WARPS_M / 16;
    /// n8 tiles per warp.
    const NI: u32 = Self::BN / Self::WARPS_N / 8;
    /// Bytes of one stage: the x tile, the W tile, and the BK entries of g.
    const STAGE_BYTES: u32 = (Self::BM + Self::BN) * Self::BK * 2 + Self::BK * 2;
    /// Dynamic shared-memory bytes: the stages plus BM f32 of inv_rms.
    const SMEM_BYTES: u32 = Self::STAGES * Self::STAGE_BYTES + Self::BM * 4;
}

/// 128 x 128 tiles, 8 warps (2 x 4, 64 x 32 each), 3 stages: for large M.
pub struct Large;
impl TileConfig for Large {
    const BM: u32 = 128;
    const BN: u32 = 128;
    const WARPS_M: u32 = 2;
    const WARPS_N: u32 = 4;
    const STAGES: u32 = 3;
    const NAME: &'static str = "large";
}

/// 64 x 64 tiles, 4 warps (2 x 2, 32 x 32 each), 4 stages: for medium M, where 128-wide
/// tiles would leave most SMs idle.
pub struct Small;
impl TileConfig for Small {
    const BM: u32 = 64;
    const BN: u32 = 64;
    const WARPS_M: u32 = 2;
    const WARPS_N: u32 = 2;
    const STAGES: u32 = 4;
    const NAME: &'static str = "small";
}

const fn check_tile<C: TileConfig>() -> bool {
    C::BK == 64
        && C::BM % (16 * C::WARPS_M) == 0
        && C::BN % (16 * C::WARPS_N) == 0 // NI even: B fragments come in ldmatrix.x4 pairs
        && (C::BM * C::BK / 8) % C::THREADS == 0
        && (C::BN * C::BK / 8) % C::THREADS == 0
        && C::THREADS >= C::BK / 8
        && C::STAGES >= 2
}
const _: () = assert!(check_tile::<Large>() && check_tile::<Small>());

/// The prefill kernels on warpgroup MMA and the TMA (`gemm_wgmma`, sm_90a; see that file).
pub mod wgmma {
    /// Tokens per CTA tile (two consumer warpgroups of 64).
    pub const BM: u32 = 128;
    /// W rows per CTA tile (the `wgmma` N).
    pub const BN: u32 = 256;
    /// K elements per tile (128 bytes of bf16: one 128-byte-swizzled row).
    pub const BK: u32 = 64;
    /// Shared-memory stages of the pipeline.
    pub const STAGES: u32 = 4;
    /// The cluster's extent along the token tiles (grid x) where M has two token tiles or
    /// more: the CTAs of a cluster row compute the same W rows for consecutive token tiles,
    /// and each loads `1 / MULTICAST` of every W tile by a TMA multicast into both, so L2
    /// serves each W tile once per pair. With one token tile the extent is 1 and a CTA loads
    /// both halves itself.
    pub const MULTICAST: u32 = 2;
    /// W rows of the TMA box (a CTA's share of a W tile when it multicasts).
    pub const W_BOX_ROWS: u32 = BN / MULTICAST;
    /// Most CTAs a split over K spreads one output tile across (the cluster's extent along
    /// grid z): the partial sums are added through distributed shared memory, each CTA
    /// finishing `BLOCKS / split` of the tile's 16-column blocks.
    pub const SPLIT_MAX: u32 = 8;
    /// 16-column blocks of a CTA tile (the epilogue's unit).
    pub const BLOCKS: u32 = BN / 16;
    /// The largest cluster (`MULTICAST · split`): 8, the portable limit.
    pub const CLUSTER_MAX: u32 = 8;
    /// Bytes of a CTA's partial sums in a split over K: each consumer thread's 128
    /// accumulators, then its two rows' sums of squares, in the stage memory (free by then).
    pub const PARTIAL_BYTES: u32 = 2 * 128 * 128 * 4 + 2 * 128 * 2 * 4;

    /// The shared-memory byte offset (from the stage base) of half `h` (0: accumulators
    /// `8 b ..+ 4`, 1: `8 b + 4 ..+ 4`) of 16-column block `b` of consumer thread `u`
    /// (0..256) in a split over K: a warp's 16-byte stores and loads of one half cover 512
    /// contiguous bytes (no bank conflict), and thread `u` finds its partners' values at its
    /// own offset in every CTA of the split.
    pub const fn partial_offset(b: u32, h: u32, u: u32) -> u32 {
        ((2 * b + h) * 256 + u) * 16
    }

    /// The k tiles of CTA `z` of a split of `split` over `all` k tiles: `(first, count)`,
    /// consecutive ranges of `ceil(all / split)` (the last ones short or empty).
    pub const fn split_k_tiles(z: u32, split: u32, all: u32) -> (u32, u32) {
        let per = all.div_ceil(split);
        let first = if z * per < all { z * per } else { all };
        let end = if first + per < all { first + per } else { all };
        (first, end - first)
    }

    /// Token tiles of a launch's tile walk for `m` tokens in clusters of `cx` along x:
    /// `ceil(m / BM)` rounded up to whole clusters (a tile past M computes zeros and stores
    /// nothing).
    pub const fn token_tiles(m: u32, cx: u32) -> u32 {
        let cx = if cx == 0 { 1 } else { cx };
        m.div_ceil(BM).div_ceil(cx) * cx
    }

    /// Output tile `t` of a launch's walk as `(token tile, W tile)`: token tiles fastest, so
    /// that the tiles in flight at one time (consecutive `t`) share their W tiles in L2.
    pub const fn tile_coords(t: u32, token_tiles: u32) -> (u32, u32) {
        let tx = if token_tiles == 0 { 1 } else { token_tiles };
        (t % tx, t / tx)
    }

    /// The 16-column blocks CTA `z` of a split of `split` finishes: `(first, count)`.
    pub const fn split_blocks(z: u32, split: u32) -> (u32, u32) {
        let count = BLOCKS / split;
        (z * count, count)
    }

    /// The offset of consumer thread `u`'s two sums of squares (rows `r0`, `r1`), after the
    /// accumulators.
    pub const fn partial_ss_offset(u: u32) -> u32 {
        2 * BLOCKS * 256 * 16 + 8 * u
    }
    /// Threads per CTA: a producer warpgroup and two consumer warpgroups.
    pub const THREADS: u32 = 384;
    /// Registers per thread at entry: the launch bounds (384 threads, one CTA per SM) cap
    /// ptxas at `65536 / 384` rounded down to a multiple of 8; the `setmaxnreg` split below
    /// hands out exactly the CTA's `384 · ENTRY_REGS` (the host checks the compiled entries).
    pub const ENTRY_REGS: u32 = 168;
    /// Registers per thread the producer warpgroup keeps (`setmaxnreg.dec`).
    pub const PRODUCER_REGS: u32 = 40;
    /// Registers per thread the consumer warpgroups take (`setmaxnreg.inc`).
    pub const CONSUMER_REGS: u32 = 232;
    /// Bytes of one stage's W tile (`BN x BK` bf16).
    pub const W_TILE_BYTES: u32 = BN * BK * 2;
    /// Bytes of one stage's x tile (`BM x BK` bf16).
    pub const X_TILE_BYTES: u32 = BM * BK * 2;
    /// Bytes of one stage (a multiple of 1024, so every tile stays 1024-byte aligned).
    pub const STAGE_BYTES: u32 = W_TILE_BYTES + X_TILE_BYTES;
    /// Dynamic shared memory: up to 1023 bytes to align the base to 1024, the stages, and a
    /// full and an empty barrier (8 bytes each) per stage.
    pub const SMEM_BYTES: u32 = 1024 + STAGES * STAGE_BYTES + 16 * STAGES;

    /// The `wgmma` matrix descriptor of a K-major tile with 128-byte swizzle at shared
    /// address `base` (1024-byte aligned: base offset 0), at its k16 slice `j` (0..4): bits
    /// 0-13 the start address >> 4 (slice `j` starts `32 j` bytes in), bits 16-29 the leading
    /// byte offset >> 4 (unused with swizzling; 1), bits 32-45 the stride byte offset >> 4
    /// (1024 bytes between 8-row groups), bits 62-63 the layout (1: 128-byte swizzle).
    pub const fn desc_k_sw128(base: u32, j: u32) -> u64 {
        let start = ((base & 0x3_FFFF) >> 4) as u64 + 2 * j as u64;
        start | (1 << 16) | (64 << 32) | (1 << 62)
    }

    /// The byte offset of 16-byte chunk `c` of row `r` in a tile of 128-byte rows with the
    /// 128-byte swizzle (what the TMA writes with `CU_TENSOR_MAP_SWIZZLE_128B` into a
    /// 1024-byte aligned tile, and what the kernel's `cp.async` copies of x write).
    pub const fn swizzled(r: u32, c: u32) -> u32 {
        r * 128 + ((c ^ (r % 8)) * 16)
    }

    /// The two tile rows (tokens) of consumer warpgroup `c` (0 or 1) that its thread `t`
    /// (0..128, within the warpgroup) holds in its A fragments and accumulators: warp `t /
    /// 32` of the warpgroup owns rows `64 c + 16 (t / 32) ..+ 16`, lane group `(t % 32) / 4`
    /// rows `g` and `g + 8` of those.
    pub const fn consumer_rows(c: u32, t: u32) -> (u32, u32) {
        let r0 = 64 * c + 16 * (t / 32) + (t % 32) / 4;
        (r0, r0 + 8)
    }

    const _: () = assert!(STAGE_BYTES.is_multiple_of(1024));
    // Each CTA's share of a W tile starts on a swizzle period (8 rows of 128 bytes).
    const _: () = assert!(BN.is_multiple_of(MULTICAST) && W_BOX_ROWS.is_multiple_of(8));
    const _: () = assert!(MULTICAST * (SPLIT_MAX / 2) <= CLUSTER_MAX && SPLIT_MAX <= CLUSTER_MAX);
    const _: () = assert!(BLOCKS.is_multiple_of(SPLIT_MAX));
    // The partial sums fit in the stages they overwrite.
    const _: () = assert!(partial_ss_offset(256) <= STAGES * STAGE_BYTES && PARTIAL_BYTES == partial_ss_offset(256));
    // An H100's opt-in maximum of dynamic shared memory per CTA (227 KiB).
    const _: () = assert!(SMEM_BYTES <= 227 * 1024);
    const _: () = assert!(PRODUCER_REGS * 128 + 2 * CONSUMER_REGS * 128 == ENTRY_REGS * THREADS);
    const _: () = assert!(ENTRY_REGS * THREADS <= 65536 && (ENTRY_REGS + 8) * THREADS > 65536);
}
