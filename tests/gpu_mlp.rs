//! The fused MLP ops (`FusedRmsNormGateUp`, `ProjResidual`) on every route and the unfused
//! baselines (`UnfusedMlp`) against the CPU references, over the four model shapes, two
//! shapes with H and I off every tile size and the attention output projections; their
//! typed errors that need a device (GPU; skipped without a device, except the planner
//! coverage test at the end, which runs anywhere).
//!
//! Inputs: g in [0.5, 1.5), weights uniform with variance 1/K (outputs of about unit scale,
//! as `bench::random_weights`), h, x and the residual in [-3, 3]; fresh for every M. Outputs
//! are poisoned with NaN before each run and every element must have been written (the
//! in-place projection overwrites its residual, which is uploaded again before each run;
//! there the out-of-place form, poisoned, must agree with it bitwise). Two runs of every
//! route and baseline are bitwise identical; `Route::Auto` is bitwise the route
//! `auto_route` names; every route agrees with baseline (a) over all elements.
//!
//! Bounds (bf16 inputs and outputs, f32 accumulation), each as relative Frobenius error and
//! per element `|got − ref| <= atol_rms·rms(ref) + rtol·|ref|`:
//! * projection (`reference::proj_residual_rows`): 4e-3 and `0.02·rms + 0.02·|ref|`, as
//!   tests/gpu_qkv.rs; also against baseline (a). A CPU model of the kernels' roundings
//!   (bf16 products, f32 sums, the product rounded before the add) is 1.8e-3 from the
//!   reference, of the cuBLAS fallback's (one rounding after the add) 2.1e-3.
//! * gate/up (`reference::gate_up_rows`): 8e-3 and `0.08·rms + 0.04·|ref|`; against
//!   baseline (a) 1e-2 and the same per element. Looser, because the op rounds three times
//!   in a row as PyTorch does (gate and up to bf16, `silu(gate)`, the product): a gate or
//!   up value that the bf16 rounding of W·g (in the baselines: of the normalized
//!   activations) moved by about 1.6e-3 then crosses a rounding boundary of the next step
//!   more often than not-rounded errors would suggest. The CPU model of PyTorch's unfused
//!   bf16 computation (baseline (a)) is itself 4.2-4.4e-3 from this reference, of the fused
//!   kernel 4.2e-3, of its cuBLAS fallback 5.0e-3, fallback against baseline (a) 5.6e-3
//!   (6.1e-3 at most over 30 seeds of one row of 2008 outputs). Per element, an `up` that
//!   cancels to near zero, times a `silu(gate)` of up to 5, carries up to 5 times the
//!   absolute error of `up` (the model needed `0.040·rms` over 4M elements); `rtol` allows
//!   one bf16 ulp (2^-7 at most) in each of the four roundings.

mod common;

use std::mem::ManuallyDrop;
use std::sync::Arc;

use common::random_bf16;
use common::{gather, sample_rows};
use nanofuse::cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr};
use nanofuse::plan::{self, DECODE_MAX_M, DecodePlan, MAX_DIM};
use nanofuse::reference::{self, Comparison, compare, rms};
use nanofuse::{
    BUFFER_ALIGN, Baseline, Error, FusedRmsNormGateUp, Gpu, MlpShape, ProjResidual, Result, Route, UnfusedMlp,
    WgmmaShape, auto_mlp_fused_max_m, auto_proj_fused_max_m, bf16,
};
use rand::Rng;

/// Token counts: one, two, most of one token tile, one into the second tile, both tiles
/// full, one past the decode kernels, a small batch, three warpgroup-MMA token tiles (a
/// cluster and a half), a prefill chunk.
const MS: [usize; 9] = [1, 2, 7, 9, 16, 17, 100, 300, 2048];
const ROUTES: [Route; 3] = [Route::FusedDecode, Route::NormCublas, Route::Auto];
/// [`ROUTES`], and the warpgroup-MMA route where the op has it (compute capability 9.0, K %
/// 32 == 0).
fn routes(wgmma: bool) -> Vec<Route> {
    let mut r = ROUTES.to_vec();
    if wgmma {
        r.push(Route::FusedWgmma);
    }
    r
}
const BASELINES: [Baseline; 2] = [Baseline::NormCublas, Baseline::NormNanofuse];

/// A comparison's bounds: per element `atol_rms·rms(ref) + rtol·|ref|`, and the whole.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    atol_rms: f64,
    rtol: f64,
    max_rel_frobenius: f64,
}

/// The projection against its reference and against baseline (a) (see the module docs).
const PROJ: Bounds = Bounds { atol_rms: 0.02, rtol: 0.02, max_rel_frobenius: 4e-3 };
/// The gate/up op against its reference (see the module docs).
const GATE_UP: Bounds = Bounds { atol_rms: 0.08, rtol: 0.04, max_rel_frobenius: 8e-3 };
/// The gate/up op's routes against baseline (a): two roundings of the inputs, not one.
const GATE_UP_VS_BASELINE: Bounds = Bounds { atol_rms: 0.08, rtol: 0.04, max_rel_frobenius: 1e-2 };

/// `rows x cols` weights, uniform with variance `1 / cols` (as `bench::random_weights`).
fn weights(rng: &mut impl Rng, rows: usize, cols: usize) -> Vec<bf16> {
    let a = (3.0 / cols as f32).sqrt();
    random_bf16(rng, rows * cols, -a, a)
}

/// A device buffer of `len` bf16 filled with NaN.
fn poisoned(gpu: &Gpu, len: usize) -> CudaSlice<bf16> {
    let mut b = gpu.alloc_zeros::<bf16>(len).unwrap();
    gpu.fill_nan(&mut b).unwrap();
    b
}

/// The first index where two outputs differ bitwise.
fn first_difference(a: &[bf16], b: &[bf16]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits())
}

/// Every element of `got [m, width]` written (no NaN poison left), then `rows` of it
/// against `want` (`[rows.len(), width]`) within `b`.
fn check(got: &[bf16], width: usize, rows: &[usize], want: &[f32], b: Bounds) -> Result<Comparison, String> {
    if let Some(first) = got.iter().position(|v| v.is_nan()) {
        let n = got.iter().filter(|v| v.is_nan()).count();
        return Err(format!(
            "{n} of {} output elements still NaN (unwritten?), first at row {} col {}",
            got.len(),
            first / width,
            first % width
        ));
    }
    let c = compare(&gather(got, width, rows), want, b.atol_rms * rms(want), b.rtol);
    if c.passes(b.max_rel_frobenius) { Ok(c) } else { Err(c.to_string()) }
}

/// `got` against another GPU result over all elements within `b`.
fn check_against(got: &[bf16], other: &[bf16], b: Bounds) -> Result<Comparison, String> {
    let other: Vec<f32> = other.iter().map(|v| v.to_f32()).collect();
    let c = compare(got, &other, b.atol_rms * rms(&other), b.rtol);
    if c.passes(b.max_rel_frobenius) { Ok(c) } else { Err(c.to_string()) }
}

/// The sampled rows of several matrices `[m_j, width]` stacked into one, so that one
/// reference call serves every M (each call widens the whole weight to f32 first).
fn stack(mats: &[Vec<bf16>], width: usize, rows: &[Vec<usize>]) -> Vec<bf16> {
    mats.iter().zip(rows).flat_map(|(x, r)| gather(x, width, r)).collect()
}

