//! The decode engine's step and sampling kernels (batch 1 greedy decoding), checked:
//!
//! * [`step_begin`]: advance the device position, take the step's token from the prompt
//!   or the argmax slot, record it, empty the slot, embed the token;
//! * [`argmax`]: the argmax of a bf16 logit vector into a u64 slot;
//! * [`FusedRmsNormArgmax`]: the final RMSNorm + LM head + argmax in one decode kernel (the
//!   logits never go to memory).
//!
//! The slot's key is `config::argmax::key`: the largest logit, the lowest index among equal
//! ones (`torch.argmax`); NaN logits are ignored, `-0.0` counts as `+0.0`, and a slot that
//! saw only NaN stays empty (0), whose token [`argmax_token`] is `u32::MAX`, which
//! [`step_begin`] flags as a bad token.

use std::sync::Arc;

use cudarc::driver::result::memcpy_dtod_async;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use nanofuse_kernels_gpu::config::{self, step};

use crate::check::{BufRef, MAX_DIM, check_dims, check_eps, check_no_overlap, checked_len, checked_u32};
use crate::current::Current;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{DecodeOp, Operands, QkvOut, StepArgs};
use crate::plan::{self, DECODE_MAX_M};

/// The token an argmax slot holds: `u32::MAX - low32(key)` (`u32::MAX` for the empty slot).
pub fn argmax_token(key: u64) -> u32 {
    config::argmax::token(key)
}

/// The slot key of logit `value` at `index` (what the kernels reduce; 0 for a NaN).
pub fn argmax_key(value: f32, index: u32) -> u64 {
    config::argmax::key(value.to_bits(), index)
}

/// The first kernel of a decode step (`rows = 1`) or of a prefill chunk (`rows` tokens;
/// one CTA, see the kernel's documentation): `p0 = state[POS] + 1` (wrapping: initialize
/// `state[POS]` to `u32::MAX`); for `r < rows` at `p = p0 + r`: `token = prompt[p]` if
/// `p < state[PROMPT_LEN]`, else the token of `slot[0]`; `tokens[p] = token` (at
/// `p >= max_seq` nothing is written and `state[FLAGS]` gets `FLAG_OVERFLOW`);
/// `h[r] = embed[token]` (zeros and `FLAG_BAD_TOKEN` for a token `>= vocab`); then
/// `state[POS] = p0 + rows − 1`, `slot[0] = 0`. `max_seq` is the length of `prompt` and
/// `tokens`.
///
/// Errors: `hidden` not a positive multiple of 8, `vocab` or `rows` zero, `rows` above
/// `max_seq`, sizes past 32 bits; `embed` not `[vocab, hidden]`, `state` not
/// `config::step::LEN`, `slot` not 1, `h` not `[rows, hidden]`, `prompt` and `tokens` of
/// different lengths (or empty); buffers not 16-byte aligned or on another device; a
/// written buffer overlapping another.
#[allow(clippy::too_many_arguments)]
pub fn step_begin(
    gpu: &Gpu,
    embed: &impl DevicePtr<bf16>,
    vocab: usize,
    hidden: usize,
    rows: usize,
    prompt: &impl DevicePtr<u32>,
    state: &mut impl DevicePtrMut<u32>,
    slot: &mut impl DevicePtrMut<u64>,
    tokens: &mut impl DevicePtrMut<u32>,
    h: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    check_dims(1, hidden, vocab)?;
    let vocab32 = checked_u32("vocab", vocab)?;
    let max_seq = prompt.len();
    if max_seq == 0 {
        return Err(Error::Dimension { arg: "prompt", expected: "at least one element (max_seq)", got: 0 });
    }
    if rows == 0 || rows > max_seq {
        return Err(Error::Dimension { arg: "rows", expected: "1 to max_seq (the prompt's length)", got: rows });
    }
    let max_seq32 = checked_u32("max_seq", max_seq)?;
    let eb = gpu.input("embed", embed, checked_len("vocab * hidden", vocab, hidden)?)?;
    let pb = gpu.input("prompt", prompt, max_seq)?;
    let sb = gpu.output("state", state, step::LEN)?;
    let slb = gpu.output("slot", slot, 1)?;
    let tb = gpu.output("tokens", tokens, max_seq)?;
    let hb = gpu.output("h", h, checked_len("rows * hidden", rows, hidden)?)?;
    check_no_overlap(&[sb, slb, tb, hb], &[eb, pb])?;
    let a = StepArgs {
        embed: eb.ptr,
        prompt: pb.ptr,
        state: sb.ptr,
        slot: slb.ptr,
        tokens: tb.ptr,
        h: hb.ptr,
        vocab: vocab32,
        hidden: hidden as u32,
        max_seq: max_seq32,
        rows: rows as u32,
    };
    // SAFETY: every buffer checked for length, alignment, context and overlap above;
    // hidden % 8 == 0 (check_dims), 1 <= rows <= max_seq < 2^32.
    unsafe { gpu.kernels.step_begin(gpu.stream(), gpu.pdl(), a) }
}

