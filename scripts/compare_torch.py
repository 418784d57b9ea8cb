#!/usr/bin/env python3
"""Compare nanofuse's fused RMSNorm + QKV projection with PyTorch and Triton.

The op, for one model shape (K = hidden size, N = Nq + 2 * Nkv):

    x [M, K] bf16, g [K] bf16, W [N, K] bf16 (torch.nn.Linear layout)
    y = rmsnorm(x, g, eps) @ W.T;  q, k, v = y.split([Nq, Nkv, Nkv], dim=-1)

Variants timed here, on the same GPU as `nanofuse bench`:

* eager:   F.rms_norm then F.linear then split (what a PyTorch model runs).
* compile: torch.compile (default mode) of the same function.
* triton:  one autotuned Triton kernel: a two-pass RMSNorm (pass 1 sums the squares of
           each row over K; pass 2 reloads the x tiles, normalizes them with g) feeding
           tl.dot over K tiles into a BLOCK_M x BLOCK_N tile of y (bf16 [M, N]).

Method (the same as nanofuse's, so the numbers compare directly):

* a ring of R distinct (x, g, W, output) sets, with R = max(2, 4 * L2 // bytes(W) + 1)
  exactly as nanofuse computes it, so the ring totals more than 4x the L2 cache and the weights
  stream from DRAM as in a real decode step;
* each variant is run once per ring entry (warm-up, on a side stream), then captured in
  ONE CUDA graph that runs it once per ring entry;
* the graph is replayed `warmup` times untimed (10; 3 with --quick), then `replays` times
  (100; 20 with --quick), each replay timed with a pair of CUDA events;
* time per op = replay time / R; the median over the replays is reported (min/max too).

If graph capture of the compiled function fails, its ring is launched eagerly instead
(events around each pass over the ring) and the row is marked "(no graph)".

The device-to-device copy bandwidth (1 GiB `dst.copy_(src)`, median of 20, bytes read +
written) is measured in the same run, as nanofuse does. With --nanofuse-json (the file
written by `nanofuse bench --json FILE`) the nanofuse numbers are merged into one table.

Needs torch and triton only (plus the standard library); --help works without them.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # --help and argument errors still work without torch
    torch = None
    F = None

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None


@dataclass(frozen=True)
class Shape:
    """A model's attention-input shape (the same four as nanofuse's bench)."""

    name: str
    hidden: int  # K
    q_dim: int  # Nq
    kv_dim: int  # Nkv
    eps: float

    @property
    def n(self) -> int:
        """Output width N = Nq + 2 * Nkv."""
        return self.q_dim + 2 * self.kv_dim

    @property
    def splits(self) -> tuple:
        """Widths of q, k, v in y."""
        return (self.q_dim, self.kv_dim, self.kv_dim)


SHAPES = [
    Shape("Qwen3-0.6B", 1024, 2048, 1024, 1e-6),
    Shape("Llama-3.2-1B", 2048, 2048, 512, 1e-5),
    Shape("Llama-3-8B", 4096, 4096, 1024, 1e-5),
    Shape("Llama-3-70B", 8192, 8192, 1024, 1e-5),
]
DEFAULT_MS = [1, 16, 128, 2048]
RING_L2_FACTOR = 4
L2_FALLBACK_BYTES = 50 * 1000 * 1000
COPY_BYTES = 1 << 30
COPY_REPS = 20
TRITON_TOLERANCE = 1e-2

# Column keys of the merged table, in order: (key, header).
TIME_COLUMNS = [
    ("nf_fused", "nf fused µs"),
    ("nf_api", "nf API µs"),
    ("nf_cublas", "nf unfused-cuBLAS µs"),
    ("eager", "torch eager µs"),
    ("compile", "torch.compile µs"),
    ("triton", "Triton µs"),
]
RATIO_COLUMNS = [
    ("eager", "eager/fused"),
    ("compile", "compile/fused"),
    ("triton", "triton/fused"),
]
# nanofuse's JSON variant names for the nanofuse columns.
NANOFUSE_VARIANTS = {"nf_fused": "Fused", "nf_api": "Api", "nf_cublas": "NormCublas"}


# --------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    """Parses and checks the command line (shape names, batch sizes)."""
    known = ", ".join(s.name for s in SHAPES)
    p = argparse.ArgumentParser(
        description="Time PyTorch eager, torch.compile and a Triton kernel for fused "
        "RMSNorm + QKV with nanofuse's method (CUDA-graph replays over a ring larger "
        "than 4x L2, CUDA events, medians) and merge them with `nanofuse bench --json`.",
    )
    p.add_argument("--nanofuse-json", metavar="FILE", help="JSON written by `nanofuse bench --json FILE` (optional)")
    p.add_argument("--shapes", metavar="NAMES", help=f"comma-separated shape names, case-insensitive (default all: {known})")
    p.add_argument("--m", metavar="LIST", default=",".join(map(str, DEFAULT_MS)), help="comma-separated batch sizes (default 1,16,128,2048)")
    p.add_argument("--quick", action="store_true", help="20 replays instead of 100 (3 warm-up replays instead of 10)")
    p.add_argument("--json", metavar="OUT", help="write the merged rows as JSON")
    p.add_argument("--markdown", metavar="OUT", help="write the merged table as GitHub markdown")
    p.add_argument("--seed", type=int, default=0x5EED, help="seed of the random data (default 0x5eed)")
    a = p.parse_args(argv)

    if a.shapes:
        by_name = {s.name.lower(): s for s in SHAPES}
        chosen = []
        for name in (n.strip() for n in a.shapes.split(",")):
            if not name:
                continue
            if name.lower() not in by_name:
                p.error(f"unknown shape {name!r}; known: {known}")
            chosen.append(by_name[name.lower()])
        if not chosen:
            p.error(f"--shapes names no shape; known: {known}")
        a.shape_list = chosen
    else:
        a.shape_list = list(SHAPES)

    ms = []
    for tok in (t.strip() for t in a.m.split(",")):
        if not tok:
            continue
        try:
            m = int(tok)
        except ValueError:
            p.error(f"--m: {tok!r} is not an integer")
        if not 1 <= m <= 65536:
            p.error(f"--m {m}: batch sizes must be in 1..=65536")
        ms.append(m)
    if not ms:
        p.error("--m names no batch size")
    a.ms = ms
    a.warmup, a.replays = (3, 20) if a.quick else (10, 100)
    return a


# --------------------------------------------------------------------------------------
# nanofuse's JSON


def load_nanofuse(path):
    """Reads `nanofuse bench --json` output: (report dict, {(model lower, m, variant): cell})."""
    if path is None:
        return None, {}
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except OSError as e:
        raise SystemExit(f"compare_torch: cannot read --nanofuse-json {path}: {e}")
    except json.JSONDecodeError as e:
        raise SystemExit(f"compare_torch: --nanofuse-json {path} is not valid JSON: {e}")
    if not isinstance(report, dict) or not isinstance(report.get("measurements"), list):
        raise SystemExit(f"compare_torch: {path} has no 'measurements' list (is it from `nanofuse bench --json`?)")
    cells = {}
    for meas in report["measurements"]:
        if isinstance(meas, dict) and meas.get("op", "qkv") != "qkv":
            continue  # an MLP op's row (`bench --op mlp`): this script compares the QKV op
        try:
            cells[(str(meas["model"]).lower(), int(meas["m"]), str(meas["variant"]))] = meas
        except (KeyError, TypeError, ValueError):
            continue  # a malformed entry prints as "-"
    return report, cells


# --------------------------------------------------------------------------------------
# Device information


def cuda_driver_version():
    """CUDA driver API version (as cuDriverGetVersion reports it, e.g. '13.0'), or None."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value > 0:
            return f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except OSError:
        pass
    return None


