//! Extreme and mismatched arguments for every public CPU function of the host API (CPU; no
//! GPU needed): a deterministic sweep over the values where arithmetic breaks (0, 1, 2^31,
//! 2^32, usize::MAX, ...), each call under `catch_unwind`.
//! * `QkvShape` and `MlpShape` (`n`, `validate`), `plan` (`check_dims`, `checked_len`,
//!   `decode_plan`, `tiled_plan`, `max_decode_k`), the `auto_*` crossovers, `arch_number`:
//!   never panic; bad input is a typed error;
//! * `reference` (test helpers with documented preconditions): may panic only with their
//!   own precondition messages, never by overflow, division by zero or an out-of-bounds
//!   index.

use std::panic::{AssertUnwindSafe, catch_unwind};

use nanofuse::plan::{self, DecodeShape, Tile};
use nanofuse::reference;
use nanofuse::{MlpShape, QkvShape, arch_number, bf16};

const SIZES: [usize; 14] = [
    0,
    1,
    2,
    8,
    16,
    17,
    4096,
    (1 << 31) - 1,
    1 << 31,
    1 << 32,
    usize::MAX / 2,
    usize::MAX / 2 + 1,
    usize::MAX - 1,
    usize::MAX,
];
const U32S: [u32; 6] = [0, 1, 132, 232_448, 1 << 31, u32::MAX];

/// Runs `f`; a panic fails with `what` and the panic's message.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        panic!("{what} panicked: {}", message(&*p));
    }
}

fn message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Runs `f`; a panic is allowed only with a precondition message of `reference`, not one
/// that Rust raises for arithmetic or indexing.
fn only_precondition_panics<T>(what: &str, f: impl FnOnce() -> T) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        let msg = message(&*p);
        let rust_raised = ["attempt to", "overflow", "divide by zero", "out of range for slice", "index out of bounds"];
        let raw = rust_raised.iter().any(|r| msg.contains(r)) && !msg.contains("outputs overflow usize");
        assert!(!raw && !msg.is_empty(), "{what}: not a precondition panic: {msg:?}");
    }
}

#[test]
fn shapes_never_panic() {
    for &a in &SIZES {
        for &b in &SIZES {
            for &c in &SIZES {
                for eps in [0.0, 1e-6, -1.0, f32::NAN, f32::INFINITY] {
                    let s = QkvShape::new(a, b, c, eps);
                    no_panic(&format!("{s:?}.n()"), || s.n());
                    no_panic(&format!("{s:?}.validate()"), || s.validate());
                }
            }
            for eps in [0.0, 1e-6, -1.0, f32::NAN] {
                let s = MlpShape::new(a, b, eps);
                no_panic(&format!("{s:?}.validate()"), || s.validate());
            }
        }
    }
    // The saturated N is far past the limit, so validate rejects it.
    assert!(QkvShape::new(8, usize::MAX, usize::MAX, 1e-6).validate().is_err());
    assert_eq!(QkvShape::new(8, usize::MAX, 1, 1e-6).n(), usize::MAX);
}

