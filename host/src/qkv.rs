//! The flagship op: RMSNorm fused with the QKV projection,
//! `q, k, v = split(rmsnorm(x) · Wqkvᵀ)`, and its unfused baselines.

use std::sync::{Arc, Mutex};

use cudarc::driver::result::memcpy_dtod_async;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::blas::Blas;
use crate::check::{BufRef, MAX_DIM, check_buffer, check_dims, check_eps, check_m, check_no_overlap, checked_len};
use crate::current::Current;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{DecodeOp, Operands, QkvOut, RmsNormArgs, TiledOp};
use crate::ops::{self, GemmImpl};
use crate::plan::{self, DECODE_MAX_M, DecodeShape, Tile};
use crate::shared::{Folded, Shared};
use crate::wgmma::{WGMMA_MAX_M, WgmmaShape, no_wgmma, weight_map};

/// Largest M for which [`Route::Auto`] of the packed forms runs the fused decode kernel, for
/// a hidden size; above it they run RMSNorm + one cuBLAS GEMM, the same kernels as the
/// unfused baseline, so the packed API is not slower than it.
///
/// The fused decode kernel's time grows with M (every CTA stages the M rows of x it needs
/// and the MMA work doubles past 8 tokens) while cuBLAS's stays flat, so the bound is where
/// the fused kernel stops beating baseline (a). On H100 it beats (a) over the whole decode
/// range on every measured shape (docs/RESULTS.md), so the bound is the range's end for
/// every hidden size; it takes the hidden size because the crossover has depended on it.
pub fn auto_packed_fused_max_m(_hidden: usize) -> usize {
    DECODE_MAX_M
}

/// Largest M for which [`Route::Auto`] runs the fused decode kernel into separate q, k, v,
/// for a hidden size (the same bound for every one). The alternative there is RMSNorm + one
/// cuBLAS GEMM + the `split_qkv` copy (no single cuBLAS call writes three tensors), slower
/// than the packed fallback. On H100 the fused kernel beats it over the whole decode range
/// on every measured shape (docs/RESULTS.md).
pub fn auto_fused_max_m(_hidden: usize) -> usize {
    DECODE_MAX_M
}

/// Largest `M · N` for which the separate-output fallback splits one GEMM (see
/// [`auto_split_max_m`]).
pub const SPLIT_MAX_ELEMENTS: usize = 6 << 20;

/// Largest M for which the separate-output fallback ([`Route::NormCublas`] into q, k, v)
/// runs one cuBLAS GEMM into a packed `[M, N]` scratch and copies it out with the
/// `split_qkv` kernel; above it, three GEMMs write q, k and v directly. The split costs a
/// launch and `4 M N` bytes of copying, each extra GEMM a launch and its tail, so the split
/// wins while the copy is small: up to [`SPLIT_MAX_ELEMENTS`] elements of `M · N`, between
/// the largest product where the split measured faster on H100 and the smallest where three
/// GEMMs did (docs/RESULTS.md).
pub fn auto_split_max_m(n: usize) -> usize {
    SPLIT_MAX_ELEMENTS / n.max(1)
}

/// The shape of one fused RMSNorm + QKV projection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QkvShape {
    /// Hidden size K (a positive multiple of 8).
    pub hidden: usize,
    /// Output features of Q: heads × head_dim.
    pub q_dim: usize,
    /// Output features of K and of V each: kv_heads × head_dim.
    pub kv_dim: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
}

impl QkvShape {
    /// A shape; [`QkvShape::validate`] checks it.
    pub const fn new(hidden: usize, q_dim: usize, kv_dim: usize, eps: f32) -> Self {
        QkvShape { hidden, q_dim, kv_dim, eps }
    }

    /// Rows of the fused weight: `q_dim + 2 kv_dim`, saturating at `usize::MAX` (far past
    /// [`plan::MAX_DIM`](crate::plan::MAX_DIM), so [`QkvShape::validate`] rejects it).
    pub fn n(&self) -> usize {
        self.q_dim.saturating_add(self.kv_dim.saturating_mul(2))
    }

    /// Checks every dimension (errors name the offending one).
    pub fn validate(&self) -> Result<()> {
        if self.q_dim == 0 {
            return Err(Error::Dimension { arg: "q_dim", expected: "positive", got: 0 });
        }
        if self.kv_dim == 0 {
            return Err(Error::Dimension { arg: "kv_dim", expected: "positive", got: 0 });
        }
        let n = self.kv_dim.checked_mul(2).and_then(|x| x.checked_add(self.q_dim)).unwrap_or(usize::MAX);
        if n > MAX_DIM {
            return Err(Error::TooLarge {
                arg: "q_dim + 2 kv_dim",
                got: n as u64,
                limit: MAX_DIM as u64,
                why: "32-bit index arithmetic",
            });
        }
        check_dims(0, self.hidden, n).map_err(|e| match e {
            Error::Dimension { arg: "K", expected, got } => Error::Dimension { arg: "hidden", expected, got },
            Error::TooLarge { arg: "K", got, limit, why } => Error::TooLarge { arg: "hidden", got, limit, why },
            other => other,
        })?;
        check_eps(self.eps)
    }
}