def display_driver_version():
    """The kernel driver's version from nvidia-smi (e.g. '580.159.04'), or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()
        return out[0].strip() if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info() -> dict:
    """Name, capability, SMs, memory, L2 and software versions of GPU 0."""
    p = torch.cuda.get_device_properties(0)
    l2 = int(getattr(p, "L2_cache_size", 0) or 0)
    return {
        "name": p.name,
        "compute_capability": [p.major, p.minor],
        "sm_count": p.multi_processor_count,
        "total_memory_bytes": p.total_memory,
        "l2_bytes": l2 if l2 > 0 else L2_FALLBACK_BYTES,
        "l2_from_device": l2 > 0,
        "driver": display_driver_version(),
        "cuda_driver_api": cuda_driver_version(),
        "cuda_runtime": torch.version.cuda,
        "torch": torch.__version__,
        "triton": getattr(triton, "__version__", None) if triton is not None else None,
    }


def copy_bandwidth_gbs(nbytes=COPY_BYTES, reps=COPY_REPS) -> float:
    """Device-to-device copy bandwidth, GB/s counting bytes read + written (median of reps)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(reps):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(2.0 * nbytes / (start.elapsed_time(end) * 1e-3) / 1e9)
    del src, dst
    torch.cuda.empty_cache()
    return statistics.median(samples)


