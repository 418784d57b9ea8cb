//! The decode engine's attention kernels, checked, for the last `rows` positions of a
//! sequence (a decode step: 1; a prefill chunk: its tokens), whose q, k, v come packed as
//! the QKV projection writes them (`qkv [rows, (num_heads + 2 num_kv_heads) · head_dim]`):
//!
//! * [`qk_norm_rope`]: Qwen3's per-head q/k RMSNorm (optional), rotate-half RoPE at each
//!   row's position, q in place, the rotated k and v into the layer's caches;
//! * [`attention_decode`]: flash-decoding, causal (row `r` sees positions up to its own),
//!   with GQA, the context split across CTAs and merged by the last CTA of each row and kv
//!   head, in one kernel; its [`AttnScratch`] holds the split partials and counters.
//!
//! Row `r`'s position is `state[POS] − (rows − 1 − r)`, read on the device, so a captured
//! CUDA graph replays at any context length (`decode_step_begin` advances it, see
//! [`step_begin`](crate::step_begin)).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;
use nanofuse_kernels_gpu::config::{attention, step};

use crate::check::{BufRef, MAX_DIM, check_eps, check_no_overlap, checked_len};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{AttnArgs, AttnRope, RopeArgs};

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
        let qkv = ("qkv elements", self.qkv_len());
        for (arg, v) in [("cache elements", cache), ("max_seq * head_dim", table), ("q elements", self.q_len()), qkv] {
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

    /// Elements of one token's packed q, k, v: `(num_heads + 2 num_kv_heads) · head_dim`.
    pub fn qkv_len(&self) -> usize {
        self.num_heads.saturating_add(self.num_kv_heads.saturating_mul(2)).saturating_mul(self.head_dim)
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

/// Most rows (positions) of one [`qk_norm_rope`] or [`attention_decode`] launch (the
/// grid's y limit).
pub const MAX_ROWS: usize = 65535;

/// Error unless `1 <= rows <= MAX_ROWS`.
fn check_rows(rows: usize) -> Result<()> {
    if rows == 0 || rows > MAX_ROWS {
        return Err(Error::Dimension { arg: "rows", expected: "1 to 65535 (attention::MAX_ROWS)", got: rows });
    }
    Ok(())
}

/// For the last `rows` positions, row `r` at `p_r = state[POS] − (rows − 1 − r)` (read on
/// the device): optional per-head RMSNorm of q and k (`qk_norm`), rotate-half RoPE at `p_r`
/// from `rope [max_seq, head_dim]` f32 (row p: `cos(p·f_i)` for `i < hd/2`, then
/// `sin(p·f_i)`), in f32, rounded once to bf16. `qkv [rows, (num_heads + 2 num_kv_heads) ·
/// hd]` holds each row's q, k, v side by side (the packed QKV projection); q is rewritten
/// in place; the rotated k and v go to `k_cache, v_cache [num_kv_heads, max_seq, hd]` at
/// `p_r` (views of a larger all-layer cache are fine). A row at `p_r >= max_seq` writes
/// nothing and sets `FLAG_OVERFLOW` in `state[FLAGS]`.
///
/// Errors: the shape ([`AttnShape::validate`]); `rows` outside `1..=MAX_ROWS`; buffer
/// lengths other than the above (`state`: `config::step::LEN`; norm weights `head_dim`);
/// buffers not 16-byte aligned or on another device; a written buffer (qkv, state, the
/// caches) overlapping another buffer; a bad eps.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    gpu: &Gpu,
    shape: &AttnShape,
    rows: usize,
    qkv: &mut impl DevicePtrMut<bf16>,
    qk_norm: Option<QkNorm<'_>>,
    rope: &impl DevicePtr<f32>,
    state: &mut impl DevicePtrMut<u32>,
    k_cache: &mut impl DevicePtrMut<bf16>,
    v_cache: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    shape.validate()?;
    check_rows(rows)?;
    let s = shape;
    let rb = gpu.input("rope", rope, s.rope_len())?;
    let mut read: Vec<BufRef> = vec![rb];
    let (mut q_w, mut k_w, mut eps) = (0, 0, 0.0);
    if let Some(n) = qk_norm {
        check_eps(n.eps)?;
        let qw = gpu.input("q_norm", n.q, s.head_dim)?;
        let kw = gpu.input("k_norm", n.k, s.head_dim)?;
        (q_w, k_w, eps) = (qw.ptr, kw.ptr, n.eps);
        read.extend([qw, kw]);
    }
    let qb = gpu.output("qkv", qkv, checked_len("rows * qkv", rows, s.qkv_len())?)?;
    let sb = gpu.output("state", state, step::LEN)?;
    let kc = gpu.output("k_cache", k_cache, s.cache_len())?;
    let vc = gpu.output("v_cache", v_cache, s.cache_len())?;
    check_no_overlap(&[qb, sb, kc, vc], &read)?;
    let a = RopeArgs {
        qkv: qb.ptr,
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
        rows: rows as u32,
        eps,
        norm: qk_norm.is_some(),
    };
    // SAFETY: every buffer checked for length, alignment, context and overlap above; the
    // shape validated (hd 64 or 128, sizes below 2^31); 1 <= rows <= 65535.
    unsafe { gpu.kernels.qk_norm_rope(gpu.stream(), gpu.pdl(), a) }
}

/// Splits (CTAs per row and kv head) of an `attention_decode` launch over `rows`
/// positions on a device of `sm_count` SMs: about two CTAs per SM over the rows and kv
/// heads, from 1 to `config::attention::MAX_SPLITS`. At run time only
/// `min(splits, ceil(len / MIN_CHUNK))` of them take positions.
pub fn attention_splits(sm_count: u32, num_kv_heads: usize, rows: usize) -> u32 {
    let c = |v: usize| v.min(u32::MAX as usize) as u32;
    attention::splits(sm_count, c(num_kv_heads), c(rows))
}

/// The scratch of [`attention_decode`] for one shape and up to `max_rows` rows per launch:
/// the split partials `[rows, num_heads, splits, ML + head_dim]` f32 (sized for the largest
/// `rows · splits` of those launches) and one zeroed counter per row and kv head (the
/// kernel leaves them zero). Use one scratch per stream: two launches running at the same
/// time must not share one (layers issued in order on one stream may).
pub struct AttnScratch {
    shape: AttnShape,
    max_rows: usize,
    sm_count: u32,
    partial: CudaSlice<f32>,
    counters: CudaSlice<u32>,
}

impl AttnScratch {
    /// The scratch for one row per launch (a decode step).
    pub fn new(gpu: &Arc<Gpu>, shape: &AttnShape) -> Result<Self> {
        Self::with_rows(gpu, shape, 1)
    }

    /// The scratch for launches of up to `max_rows` rows (a prefill chunk), with the
    /// planner's split counts.
    pub fn with_rows(gpu: &Arc<Gpu>, shape: &AttnShape, max_rows: usize) -> Result<Self> {
        shape.validate()?;
        check_rows(max_rows)?;
        let sm_count = gpu.info().sm_count;
        let most =
            (1..=max_rows).map(|r| r * attention_splits(sm_count, shape.num_kv_heads, r) as usize).max().unwrap_or(1);
        let per = checked_len("rows * splits * (ML + head_dim)", most, attention::ML as usize + shape.head_dim)?;
        let partial = gpu.alloc_zeros::<f32>(checked_len("partial elements", shape.num_heads, per)?)?;
        let counters = gpu.alloc_zeros::<u32>(checked_len("rows * num_kv_heads", max_rows, shape.num_kv_heads)?)?;
        Ok(AttnScratch { shape: *shape, max_rows, sm_count, partial, counters })
    }

    /// The splits of a launch over `rows` rows (the launch's grid y).
    pub fn splits(&self, rows: usize) -> u32 {
        attention_splits(self.sm_count, self.shape.num_kv_heads, rows)
    }

    /// The most rows a launch with this scratch may take.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The shape the scratch was made for.
    pub fn shape(&self) -> &AttnShape {
        &self.shape
    }
}

/// For the last `rows` positions, row `r` at `p_r = state[POS] − (rows − 1 − r)` (read on
/// the device; the whole cache if `p_r >= max_seq`): `out[r, h] = softmax(q_{r,h} ·
/// K_{kvh}ᵀ / sqrt(hd)) · V_{kvh}` over positions `0..=p_r` (causal), `kvh = h / group`, f32
/// scores, softmax and sums, `out [rows, num_heads · hd]` bf16. q is read from the packed
/// `qkv [rows, (num_heads + 2 num_kv_heads) · hd]` as [`qk_norm_rope`] leaves it;
/// `k_cache, v_cache [num_kv_heads, max_seq, hd]` as it writes them.
///
/// Errors: the shape; a scratch made for another shape or fewer rows; `rows` zero; buffer
/// lengths other than the above; buffers not 16-byte aligned or on another device; `out`
/// overlapping another buffer.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    gpu: &Gpu,
    shape: &AttnShape,
    rows: usize,
    qkv: &impl DevicePtr<bf16>,
    k_cache: &impl DevicePtr<bf16>,
    v_cache: &impl DevicePtr<bf16>,
    state: &impl DevicePtr<u32>,
    scratch: &mut AttnScratch,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    shape.validate()?;
    check_rows(rows)?;
    let s = shape;
    let kc = gpu.input("k_cache", k_cache, s.cache_len())?;
    let vc = gpu.input("v_cache", v_cache, s.cache_len())?;
    let qb = gpu.input("qkv", qkv, checked_len("rows * qkv", rows, s.qkv_len())?)?;
    let sb = gpu.input("state", state, step::LEN)?;
    launch_attention(gpu, s, rows, [qb, kc, vc, sb], scratch, out, None)
}

