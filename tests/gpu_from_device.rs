//! Building `FusedRmsNormQkv` from weights already on the device (GPU; skipped without a
//! device):
//!
//! * `from_device_copy` on views into one weight arena (`[g | W]`, and g overlapping W): the
//!   folded weight equals `new`'s bit for bit, the arena is left as it was, and the op's
//!   output equals `new`'s op's bit for bit; misaligned, short and foreign views are
//!   `Misaligned`, `Length`, `WrongDevice`;
//! * `from_device`'s errors give both buffers back unchanged (`w_modified` false): a wrong
//!   length, and g overlapping W (two slices over one allocation); on success its folded
//!   weight equals `new`'s.
//!
//! The address and length checks themselves are CPU-tested in `host/src/qkv.rs`.

mod common;

use common::{random_bf16, random_weights};
use nanofuse::cudarc::driver::{CudaContext, CudaSlice, DevicePtr};
use nanofuse::{Error, FromDeviceError, FusedRmsNormQkv, Gpu, QkvShape, bf16};

/// K = 128, N = 128 + 2·32.
const SHAPE: QkvShape = QkvShape::new(128, 128, 32, 1e-5);
const M: usize = 3;

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The error of a `from_device` that must fail.
#[track_caller]
fn refused<T>(r: Result<T, Box<FromDeviceError>>) -> FromDeviceError {
    match r {
        Ok(_) => panic!("from_device accepted bad weights"),
        Err(e) => *e,
    }
}

/// The packed output of `op` for `x`.
fn output(gpu: &Gpu, op: &FusedRmsNormQkv, x: &CudaSlice<bf16>) -> Vec<bf16> {
    let mut y = gpu.alloc_zeros::<bf16>(M * SHAPE.n()).unwrap();
    gpu.fill_nan(&mut y).unwrap();
    op.forward_packed_into(x, M, &mut y).unwrap();
    gpu.download(&y).unwrap()
}

#[test]
fn from_device_copy_folds_views_of_a_weight_arena() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("from_device_copy_folds_views_of_a_weight_arena");
    let (k, wlen) = (SHAPE.hidden, SHAPE.n() * SHAPE.hidden);
    let (g, w) = random_weights(&mut rng, &SHAPE);
    let x = gpu.upload(&random_bf16(&mut rng, M * k, -3.0, 3.0)).unwrap();
    let reference = FusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap();
    let want_w = bits(&gpu.download(reference.folded_weight()).unwrap());
    let want_y = bits(&output(&gpu, &reference, &x));

    // The arena: g, then W, then 8 spare elements (for the misaligned view).
    let host: Vec<bf16> = g.iter().chain(&w).copied().chain([bf16::ZERO; 8]).collect();
    let arena = gpu.upload(&host).unwrap();
    let (gv, wv) = (arena.slice(..k), arena.slice(k..k + wlen));
    let op = FusedRmsNormQkv::from_device_copy(&gpu, SHAPE, &gv, &wv).unwrap();
    assert_eq!(bits(&gpu.download(op.folded_weight()).unwrap()), want_w, "folded weight differs from new's");
    assert_eq!(bits(&gpu.download(&arena).unwrap()), bits(&host), "the arena was written");
    assert_eq!(bits(&output(&gpu, &op, &x)), want_y, "output differs from new's op");
    let (gp, wp, fp) =
        (gv.device_ptr(gpu.stream()).0, wv.device_ptr(gpu.stream()).0, op.folded_weight().device_ptr(gpu.stream()).0);
    assert!(fp != wp && fp != gp, "the op's weight is not its own allocation");

    // g overlapping W (both only read): the gain is W's first row.
    let g_in_w = &w[..k];
    let want = FusedRmsNormQkv::new(&gpu, SHAPE, g_in_w, &w).unwrap();
    let op = FusedRmsNormQkv::from_device_copy(&gpu, SHAPE, &arena.slice(k..2 * k), &wv).unwrap();
    assert_eq!(
        bits(&gpu.download(op.folded_weight()).unwrap()),
        bits(&gpu.download(want.folded_weight()).unwrap()),
        "g overlapping W: folded weight differs"
    );

    // Bad views.
    let r = FusedRmsNormQkv::from_device_copy(&gpu, SHAPE, &arena.slice(1..k + 1), &wv);
    assert!(matches!(r, Err(Error::Misaligned { arg: "g", .. })), "{:?}", r.err());
    let r = FusedRmsNormQkv::from_device_copy(&gpu, SHAPE, &gv, &arena.slice(k + 1..k + 1 + wlen));
    assert!(matches!(r, Err(Error::Misaligned { arg: "w", .. })), "{:?}", r.err());
    let r = FusedRmsNormQkv::from_device_copy(&gpu, SHAPE, &gv, &arena.slice(k..k + wlen - 8));
    assert!(matches!(r, Err(Error::Length { arg: "w", .. })), "{:?}", r.err());
    let other = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
    let foreign = other.new_stream().unwrap().clone_htod(&g).unwrap();
    let r = FusedRmsNormQkv::from_device_copy(&gpu, SHAPE, &foreign, &wv);
    assert!(matches!(r, Err(Error::WrongDevice { arg: "g", .. })), "{:?}", r.err());
}