/// How [`FusedRmsNormQkv`] computes its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Pick by M and K: the fused decode kernel up to [`auto_fused_max_m`] (packed forms:
    /// [`auto_packed_fused_max_m`]), RMSNorm + cuBLAS above.
    Auto,
    /// The fused weight-streaming kernel (M <= 16).
    FusedDecode,
    /// The fused tiled tensor-core kernel.
    FusedTiled,
    /// The fused warpgroup-MMA kernel fed by the TMA (sm_90a, `hidden % 32 == 0`; an error
    /// where the device or the shape has none: [`FusedRmsNormQkv::has_wgmma`]).
    FusedWgmma,
    /// Unfused: the RMSNorm kernel into a scratch buffer, then cuBLAS. Packed output: one
    /// GEMM. Separate q, k, v: one GEMM into a packed scratch and the `split_qkv` copy
    /// kernel up to [`auto_split_max_m`], else three GEMMs writing q, k and v directly.
    NormCublas,
}

/// The unfused baselines, which write one `y [M, N]` like PyTorch's `F.linear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// (a) RMSNorm kernel + cuBLAS bf16 GEMM: what PyTorch runs.
    NormCublas,
    /// (b) RMSNorm kernel + nanofuse's GEMM (the fused kernels' cores without the norm):
    /// the difference to the fused op is what fusion itself buys.
    NormNanofuse,
}

/// Launch-shape overrides for benchmark sweeps; `None` means the planner's choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    pub decode: Option<DecodeShape>,
    pub tile: Option<Tile>,
    /// The separate-output fallback: `Some(true)` one GEMM + `split_qkv`, `Some(false)`
    /// three GEMMs; `None` splits up to [`auto_split_max_m`].
    pub split: Option<bool>,
    /// The warpgroup-MMA route's launch shape (split over K, CTA pairs); its `None` fields
    /// are the launcher's choice.
    pub wgmma: WgmmaShape,
}

/// q, k, v as three separate device tensors.
pub struct Qkv {
    /// `[M, q_dim]`
    pub q: CudaSlice<bf16>,
    /// `[M, kv_dim]`
    pub k: CudaSlice<bf16>,
    /// `[M, kv_dim]`
    pub v: CudaSlice<bf16>,
}

/// RMSNorm fused with the QKV projection, built once from the weights.
///
/// `forward_into` allocates nothing once [`FusedRmsNormQkv::reserve`] has run for the
/// largest M it will see (the fallback's scratch, the cuBLAS handle and its workspace;
/// without it they are created on the first call above the decode range), so an engine
/// can call it every token and capture it in a CUDA graph.
///
/// At construction the RMSNorm gain is folded into the weight, `W' = bf16(W · diag(g))`
/// (one rounding per element, on the device), and the op keeps only `W'`: then
/// `rmsnorm(x) · Wᵀ = inv_rms · x · W'ᵀ` up to rounding, and no path multiplies by g per
/// call. `W'` is stored in the k-interleaved order (`config::interleave`, a transpose of
/// the bf16 pairs inside each 32-element block; `reference::interleave_k` on the CPU, feature `reference`), so
/// that the decode kernel stages x with 16-byte copies; every path takes the activations in
/// the same order. Formulations, all bf16 in and out with f32 accumulation:
/// * fused decode (M <= 16): `inv_rms · Σ_k x · W'`: raw x is staged in shared memory (in
///   its natural order, which the interleaved `W'` matches fragment by fragment) and its
///   sum of squares is reduced alongside; `inv_rms` scales the accumulators in the
///   epilogue, so weight streaming never waits for the norm;
/// * fused tiled: `inv_rms · Σ_k bf16(x · 1) · W'` (the tiled kernel with a unit gain; its
///   rewrite pass interleaves the x tile in shared memory);
/// * fallback: the RMSNorm kernel with a unit gain, `bf16(x · inv_rms)`, written
///   interleaved, then cuBLAS with `W'` (a sum over k in another order): for the packed
///   output the same kernels and bytes as baseline (a), on the folded weight; for separate
///   q, k, v one more kernel (`split_qkv`, copying the packed product out) up to
///   [`auto_split_max_m`], else three GEMMs.
///
///
/// [`Route::Auto`] picks the fused kernel only for the M where it was measured faster than
/// the unfused path (docs/RESULTS.md). The unfused baselines, which need the weights as
/// given, are [`UnfusedRmsNormQkv`].
///
/// # Weights
/// `w [q_dim + 2 kv_dim, hidden]` is the rows of the layer's `q_proj`, then `k_proj`, then
/// `v_proj`, each as PyTorch's `Linear` stores its weight (`[out, in]`, row-major); `g
/// [hidden]` is the layer's `input_layernorm` weight.
///
/// # Non-finite values and zeros
/// As PyTorch's `rms_norm` followed by the projection (tests/gpu_nonfinite.rs, every route):
/// a NaN or ±inf in a token of x makes that token's outputs NaN (`inf · 1/sqrt(inf)`); a NaN
/// in `g` makes every output NaN and a ±inf in `g[j]` every output infinite (or NaN where
/// `W[i, j] = 0` or `x[t, j] = 0`), since `g` is folded into whole columns of W; a NaN in
/// a row of W makes that output column NaN, a ±inf that column infinite. An all-zero token
/// gives zero outputs when `eps > 0` and NaN when `eps = 0` (`0 · 1/sqrt(0)`).
///
/// # Threads
/// The op is `Send + Sync`: threads may share it (their calls are ordered on the op's
/// stream; the fallback's scratch is locked per call) or each use a view on its own stream
/// (tests/gpu_threads.rs: bitwise the single-threaded results either way).
///
/// # Streams
/// The op issues on its [`Gpu`]'s stream. [`FusedRmsNormQkv::on`] gives a view of it on
/// another stream (a [`Gpu::on_stream`] view) that shares the folded weight.
pub struct FusedRmsNormQkv {
    gpu: Arc<Gpu>,
    shape: QkvShape,
    /// `w`: `bf16(W · diag(g))`; `ones`: `[hidden]` ones, the gain of the tiled kernel and
    /// of the fallback's RMSNorm. Shared with the op's views.
    weights: Shared<Folded>,
    tuning: Tuning,
    /// The fallback's scratch, this view's own.
    scratch: Mutex<Option<CudaSlice<bf16>>>,
}

