//! The fused MLP block of a transformer layer, and its unfused baselines:
//!
//! * [`FusedRmsNormGateUp`]: `a = silu(rmsnorm(h) · Wgᵀ) ⊙ (rmsnorm(h) · Wuᵀ)`, one kernel
//!   at small M (the `[M, 2I]` intermediate never goes to memory);
//! * [`ProjResidual`]: `h ← h + x · Wᵀ` (the MLP's down projection, and the attention output
//!   projection), the residual add in the kernel's epilogue, in place or out of place.
//!
//! Above [`DECODE_MAX_M`] tokens ([`Route::Auto`]) both run the unfused kernels, which is
//! what PyTorch runs (cuBLAS wins there): the gate/up op RMSNorm + one cuBLAS `[M, 2I]` GEMM
//! + `silu_mul`, the projection one cuBLAS GEMM that adds into the residual (`beta = 1`).

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use nanofuse_kernels_gpu::config::mlp::gate_up_row;

use crate::check::{BufRef, MAX_DIM, check_dims, check_eps, check_m, check_no_overlap, checked_len, checked_u32};
use crate::current::Current;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{DecodeOp, Operands, QkvOut, RmsNormArgs, SiluMulArgs};
use crate::ops::{self, GemmImpl};
use crate::plan::{self, DECODE_MAX_M, DecodeShape};
use crate::qkv::{Baseline, Route};
use crate::shared::{Folded, Shared};
use crate::wgmma::{WGMMA_MAX_M, WeightMap, WgmmaShape, no_wgmma, weight_map};

/// Largest M for which [`Route::Auto`] of the MLP ops runs the fused decode kernels; above
/// it they run the unfused kernels (cuBLAS), like PyTorch.
pub fn auto_mlp_fused_max_m(_hidden: usize) -> usize {
    DECODE_MAX_M
}

/// Largest M for which [`Route::Auto`] of [`ProjResidual`] runs the fused decode kernel, for
/// a weight `[out_features, in_features]`. Where K is more than twice N (the MLP's down
/// projection) the fused kernel stages long rows of x by 4-byte scatter copies and falls
/// behind one cuBLAS GEMM with `beta = 1` as M grows, so it runs only up to
/// [`PROJ_LONG_K_FUSED_MAX_M`] there: the largest M at which it measured faster than that GEMM
/// (and than the unfused GEMM + add) on all four model shapes (docs/RESULTS.md).
pub fn auto_proj_fused_max_m(in_features: usize, out_features: usize) -> usize {
    if in_features > out_features.saturating_mul(2) { PROJ_LONG_K_FUSED_MAX_M } else { DECODE_MAX_M }
}

/// [`auto_proj_fused_max_m`] for K > 2N.
pub const PROJ_LONG_K_FUSED_MAX_M: usize = 4;

/// The shape of a layer's MLP: hidden size H, intermediate size I, RMSNorm epsilon.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlpShape {
    /// Hidden size H (a positive multiple of 8).
    pub hidden: usize,
    /// Intermediate size I (a positive multiple of 8).
    pub inter: usize,
    /// RMSNorm epsilon (finite, `>= 0`).
    pub eps: f32,
}

impl MlpShape {
    /// A shape; [`MlpShape::validate`] checks it.
    pub const fn new(hidden: usize, inter: usize, eps: f32) -> Self {
        MlpShape { hidden, inter, eps }
    }

    /// Checks every dimension (errors name the offending one).
    pub fn validate(&self) -> Result<()> {
        check_features("hidden", self.hidden)?;
        check_features("inter", self.inter)?;
        check_features("2 inter", self.inter.saturating_mul(2))?;
        check_eps(self.eps)
    }
}

/// The routes the MLP ops have (no tiled kernel).
fn check_route(route: Route) -> Result<()> {
    if route == Route::FusedTiled {
        return Err(Error::Value {
            arg: "route",
            expected: "Auto, FusedDecode or NormCublas",
            got: "FusedTiled".into(),
        });
    }
    Ok(())
}

/// A positive multiple of 8 within the kernels' 32-bit index range.
fn check_features(arg: &'static str, v: usize) -> Result<()> {
    if v == 0 || !v.is_multiple_of(8) {
        return Err(Error::Dimension { arg, expected: "a positive multiple of 8", got: v });
    }
    if v > MAX_DIM {
        return Err(Error::TooLarge { arg, got: v as u64, limit: MAX_DIM as u64, why: "32-bit index arithmetic" });
    }
    Ok(())
}