#[test]
fn from_device_errors_give_the_buffers_back() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("from_device_errors_give_the_buffers_back");
    let (k, wlen) = (SHAPE.hidden, SHAPE.n() * SHAPE.hidden);
    let (g, w) = random_weights(&mut rng, &SHAPE);

    // A wrong length: both come back as they were.
    let short = random_bf16(&mut rng, k - 8, 0.5, 1.5);
    let e = refused(FusedRmsNormQkv::from_device(&gpu, SHAPE, gpu.upload(&short).unwrap(), gpu.upload(&w).unwrap()));
    let FromDeviceError { error, g: g_back, w: w_back, w_modified } = e;
    assert!(matches!(error, Error::Length { arg: "g", .. }), "{error:?}");
    assert!(!w_modified);
    assert_eq!(bits(&gpu.download(&g_back).unwrap()), bits(&short));
    assert_eq!(bits(&gpu.download(&w_back).unwrap()), bits(&w));

    // g over W's first row: two slices of one allocation, refused before the fold.
    let dw = gpu.upload(&w).unwrap();
    let ptr = dw.device_ptr(gpu.stream()).0;
    // SAFETY: `ptr` is a live allocation of `wlen >= k` bf16; the alias is never dropped
    // (forgotten below), so it frees nothing.
    let alias = unsafe { gpu.stream().upgrade_device_ptr::<bf16>(ptr, k) };
    let FromDeviceError { error, g: alias, w: w_back, w_modified } =
        refused(FusedRmsNormQkv::from_device(&gpu, SHAPE, alias, dw));
    std::mem::forget(alias);
    assert!(matches!(error, Error::Overlap { a: "w", b: "g" }), "{error:?}");
    assert!(!w_modified);
    assert_eq!(bits(&gpu.download(&w_back).unwrap()), bits(&w), "W was written");
    assert_eq!(w_back.len(), wlen);

    // `?` turns the error into the crate's.
    let into = || -> nanofuse::Result<FusedRmsNormQkv> {
        Ok(FusedRmsNormQkv::from_device(&gpu, SHAPE, gpu.upload(&short)?, gpu.upload(&w)?)?)
    };
    assert!(matches!(into(), Err(Error::Length { arg: "g", .. })));

    // The control: the same weights, correct, fold as `new` does.
    let op = FusedRmsNormQkv::from_device(&gpu, SHAPE, gpu.upload(&g).unwrap(), gpu.upload(&w).unwrap()).unwrap();
    let want = FusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap();
    assert_eq!(bits(&gpu.download(op.folded_weight()).unwrap()), bits(&gpu.download(want.folded_weight()).unwrap()));
}
