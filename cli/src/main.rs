//! `nanofuse`: benchmarks of the fused kernels (RMSNorm + QKV; the MLP ops) against the
//! unfused path.
//!
//! `nanofuse bench` is the main job (see README.md; `--op` picks the ops); `nanofuse tune`
//! sweeps launch shapes; `nanofuse info` prints the device and build; `generate`,
//! `decode-bench` and `export-model` drive the decode engine (`engine_cli`).

mod engine_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nanofuse::plan::{self, DECODE_MAX_M, Tile};
use nanofuse::{AUTO_PAIRS, Gpu, Tuning, WGMMA_TOKEN_TILE as BM, WgmmaShape};
use nanofuse_cli::bench::{BENCH_MS, MLP_MS, MODELS, Measurement, Model, Op, Variant, Workload, min_bytes};
use nanofuse_cli::timing::copy_bandwidth_gbs;
use nanofuse_cli::{bench, chart};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "nanofuse",
    version,
    about = "Fused LLM-inference kernels (RMSNorm + QKV, the MLP ops) and a decode engine: benchmarks, generation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time the fused ops, the unfused baselines and the public API over model shapes and
    /// batch sizes; print a table per op, optionally write JSON and an SVG chart.
    Bench(BenchArgs),
    /// Sweep launch shapes (decode k_split, tiled tile size) per shape and M.
    Tune(TuneArgs),
    /// Time the standalone RMSNorm kernel in both output orders over rows x hidden shapes
    /// (listed below), cold data.
    Rmsnorm,
    /// Print the embedded kernels' architecture and the device (without a CUDA driver or
    /// device: the build, then why there is no device; exit 0).
    Info,
    /// Generate text with the decode engine from a HF directory, a GGUF file or
    /// `random:<preset>`, printing it as it is produced, then prompt and decode tok/s.
    Generate(engine_cli::GenerateArgs),
    /// Time the decode engine end to end (µs per token, tok/s, share of the weight-read
    /// floor), fused against unfused in one run; optionally a per-stage breakdown.
    DecodeBench(engine_cli::DecodeBenchArgs),
    /// Write a model (random weights of a preset, or a GGUF after dequantization) as a
    /// Hugging Face directory, for scripts/compare_engine.py.
    ExportModel(engine_cli::ExportArgs),
}

/// The ops `bench --op` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OpArg {
    /// RMSNorm + QKV projection (FusedRmsNormQkv)
    Qkv,
    /// gate-up, down and oproj
    Mlp,
    /// RMSNorm + gate/up projection + SiLU·mul (FusedRmsNormGateUp)
    #[value(alias = "gate_up")]
    GateUp,
    /// the MLP's down projection + residual (ProjResidual)
    Down,
    /// the attention output projection + residual (ProjResidual)
    Oproj,
}

impl OpArg {
    fn ops(self) -> &'static [Op] {
        match self {
            OpArg::Qkv => &[Op::Qkv],
            OpArg::Mlp => &[Op::GateUp, Op::Down, Op::Oproj],
            OpArg::GateUp => &[Op::GateUp],
            OpArg::Down => &[Op::Down],
            OpArg::Oproj => &[Op::Oproj],
        }
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Ops to run (comma-separated), each in its own table.
    #[arg(long, value_delimiter = ',', default_value = "qkv")]
    op: Vec<OpArg>,
    /// Shapes to run (comma-separated names, case-insensitive; listed below), default all four.
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Batch sizes (tokens), default 1,16,128,2048 for qkv and 1,8,16,128 for the MLP ops.
    #[arg(long, value_delimiter = ',')]
    m: Vec<usize>,
    /// Fewer replays (20 instead of 100) for a fast look.
    #[arg(long)]
    quick: bool,
    /// Write all measurements as JSON to this file (checked for writing before the run).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart of time vs M per op and shape, with the bandwidth floor (checked
    /// for writing before the run).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Force the fused ops' decode launch shape `WARP_SPLIT,K_SPLITS,RING` (RING 0 or 1),
    /// for a sweep of the MLP ops (`nanofuse tune` sweeps the QKV op's).
    #[arg(long, value_name = "WARP_SPLIT,K_SPLITS,RING", value_parser = triple::<u32>)]
    decode: Option<[u32; 3]>,
}