/// A device buffer's address on the op's stream, as a checked reference.
fn stream_ref(gpu: &Gpu, buf: &CudaSlice<bf16>, name: &'static str) -> BufRef {
    let (ptr, _sync) = buf.device_ptr(gpu.stream());
    BufRef { name, ptr, bytes: (buf.len() * 2) as u64 }
}

/// The decode launch of `op` for `m` tokens of `x [m, k]` against `w [n, k]`, written to
/// `out` (`[m, width]`).
///
/// # Safety
/// Checked device buffers of those sizes; `1 <= m <= DECODE_MAX_M`.
unsafe fn launch_decode(
    gpu: &Gpu,
    op: DecodeOp,
    inp: Operands,
    n: usize,
    out: QkvOut,
    force: Option<DecodeShape>,
) -> Result<()> {
    let info = gpu.info();
    let mut p =
        plan::decode_plan(inp.m as usize, inp.hidden as usize, n, info.sm_count, info.max_smem_per_block, force)?;
    // A forced trigger applies to the projection too (its entries read the plain GEMM's flag).
    if let Some(t) = force.and_then(|f| f.trigger_first) {
        p.gemm_trigger_first = t;
    }
    if matches!(op, DecodeOp::GateUp { .. }) && p.k_splits() > 1 {
        // The SiLU·mul epilogue needs gate and up of an output in one CTA (the planner does
        // not split K; this guards a future rule).
        return Err(Error::Value { arg: "plan", expected: "no K split for the gate/up op", got: "a K split".into() });
    }
    // SAFETY: forwarded to the caller; the plan was made for these sizes.
    unsafe { gpu.kernels.decode(gpu.stream(), gpu.pdl(), &p, op, inp, out) }
}

/// RMSNorm fused with the gate and up projections and SiLU·mul, built once from the
/// weights: `a [M, I] = silu(rmsnorm(h) · Wgᵀ) ⊙ (rmsnorm(h) · Wuᵀ)`, `h [M, H]`.
///
/// At construction the RMSNorm gain is folded into both weights (`bf16(W · diag(g))`, one
/// rounding per element) and the op keeps one `W' [2I, H]`: its rows in blocks of 16, the 8
/// gate rows of intermediate indices `8j .. 8j + 8` and then their 8 up rows
/// (`config::mlp::gate_up_row`), each row k-interleaved (`config::interleave`) like the
/// QKV op's folded weight. The decode kernel then finds a gate value and its up value in
/// the same lane and applies SiLU·mul in its epilogue. Rounding as PyTorch's unfused ops:
/// gate and up rounded to bf16, `silu(gate)` rounded, the product rounded.
///
/// `forward_into` allocates nothing once [`FusedRmsNormGateUp::reserve`] has run (the
/// fallback's scratch and the cuBLAS handle), so it can be captured in a CUDA graph.
/// [`FusedRmsNormGateUp::on`] gives a view on another stream sharing the weight.
///
/// # Weights
/// `wg`, `wu [I, H]` are the layer's `mlp.gate_proj` and `mlp.up_proj` weights as PyTorch's
/// `Linear` stores them; `g [H]` is its `post_attention_layernorm` weight. Non-finite
/// values propagate as in the QKV op ([`FusedRmsNormQkv`](crate::FusedRmsNormQkv)'s docs); the op is `Send + Sync`
/// (tests/gpu_threads.rs).
pub struct FusedRmsNormGateUp {
    gpu: Arc<Gpu>,
    shape: MlpShape,
    /// `w`: the blocked, folded, k-interleaved `W' [2I, H]`; `ones`: `[H]` ones, the gain
    /// of the fallback's RMSNorm (g is in W'). Shared with the op's views.
    weights: Shared<Folded>,
    /// The fallback's `xn [m, H]` then `y [m, 2I]`, this view's own.
    scratch: Mutex<Option<CudaSlice<bf16>>>,
    /// A forced decode launch shape (benchmark sweeps); `None`: the planner's.
    decode: Option<DecodeShape>,
    /// A forced launch shape of the warpgroup-MMA route (tests, sweeps); `None` fields:
    /// the launcher's.
    wgmma: WgmmaShape,
}

