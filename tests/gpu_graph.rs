//! CUDA-graph capture of the public ops right after construction and `reserve` (GPU;
//! skipped without a device).
//!
//! For each op and form (`FusedRmsNormQkv::forward_into` and `forward_packed_into`,
//! `FusedRmsNormGateUp::forward_into`, `ProjResidual::forward_into` in place and
//! `forward_out_of_place`) at M = 1 (the fused decode kernels) and M = 128 (the cuBLAS
//! fallbacks): the op is built on a fresh `Gpu` view (no cuBLAS handle yet), `reserve`d,
//! and its first call ever is captured, in thread-local mode, where an unsafe call such as
//! `cublasCreate` or a synchronous allocation fails the capture. The captured graph must
//! hold no allocation or free node (a stream-ordered allocation would be captured instead
//! of failing). The graph is then replayed twice into NaN-poisoned outputs and each result
//! must equal the eager call's bit for bit, with no element left unwritten.
//! A last test opens the device from another thread in the middle of a capture.

mod common;

use std::sync::Arc;

use common::{random_bf16, random_weights};
use nanofuse::cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUgraphNodeType, CUstreamCaptureMode};
use nanofuse::cudarc::driver::{CudaGraph, CudaSlice};
use nanofuse::{
    Baseline, FusedRmsNormGateUp, FusedRmsNormQkv, Gpu, MlpShape, ProjResidual, QkvShape, Result, UnfusedRmsNormQkv,
    bf16,
};

/// M of the decode kernels and of the fallbacks.
const MS: [usize; 2] = [1, 128];
/// Largest M reserved for.
const MAX_M: usize = 128;
/// K = 512, N = 512 + 2·128.
const QKV: QkvShape = QkvShape::new(512, 512, 128, 1e-5);
const MLP: MlpShape = MlpShape::new(512, 1024, 1e-5);

/// A fresh view of `gpu` on a new stream of its context: a `Gpu` without a cuBLAS handle,
/// as right after `Gpu::new` (the view shares the loaded module, so no JIT).
fn fresh(gpu: &Gpu) -> Arc<Gpu> {
    gpu.on_stream(gpu.context().new_stream().unwrap()).unwrap()
}

/// Captures what `enqueue` issues on `gpu`'s stream; panics if it fails inside the capture,
/// if the capture fails, or if the graph allocates or frees memory.
fn capture(gpu: &Gpu, what: &str, enqueue: impl FnOnce() -> Result<()>) -> CudaGraph {
    gpu.synchronize().unwrap();
    let stream = gpu.stream();
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    let issued = enqueue();
    // End the capture even when the op failed, so the stream is usable again.
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    issued.unwrap_or_else(|e| panic!("{what}: the op failed inside the capture: {e}"));
    let graph = graph.unwrap_or_else(|e| panic!("{what}: the capture failed: {e}")).expect("an empty capture");
    let kinds = node_types(&graph);
    let allocating = kinds
        .iter()
        .filter(|t| {
            matches!(t, CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_ALLOC | CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_FREE)
        })
        .count();
    assert_eq!(allocating, 0, "{what}: the graph allocates or frees memory: {kinds:?}");
    assert!(kinds.contains(&CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL), "{what}: no kernel captured: {kinds:?}");
    graph
}

/// The type of every node of the captured graph.
fn node_types(graph: &CudaGraph) -> Vec<CUgraphNodeType> {
    let mut n = 0usize;
    // SAFETY: a null array asks for the count only.
    unsafe { sys::cuGraphGetNodes(graph.cu_graph(), std::ptr::null_mut(), &mut n) }.result().unwrap();
    let mut nodes = vec![std::ptr::null_mut(); n];
    // SAFETY: `nodes` holds `n` entries.
    unsafe { sys::cuGraphGetNodes(graph.cu_graph(), nodes.as_mut_ptr(), &mut n) }.result().unwrap();
    nodes
        .iter()
        .map(|&node| {
            let mut t = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
            // SAFETY: `node` is a node of the live graph; writes one enum.
            unsafe { sys::cuGraphNodeGetType(node, &mut t) }.result().unwrap();
            t
        })
        .collect()
}

/// Poisons `outs`, replays `graph` and downloads them; twice.
fn replays(gpu: &Gpu, graph: &CudaGraph, outs: &mut [&mut CudaSlice<bf16>]) -> Vec<Vec<Vec<bf16>>> {
    (0..2)
        .map(|_| {
            for o in outs.iter_mut() {
                gpu.fill_nan(o).unwrap();
            }
            graph.launch().unwrap();
            gpu.synchronize().unwrap();
            outs.iter().map(|o| gpu.download(o).unwrap()).collect()
        })
        .collect()
}

