//! The loaded PTX module and one raw launcher per kernel. Launchers take validated device
//! addresses and sizes; the public, checked entry points are in `ops` and `qkv`.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUfunction_attribute, CUlaunchAttributeID};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;
use nanofuse_kernels_gpu::config::{self, TileConfig, decode, fold_gain, rms_norm, split_qkv};

use crate::device::DeviceInfo;
use crate::error::{Error, Result};
use crate::plan::{DecodePlan, Tile, TiledPlan};

/// Every kernel entry point the host launches, as named in the PTX.
pub const KERNEL_NAMES: [&str; 16] = [
    "rms_norm",
    "fused_rmsnorm_qkv_decode",
    "gemm_decode",
    "fused_rmsnorm_qkv_tiled_large",
    "fused_rmsnorm_qkv_tiled_small",
    "gemm_tiled_large",
    "gemm_tiled_small",
    "fused_rmsnorm_qkv_decode_early",
    "gemm_decode_early",
    "fold_gain",
    "split_qkv",
    "fused_rmsnorm_qkv_decode_early_m8",
    "gemm_decode_early_m8",
    "rms_norm_interleaved",
    "fused_rmsnorm_qkv_decode_ring",
    "gemm_decode_ring",
];

/// Bytes of a pointer parameter (`.u64`).
const PTR: usize = 8;
/// Bytes of a scalar parameter (`.u32`, `.f32`).
const SCALAR: usize = 4;
const DECODE_FUSED: &[usize] =
    &[PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const DECODE_GEMM: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const TILED_FUSED: &[usize] = &[PTR, PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const TILED_GEMM: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR];
const RMS_NORM: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR];

/// The byte size of each parameter of each entry in `KERNEL_NAMES`, in order: every launch
/// is checked against it (a mismatch is an error, not a launch), and `tests/ptx.rs` checks
/// it against the PTX.
pub const KERNEL_PARAM_SIZES: [&[usize]; 16] = [
    RMS_NORM,
    DECODE_FUSED,
    DECODE_GEMM,
    TILED_FUSED,
    TILED_FUSED,
    TILED_GEMM,
    TILED_GEMM,
    DECODE_FUSED,
    DECODE_GEMM,
    &[PTR, PTR, SCALAR, SCALAR],
    &[PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR],
    DECODE_FUSED,
    DECODE_GEMM,
    RMS_NORM,
    DECODE_FUSED,
    DECODE_GEMM,
];

/// Most parameters of any entry (a launch with more is refused).
const MAX_PARAMS: usize = 14;

/// One loaded kernel entry with its name and parameter sizes.
struct Entry {
    f: CudaFunction,
    name: &'static str,
    params: &'static [usize],
}

/// The entries of one decode kernel (`x`, `x_early`, `x_early_m8`, `x_ring`), which take
/// the same arguments.
struct DecodeEntries {
    plain: Entry,
    early: Entry,
    early_m8: Entry,
    ring: Entry,
}

impl DecodeEntries {
    /// The entry a plan launches.
    fn pick(&self, plan: &DecodePlan) -> &Entry {
        match (plan.ring, plan.early, plan.token_tiles) {
            (true, _, _) => &self.ring,
            (false, false, _) => &self.plain,
            (false, true, 1) => &self.early_m8,
            (false, true, _) => &self.early,
        }
    }
}

/// The kernels of one loaded module.
pub(crate) struct Kernels {
    rms_norm: Entry,
    rms_norm_interleaved: Entry,
    fused_decode: DecodeEntries,
    gemm_decode: DecodeEntries,
    fused_tiled_large: Entry,
    fused_tiled_small: Entry,
    gemm_tiled_large: Entry,
    gemm_tiled_small: Entry,
    fold_gain: Entry,
    split_qkv: Entry,
}

/// Output pointers and widths of a fused launch.
#[derive(Clone, Copy)]
pub(crate) struct QkvPtrs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub nq: u32,
    pub nkv: u32,
}

/// Grid, block, cluster (along x; 1 = no cluster) and dynamic shared memory of a launch.
struct Shape {
    grid: (u32, u32),
    block: u32,
    cluster_x: u32,
    smem: u32,
}