/// The decode step's [`qk_norm_rope`] and [`attention_decode`] in one kernel, for one row
/// at `pos = state[POS]`: `qkv [(num_heads + 2 num_kv_heads) · hd]` as the QKV projection
/// wrote it (before RoPE; left unchanged), the optional q/k norm and RoPE applied in
/// registers, the rotated k and v written to the caches at `pos` (nothing at
/// `pos >= max_seq`, where `decode_step_begin` has flagged the overflow), then `out` as
/// [`attention_decode`] computes it. The same results as the two kernels, except that q
/// stays f32 after RoPE instead of being rounded to bf16 (k is rounded as the cache holds
/// it).
///
/// Errors: as for the two kernels; the caches overlapping any other buffer.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode_rope(
    gpu: &Gpu,
    shape: &AttnShape,
    qkv: &impl DevicePtr<bf16>,
    qk_norm: Option<QkNorm<'_>>,
    rope: &impl DevicePtr<f32>,
    state: &impl DevicePtr<u32>,
    k_cache: &mut impl DevicePtrMut<bf16>,
    v_cache: &mut impl DevicePtrMut<bf16>,
    scratch: &mut AttnScratch,
    out: &mut impl DevicePtrMut<bf16>,
) -> Result<()> {
    shape.validate()?;
    let s = shape;
    let qb = gpu.input("qkv", qkv, s.qkv_len())?;
    let sb = gpu.input("state", state, step::LEN)?;
    let rb = gpu.input("rope", rope, s.rope_len())?;
    let mut read = vec![qb, sb, rb];
    let mut fuse = AttnRope { table: rb.ptr, q_w: 0, k_w: 0, eps: 0.0 };
    if let Some(n) = qk_norm {
        check_eps(n.eps)?;
        let qw = gpu.input("q_norm", n.q, s.head_dim)?;
        let kw = gpu.input("k_norm", n.k, s.head_dim)?;
        (fuse.q_w, fuse.k_w, fuse.eps) = (qw.ptr, kw.ptr, n.eps);
        read.extend([qw, kw]);
    }
    let kc = gpu.output("k_cache", k_cache, s.cache_len())?;
    let vc = gpu.output("v_cache", v_cache, s.cache_len())?;
    check_no_overlap(&[kc, vc], &read)?;
    launch_attention(gpu, s, 1, [qb, kc, vc, sb], scratch, out, Some((fuse, read)))
}

