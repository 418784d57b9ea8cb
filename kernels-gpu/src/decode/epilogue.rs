//! # Epilogues of the decode kernel: where a warp's finished 16 W rows x 8 tokens go
//!
//! The decode body (`decode::run`) ends with, per token tile, the fragment of every
//! part-0 warp: lane `(g, q)` holds element `i` of `[row g + 8 (i / 2), token 2q + i % 2]`
//! of the warp's 16 W rows (scaled by inv_rms when the epilogue asks for the norm). An
//! [`Epilogue`] says what those values become:
//! * [`RowStore`]: the GEMM's columns split into q, k and v (the fused QKV op, with the
//!   norm), or all of them into one `y` (`nkv = 0`, without it: the plain decode GEMM,
//!   baseline (b));
//! * [`SiluMul`]: the fused MLP's gate/up op. Its weight holds gate and up rows in blocks
//!   of 8 (`config::mlp::GATE_UP_BLOCK`): a warp's rows `g` and `g + 8` are gate row
//!   `j` and up row `j` of the same intermediate index, so each lane holds both halves of
//!   its outputs and `a = silu(gate) · up` needs no exchange;
//! * [`ResidualAdd`]: `out = residual + y` (the MLP's down projection and the attention
//!   output projection), in place when `out` is the residual;
//! * [`ArgMax`]: the LM head's greedy pick, `slot[t] = max key(bf16(logit), row)` by
//!   `atom.global.max.u64` (`config::argmax`); the `[M, vocab]` logits never go to memory.
//!
//! Two ways out, chosen by the body: the two-token-tile entries stage a warp's rounded
//! results in its own shared-memory slots (`stage`), then lane `l` writes one 16-byte
//! vector (`store_staged`), so every 32-byte output sector is written whole by one
//! instruction; the one-tile entries store each lane's values directly (`store_fragment`).
//! With a K split across a cluster, CTAs finish single elements (`store_element`).
//!
//! Rounding follows PyTorch's unfused ops: the GEMM result is rounded to bf16 before the
//! activation or the residual add, which are computed in f32 and rounded once more.

use crate::activation::{add_bf16x8, round_bf16, silu_mul};
use crate::argmax_key::{key_bf16, max_bfly_u64};
use crate::ptx::atomic::atom_global_max_u64;
use crate::ptx::convert::cvt_rn_bf16x2_f32;
use crate::ptx::global::{ld_global_cg_v4_u32, st_global_v4_u32};
use crate::ptx::shared::{SharedPtr, ld_shared_v4_u32, st_shared_u16};
use crate::qkv_out::QkvOut;

/// What the decode kernel does with its finished accumulators. Every method is called only
/// by part-0 warps (and with a cluster, for the elements a CTA finishes).
pub trait Epilogue: Copy {
    /// Whether the accumulators are scaled by the row's inv_rms (the fused RMSNorm).
    const NORM: bool;
    /// Whether the epilogue takes single elements, so K may be split across a cluster.
    const ELEMENTWISE: bool;

    /// W rows (the GEMM's N).
    fn rows(&self) -> u32;

    /// What `store_fragment` reads besides the accumulators (the residual), loaded by
    /// [`Epilogue::preload`]; `()` where it reads nothing.
    type Pre: Copy + Default;

    /// Loads what `store_fragment` of token tile 0 will read, for the lane's fragment of
    /// the warp's 16 rows from `row0`: the body calls it right after the dependency wait, so
    /// that the load's latency overlaps x staging and the MMAs instead of following them.
    ///
    /// # Safety
    /// As `store_fragment`, after the dependency wait.
    #[inline(always)]
    unsafe fn preload(&self, _row0: u32, _gq: u32, _qq: u32, _m: u32) -> Self::Pre {
        Self::Pre::default()
    }

