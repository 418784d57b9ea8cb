//! The MLP ops' CPU side (no GPU needed):
//! * `MlpShape::validate`: one test per error kind, asserting the variant, its fields and
//!   that the message names the argument in backquotes; valid neighbours pass, so the
//!   limits are exact;
//! * the CPU references `reference::gate_up_rows` and `reference::proj_residual_rows`
//!   against a naive computation in f64 on tiny inputs chosen so that every step before a
//!   rounding is exact in both (then the results must agree bitwise), with roundings that
//!   do change values;
//! * `config::mlp::gate_up_row`: a bijection of the 2I gate and up rows onto `0..2I`, in
//!   blocks of 8 gate rows then their 8 up rows.

use nanofuse::plan::MAX_DIM;
use nanofuse::reference;
use nanofuse::{Error, MlpShape, bf16};
use nanofuse_kernels_gpu::config::mlp::{GATE_UP_BLOCK, gate_up_row};

/// Asserts that the error's message names `arg` (as `` `arg` ``).
#[track_caller]
fn assert_names(e: &Error, arg: &str) {
    let msg = e.to_string();
    assert!(msg.contains(&format!("`{arg}`")), "message of {e:?} does not name `{arg}`: {msg}");
}

/// The error of validating `(hidden, inter, eps)`, or a panic.
#[track_caller]
fn invalid(hidden: usize, inter: usize, eps: f32) -> Error {
    match MlpShape::new(hidden, inter, eps).validate() {
        Ok(()) => panic!("MlpShape({hidden}, {inter}, {eps}) validated"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------
// MlpShape::validate

#[test]
fn mlp_valid_shapes_pass() {
    for (h, i, eps) in [
        (1024, 3072, 1e-6),
        (2048, 8192, 1e-5),
        (4096, 14336, 1e-5),
        (8192, 28672, 1e-5),
        (8, 8, 0.0),
        (1032, 2056, 1e-5),
    ] {
        MlpShape::new(h, i, eps).validate().unwrap_or_else(|e| panic!("({h}, {i}): {e}"));
    }
    // The largest dims the kernels index: H itself, and 2I (the gate/up weight's rows).
    MlpShape::new(MAX_DIM / 8 * 8, 8, 1e-5).validate().unwrap();
    MlpShape::new(8, MAX_DIM / 2 / 8 * 8, 1e-5).validate().unwrap();
}

#[test]
fn mlp_dims_zero_or_not_a_multiple_of_8_are_dimension_errors() {
    for v in [0, 1, 4, 7, 12, 1001, 4100] {
        for (arg, (h, i)) in [("hidden", (v, 64)), ("inter", (64, v))] {
            let e = invalid(h, i, 1e-5);
            let Error::Dimension { arg: a, got, expected } = e else { panic!("{arg} = {v}: {e:?}") };
            assert_eq!((a, got), (arg, v), "{arg} = {v}");
            assert!(expected.contains('8'), "expected {expected:?} does not say 'multiple of 8'");
            assert_names(&e, arg);
        }
    }
    // hidden is checked first.
    assert!(matches!(invalid(12, 12, 1e-5), Error::Dimension { arg: "hidden", got: 12, .. }));
}

#[test]
fn mlp_bad_eps_is_a_value_error() {
    for eps in [-1e-6, -0.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::MIN_POSITIVE] {
        let e = invalid(64, 64, eps);
        let Error::Value { arg: "eps", ref got, .. } = e else { panic!("eps = {eps}: {e:?}") };
        assert_eq!(got, &eps.to_string(), "eps = {eps}: reported value");
        assert_names(&e, "eps");
    }
    for eps in [0.0, -0.0, f32::MIN_POSITIVE, 1e-6, 1.0, f32::MAX] {
        MlpShape::new(64, 64, eps).validate().unwrap_or_else(|e| panic!("eps = {eps}: {e}"));
    }
}

#[test]
fn mlp_dims_over_max_dim_are_too_large() {
    let over = (MAX_DIM + 1).next_multiple_of(8); // 2^31: a multiple of 8, one past the limit
    let huge = usize::MAX / 8 * 8;
    for (arg, (h, i), got) in [
        ("hidden", (over, 64), over),
        ("hidden", (huge, 64), huge),
        ("inter", (64, over), over),
        ("inter", (64, huge), huge),
        // I within the limit, 2I (the gate/up weight's rows) one multiple of 16 past it.
        ("2 inter", (64, (MAX_DIM / 2 + 1).next_multiple_of(8)), 2 * (MAX_DIM / 2 + 1).next_multiple_of(8)),
    ] {
        let e = invalid(h, i, 1e-5);
        let Error::TooLarge { arg: a, got: g, limit, .. } = e else { panic!("{arg}: {e:?}") };
        assert_eq!((a, g, limit), (arg, got as u64, MAX_DIM as u64), "{arg}");
        assert_names(&e, arg);
    }
}

// ---------------------------------------------------------------------------------------
// The references against a naive f64 computation

fn bf(v: &[f64]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f64(x)).collect()
}

/// Round to bf16 and back (round to nearest even, from f64 directly).
fn round(v: f64) -> f64 {
    bf16::from_f64(v).to_f64()
}

/// `rows x cols` weights, multiples of 1/128 in [-127/128, 127/128] (exact in bf16), from
/// a fixed pattern (`seed` varies it): their dot products with small integers are exact in
/// f32 and f64 and need more than bf16's 8 significant bits.
fn pattern(rows: usize, cols: usize, seed: usize) -> Vec<f64> {
    (0..rows * cols).map(|e| (((e * 37 + seed * 11 + e / cols * 13) % 255) as f64 - 127.0) / 128.0).collect()
}

/// Two rows of 8 whose mean squares are 1 and 4 (so `inv_rms` is 1 and 1/2 exactly, with
/// eps = 0), and a gain of powers of two: every normalized value is exact.
const H_ROWS: [f64; 16] = [2., 1., 1., 1., -1., 0., 0., 0., -2., 4., 0., 2., 2., -2., 0., 0.];
const GAIN: [f64; 8] = [1., 0.5, 2., 1., 0.25, 1., 1., 4.];

/// `silu(v) = v / (1 + e^-v)` in f64.
fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

#[test]
fn gate_up_rows_matches_a_naive_computation_bitwise() {
    let (m, h, i) = (2, 8, 16);
    let (wg, wu) = (pattern(i, h, 1), pattern(i, h, 2));
    let mut want = Vec::new();
    let mut rounded = 0;
    for row in H_ROWS.chunks(h) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
        let inv = 1.0 / ms.sqrt();
        let xn: Vec<f64> = row.iter().zip(&GAIN).map(|(x, g)| x * inv * g).collect();
        for c in 0..i {
            let dot = |w: &[f64]| xn.iter().zip(&w[c * h..(c + 1) * h]).map(|(a, b)| a * b).sum::<f64>();
            let (gate, up) = (dot(&wg), dot(&wu));
            rounded += usize::from(round(gate) != gate) + usize::from(round(up) != up);
            // PyTorch on bf16 tensors: gate and up rounded, silu rounded, the product exact here.
            want.push((round(silu(round(gate))) * round(up)) as f32);
        }
    }
    assert!(rounded >= 8, "only {rounded} of the {} gate/up values need rounding", 2 * m * i);
    let got = reference::gate_up_rows(&bf(&H_ROWS), &bf(&GAIN), &bf(&wg), &bf(&wu), h, i, 0.0, &[0, 1]);
    assert_eq!(got.len(), m * i);
    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "element {j} (row {}, col {}): got {g}, expected {w}", j / i, j % i);
    }
    // Rows are taken as listed.
    let swapped = reference::gate_up_rows(&bf(&H_ROWS), &bf(&GAIN), &bf(&wg), &bf(&wu), h, i, 0.0, &[1, 0]);
    assert_eq!(swapped[..i], got[i..]);
    assert_eq!(swapped[i..], got[..i]);
    // eps enters under the root: with eps = 3, row 0's inv_rms is 1/2.
    let eps3 = reference::gate_up_rows(&bf(&H_ROWS[..h]), &bf(&GAIN), &bf(&wg), &bf(&wu), h, i, 3.0, &[0]);
    for c in 0..i {
        let xn: Vec<f64> = H_ROWS[..h].iter().zip(&GAIN).map(|(x, g)| x * 0.5 * g).collect();
        let dot = |w: &[f64]| xn.iter().zip(&w[c * h..(c + 1) * h]).map(|(a, b)| a * b).sum::<f64>();
        let w = (round(silu(round(dot(&wg)))) * round(dot(&wu))) as f32;
        assert_eq!(eps3[c].to_bits(), w.to_bits(), "eps = 3, col {c}: got {}, expected {w}", eps3[c]);
    }
}

