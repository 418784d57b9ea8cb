//! The QKV op's ring: per entry the fused op (g folded into its copy of W) and the unfused
//! baselines on the same weights as given.

use std::sync::Arc;

use rand::Rng;
use rand::rngs::SmallRng;

use super::{Case, Entry, Model, Op, Problem, Ring, Row, Sweep, Variant, random_bf16, random_weight};
use crate::timing::{RingGraph, Stats};
use nanofuse::cudarc::driver::CudaSlice;
use nanofuse::{Baseline, FusedRmsNormQkv, Gpu, QkvShape, Result, Route, Tuning, UnfusedRmsNormQkv, bf16};

/// Random weights for a shape: g in [0.5, 1.5), W uniform with variance 1/K (so outputs
/// have about unit scale).
pub fn random_weights(rng: &mut impl Rng, shape: &QkvShape) -> (Vec<bf16>, Vec<bf16>) {
    (random_bf16(rng, shape.hidden, 0.5, 1.5), random_weight(rng, shape.n(), shape.hidden))
}

/// Bytes an op must move at least: W, g and x read once, outputs written once (saturating
/// at `u64::MAX`).
pub fn min_bytes(shape: &QkvShape, m: usize) -> u64 {
    let (k, n, m) = (shape.hidden as u64, shape.n() as u64, m as u64);
    sat_sum(&[n.saturating_mul(k), k, m.saturating_mul(k), m.saturating_mul(n)]).saturating_mul(2)
}

/// Floating-point operations of the projection (`2 M N K`; the norm is negligible;
/// saturating at `u64::MAX`).
pub fn flops(shape: &QkvShape, m: usize) -> u64 {
    sat_product(&[2, m as u64, shape.n() as u64, shape.hidden as u64])
}

/// `Σ v`, saturating.
pub(crate) fn sat_sum(v: &[u64]) -> u64 {
    v.iter().fold(0u64, |a, &b| a.saturating_add(b))
}