/// `got` equals `want` bit for bit, and no element is NaN (poison left unwritten).
fn assert_bitwise(what: &str, got: &[Vec<bf16>], want: &[Vec<bf16>]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len());
        let nan = w.iter().filter(|v| v.is_nan()).count();
        assert_eq!(nan, 0, "{what}, output {i}: {nan} elements unwritten by the eager call");
        if let Some(j) = g.iter().zip(w).position(|(a, b)| a.to_bits() != b.to_bits()) {
            panic!("{what}, output {i}: element {j} is {} replayed, {} eager", g[j], w[j]);
        }
    }
}

#[test]
fn qkv_captures_right_after_reserve() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("qkv_captures_right_after_reserve");
    let (g, w) = random_weights(&mut rng, &QKV);
    for m in MS {
        for packed in [false, true] {
            let what =
                format!("FusedRmsNormQkv::{} at M = {m}", if packed { "forward_packed_into" } else { "forward_into" });
            let gpu = fresh(&gpu);
            let op = FusedRmsNormQkv::new(&gpu, QKV, &g, &w).unwrap();
            op.reserve(MAX_M).unwrap();
            let x = gpu.upload(&random_bf16(&mut rng, m * QKV.hidden, -3.0, 3.0)).unwrap();
            if packed {
                let mut y = gpu.alloc_zeros::<bf16>(m * QKV.n()).unwrap();
                let graph = capture(&gpu, &what, || op.forward_packed_into(&x, m, &mut y));
                let got = replays(&gpu, &graph, &mut [&mut y]);
                gpu.fill_nan(&mut y).unwrap();
                op.forward_packed_into(&x, m, &mut y).unwrap();
                let want = vec![gpu.download(&y).unwrap()];
                got.iter().for_each(|got| assert_bitwise(&what, got, &want));
            } else {
                let (mut q, mut k, mut v) = common::poisoned_qkv(&gpu, m, &QKV);
                let graph = capture(&gpu, &what, || op.forward_into(&x, m, &mut q, &mut k, &mut v));
                let got = replays(&gpu, &graph, &mut [&mut q, &mut k, &mut v]);
                let (mut q, mut k, mut v) = common::poisoned_qkv(&gpu, m, &QKV);
                op.forward_into(&x, m, &mut q, &mut k, &mut v).unwrap();
                let want: Vec<_> = [&q, &k, &v].iter().map(|b| gpu.download(b).unwrap()).collect();
                got.iter().for_each(|got| assert_bitwise(&what, got, &want));
            }
        }
    }
}

#[test]
fn gate_up_captures_right_after_reserve() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("gate_up_captures_right_after_reserve");
    let (h, i) = (MLP.hidden, MLP.inter);
    let g = random_bf16(&mut rng, h, 0.5, 1.5);
    let (wg, wu) = (random_bf16(&mut rng, i * h, -0.1, 0.1), random_bf16(&mut rng, i * h, -0.1, 0.1));
    for m in MS {
        let what = format!("FusedRmsNormGateUp::forward_into at M = {m}");
        let gpu = fresh(&gpu);
        let op = FusedRmsNormGateUp::new(&gpu, MLP, &g, &wg, &wu).unwrap();
        op.reserve(MAX_M).unwrap();
        let x = gpu.upload(&random_bf16(&mut rng, m * h, -3.0, 3.0)).unwrap();
        let mut a = gpu.alloc_zeros::<bf16>(m * i).unwrap();
        let graph = capture(&gpu, &what, || op.forward_into(&x, m, &mut a));
        let got = replays(&gpu, &graph, &mut [&mut a]);
        gpu.fill_nan(&mut a).unwrap();
        op.forward_into(&x, m, &mut a).unwrap();
        let want = vec![gpu.download(&a).unwrap()];
        got.iter().for_each(|got| assert_bitwise(&what, got, &want));
    }
}

#[test]
fn proj_residual_captures_right_after_reserve() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("proj_residual_captures_right_after_reserve");
    let (k, n) = (MLP.inter, MLP.hidden);
    let w = random_bf16(&mut rng, n * k, -0.1, 0.1);
    for m in MS {
        for in_place in [true, false] {
            let form = if in_place { "forward_into" } else { "forward_out_of_place" };
            let what = format!("ProjResidual::{form} at M = {m}");
            let gpu = fresh(&gpu);
            let op = ProjResidual::new(&gpu, k, n, &w).unwrap();
            op.reserve().unwrap();
            let x = gpu.upload(&random_bf16(&mut rng, m * k, -3.0, 3.0)).unwrap();
            let residual_host = random_bf16(&mut rng, m * n, -3.0, 3.0);
            let residual = gpu.upload(&residual_host).unwrap();
            let mut out = gpu.alloc_zeros::<bf16>(m * n).unwrap();
            let route = nanofuse::Route::Auto;
            // In place the output is the residual: reset it before every run.
            let reset = |out: &mut CudaSlice<bf16>| gpu.stream().memcpy_htod(&residual_host, out).unwrap();
            let graph = if in_place {
                reset(&mut out);
                capture(&gpu, &what, || op.forward_into(&x, m, &mut out))
            } else {
                capture(&gpu, &what, || op.forward_out_of_place(route, &x, m, &residual, &mut out))
            };
            let got: Vec<Vec<Vec<bf16>>> = (0..2)
                .map(|_| {
                    if in_place {
                        reset(&mut out);
                    } else {
                        gpu.fill_nan(&mut out).unwrap();
                    }
                    graph.launch().unwrap();
                    vec![gpu.download(&out).unwrap()]
                })
                .collect();
            if in_place {
                reset(&mut out);
                op.forward_into(&x, m, &mut out).unwrap();
            } else {
                gpu.fill_nan(&mut out).unwrap();
                op.forward_out_of_place(route, &x, m, &residual, &mut out).unwrap();
            }
            let want = vec![gpu.download(&out).unwrap()];
            got.iter().for_each(|got| assert_bitwise(&what, got, &want));
        }
    }
}

