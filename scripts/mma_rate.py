#!/usr/bin/env python3
"""Latency and throughput of the tensor-core instructions the decode kernel could use.

The decode kernel's MMAs run after `griddepcontrol.wait`, on the chain that decides the time
per op, so what matters is how long a warp's MMAs take, not the GPU's peak rate. This script
times, per SM sub-partition (SMSP), one instruction kind in a loop of 8 per iteration:

* `mma_dep`: `mma.sync.m16n8k16` bf16 -> f32, every MMA accumulating into the same registers
  (one dependent chain per warp: its latency);
* `mma_ind2` / `mma_ind4`: the same with 2 / 4 independent accumulator chains;
* `wgmma_n8` / `wgmma_n16`: `wgmma.mma_async.m64n8k16` / `m64n16k16` with A in registers
  and B in shared memory (the only way wgmma could take register-streamed weights), each
  group of 8 committed and waited for (`_wait`) or with one group in flight (`_w1`).

132 CTAs of 128, 256 or 512 threads (1, 2 or 4 warps per SMSP); each CTA's `%clock64` from
a barrier before the loop to one after it, the median over CTAs, the least of three
launches. Reported: cycles per instruction per SMSP (a warp's `mma.sync` and a warpgroup's
`wgmma` m64n8k16 do the same work per SMSP: 16 x 8 x 16). Operand values are arbitrary;
the timing does not depend on them.

Needs only the CUDA driver (`libcuda.so.1`): the PTX below is compiled by the driver's JIT
(`.target sm_90a`, for `wgmma`), so it runs on an sm_90 GPU only.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics

UNROLL = 8


def kernel(name: str, body: str, setup: str = "", tail: str = "") -> str:
    zero = "".join(f"  mov.f32 d{j}, 0f00000000;\n" for j in range(32))
    return f"""
.visible .entry {name}(.param .u64 out, .param .u32 iters)
{{
  .reg .b32 a<4>, b<2>, tid, i, n, x;
  .reg .f32 d<32>;
  .reg .u64 t0, t1, p, dt, desc;
  .reg .pred q;
  mov.u32 tid, %tid.x;
  mov.b32 a0, tid; add.u32 a1, tid, 1; add.u32 a2, tid, 2; add.u32 a3, tid, 3;
  mov.b32 b0, tid; add.u32 b1, tid, 5;
{zero}  ld.param.u32 n, [iters];
{setup}
  bar.sync 0;
  mov.u64 t0, %clock64;
  mov.u32 i, 0;
LOOP:
{body}  add.u32 i, i, 1;
  setp.lt.u32 q, i, n;
  @q bra LOOP;
{tail}
  bar.sync 0;
  mov.u64 t1, %clock64;
  sub.u64 dt, t1, t0;
  // Keep the results alive: fold them into the (masked) output.
  add.f32 d0, d0, d1; add.f32 d0, d0, d2; add.f32 d0, d0, d3; add.f32 d0, d0, d4;
  add.f32 d0, d0, d8; add.f32 d0, d0, d12; add.f32 d0, d0, d16;
  mov.b32 x, d0;
  cvt.u64.u32 t1, x;
  and.b64 t1, t1, 1;
  add.u64 dt, dt, t1;
  ld.param.u64 p, [out];
  mov.u32 x, %ctaid.x;
  mov.u32 i, %ntid.x;
  mad.lo.u32 x, x, i, tid;
  mul.wide.u32 t1, x, 8;
  add.u64 p, p, t1;
  st.global.u64 [p], dt;
  ret;
}}
"""


def mma(dst: int) -> str:
    d = f"{{d{dst},d{dst + 1},d{dst + 2},d{dst + 3}}}"
    return f"  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d}, {{a0,a1,a2,a3}}, {{b0,b1}}, {d};\n"


def wgmma(n: int) -> str:
    d = ",".join(f"d{j}" for j in range(n // 2))
    return f"  wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{d}}}, {{a0,a1,a2,a3}}, desc, 1, 1, 1, 0;\n"


# B in shared memory, no swizzle: start address >> 4 in bits 0-13, leading-dimension byte
# offset 128 >> 4 at bit 16, stride-dimension byte offset 256 >> 4 at bit 32.
WGMMA_SETUP = """
  mov.u32 x, smb;
  cvt.u64.u32 desc, x;
  shr.u64 desc, desc, 4;
  and.b64 desc, desc, 0x3fff;
  or.b64 desc, desc, 0x0000001000080000;
  wgmma.fence.sync.aligned;
"""


def ptx() -> tuple[str, list[str]]:
    ks = {
        "mma_dep": kernel("mma_dep", "".join(mma(0) for _ in range(UNROLL))),
        "mma_ind2": kernel("mma_ind2", "".join(mma(4 * (j % 2)) for j in range(UNROLL))),
        "mma_ind4": kernel("mma_ind4", "".join(mma(4 * (j % 4)) for j in range(UNROLL))),
    }
    for n in (8, 16):
        body = "".join(wgmma(n) for _ in range(UNROLL)) + "  wgmma.commit_group.sync.aligned;\n"
        ks[f"wgmma_n{n}_wait"] = kernel(
            f"wgmma_n{n}_wait", body + "  wgmma.wait_group.sync.aligned 0;\n", WGMMA_SETUP
        )
        ks[f"wgmma_n{n}_w1"] = kernel(
            f"wgmma_n{n}_w1",
            body + "  wgmma.wait_group.sync.aligned 1;\n",
            WGMMA_SETUP,
            "  wgmma.wait_group.sync.aligned 0;",
        )
    head = ".version 8.0\n.target sm_90a\n.address_size 64\n.shared .align 128 .b8 smb[8192];\n"
    return head + "".join(ks.values()), list(ks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=256, help="loop iterations (8 instructions each)")
    args = ap.parse_args()
    cu = ctypes.CDLL("libcuda.so.1")

    def ck(r: int, what: str) -> None:
        if r != 0:
            raise SystemExit(f"{what}: CUDA error {r}")

    ck(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    ck(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    ck(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    ck(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    text, names = ptx()
    mod = ctypes.c_void_p()
    ck(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(text.encode())), "cuModuleLoadData (sm_90 GPU?)")
    grid, most = 132, 512
    buf = ctypes.c_uint64()
    ck(cu.cuMemAlloc_v2(ctypes.byref(buf), grid * most * 8), "cuMemAlloc")
    host = (ctypes.c_uint64 * (grid * most))()
    print(f"{'kernel':16} {'threads':>7} {'warps/SMSP':>10} {'cycles':>8} {'cycles/instr/SMSP':>18}")
    for name in names:
        f = ctypes.c_void_p()
        ck(cu.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()), name)
        for block in (128, 256, most):
            a0, a1 = ctypes.c_uint64(buf.value), ctypes.c_uint32(args.iters)
            params = (ctypes.c_void_p * 2)(
                ctypes.cast(ctypes.byref(a0), ctypes.c_void_p), ctypes.cast(ctypes.byref(a1), ctypes.c_void_p)
            )
            best = None
            for _ in range(3):
                ck(cu.cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, None, params, None), "cuLaunchKernel")
                ck(cu.cuCtxSynchronize(), name)
                ck(cu.cuMemcpyDtoH_v2(host, buf, grid * block * 8), "cuMemcpyDtoH")
                med = statistics.median(host[c * block] for c in range(grid))
                best = med if best is None else min(best, med)
            per_smsp = block // 32 / 4
            print(f"{name:16} {block:7} {per_smsp:10.0f} {best:8.0f} {best / (per_smsp * args.iters * UNROLL):18.2f}")


if __name__ == "__main__":
    main()