    /// Stores one lane's fragment `a`, element `i` scaled by `sc[i % 2]` (its token's scale), of the warp's 16 rows from `row0`,
    /// token tile `t`, lane `(gq, qq)`, for tokens below `m`; `pre` is what
    /// [`Epilogue::preload`] loaded for tile 0 (the default for other tiles).
    ///
    /// # Safety
    /// The epilogue's tensors hold `m` tokens.
    #[allow(clippy::too_many_arguments)] // the fragment's coordinates, as the body holds them
    unsafe fn store_fragment(&self, row0: u32, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2], m: u32, pre: Self::Pre);

    /// Writes one lane's fragment `a` (scaled as in `store_fragment`) of token tile `t` into the warp's staging area
    /// `stage` (32 bytes per token).
    ///
    /// # Safety
    /// `stage` holds `8 · tiles` tokens of 32 bytes.
    unsafe fn stage(&self, stage: SharedPtr<u8>, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2]);

    /// Lane `lane` writes its 16 bytes of the warp's staged tile (published by a warp
    /// barrier) to the output, for tokens below `m`.
    ///
    /// # Safety
    /// As `store_fragment`; the tile was staged by `stage`.
    unsafe fn store_staged(&self, stage: SharedPtr<u8>, lane: u32, row0: u32, m: u32);

    /// Stores the finished value of `[token, row]` (cluster split-K; only called where
    /// `ELEMENTWISE`).
    ///
    /// # Safety
    /// `row < rows()`, `token` below the M the tensors hold.
    unsafe fn store_element(&self, token: u32, row: u32, value: f32);
}

/// Rounds `value` to bf16 and stores it at byte `offset` of a staging area.
///
/// # Safety
/// The address is inside the warp's staging area.
#[inline(always)]
unsafe fn put(stage: SharedPtr<u8>, offset: u32, value: f32) {
    let bits = cvt_rn_bf16x2_f32(value, 0.0) as u16;
    // SAFETY: forwarded to the caller.
    unsafe { st_shared_u16(stage.byte_add(offset).cast(), bits) };
}

/// Stages a fragment as bf16 `[token][16 rows]`, 32 bytes per token (rows `g` and `g + 8`
/// of tokens `8t + 2q` and `8t + 2q + 1`).
///
/// # Safety
/// As [`Epilogue::stage`].
#[inline(always)]
unsafe fn stage_rows(stage: SharedPtr<u8>, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2]) {
    let tok0 = t * 8 + 2 * qq;
    // SAFETY: 8 tiles tokens of 32 bytes fit the staging area (caller).
    unsafe {
        put(stage, tok0 * 32 + gq * 2, a[0] * sc[0]);
        put(stage, (tok0 + 1) * 32 + gq * 2, a[1] * sc[1]);
        put(stage, tok0 * 32 + (gq + 8) * 2, a[2] * sc[0]);
        put(stage, (tok0 + 1) * 32 + (gq + 8) * 2, a[3] * sc[1]);
    }
}

impl<const NORM: bool> Epilogue for RowStore<NORM> {
    const NORM: bool = NORM;
    const ELEMENTWISE: bool = true;

    type Pre = ();

    #[inline(always)]
    fn rows(&self) -> u32 {
        self.0.n()
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store_fragment(&self, row0: u32, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2], m: u32, _: ()) {
        // SAFETY: forwarded to the caller.
        unsafe { store_rows_direct(&self.0, row0, t, gq, qq, a, sc, m) }
    }

    #[inline(always)]
    unsafe fn stage(&self, stage: SharedPtr<u8>, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2]) {
        // SAFETY: forwarded to the caller.
        unsafe { stage_rows(stage, t, gq, qq, a, sc) }
    }

    #[inline(always)]
    unsafe fn store_staged(&self, stage: SharedPtr<u8>, lane: u32, row0: u32, m: u32) {
        // SAFETY: forwarded to the caller.
        unsafe { store_rows_staged(&self.0, stage, lane, row0, m) }
    }

    #[inline(always)]
    unsafe fn store_element(&self, token: u32, row: u32, value: f32) {
        // SAFETY: forwarded to the caller.
        unsafe { self.0.store(token, row, value) }
    }
}

/// W rows straight to output columns (`QkvOut`: split into q, k, v, or one `y` with
/// `nkv = 0`); with `NORM`, scaled by the row's inv_rms. `RowStore<true>` is the fused QKV
/// op's epilogue, `RowStore<false>` the plain decode GEMM's.
#[derive(Clone, Copy)]
pub struct RowStore<const NORM: bool>(pub QkvOut);

/// Element `i` of a fragment: `(row, token)`.
#[inline(always)]
fn elem(row0: u32, t: u32, gq: u32, qq: u32, i: u32) -> (u32, u32) {
    (row0 + gq + (i / 2) * 8, t * 8 + 2 * qq + i % 2)
}