#[derive(Args)]
struct TuneArgs {
    /// Shapes to run (comma-separated names, case-insensitive; listed below), default all
    /// four, or none when only --custom is given.
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// An extra shape `K,NQ,NKV` (e.g. a tiny one, to measure per-op overhead).
    #[arg(long, value_name = "K,NQ,NKV", value_parser = triple::<usize>)]
    custom: Option<[usize; 3]>,
    /// Batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    m: Vec<usize>,
    /// Replays per measurement.
    #[arg(long, default_value_t = 30)]
    replays: usize,
    /// K splits to sweep for the decode kernel (empty: planner choice only).
    #[arg(long, value_delimiter = ',')]
    k_splits: Vec<u32>,
    /// Also sweep each decode shape with the `*_early` entries forced on and off.
    #[arg(long)]
    early: bool,
    /// Also sweep each decode shape with the trigger before the W loads forced on and off.
    #[arg(long)]
    trigger: bool,
    /// Also sweep each decode shape with the x ring forced on and off.
    #[arg(long)]
    ring: bool,
    /// Time only the variants whose label contains one of these texts (comma-separated;
    /// e.g. to profile one kernel).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() -> ExitCode {
    let cmd = Cli::command()
        .mut_subcommand("bench", |c| c.after_help(shapes_help()))
        .mut_subcommand("tune", |c| c.after_help(shapes_help()))
        .mut_subcommand("rmsnorm", |c| c.after_help(rmsnorm_help()));
    let cli = Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit());
    let result = match cli.cmd {
        Cmd::Bench(a) => bench(a),
        Cmd::Tune(a) => tune(a),
        Cmd::Rmsnorm => rmsnorm(),
        Cmd::Info => info(),
        Cmd::Generate(a) => engine_cli::generate(a),
        Cmd::DecodeBench(a) => engine_cli::decode_bench(a),
        Cmd::ExportModel(a) => engine_cli::export_model(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nanofuse: {e}");
            ExitCode::FAILURE
        }
    }
}

type AppResult<T> = Result<T, Box<dyn std::error::Error>>;

fn open() -> AppResult<Arc<Gpu>> {
    nanofuse::open(0).map_err(|e| format!("cannot open a GPU: {e}").into())
}

/// Parses `A,B,C` (a `--custom` shape, a `--decode` launch shape).
fn triple<T: std::str::FromStr>(s: &str) -> Result<[T; 3], String>
where
    T::Err: std::fmt::Display,
{
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b, c] = parts[..] else {
        return Err(format!("expected three comma-separated numbers, got {} value(s)", parts.len()));
    };
    let parse = |v: &str| v.parse::<T>().map_err(|e| format!("{v:?}: {e}"));
    Ok([parse(a)?, parse(b)?, parse(c)?])
}

/// Checks before a run that `path` (the value of `flag`) can be written, so that a bad path
/// fails at once rather than after the sweep: opens it for writing without truncating it,
/// and removes it again if this created it.
fn check_writable(flag: &str, path: &std::path::Path) -> AppResult<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("{flag} {}: cannot write there: {e}", path.display()))?;
    if !existed {
        std::fs::remove_file(path).ok();
    }
    Ok(())
}

/// `nanofuse info`: the build first (known without a GPU), then the device, or why there is
/// none (no driver or no device is not a failure here; any other error is).
fn info() -> AppResult<()> {
    println!("nanofuse {}", env!("CARGO_PKG_VERSION"));
    println!("kernels: PTX for {} ({} lines)", nanofuse::KERNELS_ARCH, nanofuse::KERNELS_PTX.lines().count());
    match nanofuse::open(0) {
        Ok(gpu) => {
            print_device(&gpu);
            Ok(())
        }
        Err(e @ (nanofuse::Error::NoDriver | nanofuse::Error::NoDevice { .. })) => {
            println!("device: none ({e})");
            Ok(())
        }
        Err(e) => Err(format!("cannot open a GPU: {e}").into()),
    }
}

