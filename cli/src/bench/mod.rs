//! The benchmark harness shared by `nanofuse bench` and `cargo bench`: the model shapes,
//! rings of distinct weight sets larger than the L2 cache, the timed variants, and the
//! timing of one cell (op, shape, M) with its variants interleaved.
//!
//! Method (every figure): each variant is captured in one CUDA graph that runs it once per
//! ring entry (distinct weights, inputs and outputs; the ring totals more than 4x the L2
//! cache, so weights stream from DRAM as in a real decode step); time per op = replay time
//! / ring length, from CUDA events; the median of the replays is reported.
//!
//! The parts: an op's [`Entry`] holds one weight set (as the fused op and the baselines
//! hold it) and makes its buffers for an M; a [`Ring`] of entries captures a variant into
//! one graph; a [`Sweep`] (one op on one shape: [`Workload`] for QKV, [`GateUpWorkload`]
//! and [`ProjWorkload`] for the MLP ops, built by [`workload`]) says which variants a cell
//! reports; [`measure`] times them against each other into [`Measurement`]s.

mod mlp;
mod qkv;

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use serde::Serialize;

pub use mlp::{GateUpEntry, GateUpWorkload, ProjEntry, ProjWorkload};
pub use qkv::{QkvEntry, Workload, flops, min_bytes, random_weights};

use crate::timing::{RingGraph, Stats, ring_len};
use nanofuse::{Gpu, MlpShape, QkvShape, Result, bf16};

/// A model's layer shapes: the attention input (QKV) and the MLP's intermediate size.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub name: &'static str,
    pub shape: QkvShape,
    /// The MLP's intermediate size I.
    pub inter: usize,
}

impl Model {
    /// The MLP's shape: hidden H, intermediate I, the RMSNorm eps of the QKV shape.
    pub const fn mlp(&self) -> MlpShape {
        MlpShape::new(self.shape.hidden, self.inter, self.shape.eps)
    }

    /// The attention output projection's `(in, out)` features: `(Nq, H)`.
    pub const fn oproj(&self) -> (usize, usize) {
        (self.shape.q_dim, self.shape.hidden)
    }
}

/// The four shapes the project measures (K, Nq, Nkv, eps and I from the models' configs).
pub const MODELS: [Model; 4] = [
    Model { name: "Qwen3-0.6B", shape: QkvShape::new(1024, 2048, 1024, 1e-6), inter: 3072 },
    Model { name: "Llama-3.2-1B", shape: QkvShape::new(2048, 2048, 512, 1e-5), inter: 8192 },
    Model { name: "Llama-3-8B", shape: QkvShape::new(4096, 4096, 1024, 1e-5), inter: 14336 },
    Model { name: "Llama-3-70B", shape: QkvShape::new(8192, 8192, 1024, 1e-5), inter: 28672 },
];

/// The batch sizes of the standard QKV sweep: decode (1, 16), a small batch, a prefill chunk.
pub const BENCH_MS: [usize; 4] = [1, 16, 128, 2048];

/// The batch sizes of the standard MLP sweep: the fused decode range (1, 8, 16) and one
/// batch above it, where `Route::Auto` runs cuBLAS.
pub const MLP_MS: [usize; 4] = [1, 8, 16, 128];

/// The rings total more than this many times the L2 size.
pub const RING_L2_FACTOR: u64 = 4;