/// Each of a lane's four values by a 2-byte store (rows `< N`, tokens `< m`).
///
/// # Safety
/// As [`Epilogue::store_fragment`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_rows_direct(out: &QkvOut, row0: u32, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2], m: u32) {
    let n = out.n();
    for (i, &value) in a.iter().enumerate() {
        let (row, tok) = elem(row0, t, gq, qq, i as u32);
        if row < n && tok < m {
            // SAFETY: row < N, tok < M.
            unsafe { out.store(tok, row, value * sc[i % 2]) };
        }
    }
}

/// Lane `l` stores rows `8 (l % 2) .. + 8` of token `l / 2` with one 16-byte store.
///
/// # Safety
/// As [`Epilogue::store_staged`].
#[inline(always)]
unsafe fn store_rows_staged(out: &QkvOut, stage: SharedPtr<u8>, lane: u32, row0: u32, m: u32) {
    let (tok, row) = (lane / 2, row0 + 8 * (lane % 2));
    if tok < m && row < out.n() {
        // SAFETY: the warp's own staged tile; row < N and tok < M.
        unsafe { out.store8(tok, row, ld_shared_v4_u32(stage.byte_add(lane * 16).cast())) };
    }
}

/// The gate/up op's epilogue: `a [M, I] = silu(gate) · up`, the W rows in blocks of 8 gate
/// rows, then the 8 up rows of the same intermediate indices (`config::mlp`), so W row
/// `16 j + r` is gate row `8 j + r` for `r < 8` and up row `8 j + r - 8` otherwise.
#[derive(Clone, Copy)]
pub struct SiluMul {
    /// `a [M, inter]`.
    pub a: *mut u16,
    /// The intermediate size I (a multiple of 8); W has `2 I` rows.
    pub inter: u32,
}

impl Epilogue for SiluMul {
    const NORM: bool = true;
    const ELEMENTWISE: bool = false;

    type Pre = ();

    #[inline(always)]
    fn rows(&self) -> u32 {
        2 * self.inter
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store_fragment(&self, row0: u32, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2], m: u32, _: ()) {
        // Rows g (gate) and g + 8 (up) of the warp's block: intermediate column row0 / 2 + g.
        let col = row0 / 2 + gq;
        for j in 0..2 {
            let tok = t * 8 + 2 * qq + j;
            if col < self.inter && tok < m {
                let (gate, up) = (a[j as usize] * sc[j as usize], a[j as usize + 2] * sc[j as usize]);
                let bits = cvt_rn_bf16x2_f32(silu_mul(gate, up), 0.0) as u16;
                // SAFETY: col < I, tok < M.
                unsafe { self.a.add(tok as usize * self.inter as usize + col as usize).write(bits) };
            }
        }
    }

    #[inline(always)]
    unsafe fn stage(&self, stage: SharedPtr<u8>, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2]) {
        // bf16 [token][8 columns], 16 bytes per token (the first half of each 32-byte slot).
        let tok0 = t * 8 + 2 * qq;
        // SAFETY: forwarded to the caller.
        unsafe {
            put(stage, tok0 * 32 + gq * 2, silu_mul(a[0] * sc[0], a[2] * sc[0]));
            put(stage, (tok0 + 1) * 32 + gq * 2, silu_mul(a[1] * sc[1], a[3] * sc[1]));
        }
    }

    #[inline(always)]
    unsafe fn store_staged(&self, stage: SharedPtr<u8>, lane: u32, row0: u32, m: u32) {
        // Lane l < 16: the 8 columns of token l, one 16-byte store (I % 8 == 0 and row0 % 16
        // == 0 keep it aligned and inside the row).
        let (tok, col) = (lane, row0 / 2);
        if lane < 16 && tok < m && col < self.inter {
            // SAFETY: the warp's own staged tile; tok < M, columns col..col + 8 <= I.
            unsafe {
                let words = ld_shared_v4_u32(stage.byte_add(tok * 32).cast());
                let dst = self.a.add(tok as usize * self.inter as usize + col as usize);
                st_global_v4_u32(dst as *mut [u32; 4], words);
            }
        }
    }

    #[inline(always)]
    unsafe fn store_element(&self, _token: u32, _row: u32, _value: f32) {
        // Gate and up of one output are finished by different CTAs of a cluster: the kernel
        // refuses K splits for this epilogue (ELEMENTWISE = false) before getting here.
        crate::ptx::trap()
    }
}