/// Checks `g [H]`, `wg [I, H]`, `wu [I, H]`.
fn check_gate_up(shape: &MlpShape, g: &[bf16], wg: &[bf16], wu: &[bf16]) -> Result<()> {
    shape.validate()?;
    if g.len() != shape.hidden {
        return Err(Error::Length { arg: "g", expected: shape.hidden, got: g.len() });
    }
    let wlen = checked_len("inter * hidden", shape.inter, shape.hidden)?;
    for (arg, w) in [("w_gate", wg), ("w_up", wu)] {
        if w.len() != wlen {
            return Err(Error::Length { arg, expected: wlen, got: w.len() });
        }
    }
    Ok(())
}

impl FusedRmsNormGateUp {
    /// Uploads `g [H]` (the layer's `post_attention_layernorm` weight), `w_gate [I, H]` and
    /// `w_up [I, H]` (`gate_proj` and `up_proj` as PyTorch's `Linear` stores them), puts
    /// the rows in the blocked order on the host and folds g in on the device.
    pub fn new(gpu: &Arc<Gpu>, shape: MlpShape, g: &[bf16], w_gate: &[bf16], w_up: &[bf16]) -> Result<Self> {
        check_gate_up(&shape, g, w_gate, w_up)?;
        let (h, i) = (shape.hidden, shape.inter);
        let mut blocked = vec![bf16::ZERO; 2 * i * h];
        for j in 0..i {
            let src = j * h..(j + 1) * h;
            blocked[gate_up_row(j, false) * h..][..h].copy_from_slice(&w_gate[src.clone()]);
            blocked[gate_up_row(j, true) * h..][..h].copy_from_slice(&w_up[src]);
        }
        let gd = gpu.upload(g)?;
        let mut w = gpu.upload(&blocked)?;
        drop(blocked);
        let gb = gpu.input("g", &gd, h)?;
        let wb = gpu.output("w", &mut w, 2 * i * h)?;
        // SAFETY: both buffers checked for length, alignment and context; two owned
        // allocations do not overlap; dims validated (h % 8 == 0, 2i < 2^31).
        unsafe { gpu.kernels.fold_gain(gpu.stream(), wb.ptr, gb.ptr, (2 * i) as u32, h as u32)? };
        let ones = gpu.upload(&vec![bf16::ONE; h])?;
        gpu.stream().synchronize().map_err(Error::driver("cuStreamSynchronize"))?;
        drop(gd);
        let map = weight_map(gpu, wb.ptr, 2 * i, h)?;
        let weights = Shared::new(Folded { w, ones, map }, gpu.stream());
        Ok(FusedRmsNormGateUp {
            gpu: gpu.clone(),
            shape,
            weights,
            scratch: Mutex::new(None),
            decode: None,
            wgmma: WgmmaShape::default(),
        })
    }

    /// Whether `Route::FusedWgmma` can run: the device has the sm_90a module and
    /// `hidden % 32 == 0`.
    pub fn has_wgmma(&self) -> bool {
        self.weights.map.is_some()
    }

    /// A view of this op that issues on `gpu`'s stream, sharing the weight; as
    /// [`FusedRmsNormQkv::on`](crate::FusedRmsNormQkv::on) (own scratch and cuBLAS handle:
    /// `reserve` the view before capturing it).
    pub fn on(&self, gpu: &Arc<Gpu>) -> Result<Self> {
        let weights = self.weights.view(&self.gpu, gpu)?;
        Ok(FusedRmsNormGateUp {
            gpu: gpu.clone(),
            shape: self.shape,
            weights,
            scratch: Mutex::new(None),
            decode: self.decode,
            wgmma: self.wgmma,
        })
    }

    /// The op's shape.
    pub fn shape(&self) -> &MlpShape {
        &self.shape
    }

    /// The weight the op streams: `[2I, H]`, rows blocked (`config::mlp::gate_up_row`),
    /// g folded in, each row k-interleaved.
    pub fn folded_weight(&self) -> &CudaSlice<bf16> {
        &self.weights.w
    }

    /// The route [`Route::Auto`] takes for `m` tokens.
    pub fn auto_route(&self, m: usize) -> Route {
        if m <= auto_mlp_fused_max_m(self.shape.hidden) { Route::FusedDecode } else { Route::NormCublas }
    }

    /// Forces the decode kernel's launch shape (benchmark sweeps; `None`: the planner's).
    /// A K split across CTAs is refused at launch: the SiLU·mul epilogue needs gate and up of
    /// an output in one CTA.
    pub fn set_decode_shape(&mut self, shape: Option<DecodeShape>) {
        self.decode = shape;
    }

