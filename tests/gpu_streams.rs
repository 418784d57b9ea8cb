//! Streams and contexts (GPU; skipped without a device):
//!
//! * the loaded module is shared by every `Gpu` of one context and PTX text (`Gpu::new`
//!   twice, `Gpu::with_stream`, `Gpu::on_stream`), and not across PTX texts;
//! * an op's view on another stream (`on`) shares its weight (same device address), gives
//!   bit-identical results to the op on the decode kernels and the cuBLAS fallbacks, and
//!   keeps working after the original op is dropped; a view on another context, and a
//!   `Gpu` view of another context's stream, are `Error::WrongDevice`;
//! * every nanofuse call leaves the calling thread's current context as it found it:
//!   another context, or none.

mod common;

use std::sync::Arc;

use common::{random_bf16, random_weights};
use nanofuse::cudarc::driver::result::ctx;
use nanofuse::cudarc::driver::{CudaContext, CudaSlice, DevicePtr, sys};
use nanofuse::{
    Error, FusedRmsNormGateUp, FusedRmsNormQkv, Gpu, KERNELS_ARCH, KERNELS_PTX, MlpShape, ProjResidual, QkvShape,
    Route, bf16,
};

/// K = 256, N = 256 + 2·64.
const QKV: QkvShape = QkvShape::new(256, 256, 64, 1e-5);
const MLP: MlpShape = MlpShape::new(256, 512, 1e-5);
/// The decode kernels at 1 and 5, the cuBLAS fallbacks at 40.
const MS: [usize; 3] = [1, 5, 40];

