//! The MLP ops' rings: gate/up (RMSNorm + gate/up projection + SiLU·mul) and the
//! projections with the residual add (the MLP's down projection, the attention output
//! projection). Per entry the fused op and what the baselines need, on the same weights.
//!
//! A cell reports the fused decode kernel (M <= 16; the MLP ops have no tiled kernel),
//! baselines (a) and (b), and the public API (`Route::Auto`), which shares the fused
//! kernel's graph where it runs it and is timed itself above (cuBLAS there).
//!
//! The projections are timed in place, `h ← h + x · Wᵀ`, as an engine runs them
//! (`forward_into`; the out-of-place form would add a copy of the residual to the cuBLAS
//! route). Every replay adds the same `x · Wᵀ` to h again, so h only grows linearly, and in
//! bf16 it stops growing once half its ulp exceeds `|x · Wᵀ|` (about 2^8 times it, a few
//! hundred here): h stays finite and the timed arithmetic is the same for every replay.

use std::sync::Arc;

use rand::rngs::SmallRng;

use super::{Case, Entry, Model, Op, Problem, Ring, Row, Sweep, Variant, random_bf16, random_weight};
use crate::timing::RingGraph;
use nanofuse::cudarc::driver::CudaSlice;
use nanofuse::ops::{self, GemmImpl};
use nanofuse::plan::{DECODE_MAX_M, DecodeShape};
use nanofuse::{Baseline, FusedRmsNormGateUp, Gpu, ProjResidual, Result, Route, UnfusedMlp, bf16};

/// The error for a variant an MLP op does not have.
fn no_such_variant(variant: Variant) -> nanofuse::Error {
    nanofuse::Error::Value {
        arg: "variant",
        expected: "fused, unfused-cublas, unfused-nanofuse or api",
        got: variant.label().into(),
    }
}

/// An MLP cell's rows at `m`, given the route `Route::Auto` takes there.
fn mlp_rows(m: usize, auto: Route) -> Vec<Row> {
    let mut rows = Vec::with_capacity(4);
    if m <= DECODE_MAX_M {
        rows.push(Row::own(Variant::Fused, format!("{:?}", Route::FusedDecode)));
    }
    rows.push(Row::own(Variant::NormCublas, String::new()));
    rows.push(Row::own(Variant::NormNanofuse, String::new()));
    let timed_as = if auto == Route::FusedDecode && m <= DECODE_MAX_M { Variant::Fused } else { Variant::Api };
    rows.push(Row { variant: Variant::Api, path: format!("{auto:?}"), timed_as });
    rows
}

/// One gate/up weight set: the fused op (gain folded into its blocked `[2I, H]` copy) and
/// the unfused baselines (g, the merged `[Wg; Wu]`).
pub struct GateUpEntry {
    fused: FusedRmsNormGateUp,
    base: UnfusedMlp,
}

/// A gate/up entry's buffers: input h, output a, the baselines' xn and y.
pub struct GateUpBuffers {
    h: CudaSlice<bf16>,
    a: CudaSlice<bf16>,
    xn: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
}

impl GateUpEntry {
    fn new(gpu: &Arc<Gpu>, model: &Model, rng: &mut SmallRng) -> Result<Self> {
        let s = model.mlp();
        let g = random_bf16(rng, s.hidden, 0.5, 1.5);
        let (wg, wu) = (random_weight(rng, s.inter, s.hidden), random_weight(rng, s.inter, s.hidden));
        // `UnfusedMlp` also holds the down weight, which `gate_up_into` never reads: the gate
        // weight (same length) stands in for it.
        let base = UnfusedMlp::new(gpu, s, &g, &wg, &wu, &wg)?;
        Ok(GateUpEntry { fused: FusedRmsNormGateUp::new(gpu, s, &g, &wg, &wu)?, base })
    }
}

impl Entry for GateUpEntry {
    type Buffers = GateUpBuffers;

