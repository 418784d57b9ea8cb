//! The warpgroup-MMA kernels' layout arithmetic, checked on the CPU (no GPU needed):
//! * the `wgmma` descriptor's bit fields (`config::wgmma::desc_k_sw128`);
//! * the 128-byte swizzle permutes the 8 chunks of every row and keeps rows apart;
//! * the claim the kernel's A fragments rest on (`kernels-gpu/src/gemm_wgmma.rs`, "Why A
//!   comes from registers"): with W in the k-interleaved order (`config::interleave`), lane
//!   `q`'s natural 16-byte chunk `q` of a 32-element block of x holds, word by word, the x
//!   values that the `wgmma` k-slots `2q, 2q + 1` / `2q + 8, 2q + 9` of the block's two k16
//!   slices pair with W's interleaved positions;
//!
//! * the split over K: its k-tile ranges and column blocks partition the work, and the
//!   partial sums' slots are distinct, inside the stage memory, and a warp's 16-byte
//!   accesses of one half-block are 512 contiguous bytes (no bank conflict).
//!
//! (The shared-memory budget and the register split are compile-time assertions in
//! `config::wgmma`.)

use nanofuse_kernels_gpu::config::interleave::source;
use nanofuse_kernels_gpu::config::wgmma::{
    BLOCKS, BM, PARTIAL_BYTES, SPLIT_MAX, consumer_rows, desc_k_sw128, partial_offset, partial_ss_offset, split_blocks,
    split_k_tiles, swizzled,
};

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

#[test]
fn split_ranges_partition_the_k_tiles_and_the_blocks() {
    for split in [1, 2, 4, SPLIT_MAX] {
        for all in 1..300 {
            let mut next = 0;
            for z in 0..split {
                let (first, count) = split_k_tiles(z, split, all);
                assert_eq!(
                    first,
                    next.min(all),
                    "split {split}, {all} tiles: CTA {z} starts where {} ended",
                    z.max(1) - 1
                );
                assert!(count <= all.div_ceil(split), "split {split}, {all} tiles: CTA {z} takes {count}");
                next = first + count;
            }
            assert_eq!(next, all, "split {split}, {all} tiles: every k tile taken");
        }
        let mut blocks = Vec::new();
        for z in 0..split {
            let (first, count) = split_blocks(z, split);
            blocks.extend(first..first + count);
        }
        assert_eq!(blocks, (0..BLOCKS).collect::<Vec<_>>(), "split {split}: each block finished by one CTA");
    }
}

#[test]
fn partial_sums_have_distinct_slots_in_the_stage_memory() {
    let mut slots = Vec::new();
    for b in 0..BLOCKS {
        for h in 0..2 {
            for warp in 0..8 {
                let offs: Vec<u32> = (0..32).map(|lane| partial_offset(b, h, 32 * warp + lane)).collect();
                assert_eq!(offs[0] % 512, 0, "block {b} half {h} warp {warp}: 512-byte aligned");
                for (lane, &o) in offs.iter().enumerate() {
                    assert_eq!(o, offs[0] + 16 * lane as u32, "block {b} half {h} warp {warp}: contiguous");
                }
                slots.extend(offs.iter().map(|&o| (o, 16)));
            }
        }
    }
    slots.extend((0..256).map(|u| (partial_ss_offset(u), 8)));
    slots.sort();
    for pair in slots.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "slots {pair:?} overlap");
    }
    let (last, len) = *slots.last().unwrap();
    // (PARTIAL_BYTES inside the stages is a compile-time assertion in `config::wgmma`.)
    assert_eq!(last + len, PARTIAL_BYTES, "the slots fill PARTIAL_BYTES");
}