/// Splits a stacked reference `[Σ rows_j, width]` back into one part per M.
fn unstack(want: Vec<f32>, width: usize, rows: &[Vec<usize>]) -> Vec<Vec<f32>> {
    let mut rest = want.as_slice();
    rows.iter()
        .map(|r| {
            let (part, tail) = rest.split_at(r.len() * width);
            rest = tail;
            part.to_vec()
        })
        .collect()
}

/// One M's inputs of the gate/up op and its reference at the sampled rows.
struct GateUpPoint {
    m: usize,
    h: Vec<bf16>,
    rows: Vec<usize>,
    want: Vec<f32>,
}

/// One M's inputs of a projection and its reference at the sampled rows.
struct ProjPoint {
    m: usize,
    x: Vec<bf16>,
    residual: Vec<bf16>,
    rows: Vec<usize>,
    want: Vec<f32>,
}

/// Fresh x `[m, k]` and residual `[m, n]` for every M and `reference::proj_residual_rows`
/// at their sampled rows.
fn proj_points(rng: &mut impl Rng, w: &[bf16], k: usize, n: usize) -> Vec<ProjPoint> {
    let xs: Vec<Vec<bf16>> = MS.iter().map(|&m| random_bf16(rng, m * k, -3.0, 3.0)).collect();
    let res: Vec<Vec<bf16>> = MS.iter().map(|&m| random_bf16(rng, m * n, -3.0, 3.0)).collect();
    let rows: Vec<Vec<usize>> = MS.iter().map(|&m| sample_rows(m)).collect();
    let (x_all, res_all) = (stack(&xs, k, &rows), stack(&res, n, &rows));
    let all: Vec<usize> = (0..x_all.len() / k).collect();
    let want = unstack(reference::proj_residual_rows(&x_all, w, &res_all, k, n, &all), n, &rows);
    let parts = xs.into_iter().zip(res).zip(rows).zip(want);
    parts.zip(MS).map(|((((x, residual), rows), want), m)| ProjPoint { m, x, residual, rows, want }).collect()
}

/// Runs `route` of the gate/up op (`Auto` through `forward_into`).
fn gate_up(
    op: &FusedRmsNormGateUp,
    route: Route,
    h: &CudaSlice<bf16>,
    m: usize,
    a: &mut CudaSlice<bf16>,
) -> Result<()> {
    if route == Route::Auto { op.forward_into(h, m, a) } else { op.forward_into_with(route, h, m, a) }
}

/// Every route of the gate/up op and both baselines at one M.
fn check_gate_up(gpu: &Gpu, op: &FusedRmsNormGateUp, base: &UnfusedMlp, p: &GateUpPoint, fail: &mut Vec<String>) {
    let (s, m) = (*op.shape(), p.m);
    let (hd, i) = (s.hidden, s.inter);
    let dh = gpu.upload(&p.h).unwrap();
    let mut outputs: Vec<(Route, Vec<bf16>)> = Vec::new();
    for route in routes(common::wgmma_route(gpu, op.has_wgmma(), s.hidden)) {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut a = poisoned(gpu, m * i);
            let r = gate_up(op, route, &dh, m, &mut a);
            if route == Route::FusedDecode && m > DECODE_MAX_M {
                if !matches!(r, Err(Error::Dimension { arg: "M", .. })) {
                    fail.push(format!("gate/up M={m} {route:?}: expected a Dimension error for M, got {r:?}"));
                }
                break;
            }
            match r {
                Ok(()) => runs.push(gpu.download(&a).unwrap()),
                Err(e) => {
                    fail.push(format!("gate/up M={m} {route:?}: {e}"));
                    break;
                }
            }
        }
        if runs.len() < 2 {
            continue;
        }
        match check(&runs[0], i, &p.rows, &p.want, GATE_UP) {
            Ok(c) => println!("gate/up M={m:<4} {route:?}: {c}"),
            Err(e) => fail.push(format!("gate/up M={m} {route:?}: {e}")),
        }
        if let Some(j) = first_difference(&runs[0], &runs[1]) {
            fail.push(format!("gate/up M={m} {route:?}: two runs differ, first at {j} (row {})", j / i));
        }
        outputs.push((route, runs.swap_remove(0)));
    }

    // No tiled kernel for this op: an error, and nothing written.
    let mut a = poisoned(gpu, m * i);
    let r = op.forward_into_with(Route::FusedTiled, &dh, m, &mut a);
    if !matches!(r, Err(Error::Value { arg: "route", .. })) {
        fail.push(format!("gate/up M={m} FusedTiled: expected a Value error for the route, got {r:?}"));
    }
    if gpu.download(&a).unwrap().iter().any(|v| !v.is_nan()) {
        fail.push(format!("gate/up M={m} FusedTiled: wrote its output"));
    }

    // Auto is the route auto_route names, bitwise.
    let auto = op.auto_route(m);
    let want_auto = if m <= auto_mlp_fused_max_m(hd) { Route::FusedDecode } else { Route::NormCublas };
    if auto != want_auto {
        fail.push(format!("gate/up M={m}: auto_route is {auto:?}, expected {want_auto:?}"));
    }
    let get = |r: Route| outputs.iter().find(|(x, _)| *x == r).map(|(_, y)| y);
    if let (Some(a), Some(b)) = (get(Route::Auto), get(auto))
        && let Some(j) = first_difference(a, b)
    {
        fail.push(format!("gate/up M={m}: Auto differs from {auto:?} at {j}"));
    }

    // The baselines, on the weights as given.
    let mut baseline_a = None;
    for which in BASELINES {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (mut xn, mut y, mut a) = (poisoned(gpu, m * hd), poisoned(gpu, m * 2 * i), poisoned(gpu, m * i));
            match base.gate_up_into(which, &dh, m, &mut xn, &mut y, &mut a) {
                Ok(()) => runs.push(gpu.download(&a).unwrap()),
                Err(e) => {
                    fail.push(format!("gate/up M={m} baseline {which:?}: {e}"));
                    break;
                }
            }
        }
        if runs.len() < 2 {
            continue;
        }
        match check(&runs[0], i, &p.rows, &p.want, GATE_UP) {
            Ok(c) => println!("gate/up M={m:<4} baseline {which:?}: {c}"),
            Err(e) => fail.push(format!("gate/up M={m} baseline {which:?}: {e}")),
        }
        if let Some(j) = first_difference(&runs[0], &runs[1]) {
            fail.push(format!("gate/up M={m} baseline {which:?}: two runs differ, first at {j}"));
        }
        if which == Baseline::NormCublas {
            baseline_a = Some(runs.swap_remove(0));
        }
    }

    // Every route against baseline (a), all elements.
    let Some(a) = baseline_a else { return };
    for (route, y) in &outputs {
        if let Err(e) = check_against(y, &a, GATE_UP_VS_BASELINE) {
            fail.push(format!("gate/up M={m} {route:?} vs baseline (a): {e}"));
        }
    }
}

/// Runs `route` of the projection in place (`Auto` through `forward_into`).
fn proj_in_place(
    op: &ProjResidual,
    route: Route,
    x: &CudaSlice<bf16>,
    m: usize,
    h: &mut CudaSlice<bf16>,
) -> Result<()> {
    if route == Route::Auto { op.forward_into(x, m, h) } else { op.forward_into_with(route, x, m, h) }
}

