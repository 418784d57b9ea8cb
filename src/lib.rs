//! # nanofuse
//!
//! Fused GPU kernels for LLM inference, written in Rust and compiled to PTX by rustc's
//! NVPTX backend. The flagship is RMSNorm fused with the QKV projection,
//! `q, k, v = split(rmsnorm(x) · Wqkvᵀ)`, bf16 in and out with f32 accumulation.
//!
//! This crate embeds the PTX that `build.rs` compiled from `kernels-gpu` and re-exports the
//! host crate, so an engine adds one dependency (and gets the kernels and the host API only:
//! the benchmark programs are the `nanofuse-cli` crate):
//!
//! ```no_run
//! use nanofuse::{FusedRmsNormQkv, QkvShape, bf16};
//! # fn main() -> nanofuse::Result<()> {
//! let gpu = nanofuse::open(0)?; // Err(Error::NoDriver) on a machine without CUDA
//! let shape = QkvShape::new(1024, 2048, 1024, 1e-6); // Qwen3-0.6B
//! let g = vec![bf16::ONE; shape.hidden];
//! let w = vec![bf16::ZERO; shape.n() * shape.hidden];
//! let op = FusedRmsNormQkv::new(&gpu, shape, &g, &w)?;
//! let x = gpu.upload(&vec![bf16::ONE; shape.hidden])?; // one token
//! let out = op.forward(&x, 1)?; // out.q [1, 2048], out.k [1, 1024], out.v [1, 1024]
//! # Ok(()) }
//! ```

use std::sync::Arc;

pub use nanofuse_host::*;

/// The kernels' PTX, compiled by `build.rs` for [`KERNELS_ARCH`].
pub const KERNELS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// The GPU architecture the embedded PTX targets (`NANOFUSE_CUDA_ARCH` at build time,
/// `sm_90` by default).
pub const KERNELS_ARCH: &str = env!("NANOFUSE_PTX_ARCH");

/// The sm_90a module's PTX (the warpgroup-MMA kernels), compiled by `build.rs` for
/// `sm_90a`; empty when the build targets another architecture than sm_90 or sm_90a.
pub const KERNELS_SM90A_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_sm90a.ptx"));

/// Opens CUDA device `ordinal` with the embedded kernels (both modules; the sm_90a one on
/// devices of compute capability 9.0).
pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
    Gpu::open(ordinal, KERNELS_PTX, KERNELS_ARCH, Some(KERNELS_SM90A_PTX))
}
