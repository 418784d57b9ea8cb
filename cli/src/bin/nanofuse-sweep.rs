//! `nanofuse-sweep`: every kernel the host launches, once per case, over a sweep of shapes
//! with tails, each result checked against the CPU reference. It is the program
//! `scripts/sanitize.sh` runs under compute-sanitizer, so it stays small: before the MLP
//! cases, about 5 s on an H100 (under 1 s of it GPU work) and under a minute under each
//! sanitizer tool; the MLP cases about double the launches (not yet measured).
//!
//! Per shape (K, Nq, Nkv) and M, with random weights and x, outputs poisoned with NaN first:
//! * `forward_into_with` on `FusedDecode` (M <= `DECODE_MAX_M`), `FusedTiled`, `NormCublas`
//!   and `Auto`, against `reference::qkv_rows`;
//! * `UnfusedRmsNormQkv::forward_into` for `NormCublas` and `NormNanofuse`, against the same rows;
//! * `ops::rms_norm` against `reference::rms_norm_f32` (every row);
//! * `ops::gemm` with nanofuse's GEMM and with cuBLAS, against `reference::gemm_rows`;
//! * `FusedWgmma` (the sm_90a module's `fused_rmsnorm_qkv_wgmma`) where the device and K
//!   allow it.
//!
//! Per MLP shape (H, I) and M, the same way:
//! * `FusedRmsNormGateUp::forward_into_with` on `FusedDecode` (the four
//!   `fused_rmsnorm_gate_up_decode*` entries), `NormCublas` (RMSNorm, cuBLAS, `silu_mul` on
//!   the blocked columns) and `Auto`, against `reference::gate_up_rows`;
//! * `ProjResidual` (the down projection, K = I, N = H) in place and out of place on
//!   `FusedDecode` (the four `proj_residual_decode*` entries) and `NormCublas` (cuBLAS with
//!   `beta = 1`), in place on `Auto`, against `reference::proj_residual_rows`;
//! * `UnfusedMlp::gate_up_into` and `down_into` for `NormCublas` and `NormNanofuse` (their
//!   GEMMs, `silu_mul` on PyTorch's merged layout, `residual_add`), against the same rows;
//! * `FusedWgmma` for both ops (`fused_rmsnorm_gate_up_wgmma`, `proj_residual_wgmma`) where
//!   the device and K allow it.
//!
//! The decode engine's kernels (`engine_sweep`): `argmax` over tail lengths, `step_begin`
//! (a prompt step and an overflow step), `qk_norm_rope` with and without the q/k norm,
//! `attention_decode` over GQA shapes and context lengths, and `FusedRmsNormArgmax` (the
//! four `fused_rmsnorm_argmax_decode*` entries) at M in {1, 3, 9, 16}, each against its
//! CPU reference.
//!
//! The decode cases run at every M from 1 to `DECODE_MAX_M`, the others (the fallbacks and
//! baselines, whose cuBLAS kernels dominate a sanitizer run) at a few M; after the MLP shapes one
//! more case checks that the planner picked each of the eight MLP decode entries somewhere
//! (the shapes are chosen for that on an H100).
//!
//! Launch shapes are the default planner's (no `Tuning`), except one more warpgroup-MMA
//! case per QKV shape and M where two CTAs walk all the output tiles (`WgmmaShape::ctas`),
//! so that the persistent walk runs under the sanitizer at small M too. M in {1, 3, 17, 100} runs the
//! decode kernels at one token, a few, and past 16 tokens, and the tiled kernels, whose
//! planner picks the small tiles at these M; one more M on the model shape (the smallest
//! with as many 128 x 128 output tiles as the GPU has SMs, plus a row tail) makes it pick
//! the large tiles too, so every entry point in `KernelId::ALL` runs.
//!
//! Exit status: 0 when every case passed, 1 on any mismatch, unwritten element or CUDA
//! error, 2 when this machine has no CUDA driver or device.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use nanofuse::cudarc::driver::CudaSlice;
use nanofuse::ops::{self, GemmImpl};
use nanofuse::plan::{self, DECODE_MAX_M, DecodePlan};
use nanofuse::reference::{self, compare, concat_qkv, rms};
use nanofuse::{
    Baseline, Error, FusedRmsNormGateUp, FusedRmsNormQkv, Gpu, KernelId, MlpShape, ProjResidual, QkvShape, Route,
    Tuning, UnfusedMlp, UnfusedRmsNormQkv, WGMMA_ENTRIES, WgmmaShape, bf16,
};
use nanofuse_cli::bench::{random_bf16, random_weights};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The warpgroup-MMA launch of the walk cases: two CTAs walking all the output tiles.
const WALK_OF_TWO: WgmmaShape = WgmmaShape { split: None, pairs: Some(false), ctas: Some(2) };

/// The shapes of the sweep: (name, K, Nq, Nkv).
const SHAPES: [(&str, usize, usize, usize); 5] = [
    // K = 1000 and N = 341 are multiples of no tile size; the q/k and k/v boundaries fall
    // inside MMA tiles.
    ("tails", 1000, 203, 69),
    ("small", 264, 40, 24),
    // Qwen3-0.6B's attention input (the decode kernels' `_early_m8` entries at M <= 8).
    ("model", 1024, 2048, 1024),
    // K long enough that a decode warp has more than 32 K steps, so the planner picks the
    // entries without `_early` (one W batch before the wait, sums of squares in the loop,
    // the row shared by all warps at M = 1); at M = 9 its x rows (216 KB) do not fit two
    // CTAs per SM, so the planner streams x through the ring (`_ring`).
    ("long-k", 12288, 256, 64),
    // K = 1056 = 16 · 64 + 32: whole interleave blocks (the warpgroup-MMA path runs it) and a
    // half K tile; N off every tile.
    ("wgmma-tails", 1056, 203, 69),
];

/// Batch sizes: one token, a few, one past 8 (the decode kernels' two-token-tile entries with
/// a part-empty second tile), one past 16 (a token-tile tail), past the decode kernels'
/// `DECODE_MAX_M` altogether.
const MS: [usize; 5] = [1, 3, 9, 17, 100];

const EPS: f32 = 1e-5;

/// Rows of the large tiled kernels' tiles (`plan::Tile::Large`); see `large_tile_m`.
const LARGE_TILE_ROWS: usize = 128;

