//! The sm_90a module: the prefill kernels on warpgroup MMA (`kernels-gpu/src/gemm_wgmma.rs`),
//! their launchers, and the tensor map through which the TMA reads a weight.
//!
//! The module is optional: it exists only on devices of compute capability 9.0 (H100,
//! H200), where `wgmma` runs, and only when the build produced it (`build.rs`: for sm_90 and
//! sm_90a builds). [`Gpu::wgmma`](crate::Gpu) is `None` elsewhere, and the ops route
//! around it.

use std::sync::Arc;

use cudarc::driver::sys::{
    self, CUdevice_attribute, CUfunction_attribute, CUlaunchAttributeID, CUtensorMap, CUtensorMapDataType,
    CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nvrtc::Ptx;
use nanofuse_kernels_gpu::config::wgmma::{
    BK, BM, BN, CLUSTER_MAX, ENTRY_REGS, MULTICAST, SMEM_BYTES, SPLIT_MAX, THREADS, W_BOX_ROWS, token_tiles,
};

use crate::current::Current;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{Operands, QkvOut};
use crate::launch::{Entry, Launch, Shape};

const PTR: usize = 8;
const SCALAR: usize = 4;
const FUSED: &[usize] = &[PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const GEMM: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR];
const GATE_UP: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR];
const PROJ: &[usize] = &[PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR];

/// The entries of the sm_90a module: PTX name and parameter sizes (checked against the
/// PTX by `tests/ptx.rs`).
pub const WGMMA_ENTRIES: [(&str, &[usize]); 4] = [
    ("fused_rmsnorm_qkv_wgmma", FUSED),
    ("gemm_wgmma", GEMM),
    ("fused_rmsnorm_gate_up_wgmma", GATE_UP),
    ("proj_residual_wgmma", PROJ),
];

/// Largest M of a launch (the kernels index tokens in 32 bits).
pub(crate) const WGMMA_MAX_M: usize = i32::MAX as usize;

/// Most output tiles of a launch (grid x holds one CTA per tile without a persistent walk).
pub(crate) const WGMMA_MAX_TILES: u32 = i32::MAX as u32;

/// A forced launch shape of the warpgroup-MMA route, for tests and sweeps; a `None` field
/// leaves that choice to the launcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgmmaShape {
    /// The split over K: 1, 2, 4 or 8 CTAs per output tile, at most 4 with CTA pairs (a
    /// cluster holds at most 8 CTAs); a split the device cannot run is a typed error at
    /// launch. `None`: the launcher splits where the output tiles leave SMs idle.
    pub split: Option<u32>,
    /// Whether the CTAs of consecutive token tiles run in pairs that share each W tile by
    /// a TMA multicast (with one token tile there is nothing to pair, and the CTA runs
    /// alone either way). `None`: [`AUTO_PAIRS`].
    pub pairs: Option<bool>,
    /// The CTAs of the launch, each walking the output tiles `b, b + ctas, …` (token tiles
    /// fastest) with its pipeline running on from one tile into the next: at least 1, at
    /// most the tiles (more are cut to that; as many as the tiles is one tile per CTA),
    /// only without a split and without pairs. Forcing it forces split 1 where `split` is
    /// `None`; with pairs or another split it is a typed error. `None`: one CTA per SM
    /// ([`AUTO_PERSISTENT`]) where the launcher neither splits nor pairs, else one per tile.
    pub ctas: Option<u32>,
}

/// Whether the launcher runs at most one CTA per SM, each walking several output tiles,
/// where it neither splits nor pairs (else one CTA per tile).
pub const AUTO_PERSISTENT: bool = true;

/// Tokens per output tile of the warpgroup-MMA kernels (one token tile; a launch pairs CTAs
/// only with more tokens than this).
pub const WGMMA_TOKEN_TILE: usize = BM as usize;

/// Whether the launcher pairs CTAs by default (where M has two token tiles or more). Off:
/// measured on the H100 (`nanofuse tune`, M = 256-2048, the four QKV shapes), the pairs
/// were slower than single CTAs nearly everywhere; the tile order already lets the
/// resident CTAs share W tiles in L2, and pairs cap the split at 4 and need clusters.
pub const AUTO_PAIRS: bool = false;