#[test]
fn proj_residual_rows_matches_a_naive_computation_bitwise() {
    let (m, k, n) = (2, 8, 8);
    let x: Vec<f64> = (0..m * k).map(|e| ((e * 5 + 3) % 15) as f64 - 7.0).collect();
    let w = pattern(n, k, 3);
    let residual: Vec<f64> = (0..m * n).map(|e| ((e * 3) % 11) as f64 * 0.375 - 2.0).collect();
    let mut want = Vec::new();
    let mut rounded = 0;
    for r in 0..m {
        for c in 0..n {
            let y: f64 = (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum();
            rounded += usize::from(round(y) != y);
            // The product rounded to bf16 (PyTorch's linear output), the sum exact here.
            want.push((round(y) + residual[r * n + c]) as f32);
        }
    }
    assert!(rounded >= 4, "only {rounded} of the {} products need rounding", m * n);
    let got = reference::proj_residual_rows(&bf(&x), &bf(&w), &bf(&residual), k, n, &[0, 1]);
    assert_eq!(got.len(), m * n);
    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "element {j} (row {}, col {}): got {g}, expected {w}", j / n, j % n);
    }
    // One row alone takes its own residual row.
    let one = reference::proj_residual_rows(&bf(&x), &bf(&w), &bf(&residual), k, n, &[1]);
    assert_eq!(one[..], got[n..]);
}

// ---------------------------------------------------------------------------------------
// config::mlp::gate_up_row

#[test]
fn gate_up_row_is_a_blocked_bijection() {
    assert_eq!(GATE_UP_BLOCK, 8);
    for inter in [8, 16, 24, 2008, 3072, 28672] {
        let mut seen = vec![false; 2 * inter];
        for j in 0..inter {
            for up in [false, true] {
                let r = gate_up_row(j, up);
                assert!(r < 2 * inter, "I = {inter}: row {r} of ({j}, {up}) out of range");
                assert!(!seen[r], "I = {inter}: row {r} taken twice");
                seen[r] = true;
                // Block j / 8 holds rows 16 (j / 8) ..: gate j first, its up row 8 later.
                assert_eq!(r, 16 * (j / 8) + j % 8 + if up { 8 } else { 0 }, "I = {inter}, ({j}, {up})");
            }
        }
        assert!(seen.iter().all(|&s| s), "I = {inter}: not onto");
    }
}