/// Bounds of the projection (as in `tests/gpu_qkv.rs`): every element within
/// `0.02·rms(ref) + 0.02·|ref|`, relative Frobenius error at most 4e-3.
const ELEMENT_TOL: f64 = 0.02;
const MAX_REL_FROBENIUS: f64 = 4e-3;

/// The MLP shapes of the sweep: (name, H, I), all H and I odd multiples of 8 (every K loop
/// ends in a partial 32-element block). On an H100 the planner picks:
const MLP_SHAPES: [(&str, usize, usize); 4] = [
    // gate/up and down: `_early_m8` at M <= 8, `_early` above.
    ("mlp-tails", 1000, 2008),
    // gate/up: the plain entry at M <= 3, the ring from M = 4 (x rows too long to stage
    // whole); down: the plain entry.
    ("mlp-long-h", 12296, 2056),
    // gate/up: `_early_m8`, `_early`; down (K = 12296): the plain entry at M <= 3, the
    // ring from M = 4.
    ("mlp-long-i", 136, 12296),
    // H and I multiples of 32 (the warpgroup-MMA path runs gate/up and down), neither of 64
    // (K tails), 2I off the 256-row tile.
    ("mlp-wgmma", 1056, 1184),
];

/// Batch sizes of the MLP cases: every M of the decode kernels, one past, a small batch.
const MLP_MS: [usize; 18] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 100];

/// The M at which the MLP's other cases (cuBLAS, the baselines) run too.
const MLP_FULL_MS: [usize; 6] = [1, 3, 9, 16, 17, 100];

/// Bounds of the gate/up op (as in `tests/gpu_mlp.rs`, which says why they are looser than
/// the projection's): every element within `0.08·rms(ref) + 0.04·|ref|`, relative
/// Frobenius error at most 8e-3.
const GATE_UP_ATOL_RMS: f64 = 0.08;
const GATE_UP_RTOL: f64 = 0.04;
const GATE_UP_MAX_REL_FROBENIUS: f64 = 8e-3;

/// Bounds of RMSNorm (as in `tests/gpu_rms_norm.rs`): one bf16 ulp per element, 2e-3 overall.
const NORM_RTOL: f64 = 1.0 / 128.0;
const NORM_ATOL: f64 = 1e-6;
const NORM_MAX_REL_FROBENIUS: f64 = 2e-3;

#[derive(Parser)]
#[command(
    name = "nanofuse-sweep",
    about = "Runs every nanofuse kernel once per case over a shape sweep with tails and checks it against the \
             CPU reference (the program scripts/sanitize.sh runs under compute-sanitizer)"
)]
struct Args {
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Launch without programmatic dependent launch (PDL is on by default on sm_90+).
    #[arg(long)]
    no_pdl: bool,
    /// Print the kernel entry points the host launches, one a line, and exit (needs no GPU).
    #[arg(long)]
    list_kernels: bool,
    /// The parts of the sweep to run (comma-separated): a sanitizer tool too slow for the
    /// whole sweep in one go runs it part by part.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Qkv, Part::Mlp, Part::Engine])]
    part: Vec<Part>,
}

/// A part of the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The QKV ops (every route and schedule, the shapes with tails).
    Qkv,
    /// The MLP ops (gate/up, the projections, their baselines).
    Mlp,
    /// The decode engine's step kernels (step_begin, RoPE, attention, argmax, the LM head).
    Engine,
}

/// Why a case failed.
enum CaseError {
    /// A nanofuse or CUDA call returned an error.
    Api(Error),
    /// The result is wrong or incomplete.
    Mismatch(String),
}

impl From<Error> for CaseError {
    fn from(e: Error) -> Self {
        CaseError::Api(e)
    }
}

impl std::fmt::Display for CaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaseError::Api(e) => write!(f, "error: {e}"),
            CaseError::Mismatch(m) => write!(f, "mismatch: {m}"),
        }
    }
}

type CaseResult = Result<String, CaseError>;

/// Pass/fail counts; stops the sweep after a driver error (the context is unusable then).
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    driver_error: bool,
}