/// Which op is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// RMSNorm + QKV projection (`FusedRmsNormQkv`).
    Qkv,
    /// RMSNorm + gate/up projection + SiLU·mul (`FusedRmsNormGateUp`), `[2I, H]`.
    GateUp,
    /// The MLP's down projection + residual (`ProjResidual`), `[H, I]`.
    Down,
    /// The attention output projection + residual (`ProjResidual`), `[H, Nq]`.
    Oproj,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Qkv, Op::GateUp, Op::Down, Op::Oproj];

    /// The name in JSON and benchmark ids.
    pub fn label(self) -> &'static str {
        match self {
            Op::Qkv => "qkv",
            Op::GateUp => "gate_up",
            Op::Down => "down",
            Op::Oproj => "oproj",
        }
    }

    /// What the op computes, for table and chart titles.
    pub fn title(self) -> &'static str {
        match self {
            Op::Qkv => "RMSNorm + QKV projection",
            Op::GateUp => "RMSNorm + gate/up projection + SiLU·mul",
            Op::Down => "MLP down projection + residual",
            Op::Oproj => "attention output projection + residual",
        }
    }

    /// The sizes of this op in `model`.
    pub fn problem(self, model: &Model) -> Problem {
        match self {
            Op::Qkv => Problem::Qkv(model.shape),
            Op::GateUp => Problem::GateUp(model.mlp()),
            Op::Down => Problem::Proj { k: model.inter, n: model.shape.hidden },
            Op::Oproj => {
                let (k, n) = model.oproj();
                Problem::Proj { k, n }
            }
        }
    }
}

/// The sizes an op's weight, floor and FLOPs come from.
#[derive(Clone, Copy, Debug)]
pub enum Problem {
    Qkv(QkvShape),
    /// `a [M, I] = silu(rmsnorm(h) · Wgᵀ) ⊙ (rmsnorm(h) · Wuᵀ)`, `h [M, H]`.
    GateUp(MlpShape),
    /// `h [M, n] += x [M, k] · W [n, k]ᵀ`.
    Proj {
        k: usize,
        n: usize,
    },
}

impl Problem {
    /// The model's hidden size (QKV and gate/up: the input's width; projections: the output's).
    pub fn hidden(&self) -> usize {
        match *self {
            Problem::Qkv(s) => s.hidden,
            Problem::GateUp(s) => s.hidden,
            Problem::Proj { n, .. } => n,
        }
    }

    /// `(in, out)` features of the op's one weight `[out, in]`.
    pub fn weight_dims(&self) -> (usize, usize) {
        match *self {
            Problem::Qkv(s) => (s.hidden, s.n()),
            Problem::GateUp(s) => (s.hidden, s.inter.saturating_mul(2)),
            Problem::Proj { k, n } => (k, n),
        }
    }

    /// Bytes of the weight the op streams per call (what a ring is sized by).
    pub fn weight_bytes(&self) -> u64 {
        let (k, n) = self.weight_dims();
        qkv::sat_product(&[2, k as u64, n as u64])
    }

    /// Bytes an op must move at least. QKV: W, g and x read once, q, k, v written once;
    /// gate/up: W (g folded in) and h read, a `[M, I]` written; projections: W, x and the
    /// residual read, h written.
    pub fn min_bytes(&self, m: usize) -> u64 {
        let m = m as u64;
        match *self {
            Problem::Qkv(s) => qkv::min_bytes(&s, m as usize),
            Problem::GateUp(s) => {
                let (h, i) = (s.hidden as u64, s.inter as u64);
                qkv::sat_sum(&[
                    qkv::sat_product(&[4, i, h]),
                    qkv::sat_product(&[2, m, h]),
                    qkv::sat_product(&[2, m, i]),
                ])
            }
            Problem::Proj { k, n } => {
                let (k, n) = (k as u64, n as u64);
                qkv::sat_sum(&[
                    qkv::sat_product(&[2, n, k]),
                    qkv::sat_product(&[2, m, k]),
                    qkv::sat_product(&[4, m, n]),
                ])
            }
        }
    }

    /// Floating-point operations of the projection (`2 M N K`; norm and epilogue negligible).
    pub fn flops(&self, m: usize) -> u64 {
        let (k, n) = self.weight_dims();
        qkv::sat_product(&[2, m as u64, n as u64, k as u64])
    }
}

