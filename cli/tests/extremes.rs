//! The harness's arithmetic helpers at extreme values (CPU): `timing::ring_len` and the
//! byte and FLOP counts of every op saturate instead of overflowing.

use std::panic::{AssertUnwindSafe, catch_unwind};

use nanofuse::{MlpShape, QkvShape};
use nanofuse_cli::bench::{Problem, flops, min_bytes};
use nanofuse_cli::timing::{MAX_RING, ring_len};

const SIZES: [usize; 9] = [0, 1, 2, 4096, (1 << 31) - 1, 1 << 31, 1 << 32, usize::MAX - 1, usize::MAX];
const U64S: [u64; 6] = [0, 1, 4, 50 << 20, 1 << 63, u64::MAX];

fn no_panic<T>(what: &str, f: impl FnOnce() -> T) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!("{what} panicked: {}", msg.unwrap_or_default());
    }
}

#[test]
fn ring_len_saturates() {
    for &l2 in &U64S {
        for &bytes in &U64S {
            for &factor in &U64S {
                no_panic(&format!("ring_len({l2}, {bytes}, {factor})"), || {
                    let r = ring_len(l2, bytes, factor);
                    assert!((2..=MAX_RING).contains(&r), "ring_len({l2}, {bytes}, {factor}) = {r}");
                });
            }
        }
    }
    assert_eq!(ring_len(u64::MAX, 1, 4), MAX_RING);
}

#[test]
fn byte_and_flop_counts_saturate() {
    for &a in &SIZES {
        for &b in &SIZES {
            for &m in &SIZES {
                let s = QkvShape::new(a, b, b, 1e-6);
                no_panic(&format!("min_bytes/flops({s:?}, {m})"), || (min_bytes(&s, m), flops(&s, m)));
                for p in [Problem::Qkv(s), Problem::GateUp(MlpShape::new(a, b, 1e-6)), Problem::Proj { k: a, n: b }] {
                    no_panic(&format!("{p:?} at M = {m}"), || (p.min_bytes(m), p.flops(m), p.weight_bytes()));
                }
            }
        }
    }
    let big = QkvShape::new(1 << 31, 1 << 31, 1 << 31, 1e-6);
    assert_eq!(flops(&big, 1 << 31), u64::MAX);
}