/// Fewest k tiles a CTA of a split over K gets: below two, the pipeline has nothing to
/// overlap and the partial sums' exchange costs more than the split gains.
const MIN_K_TILES_PER_CTA: u32 = 2;

/// The split over K for `tiles` output tiles (CTAs without a split) in clusters of `cx`
/// along x, over `k_tiles` k tiles, on `sms` SMs: the largest of 8, 4, 2 whose CTAs all
/// run at once (at most `sms` of them, and no more clusters than `max_clusters(cx, split)`
/// can be resident), within the portable cluster size, with at least
/// [`MIN_K_TILES_PER_CTA`] k tiles per CTA. A split fills the SMs that a few output
/// tiles (small M) leave idle, while the op is bound by reading W.
///
/// Where even the tiles alone take more than one wave, a split of 2 where it cuts the
/// waves' work by at least a fifth ([`WAVE_GAIN`]): the last wave of whole tiles runs
/// mostly idle SMs (Llama-3-70B at M = 512: 160 tiles on 132 SMs are two waves of whole
/// tiles, or three of half tiles, 1.5 tiles' time). Larger splits over several waves
/// measured slower: their clusters of 4 and 8 leave SMs idle between waves. Else 1.
pub(crate) fn split_k(cx: u32, tiles: u32, k_tiles: u32, sms: u32, max_clusters: impl Fn(u32, u32) -> u32) -> u32 {
    let allowed = |split: u32| cx * split <= CLUSTER_MAX && k_tiles >= MIN_K_TILES_PER_CTA * split;
    let mut split = SPLIT_MAX;
    while split > 1 {
        let fits =
            allowed(split) && tiles.saturating_mul(split) <= sms && tiles.div_ceil(cx) <= max_clusters(cx, split);
        if fits {
            return split;
        }
        split /= 2;
    }
    if tiles > sms && allowed(2) {
        // Resident CTAs of a split of 2: whole clusters, at most one per SM.
        let slots = max_clusters(cx, 2).saturating_mul(2 * cx).min(sms);
        if slots > 0 {
            let (whole, halves) = (tiles.div_ceil(sms), tiles.saturating_mul(2).div_ceil(slots));
            // halves / 2 <= (1 - WAVE_GAIN) · whole, in integers.
            let (num, den) = WAVE_GAIN;
            if halves.saturating_mul(den) <= whole.saturating_mul(2 * (den - num)) {
                return 2;
            }
        }
    }
    1
}

/// The CTAs (grid x) of a launch over `tiles` output tiles with a split of `split` and
/// clusters of `cx` along x, on `sms` SMs, `forced` as [`WgmmaShape::ctas`]: without a split
/// or pairs at most one per SM ([`AUTO_PERSISTENT`]), each walking every `ctas`-th tile;
/// else one per tile. `None` where the forced count is not allowed (0, or with pairs; the
/// caller has already made the split 1 where the CTAs are forced).
pub(crate) fn walk_ctas(forced: Option<u32>, split: u32, cx: u32, tiles: u32, sms: u32) -> Option<u32> {
    match forced {
        None if AUTO_PERSISTENT && split == 1 && cx == 1 => Some(tiles.min(sms.max(1))),
        None => Some(tiles),
        Some(c) if c >= 1 && cx == 1 && split == 1 => Some(c.min(tiles)),
        Some(_) => None,
    }
}

/// The least cut in the waves' work (a fraction `num / den`) for which [`split_k`] splits
/// tiles that fill more than one wave.
const WAVE_GAIN: (u32, u32) = (1, 5);

/// The cluster shapes a launch may take: `cx` in 1, `MULTICAST`; split 1, 2, 4, 8.
const CX_CHOICES: [u32; 2] = [1, MULTICAST];
const SPLIT_CHOICES: [u32; 4] = [1, 2, 4, 8];