/// `Π v`, saturating.
pub(crate) fn sat_product(v: &[u64]) -> u64 {
    v.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

/// One weight set: the fused op and the unfused baselines.
pub struct QkvEntry {
    op: FusedRmsNormQkv,
    base: UnfusedRmsNormQkv,
}

/// One entry's activations and outputs for one M.
pub struct QkvBuffers {
    x: CudaSlice<bf16>,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    xn: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
}

impl Entry for QkvEntry {
    type Buffers = QkvBuffers;

    fn buffers(&self, gpu: &Gpu, m: usize, rng: &mut SmallRng) -> Result<QkvBuffers> {
        let s = self.op.shape();
        let b = QkvBuffers {
            x: gpu.upload(&random_bf16(rng, m * s.hidden, -1.0, 1.0))?,
            q: gpu.alloc_zeros(m * s.q_dim)?,
            k: gpu.alloc_zeros(m * s.kv_dim)?,
            v: gpu.alloc_zeros(m * s.kv_dim)?,
            xn: gpu.alloc_zeros(m * s.hidden)?,
            y: gpu.alloc_zeros(m * s.n())?,
        };
        self.op.reserve(m)?;
        Ok(b)
    }

    fn enqueue(&self, _gpu: &Gpu, variant: Variant, m: usize, b: &mut QkvBuffers) -> Result<()> {
        let (op, base) = (&self.op, &self.base);
        match variant {
            Variant::Fused | Variant::FusedNoPdl => {
                op.forward_into_with(fused_route(m), &b.x, m, &mut b.q, &mut b.k, &mut b.v)
            }
            Variant::FusedDecode => op.forward_into_with(Route::FusedDecode, &b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::FusedTiled => op.forward_into_with(Route::FusedTiled, &b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::Api => op.forward_into(&b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::Fallback => op.forward_into_with(Route::NormCublas, &b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::ApiPacked => op.forward_packed_into(&b.x, m, &mut b.y),
            Variant::FusedWgmmaPacked => op.forward_packed_into_with(Route::FusedWgmma, &b.x, m, &mut b.y),
            Variant::FusedWgmma => op.forward_into_with(Route::FusedWgmma, &b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::NormCublas => base.forward_into(Baseline::NormCublas, &b.x, m, &mut b.xn, &mut b.y),
            Variant::NormNanofuse => base.forward_into(Baseline::NormNanofuse, &b.x, m, &mut b.xn, &mut b.y),
        }
    }
}

/// The fused kernel for `m` tokens: decode for M <= 16, tiled above.
fn fused_route(m: usize) -> Route {
    if m <= nanofuse::plan::DECODE_MAX_M { Route::FusedDecode } else { Route::FusedTiled }
}

/// A ring of QKV ops with distinct random weights for one model, and their buffers for one M.
pub struct Workload {
    pub model: Model,
    ring: Ring<QkvEntry>,
}

impl Workload {
    /// Builds a ring with enough entries that the weights alone exceed
    /// `RING_L2_FACTOR x L2`. `seed` makes the data reproducible.
    pub fn new(gpu: &Arc<Gpu>, model: Model, seed: u64) -> Result<Workload> {
        let s = model.shape;
        let ring = Ring::new(gpu, Problem::Qkv(s).weight_bytes(), seed, |rng| {
            let (g, w) = random_weights(rng, &s);
            Ok(QkvEntry { op: FusedRmsNormQkv::new(gpu, s, &g, &w)?, base: UnfusedRmsNormQkv::new(gpu, s, &g, &w)? })
        })?;
        Ok(Workload { model, ring })
    }

    /// Entries in the ring.
    pub fn ring(&self) -> usize {
        self.ring.len()
    }

    /// Distinct bytes the ring touches per replay at the current M.
    pub fn ring_bytes(&self) -> u64 {
        self.ring.len() as u64 * min_bytes(&self.model.shape, self.ring.m())
    }

    /// (Re)allocates every entry's x (fresh random values), outputs and scratch for `m`.
    pub fn set_m(&mut self, m: usize) -> Result<()> {
        self.ring.set_m(m)
    }

    /// Sets launch-shape overrides on every op (and baseline (b)'s GEMM).
    pub fn set_tuning(&mut self, tuning: Tuning) {
        for e in self.ring.entries_mut() {
            e.op.set_tuning(tuning);
            e.base.set_tuning(tuning);
        }
    }

    /// Whether the ops can take the warpgroup-MMA route (`Route::FusedWgmma`).
    pub fn has_wgmma(&mut self) -> bool {
        self.ring.entries_mut().iter().all(|e| e.op.has_wgmma())
    }

    /// The path the fused variant takes at the current M.
    pub fn fused_path(&self) -> Route {
        fused_route(self.ring.m())
    }

    /// The paths `Route::Auto` takes at the current M: (separate outputs, packed).
    pub fn auto_paths(&self) -> (Route, Route) {
        let (op, m) = (&self.ring.entries()[0].op, self.ring.m());
        (op.auto_path(m), op.auto_packed_path(m))
    }

    /// The GPU the ring lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        self.ring.gpu()
    }

    /// Captures `variant` over the ring and times `replays` replays after `warmup`.
    pub fn time(&mut self, variant: Variant, warmup: usize, replays: usize) -> Result<Stats> {
        self.capture(variant)?.time(warmup, replays)
    }

    /// Captures `variant` over the ring, for callers that drive the replays (criterion).
    /// (`FusedNoPdl` is captured with programmatic dependent launch switched off.)
    pub fn capture(&mut self, variant: Variant) -> Result<RingGraph> {
        self.ring.capture(variant)
    }
}

impl Sweep for Workload {
    fn case(&self) -> Case {
        Case { op: Op::Qkv, model: self.model.name, problem: Problem::Qkv(self.model.shape) }
    }

    fn ring(&self) -> usize {
        self.ring.len()
    }

    fn m(&self) -> usize {
        self.ring.m()
    }

    fn set_m(&mut self, m: usize) -> Result<()> {
        self.ring.set_m(m)
    }

    /// Every variant of [`Variant::ALL`]; the API shares the fused variant's graph where
    /// `Route::Auto` runs the fused kernel (same launch, same time).
    fn rows(&self) -> Vec<Row> {
        let fused = self.fused_path();
        let (api, packed) = self.auto_paths();
        Variant::ALL
            .into_iter()
            .map(|v| match v {
                Variant::Fused => Row::own(v, format!("{fused:?}")),
                Variant::Api if api == fused => Row { variant: v, path: format!("{api:?}"), timed_as: Variant::Fused },
                Variant::Api => Row::own(v, format!("{api:?}")),
                Variant::ApiPacked => Row::own(v, format!("{packed:?}")),
                _ => Row::own(v, String::new()),
            })
            .collect()
    }

    fn capture(&mut self, variant: Variant) -> Result<RingGraph> {
        self.ring.capture(variant)
    }

    fn set_decode_shape(&mut self, shape: Option<nanofuse::plan::DecodeShape>) {
        self.set_tuning(Tuning { decode: shape, ..Tuning::default() });
    }
}
