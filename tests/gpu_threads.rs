//! Concurrent calls from several threads (GPU; skipped without a device). The ops are
//! `Send + Sync`: an engine may share one op between threads, or give each thread a view
//! on its own stream. Shape K = 256, Nq = 256, Nkv = 64 at M = 1, 5 (decode kernels) and 40
//! (the cuBLAS fallback with the op's scratch), 4 threads x 8 calls per M each:
//! * one op shared by every thread (all work on the op's stream, in whatever order the
//!   threads enqueue it): every thread's outputs are bitwise equal to a single-threaded run;
//! * one view per thread (`op.on(&gpu.on_stream(new stream))`, the folded weight shared,
//!   scratch and cuBLAS handle the view's own): the same, bitwise;
//! * the MLP ops (gate/up and the in-place projection) shared the same way.
//!
//! Bitwise, because every path is deterministic for a given M and weight (no atomics in the
//! reductions), so any race on the scratch, the cuBLAS handle or the current context shows.

mod common;

use std::sync::Arc;

use common::{random_bf16, random_weights};
use nanofuse::{FusedRmsNormGateUp, FusedRmsNormQkv, Gpu, MlpShape, ProjResidual, QkvShape, Result, bf16};

const QKV: QkvShape = QkvShape::new(256, 256, 64, 1e-5);
const MLP: MlpShape = MlpShape::new(256, 512, 1e-5);
const MS: [usize; 3] = [1, 5, 40];
const THREADS: usize = 4;
const CALLS: usize = 8;

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The op's packed q|k|v for `x` (`m` tokens) on `op`'s stream, `calls` times into fresh
/// buffers each time; returns the last result.
fn qkv_on(op: &FusedRmsNormQkv, gpu: &Gpu, x: &[bf16], m: usize, calls: usize) -> Result<Vec<u16>> {
    let s = *op.shape();
    let dx = gpu.upload(x)?;
    let mut last = Vec::new();
    for _ in 0..calls {
        let (mut q, mut k, mut v) =
            (gpu.alloc_zeros(m * s.q_dim)?, gpu.alloc_zeros(m * s.kv_dim)?, gpu.alloc_zeros(m * s.kv_dim)?);
        op.forward_into(&dx, m, &mut q, &mut k, &mut v)?;
        let (q, k, v) = (gpu.download(&q)?, gpu.download(&k)?, gpu.download(&v)?);
        last = [bits(&q), bits(&k), bits(&v)].concat();
    }
    Ok(last)
}

fn inputs(test: &str) -> (Vec<bf16>, Vec<bf16>, Vec<Vec<bf16>>) {
    let mut rng = common::rng(test);
    let (g, w) = random_weights(&mut rng, &QKV);
    let xs = MS.iter().map(|&m| random_bf16(&mut rng, m * QKV.hidden, -2.0, 2.0)).collect();
    (g, w, xs)
}

#[test]
fn one_op_shared_by_threads_gives_the_single_threaded_results() {
    let Some(gpu) = common::gpu() else { return };
    let (g, w, xs) = inputs("one_op_shared_by_threads_gives_the_single_threaded_results");
    let op = FusedRmsNormQkv::new(&gpu, QKV, &g, &w).unwrap();
    let want: Vec<Vec<u16>> = MS.iter().zip(&xs).map(|(&m, x)| qkv_on(&op, &gpu, x, m, 1).unwrap()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (op, gpu, xs) = (&op, &gpu, &xs);
                scope.spawn(move || {
                    // Each thread walks the Ms from a different start, so different paths
                    // interleave on the stream.
                    (0..MS.len())
                        .map(|i| (i + t) % MS.len())
                        .map(|i| (i, qkv_on(op, gpu, &xs[i], MS[i], CALLS).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            for (i, got) in h.join().expect("thread panicked") {
                assert!(got == want[i], "thread {t}, M = {}: differs from the single-threaded result", MS[i]);
            }
        }
    });
}

#[test]
fn a_view_per_thread_gives_the_single_threaded_results() {
    let Some(gpu) = common::gpu() else { return };
    let (g, w, xs) = inputs("a_view_per_thread_gives_the_single_threaded_results");
    let op = FusedRmsNormQkv::new(&gpu, QKV, &g, &w).unwrap();
    let want: Vec<Vec<u16>> = MS.iter().zip(&xs).map(|(&m, x)| qkv_on(&op, &gpu, x, m, 1).unwrap()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (op, gpu, xs) = (&op, &gpu, &xs);
                scope.spawn(move || -> Result<Vec<Vec<u16>>> {
                    let mine: Arc<Gpu> = gpu.on_stream(gpu.context().new_stream().expect("new stream"))?;
                    let view = op.on(&mine)?;
                    MS.iter().zip(xs).map(|(&m, x)| qkv_on(&view, &mine, x, m, CALLS)).collect()
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            let got = h.join().expect("thread panicked").unwrap();
            for (i, got) in got.iter().enumerate() {
                assert!(*got == want[i], "thread {t}'s view, M = {}: differs from the single-threaded result", MS[i]);
            }
        }
    });
}

/// `a = gate_up(h)`, then `h += a · Wdᵀ` in place, for `m` tokens; returns `(a, h)`.
fn mlp_on(
    gate_up: &FusedRmsNormGateUp,
    down: &ProjResidual,
    gpu: &Gpu,
    h: &[bf16],
    m: usize,
) -> Result<(Vec<u16>, Vec<u16>)> {
    let mut dh = gpu.upload(h)?;
    let mut a = gpu.alloc_zeros(m * MLP.inter)?;
    gate_up.forward_into(&dh, m, &mut a)?;
    down.forward_into(&a, m, &mut dh)?;
    Ok((bits(&gpu.download(&a)?), bits(&gpu.download(&dh)?)))
}

#[test]
fn mlp_ops_shared_by_threads_give_the_single_threaded_results() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("mlp_ops_shared_by_threads_give_the_single_threaded_results");
    let (hidden, inter) = (MLP.hidden, MLP.inter);
    let g = random_bf16(&mut rng, hidden, 0.5, 1.5);
    let a = (3.0 / hidden as f32).sqrt();
    let (wg, wu) = (random_bf16(&mut rng, inter * hidden, -a, a), random_bf16(&mut rng, inter * hidden, -a, a));
    let d = (3.0 / inter as f32).sqrt();
    let wd = random_bf16(&mut rng, hidden * inter, -d, d);
    let gate_up = FusedRmsNormGateUp::new(&gpu, MLP, &g, &wg, &wu).unwrap();
    let down = ProjResidual::new(&gpu, inter, hidden, &wd).unwrap();
    let hs: Vec<Vec<bf16>> = MS.iter().map(|&m| random_bf16(&mut rng, m * hidden, -2.0, 2.0)).collect();
    let want: Vec<_> = MS.iter().zip(&hs).map(|(&m, h)| mlp_on(&gate_up, &down, &gpu, h, m).unwrap()).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (gate_up, down, gpu, hs) = (&gate_up, &down, &gpu, &hs);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for _ in 0..CALLS {
                        out = MS.iter().zip(hs).map(|(&m, h)| mlp_on(gate_up, down, gpu, h, m).unwrap()).collect();
                    }
                    out
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            for (i, got) in h.join().expect("thread panicked").iter().enumerate() {
                assert!(*got == want[i], "thread {t}, M = {}: MLP differs from the single-threaded result", MS[i]);
            }
        }
    });
}
