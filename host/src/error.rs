//! The crate's error type. Every public entry point returns [`Result`]; bad input is an
//! error value naming the argument and what was expected, never a panic.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in nanofuse's host API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library could not be loaded (no NVIDIA driver on this machine).
    #[error(
        "no CUDA driver: libcuda could not be loaded (an NVIDIA GPU with a CUDA 12/13 driver \
         is needed to run kernels; building and CPU tests need none)"
    )]
    NoDriver,

    /// The driver is present but there is no device with this ordinal.
    #[error("no CUDA device with ordinal {ordinal} ({count} device(s) present)")]
    NoDevice { ordinal: usize, count: usize },

    /// The device is older than the architecture the embedded PTX was built for.
    #[error(
        "device {device} is {found}, but the kernels were built for {built_for} and need sm_90 \
         (Hopper) or newer; on a newer GPU rebuild with NANOFUSE_CUDA_ARCH set to its \
         architecture (e.g. `NANOFUSE_CUDA_ARCH=sm_100 cargo build --release`)"
    )]
    UnsupportedArch { device: String, found: String, built_for: String },

    /// The PTX module did not load, or lacks a kernel this crate launches.
    #[error("loading the PTX module failed: {reason}")]
    Module { reason: String },

    /// A CUDA driver call failed.
    #[error("CUDA driver call `{op}` failed: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: DriverError,
    },

    /// cuBLAS could not be loaded or a cuBLAS call failed.
    #[error("cuBLAS `{op}` failed: {reason}")]
    Cublas { op: &'static str, reason: String },

    /// A length does not match the shape.
    #[error("`{arg}` has {got} elements, expected {expected}")]
    Length { arg: &'static str, expected: usize, got: usize },

    /// A dimension is invalid (zero where that is meaningless, not a multiple of 8, ...).
    #[error("`{arg}` = {got} is invalid: expected {expected}")]
    Dimension { arg: &'static str, expected: &'static str, got: usize },

    /// A scalar argument is out of range (e.g. a negative or non-finite eps).
    #[error("`{arg}` = {got} is invalid: expected {expected}")]
    Value { arg: &'static str, expected: &'static str, got: String },

    /// A size whose element count, byte count or grid would overflow the kernels' index
    /// arithmetic or the launch limits.
    #[error("`{arg}` = {got} is too large: at most {limit} ({why})")]
    TooLarge { arg: &'static str, got: u64, limit: u64, why: &'static str },

    /// A device pointer is not aligned for the 16-byte vector paths.
    #[error("`{arg}` device address {addr:#x} is not {align}-byte aligned")]
    Misaligned { arg: &'static str, addr: u64, align: u64 },

    /// A buffer belongs to another CUDA context or device than the op's.
    #[error(
        "`{arg}` was allocated in another CUDA context (on device ordinal {found}) than the one this op \
         runs in (on device ordinal {expected})"
    )]
    WrongDevice { arg: &'static str, expected: usize, found: usize },

    /// Two buffers that must not overlap do.
    #[error("`{a}` and `{b}` overlap in device memory")]
    Overlap { a: &'static str, b: &'static str },
}

impl Error {
    /// Wraps a driver error with the name of the call that produced it (for
    /// `.map_err(Error::driver("cuStreamSynchronize"))`).
    pub fn driver(op: &'static str) -> impl FnOnce(DriverError) -> Error {
        move |source| Error::Driver { op, source }
    }

    /// Wraps a cuBLAS error with the name of the call that produced it.
    pub(crate) fn cublas(op: &'static str) -> impl FnOnce(CublasError) -> Error {
        move |e| Error::Cublas { op, reason: format!("{e:?}") }
    }
}