# --------------------------------------------------------------------------------------
# The variants


def make_reference(shape: Shape):
    """The PyTorch function (eager, and what torch.compile compiles): norm, linear, split."""
    k, eps, splits = shape.hidden, shape.eps, list(shape.splits)

    def rmsnorm_qkv(x, g, w):
        xn = F.rms_norm(x, (k,), g, eps)
        return F.linear(xn, w).split(splits, dim=-1)

    return rmsnorm_qkv


if triton is not None:

    def _triton_configs():
        """A handful of launch shapes: small BLOCK_M for decode, big tiles for prefill."""
        shapes = [
            # BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages
            (16, 32, 256, 4, 3),
            (16, 64, 128, 4, 4),
            (16, 128, 128, 4, 3),
            (32, 64, 128, 4, 4),
            (64, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (128, 128, 64, 8, 3),
            (128, 256, 64, 8, 3),
        ]
        return [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in shapes
        ]

    @triton.autotune(configs=_triton_configs(), key=["M", "N", "K"])
    @triton.jit
    def _rmsnorm_qkv_kernel(
        x_ptr, g_ptr, w_ptr, y_ptr,
        M, N, K, eps,
        stride_xm, stride_wn, stride_ym,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        """y[M, N] = (rmsnorm(x) * g) @ W.T: two-pass norm fused into the K loop of a GEMM."""
        # Grouped tile order (as in Triton's matmul tutorial) so tiles sharing W columns
        # run close together and W is re-read from L2 rather than DRAM.
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + ((pid % group) % group_m)
        pid_n = (pid % group) // group_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N

        # Pass 1: sum of squares of each row over K, in fp32.
        sumsq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            xt = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
                mask=mask_m[:, None] & (kk[None, :] < K), other=0.0,
            ).to(tl.float32)
            sumsq += tl.sum(xt * xt, axis=1)
        rstd = tl.rsqrt(sumsq / K + eps)

        # Pass 2: reload x tiles, normalize with rstd and g, accumulate x_n @ W.T tiles.
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mask_k = kk < K
            xt = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
                mask=mask_m[:, None] & mask_k[None, :], other=0.0,
            ).to(tl.float32)
            gt = tl.load(g_ptr + kk, mask=mask_k, other=0.0).to(tl.float32)
            xn = (xt * rstd[:, None] * gt[None, :]).to(tl.bfloat16)
            wt = tl.load(
                w_ptr + offs_n[:, None] * stride_wn + kk[None, :],
                mask=mask_n[:, None] & mask_k[None, :], other=0.0,
            )  # [BLOCK_N, BLOCK_K]
            acc = tl.dot(xn, tl.trans(wt), acc)

        tl.store(
            y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :],
            acc.to(tl.bfloat16),
            mask=mask_m[:, None] & mask_n[None, :],
        )