/// Opening the device from another thread (`nanofuse::open`: a new context handle and its
/// first stream) while a capture is under way must leave the capture intact. cudarc's first
/// `new_stream` on a handle with event tracking on synchronizes the whole context, which is
/// not allowed while any stream of it captures and invalidates that capture; `Gpu::new`
/// turns tracking off first. (Suspected cause of this file's intermittent
/// `CUBLAS_STATUS_EXECUTION_FAILED` inside captures while other tests opened the device.)
#[test]
fn opening_the_device_elsewhere_leaves_a_capture_intact() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("opening_the_device_elsewhere_leaves_a_capture_intact");
    let (g, w) = random_weights(&mut rng, &QKV);
    capture_survives(&gpu, &mut rng, &g, &w, "the device opened meanwhile", || nanofuse::open(0).map(drop));
}

/// As above for the end of a cuBLAS user: another thread opens the device, runs the cuBLAS
/// baseline, and drops its `Gpu` in the middle of a capture. `cublasDestroy` synchronizes the
/// whole device, which invalidates the capture; nanofuse pools its cuBLAS handles instead of
/// destroying them. (The cause of gpu_engine's `CUBLAS_STATUS_EXECUTION_FAILED` and
/// `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED` when its tests ran in parallel.)
#[test]
fn a_cublas_user_ending_elsewhere_leaves_a_capture_intact() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("a_cublas_user_ending_elsewhere_leaves_a_capture_intact");
    let (g, w) = random_weights(&mut rng, &QKV);
    let (g2, w2, x2) = (g.clone(), w.clone(), random_bf16(&mut rng, QKV.hidden, -3.0, 3.0));
    let elsewhere = move || -> Result<()> {
        let other = nanofuse::open(0)?;
        let base = UnfusedRmsNormQkv::new(&other, QKV, &g2, &w2)?;
        let x = other.upload(&x2)?;
        let mut xn = other.alloc_zeros::<bf16>(QKV.hidden)?;
        let mut y = other.alloc_zeros::<bf16>(QKV.n())?;
        base.forward_into(Baseline::NormCublas, &x, 1, &mut xn, &mut y)?;
        other.synchronize()
    };
    // The cuBLAS handle is made before the capture, so that only its end falls inside.
    std::thread::spawn(elsewhere.clone()).join().expect("the warm-up thread panicked").unwrap();
    capture_survives(&gpu, &mut rng, &g, &w, "a cuBLAS user ending meanwhile", elsewhere);
}

/// Captures the fused QKV op at M = 1 on a fresh `Gpu` while `elsewhere` runs to its end on
/// another thread, then checks every replay bitwise against an eager run.
fn capture_survives(
    gpu: &Gpu,
    rng: &mut impl rand::Rng,
    g: &[bf16],
    w: &[bf16],
    meanwhile: &str,
    elsewhere: impl FnOnce() -> Result<()> + Send + 'static,
) {
    let gpu = fresh(gpu);
    let op = FusedRmsNormQkv::new(&gpu, QKV, g, w).unwrap();
    let x = gpu.upload(&random_bf16(rng, QKV.hidden, -3.0, 3.0)).unwrap();
    let mut y = gpu.alloc_zeros::<bf16>(QKV.n()).unwrap();
    let graph = capture(&gpu, &format!("FusedRmsNormQkv::forward_packed_into at M = 1, {meanwhile}"), || {
        let done = std::thread::spawn(elsewhere).join().expect("the other thread panicked");
        done.unwrap_or_else(|e| panic!("{meanwhile}: {e}"));
        op.forward_packed_into(&x, 1, &mut y)
    });
    let got = replays(&gpu, &graph, &mut [&mut y]);
    gpu.fill_nan(&mut y).unwrap();
    op.forward_packed_into(&x, 1, &mut y).unwrap();
    let want = vec![gpu.download(&y).unwrap()];
    got.iter().for_each(|got| assert_bitwise(&format!("the capture with {meanwhile}"), got, &want));
}
