//! The tensor memory accelerator (TMA, sm_90): tile copies from global to shared memory
//! described by a tensor map (`CUtensorMap`, 128 bytes, encoded by the host with
//! `cuTensorMapEncodeTiled`), completing on an `mbarrier`.
//!
//! The kernels keep their tensor maps in global memory (written by the host before the
//! launch), so a CTA runs [`fence_proxy_tensormap_acquire_sys`] on each map once before
//! its first copy through it (CUDA programming guide, "Using TMA to transfer
//! multi-dimensional arrays": a map modified by the host needs the `.sys` acquire).

use super::shared::SharedPtr;
use core::arch::asm;

/// `fence.proxy.tensormap::generic.acquire.sys [map], 128;` — make the 128-byte tensor map
/// at `map`, written by the host, visible to this thread's tensor copies.
///
/// # Safety
/// `map` points at a 64-byte aligned `CUtensorMap` in global memory.
#[inline(always)]
pub unsafe fn fence_proxy_tensormap_acquire_sys(map: *const u8) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("fence.proxy.tensormap::generic.acquire.sys [{m}], 128;", m = in(reg64) map, options(nostack)) }
}

/// `cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [dst],
/// [map, {c0, c1}], [bar];` — copy the box at element coordinates `(c0, c1)` (innermost
/// dimension first) of the 2-D tensor that `map` describes into shared memory at `dst`,
/// in the map's swizzle; elements outside the tensor arrive as zeros, and the whole box's
/// bytes are credited to `bar`'s transaction count when they have landed.
///
/// # Safety
/// `map` is a valid tensor map in global memory (fenced, see the module documentation);
/// `dst` is inside the launch's shared memory with room for the box, aligned as the
/// swizzle needs (1024 bytes for 128-byte swizzle); `bar` is an initialized barrier of
/// this CTA whose current phase expects the box's bytes (`mbarrier_arrive_expect_tx`).
#[inline(always)]
pub unsafe fn cp_async_bulk_tensor_2d_global_shared(
    dst: SharedPtr<u8>,
    map: *const u8,
    c0: i32,
    c1: i32,
    bar: SharedPtr<u64>,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [{d}], [{m}, {{{x}, {y}}}], [{b}];",
             d = in(reg32) dst.addr(), m = in(reg64) map, x = in(reg32) c0, y = in(reg32) c1,
             b = in(reg32) bar.addr(), options(nostack));
    }
}

/// `cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster
/// [dst], [map, {c0, c1}], [bar], mask;` — as [`cp_async_bulk_tensor_2d_global_shared`], but
/// the box lands at the same shared-memory offset `dst` in every CTA of the cluster whose
/// rank has its bit set in `mask`, and each of them has the bytes credited to its barrier at
/// offset `bar`.
///
/// # Safety
/// As [`cp_async_bulk_tensor_2d_global_shared`], in every destination CTA (each is running,
/// its barrier initialized and its phase expecting the bytes, its `dst` free); the launch is
/// a cluster launch holding those ranks.
#[inline(always)]
pub unsafe fn cp_async_bulk_tensor_2d_global_shared_multicast(
    dst: SharedPtr<u8>,
    map: *const u8,
    c0: i32,
    c1: i32,
    bar: SharedPtr<u64>,
    mask: u16,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [{d}], [{m}, {{{x}, {y}}}], [{b}], {k};",
             d = in(reg32) dst.addr(), m = in(reg64) map, x = in(reg32) c0, y = in(reg32) c1,
             b = in(reg32) bar.addr(), k = in(reg16) mask, options(nostack));
    }
}
