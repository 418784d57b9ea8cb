//! `nanofuse generate` and `nanofuse decode-bench`: the decode engine from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use nanofuse::Gpu;
use nanofuse::cudarc::driver::sys::CUevent_flags;
use nanofuse_cli::timing::copy_bandwidth_gbs;
use nanofuse_engine::{DEFAULT_PREFILL_CHUNK, Engine, EngineOptions, Mode, Model, Sampling, load_model};
use serde::Serialize;

type AppResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Args)]
pub struct GenerateArgs {
    /// A Hugging Face directory (config.json, *.safetensors, tokenizer.json), a GGUF file,
    /// or `random:<preset>` (qwen3-0.6b, llama-3.2-1b, llama-3-8b, smollm2-135m).
    #[arg(long)]
    model: String,
    /// The prompt text (a random model has no tokenizer: give `--prompt-ids`).
    #[arg(long, default_value = "The capital of France is")]
    prompt: String,
    /// The prompt as token ids (comma-separated), instead of text.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Vec<u32>,
    /// Tokens to generate at most (stops earlier at an EOS token).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling's top-p (with --temperature).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler (and of random weights).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the unfused engine (cuBLAS + separate kernels, no PDL) instead of the fused one.
    #[arg(long)]
    unfused: bool,
    /// KV-cache positions (default: prompt + max tokens).
    #[arg(long)]
    max_seq: Option<usize>,
    /// Most prompt tokens per prefill batch (1: the prompt one position at a time).
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Generate all --max-tokens even past an EOS token.
    #[arg(long)]
    ignore_eos: bool,
    /// Write the prompt ids and the generated tokens as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Greedy through the logits head instead of the fused argmax head, writing each
    /// generated step's logits (f32, little-endian, `[tokens, vocab]`) to this file.
    #[arg(long)]
    dump_logits: Option<PathBuf>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The model, as for `generate --model` (random weights use --seed).
    #[arg(long)]
    model: String,
    /// Seed of random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The directory to write (config.json, model.safetensors).
    #[arg(long)]
    out: PathBuf,
}

