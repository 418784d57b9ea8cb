//! The decode engine's attention kernels for one token (batch 1), checked:
//!
//! * [`qk_norm_rope`]: Qwen3's per-head q/k RMSNorm (optional), rotate-half RoPE at the
//!   device position `state[POS]`, q in place, the rotated k and v into the layer's caches;
//! * [`attention_decode`]: flash-decoding over positions `0..=state[POS]` with GQA, the
//!   context split across CTAs and merged by the last CTA of each kv head, in one kernel;
//!   its [`AttnScratch`] holds the split partials and counters.
//!
//! Both read the position on the device, so a captured CUDA graph replays at any context
//! length (`decode_step_begin` advances it, see [`step_begin`](crate::step_begin)).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use nanofuse_kernels_gpu::config::{attention, step};

use crate::check::{BufRef, MAX_DIM, check_eps, check_no_overlap, checked_len};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{AttnArgs, RopeArgs};

/// The attention shape of a layer: heads, kv heads, head dimension and the caches' length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// q heads (`num_attention_heads`).
    pub num_heads: usize,
    /// k/v heads (`num_key_value_heads`); `num_heads` a multiple of it, the group
    /// `num_heads / num_kv_heads` at most `config::attention::MAX_GROUP` (8).
    pub num_kv_heads: usize,
    /// Head dimension: 64 or 128.
    pub head_dim: usize,
    /// Positions each cache holds (and rows of the RoPE table).
    pub max_seq: usize,
}

impl AttnShape {
    /// A shape; [`AttnShape::validate`] checks it.
    pub const fn new(num_heads: usize, num_kv_heads: usize, head_dim: usize, max_seq: usize) -> Self {
        AttnShape { num_heads, num_kv_heads, head_dim, max_seq }
    }

    /// Checks every dimension (errors name the offending one).
    pub fn validate(&self) -> Result<()> {
        if self.num_kv_heads == 0 {
            return Err(Error::Dimension { arg: "num_kv_heads", expected: "positive", got: 0 });
        }
        if self.num_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::Dimension {
                arg: "num_heads",
                expected: "a positive multiple of num_kv_heads",
                got: self.num_heads,
            });
        }
        if self.group() > attention::MAX_GROUP as usize {
            return Err(Error::Dimension {
                arg: "num_heads / num_kv_heads",
                expected: "at most 8 (config::attention::MAX_GROUP)",
                got: self.group(),
            });
        }
        if !attention::HEAD_DIMS.contains(&(self.head_dim as u32)) || self.head_dim > u32::MAX as usize {
            return Err(Error::Dimension { arg: "head_dim", expected: "64 or 128", got: self.head_dim });
        }
        if self.max_seq == 0 {
            return Err(Error::Dimension { arg: "max_seq", expected: "positive", got: 0 });
        }
        let cache = checked_len("num_kv_heads * max_seq", self.num_kv_heads, self.max_seq)?;
        let cache = checked_len("cache elements", cache, self.head_dim)?;
        let table = checked_len("max_seq * head_dim", self.max_seq, self.head_dim)?;
        for (arg, v) in [("cache elements", cache), ("max_seq * head_dim", table), ("q elements", self.q_len())] {
            if v > MAX_DIM {
                return Err(Error::TooLarge {
                    arg,
                    got: v as u64,
                    limit: MAX_DIM as u64,
                    why: "32-bit index arithmetic",
                });
            }
        }
        Ok(())
    }

    /// q heads per kv head.
    pub fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads.max(1)
    }

    /// Elements of q and of the attention output: `num_heads · head_dim`.
    pub fn q_len(&self) -> usize {
        self.num_heads.saturating_mul(self.head_dim)
    }

    /// Elements of one token's k or v: `num_kv_heads · head_dim`.
    pub fn kv_len(&self) -> usize {
        self.num_kv_heads.saturating_mul(self.head_dim)
    }

    /// Elements of one layer's k (or v) cache: `num_kv_heads · max_seq · head_dim`.
    pub fn cache_len(&self) -> usize {
        self.kv_len().saturating_mul(self.max_seq)
    }

    /// Elements of the RoPE table: `max_seq · head_dim` f32.
    pub fn rope_len(&self) -> usize {
        self.max_seq.saturating_mul(self.head_dim)
    }
}

/// Qwen3's per-head RMSNorm weights (`q_norm`, `k_norm`, `[head_dim]` each) and epsilon.
#[derive(Clone, Copy)]
pub struct QkNorm<'a> {
    pub q: &'a CudaSlice<bf16>,
    pub k: &'a CudaSlice<bf16>,
    pub eps: f32,
}