/// Every route of the projection, in place and out of place, and both baselines (`base`'s
/// down projection: the same weight) at one M.
fn check_proj(gpu: &Gpu, op: &ProjResidual, base: &UnfusedMlp, p: &ProjPoint, fail: &mut Vec<String>) {
    let (n, m) = (op.dims().1, p.m);
    let dx = gpu.upload(&p.x).unwrap();
    let mut outputs: Vec<(Route, Vec<bf16>)> = Vec::new();
    for route in routes(common::wgmma_route(gpu, op.has_wgmma(), op.dims().0)) {
        // In place: h holds the residual, uploaded again before each run.
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut dh = gpu.upload(&p.residual).unwrap();
            let r = proj_in_place(op, route, &dx, m, &mut dh);
            if route == Route::FusedDecode && m > DECODE_MAX_M {
                if !matches!(r, Err(Error::Dimension { arg: "M", .. })) {
                    fail.push(format!("proj M={m} {route:?}: expected a Dimension error for M, got {r:?}"));
                }
                if first_difference(&gpu.download(&dh).unwrap(), &p.residual).is_some() {
                    fail.push(format!("proj M={m} {route:?}: the refused call changed h"));
                }
                break;
            }
            match r {
                Ok(()) => runs.push(gpu.download(&dh).unwrap()),
                Err(e) => {
                    fail.push(format!("proj M={m} {route:?}: {e}"));
                    break;
                }
            }
        }
        if runs.len() < 2 {
            continue;
        }
        match check(&runs[0], n, &p.rows, &p.want, PROJ) {
            Ok(c) => println!("proj M={m:<4} {route:?} in place: {c}"),
            Err(e) => fail.push(format!("proj M={m} {route:?} in place: {e}")),
        }
        if let Some(j) = first_difference(&runs[0], &runs[1]) {
            fail.push(format!("proj M={m} {route:?} in place: two runs differ, first at {j} (row {})", j / n));
        }

        // Out of place: out poisoned; the residual must stay as it was.
        let mut oop = Vec::new();
        for _ in 0..2 {
            let dres = gpu.upload(&p.residual).unwrap();
            let mut out = poisoned(gpu, m * n);
            if let Err(e) = op.forward_out_of_place(route, &dx, m, &dres, &mut out) {
                fail.push(format!("proj M={m} {route:?} out of place: {e}"));
                break;
            }
            if let Some(j) = first_difference(&gpu.download(&dres).unwrap(), &p.residual) {
                fail.push(format!("proj M={m} {route:?} out of place: wrote the residual at {j}"));
            }
            oop.push(gpu.download(&out).unwrap());
        }
        if oop.len() == 2 {
            match check(&oop[0], n, &p.rows, &p.want, PROJ) {
                Ok(c) => println!("proj M={m:<4} {route:?} out of place: {c}"),
                Err(e) => fail.push(format!("proj M={m} {route:?} out of place: {e}")),
            }
            if let Some(j) = first_difference(&oop[0], &oop[1]) {
                fail.push(format!("proj M={m} {route:?} out of place: two runs differ, first at {j}"));
            }
            if let Some(j) = first_difference(&oop[0], &runs[0]) {
                fail.push(format!("proj M={m} {route:?}: out of place and in place differ at {j} (row {})", j / n));
            }
        }
        outputs.push((route, runs.swap_remove(0)));
    }

    // No tiled kernel: an error in both forms, and nothing written.
    let mut dh = gpu.upload(&p.residual).unwrap();
    let r = op.forward_into_with(Route::FusedTiled, &dx, m, &mut dh);
    if !matches!(r, Err(Error::Value { arg: "route", .. })) {
        fail.push(format!("proj M={m} FusedTiled in place: expected a Value error for the route, got {r:?}"));
    }
    if first_difference(&gpu.download(&dh).unwrap(), &p.residual).is_some() {
        fail.push(format!("proj M={m} FusedTiled in place: changed h"));
    }
    let mut out = poisoned(gpu, m * n);
    let r = op.forward_out_of_place(Route::FusedTiled, &dx, m, &dh, &mut out);
    if !matches!(r, Err(Error::Value { arg: "route", .. })) {
        fail.push(format!("proj M={m} FusedTiled out of place: expected a Value error for the route, got {r:?}"));
    }
    if gpu.download(&out).unwrap().iter().any(|v| !v.is_nan()) {
        fail.push(format!("proj M={m} FusedTiled out of place: wrote its output"));
    }

    // Auto is the route auto_route names, bitwise.
    let auto = op.auto_route(m);
    let (k_in, n_out) = op.dims();
    let want_auto = if m <= auto_proj_fused_max_m(k_in, n_out) { Route::FusedDecode } else { Route::NormCublas };
    if auto != want_auto {
        fail.push(format!("proj M={m}: auto_route is {auto:?}, expected {want_auto:?}"));
    }
    let get = |r: Route| outputs.iter().find(|(x, _)| *x == r).map(|(_, y)| y);
    if let (Some(a), Some(b)) = (get(Route::Auto), get(auto))
        && let Some(j) = first_difference(a, b)
    {
        fail.push(format!("proj M={m}: Auto differs from {auto:?} at {j}"));
    }

    // The baselines: GEMM into y, then residual_add into h (in place).
    let mut baseline_a = None;
    for which in BASELINES {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (mut y, mut dh) = (poisoned(gpu, m * n), gpu.upload(&p.residual).unwrap());
            match base.down_into(which, &dx, m, &mut y, &mut dh) {
                Ok(()) => runs.push(gpu.download(&dh).unwrap()),
                Err(e) => {
                    fail.push(format!("proj M={m} baseline {which:?}: {e}"));
                    break;
                }
            }
        }
        if runs.len() < 2 {
            continue;
        }
        match check(&runs[0], n, &p.rows, &p.want, PROJ) {
            Ok(c) => println!("proj M={m:<4} baseline {which:?}: {c}"),
            Err(e) => fail.push(format!("proj M={m} baseline {which:?}: {e}")),
        }
        if let Some(j) = first_difference(&runs[0], &runs[1]) {
            fail.push(format!("proj M={m} baseline {which:?}: two runs differ, first at {j}"));
        }
        if which == Baseline::NormCublas {
            baseline_a = Some(runs.swap_remove(0));
        }
    }
    let Some(a) = baseline_a else { return };
    for (route, y) in &outputs {
        if let Err(e) = check_against(y, &a, PROJ) {
            fail.push(format!("proj M={m} {route:?} vs baseline (a): {e}"));
        }
    }
}

/// The M at which every forced split over K of the warpgroup-MMA route runs: one token
/// tile (no pairs, splits up to 8) and three (pairs, splits up to 4).
const SPLIT_MS: [usize; 2] = [100, 300];