    /// Forces the warpgroup-MMA route's launch shape (split over K, CTA pairs; a split the
    /// device cannot run is a typed error at launch); `None` fields: the launcher's choice.
    pub fn set_wgmma_shape(&mut self, shape: WgmmaShape) {
        self.wgmma = shape;
    }

    /// Allocates the fallback's scratch for up to `max_m` tokens and creates the cuBLAS
    /// handle now (before capturing a CUDA graph, where neither is allowed).
    pub fn reserve(&self, max_m: usize) -> Result<()> {
        let s = self.shape;
        let len = checked_len("m * (hidden + 2 inter)", max_m, s.hidden + 2 * s.inter)?;
        self.gpu.blas()?;
        let mut slot = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|b| b.len() < len) {
            *slot = Some(self.gpu.alloc_zeros(len.max(1))?);
        }
        Ok(())
    }

    /// Runs [`Route::Auto`]: `a [m, I]` from `h [m, H]`. `m == 0` is a no-op.
    pub fn forward_into(&self, h: &impl DevicePtr<bf16>, m: usize, a: &mut impl DevicePtrMut<bf16>) -> Result<()> {
        self.forward_into_with(Route::Auto, h, m, a)
    }

    /// As [`FusedRmsNormGateUp::forward_into`], on a chosen route: [`Route::FusedDecode`]
    /// (M <= 16) or [`Route::NormCublas`] (RMSNorm + cuBLAS + `silu_mul`); there is no tiled
    /// kernel for this op ([`Route::FusedTiled`] is an error).
    pub fn forward_into_with(
        &self,
        route: Route,
        h: &impl DevicePtr<bf16>,
        m: usize,
        a: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let s = self.shape;
        check_route(route)?;
        check_m(m)?;
        let gpu = &self.gpu;
        let hb = gpu.input("h", h, checked_len("m * hidden", m, s.hidden)?)?;
        let ab = gpu.output("a", a, checked_len("m * inter", m, s.inter)?)?;
        let (ones, w) = (stream_ref(gpu, &self.weights.ones, "g"), stream_ref(gpu, &self.weights.w, "w"));
        check_no_overlap(&[ab], &[hb, ones, w])?;
        if m == 0 {
            return Ok(());
        }
        let route = if route == Route::Auto { self.auto_route(m) } else { route };
        let inp = Operands { x: hb.ptr, w: w.ptr, m: m as u32, hidden: s.hidden as u32 };
        match route {
            Route::Auto | Route::FusedDecode => {
                let out = QkvOut::packed(ab.ptr, s.inter as u32);
                // SAFETY: buffers checked above; dims validated at construction.
                unsafe { launch_decode(gpu, DecodeOp::GateUp { eps: s.eps }, inp, 2 * s.inter, out, self.decode) }
            }
            Route::NormCublas => {
                // SAFETY: as above.
                unsafe { self.norm_cublas(hb.ptr, ab.ptr, m) }
            }
            Route::FusedWgmma => {
                let (Some(kernels), Some(map)) = (gpu.wgmma.as_ref().ok(), self.weights.map.as_ref()) else {
                    return Err(no_wgmma(gpu, s.hidden));
                };
                if m > WGMMA_MAX_M {
                    return Err(Error::Dimension { arg: "M", expected: "at most 2^31 - 1 for FusedWgmma", got: m });
                }
                // SAFETY: buffers checked above; the map describes this op's folded weight;
                // hidden % 32 == 0 (a map exists), inter % 8 == 0 (validated).
                unsafe { kernels.gate_up(gpu.stream(), gpu.pdl(), map, inp, ab.ptr, s.inter as u32, s.eps, self.wgmma) }
            }
            Route::FusedTiled => Err(Error::Value {
                arg: "route",
                expected: "Auto, FusedDecode, FusedWgmma or NormCublas",
                got: format!("{route:?}"),
            }),
        }
    }

    /// RMSNorm (unit gain, interleaved like W') into the scratch, one cuBLAS GEMM into the
    /// scratch's `y [m, 2I]` (blocked columns), then `silu_mul` with blocks of 8.
    ///
    /// # Safety
    /// `h [m, H]` and `a [m, I]` are checked device buffers; `m >= 1`.
    unsafe fn norm_cublas(&self, h: u64, a: u64, m: usize) -> Result<()> {
        let (s, gpu) = (self.shape, &self.gpu);
        self.reserve(m)?;
        let slot = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = slot.as_ref().ok_or(Error::Value { arg: "scratch", expected: "reserved", got: "none".into() })?;
        let xn = stream_ref(gpu, scratch, "scratch").ptr;
        let y = xn + (m * s.hidden * 2) as u64;
        let blas = gpu.blas()?;
        let ones = stream_ref(gpu, &self.weights.ones, "g").ptr;
        let w = stream_ref(gpu, &self.weights.w, "w").ptr;
        let args =
            RmsNormArgs { x: h, g: ones, y: xn, rows: m as u32, hidden: s.hidden as u32, eps: s.eps, interleave: true };
        // SAFETY: the scratch holds xn [m, H] and y [m, 2I] (reserved above), private to the
        // op so disjoint from h and a; y is 16-byte aligned (H % 8 == 0).
        unsafe {
            gpu.kernels.rms_norm(gpu.stream(), gpu.pdl(), args)?;
            blas.gemm_xwt(xn, w, y, m, s.hidden, 2 * s.inter, 2 * s.inter)?;
            gpu.kernels.silu_mul(
                gpu.stream(),
                gpu.pdl(),
                SiluMulArgs { y, a, m: m as u32, inter: s.inter as u32, block: 8 },
            )
        }
    }
}