def triton_rmsnorm_qkv(x, g, w, eps, out, splits):
    """Launches the Triton kernel into out [M, N]; returns out's q, k, v views."""
    m, k = x.shape
    n = w.shape[0]
    assert x.is_contiguous() and w.is_contiguous() and out.is_contiguous()

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    _rmsnorm_qkv_kernel[grid](x, g, w, out, m, n, k, eps, x.stride(0), w.stride(0), out.stride(0))
    return out.split(list(splits), dim=-1)


def triton_best_config():
    """The autotuner's choice for the last key, as text (or None)."""
    cfg = getattr(_rmsnorm_qkv_kernel, "best_config", None)
    if cfg is None:
        return None
    kw = getattr(cfg, "kwargs", {})
    try:
        return (
            f"BM{kw['BLOCK_M']} BN{kw['BLOCK_N']} BK{kw['BLOCK_K']} "
            f"warps {cfg.num_warps} stages {cfg.num_stages}"
        )
    except (KeyError, AttributeError):
        return str(cfg)


# --------------------------------------------------------------------------------------
# Timing


def ring_len(l2_bytes: int, bytes_per_set: int, factor: int = RING_L2_FACTOR) -> int:
    """Ring entries so the ring's weights exceed factor x L2 (nanofuse's formula; >= 2)."""
    return max(2, factor * l2_bytes // max(1, bytes_per_set) + 1)


def weight_bytes(shape: Shape) -> int:
    """Bytes of one W [N, K] in bf16: what nanofuse sizes its ring by."""
    return 2 * shape.n * shape.hidden


def summarize(samples):
    """Median, min and max of per-op times (µs), nanofuse's Stats."""
    return {
        "median_us": statistics.median(samples),
        "min_us": min(samples),
        "max_us": max(samples),
        "replays": len(samples),
    }


def time_ring(step, ring, warmup, replays, allow_no_graph=False):
    """Times step(i) for i in 0..ring captured in one CUDA graph, nanofuse's way.

    Returns (stats, used_graph). step(i) enqueues one op on the current stream and
    returns its outputs, which are kept alive so every entry writes distinct memory.
    With allow_no_graph, a failed capture falls back to eager passes over the ring.
    """
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    # Warm-up outside the graph, on a side stream (PyTorch's rule for capture).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for i in range(ring):
                step(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph, keep = torch.cuda.CUDAGraph(), []
    try:
        with torch.cuda.graph(graph):
            for i in range(ring):
                keep.append(step(i))
        launch = graph.replay
        used_graph = True
    except Exception as e:  # noqa: BLE001 - any capture failure
        del keep
        graph = None
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001
            pass
        if not allow_no_graph:
            raise
        print(f"    graph capture failed ({type(e).__name__}: {first_line(e)}); timing eager launches", flush=True)
        keep = [None] * ring

        def launch():
            for i in range(ring):
                keep[i] = step(i)

        used_graph = False

    for _ in range(warmup):
        launch()
    torch.cuda.synchronize()
    per_op = []
    for _ in range(replays):
        start.record()
        launch()
        end.record()
        end.synchronize()
        per_op.append(start.elapsed_time(end) * 1000.0 / ring)
    if graph is not None:
        graph.reset()
    del keep, graph
    return summarize(per_op), used_graph


def rel_error(a, b) -> float:
    """Relative Frobenius error ||a - b|| / ||b|| in fp32."""
    a, b = a.float(), b.float()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30)).item()


def first_line(e) -> str:
    """An exception's first line of text, shortened."""
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:160]


# --------------------------------------------------------------------------------------
# The sweep


def uniform(shape, lo, hi, gen):
    """A bf16 CUDA tensor of U(lo, hi) values."""
    return torch.empty(shape, dtype=torch.bfloat16, device="cuda").uniform_(lo, hi, generator=gen)


