//! [`Gpu`]: one CUDA device, one stream, the loaded kernels and (lazily) cuBLAS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use crate::blas::Blas;
use crate::device::{DeviceInfo, check_arch, device_count, query_info};
use crate::error::{Error, Result};
use crate::kernels::Kernels;

/// A CUDA device with nanofuse's kernels loaded, and the stream all work is issued on.
///
/// Create it once and share it (`Arc<Gpu>`) between ops. Everything nanofuse issues goes
/// to [`Gpu::stream`], in order; nothing synchronizes the host unless a function says so.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub(crate) kernels: Kernels,
    info: DeviceInfo,
    blas: Mutex<Option<Arc<Blas>>>,
    pdl: AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens device `ordinal` with its own new stream and loads `ptx`, which was built for
    /// `ptx_arch` (e.g. "sm_90"). The root `nanofuse` crate passes its embedded PTX.
    pub fn new(ordinal: usize, ptx: &str, ptx_arch: &str) -> Result<Arc<Gpu>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(Error::driver("cuDevicePrimaryCtxRetain"))?;
        let stream = ctx.new_stream().map_err(Error::driver("cuStreamCreate"))?;
        Self::with_stream(stream, ptx, ptx_arch)
    }

    /// Uses the caller's stream (and its context), for engines that own their CUDA setup.
    ///
    /// nanofuse orders its work on this one stream, so it turns off cudarc's per-buffer
    /// event tracking for the context (events recorded on every launch would end up inside
    /// captured CUDA graphs). Buffers shared with other streams must be synchronized by the
    /// caller.
    pub fn with_stream(stream: Arc<CudaStream>, ptx: &str, ptx_arch: &str) -> Result<Arc<Gpu>> {
        let ctx = stream.context().clone();
        // SAFETY: see above; nanofuse issues everything on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let info = query_info(&ctx)?;
        check_arch(&info, ptx_arch)?;
        let kernels = Kernels::load(&ctx, ptx, info.max_smem_per_block)?;
        let pdl = AtomicBool::new(info.compute_capability.0 >= 9);
        Ok(Arc::new(Gpu { ctx, stream, kernels, info, blas: Mutex::new(None), pdl }))
    }

    /// Whether nanofuse's kernels are launched with programmatic dependent launch (PDL, sm_90
    /// and newer; on by default there). Under PDL a kernel starts while the previous kernel
    /// in the stream drains: it streams its weights, then waits for that kernel before
    /// reading activations or writing outputs. Weights must therefore not be written by
    /// the kernel immediately before a nanofuse kernel.
    pub fn pdl(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }

    /// Turns programmatic dependent launch on or off (it stays off on GPUs older than
    /// sm_90, where `griddepcontrol` does not exist).
    pub fn set_pdl(&self, on: bool) {
        self.pdl.store(on && self.info.compute_capability.0 >= 9, Ordering::Relaxed);
    }

    /// The device's properties.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all of nanofuse's work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until all work issued on the stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(Error::driver("cuStreamSynchronize"))
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).map_err(Error::driver("cuMemcpyHtoD"))
    }

    /// Copies a device buffer back to the host (synchronizes the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(dev).map_err(Error::driver("cuMemcpyDtoH"))
    }

    /// A new zero-filled device buffer of `len` elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(len).map_err(Error::driver("cuMemAlloc"))
    }

    /// Fills a bf16 buffer with NaN (poisoning outputs before a test run).
    pub fn fill_nan(&self, buf: &mut CudaSlice<bf16>) -> Result<()> {
        let nan = vec![bf16::NAN; buf.len()];
        self.stream.memcpy_htod(&nan, buf).map_err(Error::driver("cuMemcpyHtoD"))
    }

    /// The cuBLAS handle on this stream, created on first use.
    pub(crate) fn blas(&self) -> Result<Arc<Blas>> {
        let mut slot = self.blas.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        let b = Arc::new(Blas::new(&self.stream)?);
        *slot = Some(b.clone());
        Ok(b)
    }
}