/// For one token: optional per-head RMSNorm of q and k (`qk_norm`), rotate-half RoPE at
/// `pos = state[POS]` (read on the device) from `rope [max_seq, head_dim]` f32 (row p:
/// `cos(p·f_i)` for `i < hd/2`, then `sin(p·f_i)`), in f32, rounded once to bf16. q
/// `[num_heads · hd]` is rewritten in place; the rotated k and v `[num_kv_heads · hd]` go to
/// `k_cache, v_cache [num_kv_heads, max_seq, hd]` at `pos` (views of a larger all-layer
/// cache are fine). At `pos >= max_seq` nothing is written and `state[FLAGS]` gets
/// `FLAG_OVERFLOW`.
///
/// Errors: the shape ([`AttnShape::validate`]); buffer lengths other than the above
/// (`state`: `config::step::LEN`; norm weights `head_dim`); buffers not 16-byte aligned or
/// on another device; a written buffer (q, state, the caches) overlapping another buffer;
/// a bad eps.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    gpu: &Gpu,
    shape: &AttnShape,
    q: &mut impl DevicePtrMut<bf16>,
    k: &impl DevicePtr<bf16>,
    v: &impl DevicePtr<bf16>,
    qk_norm: Option<QkNorm<'_>>,
    rope: &impl DevicePtr<f32>,
    state: &mut impl DevicePtrMut<u32>,
    k_cache: &mut impl DevicePtrMut<bf16>,
    v_cache: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    shape.validate()?;
    let s = shape;
    let kb = gpu.input("k", k, s.kv_len())?;
    let vb = gpu.input("v", v, s.kv_len())?;
    let rb = gpu.input("rope", rope, s.rope_len())?;
    let mut read: Vec<BufRef> = vec![kb, vb, rb];
    let (mut q_w, mut k_w, mut eps) = (0, 0, 0.0);
    if let Some(n) = qk_norm {
        check_eps(n.eps)?;
        let qw = gpu.input("q_norm", n.q, s.head_dim)?;
        let kw = gpu.input("k_norm", n.k, s.head_dim)?;
        (q_w, k_w, eps) = (qw.ptr, kw.ptr, n.eps);
        read.extend([qw, kw]);
    }
    let qb = gpu.output("q", q, s.q_len())?;
    let sb = gpu.output("state", state, step::LEN)?;
    let kc = gpu.output("k_cache", k_cache, s.cache_len())?;
    let vc = gpu.output("v_cache", v_cache, s.cache_len())?;
    check_no_overlap(&[qb, sb, kc, vc], &read)?;
    let a = RopeArgs {
        q: qb.ptr,
        k: kb.ptr,
        v: vb.ptr,
        q_w,
        k_w,
        rope: rb.ptr,
        state: sb.ptr,
        k_cache: kc.ptr,
        v_cache: vc.ptr,
        num_heads: s.num_heads as u32,
        num_kv_heads: s.num_kv_heads as u32,
        head_dim: s.head_dim as u32,
        max_seq: s.max_seq as u32,
        eps,
        norm: qk_norm.is_some(),
    };
    // SAFETY: every buffer checked for length, alignment, context and overlap above; the
    // shape validated (hd 64 or 128, sizes below 2^31).
    unsafe { gpu.kernels.qk_norm_rope(gpu.stream(), gpu.pdl(), a) }
}

/// Splits (CTAs per kv head) of `attention_decode` on a device of `sm_count` SMs: about two
/// CTAs per SM over the kv heads, at most `config::attention::MAX_SPLITS`. At run time only
/// `min(splits, ceil(len / MIN_CHUNK))` of them take positions.
pub fn attention_splits(sm_count: u32, num_kv_heads: usize) -> u32 {
    attention::splits(sm_count, num_kv_heads.min(u32::MAX as usize) as u32)
}

/// The scratch of [`attention_decode`] for one shape: the split partials
/// `[num_heads, splits, ML + head_dim]` f32 and one zeroed counter per kv head (the kernel
/// leaves them zero). Use one scratch per stream: two launches running at the same time
/// must not share one (layers issued in order on one stream may).
pub struct AttnScratch {
    shape: AttnShape,
    splits: u32,
    partial: CudaSlice<f32>,
    counters: CudaSlice<u32>,
}

impl AttnScratch {
    /// Allocates the scratch for `shape` on `gpu`'s device, with the planner's split count.
    pub fn new(gpu: &Arc<Gpu>, shape: &AttnShape) -> Result<Self> {
        shape.validate()?;
        let splits = attention_splits(gpu.info().sm_count, shape.num_kv_heads);
        let per = checked_len("splits * (ML + head_dim)", splits as usize, attention::ML as usize + shape.head_dim)?;
        let partial = gpu.alloc_zeros::<f32>(checked_len("partial elements", shape.num_heads, per)?)?;
        let counters = gpu.alloc_zeros::<u32>(shape.num_kv_heads)?;
        Ok(AttnScratch { shape: *shape, splits, partial, counters })
    }

