//! The device-support layer: one `#[inline(always)]` function per PTX instruction, named
//! after it, grouped by hardware level. Kernels call these and never contain raw `asm!`.
//!
//! The API follows `cuda_std` where the two overlap (`thread::thread_idx_x()`,
//! `thread::sync_threads()`), so a kernel reads like Rust-CUDA code; `cuda_std` itself
//! needs the NVVM backend and cannot be used with rustc's LLVM PTX backend.
//!
//! Addresses of shared memory are 32-bit `.shared` window addresses ([`shared::SharedPtr`]);
//! global addresses are ordinary 64-bit pointers.

pub mod atomic;
pub mod cluster;
pub mod convert;
pub mod cp_async;
pub mod global;
pub mod mbarrier;
pub mod mma;
pub mod shared;
pub mod sync;
pub mod thread;
pub mod tma;
pub mod warp;
#[cfg(feature = "sm90a")]
pub mod wgmma;

/// `trap;` — abort the kernel; the launch then fails with `CUDA_ERROR_LAUNCH_FAILED`
/// (or `ILLEGAL_INSTRUCTION`), which the host reports. Used by the panic handler, so a
/// kernel that panicked can never hang or return a silently wrong answer.
#[inline(always)]
pub fn trap() -> ! {
    // SAFETY: `trap` has no preconditions; it ends the kernel.
    unsafe { core::arch::nvptx::trap() }
}