impl Tally {
    fn record(&mut self, label: &str, result: CaseResult) {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("ok   {label}: {detail}");
            }
            Err(e) => {
                self.failed += 1;
                self.driver_error |= matches!(e, CaseError::Api(Error::Driver { .. }));
                println!("FAIL {label}: {e}");
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_kernels {
        for k in KernelId::ALL {
            println!("{}", k.name());
        }
        for (name, _) in WGMMA_ENTRIES {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    println!("nanofuse-sweep: seed {}", args.seed);
    let gpu = match nanofuse::open(0) {
        Ok(gpu) => gpu,
        Err(e @ (Error::NoDriver | Error::NoDevice { .. })) => {
            eprintln!("nanofuse-sweep: no GPU to run on: {e}");
            eprintln!("nanofuse-sweep: run it on a GPU host (see scripts/sanitize.sh); nothing was checked");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("nanofuse-sweep: opening the GPU failed: {e}");
            println!("sweep: 0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    if args.no_pdl {
        gpu.set_pdl(false);
    }
    let info = gpu.info();
    println!(
        "device: {} (sm_{}{}, {} SMs), kernels built for {}, PDL {}",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.sm_count,
        nanofuse::KERNELS_ARCH,
        if gpu.pdl() { "on" } else { "off" }
    );
    match gpu.wgmma_unavailable() {
        None => println!("warpgroup-MMA kernels (sm_90a module): loaded"),
        Some(why) => println!("warpgroup-MMA kernels not run: {why}"),
    }

    let start = Instant::now();
    let mut tally = Tally::default();
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let qkv_shapes: &[(&str, usize, usize, usize)] = if args.part.contains(&Part::Qkv) { &SHAPES } else { &[] };
    'sweep: for &(name, k, nq, nkv) in qkv_shapes {
        let shape = QkvShape::new(k, nq, nkv, EPS);
        let (g, w) = random_weights(&mut rng, &shape);
        let built = FusedRmsNormQkv::new(&gpu, shape, &g, &w)
            .and_then(|op| Ok((op, UnfusedRmsNormQkv::new(&gpu, shape, &g, &w)?)));
        let (mut op, base) = match built {
            Ok(ops) => ops,
            Err(e) => {
                tally.record(&format!("{name} setup"), Err(e.into()));
                if tally.driver_error {
                    break 'sweep;
                }
                continue;
            }
        };
        let mut ms = MS.to_vec();
        if name == "model" {
            ms.push(large_tile_m(shape.n(), info.sm_count));
        }
        println!("== {name}: K={k} Nq={nq} Nkv={nkv} (N={}), eps {EPS:e}, M in {ms:?}", shape.n());
        for m in ms {
            let x = random_bf16(&mut rng, m * k, -3.0, 3.0);
            let s = Sweep::new(&gpu, &op, &base, &g, &w, x.clone(), m);
            for (case, run) in s.cases() {
                tally.record(&format!("{name:<5} M={m:<3} {case:<19}"), run(&s));
                if tally.driver_error {
                    break 'sweep;
                }
            }
            // The warpgroup-MMA kernel's persistent walk: two CTAs take every tile in turn.
            if op.has_wgmma() {
                op.set_tuning(Tuning { wgmma: WALK_OF_TWO, ..Tuning::default() });
                let s = Sweep::new(&gpu, &op, &base, &g, &w, x, m);
                tally.record(&format!("{name:<5} M={m:<3} {:<19}", "fused-wgmma walk/2"), s.forward(Route::FusedWgmma));
                op.set_tuning(Tuning::default());
                if tally.driver_error {
                    break 'sweep;
                }
            }
        }
    }
    if !tally.driver_error && args.part.contains(&Part::Mlp) {
        mlp_sweep(&gpu, &mut tally, &mut rng);
    }
    if !tally.driver_error && args.part.contains(&Part::Engine) {
        engine_sweep(&gpu, &mut tally, &mut rng);
    }
    if tally.driver_error {
        println!("aborted: a CUDA driver error leaves the context unusable; the remaining cases did not run");
    } else if let Err(e) = gpu.synchronize() {
        tally.record("final synchronize", Err(e.into()));
    }
    drop(gpu); // free everything before exit, so a leak check sees a clean context
    nanofuse::release_idle_cublas_handles(); // the handles nanofuse pools for reuse, too
    println!("finished in {:.1} s", start.elapsed().as_secs_f64());
    println!("sweep: {} passed, {} failed", tally.passed, tally.failed);
    if tally.failed == 0 && !tally.driver_error { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The smallest M > 128 with at least as many 128 x 128 output tiles as the GPU has SMs,
/// where the tiled planner switches to the large tiles (513 on an H100 for N = 4096); it
/// is one row past a multiple of 128, so the last row tile is a tail.
fn large_tile_m(n: usize, sm_count: u32) -> usize {
    let col_tiles = n.div_ceil(LARGE_TILE_ROWS);
    let row_tiles = (sm_count as usize).div_ceil(col_tiles).max(2);
    LARGE_TILE_ROWS * (row_tiles - 1) + 1
}

/// One (shape, M) point: the op, its host-side weights, x on both sides and the references.
struct Sweep<'a> {
    gpu: &'a Arc<Gpu>,
    op: &'a FusedRmsNormQkv,
    base: &'a UnfusedRmsNormQkv,
    g: &'a [bf16],
    w: &'a [bf16],
    x: Vec<bf16>,
    m: usize,
    /// Rows compared with the reference (all rows are checked for being written).
    rows: Vec<usize>,
    /// `rmsnorm(x) · Wᵀ` at `rows`, `[rows.len(), N]`.
    want_qkv: Vec<f32>,
    /// `x · Wᵀ` at `rows`, `[rows.len(), N]`.
    want_gemm: Vec<f32>,
}

type Case<'a> = (&'static str, fn(&Sweep<'a>) -> CaseResult);

impl<'a> Sweep<'a> {
    fn new(
        gpu: &'a Arc<Gpu>,
        op: &'a FusedRmsNormQkv,
        base: &'a UnfusedRmsNormQkv,
        g: &'a [bf16],
        w: &'a [bf16],
        x: Vec<bf16>,
        m: usize,
    ) -> Self {
        let s = *op.shape();
        let rows = sample_rows(m);
        let want_qkv = reference::qkv_rows(&x, g, w, s.hidden, s.n(), s.eps, &rows);
        let want_gemm = reference::gemm_rows(&x, w, s.hidden, s.n(), &rows);
        Sweep { gpu, op, base, g, w, x, m, rows, want_qkv, want_gemm }
    }

    /// The cases that apply at this M.
    fn cases(&self) -> Vec<Case<'a>> {
        let mut cases: Vec<Case<'a>> = Vec::new();
        if self.m <= DECODE_MAX_M {
            cases.push(("fused-decode", |s| s.forward(Route::FusedDecode)));
        }
        let rest: [Case<'a>; 8] = [
            ("fused-tiled", |s| s.forward(Route::FusedTiled)),
            ("norm+cublas (split)", |s| s.forward(Route::NormCublas)),
            ("auto", |s| s.forward(Route::Auto)),
            ("baseline cublas", |s| s.baseline(Baseline::NormCublas)),
            ("baseline nanofuse", |s| s.baseline(Baseline::NormNanofuse)),
            ("ops::rms_norm", Sweep::rms_norm),
            ("ops::gemm nanofuse", |s| s.gemm(GemmImpl::Nanofuse)),
            ("ops::gemm cublas", |s| s.gemm(GemmImpl::Cublas)),
        ];
        cases.extend(rest);
        if self.op.has_wgmma() {
            cases.push(("fused-wgmma", |s| s.forward(Route::FusedWgmma)));
        }
        cases
    }

    /// Checks a `[m, N]` projection result against `want` at the sampled rows: every
    /// element within `0.02·rms(ref) + 0.02·|ref|`, relative Frobenius error <= 4e-3.
    fn check_projection(&self, y: &[bf16], want: &[f32]) -> CaseResult {
        let atol = ELEMENT_TOL * rms(want);
        check(y, self.shape().n(), &self.rows, want, atol, ELEMENT_TOL, MAX_REL_FROBENIUS)
    }

    fn shape(&self) -> QkvShape {
        *self.op.shape()
    }

    /// A new device buffer of `len` bf16, filled with NaN.
    fn poisoned(&self, len: usize) -> Result<CudaSlice<bf16>, Error> {
        poisoned(self.gpu, len)
    }

    fn forward(&self, path: Route) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let dx = gpu.upload(&self.x)?;
        let mut q = self.poisoned(m * s.q_dim)?;
        let mut k = self.poisoned(m * s.kv_dim)?;
        let mut v = self.poisoned(m * s.kv_dim)?;
        self.op.forward_into_with(path, &dx, m, &mut q, &mut k, &mut v)?;
        let (q, k, v) = (gpu.download(&q)?, gpu.download(&k)?, gpu.download(&v)?);
        let y = concat_qkv(&q, &k, &v, m, &s);
        self.check_projection(&y, &self.want_qkv)
    }

    fn baseline(&self, which: Baseline) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let dx = gpu.upload(&self.x)?;
        let mut xn = self.poisoned(m * s.hidden)?;
        let mut y = self.poisoned(m * s.n())?;
        self.base.forward_into(which, &dx, m, &mut xn, &mut y)?;
        let y = gpu.download(&y)?;
        self.check_projection(&y, &self.want_qkv)
    }

    fn rms_norm(&self) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let (dx, dg) = (gpu.upload(&self.x)?, gpu.upload(self.g)?);
        let mut y = self.poisoned(m * s.hidden)?;
        ops::rms_norm(gpu, &dx, &dg, &mut y, m, s.hidden, s.eps)?;
        let y = gpu.download(&y)?;
        let want = reference::rms_norm_f32(&self.x, self.g, m, s.hidden, s.eps);
        let all: Vec<usize> = (0..m).collect();
        check(&y, s.hidden, &all, &want, NORM_ATOL, NORM_RTOL, NORM_MAX_REL_FROBENIUS)
    }

    fn gemm(&self, which: GemmImpl) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let (dx, dw) = (gpu.upload(&self.x)?, gpu.upload(self.w)?);
        let mut y = self.poisoned(m * s.n())?;
        ops::gemm(gpu, which, &dx, &dw, &mut y, m, s.hidden, s.n())?;
        let y = gpu.download(&y)?;
        self.check_projection(&y, &self.want_gemm)
    }
}

/// Checks that every element of `got [m, width]` was written (no NaN poison or other
/// non-finite value left), then compares `rows` of it with `want` (`[rows.len(), width]`):
/// each element within `atol + rtol·|ref|`, the whole within `max_rel_frobenius`.
fn check(
    got: &[bf16],
    width: usize,
    rows: &[usize],
    want: &[f32],
    atol: f64,
    rtol: f64,
    max_rel_frobenius: f64,
) -> CaseResult {
    let bad = got.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        let first = got.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(CaseError::Mismatch(format!(
            "{bad} of {} output elements not finite (unwritten NaN poison?), first at row {} col {}",
            got.len(),
            first / width,
            first % width
        )));
    }
    let sampled: Vec<bf16> = rows.iter().flat_map(|&r| got[r * width..(r + 1) * width].iter().copied()).collect();
    let c = compare(&sampled, want, atol, rtol);
    if c.passes(max_rel_frobenius) { Ok(c.to_string()) } else { Err(CaseError::Mismatch(c.to_string())) }
}