/// A projection with the residual add fused into its epilogue, built once from the weight:
/// `out = residual + x · Wᵀ`, `x [M, K]`, `W [N, K]` (PyTorch `Linear` layout, kept as
/// given), `residual, out [M, N]`; in place (`h ← h + x · Wᵀ`) with
/// [`ProjResidual::forward_into`]. The MLP's down projection (K = I, N = H) and the
/// attention output projection (K = heads · head_dim, N = H).
///
/// Rounding as PyTorch's `h + linear(x)`: the product rounded to bf16, then the sum
/// rounded (the cuBLAS fallback adds in f32 and rounds once).
///
/// [`ProjResidual::on`] gives a view on another stream sharing the weight.
///
/// # Weights
/// `w` is the layer's `mlp.down_proj` (`[H, I]`) or `self_attn.o_proj` (`[H, Nq]`) weight as
/// PyTorch's `Linear` stores it. The op is `Send + Sync` (tests/gpu_threads.rs).
pub struct ProjResidual {
    gpu: Arc<Gpu>,
    in_features: usize,
    out_features: usize,
    /// Shared with the op's views.
    w: Shared<ProjWeight>,
    /// A forced decode launch shape (benchmark sweeps); `None`: the planner's.
    decode: Option<DecodeShape>,
    /// A forced launch shape of the warpgroup-MMA route (tests, sweeps); `None` fields:
    /// the launcher's.
    wgmma: WgmmaShape,
}

/// The projection's weight `[out_features, in_features]` as given, and its tensor map for
/// the warpgroup-MMA kernel where the device has it.
struct ProjWeight {
    w: CudaSlice<bf16>,
    map: Option<WeightMap>,
}

impl ProjResidual {
    /// Uploads `w [out_features, in_features]`.
    pub fn new(gpu: &Arc<Gpu>, in_features: usize, out_features: usize, w: &[bf16]) -> Result<Self> {
        check_features("in_features", in_features)?;
        check_features("out_features", out_features)?;
        let wlen = checked_len("out_features * in_features", out_features, in_features)?;
        if w.len() != wlen {
            return Err(Error::Length { arg: "w", expected: wlen, got: w.len() });
        }
        let w = gpu.upload(w)?;
        let (ptr, _) = gpu.address("w", &w)?;
        let map = weight_map(gpu, ptr, out_features, in_features)?;
        let w = Shared::new(ProjWeight { w, map }, gpu.stream());
        Ok(ProjResidual { gpu: gpu.clone(), in_features, out_features, w, decode: None, wgmma: WgmmaShape::default() })
    }

    /// Whether `Route::FusedWgmma` can run: the device has the sm_90a module and
    /// `in_features % 32 == 0`.
    pub fn has_wgmma(&self) -> bool {
        self.w.map.is_some()
    }

    /// A view of this op that issues on `gpu`'s stream, sharing the weight; as
    /// [`FusedRmsNormQkv::on`](crate::FusedRmsNormQkv::on) (own cuBLAS handle: `reserve`
    /// the view before capturing it).
    pub fn on(&self, gpu: &Arc<Gpu>) -> Result<Self> {
        let w = self.w.view(&self.gpu, gpu)?;
        Ok(ProjResidual {
            gpu: gpu.clone(),
            in_features: self.in_features,
            out_features: self.out_features,
            w,
            decode: self.decode,
            wgmma: self.wgmma,
        })
    }

