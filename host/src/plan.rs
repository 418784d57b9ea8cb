//! Launch planning: which kernel and which launch shape for a problem size. Pure functions
//! of the shape and the device's properties, so they are tested on the CPU.

use nanofuse_kernels_gpu::config::{self, TileConfig, decode};

// The dimension checks the planners run, public here since before `check` gathered them.
pub use crate::check::{MAX_DIM, check_dims, checked_len};
use crate::error::{Error, Result};

/// The largest M the decode kernel serves (two token tiles of 8).
pub const DECODE_MAX_M: usize = decode::MAX_TOKENS as usize;
const DECODE_M_RANGE: &str = "1..=16 for the decode kernel";
const _: () = assert!(DECODE_MAX_M == 16, "update DECODE_M_RANGE");

/// Largest grid y (CUDA's limit).
const MAX_GRID_Y: u64 = 65_535;

/// How the decode kernels are launched for one problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    /// Warps that split one 16-row group's K range (1, 2, 4 or 8).
    pub warp_split: u32,
    /// K elements per CTA (a multiple of 32).
    pub k_chunk: u32,
    /// Whether each warp requests its first two W batches (not one) before waiting for the
    /// previous kernel (the `*_early` kernels): when that is all of the warp's K part, so
    /// every weight byte of the CTA is requested before the wait, or, at M <= 8, when a
    /// warp has at most 32 K steps in a one-wave grid (see `decode_plan`'s rules). Elsewhere
    /// one batch measured faster (docs/RESULTS.md).
    pub early: bool,
    /// Token tiles of 8 the kernel entry handles: 1 (the `*_early_m8` entries) for the
    /// `*_early` kernels at M <= 8, else 2. The one-tile form is faster for the `_early`
    /// entries and was slower for the plain ones, which therefore have only the two-tile
    /// form.
    pub token_tiles: u32,
    /// Whether x goes through the two-phase ring in shared memory (the `*_ring` entries)
    /// instead of being staged whole for the CTA's K range.
    pub ring: bool,
    /// Whether the fused kernel lets the next kernel launch (`griddepcontrol.launch_dependents`)
    /// before its W loads rather than after them: at M = 1, and at M <= 8 where the `*_early`
    /// entry requests every weight byte before the dependency wait (see `decode_plan`'s
    /// rules). The plain GEMM triggers first only at M = 1 (`gemm_trigger_first`).
    pub trigger_first: bool,
    /// The same for the plain decode GEMM (baseline (b)): at M = 1 only; triggering first
    /// from M = 2 made it slower.
    pub gemm_trigger_first: bool,
    /// Grid (k_splits, row_tiles); the k_splits CTAs of a row tile form a cluster.
    pub grid: (u32, u32),
    /// Dynamic shared-memory bytes.
    pub smem_bytes: u32,
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
    /// Force the `*_early` entries on or off; `None`: the planner's rule.
    pub early: Option<bool>,
    /// Force the fused kernel's trigger before (`true`) or after its W loads;
    /// `None`: the planner's rule (`DecodePlan::trigger_first`).
    pub trigger_first: Option<bool>,
    /// Force the x ring on or off; `None`: the planner's rule.
    pub ring: Option<bool>,
}

/// Largest M at which the fused decode kernel may trigger the next launch before its W loads
/// (`DecodePlan::trigger_first`).
const TRIGGER_FIRST_MAX_M: usize = 8;

/// Shared memory two decode CTAs may take on one SM, the driver's 1 KiB per CTA included.
///
/// An SM's shared memory and L1 share one array (H100: 256 KiB). The driver sets the
/// shared part (the carve-out) to the smallest of its sizes (H100: 0, 8, 16, 32, 64, 100,
/// 132, 164, 196 or 228 KiB) that holds the resident CTAs; the rest is L1. The decode
/// kernel's W loads, though `L1::no_allocate`, appear to pass through L1 on their way to
/// registers, so a smaller L1 holds fewer bytes in flight: padding only the dynamic shared
/// memory of one launch shape (same grid, same code) past a 164 KiB carve-out made it
/// slower, the more the larger the carve-out, and without this bound the planner picked
/// such shapes at some M and fell behind cuBLAS there (docs/RESULTS.md).
const DECODE_SMEM_PER_SM: u64 = 164 * 1024;

/// Largest M at which the planner shortens each warp's K part past two CTAs per SM (see its
/// rules).
const SHORT_WARPS_MAX_M: usize = 7;

