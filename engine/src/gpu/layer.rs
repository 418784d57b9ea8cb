//! One transformer layer on the GPU, fused or unfused, for the last `rows` positions (a
//! decode step: 1; a prefill chunk: its tokens), and the buffers it uses.
//!
//! Fused (nanofuse's ops on their `Route::Auto`, PDL on), at decode:
//! `FusedRmsNormQkv (packed) → attention_decode_rope (q/k norm, RoPE, KV write and
//! attention in one kernel) → ProjResidual (o) → FusedRmsNormGateUp → ProjResidual (down)`:
//! 5 kernels. A prefill chunk runs `qk_norm_rope` and `attention_decode` apart (a row's
//! attention reads the k and v the chunk's other rows write), and the ops take their routes
//! for the chunk's M (RMSNorm + cuBLAS where that measured faster).
//!
//! Unfused (what PyTorch eager runs under a CUDA graph, PDL off):
//! `rms_norm → cuBLAS [Wq; Wk; Wv] → qk_norm_rope → attention_decode → cuBLAS Wo →
//! residual_add → rms_norm → cuBLAS [Wg; Wu] → silu_mul → cuBLAS Wd → residual_add`:
//! 11 kernels. RoPE and attention are the same kernels in both, so the comparison isolates
//! what the fused norm, projections and epilogues buy.

use std::sync::Arc;

use half::bf16;
use nanofuse_host::cudarc::driver::CudaSlice;
use nanofuse_host::ops::{self, GemmImpl};
use nanofuse_host::{
    AttnScratch, AttnShape, Baseline, FusedRmsNormGateUp, FusedRmsNormQkv, Gpu, MlpShape, ProjResidual, QkNorm,
    QkvShape, UnfusedMlp, UnfusedRmsNormQkv, attention_decode, attention_decode_rope, qk_norm_rope,
};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::LayerWeights;

/// Which implementation of the layer's projections the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// nanofuse's fused ops with programmatic dependent launch.
    Fused,
    /// RMSNorm kernels, cuBLAS GEMMs and separate elementwise kernels, no PDL.
    Unfused,
}

/// A layer's projections.
enum Ops {
    Fused { qkv: FusedRmsNormQkv, o: ProjResidual, gate_up: FusedRmsNormGateUp, down: ProjResidual },
    Unfused { qkv: UnfusedRmsNormQkv, o: CudaSlice<bf16>, mlp: UnfusedMlp },
}

/// One layer's device weights.
pub(crate) struct Layer {
    ops: Ops,
    /// Qwen3's per-head RMSNorm weights of q and k.
    qk_norm: Option<(CudaSlice<bf16>, CudaSlice<bf16>)>,
}

/// The activations of up to `rows` positions (a decode step uses the first row), allocated
/// once.
pub(crate) struct Buffers {
    /// Rows the buffers hold.
    pub rows: usize,
    /// The residual stream `[rows, H]`.
    pub h: CudaSlice<bf16>,
    /// The QKV projection, packed `[rows, q_dim + 2 kv_dim]` (both modes).
    qkv: CudaSlice<bf16>,
    /// The attention output `[rows, q_dim]`.
    attn: CudaSlice<bf16>,
    /// The MLP activation `[rows, I]`.
    a: CudaSlice<bf16>,
    /// Unfused scratch: normalized rows `[rows, H]`, a projection output `[rows, H]`, the
    /// gate/up product `[rows, 2I]`.
    pub xn: CudaSlice<bf16>,
    y_h: CudaSlice<bf16>,
    y_gu: CudaSlice<bf16>,
}

impl Buffers {
    pub(crate) fn new(gpu: &Gpu, cfg: &ModelConfig, rows: usize) -> Result<Buffers> {
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let rows = rows.max(1);
        Ok(Buffers {
            rows,
            h: gpu.alloc_zeros(rows * h)?,
            qkv: gpu.alloc_zeros(rows * (q + 2 * kv))?,
            attn: gpu.alloc_zeros(rows * q)?,
            a: gpu.alloc_zeros(rows * i)?,
            xn: gpu.alloc_zeros(rows * h)?,
            y_h: gpu.alloc_zeros(rows * h)?,
            y_gu: gpu.alloc_zeros(rows * 2 * i)?,
        })
    }
}

/// What one layer's step needs besides its weights: the shared attention state and the
/// all-layers KV cache (`per_layer` elements per layer in each of `k_cache`, `v_cache`).
pub(crate) struct AttnCtx<'a> {
    pub shape: &'a AttnShape,
    pub rope: &'a CudaSlice<f32>,
    pub state: &'a mut CudaSlice<u32>,
    pub scratch: &'a mut AttnScratch,
    pub k_cache: &'a mut CudaSlice<bf16>,
    pub v_cache: &'a mut CudaSlice<bf16>,
    pub per_layer: usize,
    pub eps: f32,
}

