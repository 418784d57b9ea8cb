//! # Flash-decoding attention for the last `rows` positions (GQA), split merge in the last CTA
//!
//! For row `r < rows` at position `p_r = state[POS] − (rows − 1 − r)` (a decode step:
//! `rows = 1`, the token just fed; a prefill chunk: its `rows` tokens, causal):
//! `out[r, h] = softmax(q_{r,h} · K_{kvh}ᵀ / sqrt(hd)) · V_{kvh}` over positions
//! `0..len_r`, `len_r = p_r + 1` (`len_r = max_seq` if `p_r >= max_seq`), `kvh = h / group`,
//! `group = num_heads / num_kv_heads`. The position is read on the device, so a captured
//! CUDA graph replays at any length. Scores, softmax and sums in f32, in the base-2 domain
//! (`scale_log2 = log2(e) / sqrt(hd)` folded into q, `ex2.approx`); out rounded once to
//! bf16.
//!
//! # Fused RoPE (`attention_decode_rope`, one row)
//! The decode step's form takes q, k, v as the QKV projection wrote them, before RoPE, and
//! does `qk_norm_rope`'s work itself (one kernel less per layer): every CTA applies the
//! optional q norm and RoPE at `pos` to its q heads in registers (module `head`,
//! `norm_rope`; q is never written back), and the CTA whose chunk holds `pos` (there is
//! exactly one when `pos < max_seq`) rotates kv head `kvh`'s k the same way, writes it and
//! v to the caches at `pos`, and passes a CTA barrier before its warps read the chunk, so
//! that they see the new row. No other CTA reads position `pos`. At `pos >= max_seq`
//! nothing is written (`decode_step_begin` has flagged the overflow) and the table's last
//! row stands in for `pos`'s. The extra parameters: `rope [max_seq, hd]` f32, `q_w, k_w
//! [hd]` bf16 (0: no norm), `eps`.
//!
//! # Parameters
//! `qkv [rows, (num_heads + 2 num_kv_heads) · hd]` (the packed projection; only each row's
//! q columns `[0, num_heads · hd)` are read), `k_cache, v_cache [num_kv_heads, max_seq, hd]`
//! (element `(h, p, d)` at `(h·max_seq + p)·hd + d`), `state [config::step::LEN]` u32,
//! `partial [rows, num_heads, splits, ML + hd]` f32 scratch, `counters [rows ·
//! num_kv_heads]` u32 (zero between launches: the kernel leaves them so), `out [rows,
//! num_heads · hd]`. bf16 unless stated, 16-byte aligned; `hd` 64 or 128, `group <= 8`.
//!
//! # Split and thread mapping
//! Grid `(rows · num_kv_heads, splits)`: CTA `(r · num_kv_heads + kvh, s)` takes row `r`,
//! kv head `kvh` with all its `group` q heads, and chunk `s` of the row's context:
//! `active = min(splits, ceil(len / MIN_CHUNK))` splits take `chunk = ceil(len / active)`
//! positions each; the others exit at once. Warp `w` of the CTA takes positions
//! `start + w + 4 i`, `UNROLL` at a time (their K and V rows loaded together, so several
//! loads are in flight), with an online softmax per q head. Lane `l` holds elements
//! `[l·hd/32, …)` of every row (module `head`), so a score is a warp sum.
//!
//! # Merge
//! 1. The CTA's four warps combine their `(m, l, o)` per q head through shared memory
//!    (log-sum-exp rule). With one active split that is the result: `out` is written and
//!    the CTA is done. Otherwise it writes one partial per (q head, split) to `partial`.
//! 2. Every thread fences (`fence.acq_rel.gpu`), a CTA barrier, thread 0 adds 1 to the
//!    counter of its (row, kv head) (`atom.global.add`) and fences again: the CTA that sees
//!    `active − 1` is the last (threadFenceReduction). It resets the counter to 0 for the
//!    next launch (every other active CTA has already added) and merges: lane `s` loads
//!    split `s`'s `(m, l)` with `ld.global.cg` (L2, never a stale L1 line), so all of them
//!    are in flight together; `M = max_s m_s` and `L = Σ_s l_s 2^(m_s − M)` are warp
//!    reductions; then `o = Σ_s o_s 2^(m_s − M) / L`, `MERGE_UNROLL` splits' `o` loaded
//!    before any is used, summed over the splits in order (bitwise the same whichever CTA
//!    is last).
//!
//! # Traffic
//! Per row, `4 hd len num_kv_heads` bytes of K and V (each row read once), plus per active
//! split `4 (ML + hd) num_heads` bytes of partials written and read back (L2). A prefill
//! chunk reads the cache once per row: fine for the chunk sizes the engine runs, not a
//! long-prompt prefill kernel.
//!
//! # Launch
//! grid `(rows · num_kv_heads, splits)` (`config::attention::splits`), block
//! `(128, 1, 1)`, dynamic shared memory `config::attention::SMEM_BYTES`; optionally with
//! programmatic stream serialization (everything but the launch-shape checks after
//! `griddepcontrol.wait`).