/// Checks and uploads `g [hidden]` and `w [n, hidden]`.
fn upload_weights(gpu: &Gpu, shape: &QkvShape, g: &[bf16], w: &[bf16]) -> Result<(CudaSlice<bf16>, CudaSlice<bf16>)> {
    shape.validate()?;
    if g.len() != shape.hidden {
        return Err(Error::Length { arg: "g", expected: shape.hidden, got: g.len() });
    }
    let wlen = shape.n() * shape.hidden;
    if w.len() != wlen {
        return Err(Error::Length { arg: "w", expected: wlen, got: w.len() });
    }
    Ok((gpu.upload(g)?, gpu.upload(w)?))
}

/// The error of [`FusedRmsNormQkv::from_device`] (boxed there), with the buffers it took
/// given back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct FromDeviceError {
    /// What went wrong.
    pub error: Error,
    /// The gain, as given.
    pub g: CudaSlice<bf16>,
    /// The weight: as given unless `w_modified`.
    pub w: CudaSlice<bf16>,
    /// Whether the fold had been launched on `w` when the error came (its contents are then
    /// unspecified).
    pub w_modified: bool,
}

impl From<FromDeviceError> for Error {
    fn from(e: FromDeviceError) -> Error {
        e.error
    }
}

impl From<Box<FromDeviceError>> for Error {
    fn from(e: Box<FromDeviceError>) -> Error {
        e.error
    }
}

/// The checks of the fold's operands past their context, on addresses and element counts
/// (so the CPU tests them): `g [hidden]` and `w [n, hidden]` of those lengths and 16-byte
/// aligned, and, for the fold in place (`in_place`: it writes w while reading g), disjoint.
/// The shape was validated.
fn check_fold_operands(
    shape: &QkvShape,
    (g_ptr, g_len): (u64, usize),
    (w_ptr, w_len): (u64, usize),
    in_place: bool,
) -> Result<(BufRef, BufRef)> {
    let g = check_buffer("g", g_ptr, g_len, shape.hidden, 2)?;
    let w = check_buffer("w", w_ptr, w_len, checked_len("n * hidden", shape.n(), shape.hidden)?, 2)?;
    if in_place {
        check_no_overlap(&[w], &[g])?;
    }
    Ok((g, w))
}

impl FusedRmsNormQkv {
    /// Uploads `g [hidden]` and `w [q_dim + 2 kv_dim, hidden]` (rows of Q, then K, then V)
    /// and folds g into the weight.
    pub fn new(gpu: &Arc<Gpu>, shape: QkvShape, g: &[bf16], w: &[bf16]) -> Result<Self> {
        let (g, w) = upload_weights(gpu, &shape, g, w)?;
        Ok(Self::from_device(gpu, shape, g, w)?)
    }

    /// Takes weights already on the device and folds g into `w` in place: `w` becomes the
    /// op's folded weight, `bf16(W · diag(g))` in the k-interleaved order, and `g` is
    /// released once the fold has run (the call waits for it). Nothing is allocated for W.
    ///
    /// On an error the buffers come back in the [`FromDeviceError`] (`?` turns it into its
    /// [`Error`], dropping them): `w` as it was given unless the error came after the fold
    /// was launched ([`FromDeviceError::w_modified`]). Errors: the shape; `g` and `w` of
    /// other lengths than `[hidden]` and `[q_dim + 2 kv_dim, hidden]`, not 16-byte aligned
    /// or in another context; `g` and `w` overlapping ([`Error::Overlap`]: two slices over
    /// one allocation). To build from views into a weight arena, which this op must not
    /// own or rewrite, use [`FusedRmsNormQkv::from_device_copy`].
    pub fn from_device(
        gpu: &Arc<Gpu>,
        shape: QkvShape,
        g: CudaSlice<bf16>,
        w: CudaSlice<bf16>,
    ) -> Result<Self, Box<FromDeviceError>> {
        let give_back = |error, g, w, w_modified| Box::new(FromDeviceError { error, g, w, w_modified });
        let (gb, wb, ones) = match Self::check_in_place(gpu, &shape, &g, &w) {
            Ok(checked) => checked,
            Err(e) => return Err(give_back(e, g, w, false)),
        };
        // SAFETY: both buffers were checked for length, alignment, context and overlap; the
        // dims were validated (k % 8 == 0, n < 2^31).
        let folded =
            unsafe { gpu.kernels.fold_gain(gpu.stream(), wb.ptr, gb.ptr, shape.n() as u32, shape.hidden as u32) };
        // Release g only after the fold has run.
        if let Err(e) = folded.and_then(|()| gpu.synchronize()) {
            return Err(give_back(e, g, w, true));
        }
        let map = match weight_map(gpu, wb.ptr, shape.n(), shape.hidden) {
            Ok(map) => map,
            Err(e) => return Err(give_back(e, g, w, true)),
        };
        drop(g);
        let weights = Shared::new(Folded { w, ones, map }, gpu.stream());
        Ok(FusedRmsNormQkv { gpu: gpu.clone(), shape, weights, tuning: Tuning::default(), scratch: Mutex::new(None) })
    }