/// Both ops' warpgroup-MMA route with each forced shape of `common::wgmma_test_shapes`
/// (each split over K, CTA pairs on and off, the tile walk by 1, 3 or one CTA per tile):
/// against the reference, two runs bitwise; the shapes `common::wgmma_refusal` names a
/// typed error.
fn check_forced_splits(
    gpu: &Gpu,
    op: &mut FusedRmsNormGateUp,
    proj: &mut ProjResidual,
    gp: &GateUpPoint,
    pp: &ProjPoint,
    fail: &mut Vec<String>,
) {
    let (i, n, m) = (op.shape().inter, proj.dims().1, gp.m);
    let (dh, dx) = (gpu.upload(&gp.h).unwrap(), gpu.upload(&pp.x).unwrap());
    for shape in common::wgmma_test_shapes() {
        op.set_wgmma_shape(shape);
        proj.set_wgmma_shape(shape);
        let refusal = common::wgmma_refusal(m, shape);
        let refused = refusal.is_some();
        let (mut gate_up_runs, mut proj_runs) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let mut a = poisoned(gpu, m * i);
            let mut h = gpu.upload(&pp.residual).unwrap();
            let rs = [
                op.forward_into_with(Route::FusedWgmma, &dh, m, &mut a),
                proj.forward_into_with(Route::FusedWgmma, &dx, m, &mut h),
            ];
            for (what, r) in ["gate/up", "proj"].iter().zip(&rs) {
                match (refusal, r) {
                    (Some(want), Err(Error::Value { arg, .. })) if *arg == want => {}
                    (None, Ok(())) => {}
                    (_, r) => fail.push(format!("{what} M={m} {shape:?}: {r:?} (want a refusal: {refusal:?})")),
                }
            }
            if refused || rs.iter().any(|r| r.is_err()) {
                break;
            }
            gate_up_runs.push(gpu.download(&a).unwrap());
            proj_runs.push(gpu.download(&h).unwrap());
        }
        for (what, runs, width, rows, want, bounds) in [
            ("gate/up", &gate_up_runs, i, &gp.rows, &gp.want, GATE_UP),
            ("proj", &proj_runs, n, &pp.rows, &pp.want, PROJ),
        ] {
            if runs.len() < 2 {
                continue;
            }
            match check(&runs[0], width, rows, want, bounds) {
                Ok(c) => println!("{what} M={m:<4} FusedWgmma {shape:?}: {c}"),
                Err(e) => fail.push(format!("{what} M={m} FusedWgmma {shape:?}: {e}")),
            }
            if let Some(j) = first_difference(&runs[0], &runs[1]) {
                fail.push(format!("{what} M={m} FusedWgmma {shape:?}: two runs differ, first at {j}"));
            }
        }
    }
    op.set_wgmma_shape(WgmmaShape::default());
    proj.set_wgmma_shape(WgmmaShape::default());
}

/// One MLP: the gate/up op on `h [m, H]` and the down projection (K = I, N = H) on
/// `x [m, I]`, every route and both baselines, at every M.
fn check_mlp(name: &str, shape: MlpShape) {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(name);
    let (h, i) = (shape.hidden, shape.inter);
    let g = random_bf16(&mut rng, h, 0.5, 1.5);
    let (wg, wu, wd) = (weights(&mut rng, i, h), weights(&mut rng, i, h), weights(&mut rng, h, i));

    // The references first (once per op for all M), then the host copies of W can go.
    let hs: Vec<Vec<bf16>> = MS.iter().map(|&m| random_bf16(&mut rng, m * h, -3.0, 3.0)).collect();
    let rows: Vec<Vec<usize>> = MS.iter().map(|&m| sample_rows(m)).collect();
    let h_all = stack(&hs, h, &rows);
    let all: Vec<usize> = (0..h_all.len() / h).collect();
    let want = unstack(reference::gate_up_rows(&h_all, &g, &wg, &wu, h, i, shape.eps, &all), i, &rows);
    let gate_up_points: Vec<GateUpPoint> = hs
        .into_iter()
        .zip(rows)
        .zip(want)
        .zip(MS)
        .map(|(((h, rows), want), m)| GateUpPoint { m, h, rows, want })
        .collect();
    let proj_points = proj_points(&mut rng, &wd, i, h);

    let mut op = FusedRmsNormGateUp::new(&gpu, shape, &g, &wg, &wu).unwrap();
    let base = UnfusedMlp::new(&gpu, shape, &g, &wg, &wu, &wd).unwrap();
    drop((wg, wu));
    let mut proj = ProjResidual::new(&gpu, i, h, &wd).unwrap();
    drop(wd);
    assert_eq!(proj.dims(), (i, h));

    let mut failures = Vec::new();
    for (gp, pp) in gate_up_points.iter().zip(&proj_points) {
        check_gate_up(&gpu, &op, &base, gp, &mut failures);
        check_proj(&gpu, &proj, &base, pp, &mut failures);
    }
    if common::wgmma_route(&gpu, op.has_wgmma(), h) {
        for (gp, pp) in gate_up_points.iter().zip(&proj_points).filter(|(gp, _)| SPLIT_MS.contains(&gp.m)) {
            check_forced_splits(&gpu, &mut op, &mut proj, gp, pp, &mut failures);
        }
    }
    gpu.synchronize().unwrap();
    assert!(failures.is_empty(), "{name}: {} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A projection alone (the attention output projection, K = heads · head_dim, N = H):
/// every route against the reference; the baselines are `UnfusedMlp`'s down projection on
/// the same weight (its gate/up weights zero and unused).
fn check_o_proj(name: &str, in_features: usize, out_features: usize) {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng(name);
    let (k, n) = (in_features, out_features);
    let w = weights(&mut rng, n, k);
    let points = proj_points(&mut rng, &w, k, n);
    let op = ProjResidual::new(&gpu, k, n, &w).unwrap();
    let zeros = vec![bf16::ZERO; k * n];
    let base = UnfusedMlp::new(&gpu, MlpShape::new(n, k, 1e-5), &vec![bf16::ONE; n], &zeros, &zeros, &w).unwrap();
    drop((w, zeros));
    let mut failures = Vec::new();
    for p in &points {
        check_proj(&gpu, &op, &base, p, &mut failures);
    }
    gpu.synchronize().unwrap();
    assert!(failures.is_empty(), "{name}: {} failures:\n{}", failures.len(), failures.join("\n"));
}

macro_rules! mlp_tests {
    ($($test:ident: $name:expr, $h:expr, $i:expr, $eps:expr;)*) => {
        /// (name, H, I, eps) of every MLP test.
        const MLP_SHAPES: &[(&str, usize, usize, f32)] = &[$(($name, $h, $i, $eps)),*];
        $(
            #[test]
            fn $test() {
                check_mlp($name, MlpShape::new($h, $i, $eps));
            }
        )*
    };
}

mlp_tests! {
    mlp_qwen3_0_6b: "Qwen3-0.6B", 1024, 3072, 1e-6;
    mlp_llama_3_2_1b: "Llama-3.2-1B", 2048, 8192, 1e-5;
    mlp_llama_3_8b: "Llama-3-8B", 4096, 14336, 1e-5;
    mlp_llama_3_70b: "Llama-3-70B", 8192, 28672, 1e-5;
    // H and I odd multiples of 8: no K step (32), row tile (16) or N tile divides them,
    // so every K loop ends in a partial block and the down projections' K and N are tails.
    mlp_tails_1032_2056: "tails 1032/2056", 1032, 2056, 1e-5;
    mlp_tails_1000_2008: "tails 1000/2008", 1000, 2008, 1e-5;
}

macro_rules! o_proj_tests {
    ($($test:ident: $name:expr, $k:expr, $n:expr;)*) => {
        /// (name, in_features, out_features) of every projection test.
        const O_PROJ_SHAPES: &[(&str, usize, usize)] = &[$(($name, $k, $n)),*];
        $(
            #[test]
            fn $test() {
                check_o_proj($name, $k, $n);
            }
        )*
    };
}

o_proj_tests! {
    o_proj_2048_1024: "o_proj 2048->1024", 2048, 1024;
    o_proj_2048_2048: "o_proj 2048->2048", 2048, 2048;
    o_proj_4096_4096: "o_proj 4096->4096", 4096, 4096;
    o_proj_8192_8192: "o_proj 8192->8192", 8192, 8192;
    // K and N odd multiples of 8, off every tile.
    o_proj_tails_1000_1032: "o_proj 1000->1032", 1000, 1032;
}

/// The blocked weight the gate/up op keeps is `bf16(W · g)` per element, bitwise, rows in
/// the order of `config::mlp::gate_up_row` (gate rows 8j..8j+8, then their up rows), each
/// row k-interleaved like the QKV op's folded weight.
#[test]
fn gate_up_folded_weight_is_blocked_bf16_of_w_times_g() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("gate_up_folded_weight_is_blocked_bf16_of_w_times_g");
    for shape in [MlpShape::new(1000, 2008, 1e-5), MlpShape::new(264, 40, 1e-5)] {
        let (h, i) = (shape.hidden, shape.inter);
        let g = random_bf16(&mut rng, h, 0.5, 1.5);
        let (wg, wu) = (weights(&mut rng, i, h), weights(&mut rng, i, h));
        let op = FusedRmsNormGateUp::new(&gpu, shape, &g, &wg, &wu).unwrap();
        let got = gpu.download(op.folded_weight()).unwrap();
        assert_eq!(got.len(), 2 * i * h);
        let fold = |w: &[bf16]| -> Vec<bf16> {
            reference::interleave_k(
                &w.iter()
                    .zip(g.iter().cycle())
                    .map(|(w, g)| bf16::from_f32(w.to_f32() * g.to_f32()))
                    .collect::<Vec<_>>(),
                h,
            )
        };
        let (fg, fu) = (fold(&wg), fold(&wu));
        // Rows 16b .. 16b + 8: gate rows 8b .. 8b + 8; rows 16b + 8 .. 16b + 16: their up rows.
        let mut bad = Vec::new();
        for r in 0..2 * i {
            let (b, o) = (r / 16, r % 16);
            let (src, j) = if o < 8 { (&fg, 8 * b + o) } else { (&fu, 8 * b + o - 8) };
            if first_difference(&got[r * h..(r + 1) * h], &src[j * h..(j + 1) * h]).is_some() {
                bad.push(r);
            }
        }
        assert!(bad.is_empty(), "H={h} I={i}: folded rows differ: {:?}", &bad[..bad.len().min(8)]);
        println!("H={h} I={i}: folded weight bitwise bf16(W · g), blocked and interleaved");
    }
}

// ---------------------------------------------------------------------------------------
// Typed errors that need a device

/// A small MLP for the error tests: H = 64, I = 24, M = 3.
const SHAPE: MlpShape = MlpShape::new(64, 24, 1e-5);
const M: usize = 3;

/// The three ops on one set of random weights (the projection: the down projection).
struct Ops {
    gate_up: FusedRmsNormGateUp,
    proj: ProjResidual,
    base: UnfusedMlp,
}

fn small_ops(gpu: &Arc<Gpu>) -> Ops {
    let mut rng = common::rng("small MLP");
    let (h, i) = (SHAPE.hidden, SHAPE.inter);
    let g = random_bf16(&mut rng, h, 0.5, 1.5);
    let (wg, wu, wd) = (weights(&mut rng, i, h), weights(&mut rng, i, h), weights(&mut rng, h, i));
    Ops {
        gate_up: FusedRmsNormGateUp::new(gpu, SHAPE, &g, &wg, &wu).unwrap(),
        proj: ProjResidual::new(gpu, i, h, &wd).unwrap(),
        base: UnfusedMlp::new(gpu, SHAPE, &g, &wg, &wu, &wd).unwrap(),
    }
}

/// What is wrong with one argument's buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Nothing (the control run).
    None,
    /// This many elements too many (or too few).
    Len(isize),
    /// A view starting one bf16 (2 bytes) into its allocation.
    Offset,
    /// Allocated on another CUDA context.
    Foreign,
}

