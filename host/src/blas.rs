//! cuBLAS, loaded at run time: the GEMM of the unfused baseline (what PyTorch's
//! `F.linear` runs) and of the large-M fallback.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::cublas::{CudaBlas, result as cublas, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::current::Current;
use crate::error::{Error, Result};

/// Workspace handed to cuBLAS (PyTorch's default size on Hopper). An explicit workspace
/// keeps cuBLAS from allocating inside CUDA-graph capture.
const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLAS handle bound to one stream (a [`Gpu`](crate::Gpu)'s), with its workspace: a
/// handle is bound to one stream and its workspace must not be used by two streams at once,
/// so every `Gpu`, views of one included, has its own.
///
/// Handles are pooled, never destroyed while the process runs (up to [`IDLE_PER_CONTEXT`]
/// idle ones per context): `cublasDestroy` synchronizes the whole device (cuBLAS's
/// documentation), and a device-wide synchronization invalidates a CUDA-graph capture under
/// way on any other thread's stream. Dropping a `Gpu` in one thread while an engine in
/// another captures its step graph would otherwise break that capture. A pooled handle
/// keeps its context retained.
pub(crate) struct Blas {
    /// Taken out in `drop` only.
    idle: ManuallyDrop<Idle>,
    stream: Arc<CudaStream>,
}

/// A handle and its workspace, between uses or in use by one [`Blas`].
struct Idle {
    ctx: usize,
    handle: CudaBlas,
    workspace: CudaSlice<u8>,
}

/// Most idle handles kept per context; a handle dropped beyond them is destroyed.
const IDLE_PER_CONTEXT: usize = 16;

static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Blas> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cublas {
                op: "load",
                reason: "libcublas could not be loaded (is the CUDA toolkit's lib64 directory on \
                         LD_LIBRARY_PATH?)"
                    .into(),
            });
        }
        let _current = Current::save()?;
        let ctx = stream.context().cu_ctx() as usize;
        let pooled = {
            let mut idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
            idle.iter().position(|i| i.ctx == ctx).map(|at| idle.swap_remove(at))
        };
        let idle = match pooled {
            Some(mut i) => {
                // SAFETY: the handle is idle (its last stream was synchronized when it was
                // pooled) and `stream` is of its context.
                unsafe { i.handle.set_stream(stream.clone()) }.map_err(Error::cublas("cublasSetStream"))?;
                i
            }
            None => {
                let handle = CudaBlas::new(stream.clone()).map_err(Error::cublas("cublasCreate"))?;
                let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES).map_err(Error::driver("cuMemAlloc"))?;
                Idle { ctx, handle, workspace }
            }
        };
        // Again for a pooled handle: cublasSetStream resets the handle's workspace.
        {
            let (ptr, _sync) = idle.workspace.device_ptr(stream);
            // SAFETY: the workspace outlives the handle's use of it (both live in `Idle`,
            // which is pooled or dropped as a whole) and is used only on this handle's stream.
            unsafe { sys::cublasSetWorkspace_v2(*idle.handle.handle(), ptr as *mut c_void, WORKSPACE_BYTES) }
                .result()
                .map_err(Error::cublas("cublasSetWorkspace"))?;
        }
        Ok(Blas { idle: ManuallyDrop::new(idle), stream: stream.clone() })
    }

    fn handle(&self) -> sys::cublasHandle_t {
        *self.idle.handle.handle()
    }

    /// Row-major `y[m, n] = x[m, k] · W[n, k]ᵀ` (leading dimension of y: `ldy`), bf16 in
    /// and out, f32 accumulation (`CUBLAS_COMPUTE_32F`).
    ///
    /// cuBLAS is column-major. A row-major `[r, c]` matrix is the column-major `[c, r]`
    /// matrix, so the call computes `yᵀ[n, m] = W[n, k] · xᵀ[k, m]` in column-major terms:
    /// A is W seen as column-major `k x n` and transposed (`OP_T`, lda = k), B is x seen as
    /// column-major `k x m` (`OP_N`, ldb = k), C is y as column-major `n x m` (ldc = ldy).
    ///
    /// # Safety
    /// `x`, `w`, `y` are device buffers on the handle's context holding `m·k`, `n·k` and
    /// `m·ldy` bf16; `y` overlaps neither input; dimensions fit in `i32`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_xwt(
        &self,
        x: u64,
        w: u64,
        y: u64,
        m: usize,
        k: usize,
        n: usize,
        ldy: usize,
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.gemm_ex(x, w, y, m, k, n, ldy, 0.0) }
    }

    /// Row-major `y[m, n] += x[m, k] · W[n, k]ᵀ` (`beta = 1`: cuBLAS reads y, adds the
    /// product in f32 and rounds once; the projection's fused residual add on its fallback).
    ///
    /// # Safety
    /// As [`Blas::gemm_xwt`]; `y` holds the residual.
    pub(crate) unsafe fn gemm_xwt_add(&self, x: u64, w: u64, y: u64, m: usize, k: usize, n: usize) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.gemm_ex(x, w, y, m, k, n, n, 1.0) }
    }

    /// `cublasGemmEx` for the row-major `y = x · Wᵀ + beta · y` (see [`Blas::gemm_xwt`]).
    ///
    /// # Safety
    /// As [`Blas::gemm_xwt`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_ex(
        &self,
        x: u64,
        w: u64,
        y: u64,
        m: usize,
        k: usize,
        n: usize,
        ldy: usize,
        beta: f32,
    ) -> Result<()> {
        let alpha = 1.0f32;
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        // cuBLAS launches in the thread's current context: the handle's, for this call only.
        let _current = Current::bind(self.stream.context())?;
        // SAFETY: forwarded to the caller; alpha/beta are host scalars (default pointer mode).
        unsafe {
            cublas::gemm_ex(
                self.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                bf16,
                k as i32,
                x as *const c_void,
                bf16,
                k as i32,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                bf16,
                ldy as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(Error::cublas("cublasGemmEx"))
    }
}

impl Drop for Blas {
    /// Pools the handle (see [`Blas`]) once its stream has finished the work queued with it,
    /// so that the next user's stream never overlaps this one's use of the workspace; where
    /// that synchronization fails, or the pool is full, the handle is destroyed.
    fn drop(&mut self) {
        // SAFETY: `idle` is not used after this.
        let idle = unsafe { ManuallyDrop::take(&mut self.idle) };
        let synced = Current::save().is_ok_and(|_current| self.stream.synchronize().is_ok());
        let mut pool = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
        if synced && pool.iter().filter(|i| i.ctx == idle.ctx).count() < IDLE_PER_CONTEXT {
            pool.push(idle);
        }
    }
}

/// Destroys the idle cuBLAS handles nanofuse keeps for reuse (see [`Blas`]) and frees their
/// workspaces; returns how many. Handles of live `Gpu`s are untouched. `cublasDestroy`
/// synchronizes the device, so call it only where no thread is capturing a CUDA graph: at
/// shutdown, before a leak check, or to give the memory back (32 MiB of workspace and
/// cuBLAS's own allocations per handle).
pub fn release_idle_cublas_handles() -> usize {
    let idle: Vec<Idle> = std::mem::take(&mut *IDLE.lock().unwrap_or_else(PoisonError::into_inner));
    let n = idle.len();
    // cuBLAS and cudarc make the handles' context current while they destroy and free.
    let _current = Current::save();
    drop(idle);
    n
}
