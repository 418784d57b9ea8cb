//! The typed errors that need a device, and a randomized check of every path (GPU; skipped
//! without a device).
//!
//! Errors: for every buffer argument of `FusedRmsNormQkv::{forward, forward_into,
//! forward_into_with, baseline_into, new, from_device}`, `ops::rms_norm` and `ops::gemm`,
//! one element too many or too few is `Error::Length` naming it with both counts, a view
//! 2 bytes into its allocation is `Error::Misaligned`, and a buffer of another CUDA context
//! is `Error::WrongDevice`; the same calls with correct buffers succeed. Also: aliased
//! outputs are `Error::Overlap`, M = 0 is a no-op that leaves the outputs' memory as it
//! was, bad dimensions are `Dimension` / `TooLarge`, and bad device ordinals or PTX are
//! `NoDevice` / `UnsupportedArch` / `Module`. With another CUDA context current on the
//! calling thread, every entry point still computes the right result on its own context.
//!
//! Random shapes (K a multiple of 8 in 8..=2048, Nq and Nkv in 1..=300, M in 1..=80; 12
//! cases): every path and both baselines against `reference::qkv_rows` on every row, with
//! the bounds of tests/gpu_qkv.rs (relative Frobenius error <= 4e-3, every element within
//! `0.02·rms(ref) + 0.02·|ref|`, NaN poison fully overwritten), and two runs of each path
//! bitwise identical.

mod common;

use std::mem::ManuallyDrop;
use std::sync::Arc;

use common::{random_bf16, random_weights};
use nanofuse::cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr};
use nanofuse::ops::{self, GemmImpl};
use nanofuse::plan::{DECODE_MAX_M, MAX_DIM};
use nanofuse::reference::{self, compare, concat_qkv, rms};
use nanofuse::{BUFFER_ALIGN, Baseline, Error, FusedRmsNormQkv, Gpu, QkvShape, Result, Route, UnfusedRmsNormQkv, bf16};
use rand::RngExt;

/// A small op for the error tests: K = 64, N = 24 + 2·8 = 40, M = 3.
const SHAPE: QkvShape = QkvShape::new(64, 24, 8, 1e-5);
const M: usize = 3;
const PATHS: [Route; 4] = [Route::FusedDecode, Route::FusedTiled, Route::NormCublas, Route::Auto];
const MAX_REL_FROBENIUS: f64 = 4e-3;
const ELEMENT_TOL: f64 = 0.02;

/// The fused op and the unfused baselines on one set of random weights.
fn small_ops(gpu: &Arc<Gpu>) -> (FusedRmsNormQkv, UnfusedRmsNormQkv) {
    let mut rng = common::rng("small op");
    let (g, w) = random_weights(&mut rng, &SHAPE);
    (FusedRmsNormQkv::new(gpu, SHAPE, &g, &w).unwrap(), UnfusedRmsNormQkv::new(gpu, SHAPE, &g, &w).unwrap())
}

/// Poisoned (NaN) device buffers of these lengths.
fn poisoned(gpu: &Gpu, lens: &[usize]) -> Vec<CudaSlice<bf16>> {
    lens.iter()
        .map(|&len| {
            let mut b = gpu.alloc_zeros::<bf16>(len).unwrap();
            gpu.fill_nan(&mut b).unwrap();
            b
        })
        .collect()
}

/// What is wrong with one argument's buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Nothing (the control run).
    None,
    /// This many elements too many (or too few).
    Len(isize),
    /// A view starting one bf16 (2 bytes) into its allocation.
    Offset,
    /// Allocated on another CUDA context.
    Foreign,
}

type Call<'a> = Box<dyn Fn(usize, &[CudaView<'_, bf16>], &mut [CudaViewMut<'_, bf16>]) -> Result<()> + 'a>;

/// A buffer argument: `size` elements, per token (`m · size`) or in all.
#[derive(Clone, Copy)]
struct Arg {
    name: &'static str,
    size: usize,
    per_token: bool,
}

impl Arg {
    fn len(&self, m: usize) -> usize {
        if self.per_token { m * self.size } else { self.size }
    }
}

fn per_token(name: &'static str, size: usize) -> Arg {
    Arg { name, size, per_token: true }
}

fn fixed(name: &'static str, size: usize) -> Arg {
    Arg { name, size, per_token: false }
}

/// One checked entry point: its buffer arguments (inputs first) and a call taking M and
/// views.
struct Case<'a> {
    name: String,
    args: Vec<Arg>,
    inputs: usize,
    call: Call<'a>,
}