/// `slot[0] = max(slot[0], key(logits[i], i) over i < n)`: the argmax of `logits [n]` bf16
/// (ties to the lowest index, NaN ignored). `slot` must hold 0 before (as
/// [`step_begin`] leaves it), or an earlier key to reduce into.
///
/// Errors: `n` zero or not below 2^32; lengths other than `n` and 1; buffers not 16-byte
/// aligned or on another device; the slot overlapping the logits.
pub fn argmax(gpu: &Gpu, logits: &impl DevicePtr<bf16>, n: usize, slot: &mut impl DevicePtrMut<u64>) -> Result<()> {
    if n == 0 {
        return Err(Error::Dimension { arg: "n", expected: "positive", got: 0 });
    }
    let n32 = checked_u32("n", n)?;
    let lb = gpu.input("logits", logits, n)?;
    let sb = gpu.output("slot", slot, 1)?;
    check_no_overlap(&[sb], &[lb])?;
    // SAFETY: both buffers checked for length, alignment, context and overlap; 1 <= n < 2^32.
    unsafe { gpu.kernels.argmax(gpu.stream(), gpu.pdl(), lb.ptr, n32, sb.ptr) }
}

/// The model's final RMSNorm, the LM head and the greedy argmax in one decode kernel:
/// `slot[t] = max(slot[t], key(argmax_v bf16(rmsnorm(h[t]) · Wᵀ)[v]))` for `h [m, hidden]`,
/// `W [vocab, hidden]` (`lm_head`, or the tied embedding), `1 <= m <= 16`.
///
/// At construction RMSNorm's gain is folded into a copy of W (`bf16(W · diag(g))`,
/// k-interleaved, as [`FusedRmsNormQkv`](crate::FusedRmsNormQkv) does). Each logit is
/// rounded to bf16 before the argmax, as PyTorch's bf16 logits are; its f32 value differs
/// from an f32 reference by the rounding of W·g and of the logit (a few bf16 ulps), so a
/// near-tie can pick a different token than an f32 argmax would.
pub struct FusedRmsNormArgmax {
    gpu: Arc<Gpu>,
    hidden: usize,
    vocab: usize,
    eps: f32,
    /// `bf16(W · diag(g))` `[vocab, hidden]`, k-interleaved.
    w: CudaSlice<bf16>,
}

impl FusedRmsNormArgmax {
    /// Uploads `g [hidden]` (the final norm's weight) and `w [vocab, hidden]` and folds g in.
    ///
    /// Errors: `hidden` not a positive multiple of 8, `vocab` zero or past 2^31, a bad
    /// eps, lengths other than those.
    pub fn new(gpu: &Arc<Gpu>, hidden: usize, vocab: usize, eps: f32, g: &[bf16], w: &[bf16]) -> Result<Self> {
        Self::check_shape(hidden, vocab, eps)?;
        if g.len() != hidden {
            return Err(Error::Length { arg: "g", expected: hidden, got: g.len() });
        }
        let wlen = checked_len("vocab * hidden", vocab, hidden)?;
        if w.len() != wlen {
            return Err(Error::Length { arg: "w", expected: wlen, got: w.len() });
        }
        let gd = gpu.upload(g)?;
        let wd = gpu.upload(w)?;
        Self::from_device(gpu, hidden, vocab, eps, &gd, &wd)
    }

    /// As [`FusedRmsNormArgmax::new`] from weights already on the device (views of a
    /// weight arena are fine; the tied embedding too): W is copied into the op's own
    /// allocation and g folded into the copy; the caller's buffers are only read, and the
    /// call returns once the copy and the fold have run.
    ///
    /// Errors: as `new`, and buffers not 16-byte aligned or on another device.
    pub fn from_device(
        gpu: &Arc<Gpu>,
        hidden: usize,
        vocab: usize,
        eps: f32,
        g: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
    ) -> Result<Self> {
        Self::check_shape(hidden, vocab, eps)?;
        let wlen = checked_len("vocab * hidden", vocab, hidden)?;
        let gb = gpu.input("g", g, hidden)?;
        let wb = gpu.input("w", w, wlen)?;
        let mut folded = gpu.alloc_zeros::<bf16>(wlen)?;
        let fb = gpu.output("folded weight", &mut folded, wlen)?;
        {
            let _current = Current::bind(gpu.context())?;
            // SAFETY: `w` and the new allocation are device buffers of `wb.bytes` bytes on
            // this context (checked), disjoint (the allocation is new).
            unsafe { memcpy_dtod_async(fb.ptr, wb.ptr, wb.bytes as usize, gpu.stream().cu_stream()) }
                .map_err(Error::driver("cuMemcpyDtoDAsync"))?;
        }
        // SAFETY: the copy and g checked for length, alignment and context; the copy is the
        // op's own allocation, disjoint from g; hidden % 8 == 0 and vocab < 2^31.
        unsafe { gpu.kernels.fold_gain(gpu.stream(), fb.ptr, gb.ptr, vocab as u32, hidden as u32)? };
        // The caller's buffers are read until here.
        gpu.synchronize()?;
        Ok(FusedRmsNormArgmax { gpu: gpu.clone(), hidden, vocab, eps, w: folded })
    }