use crate::config::attention::{MAX_GROUP, MAX_HEAD_DIM, MAX_SPLITS, MERGE_UNROLL, ML, THREADS, UNROLL, WARPS, active};
use crate::config::step::POS;
use crate::head::{ld_words, norm_rope, pack_words, unpack_words};
use crate::ptx::atomic::{atom_global_add_u32, fence_acq_rel_gpu};
use crate::ptx::convert::{ex2_approx_f32, rcp_approx_f32};
use crate::ptx::global::{ld_global_cg_v2_f32, ld_global_cg_v4_f32};
use crate::ptx::shared::{SharedPtr, dynamic_shared_base, ld_shared_f32, ld_shared_u32, st_shared_f32, st_shared_u32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{
    block_dim_x, block_idx_x, block_idx_y, grid_dim_x, grid_dim_y, lane_id, sync_threads, thread_idx_x, warp_id,
};
use crate::ptx::trap;
use crate::ptx::warp::{shfl_sync_idx_f32, warp_max_f32, warp_sum_f32};

const G: usize = MAX_GROUP as usize;
const U: usize = UNROLL as usize;
const MU: usize = MERGE_UNROLL as usize;

/// The fused-RoPE form's extra inputs (null pointers in the plain form).
#[derive(Clone, Copy)]
struct Rope {
    table: *const f32,
    q_w: *const u16,
    k_w: *const u16,
    eps: f32,
}

/// The pointers and sizes of one launch.
#[derive(Clone, Copy)]
struct Args {
    qkv: *const u16,
    /// Written only by the fused-RoPE form.
    k_cache: *mut u16,
    v_cache: *mut u16,
    state: *const u32,
    partial: *mut f32,
    counters: *mut u32,
    out: *mut u16,
    num_heads: u32,
    num_kv_heads: u32,
    /// `num_heads / num_kv_heads`, set by `start`.
    group: u32,
    max_seq: u32,
    rows: u32,
    scale_log2: f32,
    rope: Rope,
}

/// Both entries' body: traps unless the launch has the documented shape (`a.group` is
/// set here), then runs the kernel for `head_dim`.
///
/// # Safety
/// As the entries'.
#[inline(always)]
unsafe fn start<const ROPE: bool>(mut a: Args, head_dim: u32) {
    let (nh, nkv) = (a.num_heads, a.num_kv_heads);
    if block_dim_x() != THREADS
        || nkv == 0
        || a.rows == 0
        || nkv.checked_mul(a.rows) != Some(grid_dim_x())
        || grid_dim_y() > MAX_SPLITS
        || !nh.is_multiple_of(nkv)
        || nh / nkv > MAX_GROUP
        || nh == 0
        || a.max_seq == 0
        || !matches!(head_dim, 64 | 128)
    {
        trap();
    }
    a.group = nh / nkv;
    // SAFETY: forwarded to the caller; the shape checked above.
    unsafe { if head_dim == 64 { run::<1, 2, ROPE>(a) } else { run::<2, 4, ROPE>(a) } }
}

/// See the module documentation.
///
/// # Safety
/// The pointers satisfy the layout above (`partial` for `splits = gridDim.y`); the launch
/// has the documented shape, `num_heads % num_kv_heads == 0`, `group <= 8`, `head_dim`
/// 64 or 128 and `splits <= MAX_SPLITS` (else it traps).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "gpu-kernel" fn attention_decode(
    qkv: *const u16,
    k_cache: *const u16,
    v_cache: *const u16,
    state: *const u32,
    partial: *mut f32,
    counters: *mut u32,
    out: *mut u16,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
    rows: u32,
    scale_log2: f32,
) {
    let a = Args {
        qkv,
        k_cache: k_cache.cast_mut(),
        v_cache: v_cache.cast_mut(),
        state,
        partial,
        counters,
        out,
        num_heads,
        num_kv_heads,
        group: 0,
        max_seq,
        rows,
        scale_log2,
        rope: Rope { table: core::ptr::null(), q_w: core::ptr::null(), k_w: core::ptr::null(), eps: 0.0 },
    };
    // SAFETY: forwarded to the caller.
    unsafe { start::<false>(a, head_dim) }
}