    /// `(in_features, out_features)`: K and N.
    pub fn dims(&self) -> (usize, usize) {
        (self.in_features, self.out_features)
    }

    /// The route [`Route::Auto`] takes for `m` tokens.
    pub fn auto_route(&self, m: usize) -> Route {
        if m <= auto_proj_fused_max_m(self.in_features, self.out_features) {
            Route::FusedDecode
        } else {
            Route::NormCublas
        }
    }

    /// Forces the decode kernel's launch shape (benchmark sweeps; `None`: the planner's).
    pub fn set_decode_shape(&mut self, shape: Option<DecodeShape>) {
        self.decode = shape;
    }

    /// Forces the warpgroup-MMA route's launch shape (split over K, CTA pairs; a split the
    /// device cannot run is a typed error at launch); `None` fields: the launcher's choice.
    pub fn set_wgmma_shape(&mut self, shape: WgmmaShape) {
        self.wgmma = shape;
    }

    /// Creates the cuBLAS handle of the fallback now (before capturing a CUDA graph). The
    /// op needs no scratch.
    pub fn reserve(&self) -> Result<()> {
        self.gpu.blas().map(drop)
    }

    /// Runs [`Route::Auto`] in place: `h [m, N] ← h + x [m, K] · Wᵀ`. `h` must not overlap
    /// `x`. `m == 0` is a no-op.
    pub fn forward_into(&self, x: &impl DevicePtr<bf16>, m: usize, h: &mut impl DevicePtrMut<bf16>) -> Result<()> {
        self.forward_into_with(Route::Auto, x, m, h)
    }

    /// As [`ProjResidual::forward_into`], on a chosen route: [`Route::FusedDecode`]
    /// (M <= 16) or [`Route::NormCublas`] (one cuBLAS GEMM with `beta = 1`; the name is the
    /// QKV op's, there is no norm here).
    pub fn forward_into_with(
        &self,
        route: Route,
        x: &impl DevicePtr<bf16>,
        m: usize,
        h: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        check_route(route)?;
        check_m(m)?;
        let gpu = &self.gpu;
        let xb = gpu.input("x", x, checked_len("m * in_features", m, self.in_features)?)?;
        let hb = gpu.output("h", h, checked_len("m * out_features", m, self.out_features)?)?;
        check_no_overlap(&[hb], &[xb, stream_ref(gpu, &self.w.w, "w")])?;
        // SAFETY: buffers checked above; h is both the residual and the output.
        unsafe { self.run(route, xb.ptr, hb.ptr, hb.ptr, m) }
    }

    /// The out-of-place form: `out [m, N] = residual [m, N] + x [m, K] · Wᵀ` (`out` overlaps
    /// neither `x` nor `residual`).
    pub fn forward_out_of_place(
        &self,
        route: Route,
        x: &impl DevicePtr<bf16>,
        m: usize,
        residual: &impl DevicePtr<bf16>,
        out: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        check_route(route)?;
        check_m(m)?;
        let gpu = &self.gpu;
        let len = checked_len("m * out_features", m, self.out_features)?;
        let xb = gpu.input("x", x, checked_len("m * in_features", m, self.in_features)?)?;
        let rb = gpu.input("residual", residual, len)?;
        let ob = gpu.output("out", out, len)?;
        check_no_overlap(&[ob], &[xb, rb, stream_ref(gpu, &self.w.w, "w")])?;
        // SAFETY: buffers checked above.
        unsafe { self.run(route, xb.ptr, rb.ptr, ob.ptr, m) }
    }