    fn check_shape(hidden: usize, vocab: usize, eps: f32) -> Result<()> {
        check_dims(1, hidden, vocab)?;
        check_eps(eps)?;
        if vocab > MAX_DIM {
            return Err(Error::TooLarge {
                arg: "vocab",
                got: vocab as u64,
                limit: MAX_DIM as u64,
                why: "32-bit index arithmetic",
            });
        }
        Ok(())
    }

    /// `(hidden, vocab)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.hidden, self.vocab)
    }

    /// The weight the op streams: `bf16(W · diag(g))` `[vocab, hidden]`, k-interleaved.
    pub fn folded_weight(&self) -> &CudaSlice<bf16> {
        &self.w
    }

    /// Reduces the argmax of each of the `m` rows of `rmsnorm(h) · Wᵀ` into `slot [m]`
    /// (u64, which must hold 0 before the call: `step_begin` empties `slot[0]`; zero the
    /// others yourself). `m == 0` is a no-op.
    ///
    /// Errors: `m > 16` ([`Error::TooLarge`]: the decode kernel's range); lengths other
    /// than `[m, hidden]` and `[m]`; buffers not 16-byte aligned or on another device; the
    /// slots overlapping h or the weight.
    pub fn forward_into(&self, h: &impl DevicePtr<bf16>, m: usize, slot: &mut impl DevicePtrMut<u64>) -> Result<()> {
        if m > DECODE_MAX_M {
            return Err(Error::TooLarge {
                arg: "m",
                got: m as u64,
                limit: DECODE_MAX_M as u64,
                why: "the fused LM-head argmax runs the decode kernel only",
            });
        }
        let gpu = &self.gpu;
        let hb = gpu.input("h", h, m * self.hidden)?;
        let sb = gpu.output("slot", slot, m)?;
        let (wptr, _sync) = self.w.device_ptr(gpu.stream());
        let wb = BufRef { name: "w", ptr: wptr, bytes: (self.w.len() * 2) as u64 };
        check_no_overlap(&[sb], &[hb, wb])?;
        if m == 0 {
            return Ok(());
        }
        let info = gpu.info();
        let p = plan::decode_plan(m, self.hidden, self.vocab, info.sm_count, info.max_smem_per_block, None)?;
        let inp = Operands { x: hb.ptr, w: wb.ptr, m: m as u32, hidden: self.hidden as u32 };
        let out = QkvOut::packed(sb.ptr, self.vocab as u32);
        // SAFETY: h, the slots and the folded weight checked above (the weight is the op's
        // own `[vocab, hidden]`); 1 <= m <= 16 and the plan was made for these sizes.
        unsafe { gpu.kernels.decode(gpu.stream(), gpu.pdl(), &p, DecodeOp::Argmax { eps: self.eps }, inp, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_logits_then_lowest_index() {
        let k = |v: f32, i: u32| argmax_key(v, i);
        assert!(k(1.0, 5) > k(0.5, 0));
        assert!(k(-0.5, 9) > k(-1.0, 0));
        assert!(k(0.0, 0) > k(f32::NEG_INFINITY, 0));
        assert!(k(f32::INFINITY, 7) > k(f32::MAX, 0));
        assert!(k(2.0, 3) > k(2.0, 4), "ties go to the lowest index");
        assert_eq!(k(-0.0, 3), k(0.0, 3));
        assert_eq!(k(f32::NAN, 1), 0);
        assert_eq!(k(-f32::NAN, 1), 0);
        assert!(k(f32::NEG_INFINITY, u32::MAX - 1) > 0, "-inf is a real candidate");
        assert_eq!(argmax_token(k(3.0, 1234)), 1234);
        assert_eq!(argmax_token(0), u32::MAX);
    }
}