type Call<'a> = Box<dyn Fn(usize, &[CudaView<'_, bf16>], &mut [CudaViewMut<'_, bf16>]) -> Result<()> + 'a>;

/// One checked entry point: its buffer arguments (name, elements per token; inputs first)
/// and a call taking M and views.
struct Case<'a> {
    name: String,
    args: Vec<(&'static str, usize)>,
    inputs: usize,
    call: Call<'a>,
}

/// Every MLP entry point that takes activation or output buffers.
fn cases(ops: &Ops) -> Vec<Case<'_>> {
    let (h, i) = (SHAPE.hidden, SHAPE.inter);
    let mut cases: Vec<Case<'_>> = vec![Case {
        name: "FusedRmsNormGateUp::forward_into".into(),
        args: vec![("h", h), ("a", i)],
        inputs: 1,
        call: Box::new(|m, inp, out| ops.gate_up.forward_into(&inp[0], m, &mut out[0])),
    }];
    for route in ROUTES {
        cases.push(Case {
            name: format!("FusedRmsNormGateUp::forward_into_with({route:?})"),
            args: vec![("h", h), ("a", i)],
            inputs: 1,
            call: Box::new(move |m, inp, out| ops.gate_up.forward_into_with(route, &inp[0], m, &mut out[0])),
        });
        cases.push(Case {
            name: format!("ProjResidual::forward_into_with({route:?})"),
            args: vec![("x", i), ("h", h)],
            inputs: 1,
            call: Box::new(move |m, inp, out| ops.proj.forward_into_with(route, &inp[0], m, &mut out[0])),
        });
        cases.push(Case {
            name: format!("ProjResidual::forward_out_of_place({route:?})"),
            args: vec![("x", i), ("residual", h), ("out", h)],
            inputs: 2,
            call: Box::new(move |m, inp, out| ops.proj.forward_out_of_place(route, &inp[0], m, &inp[1], &mut out[0])),
        });
    }
    cases.push(Case {
        name: "ProjResidual::forward_into".into(),
        args: vec![("x", i), ("h", h)],
        inputs: 1,
        call: Box::new(|m, inp, out| ops.proj.forward_into(&inp[0], m, &mut out[0])),
    });
    for which in BASELINES {
        cases.push(Case {
            name: format!("UnfusedMlp::gate_up_into({which:?})"),
            args: vec![("h", h), ("xn", h), ("y", 2 * i), ("a", i)],
            inputs: 1,
            call: Box::new(move |m, inp, out| {
                let [xn, y, a] = out else { unreachable!() };
                ops.base.gate_up_into(which, &inp[0], m, xn, y, a)
            }),
        });
        cases.push(Case {
            name: format!("UnfusedMlp::down_into({which:?})"),
            args: vec![("a", i), ("y", h), ("h", h)],
            inputs: 1,
            call: Box::new(move |m, inp, out| {
                let [y, hh] = out else { unreachable!() };
                ops.base.down_into(which, &inp[0], m, y, hh)
            }),
        });
    }
    cases
}