/// A new device buffer of `len` bf16, filled with NaN.
fn poisoned(gpu: &Gpu, len: usize) -> Result<CudaSlice<bf16>, Error> {
    let mut buf = gpu.alloc_zeros::<bf16>(len)?;
    gpu.fill_nan(&mut buf)?;
    Ok(buf)
}

/// Rows compared with the reference: all of them up to 17, else the first two, the middle
/// and the last two (the others are still checked for being written).
fn sample_rows(m: usize) -> Vec<usize> {
    if m <= 17 {
        (0..m).collect()
    } else {
        let mut r = vec![0, 1, m / 2, m - 2, m - 1];
        r.dedup();
        r
    }
}

// ---------------------------------------------------------------------------------------
// The MLP ops

/// The four forms of each MLP decode kernel, indexed by `decode_form`.
const GATE_UP_FORMS: [KernelId; 4] =
    [KernelId::GateUpDecode, KernelId::GateUpDecodeEarly, KernelId::GateUpDecodeEarlyM8, KernelId::GateUpDecodeRing];
const PROJ_FORMS: [KernelId; 4] =
    [KernelId::ProjDecode, KernelId::ProjDecodeEarly, KernelId::ProjDecodeEarlyM8, KernelId::ProjDecodeRing];

/// The form a decode plan launches, as the host picks it: the ring; else the plain entry
/// unless `early`; of the `_early` entries the one-tile form at one token tile.
fn decode_form(p: &DecodePlan) -> usize {
    match (p.ring, p.early, p.token_tiles) {
        (true, _, _) => 3,
        (false, false, _) => 0,
        (false, true, 1) => 2,
        (false, true, _) => 1,
    }
}

/// The MLP ops of one shape on one set of random weights (the projection is the down
/// projection, K = I, N = H).
struct MlpOps {
    gate_up: FusedRmsNormGateUp,
    proj: ProjResidual,
    base: UnfusedMlp,
}

/// `[rows, cols]` weights with variance `1 / cols` (as `bench::random_weights`).
fn mlp_weights(rng: &mut impl Rng, rows: usize, cols: usize) -> Vec<bf16> {
    let a = (3.0 / cols as f32).sqrt();
    random_bf16(rng, rows * cols, -a, a)
}

