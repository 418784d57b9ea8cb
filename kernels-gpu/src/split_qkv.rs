//! # Splitting a packed QKV product into q, k, v
//!
//! `q[t, :] = y[t, 0..Nq]`, `k[t, :] = y[t, Nq..Nq+Nkv]`, `v[t, :] = y[t, Nq+Nkv..N]`: a
//! copy. The fallback path of the separate-output API runs one cuBLAS GEMM into a packed
//! `y [M, N]` scratch and then this kernel, instead of three GEMMs (one per tensor), where
//! that is faster (small and medium M, see `host::qkv`).
//!
//! # Parameters
//! `y [m, Nq + 2 Nkv]`, `q [m, Nq]`, `k [m, Nkv]`, `v [m, Nkv]`: row-major bf16, 16-byte
//! aligned, outputs disjoint from `y`.
//!
//! # Thread mapping
//! CTA `b` takes rows `b, b + gridDim.x, ...`. When `Nq` and `Nkv` are multiples of 8,
//! every 16-byte chunk of a `y` row lies inside one output row at a 16-byte aligned
//! offset: thread `t` copies chunks `t, t + 256, ...` with 16-byte loads and stores.
//! Otherwise thread `t` copies elements `t, t + 256, ...` two bytes at a time.
//!
//! # Traffic
//! Reads `2 m N` bytes of `y` (L2 hits when the GEMM just wrote them), writes `2 m N`.
//!
//! # Launch
//! grid `(min(m, config::split_qkv::MAX_CTAS), 1, 1)`, block `(256, 1, 1)`, no shared
//! memory; optionally with programmatic stream serialization (it waits for the previous
//! grid before reading `y`).

use crate::config::{VEC, split_qkv::THREADS};
use crate::ptx::global::{ld_global_cg_v4_u32, st_global_v4_u32};
use crate::ptx::sync::{griddepcontrol_launch_dependents, griddepcontrol_wait};
use crate::ptx::thread::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};
use crate::ptx::trap;
use crate::qkv_out::QkvOut;

/// See the module documentation.
///
/// # Safety
/// The pointers satisfy the layout above; the block has 256 threads (else it traps).
#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn split_qkv(
    y: *const u16,
    q: *mut u16,
    k: *mut u16,
    v: *mut u16,
    m: u32,
    nq: u32,
    nkv: u32,
) {
    if block_dim_x() != THREADS {
        trap();
    }
    let out = QkvOut { q, k, v, nq, nkv };
    let n = out.n();
    griddepcontrol_launch_dependents();
    // y is the previous kernel's output.
    griddepcontrol_wait();
    let vector = nq.is_multiple_of(VEC) && nkv.is_multiple_of(VEC);
    let mut row = block_idx_x();
    while row < m {
        let src = y.wrapping_add(row as usize * n as usize);
        let mut c = thread_idx_x();
        if vector {
            while c < n / VEC {
                // SAFETY: row < m and chunk c < N / 8 is inside y's row; with Nq and Nkv
                // multiples of 8 the chunk is 8 elements of one output row at a 16-byte
                // aligned offset (`element` returns its first).
                unsafe {
                    let chunk = ld_global_cg_v4_u32(src.add((c * VEC) as usize) as *const [u32; 4]);
                    st_global_v4_u32(out.element(row, c * VEC) as *mut [u32; 4], chunk);
                }
                c += THREADS;
            }
        } else {
            while c < n {
                // SAFETY: row < m, column c < N.
                unsafe { out.element(row, c).write(src.add(c as usize).read()) };
                c += THREADS;
            }
        }
        row += grid_dim_x();
    }
}
