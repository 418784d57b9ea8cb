//! Grid-level ordering: programmatic dependent launch (PDL), memory fences and the
//! atomics of the split-K semaphore.

use core::arch::asm;

/// `griddepcontrol.launch_dependents;` — allow the next kernel in the stream, if it was
/// launched with programmatic stream serialization, to start launching once every CTA of
/// this grid has executed this (or exited). A no-op otherwise.
#[inline(always)]
pub fn griddepcontrol_launch_dependents() {
    // SAFETY: no operands; only affects scheduling of the dependent grid.
    unsafe { asm!("griddepcontrol.launch_dependents;", options(nostack)) }
}

/// `griddepcontrol.wait;` — wait until the grids this one depends on (the previous kernel
/// in the stream, under PDL) have completed and their memory operations are visible.
/// Returns at once when the kernel was launched without PDL. Nothing written by the
/// previous kernel may be read, and nothing it reads may be written, before this.
#[inline(always)]
pub fn griddepcontrol_wait() {
    // SAFETY: no operands; acts as a memory barrier for the compiler (no `nomem`).
    unsafe { asm!("griddepcontrol.wait;", options(nostack)) }
}

/// `membar.gl;` — order this thread's memory accesses before and after it at GPU scope
/// (`__threadfence()`).
#[inline(always)]
pub fn membar_gl() {
    // SAFETY: no operands.
    unsafe { asm!("membar.gl;", options(nostack)) }
}

/// `atom.global.add.u32 old, [p], v;` — atomically add `v` to `*p`; returns the old value.
///
/// # Safety
/// `p` is 4-byte aligned and points at writable global memory.
#[inline(always)]
pub unsafe fn atom_global_add_u32(p: *mut u32, v: u32) -> u32 {
    let old: u32;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("atom.global.add.u32 {o}, [{p}], {v};", o = out(reg32) old, p = in(reg64) p, v = in(reg32) v,
             options(nostack));
    }
    old
}

/// `ld.global.cg.f32 d, [p];` — a load cached in L2 only (not L1), for data other CTAs
/// of this grid wrote (after the fence of the split-K semaphore).
///
/// # Safety
/// `p` is 4-byte aligned and points at readable global memory.
#[inline(always)]
pub unsafe fn ld_global_cg_f32(p: *const f32) -> f32 {
    let d: f32;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ld.global.cg.f32 {d}, [{p}];", d = out(reg32) d, p = in(reg64) p, options(readonly, nostack));
    }
    d
}

/// `st.global.cg.f32 [p], v;` — a store cached in L2 only (the split-K partial sums).
///
/// # Safety
/// `p` is 4-byte aligned and points at writable global memory.
#[inline(always)]
pub unsafe fn st_global_cg_f32(p: *mut f32, v: f32) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("st.global.cg.f32 [{p}], {v};", p = in(reg64) p, v = in(reg32) v, options(nostack)) }
}