/// The RMSNorm shapes `nanofuse rmsnorm` times, `(rows, hidden)`.
const RMSNORM_SHAPES: [(usize, usize); 8] =
    [(1, 1024), (1, 4096), (128, 1024), (128, 4096), (128, 8192), (2048, 1024), (2048, 4096), (2048, 8192)];

/// `rmsnorm --help`'s list of the shapes it runs.
fn rmsnorm_help() -> String {
    let shapes: Vec<String> = RMSNORM_SHAPES.iter().map(|(rows, k)| format!("{rows} x {k}")).collect();
    format!("Shapes (rows x hidden): {}", shapes.join(", "))
}

/// `bench --help`'s list of the shapes and each op's weight there.
fn shapes_help() -> String {
    let mut text = String::from("Shapes (--shapes) and each op's weight [out, in] in them:\n");
    text += &format!("  {:<13}", "shape");
    for op in Op::ALL {
        text += &format!(" {:>13}", op.label().replace('_', "-"));
    }
    for model in &MODELS {
        text += &format!("\n  {:<13}", model.name);
        for op in Op::ALL {
            let (k, n) = op.problem(model).weight_dims();
            text += &format!(" {:>13}", format!("{n} x {k}"));
        }
    }
    text
}

fn select_models(names: &[String]) -> AppResult<Vec<Model>> {
    if names.is_empty() {
        return Ok(MODELS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(n)).copied().ok_or_else(|| {
                let known: Vec<_> = MODELS.iter().map(|m| m.name).collect();
                format!("unknown shape {n:?}; known: {}", known.join(", ")).into()
            })
        })
        .collect()
}

fn check_ms(ms: &[usize]) -> AppResult<()> {
    if let Some(bad) = ms.iter().find(|&&m| m == 0 || m > 65_536) {
        return Err(format!("--m {bad}: batch sizes must be in 1..=65536").into());
    }
    Ok(())
}

fn print_header(gpu: &Gpu, copy_gbs: Option<f64>) {
    print_device(gpu);
    println!("kernels: PTX for {}", nanofuse::KERNELS_ARCH);
    if let Some(bw) = copy_gbs {
        println!("device-to-device copy bandwidth (read + write), measured now: {bw:.0} GB/s");
    }
}

fn print_device(gpu: &Gpu) {
    let i = gpu.info();
    let (maj, min) = i.compute_capability;
    println!(
        "device: {} (sm_{maj}{min}, {} SMs, L2 {} MB, {:.0} GiB), driver {}.{}, SM clock {}",
        i.name,
        i.sm_count,
        i.l2_bytes / 1_000_000,
        i.total_mem as f64 / (1u64 << 30) as f64,
        i.driver_version / 1000,
        (i.driver_version % 1000) / 10,
        i.sm_clock_mhz.map_or("n/a".to_string(), |c| format!("{c} MHz (max)")),
    );
}

#[derive(Serialize)]
struct Report<'a> {
    device: String,
    compute_capability: (i32, i32),
    driver_version: i32,
    sm_count: u32,
    l2_bytes: u64,
    kernels_arch: &'a str,
    unix_time: u64,
    copy_bandwidth_gbs: f64,
    method: &'a str,
    measurements: &'a [Measurement],
}

const METHOD: &str = "each variant captured in one CUDA graph over a ring of distinct weight/input sets \
    totalling more than 4x the L2 cache; time per op = replay time / ring length (CUDA events); median of the replays; \
    the variants of one shape and M are timed interleaved, in 10 rounds of ceil(replays/10) replays each";

/// Rounds over which `bench` interleaves the variants of one shape and M.
const ROUNDS: usize = 10;