fn addr(gpu: &Gpu, buf: &CudaSlice<bf16>) -> u64 {
    buf.device_ptr(gpu.stream()).0
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn gpus_of_one_context_share_the_loaded_module() {
    let Some(a) = common::gpu() else { return };
    let b = nanofuse::open(0).unwrap();
    assert!(a.shares_module(&b), "Gpu::new twice on device 0 loaded the module twice");
    let c = Gpu::with_stream(a.context().new_stream().unwrap(), KERNELS_PTX, KERNELS_ARCH).unwrap();
    assert!(a.shares_module(&c), "Gpu::with_stream on the same context loaded the module again");
    let d = a.on_stream(a.context().new_stream().unwrap()).unwrap();
    assert!(a.shares_module(&d) && d.shares_module(&b), "Gpu::on_stream loaded the module again");
    // Another PTX text (the same kernels and a trailing comment) is another module.
    let other_ptx = format!("{KERNELS_PTX}\n// another build\n");
    let e = Gpu::with_stream(a.context().new_stream().unwrap(), &other_ptx, KERNELS_ARCH).unwrap();
    assert!(!a.shares_module(&e), "a different PTX text reused the module");
    // Another context is another module.
    let other = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
    let f = Gpu::with_stream(other.new_stream().unwrap(), KERNELS_PTX, KERNELS_ARCH).unwrap();
    assert!(!a.shares_module(&f), "a module was shared across contexts");
    // A Gpu view of another context's stream is refused.
    let r = a.on_stream(other.new_stream().unwrap());
    assert!(matches!(r, Err(Error::WrongDevice { arg: "stream", .. })), "{r:?}");
}

/// Runs `run(gpu, m)` on the op's `Gpu` and on a view's, returning the two outputs.
fn both<F>(base: &Arc<Gpu>, view: &Arc<Gpu>, m: usize, run: F) -> (Vec<bf16>, Vec<bf16>)
where
    F: Fn(&Arc<Gpu>, bool, usize) -> Vec<bf16>,
{
    (run(base, false, m), run(view, true, m))
}

#[test]
fn an_op_view_on_another_stream_shares_the_weight_and_its_results() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("an_op_view_on_another_stream_shares_the_weight_and_its_results");
    let view_gpu = gpu.on_stream(gpu.context().new_stream().unwrap()).unwrap();

    // RMSNorm + QKV, packed output.
    let (g, w) = random_weights(&mut rng, &QKV);
    let qkv = FusedRmsNormQkv::new(&gpu, QKV, &g, &w).unwrap();
    let qkv_view = qkv.on(&view_gpu).unwrap();
    assert_eq!(addr(&gpu, qkv.folded_weight()), addr(&view_gpu, qkv_view.folded_weight()), "the view copied W");
    let xs: Vec<Vec<bf16>> = MS.iter().map(|&m| random_bf16(&mut rng, m * QKV.hidden, -3.0, 3.0)).collect();
    let run_qkv = |op: &FusedRmsNormQkv, gpu: &Arc<Gpu>, m: usize, x: &[bf16]| {
        let x = gpu.upload(x).unwrap();
        let mut y = gpu.alloc_zeros::<bf16>(m * QKV.n()).unwrap();
        gpu.fill_nan(&mut y).unwrap();
        op.forward_packed_into(&x, m, &mut y).unwrap();
        gpu.download(&y).unwrap()
    };
    for (&m, x) in MS.iter().zip(&xs) {
        let (want, got) = both(&gpu, &view_gpu, m, |g, view, m| run_qkv(if view { &qkv_view } else { &qkv }, g, m, x));
        assert!(want.iter().all(|v| !v.is_nan()), "QKV M = {m}: output unwritten");
        assert_eq!(bits(&got), bits(&want), "QKV M = {m}: the view's result differs");
    }
    // The view keeps the weight alive.
    let want: Vec<Vec<bf16>> = MS.iter().zip(&xs).map(|(&m, x)| run_qkv(&qkv, &gpu, m, x)).collect();
    drop(qkv);
    for ((&m, x), want) in MS.iter().zip(&xs).zip(&want) {
        assert_eq!(bits(&run_qkv(&qkv_view, &view_gpu, m, x)), bits(want), "QKV M = {m} after the op was dropped");
    }

    // RMSNorm + gate/up + SiLU·mul.
    let (h, i) = (MLP.hidden, MLP.inter);
    let g = random_bf16(&mut rng, h, 0.5, 1.5);
    let (wg, wu) = (random_bf16(&mut rng, i * h, -0.1, 0.1), random_bf16(&mut rng, i * h, -0.1, 0.1));
    let gate_up = FusedRmsNormGateUp::new(&gpu, MLP, &g, &wg, &wu).unwrap();
    let gate_up_view = gate_up.on(&view_gpu).unwrap();
    assert_eq!(addr(&gpu, gate_up.folded_weight()), addr(&view_gpu, gate_up_view.folded_weight()));
    for &m in &MS {
        let x = random_bf16(&mut rng, m * h, -3.0, 3.0);
        let (want, got) = both(&gpu, &view_gpu, m, |gpu, view, m| {
            let op = if view { &gate_up_view } else { &gate_up };
            let x = gpu.upload(&x).unwrap();
            let mut a = gpu.alloc_zeros::<bf16>(m * i).unwrap();
            gpu.fill_nan(&mut a).unwrap();
            op.forward_into(&x, m, &mut a).unwrap();
            gpu.download(&a).unwrap()
        });
        assert!(want.iter().all(|v| !v.is_nan()), "gate/up M = {m}: output unwritten");
        assert_eq!(bits(&got), bits(&want), "gate/up M = {m}: the view's result differs");
    }

    // Projection + residual, out of place (the fallback's copy of the residual included).
    let (k, n) = (i, h);
    let w = random_bf16(&mut rng, n * k, -0.1, 0.1);
    let proj = ProjResidual::new(&gpu, k, n, &w).unwrap();
    let proj_view = proj.on(&view_gpu).unwrap();
    for &m in &MS {
        let (x, r) = (random_bf16(&mut rng, m * k, -3.0, 3.0), random_bf16(&mut rng, m * n, -3.0, 3.0));
        let (want, got) = both(&gpu, &view_gpu, m, |gpu, view, m| {
            let op = if view { &proj_view } else { &proj };
            let (x, r) = (gpu.upload(&x).unwrap(), gpu.upload(&r).unwrap());
            let mut out = gpu.alloc_zeros::<bf16>(m * n).unwrap();
            gpu.fill_nan(&mut out).unwrap();
            op.forward_out_of_place(Route::Auto, &x, m, &r, &mut out).unwrap();
            gpu.download(&out).unwrap()
        });
        assert!(want.iter().all(|v| !v.is_nan()), "projection M = {m}: output unwritten");
        assert_eq!(bits(&got), bits(&want), "projection M = {m}: the view's result differs");
    }
    drop(proj);

    // A view on another context is refused.
    let other = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
    let foreign = Gpu::with_stream(other.new_stream().unwrap(), KERNELS_PTX, KERNELS_ARCH).unwrap();
    let r = gate_up.on(&foreign);
    assert!(matches!(r, Err(Error::WrongDevice { arg: "gpu", .. })), "{:?}", r.err());
    let r = proj_view.on(&foreign);
    assert!(matches!(r, Err(Error::WrongDevice { arg: "gpu", .. })), "{:?}", r.err());
    view_gpu.synchronize().unwrap();
}