def measure_shape(shape: Shape, ms, args, l2_bytes, seed):
    """Builds the ring for one shape and times every variant at every M; returns cells."""
    k, n = shape.hidden, shape.n
    ring = ring_len(l2_bytes, weight_bytes(shape))
    gen = torch.Generator(device="cuda")
    gen.manual_seed(seed)
    a = math.sqrt(3.0 / k)
    gs = [uniform((k,), 0.5, 1.5, gen) for _ in range(ring)]
    ws = [uniform((n, k), -a, a, gen) for _ in range(ring)]
    ref = make_reference(shape)
    cells = []
    print(f"{shape.name}: K={k} N={n} (Nq={shape.q_dim}, Nkv={shape.kv_dim}) eps={shape.eps:g}, ring {ring}", flush=True)

    for m in ms:
        cell = {"model": shape.name, "m": m, "ring": ring, "notes": []}
        xs = [uniform((m, k), -1.0, 1.0, gen) for _ in range(ring)]
        y_ref = F.linear(F.rms_norm(xs[0], (k,), gs[0], shape.eps), ws[0])

        # eager
        try:
            st, _ = time_ring(lambda i: ref(xs[i], gs[i], ws[i]), ring, args.warmup, args.replays)
            cell["eager"] = st
        except Exception as e:  # noqa: BLE001
            cell["eager_error"] = f"{type(e).__name__}: {first_line(e)}"
            cell["notes"].append(f"eager failed ({cell['eager_error']})")

        # torch.compile (fresh compile per shape and M: static shapes, no recompile limit)
        try:
            torch._dynamo.reset()
            compiled = torch.compile(ref)
            err = rel_error(torch.cat(compiled(xs[0], gs[0], ws[0]), dim=-1), y_ref)
            cell["compile_rel_err"] = err
            st, graphed = time_ring(
                lambda i: compiled(xs[i], gs[i], ws[i]), ring, args.warmup, args.replays, allow_no_graph=True
            )
            cell["compile"] = st
            cell["compile_graph"] = graphed
            if not graphed:
                cell["notes"].append("compile (no graph)")
        except Exception as e:  # noqa: BLE001
            cell["compile_error"] = f"{type(e).__name__}: {first_line(e)}"
            cell["notes"].append(f"compile failed ({cell['compile_error']})")
        finally:
            compiled = None
            torch._dynamo.reset()

        # Triton: check against eager first, then time.
        if triton is None:
            cell["triton_error"] = "triton not importable"
            cell["notes"].append("triton not importable")
        else:
            outs = [torch.empty((m, n), dtype=torch.bfloat16, device="cuda") for _ in range(ring)]
            try:
                triton_rmsnorm_qkv(xs[0], gs[0], ws[0], shape.eps, outs[0], shape.splits)  # autotunes
                err = rel_error(outs[0], y_ref)
                cell["triton_rel_err"] = err
                cell["triton_config"] = triton_best_config()
                if err <= TRITON_TOLERANCE:
                    st, _ = time_ring(
                        lambda i: triton_rmsnorm_qkv(xs[i], gs[i], ws[i], shape.eps, outs[i], shape.splits),
                        ring, args.warmup, args.replays,
                    )
                    cell["triton"] = st
                else:
                    cell["triton_wrong"] = True
                    cell["notes"].append(f"triton wrong (rel err {err:.2e} > {TRITON_TOLERANCE:g})")
            except Exception as e:  # noqa: BLE001
                cell["triton_error"] = f"{type(e).__name__}: {first_line(e)}"
                cell["notes"].append(f"triton failed ({cell['triton_error']})")
            del outs

        print(
            f"  M={m:<5} eager {fmt_us(cell.get('eager'))} µs | compile {fmt_us(cell.get('compile'))} µs"
            f" (rel err {fmt_err(cell.get('compile_rel_err'))}) | triton {fmt_us(cell.get('triton'))} µs"
            f" (rel err {fmt_err(cell.get('triton_rel_err'))}; {cell.get('triton_config') or '-'})",
            flush=True,
        )
        for note in cell["notes"]:
            print(f"    note: {note}", flush=True)
        cells.append(cell)
        del xs, y_ref
        torch.cuda.synchronize()

    del gs, ws
    gc.collect()
    torch.cuda.empty_cache()
    return cells