impl Layer {
    /// Uploads one layer's weights for `mode` (the fused ops fold the norms' gains into
    /// their copies).
    /// `max_rows`: the most rows a later [`Layer::enqueue`] takes (the ops' fallback scratch
    /// and cuBLAS handles are created now, before any graph capture).
    pub(crate) fn new(
        gpu: &Arc<Gpu>,
        cfg: &ModelConfig,
        w: &LayerWeights,
        mode: Mode,
        max_rows: usize,
    ) -> Result<Layer> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let qkv_shape = QkvShape::new(h, cfg.q_dim(), cfg.kv_dim(), eps);
        let wqkv: Vec<bf16> = [&w.q_proj, &w.k_proj, &w.v_proj].iter().flat_map(|t| t.data.iter().copied()).collect();
        let mlp_shape = MlpShape::new(h, cfg.intermediate_size, eps);
        let ops = match mode {
            Mode::Fused => {
                let qkv = FusedRmsNormQkv::new(gpu, qkv_shape, &w.attn_norm.data, &wqkv)?;
                qkv.reserve(max_rows)?;
                let o = ProjResidual::new(gpu, cfg.q_dim(), h, &w.o_proj.data)?;
                o.reserve()?;
                let gate_up =
                    FusedRmsNormGateUp::new(gpu, mlp_shape, &w.mlp_norm.data, &w.gate_proj.data, &w.up_proj.data)?;
                gate_up.reserve(max_rows)?;
                let down = ProjResidual::new(gpu, cfg.intermediate_size, h, &w.down_proj.data)?;
                down.reserve()?;
                Ops::Fused { qkv, o, gate_up, down }
            }
            Mode::Unfused => Ops::Unfused {
                qkv: UnfusedRmsNormQkv::new(gpu, qkv_shape, &w.attn_norm.data, &wqkv)?,
                o: gpu.upload(&w.o_proj.data)?,
                mlp: UnfusedMlp::new(
                    gpu,
                    mlp_shape,
                    &w.mlp_norm.data,
                    &w.gate_proj.data,
                    &w.up_proj.data,
                    &w.down_proj.data,
                )?,
            },
        };
        let qk_norm = match (&w.q_norm, &w.k_norm) {
            (Some(q), Some(k)) => Some((gpu.upload(&q.data)?, gpu.upload(&k.data)?)),
            _ => None,
        };
        Ok(Layer { ops, qk_norm })
    }

    /// Enqueues the layer (number `l`) for the last `rows` positions (`rows <= b.rows`):
    /// the first `rows` rows of `b.h` are its input and output; its `[kv_heads, max_seq,
    /// head_dim]` slices of the caches are taken from `at`. `mark(name)` is called after
    /// each stage (profiling inserts events there; otherwise a no-op).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn enqueue(
        &self,
        gpu: &Gpu,
        cfg: &ModelConfig,
        b: &mut Buffers,
        at: &mut AttnCtx<'_>,
        l: usize,
        rows: usize,
        skip: Option<&str>,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        // Every stage runs but `skip` (a timing of the step without it: the outputs are wrong).
        let on = |stage: &str| skip != Some(stage);
        let (h, qd, kvd, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let norm = self.qk_norm.as_ref().map(|(q, k)| QkNorm { q, k, eps: at.eps });
        let range = l * at.per_layer..(l + 1) * at.per_layer;
        let mut kc = at.k_cache.slice_mut(range.clone());
        let mut vc = at.v_cache.slice_mut(range);
        let m = rows;
        let mut hv = b.h.slice_mut(..m * h);
        let mut qkv = b.qkv.slice_mut(..m * (qd + 2 * kvd));
        let mut attn = b.attn.slice_mut(..m * qd);
        let mut a = b.a.slice_mut(..m * i);
        match &self.ops {
            Ops::Fused { qkv: op, o, gate_up, down } => {
                if on("qkv") {
                    op.forward_packed_into(&hv, m, &mut qkv)?;
                }
                mark("qkv")?;
                if m == 1 {
                    if on("attention") {
                        let (st, sc) = (&*at.state, &mut *at.scratch);
                        attention_decode_rope(gpu, at.shape, &qkv, norm, at.rope, st, &mut kc, &mut vc, sc, &mut attn)?;
                    }
                } else {
                    if on("rope") {
                        qk_norm_rope(gpu, at.shape, m, &mut qkv, norm, at.rope, &mut *at.state, &mut kc, &mut vc)?;
                    }
                    mark("rope")?;
                    if on("attention") {
                        attention_decode(gpu, at.shape, m, &qkv, &kc, &vc, &*at.state, &mut *at.scratch, &mut attn)?;
                    }
                }
                mark("attention")?;
                if on("o_proj") {
                    o.forward_into(&attn, m, &mut hv)?;
                }
                mark("o_proj")?;
                if on("gate_up") {
                    gate_up.forward_into(&hv, m, &mut a)?;
                }
                mark("gate_up")?;
                if on("down") {
                    down.forward_into(&a, m, &mut hv)?;
                }
                mark("down")?;
            }
            Ops::Unfused { qkv: op, o, mlp } => {
                let mut xn = b.xn.slice_mut(..m * h);
                let mut y_h = b.y_h.slice_mut(..m * h);
                let mut y_gu = b.y_gu.slice_mut(..m * 2 * i);
                if on("qkv") {
                    op.forward_into(Baseline::NormCublas, &hv, m, &mut xn, &mut qkv)?;
                }
                mark("qkv")?;
                if on("rope") {
                    qk_norm_rope(gpu, at.shape, m, &mut qkv, norm, at.rope, &mut *at.state, &mut kc, &mut vc)?;
                }
                mark("rope")?;
                if on("attention") {
                    attention_decode(gpu, at.shape, m, &qkv, &kc, &vc, &*at.state, &mut *at.scratch, &mut attn)?;
                }
                mark("attention")?;
                if on("o_proj") {
                    ops::gemm(gpu, GemmImpl::Cublas, &attn, o, &mut y_h, m, qd, h)?;
                    ops::residual_add(gpu, &y_h, &mut hv, m * h)?;
                }
                mark("o_proj")?;
                if on("gate_up") {
                    mlp.gate_up_into(Baseline::NormCublas, &hv, m, &mut xn, &mut y_gu, &mut a)?;
                }
                mark("gate_up")?;
                if on("down") {
                    mlp.down_into(Baseline::NormCublas, &a, m, &mut y_h, &mut hv)?;
                }
                mark("down")?;
            }
        }
        Ok(())
    }
}
