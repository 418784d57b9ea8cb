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
