//! [`Gpu`]: one CUDA device, one stream, the loaded kernels and (lazily) cuBLAS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, ValidAsZeroBits,
};
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
        let kernels = Kernels::load(&ctx, ptx, &info)?;
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

    /// Checks that `buf` is on this device, holds exactly `len` elements and is 16-byte
    /// aligned; returns its device address.
    pub(crate) fn input<T>(&self, arg: &'static str, buf: &impl DevicePtr<T>, len: usize) -> Result<BufRef> {
        self.check_context(arg, buf)?;
        let (ptr, _sync) = buf.device_ptr(&self.stream);
        check_buffer(arg, ptr, buf.len(), len, size_of::<T>())
    }

    /// As [`Gpu::input`], for a buffer the kernel writes.
    pub(crate) fn output<T>(&self, arg: &'static str, buf: &mut impl DevicePtrMut<T>, len: usize) -> Result<BufRef> {
        self.check_context(arg, buf)?;
        let got = buf.len();
        let (ptr, _sync) = buf.device_ptr_mut(&self.stream);
        check_buffer(arg, ptr, got, len, size_of::<T>())
    }

    fn check_context<T>(&self, arg: &'static str, buf: &impl DeviceSlice<T>) -> Result<()> {
        let theirs = buf.stream().context();
        if theirs.cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::WrongDevice { arg, expected: self.ctx.ordinal(), found: theirs.ordinal() });
        }
        Ok(())
    }
}

/// A validated device buffer: name, address and byte length (for overlap checks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BufRef {
    pub name: &'static str,
    pub ptr: u64,
    pub bytes: u64,
}

/// Alignment every buffer passed to nanofuse's kernels must have (16-byte vector paths).
pub const BUFFER_ALIGN: u64 = 16;

pub(crate) fn check_buffer(arg: &'static str, ptr: u64, got: usize, len: usize, elem: usize) -> Result<BufRef> {
    if got != len {
        return Err(Error::Length { arg, expected: len, got });
    }
    if !ptr.is_multiple_of(BUFFER_ALIGN) {
        return Err(Error::Misaligned { arg, addr: ptr, align: BUFFER_ALIGN });
    }
    Ok(BufRef { name: arg, ptr, bytes: (len * elem) as u64 })
}

/// Error if any written buffer overlaps any other buffer.
pub(crate) fn check_no_overlap(written: &[BufRef], read: &[BufRef]) -> Result<()> {
    let overlaps =
        |a: &BufRef, b: &BufRef| a.bytes > 0 && b.bytes > 0 && a.ptr < b.ptr + b.bytes && b.ptr < a.ptr + a.bytes;
    for (i, w) in written.iter().enumerate() {
        for other in written[i + 1..].iter().chain(read) {
            if overlaps(w, other) {
                return Err(Error::Overlap { a: w.name, b: other.name });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_checked_for_length_alignment_and_overlap() {
        assert!(matches!(check_buffer("x", 256, 10, 12, 2), Err(Error::Length { arg: "x", expected: 12, got: 10 })));
        assert!(matches!(check_buffer("x", 258, 12, 12, 2), Err(Error::Misaligned { arg: "x", .. })));
        let a = check_buffer("a", 256, 8, 8, 2).unwrap();
        let b = check_buffer("b", 256 + 16, 8, 8, 2).unwrap();
        let c = check_buffer("c", 256 + 8, 8, 8, 2).unwrap_or(BufRef { name: "c", ptr: 264, bytes: 16 });
        assert!(check_no_overlap(&[a], &[b]).is_ok());
        assert!(matches!(check_no_overlap(&[a], &[c]), Err(Error::Overlap { a: "a", b: "c" })));
        assert!(matches!(check_no_overlap(&[b, c], &[]), Err(Error::Overlap { .. })));
    }
}