    /// `from_device`'s checks, then the unit gain uploaded (before the fold, so that an
    /// error after it can only come from the fold).
    fn check_in_place(
        gpu: &Gpu,
        shape: &QkvShape,
        g: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
    ) -> Result<(BufRef, BufRef, CudaSlice<bf16>)> {
        shape.validate()?;
        let g = gpu.address("g", g)?;
        let w = gpu.address("w", w)?;
        let (gb, wb) = check_fold_operands(shape, g, w, true)?;
        Ok((gb, wb, gpu.upload(&vec![bf16::ONE; shape.hidden])?))
    }

    /// Builds the op from weights on the device that it only reads: `g [hidden]` and
    /// `w [q_dim + 2 kv_dim, hidden]` may be any device buffers or views of this context
    /// (slices of one weight arena, say; they may even overlap). The op copies W into an
    /// allocation of its own and folds g into the copy there, so the caller's buffers are
    /// left as they are; the call returns once the copy and the fold have run, after which
    /// the caller may free or rewrite them.
    ///
    /// Errors: the shape; lengths other than `[hidden]` and `[q_dim + 2 kv_dim, hidden]`;
    /// buffers not 16-byte aligned or in another context.
    pub fn from_device_copy(
        gpu: &Arc<Gpu>,
        shape: QkvShape,
        g: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
    ) -> Result<Self> {
        shape.validate()?;
        let (gb, wb) = check_fold_operands(&shape, gpu.address("g", g)?, gpu.address("w", w)?, false)?;
        let mut folded = gpu.alloc_zeros::<bf16>(shape.n() * shape.hidden)?;
        let fb = gpu.output("folded weight", &mut folded, shape.n() * shape.hidden)?;
        let ones = gpu.upload(&vec![bf16::ONE; shape.hidden])?;
        {
            let _current = Current::bind(gpu.context())?;
            // SAFETY: `w` and the new allocation are device buffers of `wb.bytes` bytes on
            // this context (checked), disjoint (the allocation is new).
            unsafe { memcpy_dtod_async(fb.ptr, wb.ptr, wb.bytes as usize, gpu.stream().cu_stream()) }
                .map_err(Error::driver("cuMemcpyDtoDAsync"))?;
        }
        // SAFETY: the copy and g were checked for length, alignment and context; the copy
        // is the op's own allocation, disjoint from g; the dims were validated.
        unsafe { gpu.kernels.fold_gain(gpu.stream(), fb.ptr, gb.ptr, shape.n() as u32, shape.hidden as u32)? };
        // The caller's buffers are read until here.
        gpu.synchronize()?;
        let map = weight_map(gpu, fb.ptr, shape.n(), shape.hidden)?;
        let weights = Shared::new(Folded { w: folded, ones, map }, gpu.stream());
        Ok(FusedRmsNormQkv { gpu: gpu.clone(), shape, weights, tuning: Tuning::default(), scratch: Mutex::new(None) })
    }

    /// A view of this op that issues on `gpu`'s stream: `gpu` is a view of the op's
    /// [`Gpu`] on another stream of its context ([`Gpu::on_stream`]; another context is
    /// [`Error::WrongDevice`]). The view shares the folded weight (nothing is copied), and
    /// has a copy of the tuning and its own fallback scratch and cuBLAS handle (call
    /// [`FusedRmsNormQkv::reserve`] on the view before capturing it in a graph). Views on
    /// different streams may run at the same time.
    ///
    /// `gpu`'s stream first waits (on the device) for the work queued so far on the op's
    /// stream, so the weight is ready. The weight is freed when the op and all its views
    /// are dropped, after the work they queued.
    pub fn on(&self, gpu: &Arc<Gpu>) -> Result<Self> {
        Ok(FusedRmsNormQkv {
            gpu: gpu.clone(),
            shape: self.shape,
            weights: self.weights.view(&self.gpu, gpu)?,
            tuning: self.tuning,
            scratch: Mutex::new(None),
        })
    }

    /// The op's shape.
    pub fn shape(&self) -> &QkvShape {
        &self.shape
    }

    /// The device the op runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The weight the op streams: `bf16(W · diag(g))`, `[q_dim + 2 kv_dim, hidden]`, each row
    /// in the k-interleaved order (`reference::interleave_k` of the natural rows).
    pub fn folded_weight(&self) -> &CudaSlice<bf16> {
        &self.weights.w
    }

    /// Overrides launch shapes (for benchmark sweeps). Forcing `split` on can enlarge the
    /// fallback's scratch: call [`FusedRmsNormQkv::reserve`] again before capturing a graph.
    pub fn set_tuning(&mut self, tuning: Tuning) {
        self.tuning = tuning;
    }