    /// The splits the scratch was sized for (the launch's grid y).
    pub fn splits(&self) -> u32 {
        self.splits
    }

    /// The shape the scratch was made for.
    pub fn shape(&self) -> &AttnShape {
        &self.shape
    }
}

/// `out[h] = softmax(q_h · K_{kvh}ᵀ / sqrt(hd)) · V_{kvh}` over positions `0..=state[POS]`
/// (read on the device; the whole cache if it is `>= max_seq`), `kvh = h / group`, f32
/// scores, softmax and sums, `out [num_heads · hd]` bf16. `q [num_heads · hd]`,
/// `k_cache, v_cache [num_kv_heads, max_seq, hd]` as [`qk_norm_rope`] writes them.
///
/// Errors: the shape; a scratch made for another shape; buffer lengths other than the
/// above; buffers not 16-byte aligned or on another device; `out` overlapping another
/// buffer.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    gpu: &Gpu,
    shape: &AttnShape,
    q: &impl DevicePtr<bf16>,
    k_cache: &impl DevicePtr<bf16>,
    v_cache: &impl DevicePtr<bf16>,
    state: &impl DevicePtr<u32>,
    scratch: &mut AttnScratch,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    shape.validate()?;
    let s = shape;
    if scratch.shape != *s {
        return Err(Error::Value {
            arg: "scratch",
            expected: "an AttnScratch made for this shape",
            got: format!("{:?}", scratch.shape),
        });
    }
    let qb = gpu.input("q", q, s.q_len())?;
    let kc = gpu.input("k_cache", k_cache, s.cache_len())?;
    let vc = gpu.input("v_cache", v_cache, s.cache_len())?;
    let sb = gpu.input("state", state, step::LEN)?;
    let plen = scratch.partial.len();
    let pb = gpu.output("scratch partials", &mut scratch.partial, plen)?;
    let cb = gpu.output("scratch counters", &mut scratch.counters, s.num_kv_heads)?;
    let ob = gpu.output("out", out, s.q_len())?;
    check_no_overlap(&[ob, pb, cb], &[qb, kc, vc, sb])?;
    let a = AttnArgs {
        q: qb.ptr,
        k_cache: kc.ptr,
        v_cache: vc.ptr,
        state: sb.ptr,
        partial: pb.ptr,
        counters: cb.ptr,
        out: ob.ptr,
        num_heads: s.num_heads as u32,
        num_kv_heads: s.num_kv_heads as u32,
        head_dim: s.head_dim as u32,
        max_seq: s.max_seq as u32,
        splits: scratch.splits,
    };
    // SAFETY: every buffer checked for length, alignment, context and overlap above; the
    // scratch was sized for this shape and its split count (1..=MAX_SPLITS); the counters
    // are zero (allocated zeroed, and every launch leaves them so).
    unsafe { gpu.kernels.attention(gpu.stream(), gpu.pdl(), a) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_validated() {
        for ok in [(16, 8, 128), (32, 8, 64), (9, 3, 64), (32, 8, 128), (8, 8, 64), (8, 1, 64)] {
            assert!(AttnShape::new(ok.0, ok.1, ok.2, 4096).validate().is_ok(), "{ok:?}");
        }
        let bad = |s: AttnShape, arg: &str| match s.validate() {
            Err(Error::Dimension { arg: a, .. }) => assert_eq!(a, arg, "{s:?}"),
            other => panic!("{s:?}: {other:?}"),
        };
        bad(AttnShape::new(12, 8, 128, 16), "num_heads");
        bad(AttnShape::new(0, 8, 128, 16), "num_heads");
        bad(AttnShape::new(8, 0, 128, 16), "num_kv_heads");
        bad(AttnShape::new(16, 1, 128, 16), "num_heads / num_kv_heads");
        bad(AttnShape::new(8, 8, 96, 16), "head_dim");
        bad(AttnShape::new(8, 8, 256, 16), "head_dim");
        bad(AttnShape::new(8, 8, 64, 0), "max_seq");
        assert!(matches!(AttnShape::new(8, 8, 128, 1 << 22).validate(), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn splits_cover_the_device_and_stay_in_range() {
        assert_eq!(attention_splits(132, 8), 33);
        assert_eq!(attention_splits(132, 3), attention::MAX_SPLITS);
        assert_eq!(attention_splits(1, 64), 1);
        for len in [1, 31, 32, 33, 1000, 4097, 32768] {
            let a = attention::active(33, len);
            assert!((1..=33).contains(&a) && (a - 1) * attention::MIN_CHUNK < len.max(1), "{len}: {a}");
        }
    }
}
