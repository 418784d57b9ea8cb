//! The warpgroup-MMA kernels' layout arithmetic, checked on the CPU (no GPU needed):
//! * the `wgmma` descriptor's bit fields (`config::wgmma::desc_k_sw128`);
//! * the 128-byte swizzle permutes the 8 chunks of every row and keeps rows apart;
//! * the claim the kernel's A fragments rest on (`kernels-gpu/src/gemm_wgmma.rs`, "Why A
//!   comes from registers"): with W in the k-interleaved order (`config::interleave`), lane
//!   `q`'s natural 16-byte chunk `q` of a 32-element block of x holds, word by word, the x
//!   values that the `wgmma` k-slots `2q, 2q + 1` / `2q + 8, 2q + 9` of the block's two k16
//!   slices pair with W's interleaved positions;
//!
//! (The shared-memory budget and the register split are compile-time assertions in
//! `config::wgmma`.)

use nanofuse_kernels_gpu::config::interleave::source;
use nanofuse_kernels_gpu::config::wgmma::{BM, consumer_rows, desc_k_sw128, swizzled};

#[test]
fn descriptor_fields() {
    let base = 0x0001_2400u32; // 1024-byte aligned
    for j in 0..4 {
        let d = desc_k_sw128(base, j);
        assert_eq!(d & 0x3FFF, ((base >> 4) + 2 * j) as u64, "start address >> 4, slice {j} at +32 j bytes");
        assert_eq!((d >> 16) & 0x3FFF, 1, "leading byte offset >> 4");
        assert_eq!((d >> 32) & 0x3FFF, 64, "stride byte offset >> 4 (1024 bytes per 8 rows)");
        assert_eq!((d >> 49) & 0x7, 0, "base offset (1024-byte aligned tile)");
        assert_eq!(d >> 62, 1, "layout: 128-byte swizzle");
        assert_eq!(d & (0x3 << 14 | 0x3 << 30 | 0x3FF << 52), 0, "reserved bits");
    }
}

#[test]
fn swizzle_permutes_each_row() {
    for r in 0..256 {
        let mut seen: Vec<u32> = (0..8).map(|c| swizzled(r, c)).collect();
        seen.sort();
        let want: Vec<u32> = (0..8).map(|c| r * 128 + 16 * c).collect();
        assert_eq!(seen, want, "row {r}");
    }
}

#[test]
fn natural_chunk_q_is_the_interleaved_a_fragment() {
    let k = 4096;
    for b in 0..(k / 32) {
        for q in 0..4 {
            for s in 0..2 {
                // Slice s of block b: wgmma k positions 32 b + 16 s + slot. a0 (slots 2q, 2q + 1)
                // comes from word 2 s of the chunk, a2 (slots 2q + 8, 2q + 9) from word 2 s + 1.
                for e in 0..2 {
                    let chunk_elem = |word: usize| 32 * b + 8 * q + 2 * word + e;
                    let pos = 32 * b + 16 * s + 2 * q + e;
                    assert_eq!(source(pos, k), chunk_elem(2 * s), "block {b} q {q} slice {s} a0/a1");
                    assert_eq!(source(pos + 8, k), chunk_elem(2 * s + 1), "block {b} q {q} slice {s} a2/a3");
                }
            }
        }
    }
}

#[test]
fn consumer_warpgroups_cover_their_rows() {
    for c in 0..2 {
        let mut count = vec![0; BM as usize];
        for t in 0..128 {
            let (r0, r1) = consumer_rows(c, t);
            assert_eq!(r1, r0 + 8);
            count[r0 as usize] += 1;
            count[r1 as usize] += 1;
        }
        for (r, &n) in count.iter().enumerate() {
            let mine = (64 * c as usize..64 * c as usize + 64).contains(&r);
            assert_eq!(n, if mine { 4 } else { 0 }, "consumer {c}, row {r}");
        }
    }
}
