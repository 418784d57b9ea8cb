//! Global-memory loads and stores (128-bit, and one 32-bit load). Pointers are generic addresses of global
//! memory (what the host passes as kernel arguments).

use core::arch::asm;

/// `ld.global.nc.v4.u32 {a,b,c,d}, [p];` — 16 bytes through the read-only (non-coherent)
/// path.
///
/// # Safety
/// `p` is 16-byte aligned, points at 16 readable bytes of global memory, and nothing
/// writes them during the kernel.
#[inline(always)]
pub unsafe fn ld_global_nc_v4_u32(p: *const [u32; 4]) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ld.global.nc.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg64) p, options(pure, readonly, nostack));
    }
    [a, b, c, d]
}

/// `ld.global.cg.v4.u32 {a,b,c,d}, [p];` — 16 bytes cached in L2 only (not L1), for data
/// this kernel also writes.
///
/// # Safety
/// `p` is 16-byte aligned and points at 16 readable bytes of global memory.
#[inline(always)]
pub unsafe fn ld_global_cg_v4_u32(p: *const [u32; 4]) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded to the caller. Not `pure`: the kernel may write the same address.
    unsafe {
        asm!("ld.global.cg.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg64) p, options(readonly, nostack));
    }
    [a, b, c, d]
}

/// `@p ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {a,b,c,d}, [ptr];` — a predicated
/// 16-byte streaming load: it does not allocate in L1 (the data is used once) and asks L2
/// to fetch the surrounding 256 bytes. Returns zeros when `pred` is false, in which case
/// `ptr` is never dereferenced.
///
/// # Safety
/// When `pred`, as for [`ld_global_nc_v4_u32`].
#[inline(always)]
pub unsafe fn ld_global_nc_stream_v4_u32(ptr: *const [u32; 4], pred: bool) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded to the caller; the load only executes when `pred` is true.
    unsafe {
        asm!(
            "{{",
            ".reg .pred p;",
            "setp.ne.u32 p, {pr}, 0;",
            "mov.b32 {a}, 0; mov.b32 {b}, 0; mov.b32 {c}, 0; mov.b32 {d}, 0;",
            "@p ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {{{a}, {b}, {c}, {d}}}, [{ptr}];",
            "}}",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            ptr = in(reg64) ptr, pr = in(reg32) pred as u32,
            options(pure, readonly, nostack),
        );
    }
    [a, b, c, d]
}

/// `st.global.v4.u32 [p], {a,b,c,d};` — 16 bytes.
///
/// # Safety
/// `p` is 16-byte aligned and points at 16 writable bytes of global memory.
#[inline(always)]
pub unsafe fn st_global_v4_u32(p: *mut [u32; 4], v: [u32; 4]) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("st.global.v4.u32 [{p}], {{{a}, {b}, {c}, {d}}};",
             p = in(reg64) p,
             a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
             options(nostack));
    }
}

/// `ld.global.cg.u32 d, [p];` — 4 bytes cached in L2 only (not L1).
///
/// # Safety
/// `p` is 4-byte aligned and points at 4 readable bytes of global memory.
#[inline(always)]
pub unsafe fn ld_global_cg_u32(p: *const u32) -> u32 {
    let d: u32;
    // SAFETY: forwarded to the caller. Not `pure`: the memory may be written around it.
    unsafe {
        asm!("ld.global.cg.u32 {d}, [{p}];", d = out(reg32) d, p = in(reg64) p, options(readonly, nostack));
    }
    d
}

/// `ld.global.cg.v2.u32 {a,b}, [p];` — 8 bytes cached in L2 only (not L1).
///
/// # Safety
/// `p` is 8-byte aligned and points at 8 readable bytes of global memory.
#[inline(always)]
pub unsafe fn ld_global_cg_v2_u32(p: *const [u32; 2]) -> [u32; 2] {
    let (a, b): (u32, u32);
    // SAFETY: forwarded to the caller. Not `pure`: the memory may be written around it.
    unsafe {
        asm!("ld.global.cg.v2.u32 {{{a}, {b}}}, [{p}];", a = out(reg32) a, b = out(reg32) b, p = in(reg64) p,
             options(readonly, nostack));
    }
    [a, b]
}

/// `ld.global.cg.v2.f32 {a,b}, [p];` — 8 bytes cached in L2 only (not L1): data other CTAs
/// of this kernel wrote (the attention's split partials).
///
/// # Safety
/// `p` is 8-byte aligned and points at 8 readable bytes of global memory.
#[inline(always)]
pub unsafe fn ld_global_cg_v2_f32(p: *const [f32; 2]) -> [f32; 2] {
    let (a, b): (f32, f32);
    // SAFETY: forwarded to the caller. Not `pure`: other CTAs write the address.
    unsafe {
        asm!("ld.global.cg.v2.f32 {{{a}, {b}}}, [{p}];", a = out(reg32) a, b = out(reg32) b, p = in(reg64) p,
             options(readonly, nostack));
    }
    [a, b]
}

/// `ld.global.cg.v4.f32 {a,b,c,d}, [p];` — 16 bytes cached in L2 only (not L1).
///
/// # Safety
/// `p` is 16-byte aligned and points at 16 readable bytes of global memory.
#[inline(always)]
pub unsafe fn ld_global_cg_v4_f32(p: *const [f32; 4]) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    // SAFETY: forwarded to the caller. Not `pure`: other CTAs write the address.
    unsafe {
        asm!("ld.global.cg.v4.f32 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg64) p, options(readonly, nostack));
    }
    [a, b, c, d]
}