/// Every MLP shape and M, then the case that checks which decode entries were planned.
fn mlp_sweep(gpu: &Arc<Gpu>, tally: &mut Tally, rng: &mut SmallRng) {
    let info = gpu.info();
    let mut planned: Vec<KernelId> = Vec::new();
    for (name, h, i) in MLP_SHAPES {
        let shape = MlpShape::new(h, i, EPS);
        let g = random_bf16(rng, h, 0.5, 1.5);
        let (wg, wu, wd) = (mlp_weights(rng, i, h), mlp_weights(rng, i, h), mlp_weights(rng, h, i));
        let built = FusedRmsNormGateUp::new(gpu, shape, &g, &wg, &wu).and_then(|gate_up| {
            let proj = ProjResidual::new(gpu, i, h, &wd)?;
            Ok(MlpOps { gate_up, proj, base: UnfusedMlp::new(gpu, shape, &g, &wg, &wu, &wd)? })
        });
        let ops = match built {
            Ok(ops) => ops,
            Err(e) => {
                tally.record(&format!("{name} setup"), Err(e.into()));
                if tally.driver_error {
                    return;
                }
                continue;
            }
        };
        println!("== {name}: H={h} I={i}, eps {EPS:e}, M in {MLP_MS:?} (cuBLAS and baselines at {MLP_FULL_MS:?})");
        for s in MlpSweep::all(gpu, &ops, rng, &g, [&wg, &wu, &wd]) {
            if s.m <= DECODE_MAX_M {
                for (k, n, forms) in [(h, 2 * i, &GATE_UP_FORMS), (i, h, &PROJ_FORMS)] {
                    // A planning error shows up as the case's own error.
                    if let Ok(p) = plan::decode_plan(s.m, k, n, info.sm_count, info.max_smem_per_block, None) {
                        planned.push(forms[decode_form(&p)]);
                    }
                }
            }
            for (case, run) in s.cases() {
                tally.record(&format!("{name:<10} M={:<3} {case:<25}", s.m), run(&s));
                if tally.driver_error {
                    return;
                }
            }
        }
    }
    let missing: Vec<&str> =
        GATE_UP_FORMS.iter().chain(&PROJ_FORMS).filter(|id| !planned.contains(id)).map(|id| id.name()).collect();
    let coverage = if missing.is_empty() {
        Ok("each of the 8 planned at least once".to_string())
    } else {
        Err(CaseError::Mismatch(format!("never planned (change MLP_SHAPES): {}", missing.join(", "))))
    };
    tally.record("MLP decode entries", coverage);
}

/// One (MLP shape, M) point: the inputs and the references at the sampled rows.
struct MlpSweep<'a> {
    gpu: &'a Arc<Gpu>,
    ops: &'a MlpOps,
    m: usize,
    /// The gate/up op's input `h [m, H]`.
    h: Vec<bf16>,
    /// The projection's input `x [m, I]` and residual `[m, H]`.
    x: Vec<bf16>,
    residual: Vec<bf16>,
    /// Rows compared with the references (all rows are checked for being written).
    rows: Vec<usize>,
    /// `silu(rmsnorm(h) · Wgᵀ) ⊙ (rmsnorm(h) · Wuᵀ)` at `rows`, `[rows.len(), I]`.
    want_gate_up: Vec<f32>,
    /// `residual + x · Wdᵀ` at `rows`, `[rows.len(), H]`.
    want_proj: Vec<f32>,
}

type MlpCase<'a> = (&'static str, fn(&MlpSweep<'a>) -> CaseResult);

impl<'a> MlpSweep<'a> {
    /// The points of every M in `MLP_MS` with random inputs, and their references from one
    /// call per op (the sampled rows of every M stacked: each call widens the whole weight
    /// to f32 first). `w`: the gate, up and down weights as given.
    fn all(gpu: &'a Arc<Gpu>, ops: &'a MlpOps, rng: &mut SmallRng, g: &[bf16], w: [&[bf16]; 3]) -> Vec<Self> {
        let s = *ops.gate_up.shape();
        let (h, i) = (s.hidden, s.inter);
        let mut points: Vec<Self> = MLP_MS
            .iter()
            .map(|&m| MlpSweep {
                gpu,
                ops,
                m,
                h: random_bf16(rng, m * h, -3.0, 3.0),
                x: random_bf16(rng, m * i, -3.0, 3.0),
                residual: random_bf16(rng, m * h, -3.0, 3.0),
                rows: sample_rows(m),
                want_gate_up: Vec::new(),
                want_proj: Vec::new(),
            })
            .collect();
        let stack = |part: fn(&Self) -> &[bf16], width: usize| -> Vec<bf16> {
            let mut v = Vec::new();
            for p in &points {
                for &r in &p.rows {
                    v.extend_from_slice(&part(p)[r * width..(r + 1) * width]);
                }
            }
            v
        };
        let (hs, xs, rs) = (stack(|p| &p.h, h), stack(|p| &p.x, i), stack(|p| &p.residual, h));
        let all: Vec<usize> = (0..hs.len() / h).collect();
        let want_gate_up = reference::gate_up_rows(&hs, g, w[0], w[1], h, i, s.eps, &all);
        let want_proj = reference::proj_residual_rows(&xs, w[2], &rs, i, h, &all);
        let (mut gu, mut pr) = (want_gate_up.as_slice(), want_proj.as_slice());
        for p in &mut points {
            let n = p.rows.len();
            (p.want_gate_up, p.want_proj) = (gu[..n * i].to_vec(), pr[..n * h].to_vec());
            (gu, pr) = (&gu[n * i..], &pr[n * h..]);
        }
        points
    }

    /// The cases that apply at this M.
    fn cases(&self) -> Vec<MlpCase<'a>> {
        let mut cases: Vec<MlpCase<'a>> = Vec::new();
        if self.m <= DECODE_MAX_M {
            let decode: [MlpCase<'a>; 3] = [
                ("gate-up fused-decode", |s| s.gate_up(Route::FusedDecode)),
                ("proj fused-decode", |s| s.proj(Route::FusedDecode, false)),
                ("proj fused-decode (out)", |s| s.proj(Route::FusedDecode, true)),
            ];
            cases.extend(decode);
        }
        if MLP_FULL_MS.contains(&self.m) {
            let rest: [MlpCase<'a>; 9] = [
                ("gate-up norm+cublas", |s| s.gate_up(Route::NormCublas)),
                ("gate-up auto", |s| s.gate_up(Route::Auto)),
                ("gate-up baseline cublas", |s| s.gate_up_baseline(Baseline::NormCublas)),
                ("gate-up baseline nanofuse", |s| s.gate_up_baseline(Baseline::NormNanofuse)),
                ("proj cublas", |s| s.proj(Route::NormCublas, false)),
                ("proj cublas (out)", |s| s.proj(Route::NormCublas, true)),
                ("proj auto", |s| s.proj(Route::Auto, false)),
                ("down baseline cublas", |s| s.down_baseline(Baseline::NormCublas)),
                ("down baseline nanofuse", |s| s.down_baseline(Baseline::NormNanofuse)),
            ];
            cases.extend(rest);
            if self.ops.gate_up.has_wgmma() {
                cases.push(("gate-up fused-wgmma", |s| s.gate_up(Route::FusedWgmma)));
            }
            if self.ops.proj.has_wgmma() {
                cases.push(("proj fused-wgmma", |s| s.proj(Route::FusedWgmma, false)));
                cases.push(("proj fused-wgmma (out)", |s| s.proj(Route::FusedWgmma, true)));
            }
        }
        cases
    }

    fn shape(&self) -> MlpShape {
        *self.ops.gate_up.shape()
    }

    /// Checks an `a [m, I]` against the gate/up reference.
    fn check_gate_up(&self, a: &[bf16]) -> CaseResult {
        let want = &self.want_gate_up;
        let atol = GATE_UP_ATOL_RMS * rms(want);
        check(a, self.shape().inter, &self.rows, want, atol, GATE_UP_RTOL, GATE_UP_MAX_REL_FROBENIUS)
    }

    /// Checks an `out [m, H]` against the projection's reference.
    fn check_proj(&self, out: &[bf16]) -> CaseResult {
        let want = &self.want_proj;
        check(out, self.shape().hidden, &self.rows, want, ELEMENT_TOL * rms(want), ELEMENT_TOL, MAX_REL_FROBENIUS)
    }

    fn gate_up(&self, route: Route) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let dh = gpu.upload(&self.h)?;
        let mut a = poisoned(gpu, m * s.inter)?;
        self.ops.gate_up.forward_into_with(route, &dh, m, &mut a)?;
        self.check_gate_up(&gpu.download(&a)?)
    }

    fn gate_up_baseline(&self, which: Baseline) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let dh = gpu.upload(&self.h)?;
        let mut xn = poisoned(gpu, m * s.hidden)?;
        let mut y = poisoned(gpu, m * 2 * s.inter)?;
        let mut a = poisoned(gpu, m * s.inter)?;
        self.ops.base.gate_up_into(which, &dh, m, &mut xn, &mut y, &mut a)?;
        self.check_gate_up(&gpu.download(&a)?)
    }

    /// The projection in place (h holds the residual) or out of place (out poisoned; the
    /// residual must be left as it was).
    fn proj(&self, route: Route, out_of_place: bool) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let dx = gpu.upload(&self.x)?;
        let mut dres = gpu.upload(&self.residual)?;
        let got = if out_of_place {
            let mut out = poisoned(gpu, m * s.hidden)?;
            self.ops.proj.forward_out_of_place(route, &dx, m, &dres, &mut out)?;
            let res = gpu.download(&dres)?;
            if let Some(j) = res.iter().zip(&self.residual).position(|(a, b)| a.to_bits() != b.to_bits()) {
                return Err(CaseError::Mismatch(format!("the residual was written, first at {j}")));
            }
            gpu.download(&out)?
        } else {
            self.ops.proj.forward_into_with(route, &dx, m, &mut dres)?;
            gpu.download(&dres)?
        };
        self.check_proj(&got)
    }

    fn down_baseline(&self, which: Baseline) -> CaseResult {
        let (s, m, gpu) = (self.shape(), self.m, self.gpu);
        let dx = gpu.upload(&self.x)?;
        let mut y = poisoned(gpu, m * s.hidden)?;
        let mut dh = gpu.upload(&self.residual)?;
        self.ops.base.down_into(which, &dx, m, &mut y, &mut dh)?;
        self.check_proj(&gpu.download(&dh)?)
    }
}

