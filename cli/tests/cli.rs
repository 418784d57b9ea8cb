//! The `nanofuse` program and its chart, without a GPU: bad arguments and a missing GPU
//! give clear messages and non-zero exits; the chart renders from measurements.

use std::process::Command;

use nanofuse_cli::bench::{Case, MLP_MS, MODELS, Measurement, Op, Variant, min_bytes};
use nanofuse_cli::timing::Stats;

/// The program: where cargo built it, or (tests staged on a GPU host by
/// `shared/gpu/pack`) `../bin/nanofuse` beside this test binary.
fn program() -> std::path::PathBuf {
    let built = std::path::PathBuf::from(env!("CARGO_BIN_EXE_nanofuse"));
    if built.is_file() {
        return built;
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(|d| d.parent()).map(|d| d.join("bin/nanofuse")).filter(|p| p.is_file()).unwrap_or(built)
}

fn nanofuse(args: &[&str]) -> (i32, String) {
    let out = Command::new(program()).args(args).output().expect("run nanofuse");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_arguments_are_rejected_with_a_message() {
    let (code, text) = nanofuse(&["bench", "--m", "abc"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--m"), "{text}");
    let (code, text) = nanofuse(&["frobnicate"]);
    assert_eq!(code, 2, "{text}");
}

#[test]
fn unknown_shape_and_bad_m_are_rejected_before_touching_the_gpu() {
    let (code, text) = nanofuse(&["bench", "--shapes", "gpt-5"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unknown shape") && text.contains("Qwen3-0.6B"), "{text}");
    let (code, text) = nanofuse(&["bench", "--m", "0"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("batch sizes"), "{text}");
}

#[test]
fn bench_help_lists_the_ops_and_the_shapes() {
    let (code, text) = nanofuse(&["bench", "--help"]);
    assert_eq!(code, 0, "{text}");
    for op in ["qkv", "mlp", "gate-up", "down", "oproj"] {
        assert!(text.contains(op), "help lacks op {op}: {text}");
    }
    for model in &MODELS {
        assert!(text.contains(model.name), "help lacks {}: {text}", model.name);
    }
    assert!(text.contains("8192 x 28672"), "help lacks Llama-3-70B's down weight: {text}");
    let (code, text) = nanofuse(&["bench", "--op", "attention"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--op"), "{text}");
}

#[test]
fn tune_help_states_the_default_m_and_lists_the_shapes() {
    let (code, text) = nanofuse(&["tune", "--help"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("[default: 1,16]"), "tune --m's default: {text}");
    for model in &MODELS {
        assert!(text.contains(model.name), "tune help lacks {}: {text}", model.name);
    }
}

#[test]
fn rmsnorm_help_lists_every_shape_it_runs() {
    let (code, text) = nanofuse(&["rmsnorm", "--help"]);
    assert_eq!(code, 0, "{text}");
    let shapes =
        [(1, 1024), (1, 4096), (128, 1024), (128, 4096), (128, 8192), (2048, 1024), (2048, 4096), (2048, 8192)];
    for (rows, hidden) in shapes {
        assert!(text.contains(&format!("{rows} x {hidden}")), "rmsnorm help lacks {rows} x {hidden}: {text}");
    }
}

/// `tune --custom K,NQ,NKV` and `bench --decode WS,KS,RING`, the documented forms, parse
/// (they get as far as opening the GPU, or run on a GPU host); other counts are rejected.
#[test]
fn comma_separated_triples_are_accepted() {
    if nanofuse::driver_present() {
        return; // a GPU host: these would run for real
    }
    for args in [
        &["tune", "--custom", "64,64,64"][..],
        &["tune", "--custom", "64,64,64", "--m", "1"],
        &["bench", "--decode", "8,4,0", "--quick"],
    ] {
        let (code, text) = nanofuse(args);
        assert_eq!(code, 1, "{args:?}: {text}");
        assert!(text.contains("cannot open a GPU"), "{args:?}: {text}");
    }
    for args in [
        &["tune", "--custom", "64,64"][..],
        &["tune", "--custom", "64,64,64,64"],
        &["tune", "--custom", "64,x,64"],
        &["bench", "--decode", "8,4"],
    ] {
        let (code, text) = nanofuse(args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(args[1]), "{args:?}: {text}");
    }
    // An invalid custom shape is refused before the GPU is opened.
    let (code, text) = nanofuse(&["tune", "--custom", "60,64,64"]);
    assert_eq!(code, 1, "{text}");
    assert!(!text.contains("cannot open a GPU"), "{text}");
}

#[test]
fn json_and_chart_paths_are_checked_before_the_run() {
    let missing = std::env::temp_dir().join(format!("nanofuse-no-such-dir-{}", std::process::id()));
    let json = missing.join("bench.json");
    let (code, text) = nanofuse(&["bench", "--quick", "--json", json.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--json") && text.contains("bench.json"), "{text}");
    assert!(!text.contains("cannot open a GPU"), "checked after opening the GPU: {text}");
    // A directory is not a file to write.
    let dir = std::env::temp_dir();
    let (code, text) = nanofuse(&["bench", "--quick", "--chart", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--chart") && !text.contains("cannot open a GPU"), "{text}");
    // A writable path passes the check and is left as it was (here: not created).
    if !nanofuse::driver_present() {
        let ok = std::env::temp_dir().join(format!("nanofuse-check-{}.json", std::process::id()));
        let (code, text) = nanofuse(&["bench", "--quick", "--json", ok.to_str().unwrap()]);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("cannot open a GPU"), "{text}");
        assert!(!ok.exists(), "the check left {} behind", ok.display());
    }
}

#[test]
fn info_prints_the_build_without_a_gpu() {
    let (code, text) = nanofuse(&["info"]);
    assert!(text.contains(&format!("kernels: PTX for {}", nanofuse::KERNELS_ARCH)), "{text}");
    if !nanofuse::driver_present() {
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("device: none") && text.contains("no CUDA driver"), "{text}");
    }
}

#[test]
fn without_a_gpu_mlp_bench_says_so_and_fails() {
    if nanofuse::driver_present() {
        return;
    }
    let (code, text) = nanofuse(&["bench", "--op", "mlp", "--quick"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot open a GPU"), "{text}");
}

#[test]
fn without_a_gpu_bench_says_so_and_fails() {
    if nanofuse::driver_present() {
        return; // a GPU host: `nanofuse bench` would run for real
    }
    let (code, text) = nanofuse(&["bench", "--quick"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot open a GPU") && text.contains("no CUDA driver"), "{text}");
}

#[test]
fn chart_renders_every_shape_and_the_floor() {
    let copy_gbs = 3000.0;
    let mut results = Vec::new();
    for model in &MODELS {
        for m in [1, 16, 128, 2048] {
            for (v, scale) in [(Variant::Fused, 1.1), (Variant::NormCublas, 2.0), (Variant::NormNanofuse, 1.5)] {
                let floor = min_bytes(&model.shape, m) as f64 / (copy_gbs * 1e3);
                let st = Stats { median_us: floor * scale, min_us: floor, max_us: floor * 3.0, samples: 20 };
                results.push(Measurement::new(model, m, v, String::new(), 4, st));
            }
        }
    }
    let path = std::env::temp_dir().join(format!("nanofuse-chart-{}.svg", std::process::id()));
    nanofuse_cli::chart::write_svg(&path, &results, copy_gbs, "test device").unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).ok();
    for model in &MODELS {
        assert!(svg.contains(model.name), "chart lacks {}", model.name);
    }
    assert!(svg.contains("bandwidth floor") && svg.contains("fused"));
}

#[test]
fn chart_renders_a_panel_per_mlp_op_and_shape() {
    let copy_gbs = 3000.0;
    let mut results = Vec::new();
    for op in [Op::GateUp, Op::Down, Op::Oproj] {
        for model in &MODELS {
            let case = Case { op, model: model.name, problem: op.problem(model) };
            for m in MLP_MS {
                let floor = case.problem.min_bytes(m) as f64 / (copy_gbs * 1e3);
                let mut variants = vec![(Variant::NormCublas, 2.0), (Variant::NormNanofuse, 1.5), (Variant::Api, 1.1)];
                if m <= 16 {
                    variants.push((Variant::Fused, 1.1));
                }
                for (v, scale) in variants {
                    let st = Stats { median_us: floor * scale, min_us: floor, max_us: floor * 3.0, samples: 20 };
                    results.push(Measurement::of(&case, m, v, String::new(), 4, st));
                }
            }
        }
    }
    let path = std::env::temp_dir().join(format!("nanofuse-mlp-chart-{}.svg", std::process::id()));
    nanofuse_cli::chart::write_svg(&path, &results, copy_gbs, "test device").unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).ok();
    for op in ["gate_up", "down", "oproj"] {
        for model in &MODELS {
            let caption = format!("{op}: {}", model.name);
            assert!(svg.contains(&caption), "chart lacks {caption}");
        }
    }
    assert!(svg.contains("bandwidth floor") && svg.contains("api") && svg.contains("SiLU"));
}

#[test]
fn engine_commands_check_their_arguments_before_the_gpu() {
    let missing = std::env::temp_dir().join(format!("nanofuse-no-such-dir-{}", std::process::id()));
    let json = missing.join("engine.json");
    let (code, text) = nanofuse(&["decode-bench", "--json", json.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--json") && !text.contains("cannot open a GPU"), "{text}");
    let (code, text) = nanofuse(&["decode-bench", "--gen", "0"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("positive"), "{text}");
    let (code, text) = nanofuse(&["generate", "--model", "random:qwen3-0.6b", "--temperature", "0"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("temperature"), "{text}");
    let (code, text) = nanofuse(&["generate", "--model", "random:qwen3-0.6b", "--dump-logits", json.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--dump-logits"), "{text}");
    if !nanofuse::driver_present() {
        let (code, text) = nanofuse(&["generate", "--model", "random:qwen3-0.6b", "--prompt-ids", "1,2"]);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("cannot open a GPU"), "{text}");
    }
}

#[test]
fn engine_commands_are_listed_in_help() {
    let (code, text) = nanofuse(&["--help"]);
    assert_eq!(code, 0, "{text}");
    for cmd in ["generate", "decode-bench", "export-model"] {
        assert!(text.contains(cmd), "{cmd} missing from: {text}");
    }
}