    fn buffers(&self, gpu: &Gpu, m: usize, rng: &mut SmallRng) -> Result<GateUpBuffers> {
        let s = *self.fused.shape();
        let b = GateUpBuffers {
            h: gpu.upload(&random_bf16(rng, m * s.hidden, -1.0, 1.0))?,
            a: gpu.alloc_zeros(m * s.inter)?,
            xn: gpu.alloc_zeros(m * s.hidden)?,
            y: gpu.alloc_zeros(m * 2 * s.inter)?,
        };
        self.fused.reserve(m)?;
        Ok(b)
    }

    fn enqueue(&self, _gpu: &Gpu, variant: Variant, m: usize, b: &mut GateUpBuffers) -> Result<()> {
        let which = match variant {
            Variant::Fused | Variant::FusedNoPdl => {
                return self.fused.forward_into_with(Route::FusedDecode, &b.h, m, &mut b.a);
            }
            Variant::Api => return self.fused.forward_into(&b.h, m, &mut b.a),
            Variant::NormCublas => Baseline::NormCublas,
            Variant::NormNanofuse => Baseline::NormNanofuse,
            other => return Err(no_such_variant(other)),
        };
        self.base.gate_up_into(which, &b.h, m, &mut b.xn, &mut b.y, &mut b.a)
    }
}

/// One projection weight `[n, k]`: the fused op, and the same weight for the baselines.
pub struct ProjEntry {
    fused: ProjResidual,
    w: CudaSlice<bf16>,
}

/// A projection entry's buffers: input x, the residual h (updated in place), the
/// baselines' product y.
pub struct ProjBuffers {
    x: CudaSlice<bf16>,
    h: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
}

impl ProjEntry {
    fn new(gpu: &Arc<Gpu>, k: usize, n: usize, rng: &mut SmallRng) -> Result<Self> {
        let w = random_weight(rng, n, k);
        Ok(ProjEntry { fused: ProjResidual::new(gpu, k, n, &w)?, w: gpu.upload(&w)? })
    }

    /// Baseline (a) or (b): the GEMM into y, then `residual_add` into h (the kernels of
    /// `UnfusedMlp::down_into`, without the gate/up weights it also holds).
    fn baseline(&self, gpu: &Gpu, which: GemmImpl, m: usize, b: &mut ProjBuffers) -> Result<()> {
        let (k, n) = self.fused.dims();
        ops::gemm(gpu, which, &b.x, &self.w, &mut b.y, m, k, n)?;
        ops::residual_add(gpu, &b.y, &mut b.h, m * n)
    }
}

impl Entry for ProjEntry {
    type Buffers = ProjBuffers;

    fn buffers(&self, gpu: &Gpu, m: usize, rng: &mut SmallRng) -> Result<ProjBuffers> {
        let (k, n) = self.fused.dims();
        let b = ProjBuffers {
            x: gpu.upload(&random_bf16(rng, m * k, -1.0, 1.0))?,
            h: gpu.upload(&random_bf16(rng, m * n, -1.0, 1.0))?,
            y: gpu.alloc_zeros(m * n)?,
        };
        self.fused.reserve()?;
        Ok(b)
    }

    fn enqueue(&self, gpu: &Gpu, variant: Variant, m: usize, b: &mut ProjBuffers) -> Result<()> {
        match variant {
            Variant::Fused | Variant::FusedNoPdl => self.fused.forward_into_with(Route::FusedDecode, &b.x, m, &mut b.h),
            Variant::Api => self.fused.forward_into(&b.x, m, &mut b.h),
            Variant::NormCublas => self.baseline(gpu, GemmImpl::Cublas, m, b),
            Variant::NormNanofuse => self.baseline(gpu, GemmImpl::Nanofuse, m, b),
            other => Err(no_such_variant(other)),
        }
    }
}