/// `export-model`: the model as a Hugging Face directory (what the engine runs, in bf16).
pub fn export_model(a: ExportArgs) -> AppResult<()> {
    let model = load(&a.model, a.seed)?;
    nanofuse_engine::export::save_hf_dir(&a.out, &model.config, &model.weights)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct DecodeBenchArgs {
    /// Models (comma-separated), as for `generate --model`; default the three of
    /// docs/RESULTS.md: random:qwen3-0.6b, random:llama-3.2-1b and, if
    /// $NANOFUSE_SMOLLM2_GGUF is set, that file.
    #[arg(long, value_delimiter = ',')]
    model: Vec<String>,
    /// Prompt tokens (random ids) before the timed decode.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Generated tokens per timed run (comma-separated lengths).
    #[arg(long = "gen", value_delimiter = ',', default_values_t = [128, 1024])]
    generate: Vec<usize>,
    /// Runs per length and engine; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also time one step stage by stage (events between stages) for each engine.
    #[arg(long)]
    breakdown: bool,
    /// Also time each engine's step with each stage left out of every layer in turn (the
    /// stages that stay keep their PDL overlap): what each stage adds to a real step.
    #[arg(long)]
    leave_out: bool,
    /// Most prompt tokens per prefill batch (1: the prompt one position at a time).
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Write the results as JSON to this file (checked before anything runs).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn open() -> AppResult<Arc<Gpu>> {
    nanofuse::open(0).map_err(|e| format!("cannot open a GPU: {e}").into())
}

fn load(spec: &str, seed: u64) -> AppResult<Model> {
    let t0 = Instant::now();
    let model = load_model(spec, seed)?;
    eprintln!(
        "loaded {spec}: {:?}, {} layers, hidden {}, {:.0} M parameters ({:.1} s)",
        model.config.arch,
        model.config.num_layers,
        model.config.hidden_size,
        model.config.num_params() as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(model)
}

fn build(gpu: &Arc<Gpu>, model: &Model, mode: Mode, max_seq: usize, prefill_chunk: usize) -> AppResult<Engine> {
    let bar = ProgressBar::new(model.config.num_layers as u64 + 1).with_style(
        ProgressStyle::with_template("uploading {msg} {bar:30} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{mode:?}"));
    let opts = EngineOptions { mode, max_seq, prefill_chunk };
    let engine = Engine::new(gpu, &model.config, &model.weights, opts, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok(engine)
}

pub fn generate(a: GenerateArgs) -> AppResult<()> {
    let sampling = match a.temperature {
        Some(temperature) => Sampling::Sample { temperature, top_p: a.top_p, seed: a.seed },
        None => Sampling::Greedy,
    };
    sampling.validate()?;
    if let Some(path) = &a.json {
        super::check_writable("--json", path)?;
    }
    if let Some(path) = &a.dump_logits {
        super::check_writable("--dump-logits", path)?;
    }
    let gpu = open()?;
    let model = load(&a.model, a.seed)?;
    let prompt = if !a.prompt_ids.is_empty() {
        a.prompt_ids.clone()
    } else {
        let tok = model.tokenizer.as_ref().ok_or("this model has no tokenizer: give --prompt-ids")?;
        tok.encode(&a.prompt, true)?
    };
    let max_seq = a.max_seq.unwrap_or(prompt.len() + a.max_tokens);
    let mode = if a.unfused { Mode::Unfused } else { Mode::Fused };
    let mut engine = build(&gpu, &model, mode, max_seq, a.prefill_chunk)?;
    if a.prompt_ids.is_empty() {
        print!("{}", a.prompt);
    } else {
        print!("{:?}", prompt);
    }
    std::io::stdout().flush()?;
    let mut new = Vec::new();
    let mut shown = String::new();
    let tok = model.tokenizer.as_ref();
    let mut show = |t: u32| {
        new.push(t);
        match tok.and_then(|tk| tk.decode(&new, true).ok()) {
            Some(text) => {
                // Print what the decoded text gained (a token may complete a character).
                if let Some(rest) = text.strip_prefix(shown.as_str()) {
                    print!("{rest}");
                    shown = text;
                }
            }
            None => print!(" {t}"),
        }
        let _ = std::io::stdout().flush();
        true
    };
    let stop = if a.ignore_eos { Vec::new() } else { model.config.eos_token_ids.clone() };
    let tokens = if let Some(path) = &a.dump_logits {
        let tokens = greedy_dumping_logits(&mut engine, &prompt, a.max_tokens, &stop, path, &mut show)?;
        println!();
        tokens
    } else {
        let (tokens, stats) = engine.generate(&prompt, a.max_tokens, sampling, &stop, show)?;
        println!();
        let prefill_tps = stats.prompt_tokens as f64 / stats.prefill_s;
        let decode_tps = if stats.decode_s > 0.0 { stats.decode_tokens as f64 / stats.decode_s } else { 0.0 };
        eprintln!(
            "{mode:?} engine: {} prompt tokens in {:.1} ms ({prefill_tps:.0} tok/s, chunks of up to {}); {} tokens \
             generated, decode {decode_tps:.0} tok/s (synchronized per token to print it; `decode-bench` times \
             back-to-back graph replays)",
            stats.prompt_tokens,
            stats.prefill_s * 1e3,
            a.prefill_chunk,
            tokens.len()
        );
        tokens
    };
    if let Some(path) = &a.json {
        let report = serde_json::json!({ "model": a.model, "engine": format!("{mode:?}"), "prompt_ids": prompt, "tokens": tokens });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Greedy decoding through the logits head: each step's logits go to `path` and the token
/// is their argmax (lowest id on ties).
fn greedy_dumping_logits(
    engine: &mut Engine,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    path: &std::path::Path,
    show: &mut dyn FnMut(u32) -> bool,
) -> AppResult<Vec<u32>> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut logits = engine.prefill_logits(prompt)?;
    let mut tokens = Vec::new();
    while tokens.len() < max_new {
        for v in &logits {
            out.write_all(&v.to_le_bytes())?;
        }
        let t = nanofuse_engine::sample::argmax(&logits) as u32;
        tokens.push(t);
        if !show(t) || stop.contains(&t) || tokens.len() == max_new {
            break;
        }
        logits = engine.step_logits(Some(t))?;
    }
    out.flush()?;
    Ok(tokens)
}

#[derive(Serialize)]
struct BenchRow {
    model: String,
    engine: String,
    prompt_tokens: usize,
    generated: usize,
    runs_us_per_token: Vec<f64>,
    us_per_token: f64,
    /// The prompt's prefill, host wall time of `Engine::prefill` (eager launches, one
    /// synchronization), median of the runs.
    prefill_us: f64,
    tokens_per_s: f64,
    weight_bytes_per_token: u64,
    floor_us: f64,
    share_of_floor: f64,
}

#[derive(Serialize)]
struct Breakdown {
    model: String,
    engine: String,
    position: usize,
    stages_us: Vec<(String, f64)>,
}

#[derive(Serialize)]
struct BenchReport {
    device: String,
    driver_version: i32,
    copy_bandwidth_gbs: f64,
    method: &'static str,
    rows: Vec<BenchRow>,
    breakdown: Vec<Breakdown>,
    leave_out: Vec<LeaveOut>,
}

/// `Engine::profile_leave_one_out` of one engine: µs per step of the whole step (first and
/// last) and of the step without each stage.
#[derive(Serialize)]
struct LeaveOut {
    model: String,
    engine: String,
    position: usize,
    steps: usize,
    variants_us_per_step: Vec<(String, f64)>,
}

/// Steps per variant of `--leave-out`.
const LEAVE_OUT_STEPS: usize = 32;

const METHOD: &str = "batch 1; prompt of random ids prefilled in batches of up to --prefill-chunk tokens (host \
    wall time of the eager launches and one synchronization); then N greedy decode steps, \
    each one CUDA-graph replay, enqueued back to back and timed with CUDA events around all N; µs per token = \
    elapsed / N; fused and unfused engines (same weights) alternate run by run; median of the runs; floor = \
    weight bytes per token / copy bandwidth (read + write of a 1 GiB device copy, measured in the same run)";

pub fn decode_bench(a: DecodeBenchArgs) -> AppResult<()> {
    if let Some(path) = &a.json {
        super::check_writable("--json", path)?;
    }
    if a.generate.contains(&0) || a.prompt_len == 0 || a.runs == 0 {
        return Err("--prompt-len, --gen and --runs must be positive".into());
    }
    let mut models = a.model.clone();
    if models.is_empty() {
        models = vec!["random:qwen3-0.6b".into(), "random:llama-3.2-1b".into()];
        if let Ok(p) = std::env::var("NANOFUSE_SMOLLM2_GGUF") {
            models.push(p);
        }
    }
    let gpu = open()?;
    let copy_gbs = copy_bandwidth_gbs(&gpu, 1 << 30, 20)?;
    let info = gpu.info();
    println!("device: {}, driver {}; copy bandwidth measured now: {copy_gbs:.0} GB/s", info.name, info.driver_version);
    println!("method: {METHOD}");
    let max_gen = a.generate.iter().copied().max().unwrap_or(1);
    let extra = if a.breakdown { 20 } else { 0 }
        + if a.leave_out { (Engine::STAGES.len() + 2) * (LEAVE_OUT_STEPS + 1) } else { 0 };
    let max_seq = a.prompt_len + max_gen + extra;
    let mut rows = Vec::new();
    let mut breakdown = Vec::new();
    let mut leave_out = Vec::new();
    for spec in &models {
        let model = load(spec, 0)?;
        let chunk = a.prefill_chunk;
        let mut engines =
            [build(&gpu, &model, Mode::Fused, max_seq, chunk)?, build(&gpu, &model, Mode::Unfused, max_seq, chunk)?];
        let vocab = model.config.vocab_size as u64;
        let prompt: Vec<u32> = (0..a.prompt_len as u64).map(|i| ((i * 2_654_435_761) % vocab) as u32).collect();
        let bytes = engines[0].weight_bytes_per_token();
        // Read-only floor: the copy's figure counts read + write bytes.
        let floor_us = bytes as f64 / (copy_gbs * 1e9) * 1e6;
        println!(
            "\n{spec}: {:.2} GB of weights per token; floor at copy bandwidth {floor_us:.1} µs",
            bytes as f64 / 1e9
        );
        println!(
            "{:>8} {:>9} {:>12} {:>10} {:>9} {:>12}  runs (µs/token)",
            "engine", "generated", "µs/token", "tok/s", "floor", "prefill µs"
        );
        let median = |v: &[f64]| {
            let mut sorted = v.to_vec();
            sorted.sort_by(f64::total_cmp);
            sorted[sorted.len() / 2]
        };
        for &n in &a.generate {
            let mut samples = vec![Vec::new(); engines.len()];
            let mut prefills = vec![Vec::new(); engines.len()];
            for _ in 0..a.runs {
                for ((e, s), p) in engines.iter_mut().zip(samples.iter_mut()).zip(prefills.iter_mut()) {
                    let (prefill_us, us) = time_decode(e, &prompt, n)?;
                    s.push(us);
                    p.push(prefill_us);
                }
            }
            for ((e, s), p) in engines.iter().zip(samples).zip(prefills) {
                let med = median(&s);
                let prefill_us = median(&p);
                let engine = format!("{:?}", e.options().mode).to_lowercase();
                println!(
                    "{engine:>8} {n:>9} {med:>12.1} {:>10.0} {:>8.1}% {prefill_us:>12.1}  {}",
                    1e6 / med,
                    100.0 * floor_us / med,
                    s.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" ")
                );
                rows.push(BenchRow {
                    model: spec.clone(),
                    engine,
                    prompt_tokens: a.prompt_len,
                    generated: n,
                    runs_us_per_token: s,
                    us_per_token: med,
                    prefill_us,
                    tokens_per_s: 1e6 / med,
                    weight_bytes_per_token: bytes,
                    floor_us,
                    share_of_floor: floor_us / med,
                });
            }
            let (f, u) = (&rows[rows.len() - 2], &rows[rows.len() - 1]);
            println!("   fused vs unfused at {n} tokens: {:.2}x", u.us_per_token / f.us_per_token);
        }
        if a.breakdown {
            for e in engines.iter_mut() {
                e.prefill(&prompt)?;
                let position = e.position();
                let stages = e.profile_step(15)?;
                let engine = format!("{:?}", e.options().mode).to_lowercase();
                let total: f64 = stages.iter().map(|s| s.1).sum();
                println!("  {engine} step by stage at position {position} (events between stages, no PDL overlap):");
                for (name, us) in &stages {
                    println!("    {name:<11} {us:>8.1} µs  {:>5.1}%", 100.0 * us / total);
                }
                println!("    {:<11} {total:>8.1} µs", "sum");
                breakdown.push(Breakdown {
                    model: spec.clone(),
                    engine,
                    position,
                    stages_us: stages.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
                });
            }
        }
        if a.leave_out {
            let layers = model.config.num_layers as f64;
            for e in engines.iter_mut() {
                e.prefill(&prompt)?;
                let position = e.position();
                let variants = e.profile_leave_one_out(LEAVE_OUT_STEPS)?;
                let engine = format!("{:?}", e.options().mode).to_lowercase();
                let full: Vec<f64> = variants.iter().filter(|v| v.0 == "full").map(|v| v.1).collect();
                let whole = full.iter().sum::<f64>() / full.len().max(1) as f64;
                println!(
                    "  {engine} step with each stage left out (from position {position}, {LEAVE_OUT_STEPS} steps each): \
                     whole step {} µs",
                    full.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" / ")
                );
                for (name, us) in variants.iter().filter(|v| v.0 != "full") {
                    let saved = whole - us;
                    let per_layer =
                        if *name == "head" { String::new() } else { format!("  {:>6.2} per layer", saved / layers) };
                    println!("    without {name:<10} {us:>8.1} µs/step  saves {saved:>7.1} µs{per_layer}");
                }
                leave_out.push(LeaveOut {
                    model: spec.clone(),
                    engine,
                    position,
                    steps: LEAVE_OUT_STEPS,
                    variants_us_per_step: variants.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
                });
                // The engine's own graphs and state are intact, but the cache rows written
                // without a stage are wrong: start over before anything else uses it.
                e.reset(&prompt)?;
            }
        }
    }
    if let Some(path) = &a.json {
        let report = BenchReport {
            leave_out,
            device: info.name.clone(),
            driver_version: info.driver_version,
            copy_bandwidth_gbs: copy_gbs,
            method: METHOD,
            rows,
            breakdown,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// One timed run: prefill `prompt` (host wall time, eager launches and the final
/// synchronization), then `n` greedy steps enqueued back to back between two events.
/// Returns (prefill µs, decode µs per token).
fn time_decode(engine: &mut Engine, prompt: &[u32], n: usize) -> AppResult<(f64, f64)> {
    let t0 = Instant::now();
    engine.prefill(prompt)?;
    let prefill_us = t0.elapsed().as_secs_f64() * 1e6;
    let ctx = engine.gpu().context().clone();
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let stream = engine.gpu().stream().clone();
    start.record(&stream)?;
    engine.enqueue_decode_steps(n)?;
    end.record(&stream)?;
    engine.finish()?;
    Ok((prefill_us, f64::from(start.elapsed_ms(&end)?) * 1e3 / n as f64))
}