// ---------------------------------------------------------------------------------------
// The decode engine's kernels

/// The decode engine's kernels, each once or a few times, against the CPU references.
fn engine_sweep(gpu: &Arc<Gpu>, tally: &mut Tally, rng: &mut SmallRng) {
    println!("== decode engine: argmax, step_begin, qk_norm_rope, attention_decode, LM-head argmax");
    for n in [1usize, 9, 2049, 49157] {
        let logits = random_bf16(rng, n, -4.0, 4.0);
        tally.record(&format!("argmax n={n:<6}"), engine_argmax(gpu, &logits));
        if tally.driver_error {
            return;
        }
    }
    for rows in [1, 3] {
        tally.record(&format!("step_begin prompt + overflow rows={rows}"), engine_step(gpu, rng, rows));
    }
    for (nh, nkv, hd, norm, rows) in [(9, 3, 64, true, 1), (16, 8, 128, false, 1), (16, 8, 128, true, 5)] {
        let name = format!("qk_norm_rope ({nh},{nkv},{hd}) norm={norm} rows={rows}");
        tally.record(&name, engine_rope(gpu, rng, nh, nkv, hd, norm, rows));
        if tally.driver_error {
            return;
        }
    }
    let cases = [
        (9, 3, 64, 1, 1),
        (9, 3, 64, 33, 1),
        (9, 3, 64, 1000, 1),
        (16, 8, 128, 100, 1),
        (8, 8, 64, 257, 1),
        (16, 8, 128, 40, 40),
        (9, 3, 64, 300, 17),
    ];
    for (nh, nkv, hd, len, rows) in cases {
        let name = format!("attention ({nh},{nkv},{hd}) len={len} rows={rows}");
        tally.record(&name, engine_attention(gpu, rng, nh, nkv, hd, len, rows));
        if tally.driver_error {
            return;
        }
    }
    for (nh, nkv, hd, len, norm) in [(16, 8, 128, 100, true), (9, 3, 64, 2072, false)] {
        let name = format!("attention_rope ({nh},{nkv},{hd}) len={len} norm={norm}");
        tally.record(&name, engine_attention_rope(gpu, rng, nh, nkv, hd, len, norm));
        if tally.driver_error {
            return;
        }
    }
    let (hidden, vocab) = (576, 1000);
    let g = random_bf16(rng, hidden, 0.5, 1.5);
    let w = mlp_weights(rng, vocab, hidden);
    match nanofuse::FusedRmsNormArgmax::new(gpu, hidden, vocab, EPS, &g, &w) {
        Ok(op) => {
            for m in [1usize, 3, 9, 16] {
                tally.record(
                    &format!("lm-head argmax H={hidden} V={vocab} M={m}"),
                    engine_lm_head(gpu, rng, &op, &g, &w, m),
                );
                if tally.driver_error {
                    return;
                }
            }
        }
        Err(e) => tally.record("lm-head argmax setup", Err(e.into())),
    }
}

fn engine_argmax(gpu: &Gpu, logits: &[bf16]) -> CaseResult {
    let d = gpu.upload(logits)?;
    let mut slot = gpu.alloc_zeros::<u64>(1)?;
    nanofuse::argmax(gpu, &d, logits.len(), &mut slot)?;
    let got = nanofuse::argmax_token(gpu.download(&slot)?[0]) as usize;
    let f: Vec<f32> = logits.iter().map(|v| v.to_f32()).collect();
    let want = reference::argmax_index(&f);
    if Some(got) == want {
        Ok(format!("index {got}"))
    } else {
        Err(CaseError::Mismatch(format!("got {got}, want {want:?}")))
    }
}

