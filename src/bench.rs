//! The benchmark harness shared by `nanofuse bench` and `cargo bench`: the model shapes,
//! rings of distinct weight sets larger than the L2 cache, and the timed variants.
//!
//! Method (every figure): each variant is captured in one CUDA graph that runs it once per
//! ring entry (distinct weights, inputs and outputs; the ring totals more than 4x the L2
//! cache, so weights stream from DRAM as in a real decode step); time per op = replay time
//! / ring length, from CUDA events; the median of the replays is reported.

use std::sync::Arc;

use crate::cudarc::driver::CudaSlice;
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use serde::Serialize;

use crate::timing::{RingGraph, Stats, ring_len};
use crate::{Baseline, FusedRmsNormQkv, Gpu, QkvShape, Result, Route, Tuning, UnfusedRmsNormQkv, bf16};

/// A model's attention-input shape.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub name: &'static str,
    pub shape: QkvShape,
}

/// The four shapes the project measures (K, Nq, Nkv, eps from the models' configs).
pub const MODELS: [Model; 4] = [
    Model { name: "Qwen3-0.6B", shape: QkvShape::new(1024, 2048, 1024, 1e-6) },
    Model { name: "Llama-3.2-1B", shape: QkvShape::new(2048, 2048, 512, 1e-5) },
    Model { name: "Llama-3-8B", shape: QkvShape::new(4096, 4096, 1024, 1e-5) },
    Model { name: "Llama-3-70B", shape: QkvShape::new(8192, 8192, 1024, 1e-5) },
];

/// The batch sizes of the standard sweep: decode (1, 16), a small batch, a prefill chunk.
pub const BENCH_MS: [usize; 4] = [1, 16, 128, 2048];

/// The rings total more than this many times the L2 size.
pub const RING_L2_FACTOR: u64 = 4;

/// What is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Variant {
    /// The fused kernel for this M: decode kernel for M <= 16, tiled kernel above.
    Fused,
    /// Baseline (a): RMSNorm kernel + cuBLAS GEMM into `[M, N]` (what PyTorch runs).
    NormCublas,
    /// Baseline (b): RMSNorm kernel + nanofuse's GEMM into `[M, N]`.
    NormNanofuse,
    /// The public API (`Route::Auto`): what an engine calling `forward_into` gets.
    Api,
    /// As `Fused`, launched without programmatic dependent launch (what PDL contributes).
    FusedNoPdl,
    /// The packed public API (`forward_packed_into`, `Route::Auto`): one `[M, N]` output like
    /// baseline (a), falling back to exactly baseline (a) where the fused kernel loses.
    ApiPacked,
    /// The fused decode kernel whatever M is (launch-shape sweeps).
    FusedDecode,
    /// The fused tiled kernel whatever M is (launch-shape sweeps).
    FusedTiled,
    /// The separate-output fallback (`Route::NormCublas`) whatever M is (crossover sweeps).
    Fallback,
}

impl Variant {
    /// The variants of the standard sweep.
    pub const ALL: [Variant; 6] = [
        Variant::Fused,
        Variant::FusedNoPdl,
        Variant::NormCublas,
        Variant::NormNanofuse,
        Variant::Api,
        Variant::ApiPacked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Fused => "fused",
            Variant::NormCublas => "unfused-cublas",
            Variant::NormNanofuse => "unfused-nanofuse",
            Variant::Api => "api",
            Variant::FusedNoPdl => "fused-no-pdl",
            Variant::ApiPacked => "api-packed",
            Variant::FusedDecode => "fused-decode",
            Variant::FusedTiled => "fused-tiled",
            Variant::Fallback => "fallback",
        }
    }
}

/// Uniform random bf16 values in `[lo, hi)`.
pub fn random_bf16(rng: &mut impl Rng, len: usize, lo: f32, hi: f32) -> Vec<bf16> {
    (0..len).map(|_| bf16::from_f32(rng.random_range(lo..hi))).collect()
}