/// K steps per warp above which the planner prefers more, shorter CTAs (see its rules).
const LONG_WARP_STEPS: u32 = 32;

/// Plans the decode kernel for `x [m, k] · W [n, k]ᵀ`, `1 <= m <= 16`.
///
/// Without `force`, it applies the rules below, which were fitted to measured sweeps.
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
        return Err(Error::Dimension { arg: "M", expected: DECODE_M_RANGE, got: m });
    }
    // Each warp's K part within the two W batches the prologue can request: then the
    // `*_early` entries request all of the warp's W before the dependency wait.
    let fits_prologue =
        |warp_split: u32, k_chunk: u32| (k_chunk / decode::K_STEP).div_ceil(warp_split) <= 2 * decode::UNROLL as u32;
    let token_tiles = |early: bool| if early && m <= decode::TOKEN_TILE as usize { 1 } else { 2 };
    let sms = sm_count.max(1) as u64;
    // `early`: `Some` forces the `*_early` entries on or off; `None` applies the rule.
    let make = |warp_split: u32,
                k_splits: u32,
                early: Option<bool>,
                trigger: Option<bool>,
                ring: Option<bool>|
     -> Result<DecodePlan, Misfit> {
        let ring = ring.unwrap_or(false);
        // The ring has no `*_early` form.
        let early = if ring { Some(false) } else { early };
        let k_chunk = (k.div_ceil(k_splits as usize).div_ceil(32) * 32) as u32;
        if (k_splits as usize - 1) * k_chunk as usize >= k {
            return Err(Misfit::EmptySlice);
        }
        let smem = decode::smem_layout(m as u32, decode::x_cols(ring, warp_split, k_chunk)).bytes;
        let row_tiles = n.div_ceil(decode::rows_per_cta(warp_split) as usize) as u64;
        if row_tiles > MAX_GRID_Y {
            return Err(Misfit::Grid);
        }
        if smem > max_smem as u64 {
            return Err(Misfit::Smem);
        }
        let ctas = row_tiles * k_splits as u64;
        let whole_part = fits_prologue(warp_split, k_chunk);
        // The `*_early` entries: where they request all of a warp's W before the wait, and,
        // in their one-tile form, where a warp has at most 32 steps in a one-wave grid.
        let steps = (k_chunk / decode::K_STEP).div_ceil(warp_split);
        let early = early
            .unwrap_or(whole_part || (m <= decode::TOKEN_TILE as usize && steps <= LONG_WARP_STEPS && ctas <= 2 * sms));
        // Every W byte of the CTA requested before the dependency wait.
        let all_before_wait = early && whole_part;
        Ok(DecodePlan {
            warp_split,
            k_chunk,
            early,
            token_tiles: if ring { 2 } else { token_tiles(early) },
            ring,
            trigger_first: trigger.unwrap_or(m == 1 || (m <= TRIGGER_FIRST_MAX_M && all_before_wait)),
            gemm_trigger_first: m == 1,
            grid: (k_splits, row_tiles as u32),
            smem_bytes: smem as u32,
        })
    };
    if let Some(f) = force {
        if !decode::WARP_SPLITS.contains(&f.warp_split) || f.k_splits == 0 || f.k_splits > decode::MAX_K_SPLITS {
            return Err(Error::Value {
                arg: "decode shape",
                expected: "warp_split in 1, 2, 4, 8 and k_splits in 1..=8",
                got: format!("warp_split {} k_splits {}", f.warp_split, f.k_splits),
            });
        }
        return make(f.warp_split, f.k_splits, f.early, f.trigger_first, f.ring).map_err(|misfit| match misfit {
            Misfit::EmptySlice => Error::Value {
                arg: "k_splits",
                expected: "a K split that leaves every CTA a part of K (the parts are whole 32-element steps)",
                got: format!("{} for K = {k}", f.k_splits),
            },
            Misfit::Grid => grid_error(
                n,
                f.warp_split,
                "the decode grid's y holds 65,535 row tiles of 128 / warp_split rows, here of the forced warp split",
            ),
            Misfit::Smem => Error::TooLarge {
                arg: "K",
                got: k as u64,
                limit: (f.k_splits as u64) * max_decode_k(max_smem, m) as u64,
                why: "the forced decode shape's K slice does not fit in shared memory",
            },
        });
    }
    // N past the grid even with the most rows per CTA (one warp per row group): no K split
    // or x ring helps.
    if n.div_ceil(decode::rows_per_cta(1) as usize) as u64 > MAX_GRID_Y {
        return Err(grid_error(n, 1, "the decode grid's y holds 65,535 row tiles of at most 128 rows"));
    }
    // Rules fitted to the H100 sweeps of `nanofuse tune` (docs/RESULTS.md):
    // * K is not split across CTAs. Two CTAs must share an SM (the grid is sized for two
    //   CTAs per SM, and consecutive launches overlap through the second slot) within
    //   `DECODE_SMEM_PER_SM`, which leaves the SM a large L1: where the M rows of x for the
    //   whole K range do not fit that, x goes through the ring (`DecodePlan::ring`) instead
    //   of staying whole; splitting K across a cluster there instead was slower.
    // * warps per row group: if some split gives at most one CTA per SM and leaves each
    //   warp at most the two W batches the prologue requests, the most warps per row group
    //   among those: every weight byte is requested before the dependency wait and the
    //   next launch's CTAs fit beside this one's, so consecutive ops overlap; otherwise the
    //   most warps per row group (fewest rows per CTA) that keeps the grid within two CTAs
    //   per SM, so every weight byte is requested in the first wave; otherwise the fewest
    //   that leave each warp at most 32 steps (more, shorter CTAs beat fewer, longer ones).
    // * at M <= 7 (`SHORT_WARPS_MAX_M`), more warps per row group if a warp would have
    //   more than 32 steps (1,024 elements of K), even past two CTAs per SM: more, shorter
    //   CTAs. Past that every CTA's copy of x costs more than the shorter CTAs save.
    // * the `*_early` entries wherever each warp's K part fits the two prologue batches
    //   (`fits_prologue`), and at M <= 8 (their one-tile form) wherever a warp has at most
    //   32 steps and the grid fits two CTAs per SM (on larger grids they were slower).
    // * the trigger before the W loads (`DecodePlan::trigger_first`) at M = 1, and at
    //   M = 2-8 where every warp requests all its W before the wait; not where warps still
    //   load W after the wait (the gain was mixed there), nor at M = 9-16 (slower).
    // Whatever the rule picks must fit (shared memory, grid); otherwise the next candidate.
    // Shared memory per SM is the per-CTA opt-in maximum plus the 1 KiB the driver
    // reserves per CTA (H100: 227 + 1 KiB); two CTAs each pay the reservation, and they
    // take at most `DECODE_SMEM_PER_SM` together.
    let half_sm_smem = ((max_smem as u64).saturating_sub(1024) / 2).min(DECODE_SMEM_PER_SM / 2 - 1024);
    let whole_k = (k.div_ceil(32) * 32) as u32;
    let ring = decode::smem_layout(m as u32, whole_k).bytes > half_sm_smem;
    let ctas = |ws: u32| n.div_ceil(decode::rows_per_cta(ws) as usize) as u64;
    // Fewest warps per row group that leave each warp at most LONG_WARP_STEPS steps.
    let short_warps =
        [1, 2, 4, 8].into_iter().find(|&ws| (whole_k / decode::K_STEP).div_ceil(ws) <= LONG_WARP_STEPS).unwrap_or(8);
    let ws = [8, 4, 2, 1]
        .into_iter()
        .find(|&ws| ctas(ws) <= sms && fits_prologue(ws, whole_k))
        .or_else(|| [8, 4, 2, 1].into_iter().find(|&ws| ctas(ws) <= 2 * sms))
        .unwrap_or(short_warps);
    let ws = if m <= SHORT_WARPS_MAX_M { ws.max(short_warps) } else { ws };
    // The rule's choice, then fallbacks (a device with less shared memory): the ring with the
    // fewest rows per CTA, then larger K splits. An iterator, not a list: this runs on every
    // forward call.
    let mut candidates =
        [(ws, 1, ring), (1, 1, true)].into_iter().chain((1..=decode::MAX_K_SPLITS).map(|ks| (1, ks, false)));
    candidates.find_map(|(ws, ks, ring)| make(ws, ks, None, None, Some(ring)).ok()).ok_or(Error::TooLarge {
        arg: "K",
        got: k as u64,
        limit: decode::MAX_K_SPLITS as u64 * max_decode_k(max_smem, m) as u64,
        why: "the decode kernel's K slices must fit in shared memory",
    })
}

