//! # Argmax of a bf16 vector into the u64 slot
//!
//! `slot[0] = max(slot[0], max_i key(logits[i], i))` (`config::argmax::key`: the largest
//! logit, the lowest index among equal ones; NaN logits are ignored). The slot must hold 0
//! (or an earlier partial result) before the launch: `decode_step_begin` empties it.
//!
//! # Parameters
//! `logits [n]` bf16, 16-byte aligned, any `n >= 1`; `slot [1]` u64.
//!
//! # Thread mapping and traffic
//! Thread `i` of the grid takes 16-byte chunks `i, i + threads, …` (and, in CTA 0, the
//! `n % 8` elements of the tail), keeps its best key, then the warp (butterfly over u64
//! halves) and the CTA (shared memory) reduce, and thread 0 does one
//! `atom.global.max.u64`. Reads `2 n` bytes.
//!
//! # Launch
//! grid `(min(ceil(n / 2048), config::argmax::MAX_CTAS), 1, 1)`, block `(256, 1, 1)`,
//! dynamic shared memory `config::argmax::SMEM_BYTES` (one u64 key per warp);
//! optionally with programmatic stream serialization.

use crate::argmax_key::{key_bf16, warp_max_u64};
use crate::config::VEC;
use crate::config::argmax::{SMEM_BYTES, THREADS};
use crate::ptx::atomic::atom_global_max_u64;
use crate::ptx::global::ld_global_cg_v4_u32;
use crate::ptx::shared::{dynamic_shared_base, ld_shared_u32, st_shared_u32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{block_dim_x, block_idx_x, grid_dim_x, lane_id, sync_threads, thread_idx_x, warp_id};
use crate::ptx::trap;

/// See the module documentation.
///
/// # Safety
/// `logits [n]` and `slot [1]` as above; the block has 256 threads (else it traps) and
/// `config::argmax::SMEM_BYTES` of dynamic shared memory.
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn argmax_bf16(logits: *const u16, n: u32, slot: *mut u64) {
    if block_dim_x() != THREADS {
        trap();
    }
    griddepcontrol_launch_dependents();
    griddepcontrol_wait();
    let chunks = n / VEC;
    let mut best = 0u64;
    let mut c = block_idx_x() * THREADS + thread_idx_x();
    while c < chunks {
        // SAFETY: chunk c < n / 8 lies inside logits, 16-byte aligned.
        let words = unsafe { ld_global_cg_v4_u32(logits.add((c * VEC) as usize) as *const [u32; 4]) };
        for (j, &w) in words.iter().enumerate() {
            let i = c * VEC + 2 * j as u32;
            let lo = key_bf16(w as u16, i);
            let hi = key_bf16((w >> 16) as u16, i + 1);
            best = best.max(lo).max(hi);
        }
        c += grid_dim_x() * THREADS;
    }
    let tail = chunks * VEC + thread_idx_x();
    if block_idx_x() == 0 && tail < n {
        // SAFETY: tail < n.
        let bits = unsafe { logits.add(tail as usize).read() };
        best = best.max(key_bf16(bits, tail));
    }
    best = warp_max_u64(best);
    let keys = dynamic_shared_base().cast::<u32>();
    let (warp, lane) = (warp_id(), lane_id());
    const _: () = assert!(SMEM_BYTES == THREADS / 32 * 8);
    // SAFETY: SMEM_BYTES hold one u64 (two words) per warp; the barrier is uniform.
    unsafe {
        if lane == 0 {
            st_shared_u32(keys.add(2 * warp), best as u32);
            st_shared_u32(keys.add(2 * warp + 1), (best >> 32) as u32);
        }
        sync_threads();
        if thread_idx_x() == 0 {
            let mut cta = 0u64;
            for w in 0..THREADS / 32 {
                let k = ((ld_shared_u32(keys.add(2 * w + 1)) as u64) << 32) | ld_shared_u32(keys.add(2 * w)) as u64;
                cta = cta.max(k);
            }
            if cta != 0 {
                atom_global_max_u64(slot, cta);
            }
        }
    }
}
