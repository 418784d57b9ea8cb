//! `cargo bench`: fused RMSNorm + QKV vs the unfused baselines, per model shape and M.
//!
//! The rings and graphs of `nanofuse bench` (which also interleaves the variants; criterion
//! times one variant at a time): each variant is captured in one CUDA graph over a ring
//! of distinct weight sets larger than 4x L2 (weights stream from DRAM as in a decode
//! step); criterion's `iter_custom` times whole replays with CUDA events and reports the
//! time per op. Throughput is the op's minimum bytes (W, g, x, outputs), so criterion
//! prints GB/s. Without a GPU it prints one line and exits 0.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use nanofuse::bench::{BENCH_MS, MODELS, Variant, Workload, min_bytes};

fn main() {
    let gpu = match nanofuse::open(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            println!("cargo bench: skipped, no GPU to benchmark on ({e})");
            return;
        }
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    for model in MODELS {
        let mut wl = Workload::new(&gpu, model, 0x5eed).expect("build the weight ring");
        for m in BENCH_MS {
            wl.set_m(m).expect("allocate the activations");
            let mut group = c.benchmark_group(format!("{}/M={m}", model.name));
            group.throughput(Throughput::BytesDecimal(min_bytes(&model.shape, m)));
            for v in [Variant::Fused, Variant::NormCublas, Variant::NormNanofuse] {
                let graph = wl.capture(v).expect("capture the ring");
                let ring = graph.ring() as u64;
                group.bench_function(v.label(), |b| {
                    b.iter_custom(|iters| {
                        let replays = iters.div_ceil(ring).max(1);
                        let ms = graph
                            .timer()
                            .time_ms(&gpu, || (0..replays).try_for_each(|_| graph.launch()))
                            .expect("replay");
                        // Scale the measured replays to exactly `iters` ops.
                        Duration::from_secs_f64(ms * 1e-3 * iters as f64 / (replays * ring) as f64)
                    })
                });
            }
            group.finish();
        }
    }
    c.final_summary();
}