/// Random weights for a shape: g in [0.5, 1.5), W uniform with variance 1/K (so outputs
/// have about unit scale).
pub fn random_weights(rng: &mut impl Rng, shape: &QkvShape) -> (Vec<bf16>, Vec<bf16>) {
    let a = (3.0 / shape.hidden as f32).sqrt();
    (random_bf16(rng, shape.hidden, 0.5, 1.5), random_bf16(rng, shape.n() * shape.hidden, -a, a))
}

/// Bytes an op must move at least: W, g and x read once, outputs written once.
pub fn min_bytes(shape: &QkvShape, m: usize) -> u64 {
    let (k, n) = (shape.hidden as u64, shape.n() as u64);
    2 * (n * k + k + m as u64 * k + m as u64 * n)
}

/// Floating-point operations of the projection (`2 M N K`; the norm is negligible).
pub fn flops(shape: &QkvShape, m: usize) -> u64 {
    2 * m as u64 * shape.n() as u64 * shape.hidden as u64
}

/// One ring entry's activations and outputs for the current M.
struct Buffers {
    x: CudaSlice<bf16>,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    xn: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
}

/// A ring of ops with distinct random weights for one model, and their buffers for one M.
/// Each entry holds the fused op (g folded into its copy of W) and the unfused baselines on
/// the same weights as given.
pub struct Workload {
    gpu: Arc<Gpu>,
    pub model: Model,
    ops: Vec<FusedRmsNormQkv>,
    baselines: Vec<UnfusedRmsNormQkv>,
    bufs: Vec<Buffers>,
    m: usize,
    rng: SmallRng,
}

