//! Global-memory atomics and memory fences (grid-wide reductions and the last-CTA pattern).

use core::arch::asm;

/// `atom.global.add.u32 d, [p], v;` — adds `v` to the word at `p` (relaxed, GPU scope) and
/// returns the old value.
///
/// # Safety
/// `p` is 4-byte aligned and points at 4 writable bytes of global memory.
#[inline(always)]
pub unsafe fn atom_global_add_u32(p: *mut u32, v: u32) -> u32 {
    let d: u32;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("atom.global.add.u32 {d}, [{p}], {v};", d = out(reg32) d, p = in(reg64) p, v = in(reg32) v,
             options(nostack));
    }
    d
}

/// `atom.global.max.u64 d, [p], v;` — `*p = max(*p, v)` unsigned (relaxed, GPU scope);
/// the old value is discarded.
///
/// # Safety
/// `p` is 8-byte aligned and points at 8 writable bytes of global memory.
#[inline(always)]
pub unsafe fn atom_global_max_u64(p: *mut u64, v: u64) {
    let _d: u64;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("atom.global.max.u64 {d}, [{p}], {v};", d = out(reg64) _d, p = in(reg64) p, v = in(reg64) v,
             options(nostack));
    }
}

/// `atom.global.or.b32 d, [p], v;` — `*p |= v` (relaxed, GPU scope); the old value is
/// discarded.
///
/// # Safety
/// `p` is 4-byte aligned and points at 4 writable bytes of global memory.
#[inline(always)]
pub unsafe fn atom_global_or_b32(p: *mut u32, v: u32) {
    let _d: u32;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("atom.global.or.b32 {d}, [{p}], {v};", d = out(reg32) _d, p = in(reg64) p, v = in(reg32) v,
             options(nostack));
    }
}

/// `fence.acq_rel.gpu;` — orders this thread's memory accesses before the fence against
/// those after it for every thread of the GPU (CUDA's `__threadfence()`): a release before
/// signalling through an atomic, an acquire after observing one.
#[inline(always)]
pub fn fence_acq_rel_gpu() {
    // SAFETY: no operands; a compiler memory barrier too (no `nomem`).
    unsafe { asm!("fence.acq_rel.gpu;", options(nostack)) }
}