/// The fused-RoPE form for one row (module documentation, "Fused RoPE").
///
/// # Safety
/// As [`attention_decode`]'s with `rows = 1`; `rope [max_seq, hd]` f32 and, unless null,
/// `q_w, k_w [hd]` bf16; the caches are written at `pos` and must not overlap the inputs.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "gpu-kernel" fn attention_decode_rope(
    qkv: *const u16,
    k_cache: *mut u16,
    v_cache: *mut u16,
    state: *const u32,
    partial: *mut f32,
    counters: *mut u32,
    out: *mut u16,
    rope: *const f32,
    q_w: *const u16,
    k_w: *const u16,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
    eps: f32,
    scale_log2: f32,
) {
    let a = Args {
        qkv,
        k_cache,
        v_cache,
        state,
        partial,
        counters,
        out,
        num_heads,
        num_kv_heads,
        group: 0,
        max_seq,
        rows: 1,
        scale_log2,
        rope: Rope { table: rope, q_w, k_w, eps },
    };
    // SAFETY: forwarded to the caller.
    unsafe { start::<true>(a, head_dim) }
}

/// The weight `2^(m − big)` of a partial with maximum `m` (0 for an empty one, `m = −inf`).
#[inline(always)]
fn weight(m: f32, big: f32) -> f32 {
    if m == f32::NEG_INFINITY { 0.0 } else { ex2_approx_f32(m - big) }
}

