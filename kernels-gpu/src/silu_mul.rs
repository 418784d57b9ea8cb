//! # SiLU·mul of a packed gate/up product (the unfused MLP's activation)
//!
//! `a[t, j] = bf16(silu(y[t, gate(j)]) · y[t, up(j)])` for `y [M, 2I]`, `a [M, I]`, where
//! the gate and up columns come in blocks of `block`: `gate(j) = 2 block ⌊j / block⌋ +
//! j mod block`, `up(j) = gate(j) + block`. With `block = I` that is PyTorch's layout of a
//! merged gate/up projection (all gate columns, then all up columns: baselines (a) and
//! (b)); with `block = 8` it is the fused op's blocked weight (`config::mlp`), whose
//! fallback runs cuBLAS on it. Rounded like PyTorch's `F.silu(gate) * up` (`activation`).
//!
//! # Parameters
//! Row-major bf16, 16-byte aligned, `I % 8 == 0`, `block % 8 == 0`, `a` disjoint from `y`.
//!
//! # Thread mapping and traffic
//! CTA `b` takes rows `b, b + gridDim.x, ...`; thread `t` the 16-byte chunks `t, t + 256,
//! ...` of the row of `a` (8 outputs, whose gate and up values are 8 contiguous columns
//! each, since `block % 8 == 0`). Reads `4 M I` bytes, writes `2 M I`.
//!
//! # Launch
//! grid `(min(M, config::elementwise::MAX_CTAS), 1, 1)`, block `(256, 1, 1)`, no shared
//! memory; optionally with programmatic stream serialization (it waits before reading y).

use crate::activation::silu_mul_bf16x8;
use crate::config::{VEC, elementwise::THREADS};
use crate::ptx::global::{ld_global_cg_v4_u32, st_global_v4_u32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};
use crate::ptx::trap;

/// See the module documentation.
///
/// # Safety
/// The pointers satisfy the layout above; the block has 256 threads and `I`, `block` are
/// multiples of 8 (else it traps).
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn silu_mul(y: *const u16, a: *mut u16, m: u32, inter: u32, block: u32) {
    if block_dim_x() != THREADS || !inter.is_multiple_of(VEC) || block == 0 || !block.is_multiple_of(VEC) {
        trap();
    }
    griddepcontrol_launch_dependents();
    // y is the previous kernel's output.
    griddepcontrol_wait();
    let mut row = block_idx_x();
    while row < m {
        let (src, dst) =
            (y.wrapping_add(row as usize * 2 * inter as usize), a.wrapping_add(row as usize * inter as usize));
        let mut c = thread_idx_x();
        while c < inter / VEC {
            let j = c * VEC;
            let gate = 2 * block * (j / block) + j % block;
            // SAFETY: row < m; columns gate..gate + 8 and gate + block..+ 8 lie inside y's row
            // (gate + block + 8 <= 2 I), output chunk c inside a's; all 16-byte aligned.
            unsafe {
                let g = ld_global_cg_v4_u32(src.add(gate as usize) as *const [u32; 4]);
                let u = ld_global_cg_v4_u32(src.add((gate + block) as usize) as *const [u32; 4]);
                st_global_v4_u32(dst.add(j as usize) as *mut [u32; 4], silu_mul_bf16x8(g, u));
            }
            c += THREADS;
        }
        row += grid_dim_x();
    }
}
