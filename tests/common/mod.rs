//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Once};

use nanofuse::cudarc::driver::CudaSlice;
use nanofuse::{Error, Gpu, QkvShape, WgmmaShape, bf16};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};

static SKIP_NOTE: Once = Once::new();

/// The GPU, or `None` after printing one `skipped: ...` line (per test binary) when this
/// machine has no CUDA driver or device. Any other failure to open the GPU panics: on a
/// GPU host the tests must run.
pub fn gpu() -> Option<Arc<Gpu>> {
    match nanofuse::open(0) {
        Ok(gpu) => Some(gpu),
        Err(e @ (Error::NoDriver | Error::NoDevice { .. })) => {
            SKIP_NOTE.call_once(|| skip_note(&format!("no CUDA device ({e})")));
            None
        }
        Err(e) => panic!("opening the GPU failed: {e}"),
    }
}

/// Prints `skipped: <why>` straight to stderr, past libtest's output capture, so the line
/// shows in a plain `cargo test` run.
pub fn skip_note(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// A fresh random generator; its seed is printed so a failure can be replayed with
/// `NANOFUSE_TEST_SEED=<seed>`.
pub fn rng(test: &str) -> SmallRng {
    let seed =
        std::env::var("NANOFUSE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("{test}: seed {seed}");
    SmallRng::seed_from_u64(seed)
}

/// Rows to check against the CPU reference: all of them for small M, else the first two,
/// the middle and the last two (the CPU reference of a 2048 x 10240 x 8192 product would
/// take minutes). The other rows are still checked for being written (no NaN poison left).
pub fn sample_rows(m: usize) -> Vec<usize> {
    if m <= 17 {
        (0..m).collect()
    } else {
        let mut r = vec![0, 1, m / 2, m - 2, m - 1];
        r.dedup();
        r
    }
}

/// Gathers `rows` of a row-major `[m, width]` matrix.
pub fn gather<T: Copy>(data: &[T], width: usize, rows: &[usize]) -> Vec<T> {
    rows.iter().flat_map(|&r| data[r * width..(r + 1) * width].iter().copied()).collect()
}

/// Fresh q, k, v outputs for `m` tokens of `shape`, filled with NaN so that an element a
/// kernel fails to write shows up.
pub fn poisoned_qkv(gpu: &Gpu, m: usize, shape: &QkvShape) -> (CudaSlice<bf16>, CudaSlice<bf16>, CudaSlice<bf16>) {
    let alloc = |len: usize| {
        let mut b = gpu.alloc_zeros::<bf16>(len).unwrap();
        gpu.fill_nan(&mut b).unwrap();
        b
    };
    (alloc(m * shape.q_dim), alloc(m * shape.kv_dim), alloc(m * shape.kv_dim))
}

/// Uniform random bf16 values in `[lo, hi)`.
pub fn random_bf16(rng: &mut impl Rng, len: usize, lo: f32, hi: f32) -> Vec<bf16> {
    (0..len).map(|_| bf16::from_f32(rng.random_range(lo..hi))).collect()
}

/// A random weight `[n, k]`, uniform with variance 1/k (so outputs have about unit scale).
pub fn random_weight(rng: &mut impl Rng, n: usize, k: usize) -> Vec<bf16> {
    let a = (3.0 / k as f32).sqrt();
    random_bf16(rng, n * k, -a, a)
}

/// Random weights for a shape: g in [0.5, 1.5), W `[N, K]` uniform with variance 1/K (so
/// outputs have about unit scale). The same distributions as the benchmark harness's
/// (`nanofuse_cli::bench`), which the library's tests cannot depend on.
pub fn random_weights(rng: &mut impl Rng, shape: &QkvShape) -> (Vec<bf16>, Vec<bf16>) {
    let a = (3.0 / shape.hidden as f32).sqrt();
    (random_bf16(rng, shape.hidden, 0.5, 1.5), random_bf16(rng, shape.n() * shape.hidden, -a, a))
}

/// Whether an op with weight rows of length `k` runs `Route::FusedWgmma` (`has`: the op's
/// `has_wgmma()`). Where the device could run the sm_90a module (compute capability 9.0, the
/// build carries the module, `k % 32 == 0`) and the op lacks the route, the test fails with
/// the reason, so a run on an H100 cannot pass without running the warpgroup-MMA kernels.
pub fn wgmma_route(gpu: &Gpu, has: bool, k: usize) -> bool {
    let capable = gpu.info().compute_capability == (9, 0) && !nanofuse::KERNELS_SM90A_PTX.is_empty();
    if !has {
        let why = gpu.wgmma_unavailable().unwrap_or_else(|| format!("K = {k}, not a multiple of 32"));
        assert!(!capable || !k.is_multiple_of(32), "FusedWgmma missing on a compute capability 9.0 device: {why}");
        println!("FusedWgmma not run: {why}");
    }
    has
}

/// The forced warpgroup-MMA launch shapes the op tests run: the launcher's choices, each
/// split over K, CTA pairs on and off (alone and with the largest split, which pairs
/// refuse), and the walk of the output tiles by one CTA, by three, by one CTA per tile, and
/// with a split or pairs (refused).
pub fn wgmma_test_shapes() -> Vec<WgmmaShape> {
    let ws = |split, pairs, ctas| WgmmaShape { split, pairs, ctas };
    vec![
        ws(None, None, None),
        ws(Some(1), None, None),
        ws(Some(2), None, None),
        ws(Some(4), None, None),
        ws(Some(8), None, None),
        ws(None, Some(true), None),
        ws(Some(8), Some(true), None),
        ws(None, Some(false), None),
        ws(Some(8), Some(false), None),
        ws(None, Some(false), Some(1)),
        ws(None, Some(false), Some(3)),
        ws(Some(1), Some(false), Some(u32::MAX)),
        ws(Some(2), Some(false), Some(3)),
        ws(None, Some(true), Some(3)),
    ]
}

/// The `Error::Value` argument a forced warpgroup-MMA shape is refused with at `m` tokens,
/// or `None` where it runs: pairs (with two token tiles or more) and a split of 8 would need
/// a cluster of 16; forced CTAs take neither a split nor pairs.
pub fn wgmma_refusal(m: usize, shape: WgmmaShape) -> Option<&'static str> {
    let paired = m > nanofuse::WGMMA_TOKEN_TILE && shape.pairs.unwrap_or(nanofuse::AUTO_PAIRS);
    let forced_ctas = shape.ctas.is_some();
    if (shape.split == Some(8) && paired) || (forced_ctas && shape.split.is_some_and(|s| s != 1)) {
        Some("WgmmaShape::split")
    } else if forced_ctas && paired {
        Some("WgmmaShape::ctas")
    } else {
        None
    }
}
