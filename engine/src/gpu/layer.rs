//! One transformer layer on the GPU, fused or unfused, and the buffers a decode step uses.
//!
//! Fused (nanofuse's ops, PDL on):
//! `FusedRmsNormQkv → qk_norm_rope (+ KV write) → attention_decode → ProjResidual (o) →
//! FusedRmsNormGateUp → ProjResidual (down)`: 6 kernels.
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
    QkvShape, UnfusedMlp, UnfusedRmsNormQkv, attention_decode, qk_norm_rope,
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

/// The activations of one decode step (batch 1), allocated once.
pub(crate) struct Buffers {
    /// The residual stream `[H]`.
    pub h: CudaSlice<bf16>,
    /// q, k, v of the fused QKV op, `[q_dim]`, `[kv_dim]`, `[kv_dim]`.
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    /// The unfused QKV GEMM's packed `[q | k | v]`.
    qkv: CudaSlice<bf16>,
    /// The attention output `[q_dim]`.
    attn: CudaSlice<bf16>,
    /// The MLP activation `[I]`.
    a: CudaSlice<bf16>,
    /// Unfused scratch: a normalized row `[H]`, a projection output `[H]`, the gate/up
    /// product `[2I]`.
    pub xn: CudaSlice<bf16>,
    y_h: CudaSlice<bf16>,
    y_gu: CudaSlice<bf16>,
}

impl Buffers {
    pub(crate) fn new(gpu: &Gpu, cfg: &ModelConfig) -> Result<Buffers> {
        let (h, q, kv, i) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        Ok(Buffers {
            h: gpu.alloc_zeros(h)?,
            q: gpu.alloc_zeros(q)?,
            k: gpu.alloc_zeros(kv)?,
            v: gpu.alloc_zeros(kv)?,
            qkv: gpu.alloc_zeros(q + 2 * kv)?,
            attn: gpu.alloc_zeros(q)?,
            a: gpu.alloc_zeros(i)?,
            xn: gpu.alloc_zeros(h)?,
            y_h: gpu.alloc_zeros(h)?,
            y_gu: gpu.alloc_zeros(2 * i)?,
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
    pub(crate) fn new(gpu: &Arc<Gpu>, cfg: &ModelConfig, w: &LayerWeights, mode: Mode) -> Result<Layer> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let qkv_shape = QkvShape::new(h, cfg.q_dim(), cfg.kv_dim(), eps);
        let wqkv: Vec<bf16> = [&w.q_proj, &w.k_proj, &w.v_proj].iter().flat_map(|t| t.data.iter().copied()).collect();
        let mlp_shape = MlpShape::new(h, cfg.intermediate_size, eps);
        let ops = match mode {
            Mode::Fused => {
                let qkv = FusedRmsNormQkv::new(gpu, qkv_shape, &w.attn_norm.data, &wqkv)?;
                qkv.reserve(1)?;
                let o = ProjResidual::new(gpu, cfg.q_dim(), h, &w.o_proj.data)?;
                let gate_up =
                    FusedRmsNormGateUp::new(gpu, mlp_shape, &w.mlp_norm.data, &w.gate_proj.data, &w.up_proj.data)?;
                gate_up.reserve(1)?;
                let down = ProjResidual::new(gpu, cfg.intermediate_size, h, &w.down_proj.data)?;
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

    /// Enqueues the layer (number `l`) for one token: `b.h` is its input and output; its
    /// `[kv_heads, max_seq, head_dim]` slices of the caches are taken from `at`.
    /// `mark(name)` is called after each stage (profiling inserts events there; otherwise
    /// a no-op).
    pub(crate) fn enqueue(
        &self,
        gpu: &Gpu,
        cfg: &ModelConfig,
        b: &mut Buffers,
        at: &mut AttnCtx<'_>,
        l: usize,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<()> {
        let (h, qd, kvd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let norm = self.qk_norm.as_ref().map(|(q, k)| QkNorm { q, k, eps: at.eps });
        let range = l * at.per_layer..(l + 1) * at.per_layer;
        let mut kc = at.k_cache.slice_mut(range.clone());
        let mut vc = at.v_cache.slice_mut(range);
        match &self.ops {
            Ops::Fused { qkv, o, gate_up, down } => {
                qkv.forward_into(&b.h, 1, &mut b.q, &mut b.k, &mut b.v)?;
                mark("qkv")?;
                qk_norm_rope(gpu, at.shape, &mut b.q, &b.k, &b.v, norm, at.rope, &mut *at.state, &mut kc, &mut vc)?;
                mark("rope")?;
                attention_decode(gpu, at.shape, &b.q, &kc, &vc, &*at.state, &mut *at.scratch, &mut b.attn)?;
                mark("attention")?;
                o.forward_into(&b.attn, 1, &mut b.h)?;
                mark("o_proj")?;
                gate_up.forward_into(&b.h, 1, &mut b.a)?;
                mark("gate_up")?;
                down.forward_into(&b.a, 1, &mut b.h)?;
                mark("down")?;
            }
            Ops::Unfused { qkv, o, mlp } => {
                qkv.forward_into(Baseline::NormCublas, &b.h, 1, &mut b.xn, &mut b.qkv)?;
                mark("qkv")?;
                let (mut q, mut kv) = b.qkv.split_at_mut(qd);
                let (k, v) = kv.split_at_mut(kvd);
                qk_norm_rope(gpu, at.shape, &mut q, &k, &v, norm, at.rope, &mut *at.state, &mut kc, &mut vc)?;
                mark("rope")?;
                attention_decode(gpu, at.shape, &q, &kc, &vc, &*at.state, &mut *at.scratch, &mut b.attn)?;
                mark("attention")?;
                ops::gemm(gpu, GemmImpl::Cublas, &b.attn, o, &mut b.y_h, 1, qd, h)?;
                ops::residual_add(gpu, &b.y_h, &mut b.h, h)?;
                mark("o_proj")?;
                mlp.gate_up_into(Baseline::NormCublas, &b.h, 1, &mut b.xn, &mut b.y_gu, &mut b.a)?;
                mark("gate_up")?;
                mlp.down_into(Baseline::NormCublas, &b.a, 1, &mut b.y_h, &mut b.h)?;
                mark("down")?;
            }
        }
        Ok(())
    }
}
