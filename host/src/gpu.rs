//! [`Gpu`]: one CUDA context, one stream, the loaded kernels (one module per context and
//! PTX, shared by every `Gpu` on it) and (lazily) cuBLAS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use crate::blas::Blas;
use crate::current::Current;
use crate::device::{DeviceInfo, check_arch, device_count, query_info};
use crate::error::{Error, Result};
use crate::kernels::Kernels;
use crate::wgmma::WgmmaKernels;

/// A CUDA device with nanofuse's kernels loaded, and the stream all work is issued on.
///
/// Create it once and share it (`Arc<Gpu>`) between ops. Everything nanofuse issues goes
/// to [`Gpu::stream`], in order; nothing synchronizes the host unless a function says so.
///
/// # Streams
/// A `Gpu` issues on one stream. To run ops on another stream of the same context (one per
/// engine worker, say), make a view with [`Gpu::on_stream`] and views of the ops with their
/// `on` method (e.g. [`FusedRmsNormQkv::on`](crate::FusedRmsNormQkv::on)): a view shares
/// the loaded kernels and the op's weights (no copy, no JIT), and has its own stream,
/// cuBLAS handle and scratch, so views on different streams may run at the same time.
///
/// The PTX module is JIT-compiled once per context and PTX text: a second [`Gpu::new`] or
/// [`Gpu::with_stream`] on a context that already has it (while any `Gpu` using it lives)
/// shares it ([`Gpu::shares_module`]).
///
/// # Effects on the caller's context
/// * **Current context.** Every nanofuse call leaves the calling thread's current CUDA
///   context as it found it: launches and cuBLAS calls make the op's context current and
///   restore the previous one, and so do the helpers here (`upload`, `download`, ...) and
///   the constructors. cudarc's own methods (on [`Gpu::stream`], say) and the drops of
///   cudarc objects make their context current and leave it so, as cudarc always does.
/// * **Event tracking.** A `Gpu` turns off cudarc's per-buffer event tracking on the
///   `CudaContext` handle of its stream ([`CudaContext::disable_event_tracking`]): buffers
///   allocated through that handle afterwards carry no events, so cudarc no longer orders
///   their uses across streams. nanofuse needs this for CUDA graphs: an op waiting on an
///   event recorded before the capture is a capture-isolation error. With [`Gpu::new`]
///   the handle is nanofuse's own and nothing else is affected; with
///   [`Gpu::with_stream`] and [`Gpu::on_stream`] it is the handle the caller's stream
///   came from. An engine that wants cudarc's tracking for its own buffers can keep it on a
///   handle of its own (`CudaContext::new` again) and pass nanofuse streams of
///   `gpu.context()`. Across streams, the caller orders the uses of its buffers (events,
///   `CudaStream::join`).
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// One `Kernels` per context and PTX text, shared (see `shared_kernels`).
    pub(crate) kernels: Arc<Kernels>,
    /// The sm_90a module's kernels (warpgroup MMA), where the device and the build have them.
    /// The sm_90a module, or why it is not in use on this device.
    pub(crate) wgmma: std::result::Result<Arc<WgmmaKernels>, Arc<str>>,
    info: DeviceInfo,
    blas: Mutex<Option<Arc<Blas>>>,
    pdl: AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish_non_exhaustive()
    }
}

/// A loaded module in the process-wide cache: its context (as an address), the PTX text it
/// was loaded from, and the kernels, held weakly (the `Gpu`s hold them).
struct CachedModule {
    ctx: usize,
    ptx: Box<str>,
    kernels: Weak<Kernels>,
}

/// The modules loaded in this process. A live entry's kernels hold their module, which
/// holds its context, so a context's address cannot be reused by another while its entry
/// lives; dead entries are dropped at the next lookup.
static MODULES: Mutex<Vec<CachedModule>> = Mutex::new(Vec::new());

/// The kernels of `ptx` loaded in `ctx`: from the cache if a live `Gpu` on this context
/// loaded the same PTX, else loaded now (the JIT compilation: about a second for
/// nanofuse's module). The lock is held while loading, so two threads opening the same
/// context load it once.
fn shared_kernels(ctx: &Arc<CudaContext>, ptx: &str, max_smem: u32) -> Result<Arc<Kernels>> {
    let mut cache = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    cache.retain(|m| m.kernels.strong_count() > 0);
    let key = ctx.cu_ctx() as usize;
    if let Some(kernels) = cache.iter().find(|m| m.ctx == key && *m.ptx == *ptx).and_then(|m| m.kernels.upgrade()) {
        return Ok(kernels);
    }
    let kernels = Arc::new(Kernels::load(ctx, ptx, max_smem)?);
    cache.push(CachedModule { ctx: key, ptx: ptx.into(), kernels: Arc::downgrade(&kernels) });
    Ok(kernels)
}