#[test]
fn planners_never_panic() {
    let shapes =
        [None, Some(DecodeShape { warp_split: 8, k_splits: 4, early: Some(true), trigger_first: None, ring: None })]
            .into_iter()
            .chain([0, 1, 3, 64, u32::MAX].into_iter().map(|v| {
                Some(DecodeShape {
                    warp_split: v,
                    k_splits: v,
                    early: None,
                    trigger_first: Some(true),
                    ring: Some(true),
                })
            }));
    let shapes: Vec<_> = shapes.collect();
    for &m in &SIZES {
        for &k in &SIZES {
            no_panic(&format!("checked_len({m}, {k})"), || plan::checked_len("m * k", m, k));
            for &n in &SIZES {
                no_panic(&format!("check_dims({m}, {k}, {n})"), || plan::check_dims(m, k, n));
                for &sms in &U32S {
                    for tile in [None, Some(Tile::Small), Some(Tile::Large)] {
                        no_panic(&format!("tiled_plan({m}, {k}, {n}, {sms}, {tile:?})"), || {
                            plan::tiled_plan(m, k, n, sms, tile)
                        });
                    }
                    for &smem in &U32S {
                        for &force in &shapes {
                            no_panic(&format!("decode_plan({m}, {k}, {n}, {sms}, {smem}, {force:?})"), || {
                                plan::decode_plan(m, k, n, sms, smem, force)
                            });
                        }
                    }
                }
            }
        }
        for &smem in &U32S {
            no_panic(&format!("max_decode_k({smem}, {m})"), || plan::max_decode_k(smem, m));
        }
        no_panic("auto crossovers", || {
            (
                nanofuse::auto_fused_max_m(m),
                nanofuse::auto_packed_fused_max_m(m),
                nanofuse::auto_split_max_m(m),
                nanofuse::auto_mlp_fused_max_m(m),
            )
        });
        for &n in &SIZES {
            no_panic(&format!("auto_proj_fused_max_m({m}, {n})"), || nanofuse::auto_proj_fused_max_m(m, n));
        }
    }
    assert_eq!(plan::max_decode_k(u32::MAX, usize::MAX), 0);
    for arch in ["", "sm_", "sm_90", "sm_90a", "sm_4294967296", "sm_99999999999999999999", "compute_90", "sm_-1"] {
        no_panic(&format!("arch_number({arch:?})"), || arch_number(arch));
    }
}

#[test]
fn references_panic_only_on_their_preconditions() {
    let v = |len: usize| vec![bf16::ONE; len];
    let f = |len: usize| vec![1.0f32; len];
    let lens = [0usize, 1, 2, 3, 8, 16];
    let dims = [0usize, 1, 2, 8, 1 << 31, usize::MAX];
    for &a in &lens {
        for &b in &lens {
            for &k in &dims {
                for &rows in &dims {
                    only_precondition_panics(&format!("rms_norm({a}, {b}, {rows}, {k})"), || {
                        reference::rms_norm(&v(a), &v(b), rows, k, 1e-6)
                    });
                }
                only_precondition_panics(&format!("interleave_k({a}, {k})"), || reference::interleave_k(&v(a), k));
                for &n in &dims {
                    for rows in [&[][..], &[0], &[1, 0], &[usize::MAX]] {
                        only_precondition_panics(&format!("qkv_rows({a}, {b}, k {k}, n {n}, {rows:?})"), || {
                            reference::qkv_rows(&v(a), &v(b), &v(a * b), k, n, 1e-6, rows)
                        });
                        only_precondition_panics(&format!("gemm_rows({a}, {b}, k {k}, n {n}, {rows:?})"), || {
                            reference::gemm_rows(&v(a), &v(b), k, n, rows)
                        });
                        only_precondition_panics(&format!("proj_residual_rows({a}, {b}, k {k}, n {n})"), || {
                            reference::proj_residual_rows(&v(a), &v(b), &v(a), k, n, rows)
                        });
                        only_precondition_panics(&format!("gate_up_rows({a}, {b}, k {k}, n {n})"), || {
                            reference::gate_up_rows(&v(a), &v(b), &v(a * b), &v(a * b), k, n, 1e-6, rows)
                        });
                    }
                    let s = QkvShape::new(k, n, k, 1e-6);
                    only_precondition_panics(&format!("concat_qkv({a}, {b}, {rows:?}, {s:?})", rows = n), || {
                        reference::concat_qkv(&v(a), &v(b), &v(b), n, &s)
                    });
                }
            }
            only_precondition_panics(&format!("compare({a}, {b})"), || reference::compare(&v(a), &f(b), 0.0, 0.0));
            no_panic(&format!("rms({a})"), || reference::rms(&f(a)));
            no_panic(&format!("inv_rms({a})"), || reference::inv_rms(&v(a), 0.0));
            no_panic(&format!("rms_norm_f64({a}, {b})"), || reference::rms_norm_f64(&vec![1.0; a], &vec![1.0; b], 0.0));
        }
    }
    // Empty inputs are empty outputs, not a division by zero.
    assert!(reference::qkv_rows(&[], &[], &[], 0, 0, 1e-6, &[]).is_empty());
    assert!(reference::rms_norm(&[], &[], 0, 0, 1e-6).is_empty());
}