/// The calling thread's current context, null if none.
fn current() -> sys::CUcontext {
    ctx::get_current().unwrap().unwrap_or(std::ptr::null_mut())
}

#[test]
fn calls_leave_the_current_context_as_they_found_it() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("calls_leave_the_current_context_as_they_found_it");
    let (g, w) = random_weights(&mut rng, &QKV);
    let op = FusedRmsNormQkv::new(&gpu, QKV, &g, &w).unwrap();
    let other = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
    let mut failures = Vec::new();
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    // With another context current, and with none.
    for (label, before) in [("another context", other.cu_ctx()), ("no context", std::ptr::null_mut())] {
        let mut check = |what: &str, call: &mut dyn FnMut()| {
            // SAFETY: `before` is a live context (held by `other`) or null.
            unsafe { ctx::set_current(before) }.unwrap();
            call();
            if current() != before {
                failures.push(format!("{what} with {label} current left the op's context current"));
            }
        };
        let mut x = None;
        check("Gpu::upload", &mut || x = Some(gpu.upload(&random_bf16(&mut rng, 40 * QKV.hidden, -3.0, 3.0)).unwrap()));
        let x = x.unwrap();
        let mut y = None;
        check("Gpu::alloc_zeros", &mut || y = Some(gpu.alloc_zeros::<bf16>(40 * QKV.n()).unwrap()));
        let mut y = y.unwrap();
        check("reserve", &mut || op.reserve(40).unwrap());
        for (m, route) in [(1, Route::Auto), (5, Route::FusedDecode), (40, Route::NormCublas), (40, Route::FusedTiled)]
        {
            let len = m * QKV.hidden;
            check(&format!("forward_packed_into_with({route:?}) at M = {m}"), &mut || {
                let (xm, mut ym) = (x.slice(..len), y.slice_mut(..m * QKV.n()));
                op.forward_packed_into_with(route, &xm, m, &mut ym).unwrap()
            });
        }
        check("Gpu::fill_nan", &mut || gpu.fill_nan(&mut y).unwrap());
        check("Gpu::synchronize", &mut || gpu.synchronize().unwrap());
        check("Gpu::download", &mut || drop(gpu.download(&y).unwrap()));
        // What the calls make is kept until the end: dropping a `Gpu` drops a cudarc stream,
        // which makes its context current (cudarc's own drop, documented as such).
        check("Gpu::new", &mut || keep.push(Box::new(nanofuse::open(0).unwrap())));
        check("FusedRmsNormQkv::new", &mut || keep.push(Box::new(FusedRmsNormQkv::new(&gpu, QKV, &g, &w).unwrap())));
        let stream = gpu.context().new_stream().unwrap(); // cudarc's: binds and stays
        check("Gpu::on_stream and on", &mut || {
            let view = gpu.on_stream(stream.clone()).unwrap();
            keep.push(Box::new(op.on(&view).unwrap()));
            keep.push(Box::new(view));
        });
    }
    // SAFETY: `other` is live.
    unsafe { ctx::set_current(other.cu_ctx()) }.unwrap();
    drop(keep);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