    /// # Safety
    /// Checked buffers: `x [m, K]`, `residual` and `out` `[m, N]` (equal or disjoint), `out`
    /// disjoint from `x` and W.
    unsafe fn run(&self, route: Route, x: u64, residual: u64, out: u64, m: usize) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        let (gpu, n, k) = (&self.gpu, self.out_features, self.in_features);
        let w = stream_ref(gpu, &self.w.w, "w").ptr;
        let route = if route == Route::Auto { self.auto_route(m) } else { route };
        match route {
            Route::Auto | Route::FusedDecode => {
                let inp = Operands { x, w, m: m as u32, hidden: k as u32 };
                // SAFETY: forwarded to the caller.
                unsafe {
                    launch_decode(gpu, DecodeOp::Proj { residual }, inp, n, QkvOut::packed(out, n as u32), self.decode)
                }
            }
            Route::NormCublas => {
                let blas = gpu.blas()?;
                if out != residual {
                    let bytes = m * n * 2;
                    let _current = Current::bind(gpu.context())?;
                    // SAFETY: both are checked device buffers of m·N bf16, disjoint.
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(out, residual, bytes, gpu.stream().cu_stream())
                            .map_err(Error::driver("cuMemcpyDtoDAsync"))?
                    };
                }
                // SAFETY: out holds the residual; W [N, K] natural, x [m, K].
                unsafe { blas.gemm_xwt_add(x, w, out, m, k, n) }
            }
            Route::FusedWgmma => {
                let Some((kernels, map)) = gpu.wgmma.as_ref().ok().zip(self.w.map.as_ref()) else {
                    return Err(no_wgmma(gpu, k));
                };
                if m > WGMMA_MAX_M {
                    return Err(Error::Dimension { arg: "M", expected: "at most 2^31 - 1 for FusedWgmma", got: m });
                }
                let inp = Operands { x, w, m: m as u32, hidden: k as u32 };
                // SAFETY: forwarded to the caller; the map describes this op's weight;
                // in_features % 32 == 0 (a map exists), out_features % 8 == 0 (validated).
                unsafe { kernels.proj(gpu.stream(), gpu.pdl(), map, inp, residual, out, n as u32, self.wgmma) }
            }
            Route::FusedTiled => Err(Error::Value {
                arg: "route",
                expected: "Auto, FusedDecode, FusedWgmma or NormCublas",
                got: format!("{route:?}"),
            }),
        }
    }
}

/// The unfused MLP on the weights as given, as PyTorch runs it: gate/up as RMSNorm into
/// `xn [m, H]`, one GEMM on the merged `[Wg; Wu]` into `y [m, 2I]` (all gate columns, then
/// all up columns), `silu_mul` into `a [m, I]`; the projection as one GEMM into
/// `y [m, N]` and `residual_add` into h. The GEMM is cuBLAS ([`Baseline::NormCublas`],
/// baseline (a)) or nanofuse's own ([`Baseline::NormNanofuse`], baseline (b)).
pub struct UnfusedMlp {
    gpu: Arc<Gpu>,
    shape: MlpShape,
    g: CudaSlice<bf16>,
    /// `[Wg; Wu]`, `[2I, H]`.
    w_gate_up: CudaSlice<bf16>,
    /// `[H, I]`.
    w_down: CudaSlice<bf16>,
}

impl UnfusedMlp {
    /// Uploads `g [H]`, `w_gate [I, H]`, `w_up [I, H]` (merged) and `w_down [H, I]`.
    pub fn new(
        gpu: &Arc<Gpu>,
        shape: MlpShape,
        g: &[bf16],
        w_gate: &[bf16],
        w_up: &[bf16],
        w_down: &[bf16],
    ) -> Result<Self> {
        check_gate_up(&shape, g, w_gate, w_up)?;
        if w_down.len() != shape.hidden * shape.inter {
            return Err(Error::Length { arg: "w_down", expected: shape.hidden * shape.inter, got: w_down.len() });
        }
        let merged: Vec<bf16> = w_gate.iter().chain(w_up).copied().collect();
        Ok(UnfusedMlp {
            gpu: gpu.clone(),
            shape,
            g: gpu.upload(g)?,
            w_gate_up: gpu.upload(&merged)?,
            w_down: gpu.upload(w_down)?,
        })
    }

    /// The baselines' shape.
    pub fn shape(&self) -> &MlpShape {
        &self.shape
    }