impl Workload {
    /// Builds a ring with enough entries that the weights alone exceed
    /// `RING_L2_FACTOR x L2`. `seed` makes the data reproducible.
    pub fn new(gpu: &Arc<Gpu>, model: Model, seed: u64) -> Result<Workload> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let wbytes = 2 * (model.shape.n() * model.shape.hidden) as u64;
        let ring = ring_len(gpu.info().l2_bytes, wbytes, RING_L2_FACTOR);
        let (mut ops, mut baselines) = (Vec::with_capacity(ring), Vec::with_capacity(ring));
        for _ in 0..ring {
            let (g, w) = random_weights(&mut rng, &model.shape);
            ops.push(FusedRmsNormQkv::new(gpu, model.shape, &g, &w)?);
            baselines.push(UnfusedRmsNormQkv::new(gpu, model.shape, &g, &w)?);
        }
        Ok(Workload { gpu: gpu.clone(), model, ops, baselines, bufs: Vec::new(), m: 0, rng })
    }

    /// Entries in the ring.
    pub fn ring(&self) -> usize {
        self.ops.len()
    }

    /// Distinct bytes the ring touches per replay at the current M.
    pub fn ring_bytes(&self) -> u64 {
        self.ops.len() as u64 * min_bytes(&self.model.shape, self.m)
    }

    /// (Re)allocates every entry's x (fresh random values), outputs and scratch for `m`.
    pub fn set_m(&mut self, m: usize) -> Result<()> {
        let s = self.model.shape;
        self.bufs.clear();
        for op in &self.ops {
            let x = self.gpu.upload(&random_bf16(&mut self.rng, m * s.hidden, -1.0, 1.0))?;
            self.bufs.push(Buffers {
                x,
                q: self.gpu.alloc_zeros(m * s.q_dim)?,
                k: self.gpu.alloc_zeros(m * s.kv_dim)?,
                v: self.gpu.alloc_zeros(m * s.kv_dim)?,
                xn: self.gpu.alloc_zeros(m * s.hidden)?,
                y: self.gpu.alloc_zeros(m * s.n())?,
            });
            op.reserve(m)?;
        }
        self.m = m;
        Ok(())
    }

    /// Sets launch-shape overrides on every op (and baseline (b)'s GEMM).
    pub fn set_tuning(&mut self, tuning: Tuning) {
        for op in &mut self.ops {
            op.set_tuning(tuning);
        }
        for op in &mut self.baselines {
            op.set_tuning(tuning);
        }
    }

    /// The path the fused variant takes at the current M.
    pub fn fused_path(&self) -> Route {
        if self.m <= crate::plan::DECODE_MAX_M { Route::FusedDecode } else { Route::FusedTiled }
    }

    /// The paths `Route::Auto` takes at the current M: (separate outputs, packed).
    pub fn auto_paths(&self) -> (Route, Route) {
        (self.ops[0].auto_path(self.m), self.ops[0].auto_packed_path(self.m))
    }

    /// The GPU the ring lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Enqueues `variant` for ring entry `i`.
    pub fn enqueue(&mut self, variant: Variant, i: usize) -> Result<()> {
        let (op, base, b, m) = (&self.ops[i], &self.baselines[i], &mut self.bufs[i], self.m);
        match variant {
            Variant::Fused | Variant::FusedNoPdl => {
                let path = if m <= crate::plan::DECODE_MAX_M { Route::FusedDecode } else { Route::FusedTiled };
                op.forward_into_with(path, &b.x, m, &mut b.q, &mut b.k, &mut b.v)
            }
            Variant::FusedDecode => op.forward_into_with(Route::FusedDecode, &b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::FusedTiled => op.forward_into_with(Route::FusedTiled, &b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::Api => op.forward_into(&b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::Fallback => op.forward_into_with(Route::NormCublas, &b.x, m, &mut b.q, &mut b.k, &mut b.v),
            Variant::ApiPacked => op.forward_packed_into(&b.x, m, &mut b.y),
            Variant::NormCublas => base.forward_into(Baseline::NormCublas, &b.x, m, &mut b.xn, &mut b.y),
            Variant::NormNanofuse => base.forward_into(Baseline::NormNanofuse, &b.x, m, &mut b.xn, &mut b.y),
        }
    }

    /// Captures `variant` over the ring and times `replays` replays after `warmup`.
    pub fn time(&mut self, variant: Variant, warmup: usize, replays: usize) -> Result<Stats> {
        self.capture(variant)?.time(warmup, replays)
    }

    /// Captures `variant` over the ring, for callers that drive the replays (criterion).
    /// (`FusedNoPdl` is captured with programmatic dependent launch switched off.)
    pub fn capture(&mut self, variant: Variant) -> Result<RingGraph> {
        let (gpu, ring) = (self.gpu.clone(), self.ring());
        let pdl = gpu.pdl();
        if variant == Variant::FusedNoPdl {
            gpu.set_pdl(false);
        }
        let graph = RingGraph::capture(&gpu, ring, |i| self.enqueue(variant, i));
        gpu.set_pdl(pdl);
        graph
    }
}

/// One measured cell of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub model: String,
    pub hidden: usize,
    pub q_dim: usize,
    pub kv_dim: usize,
    pub m: usize,
    pub variant: Variant,
    /// The path taken (for Fused and Api).
    pub path: String,
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub replays: usize,
    pub ring: usize,
    pub bytes: u64,
    pub flops: u64,
    /// `bytes / median` in GB/s.
    pub gbs: f64,
    /// `flops / median` in TFLOP/s.
    pub tflops: f64,
}

impl Measurement {
    pub fn new(model: &Model, m: usize, variant: Variant, path: String, ring: usize, st: Stats) -> Self {
        let s = model.shape;
        let (bytes, fl) = (min_bytes(&s, m), flops(&s, m));
        Measurement {
            model: model.name.to_string(),
            hidden: s.hidden,
            q_dim: s.q_dim,
            kv_dim: s.kv_dim,
            m,
            variant,
            path,
            median_us: st.median_us,
            min_us: st.min_us,
            max_us: st.max_us,
            replays: st.samples,
            ring,
            bytes,
            flops: fl,
            gbs: bytes as f64 / (st.median_us * 1e-6) / 1e9,
            tflops: fl as f64 / (st.median_us * 1e-6) / 1e12,
        }
    }
}