/// Runs `case` at M = 3 with argument `bad` given `fault` (`foreign`: a stream of another
/// context) and every other argument a view of exactly its length at the start of its
/// allocation (zeros: valid inputs).
fn run_case(gpu: &Gpu, foreign: Option<&Arc<CudaStream>>, case: &Case, bad: usize, fault: Fault) -> Result<()> {
    let mut bufs: Vec<CudaSlice<bf16>> = case
        .args
        .iter()
        .enumerate()
        .map(|(j, &(_, per))| {
            let stream =
                if j == bad && fault == Fault::Foreign { foreign.expect("a foreign stream") } else { gpu.stream() };
            stream.alloc_zeros::<bf16>(M * per + 2).unwrap()
        })
        .collect();
    let range = |j: usize| {
        let len = M * case.args[j].1;
        match fault {
            _ if j != bad => 0..len,
            Fault::Len(d) => 0..len.checked_add_signed(d).unwrap(),
            Fault::Offset => 1..len + 1,
            Fault::None | Fault::Foreign => 0..len,
        }
    };
    let (ins, outs) = bufs.split_at_mut(case.inputs);
    let ins: Vec<CudaView<bf16>> = ins.iter().enumerate().map(|(j, b)| b.slice(range(j))).collect();
    let mut outs: Vec<CudaViewMut<bf16>> =
        outs.iter_mut().enumerate().map(|(j, b)| b.slice_mut(range(case.inputs + j))).collect();
    (case.call)(M, &ins, &mut outs)
}

/// Whether `e`'s message names `arg` in backquotes.
fn names(e: &Error, arg: &str) -> bool {
    e.to_string().contains(&format!("`{arg}`"))
}