/// A ring of one MLP op with distinct random weights for one model.
pub struct MlpWorkload<E: Entry> {
    case: Case,
    ring: Ring<E>,
}

/// The gate/up op's ring.
pub type GateUpWorkload = MlpWorkload<GateUpEntry>;

/// A projection's ring: the down projection (`Op::Down`) or the attention output
/// projection (`Op::Oproj`).
pub type ProjWorkload = MlpWorkload<ProjEntry>;

impl GateUpWorkload {
    /// Builds a ring whose fused weights exceed `RING_L2_FACTOR x L2`.
    pub fn new(gpu: &Arc<Gpu>, model: Model, seed: u64) -> Result<Self> {
        let case = Case { op: Op::GateUp, model: model.name, problem: Op::GateUp.problem(&model) };
        let ring = Ring::new(gpu, case.problem.weight_bytes(), seed, |rng| GateUpEntry::new(gpu, &model, rng))?;
        Ok(MlpWorkload { case, ring })
    }
}

impl ProjWorkload {
    /// Builds the ring of projection `op` (`Down` or `Oproj`) of `model`.
    pub fn new(gpu: &Arc<Gpu>, op: Op, model: Model, seed: u64) -> Result<Self> {
        let problem = op.problem(&model);
        let Problem::Proj { k, n } = problem else {
            return Err(nanofuse::Error::Value { arg: "op", expected: "down or oproj", got: op.label().into() });
        };
        let case = Case { op, model: model.name, problem };
        let ring = Ring::new(gpu, problem.weight_bytes(), seed, |rng| ProjEntry::new(gpu, k, n, rng))?;
        Ok(MlpWorkload { case, ring })
    }
}

/// An entry's fused op: the route `Route::Auto` takes, and a forced decode shape.
pub trait FusedOp {
    fn auto_route(&self, m: usize) -> Route;
    fn set_decode_shape(&mut self, shape: Option<DecodeShape>);
}

impl FusedOp for GateUpEntry {
    fn auto_route(&self, m: usize) -> Route {
        self.fused.auto_route(m)
    }

    fn set_decode_shape(&mut self, shape: Option<DecodeShape>) {
        self.fused.set_decode_shape(shape);
    }
}

impl FusedOp for ProjEntry {
    fn auto_route(&self, m: usize) -> Route {
        self.fused.auto_route(m)
    }

    fn set_decode_shape(&mut self, shape: Option<DecodeShape>) {
        self.fused.set_decode_shape(shape);
    }
}

impl<E: Entry + FusedOp> Sweep for MlpWorkload<E> {
    fn case(&self) -> Case {
        self.case
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

    fn rows(&self) -> Vec<Row> {
        let m = self.ring.m();
        mlp_rows(m, self.ring.entries()[0].auto_route(m))
    }

    fn capture(&mut self, variant: Variant) -> Result<RingGraph> {
        self.ring.capture(variant)
    }

    fn set_decode_shape(&mut self, shape: Option<DecodeShape>) {
        for e in self.ring.entries_mut() {
            e.set_decode_shape(shape);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_fused_baselines_and_api_timed_apart_only_above_the_decode_range() {
        let rows = mlp_rows(16, Route::FusedDecode);
        let variants: Vec<_> = rows.iter().map(|r| r.variant).collect();
        assert_eq!(variants, [Variant::Fused, Variant::NormCublas, Variant::NormNanofuse, Variant::Api]);
        assert_eq!(rows[3].timed_as, Variant::Fused);
        let rows = mlp_rows(128, Route::NormCublas);
        let variants: Vec<_> = rows.iter().map(|r| (r.variant, r.timed_as)).collect();
        assert_eq!(
            variants,
            [
                (Variant::NormCublas, Variant::NormCublas),
                (Variant::NormNanofuse, Variant::NormNanofuse),
                (Variant::Api, Variant::Api)
            ]
        );
        assert_eq!(rows[2].path, "NormCublas");
    }
}