/// The loaded sm_90a module.
pub(crate) struct WgmmaKernels {
    fused: Entry,
    gemm: Entry,
    gate_up: Entry,
    proj: Entry,
    /// SMs of the device.
    sms: u32,
    /// Clusters of each shape (`CX_CHOICES` x `SPLIT_CHOICES`) that can be resident at once
    /// (`cuOccupancyMaxActiveClusters`; 0 where the shape is not allowed, and for split 1,
    /// which needs no count).
    max_clusters: [[u32; 4]; 2],
}

impl WgmmaKernels {
    /// Loads the module's entries and raises their dynamic shared-memory limit. `Err` holds
    /// why the module is not usable here: the driver could not compile it, an entry is
    /// missing, or the driver's compilation of an entry broke the contract its `setmaxnreg`
    /// split rests on ([`ENTRY_REGS`] registers per thread, no local memory; the consumers'
    /// request would then wait forever). The ops then take other routes.
    pub(crate) fn load(ctx: &Arc<CudaContext>, ptx: &str) -> std::result::Result<WgmmaKernels, String> {
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(|e| format!("the driver did not load it: {e}"))?;
        let load = |(name, params): (&'static str, &'static [usize])| {
            let f = module.load_function(name).map_err(|e| format!("kernel `{name}` not found: {e}"))?;
            f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, SMEM_BYTES as i32)
                .map_err(|e| format!("`{name}`: cuFuncSetAttribute: {e}"))?;
            let attr = |a| f.get_attribute(a).map_err(|e| format!("`{name}`: cuFuncGetAttribute: {e}"));
            let regs = attr(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)?;
            let local = attr(CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?;
            if regs != ENTRY_REGS as i32 || local != 0 {
                return Err(format!(
                    "`{name}` compiled to {regs} registers and {local} bytes of local memory; its \
                     warpgroup split needs exactly {ENTRY_REGS} and none"
                ));
            }
            Ok(Entry { f, name, params })
        };
        let fused = load(WGMMA_ENTRIES[0])?;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| format!("cuDeviceGetAttribute: {e}"))? as u32;
        // Every entry has the same launch resources (threads, registers, shared memory), so
        // one entry's cluster occupancy is every entry's.
        let _current = Current::bind(ctx).map_err(|e| e.to_string())?;
        let mut max_clusters = [[0u32; 4]; 2];
        for (row, &cx) in max_clusters.iter_mut().zip(CX_CHOICES.iter()) {
            for (slot, &split) in row.iter_mut().zip(SPLIT_CHOICES.iter()) {
                // (`split_k` asks only about splits; a shape without one always fits.)
                // A failed query rules that shape out (0), not the module.
                if split > 1 && cx * split <= CLUSTER_MAX {
                    *slot = max_active_clusters(&fused, cx, split).unwrap_or(0);
                }
            }
        }
        Ok(WgmmaKernels {
            fused,
            gemm: load(WGMMA_ENTRIES[1])?,
            gate_up: load(WGMMA_ENTRIES[2])?,
            proj: load(WGMMA_ENTRIES[3])?,
            sms,
            max_clusters,
        })
    }

    /// The launch shape for `m` tokens, `n` W rows and `k`. The output tiles form one walk
    /// along grid x, token tiles fastest (`config::wgmma::tile_coords`), so that the CTAs
    /// the hardware starts one after another walk down the token tiles of one W tile column
    /// before the next, and the CTAs resident together share W tiles in L2 (with W tiles
    /// fastest, every wave of CTAs would sweep the whole of W). Without a split or pairs,
    /// at most one CTA per SM ([`AUTO_PERSISTENT`]), each taking every `ctas`-th tile, so
    /// that its producer loads the next tile's first stages while its consumers store the
    /// last one. With two token tiles or more and pairs on ([`WgmmaShape::pairs`]), clusters
    /// of `MULTICAST` CTAs along x share each W tile by multicast (the token tiles rounded up
    /// to whole pairs: a CTA past M computes zeros and stores nothing, but loads its share of
    /// the W tiles). Where the output tiles leave SMs idle, a split over K along z
    /// ([`split_k`]); pairs and splits take one tile per CTA.
    /// `forced` replaces the choice of the pairs, of the split (1, 2, 4 or 8, with `cx ·
    /// split <= 8` and a cluster shape the device can run) and of the CTAs (else a typed
    /// error). The split changes the order of the additions, so outputs are bitwise the
    /// same from run to run of one shape, M, device and tuning, not across them.
    fn shape(&self, m: u32, n: u32, k: u32, forced: WgmmaShape) -> Result<Shape> {
        let pairs = forced.pairs.unwrap_or(AUTO_PAIRS);
        let cx = if pairs && m.div_ceil(BM) >= 2 { MULTICAST } else { 1 };
        let tiles = u64::from(token_tiles(m, cx)) * u64::from(n.div_ceil(BN));
        if tiles > u64::from(WGMMA_MAX_TILES) {
            return Err(Error::TooLarge {
                arg: "M x N",
                got: tiles,
                limit: u64::from(WGMMA_MAX_TILES),
                why: "FusedWgmma launches at most 2^31 - 1 output tiles of 128 tokens x 256 W rows",
            });
        }
        let tiles = tiles as u32;
        let max_clusters = |cx: u32, split: u32| {
            let row = CX_CHOICES.iter().position(|&c| c == cx);
            let col = SPLIT_CHOICES.iter().position(|&s| s == split);
            row.zip(col).map_or(0, |(r, c)| self.max_clusters[r][c])
        };
        let split = match (forced.split, forced.ctas) {
            (None, None) => split_k(cx, tiles, k.div_ceil(BK), self.sms, max_clusters),
            (None, Some(_)) | (Some(1), _) => 1,
            (Some(s), None) if SPLIT_CHOICES.contains(&s) && cx * s <= CLUSTER_MAX && max_clusters(cx, s) > 0 => s,
            (Some(s), _) => {
                return Err(Error::Value {
                    arg: "WgmmaShape::split",
                    expected: "1, 2, 4 or 8, at most 4 with CTA pairs (M > 128), a cluster shape the device runs, \
                               and 1 where the CTAs are forced",
                    got: format!("{s} at M = {m}"),
                });
            }
        };
        let ctas = walk_ctas(forced.ctas, split, cx, tiles, self.sms).ok_or_else(|| Error::Value {
            arg: "WgmmaShape::ctas",
            expected: "at least 1, without CTA pairs (M > 128 with pairs on)",
            got: format!("{:?} at M = {m}", forced.ctas),
        })?;
        Ok(Shape { grid: (ctas, 1), block: THREADS, cluster_x: cx, split_z: split, smem: SMEM_BYTES })
    }

    /// Fused RMSNorm + QKV (`eps`; `map` describes the folded, k-interleaved W) or, with
    /// `eps = None`, `y = x · Wᵀ` into the packed output (`map` describes a natural W:
    /// `gemm_wgmma` reads A in the natural k order).
    ///
    /// # Safety
    /// `inp.x [m, hidden]` and the outputs are device buffers of this context as
    /// [`QkvOut`] describes them, 16-byte aligned; `map` describes the W of `inp` with `n =
    /// out.nq + 2 out.nkv` rows; `hidden % 32 == 0`; `1 <= m <= WGMMA_MAX_M`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn qkv(
        &self,
        stream: &CudaStream,
        pdl: bool,
        map: &WeightMap,
        inp: Operands,
        out: QkvOut,
        eps: Option<f32>,
        forced: WgmmaShape,
    ) -> Result<()> {
        let n = out.nq + 2 * out.nkv;
        let shape = self.shape(inp.m, n, inp.hidden, forced)?;
        // SAFETY: the arguments in each entry's order; buffers per the caller.
        unsafe {
            match eps {
                Some(eps) => Launch::new(&self.fused, shape)
                    .pdl(pdl)
                    .arg(inp.x)
                    .arg(map.device_ptr())
                    .arg(out.q)
                    .arg(out.k_out)
                    .arg(out.v)
                    .arg(inp.m)
                    .arg(inp.hidden)
                    .arg(out.nq)
                    .arg(out.nkv)
                    .arg(eps)
                    .run(stream),
                None => Launch::new(&self.gemm, shape)
                    .pdl(pdl)
                    .arg(inp.x)
                    .arg(map.device_ptr())
                    .arg(out.q)
                    .arg(inp.m)
                    .arg(inp.hidden)
                    .arg(n)
                    .run(stream),
            }
        }
    }

    /// Fused RMSNorm + gate/up + SiLU·mul into `a [m, inter]`, W (the folded, blocked
    /// `[2 inter, hidden]`) through `map`.
    ///
    /// # Safety
    /// `inp.x [m, hidden]` and `a [m, inter]` are device buffers of this context, 16-byte
    /// aligned, not overlapping; `map` describes the W of `inp` with `2 inter` rows;
    /// `hidden % 32 == 0`, `inter % 8 == 0`; `1 <= m <= WGMMA_MAX_M`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gate_up(
        &self,
        stream: &CudaStream,
        pdl: bool,
        map: &WeightMap,
        inp: Operands,
        a: u64,
        inter: u32,
        eps: f32,
        forced: WgmmaShape,
    ) -> Result<()> {
        let shape = self.shape(inp.m, 2 * inter, inp.hidden, forced)?;
        let launch = Launch::new(&self.gate_up, shape).pdl(pdl);
        // SAFETY: the arguments in the entry's order; buffers per the caller.
        unsafe {
            launch.arg(inp.x).arg(map.device_ptr()).arg(a).arg(inp.m).arg(inp.hidden).arg(inter).arg(eps).run(stream)
        }
    }

    /// `out [m, n] = residual + x · Wᵀ`, W `[n, hidden]` through `map`.
    ///
    /// # Safety
    /// `inp.x [m, hidden]`, `residual` and `out [m, n]` are device buffers of this context,
    /// 16-byte aligned; `out` is `residual` or overlaps nothing; `map` describes the W of
    /// `inp` with `n` rows; `hidden % 32 == 0`, `n % 8 == 0`; `1 <= m <= WGMMA_MAX_M`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn proj(
        &self,
        stream: &CudaStream,
        pdl: bool,
        map: &WeightMap,
        inp: Operands,
        residual: u64,
        out: u64,
        n: u32,
        forced: WgmmaShape,
    ) -> Result<()> {
        let shape = self.shape(inp.m, n, inp.hidden, forced)?;
        let launch = Launch::new(&self.proj, shape).pdl(pdl);
        // SAFETY: the arguments in the entry's order; buffers per the caller.
        unsafe {
            launch.arg(inp.x).arg(map.device_ptr()).arg(residual).arg(out).arg(inp.m).arg(inp.hidden).arg(n).run(stream)
        }
    }
}

