//! Launch planning: which kernel and which launch shape for a problem size. Pure functions
//! of the shape and the device's properties, so they are tested on the CPU.

use nanofuse_kernels_gpu::config::{self, TileConfig, decode};

use crate::error::{Error, Result};

/// The largest M the decode kernels serve (8 token tiles of 8).
pub const DECODE_MAX_M: usize = decode::MAX_TOKENS as usize;

/// Largest value of M, K or N the kernels' 32-bit index arithmetic accepts.
pub const MAX_DIM: usize = i32::MAX as usize;

/// Largest grid y (CUDA's limit).
const MAX_GRID_Y: u64 = 65_535;

/// Most CTAs the K dimension is split over.
pub const MAX_K_SPLITS: u32 = 8;

/// How the decode kernels are launched for one problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    /// Token tiles of the kernel variant: 2 (M <= 16) or 8 (M <= 64).
    pub tiles: u32,
    /// Warps that split one 16-row group's K range (1, 2, 4 or 8).
    pub warp_split: u32,
    /// K elements per CTA (a multiple of 32).
    pub k_chunk: u32,
    /// Grid (k_splits, row_tiles).
    pub grid: (u32, u32),
    /// Dynamic shared-memory bytes.
    pub smem_bytes: u32,
    /// f32 of split-K workspace the launch needs (0 when `k_splits == 1`).
    pub workspace_floats: u64,
}

impl DecodePlan {
    pub fn k_splits(&self) -> u32 {
        self.grid.0
    }
    pub fn row_tiles(&self) -> u32 {
        self.grid.1
    }
}

/// A forced decode launch shape, for benchmark sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    pub warp_split: u32,
    pub k_splits: u32,
}

/// Shared memory per SM the planner assumes is available to CTAs (H100: 228 KiB).
const SMEM_PER_SM: u64 = 228 * 1024;

/// Plans the decode kernel for `x [m, k] · W [n, k]ᵀ`, `1 <= m <= 64`.
///
/// Without `force`, it scores every (warp_split, k_splits) that fits: W bytes plus the
/// redundant x reads (each row tile reads all of x) plus the split-K workspace traffic,
/// divided by how full the last wave of CTAs is (2 resident CTAs per SM where shared memory
/// allows), and takes the cheapest.
pub fn decode_plan(
    m: usize,
    k: usize,
    n: usize,
    sm_count: u32,
    max_smem: u32,
    force: Option<DecodeShape>,
) -> Result<DecodePlan> {
    check_dims(m, k, n)?;
    if m == 0 || m > DECODE_MAX_M {
        return Err(Error::Dimension { arg: "M", expected: "1..=64 for the decode kernel", got: m });
    }
    let tiles = if m <= (decode::TILES_SMALL * decode::TOKEN_TILE) as usize {
        decode::TILES_SMALL
    } else {
        decode::TILES_LARGE
    };
    let make = |warp_split: u32, k_splits: u32| -> Option<DecodePlan> {
        let k_chunk = (k.div_ceil(k_splits as usize).div_ceil(32) * 32) as u32;
        if (k_splits as usize - 1) * k_chunk as usize >= k {
            return None; // an empty K slice
        }
        let smem = decode::smem_layout(tiles, m as u32, k_chunk).bytes;
        let row_tiles = n.div_ceil(decode::rows_per_cta(warp_split) as usize) as u64;
        if smem > max_smem as u64 || row_tiles > MAX_GRID_Y {
            return None;
        }
        let workspace_floats =
            if k_splits > 1 { decode::workspace_floats(k_splits, row_tiles as u32, tiles, warp_split) } else { 0 };
        Some(DecodePlan {
            tiles,
            warp_split,
            k_chunk,
            grid: (k_splits, row_tiles as u32),
            smem_bytes: smem as u32,
            workspace_floats,
        })
    };
    if let Some(f) = force {
        if !decode::WARP_SPLITS.contains(&f.warp_split) || f.k_splits == 0 || f.k_splits > MAX_K_SPLITS {
            return Err(Error::Dimension {
                arg: "decode shape",
                expected: "warp_split in 1,2,4,8; k_splits in 1..=8",
                got: f.k_splits as usize,
            });
        }
        return make(f.warp_split, f.k_splits).ok_or(Error::TooLarge {
            arg: "K",
            got: k as u64,
            limit: (f.k_splits as u64) * max_decode_k(max_smem, tiles, m) as u64,
            why: "the forced decode shape does not fit (empty K slice or shared memory)",
        });
    }
    let cost = |p: &DecodePlan| {
        let per_sm = (SMEM_PER_SM / p.smem_bytes.max(1) as u64).clamp(1, 2);
        let slots = sm_count.max(1) as u64 * per_sm;
        let ctas = p.k_splits() as u64 * p.row_tiles() as u64;
        let fill = ctas as f64 / (ctas.div_ceil(slots) * slots) as f64;
        let w_bytes = 2.0 * n as f64 * k as f64;
        let x_bytes = p.row_tiles() as f64 * 2.0 * m as f64 * k as f64;
        let ws_bytes = 8.0 * p.workspace_floats as f64;
        (w_bytes + 0.3 * x_bytes + ws_bytes) / fill
    };
    let mut best: Option<(f64, DecodePlan)> = None;
    for ws in decode::WARP_SPLITS {
        for ks in 1..=MAX_K_SPLITS {
            if let Some(p) = make(ws, ks) {
                let c = cost(&p);
                if best.is_none_or(|(bc, _)| c < bc) {
                    best = Some((c, p));
                }
            }
        }
    }
    best.map(|(_, p)| p).ok_or(Error::TooLarge {
        arg: "K",
        got: k as u64,
        limit: MAX_K_SPLITS as u64 * max_decode_k(max_smem, tiles, m) as u64,
        why: "the decode kernel's K slices must fit in shared memory",
    })
}