/// Every case once with correct buffers (must succeed), then once per argument and fault;
/// `check(arg, len, fault, result)` describes a wrong result.
fn check_all(faults: &[Fault], check: impl Fn(&str, usize, Fault, &Result<()>) -> Option<String>) {
    let Some(gpu) = common::gpu() else { return };
    let ops = small_ops(&gpu);
    let foreign = faults.contains(&Fault::Foreign).then(|| {
        let ctx = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
        ctx.new_stream().expect("a stream on the second context")
    });
    let (mut failures, mut runs) = (Vec::new(), 0);
    for case in cases(&ops) {
        if let Err(e) = run_case(&gpu, None, &case, usize::MAX, Fault::None) {
            failures.push(format!("{}: fails with correct buffers: {e}", case.name));
            continue;
        }
        for (bad, &(arg, per)) in case.args.iter().enumerate() {
            for &f in faults {
                let r = run_case(&gpu, foreign.as_ref(), &case, bad, f);
                runs += 1;
                if let Some(why) = check(arg, M * per, f, &r) {
                    failures.push(format!("{} with `{arg}` {f:?}: {why}; got {r:?}", case.name));
                }
            }
        }
    }
    gpu.synchronize().unwrap();
    println!("{runs} faulty calls checked");
    assert!(runs >= 30, "only {runs} faulty calls");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn mlp_wrong_lengths_are_length_errors_naming_the_argument() {
    check_all(&[Fault::Len(-1), Fault::Len(1)], |arg, len, f, r| {
        let Fault::Len(d) = f else { unreachable!() };
        let want = len.checked_add_signed(d).unwrap();
        match r {
            Err(e @ Error::Length { arg: a, expected, got }) if *a == arg && *expected == len && *got == want => {
                (!names(e, arg)).then(|| "message does not name the argument".into())
            }
            _ => Some(format!("expected Length {{ arg: {arg}, expected: {len}, got: {want} }}")),
        }
    });
}

#[test]
fn mlp_misaligned_views_are_misaligned_errors() {
    check_all(&[Fault::Offset], |arg, _, _, r| match r {
        Err(e @ Error::Misaligned { arg: a, addr, align }) if *a == arg => {
            if *align != BUFFER_ALIGN || addr % BUFFER_ALIGN != 2 {
                Some(format!("address {addr:#x} / alignment {align} wrong"))
            } else {
                (!names(e, arg)).then(|| "message does not name the argument".into())
            }
        }
        _ => Some(format!("expected Misaligned {{ arg: {arg}, .. }}")),
    });
}

#[test]
fn mlp_buffers_of_another_context_are_wrong_device_errors() {
    check_all(&[Fault::Foreign], |arg, _, _, r| match r {
        Err(e @ Error::WrongDevice { arg: a, expected: 0, found: 0 }) if *a == arg => {
            (!names(e, arg)).then(|| "message does not name the argument".into())
        }
        _ => Some(format!("expected WrongDevice {{ arg: {arg}, expected: 0, found: 0 }}")),
    });
}

/// M = 0: Ok, and nothing written. The per-token buffers are zero-length views at the
/// start of allocations (sized for M = 3) filled with a sentinel, which must be all they
/// hold afterwards.
#[test]
fn mlp_m_zero_is_a_no_op() {
    let Some(gpu) = common::gpu() else { return };
    let ops = small_ops(&gpu);
    let sentinel = bf16::from_f32(-77.0);
    let mut failures = Vec::new();
    for case in cases(&ops) {
        let mut bufs: Vec<CudaSlice<bf16>> =
            case.args.iter().map(|&(_, per)| gpu.upload(&vec![sentinel; M * per]).unwrap()).collect();
        let (ins, outs) = bufs.split_at_mut(case.inputs);
        let r = {
            let ins: Vec<CudaView<bf16>> = ins.iter().map(|b| b.slice(0..0)).collect();
            let mut outs: Vec<CudaViewMut<bf16>> = outs.iter_mut().map(|b| b.slice_mut(0..0)).collect();
            (case.call)(0, &ins, &mut outs)
        };
        if let Err(e) = r {
            failures.push(format!("{}: M = 0 failed: {e}", case.name));
            continue;
        }
        gpu.synchronize().unwrap();
        for (b, &(arg, _)) in bufs.iter().zip(&case.args) {
            let host = gpu.download(b).unwrap();
            if let Some(j) = host.iter().position(|v| v.to_bits() != sentinel.to_bits()) {
                failures.push(format!("{}: M = 0 wrote `{arg}`[{j}] = {}", case.name, host[j]));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Two `CudaSlice`s over one allocation: `len` elements from element `offset` of `buf`
/// (made with `upgrade_device_ptr`; never dropped, so nothing is freed twice).
fn alias(stream: &Arc<CudaStream>, buf: &CudaSlice<bf16>, offset: usize, len: usize) -> ManuallyDrop<CudaSlice<bf16>> {
    assert!(offset + len <= buf.len(), "alias inside the allocation");
    let (ptr, _sync) = buf.device_ptr(stream);
    // SAFETY: `ptr + 2 offset` starts `len` bf16 of a live allocation; the alias is never
    // dropped (ManuallyDrop), so it frees nothing.
    ManuallyDrop::new(unsafe { stream.upgrade_device_ptr::<bf16>(ptr + 2 * offset as u64, len) })
}

/// Outputs over inputs or over each other are `Error::Overlap` naming both; the
/// out-of-place projection's residual may overlap x (both are only read), and then
/// computes what it computes on separate copies, bitwise.
#[test]
fn mlp_overlapping_buffers_are_overlap_errors() {
    let Some(gpu) = common::gpu() else { return };
    let ops = small_ops(&gpu);
    let stream = gpu.stream();
    let (h, i) = (SHAPE.hidden, SHAPE.inter);
    // One arena holds every input; outputs alias parts of it.
    let arena = gpu.upload(&random_bf16(&mut common::rng("overlap arena"), 4 * M * (h + 2 * i), -1.0, 1.0)).unwrap();
    let view = |offset: usize, len: usize| arena.slice(offset..offset + len);
    let mut failures = Vec::new();
    let mut expect = |what: &str, r: Result<()>, a: &str, b: &str| match r {
        Err(ref e @ Error::Overlap { a: ea, b: eb }) if ea == a && eb == b && names(e, a) && names(e, b) => {}
        other => failures.push(format!("{what}: expected Overlap {{ {a}, {b} }}, got {other:?}")),
    };

    // The gate/up op: a over h, on every route.
    for route in ROUTES {
        let mut a = alias(stream, &arena, 0, M * i);
        let r = ops.gate_up.forward_into_with(route, &view(0, M * h), M, &mut *a);
        expect(&format!("gate/up {route:?}, a over h"), r, "a", "h");
    }
    // The projection in place: h (the residual) over x, wholly and by one vector.
    for (route, offset) in ROUTES.iter().flat_map(|&r| [(r, 0), (r, 8)]) {
        let mut hh = alias(stream, &arena, offset, M * h);
        let r = ops.proj.forward_into_with(route, &view(0, M * i), M, &mut *hh);
        expect(&format!("proj {route:?}, h over x at +{offset}"), r, "h", "x");
    }
    // Out of place: out over the residual (wholly, and partly: 8 elements in), out over x.
    for route in ROUTES {
        let (x, res) = (view(0, M * i), view(M * i, M * h));
        for offset in [0, 8, M * h - 8] {
            let mut out = alias(stream, &arena, M * i + offset, M * h);
            let r = ops.proj.forward_out_of_place(route, &x, M, &res, &mut *out);
            expect(&format!("proj {route:?} out of place, out over residual at +{offset}"), r, "out", "residual");
        }
        let res = view(2 * M * (h + i), M * h);
        let mut out = alias(stream, &arena, 8, M * h);
        let r = ops.proj.forward_out_of_place(route, &x, M, &res, &mut *out);
        expect(&format!("proj {route:?} out of place, out over x"), r, "out", "x");
    }
    // The baselines: a over h, y over xn; h over a, y over h.
    for which in BASELINES {
        let base = &ops.base;
        let hv = view(0, M * h);
        let (mut xn, mut y) = (gpu.alloc_zeros::<bf16>(M * h).unwrap(), gpu.alloc_zeros::<bf16>(M * 2 * i).unwrap());
        let mut a = alias(stream, &arena, 8, M * i);
        let r = base.gate_up_into(which, &hv, M, &mut xn, &mut y, &mut *a);
        expect(&format!("gate_up_into {which:?}, a over h"), r, "a", "h");
        // y over xn (y [M, 2I] fits inside xn [M, H] here).
        assert!(2 * i <= h);
        let mut a = gpu.alloc_zeros::<bf16>(M * i).unwrap();
        let mut y_on_xn = alias(stream, &xn, 0, M * 2 * i);
        let r = base.gate_up_into(which, &hv, M, &mut xn, &mut *y_on_xn, &mut a);
        expect(&format!("gate_up_into {which:?}, y over xn"), r, "xn", "y");
        let av = view(0, M * i);
        let mut y = gpu.alloc_zeros::<bf16>(M * h).unwrap();
        let mut hh = alias(stream, &arena, 0, M * h);
        expect(&format!("down_into {which:?}, h over a"), base.down_into(which, &av, M, &mut y, &mut *hh), "h", "a");
        let mut hd = gpu.alloc_zeros::<bf16>(M * h).unwrap();
        let mut y_on_h = alias(stream, &hd, 0, M * h);
        expect(
            &format!("down_into {which:?}, y over h"),
            base.down_into(which, &av, M, &mut *y_on_h, &mut hd),
            "y",
            "h",
        );
    }

    // The residual overlapping x out of place is fine (both read): the same result as on
    // separate copies of the same data.
    let arena_host = gpu.download(&arena).unwrap();
    let (x_host, res_host) = (arena_host[..M * i].to_vec(), arena_host[8..8 + M * h].to_vec());
    for route in ROUTES {
        let mut out = poisoned(&gpu, M * h);
        let r = ops.proj.forward_out_of_place(route, &view(0, M * i), M, &view(8, M * h), &mut out);
        let mut out2 = poisoned(&gpu, M * h);
        let (dx, dres) = (gpu.upload(&x_host).unwrap(), gpu.upload(&res_host).unwrap());
        ops.proj.forward_out_of_place(route, &dx, M, &dres, &mut out2).unwrap();
        match r {
            Ok(()) => {
                if let Some(j) = first_difference(&gpu.download(&out).unwrap(), &gpu.download(&out2).unwrap()) {
                    failures.push(format!("proj {route:?}, residual over x: differs from separate copies at {j}"));
                }
            }
            Err(e) => failures.push(format!("proj {route:?}, residual over x: {e}")),
        }
    }
    gpu.synchronize().unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Records a failure unless `r` is an error that `ok` accepts.
fn expect(failures: &mut Vec<String>, what: &str, r: Result<()>, ok: &dyn Fn(&Error) -> bool) {
    match r {
        Err(e) if ok(&e) => {}
        other => failures.push(format!("{what}: got {other:?}")),
    }
}

/// M past the index range, the decode route past its M limit, the route with no kernel,
/// and bad weights: typed errors naming the argument, nothing written.
#[test]
fn mlp_bad_dimensions_routes_and_weights_are_typed_errors() {
    let Some(gpu) = common::gpu() else { return };
    let ops = small_ops(&gpu);
    let (h, i) = (SHAPE.hidden, SHAPE.inter);
    let mut failures = Vec::new();
    let too_large = |e: &Error| {
        matches!(e, Error::TooLarge { arg: "m" | "M", got, .. } if *got == MAX_DIM as u64 + 1)
            && (names(e, "m") || names(e, "M"))
    };
    let (hx, xx) = (gpu.alloc_zeros::<bf16>(M * h).unwrap(), gpu.alloc_zeros::<bf16>(M * i).unwrap());
    let (mut a, mut hh) = (gpu.alloc_zeros::<bf16>(M * i).unwrap(), gpu.alloc_zeros::<bf16>(M * h).unwrap());
    let mut out = gpu.alloc_zeros::<bf16>(M * h).unwrap();
    for route in ROUTES {
        expect(
            &mut failures,
            "gate/up M > MAX_DIM",
            ops.gate_up.forward_into_with(route, &hx, MAX_DIM + 1, &mut a),
            &too_large,
        );
        expect(
            &mut failures,
            "proj M > MAX_DIM",
            ops.proj.forward_into_with(route, &xx, MAX_DIM + 1, &mut hh),
            &too_large,
        );
        let r = ops.proj.forward_out_of_place(route, &xx, MAX_DIM + 1, &hx, &mut out);
        expect(&mut failures, "proj out of place M > MAX_DIM", r, &too_large);
    }
    let (mut xn, mut y) = (gpu.alloc_zeros::<bf16>(M * h).unwrap(), gpu.alloc_zeros::<bf16>(M * 2 * i).unwrap());
    for which in BASELINES {
        let r = ops.base.gate_up_into(which, &hx, MAX_DIM + 1, &mut xn, &mut y, &mut a);
        expect(&mut failures, "gate_up_into M > MAX_DIM", r, &too_large);
        let mut yh = gpu.alloc_zeros::<bf16>(M * h).unwrap();
        expect(
            &mut failures,
            "down_into M > MAX_DIM",
            ops.base.down_into(which, &xx, MAX_DIM + 1, &mut yh, &mut hh),
            &too_large,
        );
    }

    // The decode route at M = 17 and the tiled route: refused, nothing written.
    let m = DECODE_MAX_M + 1;
    let is_m = |e: &Error| matches!(e, Error::Dimension { arg: "M", got, .. } if *got == DECODE_MAX_M + 1);
    let is_route = |e: &Error| matches!(e, Error::Value { arg: "route", .. }) && names(e, "route");
    let hx = gpu.upload(&vec![bf16::ONE; m * h]).unwrap();
    let xx = gpu.upload(&vec![bf16::ONE; m * i]).unwrap();
    let res = vec![bf16::from_f32(2.0); m * h];
    for (route, ok) in [(Route::FusedDecode, &is_m as &dyn Fn(&Error) -> bool), (Route::FusedTiled, &is_route)] {
        let mut a = poisoned(&gpu, m * i);
        expect(
            &mut failures,
            &format!("gate/up {route:?} M = {m}"),
            ops.gate_up.forward_into_with(route, &hx, m, &mut a),
            ok,
        );
        let mut hh = gpu.upload(&res).unwrap();
        expect(
            &mut failures,
            &format!("proj {route:?} M = {m}"),
            ops.proj.forward_into_with(route, &xx, m, &mut hh),
            ok,
        );
        let mut out = poisoned(&gpu, m * h);
        let dres = gpu.upload(&res).unwrap();
        let r = ops.proj.forward_out_of_place(route, &xx, m, &dres, &mut out);
        expect(&mut failures, &format!("proj out of place {route:?} M = {m}"), r, ok);
        let untouched = gpu.download(&a).unwrap().iter().all(|v| v.is_nan())
            && gpu.download(&out).unwrap().iter().all(|v| v.is_nan())
            && first_difference(&gpu.download(&hh).unwrap(), &res).is_none();
        if !untouched {
            failures.push(format!("{route:?} M = {m}: a refused call wrote an output"));
        }
    }

    // Weights: host lengths, shapes and projection dims.
    let mut rng = common::rng("mlp bad weights");
    let g = random_bf16(&mut rng, h, 0.5, 1.5);
    let w = weights(&mut rng, i, h);
    let len_err = |arg: &'static str, expected: usize, got: usize| {
        move |e: &Error| {
            matches!(e, Error::Length { arg: a, expected: x, got: y } if *a == arg && *x == expected && *y == got)
                && names(e, arg)
        }
    };
    for d in [-1isize, 1] {
        let (gl, wl) = (h.wrapping_add_signed(d), (i * h).wrapping_add_signed(d));
        let (g2, w2) = (random_bf16(&mut rng, gl, 0.5, 1.5), random_bf16(&mut rng, wl, -0.1, 0.1));
        let new = |g: &[bf16], wg: &[bf16], wu: &[bf16]| FusedRmsNormGateUp::new(&gpu, SHAPE, g, wg, wu).map(drop);
        expect(&mut failures, "FusedRmsNormGateUp::new, g", new(&g2, &w, &w), &len_err("g", h, gl));
        expect(&mut failures, "FusedRmsNormGateUp::new, w_gate", new(&g, &w2, &w), &len_err("w_gate", i * h, wl));
        expect(&mut failures, "FusedRmsNormGateUp::new, w_up", new(&g, &w, &w2), &len_err("w_up", i * h, wl));
        let unf =
            |g: &[bf16], wg: &[bf16], wu: &[bf16], wd: &[bf16]| UnfusedMlp::new(&gpu, SHAPE, g, wg, wu, wd).map(drop);
        expect(&mut failures, "UnfusedMlp::new, g", unf(&g2, &w, &w, &w), &len_err("g", h, gl));
        expect(&mut failures, "UnfusedMlp::new, w_gate", unf(&g, &w2, &w, &w), &len_err("w_gate", i * h, wl));
        expect(&mut failures, "UnfusedMlp::new, w_up", unf(&g, &w, &w2, &w), &len_err("w_up", i * h, wl));
        expect(&mut failures, "UnfusedMlp::new, w_down", unf(&g, &w, &w, &w2), &len_err("w_down", i * h, wl));
        expect(
            &mut failures,
            "ProjResidual::new, w",
            ProjResidual::new(&gpu, i, h, &w2).map(drop),
            &len_err("w", i * h, wl),
        );
    }
    let bad_shape = MlpShape::new(60, i, 1e-5);
    let dim = |arg: &'static str, got: usize| {
        move |e: &Error| matches!(e, Error::Dimension { arg: a, got: g, .. } if *a == arg && *g == got) && names(e, arg)
    };
    expect(
        &mut failures,
        "FusedRmsNormGateUp::new, hidden = 60",
        FusedRmsNormGateUp::new(&gpu, bad_shape, &g, &w, &w).map(drop),
        &dim("hidden", 60),
    );
    expect(
        &mut failures,
        "UnfusedMlp::new, hidden = 60",
        UnfusedMlp::new(&gpu, bad_shape, &g, &w, &w, &w).map(drop),
        &dim("hidden", 60),
    );
    for (k, n, arg, got) in
        [(0, h, "in_features", 0), (12, h, "in_features", 12), (i, 0, "out_features", 0), (i, 4, "out_features", 4)]
    {
        expect(
            &mut failures,
            &format!("ProjResidual::new({k}, {n})"),
            ProjResidual::new(&gpu, k, n, &w).map(drop),
            &dim(arg, got),
        );
    }
    // The controls.
    FusedRmsNormGateUp::new(&gpu, SHAPE, &g, &w, &w).unwrap();
    UnfusedMlp::new(&gpu, SHAPE, &g, &w, &w, &w).unwrap();
    ProjResidual::new(&gpu, i, h, &w).unwrap();
    gpu.synchronize().unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Coverage (CPU: runs without a device)

/// The entry a decode plan launches: plain, `_early`, `_early_m8` or `_ring`.
fn form(p: &DecodePlan) -> &'static str {
    match (p.ring, p.early, p.token_tiles) {
        (true, _, _) => "ring",
        (false, false, _) => "plain",
        (false, true, 1) => "early_m8",
        (false, true, _) => "early",
    }
}

/// On an H100 (132 SMs, 227 KiB of shared memory per CTA) the shapes and M above make the
/// planner pick each of the four decode entries of both MLP ops, never with a K split
/// (which the gate/up epilogue refuses), so the tests above run all eight kernels.
#[test]
fn the_test_shapes_plan_every_mlp_decode_entry_on_h100() {
    const SMS: u32 = 132;
    const SMEM: u32 = 227 * 1024;
    let mut gate_up = std::collections::BTreeSet::new();
    let mut proj = std::collections::BTreeSet::new();
    let decode_ms = MS.iter().copied().filter(|&m| m <= DECODE_MAX_M);
    for m in decode_ms {
        let plan = |k: usize, n: usize| plan::decode_plan(m, k, n, SMS, SMEM, None).unwrap();
        for &(name, h, i, _) in MLP_SHAPES {
            let p = plan(h, 2 * i);
            assert_eq!(p.k_splits(), 1, "{name} gate/up M={m}: {p:?}");
            gate_up.insert(form(&p));
            proj.insert(form(&plan(i, h)));
        }
        for &(_, k, n) in O_PROJ_SHAPES {
            proj.insert(form(&plan(k, n)));
        }
    }
    let all = std::collections::BTreeSet::from(["early", "early_m8", "plain", "ring"]);
    assert_eq!(gate_up, all, "gate/up decode entries planned");
    assert_eq!(proj, all, "projection decode entries planned");
}
