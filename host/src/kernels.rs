//! The kernel registry and one raw launcher per kernel.
//!
//! [`KernelId`] is the one table of every entry point the host launches: its PTX name, the
//! byte size of each parameter and the dynamic shared memory it may use. [`Kernels::load`]
//! loads every entry of the table; each launcher builds a [`Launch`], which checks the
//! arguments against the entry's parameter list before `cuLaunchKernelEx`; `tests/ptx.rs`
//! checks the table against the PTX. Launchers take validated device addresses and sizes;
//! the public, checked entry points are in `ops` and `qkv`.
//!
//! # Adding a kernel
//! 1. The kernel in `kernels-gpu/` (its file, its constants in `config.rs`).
//! 2. One line in the `kernel_table!` below: the variant, the PTX entry name, its parameter
//!    sizes in order (`PTR` for a pointer, `SCALAR` for a `u32` or `f32`; name the list if
//!    another entry shares it) and its shared-memory limit ([`Smem`]). Loading, the
//!    shared-memory attribute and the PTX test (name and parameter sizes) follow from it.
//!    A decode kernel with another epilogue has four forms (plain, `_early`, `_early_m8`,
//!    `_ring`): four lines, and a [`DecodeForms`] constant for the plan to pick from.
//! 3. A launcher in `impl Kernels`: the launch [`Shape`] from `config` or a plan, then
//!    `Launch::new(self.entry(KernelId::…), shape).pdl(pdl).arg(…)….run(stream)` with the
//!    arguments in the kernel's order, a `# Safety` section and a `// SAFETY:` note; group
//!    its pointers and sizes in an argument struct (as [`Operands`], [`QkvOut`]) rather than
//!    a long parameter list.
//! 4. A checked entry point in `ops` or an op module: the checks of `check`, then the
//!    launcher; a plan function in `plan` if it has launch shapes to choose.

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nvrtc::Ptx;
use nanofuse_kernels_gpu::config::{
    self, TileConfig, argmax, attention, decode, elementwise, fold_gain, rms_norm, rope, split_qkv, step,
};

use crate::error::{Error, Result};
use crate::launch::{Entry, Launch, MAX_PARAMS, Shape};
use crate::plan::{DecodePlan, Tile, TiledPlan};

