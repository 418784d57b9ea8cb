//! Checked launchers for the building blocks: RMSNorm, `y = x · Wᵀ` (nanofuse's GEMM or
//! cuBLAS) and the residual add. The unfused baselines are compositions of these.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;
use nanofuse_kernels_gpu::config;

use crate::check::{check_dims, check_eps, check_no_overlap, checked_len, checked_u32};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{DecodeOp, Operands, QkvOut, RmsNormArgs, TiledOp};
use crate::plan::{self, DECODE_MAX_M};

/// `y[r, :] = bf16(x[r, :] · rsqrt(mean(x[r, :]²) + eps) · g)` for `rows` rows of `k`
/// elements. `rows == 0` is a no-op.
///
/// Errors: `k` not a positive multiple of 8; buffer lengths other than `rows·k`, `k`,
/// `rows·k`; buffers not 16-byte aligned or on another device; `y` overlapping an input;
/// sizes past the kernels' 32-bit indexing.
pub fn rms_norm(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    g: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rows: usize,
    k: usize,
    eps: f32,
) -> Result<()> {
    rms_norm_in_order::<false>(gpu, x, g, y, rows, k, eps)
}

/// [`rms_norm`] with each row of `y` written in the k-interleaved order of
/// [`FusedRmsNormQkv`](crate::FusedRmsNormQkv)'s folded weight (`reference::interleave_k`
/// of the natural row): what the op's fallback above the decode range runs before cuBLAS.
/// Same errors.
pub fn rms_norm_interleaved(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    g: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rows: usize,
    k: usize,
    eps: f32,
) -> Result<()> {
    rms_norm_in_order::<true>(gpu, x, g, y, rows, k, eps)
}

/// The checks and launch of both orders (`INTERLEAVE`: y in the k-interleaved order).
fn rms_norm_in_order<const INTERLEAVE: bool>(
    gpu: &Gpu,
    x: &impl DevicePtr<bf16>,
    g: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rows: usize,
    k: usize,
    eps: f32,
) -> Result<()> {
    check_dims(rows, k, 1)?;
    check_eps(eps)?;
    let len = checked_len("rows * k", rows, k)?;
    let xb = gpu.input("x", x, len)?;
    let gb = gpu.input("g", g, k)?;
    let yb = gpu.output("y", y, len)?;
    check_no_overlap(&[yb], &[xb, gb])?;
    if rows == 0 {
        return Ok(());
    }
    let (rows, hidden) = (rows as u32, k as u32);
    let args = RmsNormArgs { x: xb.ptr, g: gb.ptr, y: yb.ptr, rows, hidden, eps, interleave: INTERLEAVE };
    // SAFETY: lengths, alignment, context and overlap were checked above; k % 8 == 0 and
    // rows, k < 2^31 (check_dims).
    unsafe { gpu.kernels.rms_norm(gpu.stream(), gpu.pdl(), args) }
}

/// Which GEMM computes `y = x · Wᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmImpl {
    /// nanofuse's tensor-core GEMM: the decode kernel for M <= 16, the tiled kernel above
    /// (the cores of the fused kernels, without the norm). The decode kernel's launch shape is
    /// the planner's; M <= 16 uses the decode kernel.
    Nanofuse,
    /// cuBLAS `cublasGemmEx`, bf16 with f32 compute (what PyTorch's `F.linear` calls).
    Cublas,
}

/// `y[m, n] = x[m, k] · W[n, k]ᵀ`, bf16 in and out, f32 accumulation. `m == 0` is a no-op.
///
/// Errors as for [`rms_norm`], plus `n == 0`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    gpu: &Gpu,
    which: GemmImpl,
    x: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    check_dims(m, k, n)?;
    let xb = gpu.input("x", x, checked_len("m * k", m, k)?)?;
    let wb = gpu.input("w", w, checked_len("n * k", n, k)?)?;
    let yb = gpu.output("y", y, checked_len("m * n", m, n)?)?;
    check_no_overlap(&[yb], &[xb, wb])?;
    if m == 0 {
        return Ok(());
    }
    let inp = Operands { x: xb.ptr, w: wb.ptr, m: m as u32, hidden: k as u32 };
    // SAFETY: buffers checked above, dims within range.
    unsafe { gemm_unchecked(gpu, which, inp, yb.ptr, n) }
}

/// [`gemm`] on validated addresses: `y [m, n] = x [m, k] · w [n, k]ᵀ` with `inp`'s x, w, m
/// and k (`hidden`).
///
/// # Safety
/// `x [m, k]`, `w [n, k]`, `y [m, n]` are valid, 16-byte aligned device buffers on `gpu`'s
/// context, `y` disjoint from the inputs, and `check_dims(m, k, n)` holds.
pub(crate) unsafe fn gemm_unchecked(gpu: &Gpu, which: GemmImpl, inp: Operands, y: u64, n: usize) -> Result<()> {
    let info = gpu.info();
    let (m, k) = (inp.m as usize, inp.hidden as usize);
    let out = QkvOut::packed(y, n as u32);
    // SAFETY (all arms): forwarded to the caller; plans are made for these sizes.
    unsafe {
        match which {
            GemmImpl::Cublas => gpu.blas()?.gemm_xwt(inp.x, inp.w, y, m, k, n, n),
            GemmImpl::Nanofuse if m <= DECODE_MAX_M => {
                let p = plan::decode_plan(m, k, n, info.sm_count, info.max_smem_per_block, None)?;
                // x and W both in natural order: the kernel interleaves x as it stages it.
                let op = DecodeOp::Gemm { interleave_x: true };
                gpu.kernels.decode(gpu.stream(), gpu.pdl(), &p, op, inp, out)
            }
            GemmImpl::Nanofuse => {
                let p = plan::tiled_plan(m, k, n, info.sm_count, None)?;
                gpu.kernels.tiled(gpu.stream(), gpu.pdl(), &p, TiledOp::Gemm, inp, out)
            }
        }
    }
}

/// `h = bf16(h + y)` over `len` elements: the unfused residual add after a projection (what
/// [`UnfusedMlp::down_into`](crate::UnfusedMlp::down_into) runs after its GEMM; the
/// benchmark's projection baselines compose [`gemm`] and this). `len == 0` is a no-op.
///
/// Errors: `len` not a multiple of 8 or not below 2^32; buffer lengths other than `len`;
/// buffers not 16-byte aligned or on another device; `y` overlapping `h`.
pub fn residual_add(gpu: &Gpu, y: &impl DevicePtr<bf16>, h: &mut impl DevicePtrMut<bf16>, len: usize) -> Result<()> {
    if !len.is_multiple_of(config::VEC as usize) {
        return Err(Error::Dimension { arg: "len", expected: "a multiple of 8", got: len });
    }
    let len32 = checked_u32("len", len)?;
    let yb = gpu.input("y", y, len)?;
    let hb = gpu.output("h", h, len)?;
    check_no_overlap(&[hb], &[yb])?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: both buffers checked for length, alignment and context, and disjoint; h is
    // both the residual and the output (allowed); len % 8 == 0 and 1 <= len < 2^32.
    unsafe { gpu.kernels.residual_add(gpu.stream(), gpu.pdl(), hb.ptr, yb.ptr, hb.ptr, len32) }
}
