//! # Step begin: advance the position, pick the tokens, embed them
//!
//! The first kernel of a decode step (`rows = 1`) or of a prefill chunk (`rows` prompt
//! tokens), so that one captured CUDA graph replays every decode step:
//! ```text
//! p0 = state[POS] + 1 (wrapping; u32::MAX before the first step)    state[POS] = p0 + rows − 1
//! for r < rows, p = p0 + r:
//!   token = prompt[p] if p < state[PROMPT_LEN] else argmax_token(slot[0])
//!   tokens[p] = token                        (p >= max_seq: no write, FLAG_OVERFLOW)
//!   h[r, 0..H] = embed[token, 0..H]          (token >= vocab: zeros, FLAG_BAD_TOKEN)
//! slot[0] = 0                                (empty for this step's LM head)
//! ```
//! An empty slot (no LM head ran, or every logit was NaN) gives `token = u32::MAX`, a bad
//! token.
//!
//! # Parameters
//! `embed [vocab, hidden]` bf16, `prompt [max_seq]` u32, `state [config::step::LEN]` u32,
//! `slot [1]` u64, `tokens [max_seq]` u32, `h [rows, hidden]` bf16; `hidden % 8 == 0`,
//! 16-byte aligned.
//!
//! # Thread mapping and traffic
//! One CTA of 256 threads (a decode step embeds one row; a prefill chunk's copy is small
//! next to its projections). Every thread reads the state and the slot, a CTA barrier,
//! then thread 0 writes them (the read-then-write inside one CTA); for each row thread `i`
//! copies 16-byte chunks `i, i + 256, …` of the embedding row. Reads and writes
//! `2 rows hidden` bytes.
//!
//! # Launch
//! grid `(1, 1, 1)`, block `(256, 1, 1)`, no shared memory; optionally with programmatic
//! stream serialization (everything is touched after `griddepcontrol.wait`).

use crate::config::VEC;
use crate::config::argmax::token as argmax_token;
use crate::config::step::{FLAG_BAD_TOKEN, FLAG_OVERFLOW, FLAGS, POS, PROMPT_LEN, THREADS};
use crate::ptx::global::{ld_global_nc_v4_u32, st_global_v4_u32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{block_dim_x, grid_dim_x, grid_dim_y, sync_threads, thread_idx_x};
use crate::ptx::trap;

/// See the module documentation.
///
/// # Safety
/// The pointers satisfy the layout above; one CTA of 256 threads and `hidden % 8 == 0`
/// (else it traps).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "gpu-kernel" fn decode_step_begin(
    embed: *const u16,
    prompt: *const u32,
    state: *mut u32,
    slot: *mut u64,
    tokens: *mut u32,
    h: *mut u16,
    vocab: u32,
    hidden: u32,
    max_seq: u32,
    rows: u32,
) {
    if block_dim_x() != THREADS || grid_dim_x() != 1 || grid_dim_y() != 1 || !hidden.is_multiple_of(VEC) || rows == 0 {
        trap();
    }
    griddepcontrol_launch_dependents();
    griddepcontrol_wait();
    let tid = thread_idx_x();
    // 1. Every thread reads the state and the slot before thread 0 rewrites them.
    // SAFETY: state holds LEN words, slot one.
    let (p0, prompt_len, from_slot) = unsafe {
        let p0 = state.add(POS).read_volatile().wrapping_add(1);
        (p0, state.add(PROMPT_LEN).read_volatile(), argmax_token(slot.read_volatile()))
    };
    // SAFETY: uniform: every thread of the one CTA reaches it.
    unsafe { sync_threads() };
    let chunks = hidden / VEC;
    let mut flags = 0;
    for r in 0..rows {
        let pos = p0.wrapping_add(r);
        // SAFETY: prompt [max_seq] is read at pos < max_seq.
        let token = if pos < prompt_len && pos < max_seq {
            unsafe { prompt.add(pos as usize).read_volatile() }
        } else {
            from_slot
        };
        let bad = token >= vocab;
        if bad {
            flags |= FLAG_BAD_TOKEN;
        }
        if pos < max_seq {
            if tid == 0 {
                // SAFETY: tokens [max_seq] written at pos < max_seq.
                unsafe { tokens.add(pos as usize).write_volatile(token) };
            }
        } else {
            flags |= FLAG_OVERFLOW;
        }
        // 2. The embedding row (zeros for a bad token).
        let src = if bad { 0 } else { token as usize * hidden as usize };
        let dst = r as usize * hidden as usize;
        let mut c = tid;
        while c < chunks {
            let off = c as usize * VEC as usize;
            // SAFETY: row `token < vocab` of embed, chunk c < hidden / 8, 16-byte aligned; h
            // holds rows rows of hidden elements.
            unsafe {
                let v = if bad { [0; 4] } else { ld_global_nc_v4_u32(embed.add(src + off) as *const [u32; 4]) };
                st_global_v4_u32(h.add(dst + off) as *mut [u32; 4], v);
            }
            c += THREADS;
        }
    }
    if tid == 0 {
        // SAFETY: the state's words and the slot, read by every thread before the barrier.
        unsafe {
            state.add(POS).write_volatile(p0.wrapping_add(rows - 1));
            slot.write_volatile(0);
            if flags != 0 {
                let f = state.add(FLAGS);
                f.write_volatile(f.read_volatile() | flags);
            }
        }
    }
}
