//! Warpgroup MMA (`wgmma`, sm_90a): a warpgroup (4 consecutive warps, the first a multiple
//! of 4) multiplies a 64 x N x 16 tile asynchronously, B from shared memory through a matrix
//! descriptor, A from registers here, f32 accumulators in registers; and `setmaxnreg`, which
//! moves registers between the warpgroups of a CTA.
//!
//! # Fragments (thread `t` of the warpgroup, `w = t / 32`, lane `l`, `g = l / 4`, `q = l % 4`)
//! * A (64 x 16 bf16, from registers): warp `w` supplies rows `16 w ..+ 16` as `mma.sync`'s A
//!   fragment: `a0 = A[16w + g][2q..2q+2]`, `a1 = A[16w + g + 8][2q..]`, `a2 = A[16w + g][2q+8..]`,
//!   `a3 = A[16w + g + 8][2q+8..]`.
//! * D (64 x N f32): register `i < N / 2` holds `D[16w + g + 8 ((i / 2) % 2)][8 (i / 4) + 2q + i % 2]`.
//!
//! # B descriptor (64 bits) for a K-major tile with 128-byte swizzle
//! Rows of 64 bf16 (128 bytes) one after another, the tile 1024-byte aligned, 16-byte
//! chunk `c` of row `r` stored at chunk `c ^ (r % 8)` (what the TMA writes with
//! `CU_TENSOR_MAP_SWIZZLE_128B`): bits 0-13 the start address >> 4, bits 16-29 the leading
//! byte offset >> 4 (unused with swizzling; 1), bits 32-45 the stride byte offset >> 4
//! (1024 bytes between 8-row groups: 64), bits 62-63 the layout (1: 128-byte swizzle).
//! The k16 slice `j` of the 64-wide row starts `32 j` bytes in: add `2 j` to the
//! descriptor ([`desc_k_sw128`], in `config` so that the host's tests check its fields). (PTX ISA, "Matrix Descriptor Format"; CUTLASS's
//! `make_gmma_desc` makes the same choice.)
//!
//! # Ordering
//! [`wgmma_fence`] before the first `wgmma` and after registers it reads (A, accumulators)
//! were written by other instructions; [`wgmma_commit_group`] closes the issued MMAs into a
//! group; [`wgmma_wait_group`] waits until at most N groups are pending, after which their
//! accumulators and A registers may be touched. Every instruction here is `.aligned`: all
//! threads of the warpgroup execute it, with warpgroup-uniform operands where it says.

use core::arch::asm;

pub use crate::config::wgmma::desc_k_sw128;

/// `wgmma.fence.sync.aligned;` — order the warpgroup's earlier register writes before the
/// `wgmma`s that follow.
#[inline(always)]
pub fn wgmma_fence() {
    // SAFETY: no operands; the warpgroup executes it together (caller's control flow).
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) }
}

/// `wgmma.commit_group.sync.aligned;` — close the `wgmma`s issued so far into one group.
#[inline(always)]
pub fn wgmma_commit_group() {
    // SAFETY: no operands.
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) }
}

/// `wgmma.wait_group.sync.aligned N;` — wait until at most `N` committed groups are pending.
/// `acc` passes through as an operand, so the compiler cannot move its uses across the wait.
#[inline(always)]
pub fn wgmma_wait_group<const N: u32>(acc: &mut [f32; 128]) {
    // SAFETY: register-only; the empty asm below pins the accumulators after the wait.
    unsafe { asm!("wgmma.wait_group.sync.aligned {n};", n = const N, options(nostack)) }
    pin_128(acc);
}

/// An empty `asm!` that reads and writes every accumulator: a compiler-level fence that keeps
/// their uses on the right side of the `wgmma` instructions (the registers are written
/// asynchronously, which the compiler cannot see).
#[inline(always)]
pub fn pin_128(acc: &mut [f32; 128]) {
    macro_rules! pin {
        ($($i:literal)*) => {
            // SAFETY: a PTX comment naming the registers; the operands only constrain the
            // compiler.
            unsafe {
                asm!(concat!("// pin ", $("{", $i, "} ",)*), $(inout(reg32) acc[$i],)*
                     options(nostack, nomem, preserves_flags))
            }
        };
    }
    pin!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127);
}

/// `wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 d, {a0, a1, a2, a3}, b_desc, p, 1, 1, 0;`
/// — `D = A B + (accumulate ? D : 0)` for a 64 x 16 A in registers (fragment above), the 16 x
/// 256 B of the descriptor (K-major: B's column `n` is W row `n`), `D` 64 x 256 f32 (128
/// registers per thread, fragment above). Asynchronous: `acc` must not be read or written
/// until a [`wgmma_wait_group`] covers it.
///
/// # Safety
/// The descriptor names a tile in the launch's shared memory whose data the async proxy
/// sees (a TMA copy waited on through its barrier); the whole warpgroup executes it with the
/// same `b_desc` and `accumulate`; a [`wgmma_fence`] came after the last write of `a`/`acc`.
#[inline(always)]
pub unsafe fn wgmma_m64n256k16_f32_bf16_rs(acc: &mut [f32; 128], a: [u32; 4], b_desc: u64, accumulate: bool) {
    let scale_d = accumulate as u32;
    macro_rules! mma {
        ($first:literal $($i:literal)*) => {
            // SAFETY: forwarded to the caller.
            unsafe {
                asm!(
                    concat!(
                        "{{ .reg .pred p; setp.ne.b32 p, {sd}, 0; ",
                        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {{{", $first, "}",
                        $(", {", $i, "}",)*
                        "}}, {{{a0}, {a1}, {a2}, {a3}}}, {bd}, p, 1, 1, 0; }}"
                    ),
                    inout(reg32) acc[$first],
                    $(inout(reg32) acc[$i],)*
                    a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                    bd = in(reg64) b_desc, sd = in(reg32) scale_d,
                    options(nostack),
                )
            }
        };
    }
    mma!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
         32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63
         64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95
         96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127);
}

/// `setmaxnreg.dec.sync.aligned.u32 N;` — lower this warpgroup's registers per thread to `N`
/// (a multiple of 8 in 24..=256), returning them to the CTA's pool.
#[inline(always)]
pub fn setmaxnreg_dec<const N: u32>() {
    // SAFETY: no operands; the warpgroup executes it together; the kernel has a register
    // cap at entry (launch bounds).
    unsafe { asm!("setmaxnreg.dec.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}

/// `setmaxnreg.inc.sync.aligned.u32 N;` — raise this warpgroup's registers per thread to `N`
/// (blocks until the CTA's pool has them).
#[inline(always)]
pub fn setmaxnreg_inc<const N: u32>() {
    // SAFETY: as [`setmaxnreg_dec`].
    unsafe { asm!("setmaxnreg.inc.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}
