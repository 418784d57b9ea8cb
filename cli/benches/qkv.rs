//! `cargo bench`: fused RMSNorm + QKV vs the unfused baselines, per model shape and M.
//!
//! The rings and graphs of `nanofuse bench` (which also interleaves the variants; criterion
//! times one variant at a time): each variant is captured in one CUDA graph over a ring
//! of distinct weight sets larger than 4x L2 (weights stream from DRAM as in a decode
//! step); criterion's `iter_custom` times whole replays with CUDA events and reports the
//! time per op. Throughput is the op's minimum bytes (W, g, x, outputs), so criterion
//! prints GB/s. Without a GPU it prints one line and exits 0.

mod common;

use criterion::Throughput;
use nanofuse_cli::bench::{BENCH_MS, MODELS, Variant, Workload, min_bytes};

fn main() {
    let Some(gpu) = common::open_or_skip() else { return };
    let mut c = common::criterion();
    for model in MODELS {
        let mut wl = Workload::new(&gpu, model, 0x5eed).expect("build the weight ring");
        for m in BENCH_MS {
            wl.set_m(m).expect("allocate the activations");
            let mut group = c.benchmark_group(format!("{}/M={m}", model.name));
            group.throughput(Throughput::BytesDecimal(min_bytes(&model.shape, m)));
            for v in [Variant::Fused, Variant::NormCublas, Variant::NormNanofuse] {
                let graph = wl.capture(v).expect("capture the ring");
                common::bench_graph(&mut group, v.label(), &gpu, &graph);
            }
            group.finish();
        }
    }
    c.final_summary();
}