/// Every entry point that takes activation or output buffers, with the small shape.
fn cases<'a>(gpu: &'a Gpu, op: &'a FusedRmsNormQkv, base: &'a UnfusedRmsNormQkv) -> Vec<Case<'a>> {
    let (k, n, nq, nkv) = (SHAPE.hidden, SHAPE.n(), SHAPE.q_dim, SHAPE.kv_dim);
    let qkv_args = vec![per_token("x", k), per_token("q", nq), per_token("k", nkv), per_token("v", nkv)];
    let mut cases: Vec<Case<'a>> = vec![
        Case {
            name: "forward_into".into(),
            args: qkv_args.clone(),
            inputs: 1,
            call: Box::new(move |m, i, o| {
                let [q, kk, v] = o else { unreachable!() };
                op.forward_into(&i[0], m, q, kk, v)
            }),
        },
        Case {
            name: "forward".into(),
            args: vec![per_token("x", k)],
            inputs: 1,
            call: Box::new(move |m, i, _| op.forward(&i[0], m).map(|_| ())),
        },
    ];
    for path in PATHS {
        cases.push(Case {
            name: format!("forward_into_with({path:?})"),
            args: qkv_args.clone(),
            inputs: 1,
            call: Box::new(move |m, i, o| {
                let [q, kk, v] = o else { unreachable!() };
                op.forward_into_with(path, &i[0], m, q, kk, v)
            }),
        });
    }
    for which in [Baseline::NormCublas, Baseline::NormNanofuse] {
        cases.push(Case {
            name: format!("UnfusedRmsNormQkv::forward_into({which:?})"),
            args: vec![per_token("x", k), per_token("xn", k), per_token("y", n)],
            inputs: 1,
            call: Box::new(move |m, i, o| {
                let [xn, y] = o else { unreachable!() };
                base.forward_into(which, &i[0], m, xn, y)
            }),
        });
    }
    cases.push(Case {
        name: "ops::rms_norm".into(),
        args: vec![per_token("x", k), fixed("g", k), per_token("y", k)],
        inputs: 2,
        call: Box::new(move |m, i, o| ops::rms_norm(gpu, &i[0], &i[1], &mut o[0], m, k, 1e-5)),
    });
    for which in [GemmImpl::Nanofuse, GemmImpl::Cublas] {
        cases.push(Case {
            name: format!("ops::gemm({which:?})"),
            args: vec![per_token("x", k), fixed("w", n * k), per_token("y", n)],
            inputs: 2,
            call: Box::new(move |m, i, o| ops::gemm(gpu, which, &i[0], &i[1], &mut o[0], m, k, n)),
        });
    }
    cases
}

/// Runs `case` at M = 3 with argument `bad` given `fault` (`foreign`: a stream of another
/// context) and every other argument a view of exactly its length at the start of its
/// allocation.
fn run_case(gpu: &Gpu, foreign: Option<&Arc<CudaStream>>, case: &Case, bad: usize, fault: Fault) -> Result<()> {
    let mut bufs: Vec<CudaSlice<bf16>> = case
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let stream = match (i == bad, fault) {
                (true, Fault::Foreign) => foreign.expect("a foreign stream"),
                _ => gpu.stream(),
            };
            stream.alloc_zeros::<bf16>(a.len(M) + 2).unwrap()
        })
        .collect();
    let range = |i: usize| {
        let len = case.args[i].len(M);
        match fault {
            _ if i != bad => 0..len,
            Fault::Len(d) => 0..len.checked_add_signed(d).unwrap(),
            Fault::Offset => 1..len + 1,
            Fault::None | Fault::Foreign => 0..len,
        }
    };
    let (ins, outs) = bufs.split_at_mut(case.inputs);
    let ins: Vec<CudaView<bf16>> = ins.iter().enumerate().map(|(i, b)| b.slice(range(i))).collect();
    let mut outs: Vec<CudaViewMut<bf16>> =
        outs.iter_mut().enumerate().map(|(j, b)| b.slice_mut(range(case.inputs + j))).collect();
    (case.call)(M, &ins, &mut outs)
}

/// Checks that `e`'s message names `arg` in backquotes.
fn names(e: &Error, arg: &str) -> bool {
    e.to_string().contains(&format!("`{arg}`"))
}

