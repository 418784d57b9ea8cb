//! Number conversions and fast math: bf16x2 packing, reciprocal square root, 2^x, 1/x.

use core::arch::asm;

/// `cvt.rn.bf16x2.f32 d, hi, lo;` — round two f32 to bf16 (nearest-even) and pack them,
/// `lo` in the low half (the lower address in memory), `hi` in the high half.
#[inline(always)]
pub fn cvt_rn_bf16x2_f32(lo: f32, hi: f32) -> u32 {
    let d: u32;
    // SAFETY: register-only.
    unsafe {
        asm!("cvt.rn.bf16x2.f32 {d}, {hi}, {lo};",
             d = out(reg32) d, hi = in(reg32) hi, lo = in(reg32) lo,
             options(pure, nomem, nostack));
    }
    d
}

/// Unpack a bf16x2 into two f32 `(lo, hi)` (exact: a bf16 is the top half of an f32).
#[inline(always)]
pub fn unpack_bf16x2(v: u32) -> (f32, f32) {
    (f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000))
}

/// `fma.rn.f32 d, a, b, c;` — `a * b + c` with one rounding.
#[inline(always)]
pub fn fma_rn_f32(a: f32, b: f32, c: f32) -> f32 {
    let d: f32;
    // SAFETY: register-only.
    unsafe {
        asm!("fma.rn.f32 {d}, {a}, {b}, {c};", d = out(reg32) d, a = in(reg32) a, b = in(reg32) b, c = in(reg32) c,
             options(pure, nomem, nostack));
    }
    d
}

/// `rsqrt.approx.f32 d, x;` — `1/sqrt(x)`, max relative error 2^-22.9.
#[inline(always)]
pub fn rsqrt_approx_f32(x: f32) -> f32 {
    let d: f32;
    // SAFETY: register-only.
    unsafe {
        asm!("rsqrt.approx.f32 {d}, {x};", d = out(reg32) d, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    d
}

/// `ex2.approx.ftz.f32 d, x;` — `2^x`, max relative error 2^-22 (subnormal results flush
/// to zero).
#[inline(always)]
pub fn ex2_approx_f32(x: f32) -> f32 {
    let d: f32;
    // SAFETY: register-only.
    unsafe {
        asm!("ex2.approx.ftz.f32 {d}, {x};", d = out(reg32) d, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    d
}

/// `rcp.approx.ftz.f32 d, x;` — `1/x`, max relative error 2^-23 (`1/inf = 0`).
#[inline(always)]
pub fn rcp_approx_f32(x: f32) -> f32 {
    let d: f32;
    // SAFETY: register-only.
    unsafe {
        asm!("rcp.approx.ftz.f32 {d}, {x};", d = out(reg32) d, x = in(reg32) x,
             options(pure, nomem, nostack));
    }
    d
}
