//! The launch builder: `Launch::new(entry, shape).pdl(on).arg(x)….run(stream)` collects a
//! kernel's arguments, checks their number and sizes against the entry's parameter list and
//! calls `cuLaunchKernelEx` with the programmatic-dependent-launch and cluster attributes.

use std::ffi::c_void;

use cudarc::driver::sys::{self, CUlaunchAttributeID};
use cudarc::driver::{CudaFunction, CudaStream};

use crate::current::Current;
use crate::error::{Error, Result};

/// Most arguments one launch carries (`kernels` asserts that every entry takes at most this).
pub(crate) const MAX_PARAMS: usize = 16;

/// One loaded kernel entry with its name and the byte size of each of its parameters.
pub(crate) struct Entry {
    pub(crate) f: CudaFunction,
    pub(crate) name: &'static str,
    pub(crate) params: &'static [usize],
}

/// Grid, block, cluster and dynamic shared memory of a launch. The cluster is `cluster_x`
/// CTAs along x by `split_z` along z, and `split_z` is also grid z (the warpgroup-MMA
/// kernels' split over K: the CTAs of one output tile); `1, 1` is no cluster.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub grid: (u32, u32),
    pub block: u32,
    pub cluster_x: u32,
    pub split_z: u32,
    pub smem: u32,
}

/// A kernel parameter type, as the PTX entries declare them: `.u64` (device addresses),
/// `.u32` and `.f32`. Nothing else can be passed, so a `bool` or a struct cannot slip in.
pub(crate) trait Param: Copy {
    /// The value's bytes in native order at the start of an 8-byte slot.
    fn slot(self) -> [u8; 8];
}

impl Param for u64 {
    fn slot(self) -> [u8; 8] {
        self.to_ne_bytes()
    }
}

impl Param for u32 {
    fn slot(self) -> [u8; 8] {
        let mut s = [0; 8];
        s[..4].copy_from_slice(&self.to_ne_bytes());
        s
    }
}

impl Param for f32 {
    fn slot(self) -> [u8; 8] {
        self.to_bits().slot()
    }
}

/// One launch being put together; the arguments are copied in, in the kernel's order.
#[must_use = "a launch does nothing until `run`"]
pub(crate) struct Launch<'a> {
    entry: &'a Entry,
    shape: Shape,
    pdl: bool,
    /// Each argument in an 8-byte slot (`u64` keeps the slots aligned for any parameter).
    slots: [u64; MAX_PARAMS],
    sizes: [usize; MAX_PARAMS],
    /// Arguments passed, also past `MAX_PARAMS` (such a launch is refused by `run`).
    len: usize,
}

impl<'a> Launch<'a> {
    /// A launch of `entry` with `shape`, no arguments yet, without PDL.
    pub(crate) fn new(entry: &'a Entry, shape: Shape) -> Self {
        Launch { entry, shape, pdl: false, slots: [0; MAX_PARAMS], sizes: [0; MAX_PARAMS], len: 0 }
    }

    /// With `on`, the launch carries programmatic stream serialization: the kernel may start
    /// before the previous kernel in the stream has finished, and must execute
    /// `griddepcontrol.wait` before touching memory that kernel writes or reads (every
    /// nanofuse kernel does, before anything but weight reads).
    pub(crate) fn pdl(mut self, on: bool) -> Self {
        self.pdl = on;
        self
    }

    /// Appends the next argument.
    pub(crate) fn arg<T: Param>(mut self, value: T) -> Self {
        if let (Some(slot), Some(size)) = (self.slots.get_mut(self.len), self.sizes.get_mut(self.len)) {
            *slot = u64::from_ne_bytes(value.slot());
            *size = size_of::<T>();
        }
        self.len += 1;
        self
    }

    /// Launches on `stream`. Arguments whose number or sizes differ from the entry's
    /// parameters are an [`Error::Module`], not a launch.
    ///
    /// # Safety
    /// The arguments are valid for the kernel: every address points at a device buffer of
    /// the size and alignment the kernel reads or writes through it (as each launcher's
    /// `# Safety` section states), on `stream`'s context, and the sizes and launch shape
    /// meet the kernel's contract.
    pub(crate) unsafe fn run(mut self, stream: &CudaStream) -> Result<()> {
        let e = self.entry;
        check_args(e.name, e.params, &self.sizes[..self.len.min(MAX_PARAMS)], self.len)?;
        let mut ptrs: [*mut c_void; MAX_PARAMS] = [std::ptr::null_mut(); MAX_PARAMS];
        for (p, slot) in ptrs.iter_mut().zip(self.slots.iter_mut()) {
            *p = (slot as *mut u64).cast();
        }
        // The stream's context current for the launch, the caller's again after it.
        let _current = Current::bind(stream.context())?;
        // SAFETY: plain C structs of integers and a union; zero is a valid bit pattern.
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let mut n_attrs = 0;
        if self.pdl {
            attrs[n_attrs].id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n_attrs].value.programmaticStreamSerializationAllowed = 1;
            n_attrs += 1;
        }
        if self.shape.cluster_x * self.shape.split_z > 1 {
            attrs[n_attrs].id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attrs[n_attrs].value.clusterDim.x = self.shape.cluster_x;
            attrs[n_attrs].value.clusterDim.y = 1;
            attrs[n_attrs].value.clusterDim.z = self.shape.split_z;
            n_attrs += 1;
        }
        let cfg = sys::CUlaunchConfig {
            gridDimX: self.shape.grid.0,
            gridDimY: self.shape.grid.1,
            gridDimZ: self.shape.split_z,
            blockDimX: self.shape.block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: self.shape.smem,
            hStream: stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n_attrs as u32,
        };
        // SAFETY: the config, attributes and argument slots outlive the call; each slot holds
        // its argument's bytes first and the argument count and sizes match the entry's
        // (checked above); their values per the caller.
        unsafe { sys::cuLaunchKernelEx(&cfg, e.f.cu_function(), ptrs.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(Error::driver("cuLaunchKernelEx"))
    }
}

/// `count` arguments of `passed` bytes (the first `MAX_PARAMS`) against an entry's
/// parameter sizes.
fn check_args(name: &str, params: &[usize], passed: &[usize], count: usize) -> Result<()> {
    if count == params.len() && passed == params {
        return Ok(());
    }
    Err(Error::Module {
        reason: format!("`{name}` takes parameters of {params:?} bytes, the launcher passed {passed:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_fill_their_slots_in_native_byte_order() {
        assert_eq!(u64::from_ne_bytes(0x0123_4567_89ab_cdefu64.slot()), 0x0123_4567_89ab_cdef);
        assert_eq!(u32::from_ne_bytes(7u32.slot()[..4].try_into().unwrap()), 7);
        assert_eq!(f32::from_ne_bytes(1.5f32.slot()[..4].try_into().unwrap()), 1.5);
        assert_eq!(&3u32.slot()[4..], &[0; 4]);
    }

    #[test]
    fn a_launch_must_match_the_entry_parameters() {
        assert!(check_args("entry", &[8, 4], &[8, 4], 2).is_ok());
        let e = check_args("entry", &[8, 4], &[8, 8], 2).unwrap_err();
        assert!(e.to_string().contains("`entry` takes parameters of [8, 4] bytes, the launcher passed [8, 8]"), "{e}");
        assert!(matches!(check_args("entry", &[8, 4], &[8], 1), Err(Error::Module { .. })));
        // Past MAX_PARAMS only the count tells.
        let full = [4; MAX_PARAMS];
        assert!(check_args("entry", &full, &full, MAX_PARAMS + 1).is_err());
    }
}
