//! Thread, block and grid indices, and the CTA-wide barrier.
//!
//! The index functions wrap the `core::arch::nvptx` intrinsics (which LLVM knows the
//! ranges of), i.e. `mov.u32 %r, %tid.x;` and friends.

use core::arch::nvptx;

/// `%tid.x`: this thread's index within its CTA.
#[inline(always)]
pub fn thread_idx_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_thread_idx_x() }
}

/// `%ctaid.x`: this CTA's index within the grid, dimension x.
#[inline(always)]
pub fn block_idx_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_block_idx_x() }
}

/// `%ctaid.y`: this CTA's index within the grid, dimension y.
#[inline(always)]
pub fn block_idx_y() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_block_idx_y() }
}

/// `%ctaid.z`: this CTA's index within the grid, dimension z.
#[inline(always)]
pub fn block_idx_z() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_block_idx_z() }
}

/// `%ntid.x`: threads per CTA, dimension x.
#[inline(always)]
pub fn block_dim_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_block_dim_x() }
}

/// `%nctaid.x`: CTAs in the grid, dimension x.
#[inline(always)]
pub fn grid_dim_x() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_grid_dim_x() }
}

/// `%nctaid.y`: CTAs in the grid, dimension y.
#[inline(always)]
pub fn grid_dim_y() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_grid_dim_y() }
}

/// `%nctaid.z`: CTAs in the grid, dimension z.
#[inline(always)]
pub fn grid_dim_z() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_grid_dim_z() }
}

/// Lane index within the warp (`%tid.x % 32`; all kernels use 1-D CTAs).
#[inline(always)]
pub fn lane_id() -> u32 {
    thread_idx_x() % 32
}

/// Warp index within the CTA (`%tid.x / 32`).
#[inline(always)]
pub fn warp_id() -> u32 {
    thread_idx_x() / 32
}

/// `bar.sync 0;` — wait until every thread of the CTA arrives; orders their shared and
/// global memory accesses before the barrier against those after it.
///
/// # Safety
/// Every thread of the CTA must reach the same barrier (no divergent call sites).
#[inline(always)]
pub unsafe fn sync_threads() {
    // SAFETY: forwarded to the caller.
    unsafe { nvptx::_syncthreads() }
}

/// `bar.sync id, count;` — wait until `count` threads (a multiple of 32, whole warps) have
/// arrived at named barrier `id` (1..=15; 0 is `sync_threads`'); orders the participants'
/// shared and global memory accesses before the barrier against those after it.
///
/// # Safety
/// Exactly `count` threads, whole warps, reach barrier `id` each time it is used, and no
/// other barrier use with that id overlaps.
#[inline(always)]
pub unsafe fn bar_sync(id: u32, count: u32) {
    // SAFETY: forwarded to the caller.
    unsafe { core::arch::asm!("bar.sync {id}, {count};", id = in(reg32) id, count = in(reg32) count, options(nostack)) }
}