/// The kernel for `hd = 32 E` (`W = E / 2` words per lane); `ROPE`: the fused-RoPE form.
///
/// # Safety
/// As the kernel's, shape checked.
// Index loops over the small register arrays: by-value array iterators (`zip`, `into_iter`)
// put arrays in local memory (seen in `qk_norm_rope`'s first version).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn run<const W: usize, const E: usize, const ROPE: bool>(a: Args) {
    let hd = 32 * E as u32;
    let (cta, split, splits) = (block_idx_x(), block_idx_y(), grid_dim_y());
    let (row, kvh) = (cta / a.num_kv_heads, cta % a.num_kv_heads);
    let (warp, lane, tid) = (warp_id(), lane_id(), thread_idx_x());
    let group = a.group;
    let smem = dynamic_shared_base().cast::<f32>();
    // Warp w's partial of q head g: m, l, pad, then o [hd].
    let slot = |w: u32, g: u32| smem.add((w * MAX_GROUP + g) * (ML + hd));
    let last_flag: SharedPtr<u32> = smem.add(WARPS * MAX_GROUP * (ML + MAX_HEAD_DIM)).cast();
    // Row `row`'s partial of q head h (0..num_heads), split s.
    let entry = |h: u32, s: u32| {
        let i = (row as usize * a.num_heads as usize + h as usize) * splits as usize + s as usize;
        a.partial.wrapping_add(i * (ML + hd) as usize)
    };
    let out_row = |h: u32| a.out.wrapping_add((row as usize * a.num_heads as usize + h as usize) * hd as usize);

    griddepcontrol_launch_dependents();
    griddepcontrol_wait();

    // SAFETY: state holds LEN words.
    let last_pos = unsafe { a.state.add(POS).read_volatile() };
    let pos = last_pos.wrapping_sub(a.rows - 1 - row);
    let len = if pos < a.max_seq { pos + 1 } else { a.max_seq };
    let act = active(splits, len);
    if split >= act {
        // Uniform over the CTA; idle splits take no part in the merge.
        return;
    }
    let chunk = len.div_ceil(act);
    let start = split.saturating_mul(chunk).min(len);
    let end = start.saturating_add(chunk).min(len);
    let elem0 = lane * E as u32;

    // 1. This warp's positions, online softmax per q head.
    let kv_row = |p: u32| (kvh as usize * a.max_seq as usize + p as usize) * hd as usize + elem0 as usize;
    let q_stride = (a.num_heads + 2 * a.num_kv_heads) as usize * hd as usize;
    let qkv_row = a.qkv.wrapping_add(row as usize * q_stride);
    // The fused form's table row (the last one stands in past the cache).
    let rope_row = a.rope.table.wrapping_add(pos.min(a.max_seq - 1) as usize * hd as usize);
    let norm = |w: *const u16| (!w.is_null()).then_some((w, a.rope.eps));
    let mut qf = [[0.0f32; E]; G];
    for (g, qg) in qf.iter_mut().enumerate() {
        if (g as u32) < group {
            let h = kvh * group + g as u32;
            // SAFETY: qkv holds rows rows of q_stride; the lane's words of q head h are
            // aligned; the fused form's table row and norm weight per its caller.
            let v: [f32; E] = unsafe {
                let v = unpack_words((qkv_row.add((h * hd + elem0) as usize) as *const [u32; W]).read());
                if ROPE { norm_rope::<W, E>(v, lane, norm(a.rope.q_w), rope_row) } else { v }
            };
            *qg = v.map(|x| x * a.scale_log2);
        }
    }
    if ROPE && pos < a.max_seq && start <= pos && pos < end {
        // This CTA's chunk holds the new position: its k (rotated) and v into the caches,
        // seen by the CTA's warps after the barrier.
        if warp == 0 {
            let kv_col = (a.num_heads + kvh) as usize * hd as usize + elem0 as usize;
            let v_col = kv_col + a.num_kv_heads as usize * hd as usize;
            // SAFETY: k and v of kv head kvh in the row; cache row pos < max_seq.
            unsafe {
                let k = unpack_words((qkv_row.add(kv_col) as *const [u32; W]).read());
                let k = norm_rope::<W, E>(k, lane, norm(a.rope.k_w), rope_row);
                let words: [u32; W] = pack_words(k);
                (a.k_cache.add(kv_row(pos)) as *mut [u32; W]).write(words);
                let v = (qkv_row.add(v_col) as *const [u32; W]).read();
                (a.v_cache.add(kv_row(pos)) as *mut [u32; W]).write(v);
            }
        }
        // SAFETY: uniform: the condition is the CTA's.
        unsafe { sync_threads() };
    }
    let mut m = [f32::NEG_INFINITY; G];
    let mut l = [0.0f32; G];
    let mut acc = [[0.0f32; E]; G];
    let mut p = start + warp;
    while p < end {
        let mut kw = [[0u32; W]; U];
        let mut vw = [[0u32; W]; U];
        for u in 0..U {
            let pp = p + u as u32 * WARPS;
            if pp < end {
                // SAFETY: position pp < len <= max_seq of kv head kvh.
                unsafe {
                    kw[u] = ld_words::<W>(a.k_cache.add(kv_row(pp)));
                    vw[u] = ld_words::<W>(a.v_cache.add(kv_row(pp)));
                }
            }
        }
        let mut s = [[f32::NEG_INFINITY; G]; U];
        for u in 0..U {
            if p + (u as u32) * WARPS < end {
                let kf: [f32; E] = unpack_words(kw[u]);
                for g in 0..G {
                    if (g as u32) < group {
                        let mut d = 0.0f32;
                        for e in 0..E {
                            d += qf[g][e] * kf[e];
                        }
                        s[u][g] = warp_sum_f32(d);
                    }
                }
            }
        }
        let vf: [[f32; E]; U] = vw.map(unpack_words);
        for g in 0..G {
            if (g as u32) < group {
                let mut mx = m[g];
                for su in s.iter() {
                    mx = mx.max(su[g]);
                }
                // mx is finite: position p (u = 0) is below end.
                let corr = weight(m[g], mx);
                l[g] *= corr;
                for e in 0..E {
                    acc[g][e] *= corr;
                }
                for u in 0..U {
                    let pw = ex2_approx_f32(s[u][g] - mx);
                    l[g] += pw;
                    for e in 0..E {
                        acc[g][e] += pw * vf[u][e];
                    }
                }
                m[g] = mx;
            }
        }
        p += UNROLL * WARPS;
    }
    for g in 0..G {
        if (g as u32) < group {
            let at = slot(warp, g as u32);
            // SAFETY: the warp's own slots inside SMEM_BYTES.
            unsafe {
                if lane == 0 {
                    st_shared_f32(at, m[g]);
                    st_shared_f32(at.add(1), l[g]);
                }
                for e in 0..E {
                    st_shared_f32(at.add(ML + elem0 + e as u32), acc[g][e]);
                }
            }
        }
    }
    // SAFETY: uniform: every thread of the CTA reaches it.
    unsafe { sync_threads() };

    // 2. The CTA's result per q head: warp w combines the four warps' partials of heads
    // w, w + 4; with one active split that is `out`, else this split's partial.
    let mut g = warp;
    while g < group {
        // SAFETY: slots written above, published by the barrier; the entry of (row, h,
        // split) lies inside partial [rows, num_heads, splits, ML + hd], out's row inside
        // out [rows, num_heads · hd].
        unsafe {
            let mw: [f32; WARPS as usize] = core::array::from_fn(|w| ld_shared_f32(slot(w as u32, g)));
            let big = mw.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let ww = mw.map(|x| weight(x, big));
            let mut lsum = 0.0f32;
            let mut o = [0.0f32; E];
            for (w, &wt) in ww.iter().enumerate() {
                lsum += wt * ld_shared_f32(slot(w as u32, g).add(1));
                for (e, oe) in o.iter_mut().enumerate() {
                    *oe += wt * ld_shared_f32(slot(w as u32, g).add(ML + elem0 + e as u32));
                }
            }
            let h = kvh * group + g;
            if act == 1 {
                store_out::<W, E>(out_row(h).add(elem0 as usize), o, lsum);
            } else {
                let dst = entry(h, split);
                if lane == 0 {
                    dst.write(big);
                    dst.add(1).write(lsum);
                }
                for (e, &oe) in o.iter().enumerate() {
                    dst.add((ML + elem0) as usize + e).write(oe);
                }
            }
        }
        g += WARPS;
    }
    if act == 1 {
        return;
    }

    // 3. Count the CTA in; the last active one of its (row, kv head) merges.
    fence_acq_rel_gpu();
    // SAFETY: uniform barriers; counters [rows · num_kv_heads], cta below it; the flag
    // inside SMEM_BYTES.
    let last = unsafe {
        sync_threads();
        if tid == 0 {
            let counter = a.counters.add(cta as usize);
            let before = atom_global_add_u32(counter, 1);
            let last = before == act - 1;
            if last {
                counter.write_volatile(0);
            }
            fence_acq_rel_gpu();
            st_shared_u32(last_flag, u32::from(last));
        }
        sync_threads();
        ld_shared_u32(last_flag) != 0
    };
    if !last {
        return;
    }
    let mut g = warp;
    while g < group {
        let h = kvh * group + g;
        // SAFETY: entries (row, h, s < act) written by the grid's CTAs before their counter
        // add, read through L2; act <= splits <= 64, so lanes s and s + 32 cover them.
        unsafe {
            let ml = |s: u32| {
                if s < act { ld_global_cg_v2_f32(entry(h, s) as *const [f32; 2]) } else { [f32::NEG_INFINITY, 0.0] }
            };
            let (ml0, ml1) = (ml(lane), ml(lane + 32));
            let big = warp_max_f32(ml0[0].max(ml1[0]));
            let (w0, w1) = (weight(ml0[0], big), weight(ml1[0], big));
            let lsum = warp_sum_f32(w0 * ml0[1] + w1 * ml1[1]);
            let mut o = [0.0f32; E];
            let mut s0 = 0;
            while s0 < act {
                let mut os = [[0.0f32; E]; MU];
                for u in 0..MU {
                    let s = s0 + u as u32;
                    if s < act {
                        os[u] = load_o::<E>(entry(h, s).add((ML + elem0) as usize));
                    }
                }
                for u in 0..MU {
                    let s = s0 + u as u32;
                    if s < act {
                        // Warp-uniform choice of register: split s's weight is in lane s % 32.
                        let wt = shfl_sync_idx_f32(if s < 32 { w0 } else { w1 }, s % 32);
                        for e in 0..E {
                            o[e] += wt * os[u][e];
                        }
                    }
                }
                s0 += MERGE_UNROLL;
            }
            store_out::<W, E>(out_row(h).add(elem0 as usize), o, lsum);
        }
        g += WARPS;
    }
}