# --------------------------------------------------------------------------------------
# Merging and output


def fmt_us(st) -> str:
    """A stats dict's median as text, or '-'."""
    return f"{st['median_us']:.2f}" if st else "-"


def fmt_err(err) -> str:
    """A relative error as text, or '-'."""
    return f"{err:.1e}" if err is not None else "-"


def merge(cells, nf_cells):
    """One row per (shape, M): nanofuse's medians, ours, and the ratios to nanofuse fused."""
    rows = []
    for c in cells:
        row = {"model": c["model"], "m": c["m"], "ring": c["ring"], "times_us": {}, "stats": {}, "ratios": {}}
        for key, variant in NANOFUSE_VARIANTS.items():
            meas = nf_cells.get((c["model"].lower(), c["m"], variant))
            if meas is not None and meas.get("median_us") is not None:
                row["times_us"][key] = float(meas["median_us"])
                row["stats"][key] = {f: meas.get(f) for f in ("median_us", "min_us", "max_us", "bytes", "gbs", "tflops", "path", "ring", "replays")}
            else:
                row["times_us"][key] = None
        nf_ring = (row["stats"].get("nf_fused") or {}).get("ring")
        notes = list(c["notes"])
        if nf_ring is not None and nf_ring != c["ring"]:
            notes.append(f"nanofuse ring {nf_ring} vs ours {c['ring']}")
        for key in ("eager", "compile", "triton"):
            st = c.get(key)
            row["times_us"][key] = st["median_us"] if st else None
            if st:
                row["stats"][key] = st
        row["compile_graph"] = c.get("compile_graph")
        row["compile_error"] = c.get("compile_error")
        row["compile_rel_err"] = c.get("compile_rel_err")
        row["triton_rel_err"] = c.get("triton_rel_err")
        row["triton_wrong"] = bool(c.get("triton_wrong"))
        row["triton_error"] = c.get("triton_error")
        row["triton_config"] = c.get("triton_config")
        row["eager_error"] = c.get("eager_error")
        fused = row["times_us"]["nf_fused"]
        for key, _ in RATIO_COLUMNS:
            t = row["times_us"][key]
            row["ratios"][key] = t / fused if (t is not None and fused) else None
        row["notes"] = notes
        rows.append(row)
    return rows


def cell_text(row, key) -> str:
    """A table cell: the median in µs, or why there is none."""
    if key == "triton":
        if row["triton_wrong"]:
            return "wrong"
        if row["triton_error"]:
            return "n/a" if "not importable" in row["triton_error"] else "failed"
    if key == "compile" and row["compile_error"]:
        return "failed"
    if key == "eager" and row["eager_error"]:
        return "failed"
    t = row["times_us"].get(key)
    if t is None:
        return "-"
    text = f"{t:.2f}"
    if key == "compile" and row["compile_graph"] is False:
        text += " (no graph)"
    return text


def ratio_text(row, key) -> str:
    """A ratio cell, 'x' suffixed, or '-'."""
    r = row["ratios"].get(key)
    return f"{r:.2f}x" if r is not None else "-"


def table_cells(row):
    """All cells of one row as text, in column order."""
    return (
        [row["model"], str(row["m"])]
        + [cell_text(row, k) for k, _ in TIME_COLUMNS]
        + [ratio_text(row, k) for k, _ in RATIO_COLUMNS]
    )


def headers():
    """Column headers in order."""
    return ["shape", "M"] + [h for _, h in TIME_COLUMNS] + [h for _, h in RATIO_COLUMNS]