/// Bytes of a pointer parameter (`.u64`).
const PTR: usize = 8;
/// Bytes of a scalar parameter (`.u32`, `.f32`).
const SCALAR: usize = 4;
const RMS_NORM: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR];
const DECODE_FUSED: &[usize] =
    &[PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const DECODE_GEMM: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const TILED_FUSED: &[usize] = &[PTR, PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const TILED_GEMM: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR];
const DECODE_GATE_UP: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const DECODE_PROJ: &[usize] = &[PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const DECODE_ARGMAX: &[usize] = &[PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const QK_NORM_ROPE: &[usize] =
    &[PTR, PTR, PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const ATTENTION: &[usize] = &[PTR, PTR, PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];
const ATTENTION_ROPE: &[usize] =
    &[PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR, SCALAR];

/// The dynamic shared memory an entry may be launched with.
#[derive(Clone, Copy)]
enum Smem {
    /// The default limit (48 KiB); nothing to raise.
    Default,
    /// As much as one CTA can opt in to on the device: the decode kernels, whose x staging
    /// grows with M and the K slice (the planner keeps each launch within it).
    DeviceMax,
    /// A fixed size above the default: the tiled kernels' pipeline.
    Bytes(u32),
}

/// Declares [`KernelId`] from the table of entries, one line each:
/// `Variant = "ptx_name", parameter sizes, shared-memory limit;`.
macro_rules! kernel_table {
    ($($id:ident = $name:literal, $params:expr, $smem:expr;)+) => {
        /// Every kernel entry point the host launches, as the PTX names it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum KernelId {
            $(#[doc = concat!("`", $name, "`")] $id,)+
        }

        impl KernelId {
            /// Every entry, in table order.
            pub const ALL: &[KernelId] = &[$(KernelId::$id),+];

            /// The entry's name in the PTX.
            pub const fn name(self) -> &'static str {
                match self {
                    $(KernelId::$id => $name,)+
                }
            }

            /// The byte size of each parameter of the entry, in order: every launch is
            /// checked against it (a mismatch is an error, not a launch), and `tests/ptx.rs`
            /// checks it against the PTX.
            pub const fn params(self) -> &'static [usize] {
                match self {
                    $(KernelId::$id => $params,)+
                }
            }

            const fn smem(self) -> Smem {
                match self {
                    $(KernelId::$id => $smem,)+
                }
            }
        }
    };
}

kernel_table! {
    RmsNorm = "rms_norm", RMS_NORM, Smem::Default;
    RmsNormInterleaved = "rms_norm_interleaved", RMS_NORM, Smem::Default;
    FoldGain = "fold_gain", &[PTR, PTR, SCALAR, SCALAR], Smem::Default;
    SplitQkv = "split_qkv", &[PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR], Smem::Default;
    FusedDecode = "fused_rmsnorm_qkv_decode", DECODE_FUSED, Smem::DeviceMax;
    FusedDecodeEarly = "fused_rmsnorm_qkv_decode_early", DECODE_FUSED, Smem::DeviceMax;
    FusedDecodeEarlyM8 = "fused_rmsnorm_qkv_decode_early_m8", DECODE_FUSED, Smem::DeviceMax;
    FusedDecodeRing = "fused_rmsnorm_qkv_decode_ring", DECODE_FUSED, Smem::DeviceMax;
    GemmDecode = "gemm_decode", DECODE_GEMM, Smem::DeviceMax;
    GemmDecodeEarly = "gemm_decode_early", DECODE_GEMM, Smem::DeviceMax;
    GemmDecodeEarlyM8 = "gemm_decode_early_m8", DECODE_GEMM, Smem::DeviceMax;
    GemmDecodeRing = "gemm_decode_ring", DECODE_GEMM, Smem::DeviceMax;
    FusedTiledLarge = "fused_rmsnorm_qkv_tiled_large", TILED_FUSED, Smem::Bytes(config::Large::SMEM_BYTES);
    FusedTiledSmall = "fused_rmsnorm_qkv_tiled_small", TILED_FUSED, Smem::Bytes(config::Small::SMEM_BYTES);
    GemmTiledLarge = "gemm_tiled_large", TILED_GEMM, Smem::Bytes(config::Large::SMEM_BYTES);
    GemmTiledSmall = "gemm_tiled_small", TILED_GEMM, Smem::Bytes(config::Small::SMEM_BYTES);
    GateUpDecode = "fused_rmsnorm_gate_up_decode", DECODE_GATE_UP, Smem::DeviceMax;
    GateUpDecodeEarly = "fused_rmsnorm_gate_up_decode_early", DECODE_GATE_UP, Smem::DeviceMax;
    GateUpDecodeEarlyM8 = "fused_rmsnorm_gate_up_decode_early_m8", DECODE_GATE_UP, Smem::DeviceMax;
    GateUpDecodeRing = "fused_rmsnorm_gate_up_decode_ring", DECODE_GATE_UP, Smem::DeviceMax;
    ProjDecode = "proj_residual_decode", DECODE_PROJ, Smem::DeviceMax;
    ProjDecodeEarly = "proj_residual_decode_early", DECODE_PROJ, Smem::DeviceMax;
    ProjDecodeEarlyM8 = "proj_residual_decode_early_m8", DECODE_PROJ, Smem::DeviceMax;
    ProjDecodeRing = "proj_residual_decode_ring", DECODE_PROJ, Smem::DeviceMax;
    SiluMul = "silu_mul", &[PTR, PTR, SCALAR, SCALAR, SCALAR], Smem::Default;
    ResidualAdd = "residual_add", &[PTR, PTR, PTR, SCALAR], Smem::Default;
    ArgmaxDecode = "fused_rmsnorm_argmax_decode", DECODE_ARGMAX, Smem::DeviceMax;
    ArgmaxDecodeEarly = "fused_rmsnorm_argmax_decode_early", DECODE_ARGMAX, Smem::DeviceMax;
    ArgmaxDecodeEarlyM8 = "fused_rmsnorm_argmax_decode_early_m8", DECODE_ARGMAX, Smem::DeviceMax;
    ArgmaxDecodeRing = "fused_rmsnorm_argmax_decode_ring", DECODE_ARGMAX, Smem::DeviceMax;
    StepBegin = "decode_step_begin", &[PTR, PTR, PTR, PTR, PTR, PTR, SCALAR, SCALAR, SCALAR, SCALAR], Smem::Default;
    QkNormRope = "qk_norm_rope", QK_NORM_ROPE, Smem::Default;
    AttentionDecode = "attention_decode", ATTENTION, Smem::Default;
    AttentionDecodeRope = "attention_decode_rope", ATTENTION_ROPE, Smem::Default;
    ArgmaxBf16 = "argmax_bf16", &[PTR, SCALAR, PTR], Smem::Default;
}

// `Kernels::entry` indexes by variant; a launch carries at most `MAX_PARAMS` arguments.
const _: () = {
    let mut i = 0;
    while i < KernelId::ALL.len() {
        assert!(KernelId::ALL[i] as usize == i, "KernelId::ALL out of declaration order");
        assert!(KernelId::ALL[i].params().len() <= MAX_PARAMS, "an entry takes more than launch::MAX_PARAMS");
        i += 1;
    }
};

/// The four forms of one decode kernel, which take the same arguments: plain, `_early`,
/// `_early_m8` and `_ring` (see `DecodePlan`).
struct DecodeForms {
    plain: KernelId,
    early: KernelId,
    early_m8: KernelId,
    ring: KernelId,
}

const FUSED_DECODE: DecodeForms = DecodeForms {
    plain: KernelId::FusedDecode,
    early: KernelId::FusedDecodeEarly,
    early_m8: KernelId::FusedDecodeEarlyM8,
    ring: KernelId::FusedDecodeRing,
};

const GEMM_DECODE: DecodeForms = DecodeForms {
    plain: KernelId::GemmDecode,
    early: KernelId::GemmDecodeEarly,
    early_m8: KernelId::GemmDecodeEarlyM8,
    ring: KernelId::GemmDecodeRing,
};

const GATE_UP_DECODE: DecodeForms = DecodeForms {
    plain: KernelId::GateUpDecode,
    early: KernelId::GateUpDecodeEarly,
    early_m8: KernelId::GateUpDecodeEarlyM8,
    ring: KernelId::GateUpDecodeRing,
};

const PROJ_DECODE: DecodeForms = DecodeForms {
    plain: KernelId::ProjDecode,
    early: KernelId::ProjDecodeEarly,
    early_m8: KernelId::ProjDecodeEarlyM8,
    ring: KernelId::ProjDecodeRing,
};

const ARGMAX_DECODE: DecodeForms = DecodeForms {
    plain: KernelId::ArgmaxDecode,
    early: KernelId::ArgmaxDecodeEarly,
    early_m8: KernelId::ArgmaxDecodeEarlyM8,
    ring: KernelId::ArgmaxDecodeRing,
};

impl DecodeForms {
    /// The form a plan launches.
    fn pick(&self, plan: &DecodePlan) -> KernelId {
        match (plan.ring, plan.early, plan.token_tiles) {
            (true, _, _) => self.ring,
            (false, false, _) => self.plain,
            (false, true, 1) => self.early_m8,
            (false, true, _) => self.early,
        }
    }
}

/// The kernels of one loaded module, one [`Entry`] per [`KernelId`].
pub(crate) struct Kernels {
    entries: Vec<Entry>,
}

/// `y = rmsnorm(x)` for `rows` rows of `hidden` elements.
#[derive(Clone, Copy)]
pub(crate) struct RmsNormArgs {
    /// `x [rows, hidden]`.
    pub x: u64,
    /// `g [hidden]`.
    pub g: u64,
    /// `y [rows, hidden]`, in the k-interleaved order (`config::interleave`) with `interleave`.
    pub y: u64,
    pub rows: u32,
    pub hidden: u32,
    pub eps: f32,
    pub interleave: bool,
}

/// The inputs of a decode or tiled launch: `x [m, hidden]` and `w [n, hidden]` (n is the
/// total width of the [`QkvOut`]).
#[derive(Clone, Copy)]
pub(crate) struct Operands {
    pub x: u64,
    pub w: u64,
    pub m: u32,
    pub hidden: u32,
}

/// Where a decode or tiled launch writes, named as the kernels' parameters: `q [m, nq]`,
/// `k_out [m, nkv]`, `v [m, nkv]`; or one packed `[m, nq]` ([`QkvOut::packed`]).
#[derive(Clone, Copy)]
pub(crate) struct QkvOut {
    pub q: u64,
    pub k_out: u64,
    pub v: u64,
    pub nq: u32,
    pub nkv: u32,
}

impl QkvOut {
    /// One `y [m, n]` (q, k, v side by side for the fused kernels; the plain GEMMs' output).
    pub(crate) fn packed(y: u64, n: u32) -> Self {
        QkvOut { q: y, k_out: 0, v: 0, nq: n, nkv: 0 }
    }
}

/// What a decode launch computes.
#[derive(Clone, Copy)]
pub(crate) enum DecodeOp {
    /// RMSNorm + QKV on the folded weight: x and W in opposite k orders (one of them
    /// k-interleaved, `config::interleave`).
    Fused { eps: f32 },
    /// `y = x · Wᵀ` into the packed output. `interleave_x`: x and W are in the same k order
    /// (both natural), so the kernel interleaves x while staging it; otherwise exactly one of
    /// them is k-interleaved.
    Gemm { interleave_x: bool },
    /// RMSNorm + gate/up + SiLU·mul into `a [m, inter]` (the packed output's `q`, with
    /// `nq = inter`), on the blocked, folded, k-interleaved gate/up weight (`config::mlp`).
    GateUp { eps: f32 },
    /// `out = residual + x · Wᵀ` (the packed output's `q` is `out`, `nq = N`), x and W both
    /// in natural k order (the kernel interleaves x while staging it).
    Proj { residual: u64 },
    /// RMSNorm + LM head + argmax into the u64 slots `[m]` (the packed output's `q`, with
    /// `nq` = the vocabulary), on the folded, k-interleaved weight (as `Fused`).
    Argmax { eps: f32 },
}

/// `decode_step_begin`'s buffers (device addresses) and sizes.
#[derive(Clone, Copy)]
pub(crate) struct StepArgs {
    pub embed: u64,
    pub prompt: u64,
    pub state: u64,
    pub slot: u64,
    pub tokens: u64,
    pub h: u64,
    pub vocab: u32,
    pub hidden: u32,
    pub max_seq: u32,
    pub rows: u32,
}

/// `qk_norm_rope`'s buffers (device addresses; `q_w`, `k_w` 0 without the norm) and sizes.
#[derive(Clone, Copy)]
pub(crate) struct RopeArgs {
    pub qkv: u64,
    pub q_w: u64,
    pub k_w: u64,
    pub rope: u64,
    pub state: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub max_seq: u32,
    pub rows: u32,
    pub eps: f32,
    pub norm: bool,
}

/// `attention_decode`'s buffers (device addresses), sizes and split count.
#[derive(Clone, Copy)]
pub(crate) struct AttnArgs {
    pub qkv: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub state: u64,
    pub partial: u64,
    pub counters: u64,
    pub out: u64,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub max_seq: u32,
    pub rows: u32,
    pub splits: u32,
    /// The fused-RoPE form (`attention_decode_rope`, one row): its extra inputs.
    pub rope: Option<AttnRope>,
}

/// `attention_decode_rope`'s extra inputs: the RoPE table, the q/k norm weights (0: no
/// norm) and their epsilon.
#[derive(Clone, Copy)]
pub(crate) struct AttnRope {
    pub table: u64,
    pub q_w: u64,
    pub k_w: u64,
    pub eps: f32,
}

/// `a [m, inter] = silu(gate) · up` of a packed `y [m, 2 inter]` whose gate and up columns
/// alternate in blocks of `block` (`inter`: PyTorch's merged layout, all gate columns then
/// all up columns; 8: the fused op's blocked weight, `config::mlp`).
#[derive(Clone, Copy)]
pub(crate) struct SiluMulArgs {
    pub y: u64,
    pub a: u64,
    pub m: u32,
    pub inter: u32,
    pub block: u32,
}

/// What a tiled launch computes.
#[derive(Clone, Copy)]
pub(crate) enum TiledOp {
    /// RMSNorm with gain `g [hidden]` + QKV.
    Fused { g: u64, eps: f32 },
    /// `y = x · Wᵀ` into the packed output.
    Gemm,
}

impl Kernels {
    /// Loads the module and every entry of [`KernelId`]; raises the dynamic shared-memory
    /// limit of the entries that may need more than 48 KiB (`max_smem`: the device's opt-in
    /// maximum per CTA).
    pub(crate) fn load(ctx: &Arc<CudaContext>, ptx: &str, max_smem: u32) -> Result<Kernels> {
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(|e| Error::Module {
            reason: format!("{e} (the PTX must target this GPU's architecture or an older one)"),
        })?;
        let load = |id: KernelId| {
            let name = id.name();
            let f = module
                .load_function(name)
                .map_err(|e| Error::Module { reason: format!("kernel `{name}` not found: {e}") })?;
            let limit = match id.smem() {
                Smem::Default => None,
                Smem::DeviceMax => Some(max_smem),
                Smem::Bytes(bytes) => Some(bytes),
            };
            if let Some(bytes) = limit {
                f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
                    .map_err(Error::driver("cuFuncSetAttribute"))?;
            }
            Ok(Entry { f, name, params: id.params() })
        };
        let entries = KernelId::ALL.iter().map(|&id| load(id)).collect::<Result<_>>()?;
        Ok(Kernels { entries })
    }

    fn entry(&self, id: KernelId) -> &Entry {
        // `entries` follows `KernelId::ALL`, whose order is the variants' (asserted above).
        &self.entries[id as usize]
    }

    /// `y = rmsnorm(x)` (see [`RmsNormArgs`]).
    ///
    /// # Safety
    /// `x`, `g`, `y` are 16-byte aligned device buffers of `rows·hidden`, `hidden`,
    /// `rows·hidden` bf16 on this context; `y` overlaps neither input; `hidden % 8 == 0`;
    /// `1 <= rows < 2^31`.
    pub(crate) unsafe fn rms_norm(&self, stream: &CudaStream, pdl: bool, a: RmsNormArgs) -> Result<()> {
        let id = if a.interleave { KernelId::RmsNormInterleaved } else { KernelId::RmsNorm };
        let shape =
            Shape { grid: (a.rows, 1), block: rms_norm::THREADS, cluster_x: 1, split_z: 1, smem: rms_norm::SMEM_BYTES };
        let launch = Launch::new(self.entry(id), shape).pdl(pdl);
        // SAFETY: the arguments in `rms_norm`'s order (`rms_norm_interleaved` takes the
        // same); buffers per the caller.
        unsafe { launch.arg(a.x).arg(a.g).arg(a.y).arg(a.rows).arg(a.hidden).arg(a.eps).run(stream) }
    }

    /// `W [n, hidden] <- bf16(W · diag(g))` in place, stored in the k-interleaved order
    /// (`config::interleave`; no PDL: run once, at construction).
    ///
    /// # Safety
    /// `w` and `g` are 16-byte aligned device buffers of `n·hidden` and `hidden` bf16 on
    /// this context, not overlapping; `hidden % 8 == 0`; `1 <= n < 2^31`.
    pub(crate) unsafe fn fold_gain(&self, stream: &CudaStream, w: u64, g: u64, n: u32, hidden: u32) -> Result<()> {
        let grid = n.clamp(1, fold_gain::MAX_CTAS);
        let shape = Shape { grid: (grid, 1), block: fold_gain::THREADS, cluster_x: 1, split_z: 1, smem: 0 };
        let launch = Launch::new(self.entry(KernelId::FoldGain), shape);
        // SAFETY: the arguments in `fold_gain`'s order; buffers per the caller.
        unsafe { launch.arg(w).arg(g).arg(n).arg(hidden).run(stream) }
    }

    /// Copies the packed `y [m, out.nq + 2 out.nkv]` into `out`'s q, k_out and v.
    ///
    /// # Safety
    /// `y` and the outputs are 16-byte aligned device buffers on this context of `m` rows
    /// each, the outputs disjoint from `y`; `1 <= m < 2^31`.
    pub(crate) unsafe fn split_qkv(&self, stream: &CudaStream, pdl: bool, y: u64, out: QkvOut, m: u32) -> Result<()> {
        let grid = m.clamp(1, split_qkv::MAX_CTAS);
        let shape = Shape { grid: (grid, 1), block: split_qkv::THREADS, cluster_x: 1, split_z: 1, smem: 0 };
        let launch = Launch::new(self.entry(KernelId::SplitQkv), shape).pdl(pdl);
        // SAFETY: the arguments in `split_qkv`'s order; buffers per the caller.
        unsafe { launch.arg(y).arg(out.q).arg(out.k_out).arg(out.v).arg(m).arg(out.nq).arg(out.nkv).run(stream) }
    }

    /// The decode kernel: `op` fused (W with g folded in, q/k/v outputs) or plain (y in the
    /// packed `out`), in the entry `plan` picks.
    ///
    /// # Safety
    /// Buffers as in the kernel's documentation (x `[m, hidden]`, W `[N, hidden]`, outputs
    /// `[m, width]`), 16-byte aligned, outputs disjoint from inputs; `plan` was made by
    /// `plan::decode_plan` for these sizes and this device.
    pub(crate) unsafe fn decode(
        &self,
        stream: &CudaStream,
        pdl: bool,
        plan: &DecodePlan,
        op: DecodeOp,
        inp: Operands,
        out: QkvOut,
    ) -> Result<()> {
        let shape = Shape {
            grid: plan.grid,
            block: decode::THREADS,
            cluster_x: plan.k_splits(),
            split_z: 1,
            smem: plan.smem_bytes,
        };
        // The entry's token tiles hold m (else the kernel traps): the plan was made for m.
        debug_assert!(inp.m <= plan.token_tiles * decode::TOKEN_TILE, "plan for a smaller M");
        let (split, chunk) = (plan.warp_split, plan.k_chunk);
        match op {
            DecodeOp::Fused { eps } => {
                let launch = Launch::new(self.entry(FUSED_DECODE.pick(plan)), shape).pdl(pdl);
                // SAFETY: the arguments in `fused_rmsnorm_qkv_decode`'s order (its other
                // forms take the same); buffers per the caller; the plan's entry takes m.
                // The fused op's x and W are in opposite k orders: interleave_x = 0.
                unsafe {
                    launch
                        .arg(inp.x)
                        .arg(inp.w)
                        .arg(out.q)
                        .arg(out.k_out)
                        .arg(out.v)
                        .arg(inp.m)
                        .arg(inp.hidden)
                        .arg(out.nq)
                        .arg(out.nkv)
                        .arg(eps)
                        .arg(split)
                        .arg(chunk)
                        .arg(u32::from(plan.trigger_first))
                        .arg(0u32)
                        .run(stream)
                }
            }
            DecodeOp::Gemm { interleave_x } => {
                let launch = Launch::new(self.entry(GEMM_DECODE.pick(plan)), shape).pdl(pdl);
                // SAFETY: the arguments in `gemm_decode`'s order (its other forms take the
                // same); buffers per the caller; the plan's entry takes m.
                unsafe {
                    launch
                        .arg(inp.x)
                        .arg(inp.w)
                        .arg(out.q)
                        .arg(inp.m)
                        .arg(inp.hidden)
                        .arg(out.nq)
                        .arg(split)
                        .arg(chunk)
                        .arg(u32::from(plan.gemm_trigger_first))
                        .arg(u32::from(interleave_x))
                        .run(stream)
                }
            }
            DecodeOp::GateUp { eps } | DecodeOp::Argmax { eps } => {
                let forms = if matches!(op, DecodeOp::GateUp { .. }) { &GATE_UP_DECODE } else { &ARGMAX_DECODE };
                let launch = Launch::new(self.entry(forms.pick(plan)), shape).pdl(pdl);
                // SAFETY: the arguments in `fused_rmsnorm_gate_up_decode`'s and
                // `fused_rmsnorm_argmax_decode`'s order (their other forms take the same);
                // buffers per the caller (for the argmax, the packed output's `q` is the u64
                // slots `[m]`); the plan's entry takes m; the gate/up entry has no K split (the
                // SiLU·mul epilogue traps on one). The folded weight is k-interleaved, h
                // natural: interleave_x = 0. The trigger as the fused QKV entries place it
                // (the same norm and the same staging).
                unsafe {
                    launch
                        .arg(inp.x)
                        .arg(inp.w)
                        .arg(out.q)
                        .arg(inp.m)
                        .arg(inp.hidden)
                        .arg(out.nq)
                        .arg(eps)
                        .arg(split)
                        .arg(chunk)
                        .arg(u32::from(plan.trigger_first))
                        .arg(0u32)
                        .run(stream)
                }
            }
            DecodeOp::Proj { residual } => {
                let launch = Launch::new(self.entry(PROJ_DECODE.pick(plan)), shape).pdl(pdl);
                // SAFETY: the arguments in `proj_residual_decode`'s order (its other forms
                // take the same); buffers per the caller; the plan's entry takes m. x and W
                // are both natural: interleave_x = 1. The trigger as the plain GEMM's (no norm).
                unsafe {
                    launch
                        .arg(inp.x)
                        .arg(inp.w)
                        .arg(residual)
                        .arg(out.q)
                        .arg(inp.m)
                        .arg(inp.hidden)
                        .arg(out.nq)
                        .arg(split)
                        .arg(chunk)
                        .arg(u32::from(plan.gemm_trigger_first))
                        .arg(1u32)
                        .run(stream)
                }
            }
        }
    }

    /// `decode_step_begin` (see [`StepArgs`]): one CTA.
    ///
    /// # Safety
    /// `embed [vocab, hidden]` bf16, `prompt [max_seq]` u32, `state [step::LEN]` u32,
    /// `slot [1]` u64, `tokens [max_seq]` u32, `h [rows, hidden]` bf16: 16-byte aligned device
    /// buffers on this context, the written ones (state, slot, tokens, h) disjoint from
    /// every other; `hidden % 8 == 0`, `rows >= 1`.
    pub(crate) unsafe fn step_begin(&self, stream: &CudaStream, pdl: bool, a: StepArgs) -> Result<()> {
        let shape = Shape { grid: (1, 1), block: step::THREADS, cluster_x: 1, split_z: 1, smem: 0 };
        let launch = Launch::new(self.entry(KernelId::StepBegin), shape).pdl(pdl);
        // SAFETY: the arguments in `decode_step_begin`'s order; buffers per the caller.
        unsafe {
            launch
                .arg(a.embed)
                .arg(a.prompt)
                .arg(a.state)
                .arg(a.slot)
                .arg(a.tokens)
                .arg(a.h)
                .arg(a.vocab)
                .arg(a.hidden)
                .arg(a.max_seq)
                .arg(a.rows)
                .run(stream)
        }
    }

    /// `qk_norm_rope` (see [`RopeArgs`]): one warp per q and k head of each row.
    ///
    /// # Safety
    /// `qkv [rows, (num_heads + 2 num_kv_heads)·hd]`, with the norm `q_w, k_w [hd]` bf16,
    /// `rope [max_seq, hd]` f32, `state [step::LEN]` u32, `k_cache, v_cache [num_kv_heads,
    /// max_seq, hd]` bf16: 16-byte aligned device buffers on this context, the written ones
    /// (qkv, state, the caches) disjoint from each other and from the read ones (qkv's q is
    /// read and written in place); hd 64, 128 or 256; `num_heads + num_kv_heads < 2^31`,
    /// `1 <= rows <= 65535`.
    pub(crate) unsafe fn qk_norm_rope(&self, stream: &CudaStream, pdl: bool, a: RopeArgs) -> Result<()> {
        let grid = (a.num_heads + a.num_kv_heads).div_ceil(rope::WARPS);
        let shape = Shape { grid: (grid, a.rows), block: rope::THREADS, cluster_x: 1, split_z: 1, smem: 0 };
        let launch = Launch::new(self.entry(KernelId::QkNormRope), shape).pdl(pdl);
        // SAFETY: the arguments in `qk_norm_rope`'s order; buffers per the caller.
        unsafe {
            launch
                .arg(a.qkv)
                .arg(a.q_w)
                .arg(a.k_w)
                .arg(a.rope)
                .arg(a.state)
                .arg(a.k_cache)
                .arg(a.v_cache)
                .arg(a.num_heads)
                .arg(a.num_kv_heads)
                .arg(a.head_dim)
                .arg(a.max_seq)
                .arg(a.rows)
                .arg(a.eps)
                .arg(u32::from(a.norm))
                .run(stream)
        }
    }

    /// `attention_decode` (see [`AttnArgs`]): grid `(rows · num_kv_heads, splits)`.
    ///
    /// # Safety
    /// `qkv [rows, (num_heads + 2 num_kv_heads)·hd]`, `out [rows, num_heads·hd]`,
    /// `k_cache, v_cache [num_kv_heads, max_seq, hd]` bf16, `state [step::LEN]` u32,
    /// `partial [rows, num_heads, splits, ML + hd]` f32 and `counters [rows · num_kv_heads]`
    /// u32 (zero) of one scratch used by one stream at a time: 16-byte aligned device
    /// buffers on this context, out disjoint from the rest; the shape validated
    /// (`AttnShape::validate`), `1 <= splits <= MAX_SPLITS`, `rows · num_kv_heads < 2^31`.
    /// With `rope`: `rows = 1`, `rope.table [max_seq, hd]` f32 and `q_w, k_w [hd]` bf16 (or
    /// 0), the caches written (disjoint from every other buffer).
    pub(crate) unsafe fn attention(&self, stream: &CudaStream, pdl: bool, a: AttnArgs) -> Result<()> {
        let shape = Shape {
            grid: (a.rows * a.num_kv_heads, a.splits),
            block: attention::THREADS,
            cluster_x: 1,
            split_z: 1,
            smem: attention::SMEM_BYTES,
        };
        let scale_log2 = std::f32::consts::LOG2_E / (a.head_dim as f32).sqrt();
        let id = if a.rope.is_some() { KernelId::AttentionDecodeRope } else { KernelId::AttentionDecode };
        let launch = Launch::new(self.entry(id), shape).pdl(pdl);
        // SAFETY: the arguments in the entry's order; buffers per the caller.
        unsafe {
            let launch =
                launch.arg(a.qkv).arg(a.k_cache).arg(a.v_cache).arg(a.state).arg(a.partial).arg(a.counters).arg(a.out);
            match a.rope {
                None => launch
                    .arg(a.num_heads)
                    .arg(a.num_kv_heads)
                    .arg(a.head_dim)
                    .arg(a.max_seq)
                    .arg(a.rows)
                    .arg(scale_log2)
                    .run(stream),
                Some(r) => launch
                    .arg(r.table)
                    .arg(r.q_w)
                    .arg(r.k_w)
                    .arg(a.num_heads)
                    .arg(a.num_kv_heads)
                    .arg(a.head_dim)
                    .arg(a.max_seq)
                    .arg(r.eps)
                    .arg(scale_log2)
                    .run(stream),
            }
        }
    }

    /// `argmax_bf16`: `slot = max(slot, key of the largest of logits [n])`.
    ///
    /// # Safety
    /// `logits [n]` bf16 and `slot [1]` u64: 16-byte aligned device buffers on this
    /// context, disjoint; `1 <= n < 2^32`.
    pub(crate) unsafe fn argmax(&self, stream: &CudaStream, pdl: bool, logits: u64, n: u32, slot: u64) -> Result<()> {
        let per_cta = argmax::THREADS * config::VEC;
        let grid = n.div_ceil(per_cta).clamp(1, argmax::MAX_CTAS);
        let shape =
            Shape { grid: (grid, 1), block: argmax::THREADS, cluster_x: 1, split_z: 1, smem: argmax::SMEM_BYTES };
        let launch = Launch::new(self.entry(KernelId::ArgmaxBf16), shape).pdl(pdl);
        // SAFETY: the arguments in `argmax_bf16`'s order; buffers per the caller.
        unsafe { launch.arg(logits).arg(n).arg(slot).run(stream) }
    }

    /// `a [m, inter] = silu(gate) · up` of the packed `y [m, 2 inter]` (see [`SiluMulArgs`]).
    ///
    /// # Safety
    /// `y` and `a` are 16-byte aligned device buffers on this context of `m · 2 inter` and
    /// `m · inter` bf16, disjoint; `inter % 8 == 0`, `block % 8 == 0`, `1 <= m < 2^31`.
    pub(crate) unsafe fn silu_mul(&self, stream: &CudaStream, pdl: bool, a: SiluMulArgs) -> Result<()> {
        let grid = a.m.clamp(1, elementwise::MAX_CTAS);
        let shape = Shape { grid: (grid, 1), block: elementwise::THREADS, cluster_x: 1, split_z: 1, smem: 0 };
        let launch = Launch::new(self.entry(KernelId::SiluMul), shape).pdl(pdl);
        // SAFETY: the arguments in `silu_mul`'s order; buffers per the caller.
        unsafe { launch.arg(a.y).arg(a.a).arg(a.m).arg(a.inter).arg(a.block).run(stream) }
    }

    /// `out = bf16(residual + y)` over `len` elements (`out` may be `residual`).
    ///
    /// # Safety
    /// The three are 16-byte aligned device buffers on this context of `len` bf16, `y`
    /// disjoint from `out`; `len % 8 == 0`, `1 <= len < 2^32`.
    pub(crate) unsafe fn residual_add(
        &self,
        stream: &CudaStream,
        pdl: bool,
        residual: u64,
        y: u64,
        out: u64,
        len: u32,
    ) -> Result<()> {
        let per_cta = elementwise::THREADS * config::VEC;
        let grid = len.div_ceil(per_cta).clamp(1, elementwise::MAX_CTAS);
        let shape = Shape { grid: (grid, 1), block: elementwise::THREADS, cluster_x: 1, split_z: 1, smem: 0 };
        let launch = Launch::new(self.entry(KernelId::ResidualAdd), shape).pdl(pdl);
        // SAFETY: the arguments in `residual_add`'s order; buffers per the caller.
        unsafe { launch.arg(residual).arg(y).arg(out).arg(len).run(stream) }
    }

    /// The tiled kernel: `op` fused (q/k/v outputs) or plain (y in the packed `out`).
    ///
    /// # Safety
    /// As [`Kernels::decode`], with `plan` from `plan::tiled_plan`, and `g [hidden]` a
    /// device buffer on this context.
    pub(crate) unsafe fn tiled(
        &self,
        stream: &CudaStream,
        pdl: bool,
        plan: &TiledPlan,
        op: TiledOp,
        inp: Operands,
        out: QkvOut,
    ) -> Result<()> {
        let shape = Shape { grid: plan.grid, block: plan.block, cluster_x: 1, split_z: 1, smem: plan.smem_bytes };
        let large = plan.tile == Tile::Large;
        match op {
            TiledOp::Fused { g, eps } => {
                let id = if large { KernelId::FusedTiledLarge } else { KernelId::FusedTiledSmall };
                let launch = Launch::new(self.entry(id), shape).pdl(pdl);
                // SAFETY: the arguments in `fused_rmsnorm_qkv_tiled_*`'s order; see above.
                unsafe {
                    launch
                        .arg(inp.x)
                        .arg(g)
                        .arg(inp.w)
                        .arg(out.q)
                        .arg(out.k_out)
                        .arg(out.v)
                        .arg(inp.m)
                        .arg(inp.hidden)
                        .arg(out.nq)
                        .arg(out.nkv)
                        .arg(eps)
                        .run(stream)
                }
            }
            TiledOp::Gemm => {
                let id = if large { KernelId::GemmTiledLarge } else { KernelId::GemmTiledSmall };
                let launch = Launch::new(self.entry(id), shape).pdl(pdl);
                // SAFETY: the arguments in `gemm_tiled_*`'s order; see above.
                unsafe { launch.arg(inp.x).arg(inp.w).arg(out.q).arg(inp.m).arg(inp.hidden).arg(out.nq).run(stream) }
            }
        }
    }
}