/// `rows` prompt tokens embedded at once, then a chunk that runs past the cache.
fn engine_step(gpu: &Gpu, rng: &mut SmallRng, rows: usize) -> CaseResult {
    use nanofuse::step;
    let (vocab, hidden, max_seq) = (40usize, 264usize, 4usize);
    let table = random_bf16(rng, vocab * hidden, -1.0, 1.0);
    let embed = gpu.upload(&table)?;
    let ids = [5u32, 6, 7, 8];
    let prompt = gpu.upload(&ids)?;
    let mut st = [0u32; step::LEN];
    st[step::POS] = u32::MAX;
    st[step::PROMPT_LEN] = 4;
    let mut state = gpu.upload(&st)?;
    let mut slot = gpu.alloc_zeros::<u64>(1)?;
    let mut tokens = gpu.alloc_zeros::<u32>(max_seq + 4)?;
    let mut h = poisoned(gpu, rows * hidden)?;
    let mut view = tokens.slice_mut(0..max_seq);
    nanofuse::step_begin(gpu, &embed, vocab, hidden, rows, &prompt, &mut state, &mut slot, &mut view, &mut h)?;
    let got = gpu.download(&h)?;
    for (r, &id) in ids[..rows].iter().enumerate() {
        let want = &table[id as usize * hidden..(id as usize + 1) * hidden];
        if got[r * hidden..(r + 1) * hidden].iter().zip(want).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(CaseError::Mismatch(format!("h row {r} is not embed[{id}]")));
        }
    }
    let s = gpu.download(&state)?;
    if s[step::POS] != rows as u32 - 1 || s[step::FLAGS] != 0 {
        return Err(CaseError::Mismatch(format!("state after {rows} rows: {s:?}")));
    }
    // The chunk's last row lands at max_seq: flagged, nothing written past the cache.
    st[step::POS] = (max_seq - rows) as u32;
    let mut state = gpu.upload(&st)?;
    let mut view = tokens.slice_mut(0..max_seq);
    nanofuse::step_begin(gpu, &embed, vocab, hidden, rows, &prompt, &mut state, &mut slot, &mut view, &mut h)?;
    let (s, t) = (gpu.download(&state)?, gpu.download(&tokens)?);
    if s[step::FLAGS] & step::FLAG_OVERFLOW == 0 || t[max_seq..].iter().any(|&x| x != 0) {
        return Err(CaseError::Mismatch(format!("overflow: flags {}, tokens {t:?}", s[step::FLAGS])));
    }
    Ok("prompt tokens embedded, overflow flagged".into())
}

/// `rows` tokens ending at a random position: each row's q against the reference, and the
/// k and v cache rows it wrote.
fn engine_rope(gpu: &Gpu, rng: &mut SmallRng, nh: usize, nkv: usize, hd: usize, norm: bool, rows: usize) -> CaseResult {
    use nanofuse::{AttnShape, QkNorm, step};
    let max_seq = 40;
    let shape = AttnShape::new(nh, nkv, hd, max_seq);
    let last = rand::RngExt::random_range(rng, rows - 1..max_seq);
    let n = shape.qkv_len();
    let qkv = random_bf16(rng, rows * n, -3.0, 3.0);
    let w = random_bf16(rng, hd, 0.5, 1.5);
    let table = reference::rope_table(max_seq, hd, 10000.0);
    let mut qd = gpu.upload(&qkv)?;
    let wd = gpu.upload(&w)?;
    let rope = gpu.upload(&table)?;
    let mut st = [0u32; step::LEN];
    st[step::POS] = last as u32;
    let mut state = gpu.upload(&st)?;
    let mut kc = poisoned(gpu, shape.cache_len())?;
    let mut vc = poisoned(gpu, shape.cache_len())?;
    let qk = norm.then_some(QkNorm { q: &wd, k: &wd, eps: EPS });
    nanofuse::qk_norm_rope(gpu, &shape, rows, &mut qd, qk, &rope, &mut state, &mut kc, &mut vc)?;
    let (got, kc, vc) = (gpu.download(&qd)?, gpu.download(&kc)?, gpu.download(&vc)?);
    let (qn, kvn) = (shape.q_len(), shape.kv_len());
    let mut worst = None;
    for r in 0..rows {
        let pos = last + 1 + r - rows;
        let row = &table[pos * hd..(pos + 1) * hd];
        let x = &qkv[r * n..(r + 1) * n];
        let bad = || CaseError::Mismatch("reference: bad lengths".into());
        let want_q =
            reference::qk_norm_rope_rows(&x[..qn], hd, norm.then_some((w.as_slice(), EPS)), row).ok_or_else(bad)?;
        let want_k = reference::qk_norm_rope_rows(&x[qn..qn + kvn], hd, norm.then_some((w.as_slice(), EPS)), row)
            .ok_or_else(bad)?;
        let at = |h: usize| (h * max_seq + pos) * hd;
        let got_k: Vec<bf16> = (0..nkv).flat_map(|h| kc[at(h)..at(h) + hd].iter().copied()).collect();
        let got_v: Vec<bf16> = (0..nkv).flat_map(|h| vc[at(h)..at(h) + hd].iter().copied()).collect();
        if got_v.iter().zip(&x[qn + kvn..]).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(CaseError::Mismatch(format!("row {r}: v cache is not v")));
        }
        for (g, want) in [(&got[r * n..r * n + qn], want_q), (&got_k[..], want_k)] {
            let c = compare(g, &want, 1e-5 * rms(&want), 2f64.powi(-7));
            if !c.passes(4e-3) {
                return Err(CaseError::Mismatch(format!("row {r}: {c}")));
            }
            worst = Some(c);
        }
    }
    Ok(worst.map(|c| c.to_string()).unwrap_or_default())
}