/// One kernel argument: its address, as `cuLaunchKernelEx` takes them, and its size.
struct Arg {
    ptr: *mut c_void,
    size: usize,
}

fn arg<T>(v: &T) -> Arg {
    Arg { ptr: v as *const T as *mut c_void, size: std::mem::size_of::<T>() }
}

/// Launches `e` on `stream`. With `pdl`, the launch carries programmatic stream
/// serialization: the kernel may start before the previous kernel in the stream has
/// finished, and must execute `griddepcontrol.wait` before touching memory that kernel
/// writes or reads (every nanofuse kernel does, before anything but weight reads). With
/// `shape.cluster_x > 1`, CTAs form clusters of that many along x. Arguments whose number or
/// sizes differ from the entry's parameters (`KERNEL_PARAM_SIZES`) are an error.
///
/// # Safety
/// `args` point at values of the kernel's parameter types, alive for the call.
unsafe fn launch(stream: &CudaStream, e: &Entry, shape: Shape, pdl: bool, args: &[Arg]) -> Result<()> {
    let mismatch = args.iter().zip(e.params).any(|(a, &size)| a.size != size);
    if args.len() != e.params.len() || args.len() > MAX_PARAMS || mismatch {
        let sizes: Vec<usize> = args.iter().map(|a| a.size).collect();
        return Err(Error::Module {
            reason: format!("`{}` takes parameters of {:?} bytes, the launcher passed {sizes:?}", e.name, e.params),
        });
    }
    let mut ptrs = [std::ptr::null_mut(); MAX_PARAMS];
    for (p, a) in ptrs.iter_mut().zip(args) {
        *p = a.ptr;
    }
    stream.context().bind_to_thread().map_err(Error::driver("cuCtxSetCurrent"))?;
    // SAFETY: plain C structs of integers and a union; zero is a valid bit pattern.
    let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
    let mut n = 0;
    if pdl {
        attrs[n].id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attrs[n].value.programmaticStreamSerializationAllowed = 1;
        n += 1;
    }
    if shape.cluster_x > 1 {
        attrs[n].id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attrs[n].value.clusterDim.x = shape.cluster_x;
        attrs[n].value.clusterDim.y = 1;
        attrs[n].value.clusterDim.z = 1;
        n += 1;
    }
    let cfg = sys::CUlaunchConfig {
        gridDimX: shape.grid.0,
        gridDimY: shape.grid.1,
        gridDimZ: 1,
        blockDimX: shape.block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: shape.smem,
        hStream: stream.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: n as u32,
    };
    // SAFETY: the config, attributes and pointers outlive the call; the argument count and
    // sizes match the entry's (checked above), their values per the caller.
    unsafe { sys::cuLaunchKernelEx(&cfg, e.f.cu_function(), ptrs.as_mut_ptr(), std::ptr::null_mut()) }
        .result()
        .map_err(Error::driver("cuLaunchKernelEx"))
}

impl Kernels {
    /// Loads the module and every kernel; raises the dynamic shared-memory limit of the
    /// kernels that may need more than 48 KiB.
    pub(crate) fn load(ctx: &Arc<CudaContext>, ptx: &str, info: &DeviceInfo) -> Result<Kernels> {
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(|e| Error::Module {
            reason: format!("{e} (the PTX must target this GPU's architecture or an older one)"),
        })?;
        let get = |i: usize| {
            let name = KERNEL_NAMES[i];
            let f = module
                .load_function(name)
                .map_err(|e| Error::Module { reason: format!("kernel `{name}` not found: {e}") })?;
            Ok::<_, Error>(Entry { f, name, params: KERNEL_PARAM_SIZES[i] })
        };
        let k = Kernels {
            rms_norm: get(0)?,
            rms_norm_interleaved: get(13)?,
            fused_decode: DecodeEntries { plain: get(1)?, early: get(7)?, early_m8: get(11)?, ring: get(14)? },
            gemm_decode: DecodeEntries { plain: get(2)?, early: get(8)?, early_m8: get(12)?, ring: get(15)? },
            fused_tiled_large: get(3)?,
            fused_tiled_small: get(4)?,
            gemm_tiled_large: get(5)?,
            gemm_tiled_small: get(6)?,
            fold_gain: get(9)?,
            split_qkv: get(10)?,
        };
        let raise = |e: &Entry, bytes: u32| {
            e.f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
                .map_err(Error::driver("cuFuncSetAttribute"))
        };
        for e in [&k.fused_decode, &k.gemm_decode] {
            for f in [&e.plain, &e.early, &e.early_m8, &e.ring] {
                raise(f, info.max_smem_per_block)?;
            }
        }
        raise(&k.fused_tiled_large, config::Large::SMEM_BYTES)?;
        raise(&k.gemm_tiled_large, config::Large::SMEM_BYTES)?;
        raise(&k.fused_tiled_small, config::Small::SMEM_BYTES)?;
        raise(&k.gemm_tiled_small, config::Small::SMEM_BYTES)?;
        Ok(k)
    }