/// Runs every case once with correct buffers (must succeed), then once per argument and
/// fault; `check(arg, len, fault, result)` describes a wrong result. Panics listing all
/// failures.
fn check_all(faults: &[Fault], check: impl Fn(&str, usize, Fault, &Result<()>) -> Option<String>) {
    let Some(gpu) = common::gpu() else { return };
    let (op, base) = small_ops(&gpu);
    let foreign = faults.contains(&Fault::Foreign).then(|| {
        let ctx = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
        ctx.new_stream().expect("a stream on the second context")
    });
    let mut failures = Vec::new();
    let mut runs = 0;
    for case in cases(&gpu, &op, &base) {
        if let Err(e) = run_case(&gpu, None, &case, usize::MAX, Fault::None) {
            failures.push(format!("{}: fails with correct buffers: {e}", case.name));
            continue;
        }
        for (bad, arg) in case.args.iter().enumerate() {
            for &f in faults {
                let r = run_case(&gpu, foreign.as_ref(), &case, bad, f);
                runs += 1;
                if let Some(why) = check(arg.name, arg.len(M), f, &r) {
                    failures.push(format!("{} with `{}` {f:?}: {why}; got {r:?}", case.name, arg.name));
                }
            }
        }
    }
    gpu.synchronize().unwrap();
    println!("{runs} faulty calls checked");
    assert!(runs >= 30, "only {runs} faulty calls");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn wrong_lengths_are_length_errors_naming_the_argument() {
    check_all(&[Fault::Len(-1), Fault::Len(1)], |arg, len, f, r| {
        let Fault::Len(d) = f else { unreachable!() };
        let want = len.checked_add_signed(d).unwrap();
        match r {
            Err(e @ Error::Length { arg: a, expected, got }) if *a == arg && *expected == len && *got == want => {
                (!names(e, arg)).then(|| "message does not name the argument".into())
            }
            _ => Some(format!("expected Length {{ arg: {arg}, expected: {len}, got: {want} }}")),
        }
    });
}

#[test]
fn misaligned_views_are_misaligned_errors() {
    check_all(&[Fault::Offset], |arg, _, _, r| match r {
        Err(e @ Error::Misaligned { arg: a, addr, align }) if *a == arg => {
            if *align != BUFFER_ALIGN || addr % BUFFER_ALIGN != 2 {
                Some(format!("address {addr:#x} / alignment {align} wrong"))
            } else {
                (!names(e, arg)).then(|| "message does not name the argument".into())
            }
        }
        _ => Some(format!("expected Misaligned {{ arg: {arg}, .. }}")),
    });
}

#[test]
fn buffers_of_another_context_are_wrong_device_errors() {
    check_all(&[Fault::Foreign], |arg, _, _, r| match r {
        Err(e @ Error::WrongDevice { arg: a, expected: 0, found: 0 }) if *a == arg => {
            (!names(e, arg)).then(|| "message does not name the argument".into())
        }
        _ => Some(format!("expected WrongDevice {{ arg: {arg}, expected: 0, found: 0 }}")),
    });
}

/// The weights: `new` checks host lengths, `from_device` device lengths and contexts.
#[test]
fn bad_weights_are_rejected() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("bad_weights_are_rejected");
    let (g, w) = random_weights(&mut rng, &SHAPE);
    let (gl, wl) = (g.len(), w.len());
    let mut failures = Vec::new();
    let mut expect_length = |what: &str, r: Result<FusedRmsNormQkv>, arg: &str, expected: usize, got: usize| match r {
        Err(ref e @ Error::Length { arg: a, expected: ex, got: gt }) if a == arg && ex == expected && gt == got => {
            if !names(e, arg) {
                failures.push(format!("{what}: message does not name `{arg}`: {e}"));
            }
        }
        other => {
            failures.push(format!("{what}: expected Length {{ {arg}, {expected}, {got} }}, got {:?}", other.err()))
        }
    };
    for d in [-1isize, 1] {
        let (g2, w2) =
            (random_bf16(&mut rng, gl.wrapping_add_signed(d), 0.5, 1.5), random_bf16(&mut rng, wl, -1.0, 1.0));
        expect_length("new, g", FusedRmsNormQkv::new(&gpu, SHAPE, &g2, &w2), "g", gl, g2.len());
        let (g2, w2) = (g.clone(), random_bf16(&mut rng, wl.wrapping_add_signed(d), -1.0, 1.0));
        expect_length("new, w", FusedRmsNormQkv::new(&gpu, SHAPE, &g2, &w2), "w", wl, w2.len());
        let up = |v: &[bf16]| gpu.upload(v).unwrap();
        let g2 = up(&random_bf16(&mut rng, gl.wrapping_add_signed(d), 0.5, 1.5));
        expect_length(
            "from_device, g",
            FusedRmsNormQkv::from_device(&gpu, SHAPE, g2, up(&w)).map_err(Error::from),
            "g",
            gl,
            gl.wrapping_add_signed(d),
        );
        let w2 = up(&random_bf16(&mut rng, wl.wrapping_add_signed(d), -1.0, 1.0));
        expect_length(
            "from_device, w",
            FusedRmsNormQkv::from_device(&gpu, SHAPE, up(&g), w2).map_err(Error::from),
            "w",
            wl,
            wl.wrapping_add_signed(d),
        );
    }
    // An invalid shape is rejected before anything is uploaded.
    match FusedRmsNormQkv::new(&gpu, QkvShape::new(64, 0, 8, 1e-5), &g, &w) {
        Err(Error::Dimension { arg: "q_dim", .. }) => {}
        other => failures.push(format!("new with q_dim = 0: got {:?}", other.err())),
    }
    // Weights on another context.
    let ctx = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
    let foreign = ctx.new_stream().unwrap();
    for arg in ["g", "w"] {
        let dg = if arg == "g" { foreign.clone_htod(&g).unwrap() } else { gpu.upload(&g).unwrap() };
        let dw = if arg == "w" { foreign.clone_htod(&w).unwrap() } else { gpu.upload(&w).unwrap() };
        match FusedRmsNormQkv::from_device(&gpu, SHAPE, dg, dw).map_err(Error::from) {
            Err(Error::WrongDevice { arg: a, .. }) if a == arg => {}
            other => failures.push(format!("from_device, `{arg}` foreign: got {:?}", other.err())),
        }
    }
    // The control: correct weights work.
    FusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap();
    FusedRmsNormQkv::from_device(&gpu, SHAPE, gpu.upload(&g).unwrap(), gpu.upload(&w).unwrap()).unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// With another CUDA context current on the calling thread (as in an engine that owns
/// several), every entry point still works on its own context: each call below is made
/// right after binding a second context, and its result must match the reference (the
/// bounds above; RMSNorm: one bf16 ulp).
#[test]
fn another_current_context_does_not_misdirect_work() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("another_current_context_does_not_misdirect_work");
    let (k, n, nq, nkv) = (SHAPE.hidden, SHAPE.n(), SHAPE.q_dim, SHAPE.kv_dim);
    let (g, w) = random_weights(&mut rng, &SHAPE);
    let op = FusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap();
    let base = UnfusedRmsNormQkv::new(&gpu, SHAPE, &g, &w).unwrap();
    let x = random_bf16(&mut rng, M * k, -3.0, 3.0);
    let rows: Vec<usize> = (0..M).collect();
    let want_qkv = reference::qkv_rows(&x, &g, &w, k, n, SHAPE.eps, &rows);
    let want_gemm = reference::gemm_rows(&x, &w, k, n, &rows);
    let want_norm = reference::rms_norm_f32(&x, &g, M, k, SHAPE.eps);
    let (dx, dg, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap(), gpu.upload(&w).unwrap());
    let other = CudaContext::new_non_primary(0, 0).expect("creating a second CUDA context");
    let bind_other = || other.bind_to_thread().expect("binding the second context");
    let mut failures = Vec::new();
    let mut check = |what: String, got: Result<Vec<bf16>>, want: &[f32], atol: f64, rtol: f64| match got {
        Ok(got) => {
            let c = compare(&got, want, atol, rtol);
            if !c.passes(MAX_REL_FROBENIUS) {
                failures.push(format!("{what}: {c}"));
            }
        }
        Err(e) => failures.push(format!("{what}: {e}")),
    };
    let (qkv_atol, gemm_atol) = (ELEMENT_TOL * rms(&want_qkv), ELEMENT_TOL * rms(&want_gemm));

    for path in PATHS {
        let [mut q, mut kk, mut v] = poisoned(&gpu, &[M * nq, M * nkv, M * nkv]).try_into().unwrap();
        bind_other();
        let got = op.forward_into_with(path, &dx, M, &mut q, &mut kk, &mut v).map(|()| {
            let (q, kk, v) = (gpu.download(&q).unwrap(), gpu.download(&kk).unwrap(), gpu.download(&v).unwrap());
            concat_qkv(&q, &kk, &v, M, &SHAPE)
        });
        check(format!("{path:?}"), got, &want_qkv, qkv_atol, ELEMENT_TOL);
    }
    for which in [Baseline::NormCublas, Baseline::NormNanofuse] {
        let [mut xn, mut y] = poisoned(&gpu, &[M * k, M * n]).try_into().unwrap();
        bind_other();
        let got = base.forward_into(which, &dx, M, &mut xn, &mut y).map(|()| gpu.download(&y).unwrap());
        check(format!("baseline {which:?}"), got, &want_qkv, qkv_atol, ELEMENT_TOL);
    }
    for which in [GemmImpl::Nanofuse, GemmImpl::Cublas] {
        let [mut y] = poisoned(&gpu, &[M * n]).try_into().unwrap();
        bind_other();
        let got = ops::gemm(&gpu, which, &dx, &dw, &mut y, M, k, n).map(|()| gpu.download(&y).unwrap());
        check(format!("ops::gemm({which:?})"), got, &want_gemm, gemm_atol, ELEMENT_TOL);
    }
    let [mut y] = poisoned(&gpu, &[M * k]).try_into().unwrap();
    bind_other();
    let got = ops::rms_norm(&gpu, &dx, &dg, &mut y, M, k, SHAPE.eps).map(|()| gpu.download(&y).unwrap());
    check("ops::rms_norm".into(), got, &want_norm, 1e-6, 1.0 / 128.0);
    gpu.synchronize().unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Outputs that alias an input or each other (two `CudaSlice`s over one allocation, made
/// with `upgrade_device_ptr`; the alias is never dropped, so nothing is freed twice).
#[test]
fn overlapping_buffers_are_overlap_errors() {
    let Some(gpu) = common::gpu() else { return };
    let (op, base) = small_ops(&gpu);
    let (k, nq, nkv) = (SHAPE.hidden, SHAPE.q_dim, SHAPE.kv_dim);
    let stream = gpu.stream();
    let x = gpu.alloc_zeros::<bf16>(M * k).unwrap();
    let mut q = gpu.alloc_zeros::<bf16>(M * nq).unwrap();
    let mut kk = gpu.alloc_zeros::<bf16>(M * nkv).unwrap();
    let mut v = gpu.alloc_zeros::<bf16>(M * nkv).unwrap();
    let alias = |buf: &CudaSlice<bf16>, len: usize| {
        let (ptr, _sync) = buf.device_ptr(stream);
        assert!(buf.len() >= len);
        // SAFETY: `ptr` is a live allocation of at least `len` bf16; the alias is never
        // dropped (ManuallyDrop), so it frees nothing.
        ManuallyDrop::new(unsafe { stream.upgrade_device_ptr::<bf16>(ptr, len) })
    };
    // q over x (same byte count: M·q_dim < M·K).
    let mut q_on_x = alias(&x, M * nq);
    for path in PATHS {
        let r = op.forward_into_with(path, &x, M, &mut *q_on_x, &mut kk, &mut v);
        assert!(matches!(r, Err(Error::Overlap { a: "q", b: "x" })), "{path:?}, q over x: {r:?}");
    }
    // k over q.
    let mut k_on_q = alias(&q, M * nkv);
    let r = op.forward_into(&x, M, &mut q, &mut *k_on_q, &mut v);
    assert!(matches!(r, Err(Error::Overlap { a: "q", b: "k" })), "k over q: {r:?}");
    // A baseline's y over x (M·N < M·K).
    let mut xn = gpu.alloc_zeros::<bf16>(M * k).unwrap();
    let mut y_on_x = alias(&x, M * SHAPE.n());
    let r = base.forward_into(Baseline::NormCublas, &x, M, &mut xn, &mut *y_on_x);
    assert!(matches!(r, Err(Error::Overlap { a: "y", b: "x" })), "baseline, y over x: {r:?}");
    // ops::rms_norm writing over its input.
    let g = gpu.alloc_zeros::<bf16>(k).unwrap();
    let mut y_on_x = alias(&x, M * k);
    let r = ops::rms_norm(&gpu, &x, &g, &mut *y_on_x, M, k, 1e-5);
    let Err(e @ Error::Overlap { a: "y", b: "x" }) = r else { panic!("rms_norm, y over x: {r:?}") };
    assert!(names(&e, "y") && names(&e, "x"), "{e}");
    gpu.synchronize().unwrap();
}

/// M = 0: Ok, and nothing written (`forward`, which allocates, returns a Dimension error). The per-token buffers are zero-length views at the
/// start of allocations (sized for M = 3) filled with a sentinel; every allocation must
/// still hold only the sentinel afterwards.
#[test]
fn m_zero_is_a_no_op() {
    let Some(gpu) = common::gpu() else { return };
    let (op, base) = small_ops(&gpu);
    let sentinel = bf16::from_f32(-77.0);
    let mut failures = Vec::new();
    for case in cases(&gpu, &op, &base) {
        let mut bufs: Vec<CudaSlice<bf16>> =
            case.args.iter().map(|a| gpu.upload(&vec![sentinel; a.len(M)]).unwrap()).collect();
        let (ins, outs) = bufs.split_at_mut(case.inputs);
        let r = {
            let ins: Vec<CudaView<bf16>> = ins.iter().zip(&case.args).map(|(b, a)| b.slice(0..a.len(0))).collect();
            let mut outs: Vec<CudaViewMut<bf16>> =
                outs.iter_mut().zip(&case.args[case.inputs..]).map(|(b, a)| b.slice_mut(0..a.len(0))).collect();
            (case.call)(0, &ins, &mut outs)
        };
        if case.name == "forward" {
            // The allocating form has nothing to return for M = 0: a typed error instead.
            if !matches!(r, Err(Error::Dimension { arg: "m", got: 0, .. })) {
                failures.push(format!("forward: M = 0 gave {r:?}, expected Dimension {{ arg: \"m\" }}"));
            }
            continue;
        }
        if let Err(e) = r {
            failures.push(format!("{}: M = 0 failed: {e}", case.name));
            continue;
        }
        gpu.synchronize().unwrap();
        for (b, a) in bufs.iter().zip(&case.args) {
            let host = gpu.download(b).unwrap();
            if let Some(i) = host.iter().position(|v| v.to_bits() != sentinel.to_bits()) {
                failures.push(format!("{}: M = 0 wrote `{}`[{i}] = {}", case.name, a.name, host[i]));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A `Dimension` error for `arg` with value `got`, its message naming `arg`.
fn is_dimension(arg: &'static str, got: usize) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Dimension { arg: a, got: g, .. } if *a == arg && *g == got) && names(e, arg)
}

/// A `TooLarge` error for M = MAX_DIM + 1 under one of `args` (the ops spell M differently).
fn is_too_large_m(args: &'static [&'static str]) -> impl Fn(&Error) -> bool {
    move |e| {
        matches!(e, Error::TooLarge { arg, got, .. } if args.contains(arg) && *got == MAX_DIM as u64 + 1)
            && args.iter().any(|a| names(e, a))
    }
}

#[test]
fn bad_dimensions_are_dimension_or_too_large_errors() {
    let Some(gpu) = common::gpu() else { return };
    let (op, base) = small_ops(&gpu);
    let (k, n) = (SHAPE.hidden, SHAPE.n());
    let x = gpu.alloc_zeros::<bf16>(M * k).unwrap();
    let w = gpu.alloc_zeros::<bf16>(n * k).unwrap();
    let g = gpu.alloc_zeros::<bf16>(k).unwrap();
    let mut y = gpu.alloc_zeros::<bf16>(M * k.max(n)).unwrap();
    let mut q = gpu.alloc_zeros::<bf16>(M * SHAPE.q_dim).unwrap();
    let mut kk = gpu.alloc_zeros::<bf16>(M * SHAPE.kv_dim).unwrap();
    let mut v = gpu.alloc_zeros::<bf16>(M * SHAPE.kv_dim).unwrap();
    let mut xn = gpu.alloc_zeros::<bf16>(M * k).unwrap();
    let mut failures = Vec::new();
    let mut expect = |what: &str, r: Result<()>, ok: &dyn Fn(&Error) -> bool| match r {
        Err(e) if ok(&e) => {}
        other => failures.push(format!("{what}: got {other:?}")),
    };
    let (dim, too_large) = (is_dimension, is_too_large_m);

    // ops::gemm: N = 0, K not a multiple of 8, M past the index range.
    for which in [GemmImpl::Nanofuse, GemmImpl::Cublas] {
        expect("gemm N = 0", ops::gemm(&gpu, which, &x, &w, &mut y, M, k, 0), &dim("N", 0));
        expect("gemm K = 12", ops::gemm(&gpu, which, &x, &w, &mut y, M, 12, n), &dim("K", 12));
        expect("gemm K = 0", ops::gemm(&gpu, which, &x, &w, &mut y, M, 0, n), &dim("K", 0));
        expect("gemm M > MAX_DIM", ops::gemm(&gpu, which, &x, &w, &mut y, MAX_DIM + 1, k, n), &too_large(&["M", "m"]));
    }
    // ops::rms_norm: K, eps, rows.
    expect("rms_norm K = 12", ops::rms_norm(&gpu, &x, &g, &mut y, M, 12, 1e-5), &dim("K", 12));
    for eps in [-1.0, f32::NAN, f32::INFINITY] {
        let r = ops::rms_norm(&gpu, &x, &g, &mut y, M, k, eps);
        expect("rms_norm bad eps", r, &|e| matches!(e, Error::Value { arg: "eps", .. }) && names(e, "eps"));
    }
    let r = ops::rms_norm(&gpu, &x, &g, &mut y, MAX_DIM + 1, k, 1e-5);
    expect("rms_norm rows > MAX_DIM", r, &too_large(&["M", "m", "rows"]));
    // The op: M past the index range on every path, and the decode path past its M limit.
    for path in PATHS {
        let r = op.forward_into_with(path, &x, MAX_DIM + 1, &mut q, &mut kk, &mut v);
        expect(&format!("{path:?} M > MAX_DIM"), r, &too_large(&["M", "m"]));
    }
    let r = base.forward_into(Baseline::NormCublas, &x, MAX_DIM + 1, &mut xn, &mut y);
    expect("baseline M > MAX_DIM", r, &too_large(&["M", "m"]));
    let m = DECODE_MAX_M + 1;
    let x2 = gpu.alloc_zeros::<bf16>(m * k).unwrap();
    let mut q2 = gpu.alloc_zeros::<bf16>(m * SHAPE.q_dim).unwrap();
    let mut k2 = gpu.alloc_zeros::<bf16>(m * SHAPE.kv_dim).unwrap();
    let mut v2 = gpu.alloc_zeros::<bf16>(m * SHAPE.kv_dim).unwrap();
    let r = op.forward_into_with(Route::FusedDecode, &x2, m, &mut q2, &mut k2, &mut v2);
    expect("FusedDecode M = DECODE_MAX_M + 1", r, &dim("M", m));
    // ... which the other paths serve.
    for path in [Route::FusedTiled, Route::NormCublas, Route::Auto] {
        op.forward_into_with(path, &x2, m, &mut q2, &mut k2, &mut v2)
            .unwrap_or_else(|e| panic!("{path:?} M = {m}: {e}"));
    }
    gpu.synchronize().unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn bad_ordinals_and_modules_are_typed_errors() {
    let Some(_gpu) = common::gpu() else { return };
    let count = nanofuse::device_count().unwrap();
    assert!(count >= 1);
    for ordinal in [count, count + 7] {
        match nanofuse::open(ordinal) {
            Err(Error::NoDevice { ordinal: o, count: c }) => assert_eq!((o, c), (ordinal, count)),
            other => panic!("open({ordinal}) with {count} device(s): {:?}", other.err()),
        }
    }
    // PTX built for a newer architecture than any device.
    match Gpu::new(0, nanofuse::KERNELS_PTX, "sm_990") {
        Err(e @ Error::UnsupportedArch { .. }) => assert!(e.to_string().contains("sm_990"), "{e}"),
        other => panic!("sm_990: {:?}", other.err()),
    }
    // An architecture name that is not sm_XY, and text that is not PTX.
    match Gpu::new(0, nanofuse::KERNELS_PTX, "compute_90") {
        Err(e @ Error::Module { .. }) => assert!(e.to_string().contains("compute_90"), "{e}"),
        other => panic!("compute_90: {:?}", other.err()),
    }
    match Gpu::new(0, "this is not PTX", "sm_80") {
        Err(Error::Module { .. }) => {}
        other => panic!("garbage PTX: {:?}", other.err()),
    }
}

/// Random shapes within the supported space, every path twice and both baselines, against
/// the reference on every row.
#[test]
fn random_shapes_match_the_reference_on_every_path() {
    const CASES: usize = 12;
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("random_shapes_match_the_reference_on_every_path");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in 0..CASES {
        // The first two cases pin the corners: K = 8 at M = 1, K = 2048 at M = 80 with the
        // widest N. Of the rest, the even cases draw M within the decode kernel's range, so
        // that path is always exercised, and the odd ones from all of 1..=80.
        let (k, m) = match case {
            0 => (8, 1),
            1 => (2048, 80),
            _ => {
                let max_m = if case % 2 == 0 { DECODE_MAX_M.min(80) } else { 80 };
                (8 * rng.random_range(1..=256usize), rng.random_range(1..=max_m))
            }
        };
        let (nq, nkv) = if case == 1 { (300, 300) } else { (rng.random_range(1..=300), rng.random_range(1..=300)) };
        let eps = [0.0, 1e-6, 1e-5][rng.random_range(0..3)];
        let shape = QkvShape::new(k, nq, nkv, eps);
        let n = shape.n();
        let name = format!("case {case}: M={m} K={k} Nq={nq} Nkv={nkv} eps={eps}");
        let (g, w) = random_weights(&mut rng, &shape);
        let op = FusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap();
        let base = UnfusedRmsNormQkv::new(&gpu, shape, &g, &w).unwrap();
        let x = random_bf16(&mut rng, m * k, -3.0, 3.0);
        let rows: Vec<usize> = (0..m).collect();
        let want = reference::qkv_rows(&x, &g, &w, k, n, eps, &rows);
        let dx = gpu.upload(&x).unwrap();
        let check = |label: &str, got: &[bf16], failures: &mut Vec<String>| {
            let unwritten = got.iter().filter(|v| v.is_nan()).count();
            let c = compare(got, &want, ELEMENT_TOL * rms(&want), ELEMENT_TOL);
            if unwritten > 0 || !c.passes(MAX_REL_FROBENIUS) {
                failures.push(format!("{name} {label}: {unwritten} unwritten; {c}"));
            } else {
                println!("{name} {label}: {c}");
            }
        };

        for path in PATHS {
            let mut runs = Vec::new();
            for _ in 0..2 {
                let mut q = gpu.alloc_zeros::<bf16>(m * nq).unwrap();
                let mut kk = gpu.alloc_zeros::<bf16>(m * nkv).unwrap();
                let mut v = gpu.alloc_zeros::<bf16>(m * nkv).unwrap();
                for b in [&mut q, &mut kk, &mut v] {
                    gpu.fill_nan(b).unwrap();
                }
                let r = op.forward_into_with(path, &dx, m, &mut q, &mut kk, &mut v);
                if path == Route::FusedDecode && m > DECODE_MAX_M {
                    if !matches!(r, Err(Error::Dimension { arg: "M", .. })) {
                        failures.push(format!("{name} {path:?}: expected a Dimension error for M, got {r:?}"));
                    }
                    break;
                }
                if let Err(e) = r {
                    failures.push(format!("{name} {path:?}: {e}"));
                    break;
                }
                let (q, kk, v) = (gpu.download(&q).unwrap(), gpu.download(&kk).unwrap(), gpu.download(&v).unwrap());
                runs.push(concat_qkv(&q, &kk, &v, m, &shape));
            }
            if runs.len() < 2 {
                continue;
            }
            checked += 1;
            check(&format!("{path:?}"), &runs[0], &mut failures);
            if let Some(i) = runs[0].iter().zip(&runs[1]).position(|(a, b)| a.to_bits() != b.to_bits()) {
                failures.push(format!("{name} {path:?}: two runs differ, first at {i} (row {})", i / n));
            }
        }
        for which in [Baseline::NormCublas, Baseline::NormNanofuse] {
            let mut xn = gpu.alloc_zeros::<bf16>(m * k).unwrap();
            let mut y = gpu.alloc_zeros::<bf16>(m * n).unwrap();
            gpu.fill_nan(&mut y).unwrap();
            match base.forward_into(which, &dx, m, &mut xn, &mut y) {
                Ok(()) => check(&format!("baseline {which:?}"), &gpu.download(&y).unwrap(), &mut failures),
                Err(e) => failures.push(format!("{name} baseline {which:?}: {e}")),
            }
        }
    }
    println!("{checked} path runs checked");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