/// The checks and launch both forms share: `bufs` = qkv, k cache, v cache, state (checked
/// by the caller); `rope`: the fused form's inputs and every buffer it reads.
fn launch_attention(
    gpu: &Gpu,
    s: &AttnShape,
    rows: usize,
    bufs: [BufRef; 4],
    scratch: &mut AttnScratch,
    out: &mut impl DevicePtrMut<bf16>,
    rope: Option<(AttnRope, Vec<BufRef>)>,
) -> Result<()> {
    if scratch.shape != *s {
        return Err(Error::Value {
            arg: "scratch",
            expected: "an AttnScratch made for this shape",
            got: format!("{:?}", scratch.shape),
        });
    }
    if rows > scratch.max_rows {
        return Err(Error::Value {
            arg: "scratch",
            expected: "an AttnScratch made for at least this many rows (AttnScratch::with_rows)",
            got: format!("one for {} rows", scratch.max_rows),
        });
    }
    let ctas = checked_len("rows * num_kv_heads", rows, s.num_kv_heads)?;
    if ctas > MAX_DIM {
        return Err(Error::TooLarge {
            arg: "rows * num_kv_heads",
            got: ctas as u64,
            limit: MAX_DIM as u64,
            why: "the grid's x",
        });
    }
    let splits = scratch.splits(rows);
    let [qb, kc, vc, sb] = bufs;
    let plen = scratch.partial.len();
    let pb = gpu.output("scratch partials", &mut scratch.partial, plen)?;
    let clen = scratch.counters.len();
    let cb = gpu.output("scratch counters", &mut scratch.counters, clen)?;
    let ob = gpu.output("out", out, checked_len("rows * q", rows, s.q_len())?)?;
    let (fuse, mut read) = match rope {
        Some((f, read)) => (Some(f), read),
        None => (None, vec![qb, sb]),
    };
    read.extend([kc, vc]);
    check_no_overlap(&[ob, pb, cb], &read)?;
    let a = AttnArgs {
        qkv: qb.ptr,
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
        rows: rows as u32,
        splits,
        rope: fuse,
    };
    // SAFETY: every buffer checked for length, alignment, context and overlap (here and by
    // the callers); the scratch was sized for this shape and up to max_rows rows at these
    // split counts (1..=MAX_SPLITS); the counters are zero (allocated zeroed, and every
    // launch leaves them so); rows · num_kv_heads <= MAX_DIM < 2^31 (checked); the fused
    // form runs one row.
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
        assert_eq!(attention_splits(132, 8, 1), 33);
        assert_eq!(attention_splits(132, 3, 1), attention::MAX_SPLITS);
        assert_eq!(attention_splits(1, 64, 1), 1);
        // A prefill chunk: fewer splits, down to one per row.
        assert_eq!(attention_splits(132, 8, 4), 9);
        assert_eq!(attention_splits(132, 8, 512), 1);
        assert_eq!(attention_splits(132, 8, 0), 33);
        for len in [1, 31, 32, 33, 1000, 4097, 32768] {
            let a = attention::active(33, len);
            assert!((1..=33).contains(&a) && (a - 1) * attention::MIN_CHUNK < len.max(1), "{len}: {a}");
        }
    }
}