/// Largest K slice one decode CTA can hold for `m` tokens.
pub fn max_decode_k(max_smem: u32, tiles: u32, m: usize) -> usize {
    let fixed = decode::smem_layout(tiles, m as u32, 0).bytes;
    // Per K element: 2 bytes of g and 2 per token row.
    ((max_smem as u64).saturating_sub(fixed) / (2 + 2 * m as u64)) as usize / 32 * 32
}

/// f32 of decode workspace enough for any plan of a problem with `n` W rows, and the
/// number of row-tile counters.
pub fn decode_workspace_bound(n: usize) -> (u64, usize) {
    let row_tiles = n.div_ceil(decode::ROWS_PER_WARP as usize) as u64;
    let rows_padded = (n as u64).div_ceil(128) * 128;
    let tokens = decode::MAX_TOKENS as u64;
    let floats = MAX_K_SPLITS as u64 * tokens * rows_padded + MAX_K_SPLITS as u64 * row_tiles * tokens;
    (floats, row_tiles as usize)
}

/// The tiled kernels' tile shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 128 x 128, 8 warps.
    Large,
    /// 64 x 64, 4 warps.
    Small,
}

/// A tiled-kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TiledPlan {
    pub tile: Tile,
    pub grid: (u32, u32),
    pub block: u32,
    pub smem_bytes: u32,
}

impl Tile {
    /// (BM, BN, threads, shared-memory bytes) of the shape.
    pub fn dims(self) -> (u32, u32, u32, u32) {
        fn of<C: TileConfig>() -> (u32, u32, u32, u32) {
            (C::BM, C::BN, C::THREADS, C::SMEM_BYTES)
        }
        match self {
            Tile::Large => of::<config::Large>(),
            Tile::Small => of::<config::Small>(),
        }
    }
}

/// Plans the tiled kernel: large tiles when they alone give every SM a CTA, else small.
/// `tile` forces a shape (benchmark sweeps).
pub fn tiled_plan(m: usize, k: usize, n: usize, sm_count: u32, tile: Option<Tile>) -> Result<TiledPlan> {
    check_dims(m, k, n)?;
    let ctas = |t: Tile| {
        let (bm, bn, _, _) = t.dims();
        m.div_ceil(bm as usize) * n.div_ceil(bn as usize)
    };
    let tile = tile.unwrap_or(if ctas(Tile::Large) >= sm_count as usize { Tile::Large } else { Tile::Small });
    let (bm, bn, block, smem_bytes) = tile.dims();
    let grid_y = n.div_ceil(bn as usize) as u64;
    if grid_y > MAX_GRID_Y {
        return Err(Error::TooLarge {
            arg: "N",
            got: n as u64,
            limit: MAX_GRID_Y * bn as u64,
            why: "grid y of the tiled kernel",
        });
    }
    Ok(TiledPlan { tile, grid: (m.div_ceil(bm as usize) as u32, grid_y as u32), block, smem_bytes })
}

/// M, K and N within the kernels' index range; K a positive multiple of 8; N positive.
pub fn check_dims(m: usize, k: usize, n: usize) -> Result<()> {
    if k == 0 || k % config::VEC as usize != 0 {
        return Err(Error::Dimension { arg: "K", expected: "a positive multiple of 8", got: k });
    }
    if n == 0 {
        return Err(Error::Dimension { arg: "N", expected: "positive", got: n });
    }
    for (arg, v) in [("M", m), ("K", k), ("N", n)] {
        if v > MAX_DIM {
            return Err(Error::TooLarge { arg, got: v as u64, limit: MAX_DIM as u64, why: "32-bit index arithmetic" });
        }
    }
    Ok(())
}

/// `a * b`, or a `TooLarge` error naming `arg` when it overflows.
pub fn checked_len(arg: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::TooLarge {
        arg,
        got: u64::MAX,
        limit: usize::MAX as u64,
        why: "element count overflows",
    })
}
