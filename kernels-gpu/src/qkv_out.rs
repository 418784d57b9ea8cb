//! Where a GEMM's output column goes: the fused QKV kernels write column `n` of the
//! `[M, Nq + 2 Nkv]` product into `q [M, Nq]`, `k [M, Nkv]` or `v [M, Nkv]` (three
//! separate row-major tensors). The plain GEMM kernels use `Nkv = 0`: everything lands
//! in `q`, which is then `y [M, N]`.

use crate::ptx::convert::cvt_rn_bf16x2_f32;
use crate::ptx::global::st_global_v4_u32;

/// The three output tensors and their widths.
#[derive(Clone, Copy)]
pub struct QkvOut {
    pub q: *mut u16,
    pub k: *mut u16,
    pub v: *mut u16,
    pub nq: u32,
    pub nkv: u32,
}

impl QkvOut {
    /// Total columns `Nq + 2 Nkv`.
    #[inline(always)]
    pub fn n(&self) -> u32 {
        self.nq + 2 * self.nkv
    }

    /// The tensor, its row length and the column within it, for global column `col`.
    #[inline(always)]
    fn locate(&self, col: u32) -> (*mut u16, u32, u32) {
        // Fields read into locals first: choosing between field references instead kept a
        // copy of the struct in local memory (stack) in a loop over columns.
        let QkvOut { q, k, v, nq, nkv } = *self;
        if col < nq {
            (q, nq, col)
        } else if col < nq + nkv {
            (k, nkv, col - nq)
        } else {
            (v, nkv, col - nq - nkv)
        }
    }

    /// The address of `[token, col]` in the tensor that column `col` belongs to.
    ///
    /// # Safety
    /// `col < self.n()`, `token` is below the M the tensors were allocated for.
    #[inline(always)]
    pub unsafe fn element(&self, token: u32, col: u32) -> *mut u16 {
        let (base, width, c) = self.locate(col);
        // SAFETY: forwarded to the caller; the offset is computed in 64 bits.
        unsafe { base.add(token as usize * width as usize + c as usize) }
    }

    /// Round `value` to bf16 and store it at `[token, col]`.
    ///
    /// # Safety
    /// `col < self.n()`, `token` is below the M the tensors were allocated for.
    #[inline(always)]
    pub unsafe fn store(&self, token: u32, col: u32, value: f32) {
        let bits = cvt_rn_bf16x2_f32(value, 0.0) as u16;
        // SAFETY: forwarded to the caller.
        unsafe { self.element(token, col).write(bits) }
    }

    /// Store `[token, col]` and `[token, col + 1]`, skipping columns `>= n`: one 4-byte
    /// store when both land in the same tensor at an even offset, else two 2-byte stores.
    ///
    /// # Safety
    /// `col < self.n()`, `token` is below the M the tensors were allocated for.
    #[inline(always)]
    pub unsafe fn store_pair(&self, token: u32, col: u32, lo: f32, hi: f32) {
        let (base, width, c) = self.locate(col);
        let offset = token as usize * width as usize + c as usize;
        // SAFETY: forwarded to the caller; both columns are checked against the tensor.
        unsafe {
            if c + 1 < width && offset.is_multiple_of(2) {
                (base.add(offset) as *mut u32).write(cvt_rn_bf16x2_f32(lo, hi));
            } else {
                self.store(token, col, lo);
                if col + 1 < self.n() {
                    self.store(token, col + 1, hi);
                }
            }
        }
    }

    /// Store the eight bf16 values `words` (two per word, lower column first) at
    /// `[token, col..col + 8)`, skipping columns `>= n`: one 16-byte store when all eight
    /// land in one tensor at a 16-byte-aligned offset (the tensors are 16-byte aligned),
    /// else element by element.
    ///
    /// # Safety
    /// `col < self.n()`, `token` is below the M the tensors were allocated for.
    #[inline(always)]
    pub unsafe fn store8(&self, token: u32, col: u32, words: [u32; 4]) {
        let (base, width, c) = self.locate(col);
        let offset = token as usize * width as usize + c as usize;
        // SAFETY: forwarded to the caller; the vector store covers columns c..c + 8 < width
        // of one row of one tensor, 16-byte aligned; the fallback checks every column.
        unsafe {
            if c + 8 <= width && offset.is_multiple_of(8) {
                st_global_v4_u32(base.add(offset) as *mut [u32; 4], words);
            } else {
                for e in 0..8 {
                    if col + e < self.n() {
                        let bits = (words[e as usize / 2] >> (16 * (e % 2))) as u16;
                        self.element(token, col + e).write(bits);
                    }
                }
            }
        }
    }
}