/// What is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Variant {
    /// The fused kernel for this M: QKV's decode kernel for M <= 16, tiled kernel above; the
    /// MLP ops' decode kernel (M <= 16 only: they have no tiled kernel).
    Fused,
    /// Baseline (a), what PyTorch runs: QKV: RMSNorm kernel + cuBLAS GEMM into `[M, N]`;
    /// gate/up: RMSNorm + cuBLAS GEMM into `[M, 2I]` + `silu_mul`; projections: cuBLAS GEMM
    /// + `residual_add`.
    NormCublas,
    /// Baseline (b): as (a) with nanofuse's GEMM.
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
    /// The fused warpgroup-MMA kernel (`Route::FusedWgmma`) into one `[M, N]` output.
    FusedWgmmaPacked,
    /// The same into separate q, k, v.
    FusedWgmma,
}

impl Variant {
    /// The variants of the standard QKV sweep.
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
            Variant::FusedWgmmaPacked => "fused-wgmma-packed",
            Variant::FusedWgmma => "fused-wgmma",
        }
    }
}

/// Uniform random bf16 values in `[lo, hi)`.
pub fn random_bf16(rng: &mut impl Rng, len: usize, lo: f32, hi: f32) -> Vec<bf16> {
    (0..len).map(|_| bf16::from_f32(rng.random_range(lo..hi))).collect()
}

/// A random weight `[n, k]`, uniform with variance 1/k (so outputs have about unit scale).
pub fn random_weight(rng: &mut impl Rng, n: usize, k: usize) -> Vec<bf16> {
    let a = (3.0 / k as f32).sqrt();
    random_bf16(rng, n * k, -a, a)
}

/// One ring entry of an op under test: one weight set, as the fused op and the baselines
/// hold it, which makes the entry's activations and outputs for an M and enqueues variants
/// on them.
pub trait Entry {
    /// The entry's inputs, outputs and scratch for one M.
    type Buffers;

    /// Allocates the buffers for `m` tokens (inputs with fresh random values from `rng`) and
    /// whatever the variants would otherwise allocate on first use (scratch, the cuBLAS
    /// handle), so that enqueueing allocates nothing and can be captured.
    fn buffers(&self, gpu: &Gpu, m: usize, rng: &mut SmallRng) -> Result<Self::Buffers>;

    /// Enqueues `variant` for `m` tokens on `b`.
    fn enqueue(&self, gpu: &Gpu, variant: Variant, m: usize, b: &mut Self::Buffers) -> Result<()>;
}

/// A ring of entries with distinct random weights, and their buffers for the current M.
pub struct Ring<E: Entry> {
    gpu: Arc<Gpu>,
    entries: Vec<E>,
    bufs: Vec<E::Buffers>,
    m: usize,
    rng: SmallRng,
}

impl<E: Entry> Ring<E> {
    /// Builds enough entries with `make` that their weights (`weight_bytes` each) exceed
    /// `RING_L2_FACTOR x L2`; `seed` seeds the one generator that `make` and the buffers
    /// draw from, so the data is reproducible.
    pub fn new(
        gpu: &Arc<Gpu>,
        weight_bytes: u64,
        seed: u64,
        mut make: impl FnMut(&mut SmallRng) -> Result<E>,
    ) -> Result<Self> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let len = ring_len(gpu.info().l2_bytes, weight_bytes, RING_L2_FACTOR);
        let entries = (0..len).map(|_| make(&mut rng)).collect::<Result<Vec<_>>>()?;
        Ok(Ring { gpu: gpu.clone(), entries, bufs: Vec::new(), m: 0, rng })
    }

    /// Entries in the ring.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never: a ring has at least 2 entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The M the buffers are for (0 before [`Ring::set_m`]).
    pub fn m(&self) -> usize {
        self.m
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    pub fn entries_mut(&mut self) -> &mut [E] {
        &mut self.entries
    }

    /// (Re)allocates every entry's buffers for `m` (the old ones are freed first).
    pub fn set_m(&mut self, m: usize) -> Result<()> {
        self.bufs.clear();
        for e in &self.entries {
            self.bufs.push(e.buffers(&self.gpu, m, &mut self.rng)?);
        }
        self.m = m;
        Ok(())
    }

    /// Captures `variant` over the ring (`FusedNoPdl` with programmatic dependent launch
    /// switched off).
    pub fn capture(&mut self, variant: Variant) -> Result<RingGraph> {
        let (gpu, m) = (self.gpu.clone(), self.m);
        let pdl = gpu.pdl();
        if variant == Variant::FusedNoPdl {
            gpu.set_pdl(false);
        }
        let (entries, bufs) = (&self.entries, &mut self.bufs);
        let graph = RingGraph::capture(&gpu, entries.len(), |i| entries[i].enqueue(&gpu, variant, m, &mut bufs[i]));
        gpu.set_pdl(pdl);
        graph
    }
}