/// Largest M at which `tune` times every forced split over K of the warpgroup-MMA route
/// (above it the output tiles fill the SMs, and it times splits 1 and 2 only).
const WGMMA_SPLIT_SWEEP_MAX_M: usize = 512;

fn bench(a: BenchArgs) -> AppResult<()> {
    let models = select_models(&a.shapes)?;
    check_ms(&a.m)?;
    if let Some(path) = &a.json {
        check_writable("--json", path)?;
    }
    if let Some(path) = &a.chart {
        check_writable("--chart", path)?;
    }
    let mut ops: Vec<Op> = Vec::new();
    for op in a.op.iter().flat_map(|o| o.ops()) {
        if !ops.contains(op) {
            ops.push(*op);
        }
    }
    let gpu = open()?;
    let (warmup, replays) = if a.quick { (3, 20) } else { (10, 100) };
    let copy_gbs = copy_bandwidth_gbs(&gpu, 1 << 30, 20)?;
    print_header(&gpu, Some(copy_gbs));
    println!("method: {METHOD}; {replays} replays");

    let ms_of = |op: Op| match (a.m.is_empty(), op) {
        (false, _) => a.m.clone(),
        (true, Op::Qkv) => BENCH_MS.to_vec(),
        (true, _) => MLP_MS.to_vec(),
    };
    let cells: usize = ops.iter().map(|&op| models.len() * ms_of(op).len()).sum();
    let bar = ProgressBar::new(cells as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results: Vec<Measurement> = Vec::new();
    for &op in &ops {
        for model in &models {
            bar.set_message(format!("{} {}: random weights", op.label(), model.name));
            let mut sweep = bench::workload(&gpu, op, *model, a.seed)?;
            if let Some([warp_split, k_splits, ring]) = a.decode {
                let shape =
                    plan::DecodeShape { warp_split, k_splits, early: None, trigger_first: None, ring: Some(ring != 0) };
                sweep.set_decode_shape(Some(shape));
            }
            for m in ms_of(op) {
                sweep.set_m(m)?;
                bar.set_message(format!("{} {} M={m}: capturing and timing, interleaved", op.label(), model.name));
                results.extend(bench::measure(&mut *sweep, warmup, replays, ROUNDS)?);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    if ops.contains(&Op::Qkv) {
        print_table(&results, copy_gbs);
    }
    print_mlp_tables(&results, copy_gbs);

    if let Some(path) = &a.json {
        let i = gpu.info();
        let report = Report {
            device: i.name.clone(),
            compute_capability: i.compute_capability,
            driver_version: i.driver_version,
            sm_count: i.sm_count,
            l2_bytes: i.l2_bytes,
            kernels_arch: nanofuse::KERNELS_ARCH,
            unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            copy_bandwidth_gbs: copy_gbs,
            method: METHOD,
            measurements: &results,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &a.chart {
        chart::write_svg(path, &results, copy_gbs, &gpu.info().name)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(results: &[Measurement], copy_gbs: f64) {
    let results: Vec<Measurement> = results.iter().filter(|r| r.op == Op::Qkv).cloned().collect();
    let get =
        |model: &str, m: usize, v: Variant| results.iter().find(|r| r.model == model && r.m == m && r.variant == v);
    println!();
    println!(
        "{:<13} {:>5} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10} {:>8} {:>8} {:>7} {:>8} {:>9}  api path (packed)",
        "shape",
        "M",
        "fused µs",
        "no-PDL µs",
        "cuBLAS µs",
        "ours µs",
        "api µs",
        "packed µs",
        "speedup",
        "GB/s",
        "% copy",
        "TFLOP/s",
        "floor µs"
    );
    let mut seen = Vec::new();
    for r in results.iter().filter(|r| r.variant == Variant::Fused) {
        if seen.contains(&(r.model.clone(), r.m)) {
            continue;
        }
        seen.push((r.model.clone(), r.m));
        let t = |v| get(&r.model, r.m, v).map_or(f64::NAN, |x| x.median_us);
        let path = |v| get(&r.model, r.m, v).map_or("", |x: &Measurement| x.path.as_str());
        let floor_us = r.bytes as f64 / (copy_gbs * 1e9) * 1e6;
        println!(
            "{:<13} {:>5} {:>9.2} {:>10.2} {:>10.2} {:>10.2} {:>9.2} {:>10.2} {:>7.2}x {:>8.0} {:>6.1}% {:>8.1} {:>9.2}  {} ({})",
            r.model,
            r.m,
            r.median_us,
            t(Variant::FusedNoPdl),
            t(Variant::NormCublas),
            t(Variant::NormNanofuse),
            t(Variant::Api),
            t(Variant::ApiPacked),
            t(Variant::NormCublas) / r.median_us,
            r.gbs,
            100.0 * r.gbs / copy_gbs,
            r.tflops,
            floor_us,
            path(Variant::Api),
            path(Variant::ApiPacked),
        );
    }
    println!("fused: the fused kernel (decode for M <= 16, else tiled), launched with programmatic dependent launch;");
    println!(
        "no-PDL: the same without it; cuBLAS: RMSNorm + cuBLAS GEMM (PyTorch's path); ours: RMSNorm + nanofuse GEMM;"
    );
    println!("api: FusedRmsNormQkv::forward_into (separate q, k, v; Route::Auto); packed: forward_packed_into");
    println!("(one [M, N] output like cuBLAS's; Route::Auto). speedup = cuBLAS / fused;");
    println!("GB/s and TFLOP/s of the fused kernel (minimum bytes: W, g, x, outputs);");
    println!("floor = minimum bytes / copy bandwidth.");
}

/// A time in µs in a `width`-wide column, `-` where the variant was not run.
fn us_cell(t: Option<f64>, width: usize) -> String {
    t.map_or_else(|| format!("{:>width$}", "-"), |t| format!("{t:>width$.2}"))
}

/// One table per MLP op in `results`, then what the columns mean.
fn print_mlp_tables(results: &[Measurement], copy_gbs: f64) {
    let mlp_ops = [Op::GateUp, Op::Down, Op::Oproj];
    let printed: Vec<Op> = mlp_ops.into_iter().filter(|&op| results.iter().any(|r| r.op == op)).collect();
    for &op in &printed {
        let rows: Vec<&Measurement> = results.iter().filter(|r| r.op == op).collect();
        print_mlp_table(op, &rows, copy_gbs);
    }
    if printed.is_empty() {
        return;
    }
    println!("fused: the fused decode kernel (M <= 16; none above); cuBLAS (a): RMSNorm + cuBLAS GEMM + silu_mul");
    println!("(gate/up), cuBLAS GEMM + residual_add (projections), what PyTorch runs; ours (b): the same with");
    println!("nanofuse's GEMM; api: forward_into (Route::Auto: the fused kernel for M <= 16, above it RMSNorm +");
    println!("cuBLAS + silu_mul, or one cuBLAS GEMM with beta = 1). Projections run in place (h += x W^T).");
    println!("speedup = cuBLAS / api; GB/s, % copy and TFLOP/s of api (minimum bytes: gate/up W, h, a;");
    println!("projections W, x, residual, h); floor = minimum bytes / copy bandwidth.");
}

/// The table of one MLP op: per shape and M, fused, (a), (b), api, and the floor.
fn print_mlp_table(op: Op, rows: &[&Measurement], copy_gbs: f64) {
    let get = |r: &Measurement, v: Variant| rows.iter().find(|x| x.model == r.model && x.m == r.m && x.variant == v);
    println!();
    println!("{}: {}", op.label(), op.title());
    println!(
        "{:<13} {:>5} {:>13} {:>9} {:>10} {:>10} {:>9} {:>8} {:>8} {:>7} {:>8} {:>9}  api path",
        "shape",
        "M",
        "W [out, in]",
        "fused µs",
        "cuBLAS µs",
        "ours µs",
        "api µs",
        "speedup",
        "GB/s",
        "% copy",
        "TFLOP/s",
        "floor µs"
    );
    for api in rows.iter().filter(|r| r.variant == Variant::Api) {
        let t = |v| get(api, v).map(|x| x.median_us);
        let dims = format!("{} x {}", api.out_features.unwrap_or(0), api.in_features.unwrap_or(0));
        println!(
            "{:<13} {:>5} {:>13} {} {} {} {:>9.2} {:>7.2}x {:>8.0} {:>6.1}% {:>8.1} {:>9.2}  {}",
            api.model,
            api.m,
            dims,
            us_cell(t(Variant::Fused), 9),
            us_cell(t(Variant::NormCublas), 10),
            us_cell(t(Variant::NormNanofuse), 10),
            api.median_us,
            t(Variant::NormCublas).unwrap_or(f64::NAN) / api.median_us,
            api.gbs,
            100.0 * api.gbs / copy_gbs,
            api.tflops,
            api.bytes as f64 / (copy_gbs * 1e9) * 1e6,
            api.path,
        );
    }
}

fn tune(a: TuneArgs) -> AppResult<()> {
    let mut models = if a.shapes.is_empty() && a.custom.is_some() { Vec::new() } else { select_models(&a.shapes)? };
    if let Some([k, nq, nkv]) = a.custom {
        let name: &'static str = Box::leak(format!("custom-{k}x{nq}x{nkv}").into_boxed_str());
        let shape = nanofuse::QkvShape::new(k, nq, nkv, 1e-5);
        shape.validate()?;
        // The MLP's size is not used by `tune` (QKV only).
        models.push(Model { name, shape, inter: 4 * k });
    }
    let ms = a.m.clone();
    check_ms(&ms)?;
    let gpu = open()?;
    let copy_gbs = copy_bandwidth_gbs(&gpu, 1 << 30, 20)?;
    print_header(&gpu, Some(copy_gbs));
    if let Some(why) = gpu.wgmma_unavailable() {
        println!("warpgroup-MMA rows not run: {why}");
    }
    println!("{:<13} {:>5} {:<34} {:>9} {:>8} {:>7}", "shape", "M", "variant", "µs", "GB/s", "% copy");
    let info = gpu.info().clone();
    for model in &models {
        let mut wl = Workload::new(&gpu, *model, 7)?;
        let s = model.shape;
        for &m in &ms {
            wl.set_m(m)?;
            let row = |label: String, wl: &mut Workload, v: Variant| -> AppResult<()> {
                if !a.only.is_empty() && !a.only.iter().any(|o| label.contains(o.as_str())) {
                    return Ok(());
                }
                let st = wl.time(v, 5, a.replays)?;
                let gbs = min_bytes(&s, m) as f64 / (st.median_us * 1e-6) / 1e9;
                println!(
                    "{:<13} {:>5} {:<34} {:>9.2} {:>8.0} {:>6.1}%",
                    model.name,
                    m,
                    label,
                    st.median_us,
                    gbs,
                    100.0 * gbs / copy_gbs
                );
                Ok(())
            };
            wl.set_tuning(Tuning::default());
            row("unfused-cublas".into(), &mut wl, Variant::NormCublas)?;
            row("api-packed (auto)".into(), &mut wl, Variant::ApiPacked)?;
            for (label, split) in [("fallback (norm + cublas + split)", true), ("fallback (norm + cublas x3)", false)] {
                wl.set_tuning(Tuning { split: Some(split), ..Tuning::default() });
                row(label.into(), &mut wl, Variant::Fallback)?;
            }
            if m > DECODE_MAX_M {
                for tile in [Tile::Small, Tile::Large] {
                    wl.set_tuning(Tuning { tile: Some(tile), ..Tuning::default() });
                    row(format!("tiled {tile:?}"), &mut wl, Variant::FusedTiled)?;
                }
                wl.set_tuning(Tuning::default());
                if wl.has_wgmma() {
                    row("wgmma packed".into(), &mut wl, Variant::FusedWgmmaPacked)?;
                    row("wgmma q,k,v".into(), &mut wl, Variant::FusedWgmma)?;
                    // Pairs on and off where there are two token tiles or more; forced splits
                    // over K against the launcher's choice.
                    let pairings: &[bool] = if m > BM { &[true, false] } else { &[AUTO_PAIRS] };
                    for &pairs in pairings {
                        let tag =
                            if m > BM { format!(" pairs={}", if pairs { "on" } else { "off" }) } else { String::new() };
                        let shape = |split, ctas| WgmmaShape { split, pairs: Some(pairs), ctas };
                        let force = |split| Tuning { wgmma: shape(split, None), ..Tuning::default() };
                        wl.set_tuning(force(None));
                        row(format!("wgmma packed{tag}"), &mut wl, Variant::FusedWgmmaPacked)?;
                        if !(pairs && m > BM) {
                            // Split 1 with one CTA per output tile, against the walk of at most
                            // one CTA per SM that the launcher takes there.
                            wl.set_tuning(Tuning { wgmma: shape(Some(1), Some(u32::MAX)), ..Tuning::default() });
                            row(format!("wgmma packed split=1 ctas=tiles{tag}"), &mut wl, Variant::FusedWgmmaPacked)?;
                        }
                        // Every split at small M; above it, where the tiles fill a wave, 1 and 2
                        // alone (with pairs, the split's choice only).
                        let most = match (pairs && m > BM, m <= WGMMA_SPLIT_SWEEP_MAX_M) {
                            (false, true) => 8,
                            (true, true) => 4,
                            (false, false) => 2,
                            (true, false) => 0,
                        };
                        for split in [1, 2, 4, 8].into_iter().filter(|&s| s <= most) {
                            wl.set_tuning(force(Some(split)));
                            row(format!("wgmma packed split={split}{tag}"), &mut wl, Variant::FusedWgmmaPacked)?;
                        }
                    }
                    wl.set_tuning(Tuning::default());
                }
                row("unfused-cublas (again)".into(), &mut wl, Variant::NormCublas)?;
                continue;
            }
            wl.set_tuning(Tuning::default());
            let p = plan::decode_plan(m, s.hidden, s.n(), info.sm_count, info.max_smem_per_block, None)?;
            let label =
                format!("plan ws={} ks={} early={} tf={}", p.warp_split, p.k_splits(), p.early, p.trigger_first);
            row(label.clone(), &mut wl, Variant::FusedDecode)?;
            row(format!("{label} (again)"), &mut wl, Variant::FusedDecode)?;
            row(format!("{label} no-pdl"), &mut wl, Variant::FusedNoPdl)?;
            row("unfused-nanofuse".into(), &mut wl, Variant::NormNanofuse)?;
            for warp_split in [1, 2, 4, 8] {
                for k_splits in a.k_splits.iter().copied() {
                    let earlies: &[Option<bool>] = if a.early { &[Some(false), Some(true)] } else { &[None] };
                    let triggers: &[Option<bool>] = if a.trigger { &[Some(false), Some(true)] } else { &[None] };
                    let rings: &[Option<bool>] = if a.ring { &[Some(false), Some(true)] } else { &[None] };
                    let combos = earlies
                        .iter()
                        .flat_map(|e| triggers.iter().flat_map(move |t| rings.iter().map(move |r| (e, t, r))));
                    for (&early, &trigger_first, &ring) in combos {
                        let shape = plan::DecodeShape { warp_split, k_splits, early, trigger_first, ring };
                        let forced =
                            plan::decode_plan(m, s.hidden, s.n(), info.sm_count, info.max_smem_per_block, Some(shape));
                        let Ok(forced) = forced else { continue };
                        wl.set_tuning(Tuning { decode: Some(shape), ..Tuning::default() });
                        let label = format!(
                            "ws={warp_split} ks={k_splits} early={} tf={} ring={}",
                            forced.early, forced.trigger_first, forced.ring
                        );
                        row(label, &mut wl, Variant::FusedDecode)?;
                    }
                }
            }
            wl.set_tuning(Tuning::default());
        }
    }
    Ok(())
}

/// The RMSNorm kernel alone, in both output orders (natural: baseline (a)'s; k-interleaved:
/// the fused op's fallback above the decode range): relative error against the CPU
/// reference and bandwidth over a ring of distinct x/g/y sets larger than 4x L2 (bytes = x
/// and g read, y written); the two orders' graphs are timed interleaved.
fn rmsnorm() -> AppResult<()> {
    use nanofuse::reference;
    use nanofuse_cli::bench::random_bf16;
    use nanofuse_cli::timing::{RingGraph, ring_len};
    use rand::SeedableRng;

    let gpu = open()?;
    let copy_gbs = copy_bandwidth_gbs(&gpu, 1 << 30, 20)?;
    print_header(&gpu, Some(copy_gbs));
    println!(
        "{:>6} {:>6} {:>6} {:>12} {:>9} {:>8} {:>7} {:>12} {:>9} {:>8}",
        "rows", "hidden", "ring", "rel. error", "µs", "GB/s", "% copy", "il. error", "il. µs", "il. GB/s"
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    for (rows, k) in RMSNORM_SHAPES {
        let bytes = 2 * (2 * rows * k + k) as u64;
        let ring = ring_len(gpu.info().l2_bytes, bytes, 4);
        let mut sets = Vec::with_capacity(ring);
        let (mut x0, mut g0) = (Vec::new(), Vec::new());
        for i in 0..ring {
            let x = random_bf16(&mut rng, rows * k, -2.0, 2.0);
            let g = random_bf16(&mut rng, k, 0.5, 1.5);
            if i == 0 {
                (x0, g0) = (x.clone(), g.clone());
            }
            let y = [gpu.alloc_zeros::<nanofuse::bf16>(rows * k)?, gpu.alloc_zeros::<nanofuse::bf16>(rows * k)?];
            sets.push((gpu.upload(&x)?, gpu.upload(&g)?, y));
        }
        let want = reference::rms_norm_f32(&x0, &g0, rows, k, 1e-6);
        let mut errors = [0.0; 2];
        let mut graphs = Vec::with_capacity(2);
        for (order, interleave) in [false, true].into_iter().enumerate() {
            let run = |gpu: &nanofuse::Gpu, set: &mut (_, _, [_; 2])| {
                let (x, g, y) = set;
                let y = &mut y[order];
                if interleave {
                    nanofuse::ops::rms_norm_interleaved(gpu, x, g, y, rows, k, 1e-6)
                } else {
                    nanofuse::ops::rms_norm(gpu, x, g, y, rows, k, 1e-6)
                }
            };
            gpu.fill_nan(&mut sets[0].2[order])?;
            run(&gpu, &mut sets[0])?;
            let got = gpu.download(&sets[0].2[order])?;
            let want = if interleave { reference::interleave_k(&want, k) } else { want.clone() };
            let cmp = reference::compare(&got, &want, 1e-6, 1.0 / 128.0);
            if !cmp.passes(2e-3) {
                return Err(format!("rms_norm rows {rows} hidden {k} interleaved {interleave}: {cmp}").into());
            }
            errors[order] = cmp.rel_frobenius;
            graphs.push(RingGraph::capture(&gpu, ring, |i| run(&gpu, &mut sets[i]))?);
        }
        let st = RingGraph::time_interleaved(&graphs, 10, 100, 10)?;
        let gbs = |us: f64| bytes as f64 / (us * 1e-6) / 1e9;
        println!(
            "{rows:>6} {k:>6} {ring:>6} {:>12.3e} {:>9.2} {:>8.0} {:>6.1}% {:>12.3e} {:>9.2} {:>8.0}",
            errors[0],
            st[0].median_us,
            gbs(st[0].median_us),
            100.0 * gbs(st[0].median_us) / copy_gbs,
            errors[1],
            st[1].median_us,
            gbs(st[1].median_us),
        );
    }
    Ok(())
}
