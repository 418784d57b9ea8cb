//! Every argument check of the host API, and the [`Error`] each returns. The public entry
//! points (`ops`, `qkv`) run these before any launch; the launchers below them take the
//! validated addresses and sizes.
//!
//! | check | what | error |
//! |---|---|---|
//! | [`check_dims`] | K a positive multiple of 8 ([`config::VEC`]), N positive | [`Error::Dimension`] (`K`, `N`) |
//! | | M, K, N at most [`MAX_DIM`] (32-bit index arithmetic) | [`Error::TooLarge`] (`M`, `K`, `N`) |
//! | [`check_m`] | M at most [`MAX_DIM`] | [`Error::TooLarge`] (`m`) |
//! | [`checked_len`] | an element count `a · b` that does not overflow | [`Error::TooLarge`] (the count's name) |
//! | [`checked_u32`] | a length that fits a kernel's 32-bit argument | [`Error::TooLarge`] (the length's name) |
//! | [`check_eps`] | eps finite and non-negative | [`Error::Value`] (`eps`) |
//! | [`Gpu::input`], [`Gpu::output`] | the buffer belongs to the op's CUDA context | [`Error::WrongDevice`] |
//! | [`check_buffer`] (and the two above) | exactly the expected number of elements | [`Error::Length`] |
//! | | a [`BUFFER_ALIGN`]-byte aligned address | [`Error::Misaligned`] |
//! | [`check_no_overlap`] | no written buffer overlaps another buffer of the call | [`Error::Overlap`] |
//!
//! Checks that belong to one type stay with it: `QkvShape::validate` (the shape's
//! dimensions through [`check_dims`], renamed `hidden`, `q_dim`, `kv_dim`, and eps), the
//! planners' ranges (`plan::decode_plan`: M in 1..=16 and forced shapes; `plan::tiled_plan`:
//! the grid), the device's architecture (`device::check_arch`:
//! [`Error::UnsupportedArch`]) and each launch's argument list against its kernel's
//! parameters (`launch::Launch::run`: [`Error::Module`]).

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceSlice};
use nanofuse_kernels_gpu::config;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Largest value of M, K or N the kernels' 32-bit index arithmetic accepts.
pub const MAX_DIM: usize = i32::MAX as usize;

/// Alignment every buffer passed to nanofuse's kernels must have (16-byte vector paths).
pub const BUFFER_ALIGN: u64 = 16;

/// M, K and N within the kernels' index range; K a positive multiple of 8; N positive.
pub fn check_dims(m: usize, k: usize, n: usize) -> Result<()> {
    if k == 0 || !k.is_multiple_of(config::VEC as usize) {
        return Err(Error::Dimension { arg: "K", expected: "a positive multiple of 8", got: k });
    }
    if n == 0 {
        return Err(Error::Dimension { arg: "N", expected: "positive", got: n });
    }
    for (arg, v) in [("M", m), ("K", k), ("N", n)] {
        if v > MAX_DIM {
            return Err(Error::TooLarge { arg, got: v as u64, limit: MAX_DIM as u64, why: "32-bit index arithmetic" });
        }
    }
    Ok(())
}

/// `m` within the kernels' 32-bit index range.
pub(crate) fn check_m(m: usize) -> Result<()> {
    if m > MAX_DIM {
        return Err(Error::TooLarge { arg: "m", got: m as u64, limit: MAX_DIM as u64, why: "32-bit index arithmetic" });
    }
    Ok(())
}

/// `a * b`, or a `TooLarge` error naming `arg` when it overflows.
pub fn checked_len(arg: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::TooLarge {
        arg,
        got: u64::MAX,
        limit: usize::MAX as u64,
        why: "element count overflows",
    })
}

/// `v` as a kernel's 32-bit length argument.
pub(crate) fn checked_u32(arg: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge { arg, got: v as u64, limit: u32::MAX as u64, why: "32-bit length" })
}

/// `eps` must be finite and non-negative.
pub(crate) fn check_eps(eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::Value { arg: "eps", expected: "finite and >= 0", got: eps.to_string() })
    }
}

/// A validated device buffer: name, address and byte length (for overlap checks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BufRef {
    pub name: &'static str,
    pub ptr: u64,
    pub bytes: u64,
}

impl Gpu {
    /// Checks that `buf` is on this device, holds exactly `len` elements and is 16-byte
    /// aligned; returns its device address.
    pub(crate) fn input<T>(&self, arg: &'static str, buf: &impl DevicePtr<T>, len: usize) -> Result<BufRef> {
        let (ptr, got) = self.address(arg, buf)?;
        check_buffer(arg, ptr, got, len, size_of::<T>())
    }

    /// Checks that `buf` is on this device; returns its device address and element count.
    pub(crate) fn address<T>(&self, arg: &'static str, buf: &impl DevicePtr<T>) -> Result<(u64, usize)> {
        self.check_context(arg, buf)?;
        let (ptr, _sync) = buf.device_ptr(self.stream());
        Ok((ptr, buf.len()))
    }

    /// As [`Gpu::input`], for a buffer the kernel writes.
    pub(crate) fn output<T>(&self, arg: &'static str, buf: &mut impl DevicePtrMut<T>, len: usize) -> Result<BufRef> {
        self.check_context(arg, buf)?;
        let got = buf.len();
        let (ptr, _sync) = buf.device_ptr_mut(self.stream());
        check_buffer(arg, ptr, got, len, size_of::<T>())
    }

    fn check_context<T>(&self, arg: &'static str, buf: &impl DeviceSlice<T>) -> Result<()> {
        let (theirs, ours) = (buf.stream().context(), self.context());
        if theirs.cu_ctx() != ours.cu_ctx() {
            return Err(Error::WrongDevice { arg, expected: ours.ordinal(), found: theirs.ordinal() });
        }
        Ok(())
    }
}

/// `got == len` elements at a [`BUFFER_ALIGN`]-aligned `ptr`; the buffer as a [`BufRef`].
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