/// What a measurement is of.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub op: Op,
    pub model: &'static str,
    pub problem: Problem,
}

/// One variant a cell reports: the path it takes, and the variant whose graph times it
/// (itself, or one whose launches are the same, e.g. the API where it runs the fused kernel).
#[derive(Clone, Debug)]
pub struct Row {
    pub variant: Variant,
    pub path: String,
    pub timed_as: Variant,
}

impl Row {
    /// A row timed by its own graph.
    pub fn own(variant: Variant, path: String) -> Self {
        Row { variant, path, timed_as: variant }
    }
}

/// One op on one shape's ring, as `nanofuse bench` and `cargo bench` sweep it.
pub trait Sweep {
    fn case(&self) -> Case;
    /// Entries in the ring.
    fn ring(&self) -> usize;
    /// The current M (0 before [`Sweep::set_m`]).
    fn m(&self) -> usize;
    /// (Re)allocates the activations (fresh random values), outputs and scratch for `m`.
    fn set_m(&mut self, m: usize) -> Result<()>;
    /// The variants the standard sweep reports at the current M.
    fn rows(&self) -> Vec<Row>;
    /// Captures `variant` over the ring.
    fn capture(&mut self, variant: Variant) -> Result<RingGraph>;
    /// Forces the fused op's decode launch shape (and, for QKV, baseline (b)'s), for
    /// sweeps; `None`: the planner's.
    fn set_decode_shape(&mut self, shape: Option<nanofuse::plan::DecodeShape>);
}

/// Builds the ring of `op` for `model`.
pub fn workload(gpu: &Arc<Gpu>, op: Op, model: Model, seed: u64) -> Result<Box<dyn Sweep>> {
    Ok(match op {
        Op::Qkv => Box::new(Workload::new(gpu, model, seed)?),
        Op::GateUp => Box::new(GateUpWorkload::new(gpu, model, seed)?),
        Op::Down | Op::Oproj => Box::new(ProjWorkload::new(gpu, op, model, seed)?),
    })
}

/// Times the rows of `sweep` at its current M against each other: one graph per distinct
/// `timed_as`, replayed `warmup` times, then interleaved in `rounds` rounds
/// ([`RingGraph::time_interleaved`]); one measurement per row.
pub fn measure(sweep: &mut dyn Sweep, warmup: usize, replays: usize, rounds: usize) -> Result<Vec<Measurement>> {
    let rows = sweep.rows();
    let mut timed: Vec<Variant> = Vec::new();
    let index: Vec<usize> = rows
        .iter()
        .map(|r| {
            timed.iter().position(|&t| t == r.timed_as).unwrap_or_else(|| {
                timed.push(r.timed_as);
                timed.len() - 1
            })
        })
        .collect();
    let graphs = timed.iter().map(|&v| sweep.capture(v)).collect::<Result<Vec<_>>>()?;
    let stats = RingGraph::time_interleaved(&graphs, warmup, replays, rounds)?;
    drop(graphs);
    let (case, m, ring) = (sweep.case(), sweep.m(), sweep.ring());
    Ok(rows.into_iter().zip(index).map(|(r, i)| Measurement::of(&case, m, r.variant, r.path, ring, stats[i])).collect())
}

