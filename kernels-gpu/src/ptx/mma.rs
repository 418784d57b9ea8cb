//! Tensor cores: `ldmatrix` (shared memory to MMA fragments) and `mma.sync m16n8k16`.
//!
//! Fragment layouts, with `g = lane / 4` and `q = lane % 4` (PTX ISA, "Matrix Fragments
//! for mma.m16n8k16 with floating point type"); a `u32` holds two bf16, the lower address
//! in the low half:
//! * A (16 x 16, row-major): `a0 = A[g][2q..2q+2]`, `a1 = A[g+8][2q..]`,
//!   `a2 = A[g][2q+8..]`, `a3 = A[g+8][2q+8..]`.
//! * B (16 x 8, "col": each column contiguous in k): `b0 = B[2q..2q+2][g]`,
//!   `b1 = B[2q+8..2q+10][g]`.
//! * C/D (16 x 8, f32): `d0 = D[g][2q]`, `d1 = D[g][2q+1]`, `d2 = D[g+8][2q]`,
//!   `d3 = D[g+8][2q+1]`.

use super::shared::SharedPtr;
use core::arch::asm;

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16 {r0,r1,r2,r3}, [p];` — load four 8 x 8
/// bf16 matrices. Lane `8i + j` supplies the address of row `j` of matrix `i` (16
/// contiguous bytes); lane `l` receives in `r[i]` the elements `(l/4, 2(l%4))` and
/// `(l/4, 2(l%4)+1)` of matrix `i`.
///
/// # Safety
/// Every lane's `p` is 16-byte aligned and inside the launch's shared memory; all 32
/// lanes execute it together.
#[inline(always)]
pub unsafe fn ldmatrix_x4(p: SharedPtr<u8>) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg32) p.addr(), options(pure, readonly, nostack));
    }
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {r0,r1,r2,r3}, [p];` — as
/// [`ldmatrix_x4`], but each matrix is transposed on the way: lane `l` receives the
/// elements `(2(l%4), l/4)` and `(2(l%4)+1, l/4)`. For operands stored k-major.
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(p: SharedPtr<u8>) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
             a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
             p = in(reg32) p.addr(), options(pure, readonly, nostack));
    }
    [a, b, c, d]
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c;` — `D = A B + C`
/// for a 16 x 16 bf16 A, a 16 x 8 bf16 B and 16 x 8 f32 C/D, in the fragment layouts
/// above. All 32 lanes must execute it together (warp-uniform control flow).
#[inline(always)]
pub fn mma_m16n8k16_bf16_f32(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
    let (d0, d1, d2, d3): (f32, f32, f32, f32);
    // SAFETY: register-only; the kernels call it from warp-uniform control flow.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 \
             {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, \
             {{{c0}, {c1}, {c2}, {c3}}};",
            d0 = out(reg32) d0, d1 = out(reg32) d1, d2 = out(reg32) d2, d3 = out(reg32) d3,
            a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
            b0 = in(reg32) b[0], b1 = in(reg32) b[1],
            c0 = in(reg32) c[0], c1 = in(reg32) c[1], c2 = in(reg32) c[2], c3 = in(reg32) c[3],
            options(pure, nomem, nostack),
        );
    }
    [d0, d1, d2, d3]
}
