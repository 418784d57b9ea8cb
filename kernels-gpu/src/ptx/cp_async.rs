//! Asynchronous global-to-shared copies (`cp.async`, sm_80+), used by the multi-stage
//! pipelines and the decode kernel's x staging: issue copies, `commit_group`, and later
//! `wait_group` until at most N groups are still in flight.

use super::shared::SharedPtr;
use core::arch::asm;

/// `cp.async.cg.shared.global [dst], [src], 16, src_bytes;` — copy 16 bytes from global
/// to shared memory, bypassing L1. Only the first `src_bytes` (0 or 16) are read; the
/// rest of the 16 bytes are zero-filled, so `src_bytes = 0` writes 16 zero bytes without
/// touching `src` (used for tiles that hang over the matrix edge).
///
/// # Safety
/// `dst` is 16-byte aligned and inside the launch's shared memory; when `src_bytes > 0`,
/// `src` is 16-byte aligned and points at that many readable bytes of global memory. The
/// data may be read only after a matching [`cp_async_wait_group`] and a barrier.
#[inline(always)]
pub unsafe fn cp_async_cg_shared_global_16(dst: SharedPtr<u8>, src: *const u8, src_bytes: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("cp.async.cg.shared.global [{d}], [{s}], 16, {n};",
             d = in(reg32) dst.addr(), s = in(reg64) src, n = in(reg32) src_bytes,
             options(nostack));
    }
}

/// `cp.async.ca.shared.global [dst], [src], 16, src_bytes;` — copy 16 bytes from global
/// to shared memory through L1. `src_bytes` is 0 or 16; 0 writes 16 zero bytes without
/// touching `src`.
///
/// # Safety
/// `dst` is 16-byte aligned and inside the launch's shared memory; when `src_bytes > 0`,
/// `src` is 16-byte aligned and points at 16 readable bytes of global memory. The data may
/// be read only after a matching [`cp_async_wait_group`] and a barrier.
#[inline(always)]
pub unsafe fn cp_async_ca_shared_global_16(dst: SharedPtr<u8>, src: *const u8, src_bytes: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("cp.async.ca.shared.global [{d}], [{s}], 16, {n};",
             d = in(reg32) dst.addr(), s = in(reg64) src, n = in(reg32) src_bytes,
             options(nostack));
    }
}

/// `cp.async.ca.shared.global [dst], [src], 4, src_bytes;` — copy 4 bytes from global to
/// shared memory (through L1: `.cg` takes only 16-byte copies). `src_bytes` is 0 or 4; 0
/// writes 4 zero bytes without touching `src`. Lets a copy scatter words, e.g. to stage a
/// row in a permuted order.
///
/// # Safety
/// `dst` is 4-byte aligned and inside the launch's shared memory; when `src_bytes > 0`,
/// `src` is 4-byte aligned and points at 4 readable bytes of global memory. The data may
/// be read only after a matching [`cp_async_wait_group`] and a barrier.
#[inline(always)]
pub unsafe fn cp_async_ca_shared_global_4(dst: SharedPtr<u8>, src: *const u8, src_bytes: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("cp.async.ca.shared.global [{d}], [{s}], 4, {n};",
             d = in(reg32) dst.addr(), s = in(reg64) src, n = in(reg32) src_bytes,
             options(nostack));
    }
}

/// `cp.async.commit_group;` — close the group of copies issued since the last commit.
#[inline(always)]
pub fn cp_async_commit_group() {
    // SAFETY: no operands; committing an empty group is allowed.
    unsafe { asm!("cp.async.commit_group;", options(nostack)) }
}

/// `cp.async.wait_all;` — wait until every `cp.async` this thread issued, committed or not,
/// has completed.
#[inline(always)]
pub fn cp_async_wait_all() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.wait_all;", options(nostack)) }
}

/// `cp.async.wait_group N;` — wait until at most `N` committed groups are pending.
#[inline(always)]
pub fn cp_async_wait_group<const N: u32>() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)) }
}

/// `cp.async.bulk.prefetch.L2.global [src], bytes;` — ask L2 to fetch `bytes` of global
/// memory from `src` (sm_90). Nothing is returned and nothing waits for it: a later load of
/// the range finds it in L2 if it has arrived.
///
/// # Safety
/// `src` is 16-byte aligned, `bytes` is a multiple of 16, and the whole range lies inside
/// one global-memory allocation.
#[inline(always)]
pub unsafe fn cp_async_bulk_prefetch_l2_global(src: *const u8, bytes: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("cp.async.bulk.prefetch.L2.global [{s}], {n};",
             s = in(reg64) src, n = in(reg32) bytes,
             options(nostack));
    }
}