/// The projection op's epilogue: `out [M, N] = residual + bf16(y)`, rounded once more (in
/// place when `out == residual`: each element is read and written by the same thread).
#[derive(Clone, Copy)]
pub struct ResidualAdd {
    /// `[M, N]`, read.
    pub residual: *const u16,
    /// `[M, N]`, written (may be `residual`).
    pub out: *mut u16,
    /// Output features N (a multiple of 8).
    pub n: u32,
}

impl ResidualAdd {
    /// The address of `[token, col]` in `out` and in `residual`.
    #[inline(always)]
    fn at(&self, token: u32, col: u32) -> (*mut u16, *const u16) {
        let off = token as usize * self.n as usize + col as usize;
        (self.out.wrapping_add(off), self.residual.wrapping_add(off))
    }

    /// `out[token, col] = bf16(residual + bf16(value))`, `residual` the bits read from
    /// `[token, col]` of the residual.
    ///
    /// # Safety
    /// `col < N`, `token` below the M the tensors hold.
    #[inline(always)]
    unsafe fn add_one(&self, token: u32, col: u32, residual: u16, value: f32) {
        let r = f32::from_bits((residual as u32) << 16);
        // SAFETY: forwarded to the caller.
        unsafe { self.at(token, col).0.write(cvt_rn_bf16x2_f32(r + round_bf16(value), 0.0) as u16) };
    }
}

impl Epilogue for ResidualAdd {
    const NORM: bool = false;
    const ELEMENTWISE: bool = true;

    /// The residual of the lane's four elements of token tile 0 (0 outside the tensors).
    type Pre = [u16; 4];

    #[inline(always)]
    unsafe fn preload(&self, row0: u32, gq: u32, qq: u32, m: u32) -> [u16; 4] {
        core::array::from_fn(|i| {
            let (row, tok) = elem(row0, 0, gq, qq, i as u32);
            // SAFETY: row < N, tok < M.
            if row < self.n && tok < m { unsafe { self.at(tok, row).1.read() } } else { 0 }
        })
    }

    #[inline(always)]
    fn rows(&self) -> u32 {
        self.n
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store_fragment(&self, row0: u32, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2], m: u32, pre: [u16; 4]) {
        for (i, &value) in a.iter().enumerate() {
            let (row, tok) = elem(row0, t, gq, qq, i as u32);
            if row < self.n && tok < m {
                let r = if t == 0 {
                    pre[i]
                } else {
                    // SAFETY: row < N, tok < M.
                    unsafe { self.at(tok, row).1.read() }
                };
                // SAFETY: row < N, tok < M.
                unsafe { self.add_one(tok, row, r, value * sc[i % 2]) };
            }
        }
    }

    #[inline(always)]
    unsafe fn stage(&self, stage: SharedPtr<u8>, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2]) {
        // SAFETY: forwarded to the caller.
        unsafe { stage_rows(stage, t, gq, qq, a, sc) }
    }

    #[inline(always)]
    unsafe fn store_staged(&self, stage: SharedPtr<u8>, lane: u32, row0: u32, m: u32) {
        // Lane l: rows 8 (l % 2) .. + 8 of token l / 2; N % 8 == 0 keeps the 8 inside the row
        // and 16-byte aligned.
        let (tok, row) = (lane / 2, row0 + 8 * (lane % 2));
        if tok < m && row < self.n {
            let (dst, src) = self.at(tok, row);
            // SAFETY: the warp's own staged tile; tok < M and rows row..row + 8 <= N.
            unsafe {
                let y = ld_shared_v4_u32(stage.byte_add(lane * 16).cast());
                let r = ld_global_cg_v4_u32(src as *const [u32; 4]);
                let sum = add_bf16x8(r, y);
                st_global_v4_u32(dst as *mut [u32; 4], sum);
            }
        }
    }

    #[inline(always)]
    unsafe fn store_element(&self, token: u32, row: u32, value: f32) {
        // SAFETY: forwarded to the caller.
        unsafe { self.add_one(token, row, self.at(token, row).1.read(), value) }
    }
}