/// `rows` query positions ending at `len − 1` (causal: row r sees `len − rows + 1 + r`
/// positions) against the reference, q read from a packed qkv.
fn engine_attention(
    gpu: &Arc<Gpu>,
    rng: &mut SmallRng,
    nh: usize,
    nkv: usize,
    hd: usize,
    len: usize,
    rows: usize,
) -> CaseResult {
    use nanofuse::{AttnScratch, AttnShape, step};
    let max_seq = len + 3;
    let shape = AttnShape::new(nh, nkv, hd, max_seq);
    let (n, qn) = (shape.qkv_len(), shape.q_len());
    let qkv = random_bf16(rng, rows * n, -3.0, 3.0);
    let k = random_bf16(rng, shape.cache_len(), -1.0, 1.0);
    let v = random_bf16(rng, shape.cache_len(), -1.0, 1.0);
    let (qd, kd, vd) = (gpu.upload(&qkv)?, gpu.upload(&k)?, gpu.upload(&v)?);
    let mut st = [0u32; step::LEN];
    st[step::POS] = len as u32 - 1;
    let state = gpu.upload(&st)?;
    let mut scratch = AttnScratch::with_rows(gpu, &shape, rows)?;
    let mut out = poisoned(gpu, rows * qn)?;
    nanofuse::attention_decode(gpu, &shape, rows, &qd, &kd, &vd, &state, &mut scratch, &mut out)?;
    let got = gpu.download(&out)?;
    let mut want = Vec::with_capacity(rows * qn);
    for r in 0..rows {
        let q = &qkv[r * n..r * n + qn];
        let row_len = len + 1 + r - rows;
        want.extend(
            reference::attention_decode_rows(q, &k, &v, nh, nkv, hd, max_seq, row_len)
                .ok_or_else(|| CaseError::Mismatch("reference: bad lengths".into()))?,
        );
    }
    let c = compare(&got, &want, 0.02 * rms(&want), 0.02);
    if c.passes(4e-3) { Ok(c.to_string()) } else { Err(CaseError::Mismatch(c.to_string())) }
}

/// The fused decode form: the caches bitwise as `qk_norm_rope` writes them from the same
/// inputs; `out` within the attention bound of the reference for its f32 q.
fn engine_attention_rope(
    gpu: &Arc<Gpu>,
    rng: &mut SmallRng,
    nh: usize,
    nkv: usize,
    hd: usize,
    len: usize,
    norm: bool,
) -> CaseResult {
    use nanofuse::{AttnScratch, AttnShape, QkNorm, step};
    let max_seq = len + 3;
    let shape = AttnShape::new(nh, nkv, hd, max_seq);
    let qkv = random_bf16(rng, shape.qkv_len(), -3.0, 3.0);
    let k = random_bf16(rng, shape.cache_len(), -1.0, 1.0);
    let v = random_bf16(rng, shape.cache_len(), -1.0, 1.0);
    let w = gpu.upload(&random_bf16(rng, hd, 0.5, 1.5))?;
    let rope = gpu.upload(&reference::rope_table(max_seq, hd, 10000.0))?;
    let qk = norm.then_some(QkNorm { q: &w, k: &w, eps: EPS });
    let mut st = [0u32; step::LEN];
    st[step::POS] = len as u32 - 1;
    let mut scratch = AttnScratch::new(gpu, &shape)?;
    let (mut k2, mut v2, mut q2, mut s2) = (gpu.upload(&k)?, gpu.upload(&v)?, gpu.upload(&qkv)?, gpu.upload(&st)?);
    nanofuse::qk_norm_rope(gpu, &shape, 1, &mut q2, qk, &rope, &mut s2, &mut k2, &mut v2)?;
    let (mut k1, mut v1, q1, s1) = (gpu.upload(&k)?, gpu.upload(&v)?, gpu.upload(&qkv)?, gpu.upload(&st)?);
    let mut got = poisoned(gpu, shape.q_len())?;
    nanofuse::attention_decode_rope(gpu, &shape, &q1, qk, &rope, &s1, &mut k1, &mut v1, &mut scratch, &mut got)?;
    let same = |a: Vec<bf16>, b: Vec<bf16>| a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
    if !same(gpu.download(&k1)?, gpu.download(&k2)?) || !same(gpu.download(&v1)?, gpu.download(&v2)?) {
        return Err(CaseError::Mismatch("the caches differ from qk_norm_rope's".into()));
    }
    // Against the reference of the fused form's own q (f32 after RoPE, as it keeps it).
    let row = reference::rope_table(max_seq, hd, 10000.0)[(len - 1) * hd..len * hd].to_vec();
    let wv = gpu.download(&w)?;
    let q = reference::qk_norm_rope_rows(&qkv[..shape.q_len()], hd, norm.then_some((wv.as_slice(), EPS)), &row)
        .ok_or_else(|| CaseError::Mismatch("reference: bad lengths".into()))?;
    let (kc, vc) = (gpu.download(&k2)?, gpu.download(&v2)?);
    let want = reference::attention_decode_rows_f32q(&q, &kc, &vc, nh, nkv, hd, max_seq, len)
        .ok_or_else(|| CaseError::Mismatch("reference: bad lengths".into()))?;
    let c = compare(&gpu.download(&got)?, &want, 0.02 * rms(&want), 0.02);
    if c.passes(4e-3) { Ok(c.to_string()) } else { Err(CaseError::Mismatch(c.to_string())) }
}

fn engine_lm_head(
    gpu: &Gpu,
    rng: &mut SmallRng,
    op: &nanofuse::FusedRmsNormArgmax,
    g: &[bf16],
    w: &[bf16],
    m: usize,
) -> CaseResult {
    let (hidden, vocab) = op.dims();
    let h = random_bf16(rng, m * hidden, -3.0, 3.0);
    let hd = gpu.upload(&h)?;
    let mut slots = gpu.alloc_zeros::<u64>(m)?;
    op.forward_into(&hd, m, &mut slots)?;
    let got = gpu.download(&slots)?;
    let rows: Vec<usize> = (0..m).collect();
    let want = reference::qkv_rows(&h, g, w, hidden, vocab, EPS, &rows);
    for (t, logits) in want.chunks_exact(vocab).enumerate() {
        let chosen = nanofuse::argmax_token(got[t]) as usize;
        let best = reference::argmax_index(logits).unwrap_or(0);
        let tol = 0.02 * rms(logits) + 2f64.powi(-7) * logits[best].abs() as f64;
        if chosen >= vocab || (logits[best] - logits[chosen]) as f64 > tol {
            return Err(CaseError::Mismatch(format!("token {t}: chose {chosen}, reference max at {best}")));
        }
    }
    Ok(format!("{m} tokens within tolerance"))
}
