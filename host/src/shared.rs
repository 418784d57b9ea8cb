//! [`Shared`]: an op's device weights, held by the op and by its views on other streams
//! (`op.on(&gpu)`), freed when the last holder drops.

use std::ops::Deref;
use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::current::Current;
use crate::error::Result;
use crate::gpu::Gpu;

/// Device buffers shared between an op and its views; the buffers are freed on the stream
/// they were allocated on (cudarc frees on a buffer's own stream) when the last holder
/// drops.
///
/// A holder on another stream makes the buffers' stream wait for its own stream when it
/// drops (an event, no host wait), so a free that follows, from whichever holder drops
/// last, never overtakes work a view has queued on the weights.
pub(crate) struct Shared<T> {
    inner: Arc<T>,
    /// The stream the buffers were allocated on.
    home: Arc<CudaStream>,
    /// This holder's stream, where it is not `home`.
    away: Option<Arc<CudaStream>>,
}

impl<T> Shared<T> {
    /// Buffers allocated on `home` (the constructing op's stream).
    pub(crate) fn new(inner: T, home: &Arc<CudaStream>) -> Self {
        Shared { inner: Arc::new(inner), home: home.clone(), away: None }
    }

    /// Another holder, for an op view on `view` (a `Gpu` of `owner`'s context, checked
    /// here; `view`'s stream first waits for the work queued so far on `owner`'s).
    pub(crate) fn view(&self, owner: &Gpu, view: &Gpu) -> Result<Self> {
        owner.adopt("gpu", view)?;
        let away = (view.stream().cu_stream() != self.home.cu_stream()).then(|| view.stream().clone());
        Ok(Shared { inner: self.inner.clone(), home: self.home.clone(), away })
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let Some(away) = &self.away else { return };
        let ctx = self.home.context();
        // A drop cannot return an error: cudarc's error slot of the context keeps it, and
        // the next call on the context reports it.
        let _current = Current::save();
        ctx.record_err(self.home.join(away));
    }
}

/// A fused op's folded weight and the unit gain of its fallback's RMSNorm (g is in the
/// weight).
pub(crate) struct Folded {
    pub(crate) w: cudarc::driver::CudaSlice<half::bf16>,
    pub(crate) ones: cudarc::driver::CudaSlice<half::bf16>,
    /// The TMA's tensor map of `w` for the warpgroup-MMA kernels, where the device has them
    /// and the shape suits them.
    pub(crate) map: Option<crate::wgmma::WeightMap>,
}
