//! # Per-head q/k RMSNorm (Qwen3) + rotate-half RoPE, and the KV-cache write, for `rows` tokens
//!
//! For row `r < rows` at position `p_r = state[POS] − (rows − 1 − r)` (a decode step:
//! `rows = 1`; a prefill chunk: its `rows` tokens), and every q head (`num_heads`) and k
//! head (`num_kv_heads`) of the row:
//! ```text
//! x  = norm ? x · rsqrt(mean(x²) + eps) · w : x          (w [hd]: q's or k's weight)
//! x'[i]        = x[i] c_i − x[i + hd/2] s_i              (i < hd/2,
//! x'[i + hd/2] = x[i + hd/2] c_i + x[i] s_i               c_i, s_i = rope[p_r, i], rope[p_r, hd/2 + i])
//! ```
//! in f32, rounded once to bf16. q is rewritten in place; the rotated k and the unchanged
//! v go to the caches at `p_r`. `p_r >= max_seq`: nothing of the row is written and
//! `FLAG_OVERFLOW` is set.
//!
//! # Parameters
//! `qkv [rows, (num_heads + 2 num_kv_heads) · hd]` (the packed projection: q, k, v columns
//! of a row side by side; q rewritten in place), `q_w, k_w [hd]` (read only with
//! `norm != 0`), `rope [max_seq, hd]` f32 (`cos(p·f_i)` for `i < hd/2`, then
//! `sin(p·f_i)`), `state [config::step::LEN]` u32, `k_cache, v_cache [num_kv_heads,
//! max_seq, hd]` (element `(h, p, d)` at `(h·max_seq + p)·hd + d`). bf16 unless stated,
//! 16-byte aligned; `hd` in `config::rope::HEAD_DIMS`.
//!
//! # Thread mapping
//! CTA `(x, r)` takes row `r`; one warp per head: warps `0..num_heads` take the q heads,
//! the next `num_kv_heads` the k heads (and copy the v head). Lane `l` holds the `hd / 32`
//! contiguous elements `[l·hd/32, …)` (module `head`), so the rotate-half partner of its
//! elements is lane `l ^ 16` (one butterfly shuffle per element) and the norm's sum is a
//! warp sum.
//!
//! # Traffic
//! Per row, reads `2 hd (H + 2 Hkv)` bytes of q, k, v and `4 hd` of the table row, writes
//! as much (q, k cache, v cache).
//!
//! # Launch
//! grid `(ceil((num_heads + num_kv_heads) / 4), rows, 1)`, block `(128, 1, 1)`, no shared
//! memory; optionally with programmatic stream serialization.

use crate::config::rope::{THREADS, WARPS};
use crate::config::step::{FLAG_OVERFLOW, FLAGS, POS};
use crate::head::{norm_rope, pack_words, unpack_words};
use crate::ptx::atomic::atom_global_or_b32;
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{
    block_dim_x, block_idx_x, block_idx_y, grid_dim_x, grid_dim_y, lane_id, thread_idx_x, warp_id,
};
use crate::ptx::trap;

/// The pointers of one launch.
#[derive(Clone, Copy)]
struct Args {
    /// Row `r`'s q, k and v: `qkv + r · (num_heads + 2 num_kv_heads) · hd`, then column
    /// offsets 0, `num_heads · hd`, `(num_heads + num_kv_heads) · hd`.
    q: *mut u16,
    k: *const u16,
    v: *const u16,
    q_w: *const u16,
    k_w: *const u16,
    rope: *const f32,
    k_cache: *mut u16,
    v_cache: *mut u16,
    num_heads: u32,
    max_seq: u32,
    eps: f32,
    norm: bool,
}

/// See the module documentation.
///
/// # Safety
/// The pointers satisfy the layout above; the block has 128 threads, the grid covers every
/// head and `head_dim` is 64, 128 or 256 (else it traps).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "gpu-kernel" fn qk_norm_rope(
    qkv: *mut u16,
    q_w: *const u16,
    k_w: *const u16,
    rope: *const f32,
    state: *mut u32,
    k_cache: *mut u16,
    v_cache: *mut u16,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
    rows: u32,
    eps: f32,
    norm: u32,
) {
    let heads = num_heads + num_kv_heads;
    if block_dim_x() != THREADS
        || grid_dim_x() * WARPS < heads
        || rows == 0
        || grid_dim_y() != rows
        || !matches!(head_dim, 64 | 128 | 256)
    {
        trap();
    }
    griddepcontrol_launch_dependents();
    griddepcontrol_wait();
    let row = block_idx_y();
    // SAFETY: state holds LEN words.
    let pos = unsafe { state.add(POS).read_volatile() }.wrapping_sub(rows - 1 - row);
    if pos >= max_seq {
        if block_idx_x() == 0 && thread_idx_x() == 0 {
            // SAFETY: as above; one thread per row sets the bit.
            unsafe { atom_global_or_b32(state.add(FLAGS), FLAG_OVERFLOW) };
        }
        return;
    }
    let head = block_idx_x() * WARPS + warp_id();
    if head >= heads {
        return;
    }
    let hd = head_dim as usize;
    let q = qkv.wrapping_add(row as usize * (heads + num_kv_heads) as usize * hd);
    let (k, v) = (q.wrapping_add(num_heads as usize * hd), q.wrapping_add(heads as usize * hd));
    let a = Args { q, k, v, q_w, k_w, rope, k_cache, v_cache, num_heads, max_seq, eps, norm: norm != 0 };
    // SAFETY: forwarded to the caller; head < heads, pos < max_seq.
    unsafe {
        match head_dim {
            64 => one_head::<1, 2>(a, head, pos),
            128 => one_head::<2, 4>(a, head, pos),
            _ => one_head::<4, 8>(a, head, pos),
        }
    }
}

/// Warp `head`'s head (`W` words, `E = 2 W` elements per lane, `hd = 32 E`).
///
/// # Safety
/// As the kernel's; `head < num_heads + num_kv_heads`, `pos < max_seq`.
#[inline(always)]
unsafe fn one_head<const W: usize, const E: usize>(a: Args, head: u32, pos: u32) {
    let hd = 32 * E;
    let lane = lane_id();
    let is_q = head < a.num_heads;
    let kvh = head.wrapping_sub(a.num_heads);
    let elem0 = lane as usize * E;
    let src: *const u16 = if is_q { a.q.wrapping_add(head as usize * hd) } else { a.k.wrapping_add(kvh as usize * hd) };
    // SAFETY (whole body): rows of hd elements inside the buffers of the layout; the lane's
    // E elements at elem0 are 4 W-byte aligned (hd and the buffers 16-byte aligned).
    unsafe {
        let x: [f32; E] = unpack_words((src.add(elem0) as *const [u32; W]).read());
        let norm = a.norm.then_some((if is_q { a.q_w } else { a.k_w }, a.eps));
        let out: [u32; W] = pack_words(norm_rope::<W, E>(x, lane, norm, a.rope.add(pos as usize * hd)));
        if is_q {
            (a.q.add(head as usize * hd + elem0) as *mut [u32; W]).write(out);
        } else {
            let at = (kvh as usize * a.max_seq as usize + pos as usize) * hd + elem0;
            (a.k_cache.add(at) as *mut [u32; W]).write(out);
            let vw = (a.v.add(kvh as usize * hd + elem0) as *const [u32; W]).read();
            (a.v_cache.add(at) as *mut [u32; W]).write(vw);
        }
    }
}