/// The LM head's epilogue: `slot[t] = max(slot[t], max_row key(bf16(logit[t, row]), row))`
/// (`config::argmax::key`: the largest logit, the lowest row among equal ones, NaN
/// ignored), so the greedy token of each of the `m` rows is chosen without writing the
/// `[M, vocab]` logits. Each logit is rounded to bf16 first, as the argmax of PyTorch's
/// bf16 logits sees them. The slots must hold 0 before the launch.
///
/// The direct path (`store_fragment`) reduces a token's keys over the 8 lanes that hold it
/// (`lane / 4`, butterflies 4, 8, 16), the staged path over the 2 lanes of a token's
/// 16-byte row pair; then one atomic per token per warp. With a K split across a cluster
/// each finished element is one atomic (`store_element`).
#[derive(Clone, Copy)]
pub struct ArgMax {
    /// `slot [M]` u64.
    pub slot: *mut u64,
    /// W rows: the vocabulary size.
    pub n: u32,
}

impl ArgMax {
    /// One atomic max of `key` into token `tok`'s slot (skipped for the empty key).
    ///
    /// # Safety
    /// `tok` below the M the slots hold.
    #[inline(always)]
    unsafe fn put(&self, tok: u32, key: u64) {
        if key != 0 {
            // SAFETY: forwarded to the caller.
            unsafe { atom_global_max_u64(self.slot.add(tok as usize), key) };
        }
    }
}

/// The bf16 bits of `value` (nearest-even).
#[inline(always)]
fn bf16_bits(value: f32) -> u16 {
    cvt_rn_bf16x2_f32(value, 0.0) as u16
}

impl Epilogue for ArgMax {
    const NORM: bool = true;
    const ELEMENTWISE: bool = true;

    type Pre = ();

    #[inline(always)]
    fn rows(&self) -> u32 {
        self.n
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store_fragment(&self, row0: u32, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2], m: u32, _: ()) {
        // Called by every lane of the warp (the body's epilogue loop is warp-uniform).
        for j in 0..2u32 {
            let tok = t * 8 + 2 * qq + j;
            let mut best = 0u64;
            for half in 0..2u32 {
                let row = row0 + gq + 8 * half;
                if row < self.n && tok < m {
                    let v = a[(2 * half + j) as usize] * sc[j as usize];
                    best = best.max(key_bf16(bf16_bits(v), row));
                }
            }
            // The 8 lanes of one qq (lane bits 2..4) hold the token's 16 rows.
            best = max_bfly_u64(best, 4);
            best = max_bfly_u64(best, 8);
            best = max_bfly_u64(best, 16);
            if gq == 0 && tok < m {
                // SAFETY: tok < M.
                unsafe { self.put(tok, best) };
            }
        }
    }

    #[inline(always)]
    unsafe fn stage(&self, stage: SharedPtr<u8>, t: u32, gq: u32, qq: u32, a: [f32; 4], sc: [f32; 2]) {
        // SAFETY: forwarded to the caller.
        unsafe { stage_rows(stage, t, gq, qq, a, sc) }
    }

    #[inline(always)]
    unsafe fn store_staged(&self, stage: SharedPtr<u8>, lane: u32, row0: u32, m: u32) {
        // Lane l: the staged bf16 rows 8 (l % 2) .. + 8 of token l / 2; called by every lane.
        let (tok, row) = (lane / 2, row0 + 8 * (lane % 2));
        // SAFETY: the warp's own staged tile.
        let words = unsafe { ld_shared_v4_u32(stage.byte_add(lane * 16).cast()) };
        let mut best = 0u64;
        if tok < m {
            for (i, &w) in words.iter().enumerate() {
                let r = row + 2 * i as u32;
                if r < self.n {
                    best = best.max(key_bf16(w as u16, r));
                }
                if r + 1 < self.n {
                    best = best.max(key_bf16((w >> 16) as u16, r + 1));
                }
            }
        }
        best = max_bfly_u64(best, 1);
        if lane.is_multiple_of(2) && tok < m {
            // SAFETY: tok < M.
            unsafe { self.put(tok, best) };
        }
    }

    #[inline(always)]
    unsafe fn store_element(&self, token: u32, row: u32, value: f32) {
        // SAFETY: forwarded to the caller (row < N, token < M).
        unsafe { self.put(token, key_bf16(bf16_bits(value), row)) }
    }
}