/// Writes the lane's `E` outputs `o / lsum` (zeros for an empty sum) as bf16.
///
/// # Safety
/// `p` is `4 W`-byte aligned and points at `E` writable bf16.
#[inline(always)]
unsafe fn store_out<const W: usize, const E: usize>(p: *mut u16, o: [f32; E], lsum: f32) {
    let inv = if lsum > 0.0 { rcp_approx_f32(lsum) } else { 0.0 };
    let words: [u32; W] = pack_words(o.map(|x| x * inv));
    // SAFETY: forwarded to the caller.
    unsafe { (p as *mut [u32; W]).write(words) };
}

/// The lane's `E` (2 or 4) floats of a partial's `o`, through L2.
///
/// # Safety
/// `p` is `4 E`-byte aligned and points at `E` readable floats.
#[inline(always)]
unsafe fn load_o<const E: usize>(p: *const f32) -> [f32; E] {
    let mut o = [0.0f32; E];
    // SAFETY: forwarded to the caller.
    unsafe {
        if E == 4 {
            o[..4].copy_from_slice(&ld_global_cg_v4_f32(p as *const [f32; 4]));
        } else {
            for i in (0..E).step_by(2) {
                o[i..i + 2].copy_from_slice(&ld_global_cg_v2_f32(p.add(i) as *const [f32; 2]));
            }
        }
    }
    o
}
