//! The RMSNorm kernel against the CPU reference (GPU; skipped without a device), in both
//! output orders: natural (`ops::rms_norm`) and k-interleaved (`ops::rms_norm_interleaved`,
//! checked against `reference::interleave_k` of the natural reference), whose second pass
//! transposes each whole 32-element block across the four lanes holding it and leaves a
//! partial last block natural.
//!
//! Bound: the kernel and the reference do the same f32 arithmetic and round once to bf16,
//! differing only in summation order and `rsqrt.approx` (2^-22.9): every element must be
//! within one bf16 ulp (`|got − ref| <= 2^-7 |ref| + 1e-6`) and the relative Frobenius
//! error at most 2e-3.

mod common;

use common::random_bf16;
use nanofuse::reference::{self, compare};
use nanofuse::{bf16, ops};
use rand::RngExt;

const ROWS: [usize; 4] = [1, 3, 64, 2048];
// 1000: a multiple of 8 but not of 256·8, with a partial last 32-element block of one
// 16-byte chunk; 4216: a partial last block of three chunks, after whole blocks that leave
// the last warp of the loop partly idle.
const HIDDEN: [usize; 5] = [1024, 4096, 8192, 1000, 4216];
const MAX_REL_FROBENIUS: f64 = 2e-3;

#[test]
fn rms_norm_matches_cpu_reference() {
    let Some(gpu) = common::gpu() else { return };
    let mut rng = common::rng("rms_norm_matches_cpu_reference");
    let mut failures = Vec::new();
    for &k in &HIDDEN {
        for &rows in &ROWS {
            let eps = 1e-6;
            let x = random_bf16(&mut rng, rows * k, -2.0, 2.0);
            let g = random_bf16(&mut rng, k, 0.5, 1.5);
            let (dx, dg) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
            let want = reference::rms_norm_f32(&x, &g, rows, k, eps);
            for interleave in [false, true] {
                let mut dy = gpu.alloc_zeros::<bf16>(rows * k).unwrap();
                gpu.fill_nan(&mut dy).unwrap();
                let want = if interleave {
                    ops::rms_norm_interleaved(&gpu, &dx, &dg, &mut dy, rows, k, eps).unwrap();
                    reference::interleave_k(&want, k)
                } else {
                    ops::rms_norm(&gpu, &dx, &dg, &mut dy, rows, k, eps).unwrap();
                    want.clone()
                };
                let got = gpu.download(&dy).unwrap();
                let c = compare(&got, &want, 1e-6, 1.0 / 128.0);
                println!("rows {rows:>4} k {k:>5} interleaved {interleave:<5}: {c}");
                if !c.passes(MAX_REL_FROBENIUS) {
                    failures.push(format!("rows {rows} k {k} interleaved {interleave}: {c}"));
                }
            }
        }
    }
    // One extra scale check: a row scaled by a constant normalizes to the same output.
    let k = 4096;
    let x = random_bf16(&mut rng, k, -1.0, 1.0);
    let s = 2f32.powi(rng.random_range(-8..8));
    let xs: Vec<bf16> = x.iter().map(|v| bf16::from_f32(v.to_f32() * s)).collect();
    let g = random_bf16(&mut rng, k, 0.5, 1.5);
    let run = |x: &[bf16]| {
        let (dx, dg) = (gpu.upload(x).unwrap(), gpu.upload(&g).unwrap());
        let mut dy = gpu.alloc_zeros::<bf16>(k).unwrap();
        ops::rms_norm(&gpu, &dx, &dg, &mut dy, 1, k, 0.0).unwrap();
        gpu.download(&dy).unwrap()
    };
    let (a, b) = (run(&x), run(&xs));
    let af: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
    let c = compare(&b, &af, 1e-6, 1.0 / 128.0);
    if !c.passes(MAX_REL_FROBENIUS) {
        failures.push(format!("scale invariance (x·{s}): {c}"));
    }
    assert!(failures.is_empty(), "RMSNorm mismatches:\n{}", failures.join("\n"));
}
