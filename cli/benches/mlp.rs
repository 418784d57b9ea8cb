//! `cargo bench --bench mlp`: the fused MLP ops (gate/up, down projection, attention output
//! projection) vs the unfused baselines, per model shape and M; benchmark ids
//! `{op}/{shape}/M={m}/{variant}` (filter with e.g. `cargo bench --bench mlp -- gate_up`).
//!
//! The rings and graphs of `nanofuse bench --op mlp`, one variant at a time (see
//! benches/qkv.rs): fused (M <= 16), baselines (a) and (b), and the API where it runs
//! other kernels than the fused one (M > 16, cuBLAS). Throughput is the op's minimum bytes,
//! so criterion prints GB/s. Without a GPU it prints one line and exits 0.

mod common;

use criterion::Throughput;
use nanofuse_cli::bench::{self, MLP_MS, MODELS, Op};

fn main() {
    let Some(gpu) = common::open_or_skip() else { return };
    let mut c = common::criterion();
    for op in [Op::GateUp, Op::Down, Op::Oproj] {
        for model in MODELS {
            let mut sweep = bench::workload(&gpu, op, model, 0x5eed).expect("build the weight ring");
            for m in MLP_MS {
                sweep.set_m(m).expect("allocate the activations");
                let mut group = c.benchmark_group(format!("{}/{}/M={m}", op.label(), model.name));
                group.throughput(Throughput::BytesDecimal(op.problem(&model).min_bytes(m)));
                // Rows timed by another's graph (the API running the fused kernel) are skipped.
                for row in sweep.rows().into_iter().filter(|r| r.timed_as == r.variant) {
                    let graph = sweep.capture(row.variant).expect("capture the ring");
                    common::bench_graph(&mut group, row.variant.label(), &gpu, &graph);
                }
                group.finish();
            }
        }
    }
    c.final_summary();
}
