//! The calling thread's current CUDA context: made the op's for a launch or a cuBLAS call,
//! and given back afterwards, so that nanofuse leaves an engine's thread as it found it.
//!
//! The driver keeps one current context per host thread; kernel launches and cuBLAS calls
//! run in it. cudarc's `bind_to_thread` makes a context current and leaves it so; an engine
//! that drives several contexts from one thread would then find nanofuse's context current
//! after every call. [`Current::bind`] restores the previous one when dropped (two
//! thread-local driver calls, and none past the first when the context is already current).

use std::ptr;

use cudarc::driver::result::ctx;
use cudarc::driver::{CudaContext, sys};

use crate::error::{Error, Result};

/// Restores the calling thread's current context when dropped.
#[must_use = "the previous context is restored when this is dropped"]
pub(crate) struct Current {
    /// The context current before (null: none); `None` when nothing is to be restored.
    prev: Option<sys::CUcontext>,
}

/// The calling thread's current context, null if none.
fn current() -> Result<sys::CUcontext> {
    Ok(ctx::get_current().map_err(Error::driver("cuCtxGetCurrent"))?.unwrap_or(ptr::null_mut()))
}

impl Current {
    /// Makes `ctx` current until the guard drops. Also reports an error cudarc recorded on
    /// the context where it could not return one (a failed free in a drop), as cudarc's
    /// own `bind_to_thread` does.
    pub(crate) fn bind(ctx: &CudaContext) -> Result<Current> {
        ctx.check_err().map_err(Error::driver("an earlier call on the context (recorded by cudarc)"))?;
        let prev = current()?;
        if prev == ctx.cu_ctx() {
            return Ok(Current { prev: None });
        }
        // SAFETY: `ctx` is a live context (the caller holds it).
        unsafe { ctx::set_current(ctx.cu_ctx()) }.map_err(Error::driver("cuCtxSetCurrent"))?;
        Ok(Current { prev: Some(prev) })
    }

    /// Remembers the current context, to restore it when the guard drops: around cudarc
    /// calls, which make their context current and leave it so.
    pub(crate) fn save() -> Result<Current> {
        Ok(Current { prev: Some(current()?) })
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        let Some(prev) = self.prev else { return };
        if current().is_ok_and(|now| now != prev) {
            // SAFETY: `prev` was current on this thread when the guard was made, and the
            // guard lives within one call, which does not destroy the caller's context.
            // A failure leaves our context current, which is what cudarc does anyway.
            let _ = unsafe { ctx::set_current(prev) };
        }
    }
}