    /// Gate/up: `a [m, I]` from `h [m, H]` through the caller's scratch `xn [m, H]` and
    /// `y [m, 2I]` (RMSNorm, GEMM, `silu_mul`). For (b) at M <= 16 `xn` is written in the
    /// k-interleaved order, which its decode GEMM takes against the natural weight.
    pub fn gate_up_into(
        &self,
        which: Baseline,
        h: &impl DevicePtr<bf16>,
        m: usize,
        xn: &mut impl DevicePtrMut<bf16>,
        y: &mut impl DevicePtrMut<bf16>,
        a: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let (s, gpu) = (self.shape, &self.gpu);
        check_dims(m, s.hidden, 2 * s.inter)?;
        let hb = gpu.input("h", h, checked_len("m * hidden", m, s.hidden)?)?;
        let xnb = gpu.output("xn", xn, m * s.hidden)?;
        let yb = gpu.output("y", y, checked_len("m * 2 inter", m, 2 * s.inter)?)?;
        let ab = gpu.output("a", a, m * s.inter)?;
        let (gb, wb) = (stream_ref(gpu, &self.g, "g"), stream_ref(gpu, &self.w_gate_up, "w"));
        check_no_overlap(&[xnb, yb, ab], &[hb, gb, wb])?;
        if m == 0 {
            return Ok(());
        }
        let interleave = which == Baseline::NormNanofuse && m <= DECODE_MAX_M;
        let args = RmsNormArgs {
            x: hb.ptr,
            g: gb.ptr,
            y: xnb.ptr,
            rows: m as u32,
            hidden: s.hidden as u32,
            eps: s.eps,
            interleave,
        };
        let inp = Operands { x: xnb.ptr, w: wb.ptr, m: m as u32, hidden: s.hidden as u32 };
        // SAFETY: buffers checked above.
        unsafe {
            gpu.kernels.rms_norm(gpu.stream(), gpu.pdl(), args)?;
            baseline_gemm(gpu, which, inp, yb.ptr, 2 * s.inter, interleave)?;
            let (m, inter) = (m as u32, s.inter as u32);
            gpu.kernels.silu_mul(gpu.stream(), gpu.pdl(), SiluMulArgs { y: yb.ptr, a: ab.ptr, m, inter, block: inter })
        }
    }

    /// Down projection + residual: `h [m, H] ← h + a [m, I] · Wdᵀ` through the caller's
    /// scratch `y [m, H]` (GEMM, then `residual_add`).
    pub fn down_into(
        &self,
        which: Baseline,
        a: &impl DevicePtr<bf16>,
        m: usize,
        y: &mut impl DevicePtrMut<bf16>,
        h: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let (s, gpu) = (self.shape, &self.gpu);
        check_dims(m, s.inter, s.hidden)?;
        let len = checked_len("m * hidden", m, s.hidden)?;
        let ab = gpu.input("a", a, checked_len("m * inter", m, s.inter)?)?;
        let yb = gpu.output("y", y, len)?;
        let hb = gpu.output("h", h, len)?;
        check_no_overlap(&[yb, hb], &[ab, stream_ref(gpu, &self.w_down, "w_down")])?;
        if m == 0 {
            return Ok(());
        }
        let w = stream_ref(gpu, &self.w_down, "w_down").ptr;
        let inp = Operands { x: ab.ptr, w, m: m as u32, hidden: s.inter as u32 };
        let len = checked_u32("m * hidden", len)?;
        // SAFETY: buffers checked above.
        unsafe {
            baseline_gemm(gpu, which, inp, yb.ptr, s.hidden, false)?;
            gpu.kernels.residual_add(gpu.stream(), gpu.pdl(), hb.ptr, yb.ptr, hb.ptr, len)
        }
    }
}

/// A baseline's GEMM `y [m, n] = x · Wᵀ`: cuBLAS, or nanofuse's, whose decode GEMM takes x
/// k-interleaved against the natural W where `x_interleaved` (the baselines' RMSNorm wrote it
/// so), else both natural.
///
/// # Safety
/// Checked buffers, dims within range, `m >= 1`; x in the interleaved order only where
/// `x_interleaved` (and then `m <= DECODE_MAX_M`).
unsafe fn baseline_gemm(
    gpu: &Gpu,
    which: Baseline,
    inp: Operands,
    y: u64,
    n: usize,
    x_interleaved: bool,
) -> Result<()> {
    let (m, k) = (inp.m as usize, inp.hidden as usize);
    // SAFETY (both arms): forwarded to the caller.
    unsafe {
        match which {
            Baseline::NormCublas => ops::gemm_unchecked(gpu, GemmImpl::Cublas, inp, y, n),
            Baseline::NormNanofuse if x_interleaved => {
                let info = gpu.info();
                let p = plan::decode_plan(m, k, n, info.sm_count, info.max_smem_per_block, None)?;
                let op = DecodeOp::Gemm { interleave_x: false };
                gpu.kernels.decode(gpu.stream(), gpu.pdl(), &p, op, inp, QkvOut::packed(y, n as u32))
            }
            Baseline::NormNanofuse => ops::gemm_unchecked(gpu, GemmImpl::Nanofuse, inp, y, n),
        }
    }
}
