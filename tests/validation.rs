//! Every typed error the library returns without a device (CPU; no GPU needed): one test
//! per error kind of `QkvShape::validate`, `plan::check_dims`, `plan::decode_plan`,
//! `plan::tiled_plan` and `plan::checked_len`, plus the missing-driver errors and
//! `arch_number`. Each test asserts the variant, its fields, and that the message names
//! the offending argument in backquotes; valid neighbours of each bad input must pass, so
//! the limits are exact (off by one in either direction fails).

mod common;

use nanofuse::plan::{self, DECODE_MAX_M, DecodeShape, MAX_DIM, Tile};
use nanofuse::{Error, QkvShape, arch_number};

/// H100-like device numbers for the planners: 132 SMs, 227 KiB of opt-in shared memory.
const SMS: u32 = 132;
const SMEM: u32 = 227 * 1024;
/// CUDA's grid y limit.
const MAX_GRID_Y: usize = 65_535;

/// Asserts that the error's message names `arg` (as `` `arg` ``).
#[track_caller]
fn assert_names(e: &Error, arg: &str) {
    let msg = e.to_string();
    assert!(msg.contains(&format!("`{arg}`")), "message of {e:?} does not name `{arg}`: {msg}");
}

/// The error of `r`, or a panic naming what was expected.
#[track_caller]
fn err<T: std::fmt::Debug>(r: nanofuse::Result<T>, what: &str) -> Error {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// A forced decode launch shape (other fields at their defaults).
fn forced(warp_split: u32, k_splits: u32) -> DecodeShape {
    DecodeShape { warp_split, k_splits, early: None, trigger_first: None, ring: None }
}

fn shape(hidden: usize, q_dim: usize, kv_dim: usize, eps: f32) -> QkvShape {
    QkvShape::new(hidden, q_dim, kv_dim, eps)
}

// ---------------------------------------------------------------------------------------
// QkvShape::validate

#[test]
fn valid_shapes_pass() {
    // The four benchmarked models' shapes (Qwen3-0.6B, Llama-3.2-1B, Llama-3-8B, Llama-3-70B).
    for (k, nq, nkv, eps) in
        [(1024, 2048, 1024, 1e-6), (2048, 2048, 512, 1e-5), (4096, 4096, 1024, 1e-5), (8192, 8192, 1024, 1e-5)]
    {
        shape(k, nq, nkv, eps).validate().unwrap_or_else(|e| panic!("{k} x {nq} x {nkv}: {e}"));
    }
    shape(8, 1, 1, 0.0).validate().unwrap();
    shape(1000, 203, 69, 1e-5).validate().unwrap();
    // The largest N the kernels index: q_dim + 2 kv_dim == MAX_DIM.
    shape(8, MAX_DIM - 2, 1, 1e-6).validate().unwrap();
}

#[test]
fn shape_hidden_zero_is_a_dimension_error() {
    let e = err(shape(0, 64, 32, 1e-5).validate(), "hidden = 0");
    // The hidden size is the GEMM's K; either name identifies it.
    let Error::Dimension { arg, got: 0, .. } = e else { panic!("hidden = 0: {e:?}") };
    assert!(matches!(arg, "hidden" | "K"), "hidden = 0 reported as `{arg}`");
    assert_names(&e, arg);
}

#[test]
fn shape_hidden_not_a_multiple_of_8_is_a_dimension_error() {
    for hidden in [1, 4, 12, 1001, 4100] {
        let e = err(shape(hidden, 64, 32, 1e-5).validate(), "hidden % 8 != 0");
        let Error::Dimension { arg, got, expected } = e else { panic!("hidden = {hidden}: {e:?}") };
        assert!(matches!(arg, "hidden" | "K"), "hidden = {hidden} reported as `{arg}`");
        assert_eq!(got, hidden);
        assert!(expected.contains('8'), "expected {expected:?} does not say 'multiple of 8'");
        assert_names(&e, arg);
    }
}

#[test]
fn shape_q_dim_zero_is_a_dimension_error() {
    let e = err(shape(64, 0, 32, 1e-5).validate(), "q_dim = 0");
    assert!(matches!(e, Error::Dimension { arg: "q_dim", got: 0, .. }), "{e:?}");
    assert_names(&e, "q_dim");
}

#[test]
fn shape_kv_dim_zero_is_a_dimension_error() {
    let e = err(shape(64, 32, 0, 1e-5).validate(), "kv_dim = 0");
    assert!(matches!(e, Error::Dimension { arg: "kv_dim", got: 0, .. }), "{e:?}");
    assert_names(&e, "kv_dim");
}

#[test]
fn shape_bad_eps_is_a_value_error() {
    for eps in [-1e-6, -0.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::MIN_POSITIVE] {
        let e = err(shape(64, 32, 16, eps).validate(), &format!("eps = {eps}"));
        let Error::Value { arg: "eps", ref got, .. } = e else { panic!("eps = {eps}: {e:?}") };
        assert_eq!(got, &eps.to_string(), "eps = {eps}: reported value");
        assert_names(&e, "eps");
    }
    // Zero (either sign) and any finite positive value are fine.
    for eps in [0.0, -0.0, f32::MIN_POSITIVE, 1e-6, 1.0, f32::MAX] {
        shape(64, 32, 16, eps).validate().unwrap_or_else(|e| panic!("eps = {eps}: {e}"));
    }
}

#[test]
fn shape_hidden_over_max_dim_is_too_large() {
    let hidden = (MAX_DIM + 1).next_multiple_of(8); // 2^31: a multiple of 8, one past the limit
    let e = err(shape(hidden, 64, 32, 1e-5).validate(), "hidden > MAX_DIM");
    let Error::TooLarge { arg, got, limit, .. } = e else { panic!("hidden = {hidden}: {e:?}") };
    assert!(matches!(arg, "hidden" | "K"), "hidden > MAX_DIM reported as `{arg}`");
    assert_eq!((got, limit), (hidden as u64, MAX_DIM as u64));
    assert_names(&e, arg);
    // The largest multiple of 8 within the limit passes.
    shape(MAX_DIM / 8 * 8, 1, 1, 1e-5).validate().unwrap();
}

#[test]
fn shape_n_over_max_dim_is_too_large() {
    // q_dim + 2 kv_dim one past the limit, each part within it.
    for (q_dim, kv_dim) in [(MAX_DIM - 1, 1), (1, MAX_DIM / 2 + 1), (MAX_DIM, 1)] {
        let e = err(shape(64, q_dim, kv_dim, 1e-5).validate(), "N > MAX_DIM");
        let Error::TooLarge { arg, got, limit, .. } = e else { panic!("q_dim {q_dim} kv_dim {kv_dim}: {e:?}") };
        assert_eq!((got, limit), ((q_dim + 2 * kv_dim) as u64, MAX_DIM as u64), "q_dim {q_dim} kv_dim {kv_dim}");
        assert!(arg.contains("q_dim") && arg.contains("kv_dim"), "N reported as `{arg}`");
        assert_names(&e, arg);
    }
}

#[test]
fn shape_n_overflowing_usize_is_too_large() {
    // 2 kv_dim and q_dim + 2 kv_dim overflow usize: an error, not a wrapped-around N.
    for (q_dim, kv_dim) in [(1, usize::MAX / 2 + 1), (usize::MAX, 1), (usize::MAX / 2 + 1, usize::MAX / 4 + 1)] {
        let e = err(shape(64, q_dim, kv_dim, 1e-5).validate(), "N overflows");
        let Error::TooLarge { arg, limit, .. } = e else { panic!("q_dim {q_dim} kv_dim {kv_dim}: {e:?}") };
        assert_eq!(limit, MAX_DIM as u64);
        assert!(arg.contains("q_dim") && arg.contains("kv_dim"), "N reported as `{arg}`");
        assert_names(&e, arg);
    }
}

// ---------------------------------------------------------------------------------------
// plan::check_dims, plan::checked_len

#[test]
fn check_dims_k_zero_or_not_a_multiple_of_8_is_a_dimension_error() {
    for k in [0, 1, 7, 9, 12, 1004] {
        let e = err(plan::check_dims(1, k, 1), &format!("K = {k}"));
        assert!(matches!(e, Error::Dimension { arg: "K", got, .. } if got == k), "K = {k}: {e:?}");
        assert_names(&e, "K");
    }
    for k in [8, 16, 1000, 4096] {
        plan::check_dims(1, k, 1).unwrap_or_else(|e| panic!("K = {k}: {e}"));
    }
}

#[test]
fn check_dims_n_zero_is_a_dimension_error() {
    let e = err(plan::check_dims(1, 8, 0), "N = 0");
    assert!(matches!(e, Error::Dimension { arg: "N", got: 0, .. }), "{e:?}");
    assert_names(&e, "N");
    // M = 0 is not an error (the ops treat it as a no-op).
    plan::check_dims(0, 8, 1).unwrap();
}

#[test]
fn check_dims_over_max_dim_is_too_large() {
    let over = (MAX_DIM + 1).next_multiple_of(8);
    let cases =
        [("M", (MAX_DIM + 1, 8, 1), MAX_DIM + 1), ("K", (1, over, 1), over), ("N", (1, 8, MAX_DIM + 1), MAX_DIM + 1)];
    for (arg, (m, k, n), value) in cases {
        let e = err(plan::check_dims(m, k, n), &format!("{arg} > MAX_DIM"));
        let Error::TooLarge { arg: a, got, limit, .. } = e else { panic!("{arg} > MAX_DIM: {e:?}") };
        assert_eq!((a, got, limit), (arg, value as u64, MAX_DIM as u64));
        assert_names(&e, arg);
    }
    plan::check_dims(MAX_DIM, MAX_DIM / 8 * 8, MAX_DIM).unwrap();
}

#[test]
fn checked_len_overflow_is_too_large() {
    for (a, b) in [(usize::MAX, 2), (2, usize::MAX), (1 << 32, 1 << 32), (usize::MAX / 3 + 1, 3)] {
        let e = err(plan::checked_len("rows * width", a, b), &format!("{a} * {b}"));
        assert!(matches!(e, Error::TooLarge { arg: "rows * width", .. }), "{a} * {b}: {e:?}");
        assert_names(&e, "rows * width");
    }
    assert_eq!(plan::checked_len("a * b", 3, 5).unwrap(), 15);
    assert_eq!(plan::checked_len("a * b", 0, usize::MAX).unwrap(), 0);
    assert_eq!(plan::checked_len("a * b", usize::MAX, 1).unwrap(), usize::MAX);
}

// ---------------------------------------------------------------------------------------
// plan::decode_plan

#[test]
fn decode_plan_m_zero_is_a_dimension_error() {
    let e = err(plan::decode_plan(0, 4096, 6144, SMS, SMEM, None), "decode M = 0");
    assert!(matches!(e, Error::Dimension { arg: "M", got: 0, .. }), "{e:?}");
    assert_names(&e, "M");
}

#[test]
fn decode_plan_m_over_the_limit_is_a_dimension_error() {
    for m in [DECODE_MAX_M + 1, DECODE_MAX_M + 64, 100_000] {
        let e = err(plan::decode_plan(m, 4096, 6144, SMS, SMEM, None), &format!("decode M = {m}"));
        assert!(matches!(e, Error::Dimension { arg: "M", got, .. } if got == m), "M = {m}: {e:?}");
        assert_names(&e, "M");
    }
    // Every M up to the limit plans.
    for m in 1..=DECODE_MAX_M {
        let p = plan::decode_plan(m, 4096, 6144, SMS, SMEM, None).unwrap_or_else(|e| panic!("M = {m}: {e}"));
        assert!(p.smem_bytes <= SMEM, "M = {m}: {p:?} exceeds the shared memory");
    }
}

#[test]
fn decode_plan_bad_dims_are_dimension_errors() {
    let e = err(plan::decode_plan(1, 12, 64, SMS, SMEM, None), "decode K = 12");
    assert!(matches!(e, Error::Dimension { arg: "K", got: 12, .. }), "{e:?}");
    let e = err(plan::decode_plan(1, 64, 0, SMS, SMEM, None), "decode N = 0");
    assert!(matches!(e, Error::Dimension { arg: "N", got: 0, .. }), "{e:?}");
    assert_names(&e, "N");
}

#[test]
fn decode_plan_invalid_forced_shape_is_rejected() {
    let bad = [forced(0, 1), forced(3, 1), forced(16, 1), forced(1, 0), forced(1, 1000), forced(4, u32::MAX)];
    for f in bad {
        let e = err(plan::decode_plan(1, 4096, 6144, SMS, SMEM, Some(f)), &format!("{f:?}"));
        // A Dimension error today; a Value error carrying the whole shape would do as well.
        let (Error::Dimension { arg, .. } | Error::Value { arg, .. }) = e else { panic!("{f:?}: {e:?}") };
        assert!(arg.contains("decode"), "{f:?} reported as `{arg}`");
        assert_names(&e, arg);
    }
    // Valid forced shapes of the same problem plan as asked.
    for warp_split in [1, 2, 4, 8] {
        for k_splits in [1, 2] {
            let f = forced(warp_split, k_splits);
            let p = plan::decode_plan(1, 4096, 6144, SMS, SMEM, Some(f)).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            assert_eq!((p.warp_split, p.k_splits()), (warp_split, k_splits), "{f:?}: {p:?}");
        }
    }
}

#[test]
fn decode_plan_forced_shape_with_an_empty_k_slice_names_the_split() {
    // K = 8 split over two CTAs: the K slices are whole 32-element steps, so the second one
    // is empty. The error names the split, not K (K is not too large).
    let f = forced(1, 2);
    let e = err(plan::decode_plan(1, 8, 64, SMS, SMEM, Some(f)), "K = 8 over 2 splits");
    assert!(matches!(e, Error::Value { arg: "k_splits", .. }), "{e:?}");
    assert_names(&e, "k_splits");
    // One split of the same K is fine.
    plan::decode_plan(1, 8, 64, SMS, SMEM, Some(forced(1, 1))).unwrap();
}

/// The planner's picks on H100 (132 SMs, 227 KiB) for the four model shapes: the launch
/// shapes docs/RESULTS.md measured fastest or near it, so a rule change that moves them
/// shows up here.
#[test]
fn decode_plan_picks_the_measured_shapes_on_h100() {
    // (K, N, M, warp_split, early, ring); K is never split across CTAs.
    let want = [
        (1024, 4096, 1..=16, 4, true, false),
        (2048, 3072, 1..=16, 8, true, false),
        (4096, 6144, 1..=8, 4, true, false),
        (4096, 6144, 9..=9, 4, false, false),
        (4096, 6144, 10..=16, 4, false, true),
        (8192, 10240, 1..=4, 8, false, false),
        (8192, 10240, 5..=7, 8, false, true),
        (8192, 10240, 8..=16, 2, false, true),
    ];
    for (k, n, ms, ws, early, ring) in want {
        for m in ms {
            let p = plan::decode_plan(m, k, n, SMS, SMEM, None).unwrap();
            let got = (p.warp_split, p.k_splits(), p.early, p.ring);
            assert_eq!(got, (ws, 1, early, ring), "K = {k}, N = {n}, M = {m}: {p:?}");
            // The one-token-tile `_early_m8` entries exactly for the `_early` kernels at M <= 8.
            assert_eq!(p.token_tiles, if early && m <= 8 { 1 } else { 2 }, "K = {k}, M = {m}: {p:?}");
            // The trigger before the W loads at M = 1, and at M <= 8 where every warp requests
            // all its W before the wait (Qwen3-0.6B's and Llama-3.2-1B's grids).
            assert_eq!(p.trigger_first, m == 1 || (k <= 2048 && m <= 8), "K = {k}, M = {m}: {p:?}");
            assert_eq!(p.gemm_trigger_first, m == 1, "K = {k}, M = {m}: {p:?}");
            // At most two CTAs per SM (one wave), except on Llama-3-70B at M <= 7 (640 CTAs
            // of 16 rows, 32 K steps per warp).
            let ctas = p.k_splits() * p.row_tiles();
            if k == 8192 && m <= 7 {
                assert_eq!(ctas, 640, "{p:?}");
            } else {
                assert!(ctas <= 2 * SMS, "K = {k}, M = {m}: {p:?}");
            }
            // Two CTAs leave the SM at least 92 KiB of L1 (a carve-out of at most 164 KiB).
            assert!(2 * (p.smem_bytes + 1024) <= 164 * 1024, "K = {k}, M = {m}: {} bytes", p.smem_bytes);
        }
    }
}

#[test]
fn decode_plan_streams_x_through_the_ring_when_its_rows_do_not_fit() {
    // 48 KiB of shared memory holds 512-wide rows of x, not 2^20-wide ones (2 MiB per token
    // row): the planner then streams x through the ring, whose size does not depend on K;
    // a forced shape that keeps x whole is refused.
    let small = 48 * 1024;
    for m in [1, DECODE_MAX_M] {
        plan::decode_plan(m, 512, 6144, SMS, small, None).unwrap_or_else(|e| panic!("M = {m}, K = 512: {e}"));
        let k = 1 << 20;
        let p = plan::decode_plan(m, k, 6144, SMS, small, None).unwrap_or_else(|e| panic!("M = {m}, K = 2^20: {e}"));
        assert!(p.ring && p.k_splits() == 1 && p.smem_bytes <= small, "M = {m}, K = 2^20: {p:?}");
        let f = forced(1, 2);
        let e = err(plan::decode_plan(m, k, 6144, SMS, small, Some(f)), "forced, K = 2^20");
        let Error::TooLarge { arg: "K", got, limit, .. } = e else { panic!("M = {m}: {e:?}") };
        assert_eq!(got, k as u64);
        assert!(limit < got, "limit {limit} >= K {got}");
        assert_names(&e, "K");
    }
}

// ---------------------------------------------------------------------------------------
// plan::tiled_plan

#[test]
fn tiled_plan_grid_y_overflow_is_too_large() {
    for tile in [Tile::Large, Tile::Small] {
        let (_, bn, _, _) = tile.dims();
        let n_max = MAX_GRID_Y * bn as usize;
        let p = plan::tiled_plan(1, 64, n_max, SMS, Some(tile)).unwrap_or_else(|e| panic!("{tile:?}: {e}"));
        assert_eq!(p.grid.1 as usize, MAX_GRID_Y, "{tile:?}: {p:?}");
        for n in [n_max + 1, n_max + bn as usize, MAX_DIM] {
            let e = err(plan::tiled_plan(1, 64, n, SMS, Some(tile)), &format!("{tile:?}, N = {n}"));
            let Error::TooLarge { arg: "N", got, limit, .. } = e else { panic!("{tile:?} N = {n}: {e:?}") };
            assert_eq!((got, limit), (n as u64, n_max as u64), "{tile:?} N = {n}");
            assert_names(&e, "N");
        }
    }
    // The planner's own choice, whichever tile it takes, fails past the largest tile's limit.
    let n = MAX_GRID_Y * Tile::Large.dims().1.max(Tile::Small.dims().1) as usize + 1;
    for m in [1, 4096] {
        let e = err(plan::tiled_plan(m, 64, n, SMS, None), &format!("M = {m}, N = {n}"));
        assert!(matches!(e, Error::TooLarge { arg: "N", .. }), "M = {m}: {e:?}");
    }
}

#[test]
fn tiled_plan_bad_dims_are_errors() {
    let e = err(plan::tiled_plan(16, 12, 64, SMS, None), "tiled K = 12");
    assert!(matches!(e, Error::Dimension { arg: "K", got: 12, .. }), "{e:?}");
    let e = err(plan::tiled_plan(MAX_DIM + 1, 64, 64, SMS, None), "tiled M > MAX_DIM");
    assert!(matches!(e, Error::TooLarge { arg: "M", .. }), "{e:?}");
    assert_names(&e, "M");
}

// ---------------------------------------------------------------------------------------
// The driver, and architecture names

#[test]
fn no_driver_is_reported_as_no_driver() {
    if nanofuse::driver_present() {
        common::skip_note("a CUDA driver is present; the no-driver errors cannot be observed");
        return;
    }
    for (what, r) in
        [("open(0)", nanofuse::open(0).map(|_| ())), ("device_count()", nanofuse::device_count().map(|_| ()))]
    {
        let e = err(r, what);
        assert!(matches!(e, Error::NoDriver), "{what}: {e:?}");
        assert!(e.to_string().contains("driver"), "{what}: message does not mention the driver: {e}");
    }
}

#[test]
fn arch_number_parses_sm_names_only() {
    assert_eq!(arch_number("sm_90"), Some(90));
    assert_eq!(arch_number("sm_90a"), Some(90));
    assert_eq!(arch_number("sm_80"), Some(80));
    assert_eq!(arch_number("sm_100a"), Some(100));
    assert_eq!(arch_number("compute_90"), None);
    assert_eq!(arch_number(""), None);
    assert_eq!(arch_number("sm_"), None);
    assert_eq!(arch_number("sm_x90"), None);
    assert_eq!(arch_number("SM_90"), None);
    // The embedded PTX's architecture parses (else opening any device fails).
    assert!(arch_number(nanofuse::KERNELS_ARCH).is_some(), "KERNELS_ARCH = {:?}", nanofuse::KERNELS_ARCH);
}