    /// `y = rmsnorm(x)`, `x, y [rows, k]`; y in the k-interleaved order
    /// (`config::interleave`) with `interleave`.
    ///
    /// # Safety
    /// `x`, `g`, `y` are 16-byte aligned device buffers of `rows·k`, `k`, `rows·k` bf16
    /// on this context; `y` overlaps neither input; `k % 8 == 0`; `1 <= rows < 2^31`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn rms_norm(
        &self,
        stream: &CudaStream,
        pdl: bool,
        x: u64,
        g: u64,
        y: u64,
        rows: u32,
        k: u32,
        eps: f32,
        interleave: bool,
    ) -> Result<()> {
        let shape = Shape { grid: (rows, 1), block: rms_norm::THREADS, cluster_x: 1, smem: rms_norm::SMEM_BYTES };
        let args = [arg(&x), arg(&g), arg(&y), arg(&rows), arg(&k), arg(&eps)];
        let f = if interleave { &self.rms_norm_interleaved } else { &self.rms_norm };
        // SAFETY: the argument list matches `rms_norm` (and `rms_norm_interleaved`, which
        // takes the same); buffers per the caller.
        unsafe { launch(stream, f, shape, pdl, &args) }
    }

    /// `W [n, k] <- bf16(W · diag(g))` in place, stored in the k-interleaved order
    /// (`config::interleave`; no PDL: run once, at construction).
    ///
    /// # Safety
    /// `w` and `g` are 16-byte aligned device buffers of `n·k` and `k` bf16 on this
    /// context, not overlapping; `k % 8 == 0`; `1 <= n < 2^31`.
    pub(crate) unsafe fn fold_gain(&self, stream: &CudaStream, w: u64, g: u64, n: u32, k: u32) -> Result<()> {
        let grid = n.clamp(1, fold_gain::MAX_CTAS);
        let shape = Shape { grid: (grid, 1), block: fold_gain::THREADS, cluster_x: 1, smem: 0 };
        let args = [arg(&w), arg(&g), arg(&n), arg(&k)];
        // SAFETY: the argument list matches `fold_gain`; buffers per the caller.
        unsafe { launch(stream, &self.fold_gain, shape, false, &args) }
    }

    /// Copies the packed `y [m, out.nq + 2 out.nkv]` into `out`'s q, k, v.
    ///
    /// # Safety
    /// `y` and the outputs are 16-byte aligned device buffers on this context of `m` rows
    /// each, the outputs disjoint from `y`; `1 <= m < 2^31`.
    pub(crate) unsafe fn split_qkv(&self, stream: &CudaStream, pdl: bool, y: u64, out: QkvPtrs, m: u32) -> Result<()> {
        let grid = m.clamp(1, split_qkv::MAX_CTAS);
        let shape = Shape { grid: (grid, 1), block: split_qkv::THREADS, cluster_x: 1, smem: 0 };
        let args = [arg(&y), arg(&out.q), arg(&out.k), arg(&out.v), arg(&m), arg(&out.nq), arg(&out.nkv)];
        // SAFETY: the argument list matches `split_qkv`; buffers per the caller.
        unsafe { launch(stream, &self.split_qkv, shape, pdl, &args) }
    }

    /// The decode kernel, fused (`fused`: W with g folded in, q/k/v outputs) or plain (y in
    /// `out.q` with `out.nq = N`, `out.nkv = 0`). `interleave_x`: x and W are in the same k
    /// order (both natural), so the kernel interleaves x while staging it; otherwise exactly
    /// one of them must be in the k-interleaved order (`config::interleave`).
    ///
    /// # Safety
    /// Buffers as in the kernel's documentation (x `[m, k]`, W `[N, k]`, outputs
    /// `[m, width]`), 16-byte aligned, outputs disjoint from inputs; `plan` was made by
    /// `plan::decode_plan` for these sizes and this device.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn decode(
        &self,
        stream: &CudaStream,
        pdl: bool,
        plan: &DecodePlan,
        x: u64,
        fused: bool,
        w: u64,
        interleave_x: bool,
        out: QkvPtrs,
        m: u32,
        k: u32,
        eps: f32,
    ) -> Result<()> {
        let shape =
            Shape { grid: plan.grid, block: decode::THREADS, cluster_x: plan.k_splits(), smem: plan.smem_bytes };
        let interleave_x = u32::from(interleave_x);
        let (split, chunk) = (plan.warp_split, plan.k_chunk);
        let trigger_first = u32::from(if fused { plan.trigger_first } else { plan.gemm_trigger_first });
        // The entry's token tiles hold m (else the kernel traps): the plan was made for m.
        debug_assert!(m <= plan.token_tiles * decode::TOKEN_TILE, "plan for a smaller M");
        if fused {
            let args = [
                arg(&x),
                arg(&w),
                arg(&out.q),
                arg(&out.k),
                arg(&out.v),
                arg(&m),
                arg(&k),
                arg(&out.nq),
                arg(&out.nkv),
                arg(&eps),
                arg(&split),
                arg(&chunk),
                arg(&trigger_first),
                arg(&interleave_x),
            ];
            let f = self.fused_decode.pick(plan);
            // SAFETY: the argument list matches `fused_rmsnorm_qkv_decode` (and its `_early`
            // forms, which take the same); buffers per the caller; the plan's entry takes m.
            unsafe { launch(stream, f, shape, pdl, &args) }
        } else {
            let args = [
                arg(&x),
                arg(&w),
                arg(&out.q),
                arg(&m),
                arg(&k),
                arg(&out.nq),
                arg(&split),
                arg(&chunk),
                arg(&trigger_first),
                arg(&interleave_x),
            ];
            let f = self.gemm_decode.pick(plan);
            // SAFETY: the argument list matches `gemm_decode` (and its `_early` forms);
            // buffers per the caller; the plan's entry takes m.
            unsafe { launch(stream, f, shape, pdl, &args) }
        }
    }

    /// The tiled kernel, fused (`Some(g)`, q/k/v outputs) or plain (`None`, y in `out.q`
    /// with `out.nq = N`, `out.nkv = 0`).
    ///
    /// # Safety
    /// As [`Kernels::decode`], with `plan` from `plan::tiled_plan`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn tiled(
        &self,
        stream: &CudaStream,
        pdl: bool,
        plan: &TiledPlan,
        x: u64,
        g: Option<u64>,
        w: u64,
        out: QkvPtrs,
        m: u32,
        k: u32,
        eps: f32,
    ) -> Result<()> {
        let shape = Shape { grid: plan.grid, block: plan.block, cluster_x: 1, smem: plan.smem_bytes };
        match g {
            Some(g) => {
                let f = match plan.tile {
                    Tile::Large => &self.fused_tiled_large,
                    Tile::Small => &self.fused_tiled_small,
                };
                let args = [
                    arg(&x),
                    arg(&g),
                    arg(&w),
                    arg(&out.q),
                    arg(&out.k),
                    arg(&out.v),
                    arg(&m),
                    arg(&k),
                    arg(&out.nq),
                    arg(&out.nkv),
                    arg(&eps),
                ];
                // SAFETY: the argument list matches `fused_rmsnorm_qkv_tiled_*`; see above.
                unsafe { launch(stream, f, shape, pdl, &args) }
            }
            None => {
                let f = match plan.tile {
                    Tile::Large => &self.gemm_tiled_large,
                    Tile::Small => &self.gemm_tiled_small,
                };
                let args = [arg(&x), arg(&w), arg(&out.q), arg(&m), arg(&k), arg(&out.nq)];
                // SAFETY: the argument list matches `gemm_tiled_*`; see above.
                unsafe { launch(stream, f, shape, pdl, &args) }
            }
        }
    }
}
