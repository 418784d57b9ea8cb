//! # nanofuse-host
//!
//! The embeddable host side of nanofuse: open a CUDA device and load the kernels' PTX
//! ([`Gpu`]), then run the fused RMSNorm + QKV projection ([`FusedRmsNormQkv`]), its
//! building blocks ([`ops`]) and the unfused baselines, with every input checked and every
//! failure returned as an [`Error`].
//!
//! The CUDA driver and cuBLAS are loaded at run time (cudarc's dynamic loading): this crate
//! builds on machines without CUDA, and [`Gpu::new`] returns [`Error::NoDriver`] there.
//!
//! Most users depend on the root `nanofuse` crate, which embeds the PTX built by its
//! `build.rs` and re-exports this crate; `Gpu::new` also accepts any PTX text built from
//! `nanofuse-kernels-gpu` (a prebuilt module).

mod attention;
mod blas;
mod check;
mod current;
mod device;
pub mod error;
mod gpu;
mod kernels;
mod launch;
mod mlp;
pub mod ops;
pub mod plan;
mod qkv;
/// CPU references (feature `reference`; always in this crate's own tests).
#[cfg(any(test, feature = "reference"))]
pub mod reference;
mod sample;
mod shared;
mod wgmma;

pub use attention::{
    AttnScratch, AttnShape, MAX_ROWS as ATTN_MAX_ROWS, QkNorm, attention_decode, attention_decode_rope,
    attention_splits, qk_norm_rope,
};
pub use blas::release_idle_cublas_handles;
pub use check::BUFFER_ALIGN;
pub use cudarc;
pub use device::{DeviceInfo, arch_number, device_count, driver_present};
pub use error::{Error, Result};
pub use gpu::Gpu;
pub use half::bf16;
pub use kernels::KernelId;
pub use mlp::{
    FusedRmsNormGateUp, MlpShape, PROJ_LONG_K_FUSED_MAX_M, ProjResidual, UnfusedMlp, auto_mlp_fused_max_m,
    auto_proj_fused_max_m,
};
/// The decode state layout (`state [step::LEN]` u32: `POS`, `PROMPT_LEN`, `FLAGS`).
pub use nanofuse_kernels_gpu::config::step;
pub use qkv::{
    Baseline, FromDeviceError, FusedRmsNormQkv, Qkv, QkvShape, Route, SPLIT_MAX_ELEMENTS, Tuning, UnfusedRmsNormQkv,
    auto_fused_max_m, auto_packed_fused_max_m, auto_split_max_m,
};
pub use sample::{FusedRmsNormArgmax, argmax, argmax_key, argmax_token, step_begin};
pub use wgmma::{AUTO_PAIRS, AUTO_PERSISTENT, WGMMA_ENTRIES, WGMMA_TOKEN_TILE, WgmmaShape};