    /// The route [`Route::Auto`] of [`FusedRmsNormQkv::forward_into`] takes for `m` tokens.
    pub fn auto_path(&self, m: usize) -> Route {
        if m <= auto_fused_max_m(self.shape.hidden) { Route::FusedDecode } else { Route::NormCublas }
    }

    /// The route [`Route::Auto`] of [`FusedRmsNormQkv::forward_packed_into`] takes.
    pub fn auto_packed_path(&self, m: usize) -> Route {
        if m <= auto_packed_fused_max_m(self.shape.hidden) { Route::FusedDecode } else { Route::NormCublas }
    }

    /// Whether the separate-output fallback splits one GEMM at `m` (else three GEMMs).
    fn splits(&self, m: usize) -> bool {
        self.tuning.split.unwrap_or(m <= auto_split_max_m(self.shape.n()))
    }

    /// Scratch elements the fallback needs at `m`: the normalized `xn [m, hidden]`, then the
    /// packed `y [m, n]` where the separate-output fallback splits one GEMM.
    fn scratch_len(&self, m: usize) -> Result<usize> {
        let s = self.shape;
        if self.splits(m) {
            checked_len("m * (hidden + n)", m, s.hidden + s.n())
        } else {
            checked_len("m * hidden", m, s.hidden)
        }
    }