/// `cuOccupancyMaxActiveClusters` for `entry` in clusters of `cx` x 1 x `split` CTAs.
fn max_active_clusters(entry: &Entry, cx: u32, split: u32) -> std::result::Result<u32, String> {
    // SAFETY: a plain C struct of integers and a union; zero is a valid bit pattern.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim.x = cx;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = split;
    let cfg = sys::CUlaunchConfig {
        gridDimX: cx,
        gridDimY: 1,
        gridDimZ: split,
        blockDimX: THREADS,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: SMEM_BYTES,
        hStream: std::ptr::null_mut(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    let mut n: std::ffi::c_int = 0;
    // SAFETY: the config and its attribute outlive the call, which only writes `n`.
    unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, entry.f.cu_function(), &cfg) }
        .result()
        .map_err(|e| format!("`{}`: cuOccupancyMaxActiveClusters ({cx} x 1 x {split}): {e}", entry.name))?;
    Ok(n.max(0) as u32)
}

/// The tensor map of a weight `w [n, k]` (device address, 16-byte aligned) for the
/// warpgroup-MMA kernels, where `gpu` has them and the shape suits them (`k % 32 == 0`:
/// whole interleave blocks); `None` otherwise.
pub(crate) fn weight_map(gpu: &Gpu, w: u64, n: usize, k: usize) -> Result<Option<WeightMap>> {
    if gpu.wgmma.is_err() || !k.is_multiple_of(32) {
        return Ok(None);
    }
    WeightMap::new(gpu, w, n, k).map(Some)
}

