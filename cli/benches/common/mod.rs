//! What the criterion benches share: the GPU or a skip line, criterion's settings, and a
//! captured ring timed as criterion's iterations.

use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use nanofuse::Gpu;
use nanofuse_cli::timing::RingGraph;

/// The GPU, or `None` after printing why the bench is skipped (no GPU: exit 0).
pub fn open_or_skip() -> Option<Arc<Gpu>> {
    match nanofuse::open(0) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            println!("cargo bench: skipped, no GPU to benchmark on ({e})");
            None
        }
    }
}

/// Criterion with the project's settings (short warm-up and measurement; a replay is
/// already an average over the ring).
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args()
}

/// Benchmarks `graph` as `label` in `group`: criterion's `iter_custom` times whole replays
/// with CUDA events and reports the time per op (replay time / ring length).
pub fn bench_graph(group: &mut BenchmarkGroup<'_, WallTime>, label: &str, gpu: &Gpu, graph: &RingGraph) {
    let ring = graph.ring() as u64;
    group.bench_function(label, |b| {
        b.iter_custom(|iters| {
            let replays = iters.div_ceil(ring).max(1);
            let ms = graph.timer().time_ms(gpu, || (0..replays).try_for_each(|_| graph.launch())).expect("replay");
            // Scale the measured replays to exactly `iters` ops.
            Duration::from_secs_f64(ms * 1e-3 * iters as f64 / (replays * ring) as f64)
        })
    });
}