    /// Creates now everything a later call for up to `max_m` tokens needs, on any route:
    /// the fallback's scratch, and the cuBLAS handle with its workspace (for example before
    /// capturing a CUDA graph, where neither `cublasCreate` nor an allocation may run).
    pub fn reserve(&self, max_m: usize) -> Result<()> {
        let split_m = max_m.min(auto_split_max_m(self.shape.n()));
        let len = self.scratch_len(max_m)?.max(self.scratch_len(split_m)?);
        self.gpu.blas()?;
        let mut slot = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|s| s.len() < len) {
            *slot = Some(self.gpu.alloc_zeros(len.max(1))?);
        }
        Ok(())
    }

    /// Allocates q, k, v and runs [`Route::Auto`]. `m` must be at least 1 (use
    /// [`FusedRmsNormQkv::forward_into`], where `m == 0` is a no-op, to skip empty batches).
    pub fn forward(&self, x: &impl DevicePtr<bf16>, m: usize) -> Result<Qkv> {
        let s = self.shape;
        if m == 0 {
            return Err(Error::Dimension {
                arg: "m",
                expected: "at least 1 for forward (forward_into accepts 0)",
                got: 0,
            });
        }
        check_m(m)?;
        // Check x before allocating anything.
        self.gpu.input("x", x, checked_len("m * hidden", m, s.hidden)?)?;
        let mut out = Qkv {
            q: self.gpu.alloc_zeros(m * s.q_dim)?,
            k: self.gpu.alloc_zeros(m * s.kv_dim)?,
            v: self.gpu.alloc_zeros(m * s.kv_dim)?,
        };
        self.forward_into(x, m, &mut out.q, &mut out.k, &mut out.v)?;
        Ok(out)
    }

    /// Runs [`Route::Auto`] into caller-provided `q [m, q_dim]`, `k [m, kv_dim]`,
    /// `v [m, kv_dim]` (any device buffers or views, e.g. slots of a KV cache).
    pub fn forward_into(
        &self,
        x: &impl DevicePtr<bf16>,
        m: usize,
        q: &mut impl DevicePtrMut<bf16>,
        k_out: &mut impl DevicePtrMut<bf16>,
        v: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        self.forward_into_with(Route::Auto, x, m, q, k_out, v)
    }

    /// As [`FusedRmsNormQkv::forward_into`], on a chosen route.
    pub fn forward_into_with(
        &self,
        route: Route,
        x: &impl DevicePtr<bf16>,
        m: usize,
        q: &mut impl DevicePtrMut<bf16>,
        k_out: &mut impl DevicePtrMut<bf16>,
        v: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let s = self.shape;
        check_m(m)?;
        let gpu = &self.gpu;
        let xb = gpu.input("x", x, checked_len("m * hidden", m, s.hidden)?)?;
        let qb = gpu.output("q", q, checked_len("m * q_dim", m, s.q_dim)?)?;
        let kb = gpu.output("k", k_out, checked_len("m * kv_dim", m, s.kv_dim)?)?;
        let vb = gpu.output("v", v, m * s.kv_dim)?;
        let (ones, w) = self.weight_refs();
        check_no_overlap(&[qb, kb, vb], &[xb, ones, w])?;
        if m == 0 {
            return Ok(());
        }
        let out = QkvOut { q: qb.ptr, k_out: kb.ptr, v: vb.ptr, nq: s.q_dim as u32, nkv: s.kv_dim as u32 };
        let inp = Operands { x: xb.ptr, w: w.ptr, m: m as u32, hidden: s.hidden as u32 };
        let (decode, tiled) = self.fused_ops(ones.ptr);
        let route = if route == Route::Auto { self.auto_path(m) } else { route };
        // SAFETY (all arms): every buffer was checked for length, alignment, context and
        // overlap above; the dims were validated at construction and m < 2^31.
        unsafe {
            match route {
                Route::Auto | Route::FusedDecode => launch_decode(gpu, &s, &self.tuning, decode, inp, out),
                Route::FusedTiled => launch_tiled(gpu, &s, &self.tuning, tiled, inp, out),
                Route::FusedWgmma => self.launch_wgmma(inp, out),
                Route::NormCublas => self.norm_cublas_split(xb.ptr, out, m),
            }
        }
    }

    /// Runs [`Route::Auto`] into one `y [m, q_dim + 2 kv_dim]` buffer: row `t` holds q, then
    /// k, then v (column ranges, like PyTorch's `split` views of `F.linear`'s output).
    pub fn forward_packed_into(
        &self,
        x: &impl DevicePtr<bf16>,
        m: usize,
        y: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        self.forward_packed_into_with(Route::Auto, x, m, y)
    }

    /// As [`FusedRmsNormQkv::forward_packed_into`], on a chosen route ([`Route::Auto`]: the
    /// fused decode kernel up to [`auto_packed_fused_max_m`], else RMSNorm + one cuBLAS GEMM).
    pub fn forward_packed_into_with(
        &self,
        route: Route,
        x: &impl DevicePtr<bf16>,
        m: usize,
        y: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let s = self.shape;
        check_m(m)?;
        let gpu = &self.gpu;
        let xb = gpu.input("x", x, checked_len("m * hidden", m, s.hidden)?)?;
        let yb = gpu.output("y", y, checked_len("m * n", m, s.n())?)?;
        let (ones, w) = self.weight_refs();
        check_no_overlap(&[yb], &[xb, ones, w])?;
        if m == 0 {
            return Ok(());
        }
        let out = QkvOut::packed(yb.ptr, s.n() as u32);
        let inp = Operands { x: xb.ptr, w: w.ptr, m: m as u32, hidden: s.hidden as u32 };
        let (decode, tiled) = self.fused_ops(ones.ptr);
        let route = if route == Route::Auto { self.auto_packed_path(m) } else { route };
        // SAFETY (all arms): buffers checked above; dims validated at construction.
        unsafe {
            match route {
                Route::Auto | Route::FusedDecode => launch_decode(gpu, &s, &self.tuning, decode, inp, out),
                Route::FusedTiled => launch_tiled(gpu, &s, &self.tuning, tiled, inp, out),
                Route::FusedWgmma => self.launch_wgmma(inp, out),
                Route::NormCublas => self
                    .with_normalized(xb.ptr, m, |xn, blas| blas.gemm_xwt(xn, w.ptr, yb.ptr, m, s.hidden, s.n(), s.n())),
            }
        }
    }

    /// Whether [`Route::FusedWgmma`] can run: the device has the sm_90a module and
    /// `hidden % 32 == 0`.
    pub fn has_wgmma(&self) -> bool {
        self.weights.map.is_some()
    }

    /// The fused warpgroup-MMA kernel on the folded weight through its tensor map.
    ///
    /// # Safety
    /// `inp` and `out` are checked device buffers of this op's shape; `inp.m >= 1`.
    unsafe fn launch_wgmma(&self, inp: Operands, out: QkvOut) -> Result<()> {
        let (Some(kernels), Some(map)) = (self.gpu.wgmma.as_ref().ok(), self.weights.map.as_ref()) else {
            return Err(no_wgmma(&self.gpu, self.shape.hidden));
        };
        if inp.m as usize > WGMMA_MAX_M {
            return Err(Error::Dimension {
                arg: "M",
                expected: "at most 2^31 - 1 for FusedWgmma",
                got: inp.m as usize,
            });
        }
        // SAFETY: forwarded to the caller; the map describes this op's folded weight
        // (built with it, held with it); hidden % 32 == 0 (a map exists).
        unsafe {
            kernels.qkv(self.gpu.stream(), self.gpu.pdl(), map, inp, out, Some(self.shape.eps), self.tuning.wgmma)
        }
    }

    /// The fused decode and tiled launches on the folded weight: x natural against the
    /// interleaved W', and the unit gain `ones` for the tiled kernel.
    fn fused_ops(&self, ones: u64) -> (DecodeOp, TiledOp) {
        let eps = self.shape.eps;
        (DecodeOp::Fused { eps }, TiledOp::Fused { g: ones, eps })
    }

    /// The unit gain and the folded weight, as checked references.
    fn weight_refs(&self) -> (BufRef, BufRef) {
        (stream_ref(&self.gpu, &self.weights.ones, "g"), stream_ref(&self.gpu, &self.weights.w, "w"))
    }

    /// RMSNorm into the scratch buffer, then either one cuBLAS GEMM into the scratch's
    /// packed `y [m, n]` and `split_qkv`, or one cuBLAS GEMM per output tensor
    /// ([`auto_split_max_m`]).
    ///
    /// # Safety
    /// `x [m, hidden]` and the outputs are checked device buffers; `m >= 1`.
    unsafe fn norm_cublas_split(&self, x: u64, out: QkvOut, m: usize) -> Result<()> {
        let s = self.shape;
        let w = self.weight_refs().1.ptr;
        let row_bytes = (s.hidden * 2) as u64;
        let gpu = &self.gpu;
        if self.splits(m) {
            // SAFETY: the scratch holds xn [m, hidden] and then y [m, n] (`reserve` sized it
            // with `scratch_len`); y starts 16-byte aligned (hidden % 8 == 0); the scratch
            // is the op's private allocation, so disjoint from x and the outputs.
            return unsafe {
                self.with_normalized(x, m, |xn, blas| {
                    let y = xn + (m * s.hidden * 2) as u64;
                    blas.gemm_xwt(xn, w, y, m, s.hidden, s.n(), s.n())?;
                    gpu.kernels.split_qkv(gpu.stream(), gpu.pdl(), y, out, m as u32)
                })
            };
        }
        // SAFETY: W rows [0, nq) are Q, [nq, nq + nkv) K, the rest V; each output is
        // [m, width] with ldy = width; x per the caller.
        unsafe {
            self.with_normalized(x, m, |xn, blas| {
                blas.gemm_xwt(xn, w, out.q, m, s.hidden, s.q_dim, s.q_dim)?;
                blas.gemm_xwt(xn, w + s.q_dim as u64 * row_bytes, out.k_out, m, s.hidden, s.kv_dim, s.kv_dim)?;
                let v_rows = (s.q_dim + s.kv_dim) as u64;
                blas.gemm_xwt(xn, w + v_rows * row_bytes, out.v, m, s.hidden, s.kv_dim, s.kv_dim)
            })
        }
    }

    /// Runs the RMSNorm kernel (unit gain: g is in W) on `x [m, hidden]` into the op's
    /// scratch buffer (grown to `m` rows if needed), then `then(scratch address, cuBLAS)`
    /// while the scratch is held.
    ///
    /// # Safety
    /// `x` is a checked device buffer of `m · hidden` bf16 on this op's context; `m >= 1`.
    unsafe fn with_normalized(&self, x: u64, m: usize, then: impl FnOnce(u64, &Blas) -> Result<()>) -> Result<()> {
        let (s, gpu) = (self.shape, &self.gpu);
        self.reserve(m)?;
        let slot = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = slot.as_ref().ok_or(Error::Value { arg: "scratch", expected: "reserved", got: "none".into() })?;
        let xn = stream_ref(gpu, scratch, "scratch").ptr;
        let ones = self.weight_refs().0.ptr;
        let blas = gpu.blas()?;
        // xn in the interleaved order of the folded weight (cuBLAS sums over k in any order).
        let args =
            RmsNormArgs { x, g: ones, y: xn, rows: m as u32, hidden: s.hidden as u32, eps: s.eps, interleave: true };
        // SAFETY: the scratch holds >= m · hidden elements (reserved above); x per the caller.
        unsafe { gpu.kernels.rms_norm(gpu.stream(), gpu.pdl(), args)? };
        then(xn, &blas)
    }
}

