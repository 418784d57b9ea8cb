//! nanofuse's GPU kernels, compiled to PTX by rustc's NVPTX backend (see the root
//! `build.rs`), plus [`config`], the launch constants the host launchers share.
//!
//! On the host target only `config` is compiled. On `nvptx64-nvidia-cuda`:
//! * [`ptx`]: the device-support layer, one wrapper per PTX instruction;
//! * `decode`: the decode (small-M, weight-streaming) kernel's parts, composed by
//!   [`qkv_decode`] and [`mlp_decode`] with their own epilogues;
//! * one kernel family per file: [`rms_norm`], [`qkv_decode`], [`mlp_decode`],
//!   [`lm_head_decode`], [`qkv_tiled`], [`fold_gain`], [`split_qkv`], [`silu_mul`],
//!   [`residual_add`]; the decode engine's step kernels [`step_begin`], [`qk_norm_rope`],
//!   [`attention_decode`], [`argmax_bf16`];
//! * device helpers shared by several kernels: `norm`, `activation`, `qkv_out`,
//!   `interleave`, `head`, `argmax_key`.
//!
//! The root `build.rs` compiles the crate twice: for `sm_90` (every kernel above; the
//! module the host always loads) and, with the `sm90a` feature, for `sm_90a`, where only
//! `gemm_wgmma` (warpgroup MMA, which exists on sm_90a only) and what it uses are
//! compiled (the host loads that module on devices of compute capability 9.0).
#![no_std]
// The sm_90a module compiles only the helpers its kernels use.
#![cfg_attr(feature = "sm90a", allow(dead_code))]
#![cfg_attr(target_arch = "nvptx64", feature(abi_gpu_kernel, asm_experimental_arch, stdarch_nvptx))]

pub mod config;

#[cfg(target_arch = "nvptx64")]
pub mod ptx;

// Helpers both PTX modules use.
#[cfg(target_arch = "nvptx64")]
mod activation;
#[cfg(target_arch = "nvptx64")]
mod norm;
#[cfg(target_arch = "nvptx64")]
mod qkv_out;

// The sm_90 module: every kernel but the sm_90a ones.
macro_rules! sm90_modules {
    ($($vis:vis mod $name:ident;)*) => {
        $(#[cfg(all(target_arch = "nvptx64", not(feature = "sm90a")))] $vis mod $name;)*
    };
}
sm90_modules! {
    mod argmax_key;
    mod decode;
    mod head;
    mod interleave;
    pub mod argmax_bf16;
    pub mod attention_decode;
    pub mod fold_gain;
    pub mod lm_head_decode;
    pub mod mlp_decode;
    pub mod qk_norm_rope;
    pub mod qkv_decode;
    pub mod qkv_tiled;
    pub mod residual_add;
    pub mod rms_norm;
    pub mod silu_mul;
    pub mod split_qkv;
    pub mod step_begin;
}

// The sm_90a module (`--features sm90a`, built for `sm_90a`): the warpgroup-MMA kernels.
#[cfg(all(target_arch = "nvptx64", feature = "sm90a"))]
pub mod gemm_wgmma;

/// A panic in a kernel traps: the launch fails loudly instead of hanging or returning a
/// silently wrong answer. (The tests check that the shipped PTX has no panic path.)
#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    ptx::trap()
}