/// Why a decode launch shape does not fit a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Misfit {
    /// A K split past the K range: the last CTA's slice would be empty.
    EmptySlice,
    /// More row tiles than grid y holds.
    Grid,
    /// The x staging of the K slice past the shared memory of one CTA.
    Smem,
}

/// N past the decode grid: at most [`MAX_GRID_Y`] row tiles of `rows_per_cta(warp_split)`.
fn grid_error(n: usize, warp_split: u32, why: &'static str) -> Error {
    Error::TooLarge { arg: "N", got: n as u64, limit: MAX_GRID_Y * decode::rows_per_cta(warp_split) as u64, why }
}

/// Largest K slice one decode CTA can hold for `m` tokens.
pub fn max_decode_k(max_smem: u32, m: usize) -> usize {
    let m = m.max(1) as u64;
    let fixed = decode::smem_layout(u32::try_from(m).unwrap_or(u32::MAX), 0).bytes;
    // Per K element: 2 bytes per token row.
    ((max_smem as u64).saturating_sub(fixed) / m.saturating_mul(2)) as usize / 32 * 32
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

#[cfg(test)]
mod tests {
    use super::*;

    /// H100: 132 SMs, 227 KiB of shared memory per CTA.
    const SMS: u32 = 132;
    const SMEM: u32 = 227 << 10;

    fn forced(warp_split: u32, k_splits: u32) -> DecodeShape {
        DecodeShape { warp_split, k_splits, early: None, trigger_first: None, ring: None }
    }

    #[test]
    fn n_past_the_decode_grid_is_named_as_n() {
        // 65,535 row tiles of 128 rows (one warp per row group) is the most the grid holds.
        let limit = MAX_GRID_Y * decode::rows_per_cta(1) as u64;
        assert_eq!(limit, 8_388_480);
        for m in [1, 16] {
            let e = decode_plan(m, 64, limit as usize + 1, SMS, SMEM, None).unwrap_err();
            assert!(matches!(e, Error::TooLarge { arg: "N", got: 8_388_481, limit: 8_388_480, .. }), "M = {m}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains("`N` = 8388481") && msg.contains("65,535 row tiles"), "{msg}");
            assert!(!msg.contains("`K`"), "{msg}");
            decode_plan(m, 64, limit as usize, SMS, SMEM, None).unwrap();
        }
        // A forced warp split names its own limit: 8 warps per row group, 16 rows per CTA.
        let e = decode_plan(1, 64, 65_535 * 16 + 1, SMS, SMEM, Some(forced(8, 1))).unwrap_err();
        assert!(matches!(e, Error::TooLarge { arg: "N", limit: 1_048_560, .. }), "{e:?}");
        decode_plan(1, 64, 65_535 * 16, SMS, SMEM, Some(forced(8, 1))).unwrap();
    }

    #[test]
    fn a_forced_split_with_an_empty_k_slice_names_the_split() {
        // K = 8 over two CTAs: the slices are whole 32-element steps, the second is empty.
        let e = decode_plan(1, 8, 64, SMS, SMEM, Some(forced(1, 2))).unwrap_err();
        assert!(matches!(&e, Error::Value { arg: "k_splits", got, .. } if got == "2 for K = 8"), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("`k_splits` = 2 for K = 8") && !msg.contains("too large"), "{msg}");
        // Emptiness is not monotone in the split: K = 104 leaves an empty slice over 3 CTAs
        // (slices of 64) but not over 4 (slices of 32), so there is no "at most" to state.
        let e = decode_plan(1, 104, 64, SMS, SMEM, Some(forced(1, 3)));
        assert!(matches!(e, Err(Error::Value { arg: "k_splits", .. })), "{e:?}");
        decode_plan(1, 104, 64, SMS, SMEM, Some(forced(1, 4))).unwrap();
        decode_plan(1, 8, 64, SMS, SMEM, Some(forced(1, 1))).unwrap();
    }

    #[test]
    fn k_past_shared_memory_is_still_named_as_k() {
        let limit = decode::MAX_K_SPLITS as usize * max_decode_k(SMEM, 16);
        let k = (limit + 32).div_ceil(8) * 8;
        let e = decode_plan(16, k, 64, SMS, SMEM, None);
        // The ring holds any K in one CTA; a device with a small shared memory does not.
        assert!(e.is_ok(), "{e:?}");
        let small = 64 << 10;
        let k = decode::MAX_K_SPLITS as usize * max_decode_k(small, 16) + 64;
        let e = decode_plan(16, k, 64, SMS, small, Some(forced(1, 8))).unwrap_err();
        assert!(matches!(e, Error::TooLarge { arg: "K", .. }), "{e:?}");
    }
}