/// The unfused baselines on the weights as given (g not folded): RMSNorm into a scratch
/// `xn [m, hidden]`, then a GEMM into `y [m, q_dim + 2 kv_dim]` (q, k, v side by side, as
/// PyTorch's `F.linear` on the fused weight returns them). The honest comparison for
/// [`FusedRmsNormQkv`]: (a) is what PyTorch runs.
pub struct UnfusedRmsNormQkv {
    gpu: Arc<Gpu>,
    shape: QkvShape,
    g: CudaSlice<bf16>,
    w: CudaSlice<bf16>,
    tuning: Tuning,
}

impl UnfusedRmsNormQkv {
    /// Uploads `g [hidden]` and `w [q_dim + 2 kv_dim, hidden]`.
    pub fn new(gpu: &Arc<Gpu>, shape: QkvShape, g: &[bf16], w: &[bf16]) -> Result<Self> {
        let (g, w) = upload_weights(gpu, &shape, g, w)?;
        Ok(UnfusedRmsNormQkv { gpu: gpu.clone(), shape, g, w, tuning: Tuning::default() })
    }

    /// The baselines' shape.
    pub fn shape(&self) -> &QkvShape {
        &self.shape
    }

    /// Overrides launch shapes of baseline (b)'s GEMM (to pair it with a tuned fused op).
    pub fn set_tuning(&mut self, tuning: Tuning) {
        self.tuning = tuning;
    }

    /// Runs one baseline: RMSNorm of `x [m, hidden]` into the caller's scratch
    /// `xn [m, hidden]`, then the GEMM into `y [m, q_dim + 2 kv_dim]`. For (b) at
    /// M <= 16 `xn` is written in the k-interleaved order, which its decode GEMM takes
    /// against the natural-order weight (as the fused kernel takes natural x against its
    /// interleaved folded weight).
    pub fn forward_into(
        &self,
        which: Baseline,
        x: &impl DevicePtr<bf16>,
        m: usize,
        xn: &mut impl DevicePtrMut<bf16>,
        y: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let s = self.shape;
        let gpu = &self.gpu;
        check_dims(m, s.hidden, s.n())?;
        let xb = gpu.input("x", x, checked_len("m * hidden", m, s.hidden)?)?;
        let xnb = gpu.output("xn", xn, m * s.hidden)?;
        let yb = gpu.output("y", y, checked_len("m * n", m, s.n())?)?;
        let (gb, wb) = (stream_ref(gpu, &self.g, "g"), stream_ref(gpu, &self.w, "w"));
        check_no_overlap(&[xnb, yb], &[xb, gb, wb])?;
        if m == 0 {
            return Ok(());
        }
        // SAFETY: buffers checked above.
        unsafe {
            // Baseline (b)'s decode GEMM takes xn interleaved against the natural-order W (as
            // the fused kernel takes x natural against the interleaved folded weight); every
            // other GEMM here takes both in natural order.
            let interleave = which == Baseline::NormNanofuse && m <= DECODE_MAX_M;
            let (rows, hidden) = (m as u32, s.hidden as u32);
            let args = RmsNormArgs { x: xb.ptr, g: gb.ptr, y: xnb.ptr, rows, hidden, eps: s.eps, interleave };
            gpu.kernels.rms_norm(gpu.stream(), gpu.pdl(), args)?;
            let inp = Operands { x: xnb.ptr, w: wb.ptr, m: rows, hidden };
            match which {
                Baseline::NormCublas => ops::gemm_unchecked(gpu, GemmImpl::Cublas, inp, yb.ptr, s.n()),
                Baseline::NormNanofuse => {
                    // The fused kernels' cores with the same launch shapes, so the pair
                    // differs only by the fusion.
                    let out = QkvOut::packed(yb.ptr, s.n() as u32);
                    if m <= DECODE_MAX_M {
                        let op = DecodeOp::Gemm { interleave_x: false };
                        launch_decode(gpu, &s, &self.tuning, op, inp, out)
                    } else {
                        launch_tiled(gpu, &s, &self.tuning, TiledOp::Gemm, inp, out)
                    }
                }
            }
        }
    }
}