/// One measured cell of the sweep. QKV rows carry `q_dim` and `kv_dim`, the other ops'
/// `in_features` and `out_features` (of their weight `[out, in]`; gate/up: `[2I, H]`).
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub op: Op,
    pub model: String,
    pub hidden: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_features: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_features: Option<usize>,
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
    /// A QKV measurement of `model`.
    pub fn new(model: &Model, m: usize, variant: Variant, path: String, ring: usize, st: Stats) -> Self {
        let case = Case { op: Op::Qkv, model: model.name, problem: Problem::Qkv(model.shape) };
        Measurement::of(&case, m, variant, path, ring, st)
    }

    /// A measurement of `case` at `m`.
    pub fn of(case: &Case, m: usize, variant: Variant, path: String, ring: usize, st: Stats) -> Self {
        let p = case.problem;
        let (bytes, fl) = (p.min_bytes(m), p.flops(m));
        let (q_dim, kv_dim, in_features, out_features) = match p {
            Problem::Qkv(s) => (Some(s.q_dim), Some(s.kv_dim), None, None),
            _ => {
                let (k, n) = p.weight_dims();
                (None, None, Some(k), Some(n))
            }
        };
        Measurement {
            op: case.op,
            model: case.model.to_string(),
            hidden: p.hidden(),
            q_dim,
            kv_dim,
            in_features,
            out_features,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        Stats { median_us: 10.0, min_us: 9.0, max_us: 12.0, samples: 20 }
    }

    #[test]
    fn floors_count_the_weight_inputs_and_outputs_once() {
        let llama8b = MODELS[2];
        let (h, i, m) = (4096u64, 14336u64, 16u64);
        assert_eq!(Op::GateUp.problem(&llama8b).min_bytes(16), 4 * i * h + 2 * m * h + 2 * m * i);
        // Down: W [H, I], x [M, I], residual and h [M, H].
        assert_eq!(Op::Down.problem(&llama8b).min_bytes(16), 2 * h * i + 2 * m * i + 4 * m * h);
        assert_eq!(Op::Oproj.problem(&llama8b).weight_dims(), (4096, 4096));
        assert_eq!(Op::Qkv.problem(&llama8b).min_bytes(16), min_bytes(&llama8b.shape, 16));
        assert_eq!(Op::GateUp.problem(&llama8b).flops(16), 2 * m * 2 * i * h);
    }

    #[test]
    fn the_attention_output_projections_are_nq_to_hidden() {
        let dims: Vec<_> = MODELS.iter().map(|m| m.oproj()).collect();
        assert_eq!(dims, [(2048, 1024), (2048, 2048), (4096, 4096), (8192, 8192)]);
    }

    #[test]
    fn json_rows_keep_the_qkv_fields_and_name_the_op() {
        let qkv =
            serde_json::to_value(Measurement::new(&MODELS[0], 1, Variant::Fused, "x".into(), 4, stats())).unwrap();
        assert_eq!(qkv["op"], "qkv");
        assert_eq!(qkv["q_dim"], 2048);
        assert!(qkv.get("in_features").is_none());
        let case = Case { op: Op::GateUp, model: MODELS[0].name, problem: Op::GateUp.problem(&MODELS[0]) };
        let gu = serde_json::to_value(Measurement::of(&case, 8, Variant::Api, String::new(), 17, stats())).unwrap();
        assert_eq!(gu["op"], "gate_up");
        assert_eq!(
            (gu["hidden"].as_u64(), gu["in_features"].as_u64(), gu["out_features"].as_u64()),
            (Some(1024), Some(1024), Some(6144))
        );
        assert!(gu.get("q_dim").is_none());
        assert_eq!(gu["variant"], "Api");
    }
}