/// The sm_90a modules loaded in this process, as [`MODULES`], and the refusals: a module the
/// driver's compilation made unusable stays refused for its context (no second JIT).
struct CachedWgmma {
    ctx: usize,
    ptx: Box<str>,
    kernels: std::result::Result<Weak<WgmmaKernels>, Arc<str>>,
}

static WGMMA_MODULES: Mutex<Vec<CachedWgmma>> = Mutex::new(Vec::new());

/// The sm_90a module `ptx` loaded in `ctx`, shared as [`shared_kernels`] shares the main one;
/// `Err` says why it is unusable (`WgmmaKernels::load`).
fn shared_wgmma(ctx: &Arc<CudaContext>, ptx: &str) -> std::result::Result<Arc<WgmmaKernels>, Arc<str>> {
    let mut cache = WGMMA_MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    cache.retain(|m| m.kernels.as_ref().map_or(true, |k| k.strong_count() > 0));
    let key = ctx.cu_ctx() as usize;
    if let Some(m) = cache.iter().find(|m| m.ctx == key && *m.ptx == *ptx) {
        match &m.kernels {
            Err(why) => return Err(why.clone()),
            Ok(weak) => {
                if let Some(kernels) = weak.upgrade() {
                    return Ok(kernels);
                }
            }
        }
    }
    let (kernels, cached) = match WgmmaKernels::load(ctx, ptx) {
        Ok(k) => {
            let k = Arc::new(k);
            let weak = Arc::downgrade(&k);
            (Ok(k), Ok(weak))
        }
        Err(why) => {
            let why: Arc<str> = format!("the sm_90a module is refused: {why}").into();
            (Err(why.clone()), Err(why))
        }
    };
    cache.push(CachedWgmma { ctx: key, ptx: ptx.into(), kernels: cached });
    kernels
}

impl Gpu {
    /// Opens device `ordinal` (its primary context, through a `CudaContext` handle of
    /// nanofuse's own) with a new stream and loads `ptx`, which was built for `ptx_arch`
    /// (e.g. "sm_90"). The root `nanofuse` crate passes its embedded PTX.
    pub fn new(ordinal: usize, ptx: &str, ptx_arch: &str) -> Result<Arc<Gpu>> {
        Self::open(ordinal, ptx, ptx_arch, None)
    }