/// A device buffer's address on the op's stream, as a checked reference.
fn stream_ref(gpu: &Gpu, buf: &CudaSlice<bf16>, name: &'static str) -> BufRef {
    let (ptr, _sync) = buf.device_ptr(gpu.stream());
    BufRef { name, ptr, bytes: (buf.len() * 2) as u64 }
}

/// The decode kernel (`op`) with the planner's or the tuned launch shape.
///
/// # Safety
/// `inp`'s `x [m, hidden]` and `w [n, hidden]` and the outputs are checked device buffers;
/// `m >= 1`.
unsafe fn launch_decode(
    gpu: &Gpu,
    s: &QkvShape,
    tuning: &Tuning,
    op: DecodeOp,
    inp: Operands,
    out: QkvOut,
) -> Result<()> {
    let info = gpu.info();
    let m = inp.m as usize;
    let p = plan::decode_plan(m, s.hidden, s.n(), info.sm_count, info.max_smem_per_block, tuning.decode)?;
    // SAFETY: forwarded to the caller; the plan was made for these sizes.
    unsafe { gpu.kernels.decode(gpu.stream(), gpu.pdl(), &p, op, inp, out) }
}

/// The tiled kernel (`op`) with the planner's or the tuned tile.
///
/// # Safety
/// As [`launch_decode`], and a fused `op`'s `g [hidden]` a checked device buffer.
unsafe fn launch_tiled(
    gpu: &Gpu,
    s: &QkvShape,
    tuning: &Tuning,
    op: TiledOp,
    inp: Operands,
    out: QkvOut,
) -> Result<()> {
    let p = plan::tiled_plan(inp.m as usize, s.hidden, s.n(), gpu.info().sm_count, tuning.tile)?;
    // SAFETY: forwarded to the caller; the plan was made for these sizes.
    unsafe { gpu.kernels.tiled(gpu.stream(), gpu.pdl(), &p, op, inp, out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// K = 64, N = 24 + 2·8 = 40.
    const SHAPE: QkvShape = QkvShape::new(64, 24, 8, 1e-5);
    const G: usize = 64;
    const W: usize = 40 * 64;

    #[test]
    fn fold_operands_of_the_wrong_length_name_the_buffer() {
        let (g, w) = ((1 << 20, G), (2 << 20, W));
        assert!(check_fold_operands(&SHAPE, g, w, true).is_ok());
        for (g_len, w_len, arg) in [(G - 1, W, "g"), (G + 8, W, "g"), (G, W - 1, "w"), (G, W + 64, "w")] {
            for in_place in [true, false] {
                let e = check_fold_operands(&SHAPE, (g.0, g_len), (w.0, w_len), in_place).unwrap_err();
                assert!(matches!(e, Error::Length { arg: a, .. } if a == arg), "{g_len} {w_len}: {e:?}");
            }
        }
        let e = check_fold_operands(&SHAPE, (g.0 + 2, G), w, false).unwrap_err();
        assert!(matches!(e, Error::Misaligned { arg: "g", .. }), "{e:?}");
    }

    #[test]
    fn overlapping_fold_operands_are_refused_in_place_only() {
        let w = (1 << 20, W);
        // g inside w, at its start, and straddling its end.
        for g_ptr in [w.0, w.0 + 1024, w.0 + (W * 2) as u64 - 16] {
            let e = check_fold_operands(&SHAPE, (g_ptr, G), w, true).unwrap_err();
            assert!(matches!(e, Error::Overlap { a: "w", b: "g" }), "{e:?}");
            assert!(e.to_string().contains("`w` and `g` overlap"), "{e}");
            // The copying form only reads both.
            assert!(check_fold_operands(&SHAPE, (g_ptr, G), w, false).is_ok());
        }
        // Adjacent on either side is fine.
        for g_ptr in [w.0 - (G * 2) as u64, w.0 + (W * 2) as u64] {
            assert!(check_fold_operands(&SHAPE, (g_ptr, G), w, true).is_ok());
        }
    }
}
