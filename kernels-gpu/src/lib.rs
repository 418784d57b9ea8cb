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
#![no_std]
#![cfg_attr(target_arch = "nvptx64", feature(abi_gpu_kernel, asm_experimental_arch, stdarch_nvptx))]

pub mod config;

#[cfg(target_arch = "nvptx64")]
pub mod ptx;

#[cfg(target_arch = "nvptx64")]
mod activation;
#[cfg(target_arch = "nvptx64")]
mod argmax_key;
#[cfg(target_arch = "nvptx64")]
mod decode;
#[cfg(target_arch = "nvptx64")]
mod head;
#[cfg(target_arch = "nvptx64")]
mod interleave;
#[cfg(target_arch = "nvptx64")]
mod norm;
#[cfg(target_arch = "nvptx64")]
mod qkv_out;

#[cfg(target_arch = "nvptx64")]
pub mod argmax_bf16;
#[cfg(target_arch = "nvptx64")]
pub mod attention_decode;
#[cfg(target_arch = "nvptx64")]
pub mod fold_gain;
#[cfg(target_arch = "nvptx64")]
pub mod lm_head_decode;
#[cfg(target_arch = "nvptx64")]
pub mod mlp_decode;
#[cfg(target_arch = "nvptx64")]
pub mod qk_norm_rope;
#[cfg(target_arch = "nvptx64")]
pub mod qkv_decode;
#[cfg(target_arch = "nvptx64")]
pub mod qkv_tiled;
#[cfg(target_arch = "nvptx64")]
pub mod residual_add;
#[cfg(target_arch = "nvptx64")]
pub mod rms_norm;
#[cfg(target_arch = "nvptx64")]
pub mod silu_mul;
#[cfg(target_arch = "nvptx64")]
pub mod split_qkv;
#[cfg(target_arch = "nvptx64")]
pub mod step_begin;

/// A panic in a kernel traps: the launch fails loudly instead of hanging or returning a
/// silently wrong answer. (The tests check that the shipped PTX has no panic path.)
#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    ptx::trap()
}