/// The error of a `Route::FusedWgmma` call where the op has no tensor map.
pub(crate) fn no_wgmma(gpu: &Gpu, k: usize) -> Error {
    let got = match gpu.wgmma_unavailable() {
        Some(why) => why,
        None => format!("K = {k}, not a multiple of 32"),
    };
    Error::Value { arg: "route", expected: "FusedWgmma: the sm_90a module loaded and K % 32 == 0", got }
}

/// A `CUtensorMap` for the TMA's reads of a weight `W [n, k]` bf16 (row-major): boxes of
/// `BK x W_BOX_ROWS` (64 elements of k, half of a tile's 256 rows), 128-byte
/// swizzle, zeros outside the matrix. It
/// lives in device memory (written once, here), and the kernels take its address; it
/// stays valid while the weight buffer does (the op owning both keeps them together).
pub(crate) struct WeightMap {
    _buf: CudaSlice<u8>,
    /// `_buf`'s device address.
    ptr: u64,
}

impl WeightMap {
    /// Encodes the map of the weight at device address `w` (16-byte aligned) and uploads it.
    pub(crate) fn new(gpu: &Gpu, w: u64, n: usize, k: usize) -> Result<WeightMap> {
        // The encoder checks `w` against the calling thread's current context, which need
        // not be this one (an engine's thread, a test thread that never bound it).
        let bytes = {
            let _current = Current::bind(gpu.context())?;
            encode_weight_map(w, n, k)?
        };
        let buf = gpu.upload(&bytes)?;
        let (ptr, _) = gpu.address("tensor map", &buf)?;
        Ok(WeightMap { _buf: buf, ptr })
    }

    fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

/// `cuTensorMapEncodeTiled` for `W [n, k]` at `w`: dimensions innermost first (`k`, `n`),
/// row stride `2 k` bytes, box `BK x W_BOX_ROWS` (half a W tile: a CTA's share, which it
/// multicasts to its pair, or one of the two boxes a CTA alone loads); the map's 128 bytes.
pub(crate) fn encode_weight_map(w: u64, n: usize, k: usize) -> Result<[u8; 128]> {
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::zeroed();
    let dims: [u64; 2] = [k as u64, n as u64];
    let strides: [u64; 1] = [2 * k as u64];
    let boxes: [u32; 2] = [BK, W_BOX_ROWS];
    let elem_strides: [u32; 2] = [1, 1];
    // SAFETY: every pointer names a live local of the rank's length; the driver only writes
    // `map`.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            w as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(Error::driver("cuTensorMapEncodeTiled"))?;
        let map = map.assume_init();
        let mut bytes = [0u8; 128];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(map.opaque.iter()) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::{AUTO_PERSISTENT, split_k, walk_ctas};
    use nanofuse_kernels_gpu::config::wgmma::{tile_coords, token_tiles};

    const H100_SMS: u32 = 132;

    /// Enough clusters of every shape for one wave.
    fn plenty(_: u32, _: u32) -> u32 {
        1000
    }

    #[test]
    fn split_fills_the_sms_that_few_output_tiles_leave_idle() {
        // M = 128 (one token tile, no pair): Qwen3-0.6B QKV, 16 W tiles, K = 1024 (16 k tiles).
        assert_eq!(split_k(1, 16, 16, H100_SMS, plenty), 8);
        // Llama-3-8B QKV, 24 W tiles: 8 would be 192 CTAs, more than one wave.
        assert_eq!(split_k(1, 24, 64, H100_SMS, plenty), 4);
        // Llama-3-70B QKV, 40 W tiles.
        assert_eq!(split_k(1, 40, 128, H100_SMS, plenty), 2);
        // M = 300 on Qwen3-0.6B: 4 token tiles in pairs, 64 tiles; pairs cap the split at 4.
        assert_eq!(split_k(2, 64, 16, H100_SMS, plenty), 2);
        assert_eq!(split_k(2, 8, 64, H100_SMS, plenty), 4);
        // M = 2048: 256 tiles already fill the SMs.
        assert_eq!(split_k(2, 256, 16, H100_SMS, plenty), 1);
    }

    #[test]
    fn split_of_two_where_the_last_wave_of_whole_tiles_runs_mostly_idle() {
        // Llama-3-70B at M = 512: 160 tiles, two waves; halves take three, 1.5 tiles' time.
        assert_eq!(split_k(1, 160, 128, H100_SMS, plenty), 2);
        // Qwen3-0.6B at M = 2048: 256 tiles, two waves either way.
        assert_eq!(split_k(1, 256, 16, H100_SMS, plenty), 1);
        // Llama-3-70B at M = 1024: 320 tiles, three waves against 2.5: less than a fifth.
        assert_eq!(split_k(1, 320, 128, H100_SMS, plenty), 1);
        // Fewer resident clusters of 2 than SMs / 2 count: 40 clusters are 80 slots, and
        // 320 halves take four waves of them, no better than two of whole tiles.
        assert_eq!(split_k(1, 160, 128, H100_SMS, |_, _| 40), 1);
        // One k tile per half is too little.
        assert_eq!(split_k(1, 160, 3, H100_SMS, plenty), 1);
    }

    #[test]
    fn split_keeps_two_k_tiles_per_cta_and_one_wave_of_clusters() {
        // K = 256: 4 k tiles, at most a split of 2.
        assert_eq!(split_k(1, 16, 4, H100_SMS, plenty), 2);
        // K = 64: one k tile, no split.
        assert_eq!(split_k(1, 16, 1, H100_SMS, plenty), 1);
        // Only 14 clusters of 8 fit at once: 16 tiles take a split of 4 instead.
        let few_eights = |_: u32, split: u32| if split == 8 { 14 } else { 1000 };
        assert_eq!(split_k(1, 16, 16, H100_SMS, few_eights), 4);
        // A shape the device cannot launch at all (0 clusters) is never chosen.
        assert_eq!(split_k(1, 16, 16, H100_SMS, |_, _| 0), 1);
    }

    #[test]
    fn walk_takes_one_cta_per_sm_without_a_split_or_pairs() {
        // Qwen3-0.6B QKV at M = 2048: 16 x 16 tiles on 132 SMs.
        let auto = walk_ctas(None, 1, 1, 256, H100_SMS);
        assert_eq!(auto, Some(if AUTO_PERSISTENT { H100_SMS } else { 256 }));
        // Fewer tiles than SMs: one each either way.
        assert_eq!(walk_ctas(None, 1, 1, 40, H100_SMS), Some(40));
        // A split or pairs: one CTA per tile.
        assert_eq!(walk_ctas(None, 2, 1, 160, H100_SMS), Some(160));
        assert_eq!(walk_ctas(None, 1, 2, 256, H100_SMS), Some(256));
        // Forced: cut to the tiles; refused at 0, with pairs or with a split.
        assert_eq!(walk_ctas(Some(3), 1, 1, 256, H100_SMS), Some(3));
        assert_eq!(walk_ctas(Some(u32::MAX), 1, 1, 256, H100_SMS), Some(256));
        assert_eq!(walk_ctas(Some(0), 1, 1, 256, H100_SMS), None);
        assert_eq!(walk_ctas(Some(3), 1, 2, 256, H100_SMS), None);
        assert_eq!(walk_ctas(Some(3), 2, 1, 256, H100_SMS), None);
    }

    #[test]
    fn the_walk_runs_down_the_token_tiles_of_a_w_tile_first() {
        // M = 300: three token tiles, four with pairs (whole clusters).
        assert_eq!(token_tiles(300, 1), 3);
        assert_eq!(token_tiles(300, 2), 4);
        assert_eq!(token_tiles(128, 2), 2);
        assert_eq!(token_tiles(1, 1), 1);
        let order: Vec<(u32, u32)> = (0..7).map(|t| tile_coords(t, 3)).collect();
        assert_eq!(order, [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]);
        // With pairs, the two CTAs of a cluster (tiles 2p, 2p + 1) share their W tile.
        for p in 0..20 {
            assert_eq!(tile_coords(2 * p, 4).1, tile_coords(2 * p + 1, 4).1);
        }
    }
}