def print_table(rows):
    """The merged table, fixed width, with notes below."""
    head = headers()
    body = [table_cells(r) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print(line(b))
    notes = [(r, n) for r in rows for n in r["notes"]]
    if notes:
        print()
        for r, n in notes:
            print(f"note: {r['model']} M={r['m']}: {n}")


def markdown(rows, method_line, header_lines) -> str:
    """The merged table as GitHub markdown, with the method and notes."""
    head = headers()
    out = [f"{line}  " for line in header_lines]
    out.append(f"Method: {method_line}")
    out.append("")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join([":---", "---:"] + ["---:"] * (len(head) - 2)) + "|")
    for r in rows:
        out.append("| " + " | ".join(table_cells(r)) + " |")
    notes = [(r, n) for r in rows for n in r["notes"]]
    if notes:
        out.append("")
        for r, n in notes:
            out.append(f"- {r['model']} M={r['m']}: {n}")
    out.append("")
    out.append(
        "nf = nanofuse (`nanofuse bench`): fused = the fused kernel, API = `forward_into` (Path::Auto), "
        "unfused-cuBLAS = RMSNorm kernel + cuBLAS GEMM. Ratios are time / nanofuse fused time (> 1: nanofuse is faster)."
    )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    """Parses arguments, measures, prints the merged table, writes JSON/markdown."""
    args = parse_args(argv)
    nf_report, nf_cells = load_nanofuse(args.nanofuse_json)

    if torch is None:
        print("compare_torch: PyTorch is not installed (import torch failed)", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("compare_torch: CUDA is not available to PyTorch (no GPU, or no CUDA build of torch)", file=sys.stderr)
        return 1
    if triton is None:
        print("compare_torch: warning: triton is not importable; the Triton column will be 'n/a'", file=sys.stderr)

    info = device_info()
    copy_gbs = copy_bandwidth_gbs()
    cc = info["compute_capability"]
    header_lines = [
        f"device: {info['name']} (sm_{cc[0]}{cc[1]}, {info['sm_count']} SMs, L2 {info['l2_bytes'] / 1e6:.0f} MB"
        f"{'' if info['l2_from_device'] else ' (fallback)'}, {info['total_memory_bytes'] / 2**30:.0f} GiB)",
        f"driver {info['driver'] or 'n/a'} (CUDA driver API {info['cuda_driver_api'] or 'n/a'}), "
        f"CUDA runtime {info['cuda_runtime']}, torch {info['torch']}, triton {info['triton'] or 'n/a'}",
        f"device-to-device copy bandwidth (read + write), measured now: {copy_gbs:.0f} GB/s",
    ]
    if nf_report is not None:
        nf_dev = nf_report.get("device", "?")
        nf_bw = nf_report.get("copy_bandwidth_gbs")
        header_lines.append(
            f"nanofuse JSON: {args.nanofuse_json} (device {nf_dev}, copy bandwidth "
            f"{f'{nf_bw:.0f} GB/s' if isinstance(nf_bw, (int, float)) else '-'})"
        )
        if nf_dev != info["name"]:
            header_lines.append(f"WARNING: nanofuse ran on {nf_dev!r}, this run is on {info['name']!r}")
    for line in header_lines:
        print(line)
    print(flush=True)

    cells = []
    for idx, shape in enumerate(args.shape_list):
        cells.extend(measure_shape(shape, args.ms, args, info["l2_bytes"], args.seed + idx))

    rings = ", ".join(f"{s.name} {ring_len(info['l2_bytes'], weight_bytes(s))}" for s in args.shape_list)
    method_line = (
        f"each variant captured in one CUDA graph over a ring of distinct (x, g, W, out) sets totalling more than "
        f"{RING_L2_FACTOR}x the L2 cache (ring: {rings}); time per op = replay time / ring length (CUDA events); "
        f"median of {args.replays} replays after {args.warmup} warm-up replays"
    )
    rows = merge(cells, nf_cells)
    print()
    print(f"method: {method_line}")
    print_table(rows)

    if args.json:
        report = {
            "device": info,
            "copy_bandwidth_gbs": copy_gbs,
            "method": method_line,
            "replays": args.replays,
            "warmup": args.warmup,
            "nanofuse_json": args.nanofuse_json,
            "nanofuse_device": nf_report.get("device") if nf_report else None,
            "nanofuse_copy_bandwidth_gbs": nf_report.get("copy_bandwidth_gbs") if nf_report else None,
            "rows": rows,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown(rows, method_line, header_lines))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