    /// As [`Gpu::new`], and also loads `sm90a_ptx`, the module of warpgroup-MMA kernels
    /// (`build.rs` builds it for sm_90a), when the device is of compute capability 9.0 and
    /// the text is not empty; elsewhere it is ignored and the ops take other routes. The
    /// root `nanofuse` crate's `open` passes both embedded modules.
    pub fn open(ordinal: usize, ptx: &str, ptx_arch: &str, sm90a_ptx: Option<&str>) -> Result<Arc<Gpu>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        let _current = Current::save()?;
        let ctx = CudaContext::new(ordinal).map_err(Error::driver("cuDevicePrimaryCtxRetain"))?;
        // Event tracking off before the handle's first stream: cudarc's first `new_stream` on
        // a handle that tracks events synchronizes the whole context (`cuCtxSynchronize`),
        // which fails, and invalidates, any graph capture another thread of the process has
        // under way on the device.
        // SAFETY: the handle is nanofuse's own (see "Effects on the caller's context").
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(Error::driver("cuStreamCreate"))?;
        Self::with_stream_modules(stream, ptx, ptx_arch, sm90a_ptx)
    }

    /// Uses the caller's stream (and its context), for engines that own their CUDA setup.
    ///
    /// Turns off cudarc's event tracking on the stream's `CudaContext` handle (see
    /// "Effects on the caller's context" above). Buffers shared with other streams must be
    /// synchronized by the caller.
    pub fn with_stream(stream: Arc<CudaStream>, ptx: &str, ptx_arch: &str) -> Result<Arc<Gpu>> {
        Self::with_stream_modules(stream, ptx, ptx_arch, None)
    }

    /// As [`Gpu::with_stream`], with the sm_90a module as in [`Gpu::open`].
    pub fn with_stream_modules(
        stream: Arc<CudaStream>,
        ptx: &str,
        ptx_arch: &str,
        sm90a_ptx: Option<&str>,
    ) -> Result<Arc<Gpu>> {
        let _current = Current::save()?;
        let ctx = stream.context().clone();
        // SAFETY: see above; nanofuse issues everything on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let info = query_info(&ctx)?;
        check_arch(&info, ptx_arch)?;
        let kernels = shared_kernels(&ctx, ptx, info.max_smem_per_block)?;
        let wgmma = match sm90a_ptx {
            _ if info.compute_capability != (9, 0) => {
                Err(format!("compute capability {:?}: the sm_90a module needs 9.0", info.compute_capability).into())
            }
            Some(text) if !text.is_empty() => shared_wgmma(&ctx, text),
            _ => Err("no sm_90a module was given (or the build made none)".into()),
        };
        let pdl = AtomicBool::new(info.compute_capability.0 >= 9);
        Ok(Arc::new(Gpu { ctx, stream, kernels, wgmma, info, blas: Mutex::new(None), pdl }))
    }

    /// A view of this `Gpu` that issues on `stream`, a stream of the same CUDA context
    /// (from any `CudaContext` handle of it; another context is [`Error::WrongDevice`]).
    ///
    /// The view shares the loaded kernels (no JIT) and starts with this `Gpu`'s PDL setting
    /// (each view has its own afterwards); it has its own cuBLAS handle and workspace,
    /// created when first needed or by an op's `reserve`. Pass it to an op's `on` to run
    /// the op on `stream`. As [`Gpu::with_stream`], it turns off cudarc's event tracking
    /// on `stream`'s `CudaContext` handle (nothing changes when that is this `Gpu`'s,
    /// e.g. a stream from `gpu.context().new_stream()`).
    pub fn on_stream(&self, stream: Arc<CudaStream>) -> Result<Arc<Gpu>> {
        let ctx = stream.context().clone();
        if ctx.cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::WrongDevice { arg: "stream", expected: self.ctx.ordinal(), found: ctx.ordinal() });
        }
        // SAFETY: as in `with_stream`.
        unsafe { ctx.disable_event_tracking() };
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            kernels: self.kernels.clone(),
            wgmma: self.wgmma.clone(),
            info: self.info.clone(),
            blas: Mutex::new(None),
            pdl: AtomicBool::new(self.pdl()),
        }))
    }

    /// Whether `self` and `other` launch from the same loaded module: true for any two
    /// `Gpu`s on one context made from the same PTX text while either lives (the module is
    /// JIT-compiled once; see "Streams" in the type's docs).
    pub fn shares_module(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.kernels, &other.kernels)
    }

    /// Checks that `view` runs in this `Gpu`'s context (an op's view on it may then use
    /// this `Gpu`'s buffers), and makes `view`'s stream wait for the work issued so far on
    /// this one (the op's weights being uploaded and folded).
    pub(crate) fn adopt(&self, arg: &'static str, view: &Gpu) -> Result<()> {
        if view.ctx.cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::WrongDevice { arg, expected: self.ctx.ordinal(), found: view.ctx.ordinal() });
        }
        if view.stream.cu_stream() != self.stream.cu_stream() {
            let _current = Current::save()?;
            view.stream.join(&self.stream).map_err(Error::driver("cuStreamWaitEvent"))?;
        }
        Ok(())
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

    /// Whether the warpgroup-MMA kernels (the sm_90a module) are loaded.
    pub fn has_wgmma(&self) -> bool {
        self.wgmma.is_ok()
    }

    /// Why the warpgroup-MMA kernels are not loaded (`None` when they are): the device is
    /// not of compute capability 9.0, no sm_90a module was given, or the driver's
    /// compilation of it was unusable (the reason names the entry and its register count).
    pub fn wgmma_unavailable(&self) -> Option<String> {
        self.wgmma.as_ref().err().map(|why| why.to_string())
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
        let _current = Current::save()?;
        self.stream.synchronize().map_err(Error::driver("cuStreamSynchronize"))
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        let _current = Current::save()?;
        self.stream.clone_htod(host).map_err(Error::driver("cuMemcpyHtoD"))
    }

    /// Copies a device buffer back to the host (synchronizes the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        let _current = Current::save()?;
        self.stream.clone_dtoh(dev).map_err(Error::driver("cuMemcpyDtoH"))
    }

    /// A new zero-filled device buffer of `len` elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        let _current = Current::save()?;
        self.stream.alloc_zeros(len).map_err(Error::driver("cuMemAlloc"))
    }

    /// Fills a bf16 buffer with NaN (poisoning outputs before a test run).
    pub fn fill_nan(&self, buf: &mut CudaSlice<bf16>) -> Result<()> {
        let nan = vec![bf16::NAN; buf.len()];
        let _current = Current::save()?;
        self.stream.memcpy_htod(&nan, buf).map_err(Error::driver("cuMemcpyHtoD"))
    }

    /// The cuBLAS handle on this stream, created on first use (an op's `reserve` creates it
    /// before any graph capture).
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
