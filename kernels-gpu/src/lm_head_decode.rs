//! # The LM head with the final RMSNorm and the greedy argmax fused, decode path (M <= 16)
//!
//! `slot[t] = max(slot[t], key(argmax_n bf16(rmsnorm(h[t]) · W'ᵀ)))`: the decode kernel
//! (`decode`: W streaming, x staging, MMA loop, split-K reduction) with the `ArgMax`
//! epilogue, in the four schedules the planner picks from. The model's final norm gain is
//! folded into the LM head's weight once (`W' = bf16(W · diag(g))`, k-interleaved, as the
//! fused QKV op's), and the `[M, vocab]` logits never go to memory: each warp reduces its
//! 16 rows' keys (`config::argmax::key`) per token and does one `atom.global.max.u64` per
//! token.
//!
//! # Parameters
//! `h [M, K]` bf16, `W' [N, K]` bf16 (`N` = vocabulary, `K` = hidden, `K % 8 == 0`),
//! `slot [M]` u64 (0 before the launch), `eps`. 16-byte aligned, `1 <= M <= 16` (`<= 8`
//! for `*_early_m8`); launch shape as for every decode entry.
//!
//! # Traffic

//! of which an H100 reads about 3 TB/s), `2 M K` of h per row tile, one atomic per token
//! per warp.

use crate::decode::{ArgMax, decode_entries};

decode_entries! {
    /// Fused RMSNorm + LM head + argmax for small M (see the module documentation).
    names = [
        fused_rmsnorm_argmax_decode,
        fused_rmsnorm_argmax_decode_early,
        fused_rmsnorm_argmax_decode_early_m8,
        fused_rmsnorm_argmax_decode_ring
    ],
    params = (h: *const u16, w: *const u16, slot: *mut u64, m: u32, k: u32, n: u32, eps: f32),
    run = (h, w, ArgMax { slot, n }, m, k, eps),
}
