//! # Residual add (the unfused baselines' `h + linear(x)`)
//!
//! `out[i] = bf16(residual[i] + y[i])` over `len` elements, rounded once in f32: PyTorch's
//! `h + y` on bf16 tensors. `out` may be `residual` (in place).
//!
//! # Parameters
//! bf16, 16-byte aligned, `len % 8 == 0`; `y` disjoint from `out`.
//!
//! # Thread mapping and traffic
//! Thread `i` of the grid takes 16-byte chunks `i, i + threads, ...`. Reads `4 len` bytes,
//! writes `2 len`.
//!
//! # Launch
//! grid `(min(ceil(len / 2048), config::elementwise::MAX_CTAS), 1, 1)`, block
//! `(256, 1, 1)`, no shared memory; optionally with programmatic stream serialization.

use crate::activation::add_bf16x8;
use crate::config::{VEC, elementwise::THREADS};
use crate::ptx::global::{ld_global_cg_v4_u32, st_global_v4_u32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};
use crate::ptx::trap;

/// See the module documentation.
///
/// # Safety
/// The pointers satisfy the layout above; the block has 256 threads and `len % 8 == 0`
/// (else it traps).
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn residual_add(residual: *const u16, y: *const u16, out: *mut u16, len: u32) {
    if block_dim_x() != THREADS || !len.is_multiple_of(VEC) {
        trap();
    }
    griddepcontrol_launch_dependents();
    griddepcontrol_wait();
    let chunks = len / VEC;
    let mut c = block_idx_x() * THREADS + thread_idx_x();
    while c < chunks {
        let off = c as usize * VEC as usize;
        // SAFETY: chunk c < len / 8 lies inside all three buffers, 16-byte aligned.
        unsafe {
            let r = ld_global_cg_v4_u32(residual.add(off) as *const [u32; 4]);
            let v = ld_global_cg_v4_u32(y.add(off) as *const [u32; 4]);
            st_global_v4_u32(out.add(off) as *mut [u32; 4], add_bf16x8(r, v));
        }
        c += grid_dim_x() * THREADS;
    }
}
