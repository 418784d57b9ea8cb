#!/usr/bin/env python3
"""Read-only DRAM bandwidth of this GPU, the ceiling for a weight-streaming kernel.

`nanofuse bench` reports its kernels against the device-to-device copy bandwidth (bytes read
+ written). A batch-1 projection only reads, so this script measures what a plain streaming
read reaches on buffers the size of the model shapes' weights: a Triton kernel sums a bf16
buffer (16-byte vector loads, one f32 result per program), over the same kind of ring as
nanofuse's benchmarks (distinct buffers totalling more than 4x L2, one CUDA graph over the
ring, time per op = replay time / ring length, median of the replays). Several block shapes
are tried per size; every one is printed and the best is marked.

Needs torch and triton.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
import triton.language as tl


@triton.jit
def _sum_kernel(src, dst, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    base = pid.to(tl.int64) * BLOCK * ITERS
    for i in range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(src + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(dst + pid, tl.sum(acc))


def time_ring(fn, ring: int, replays: int) -> list[float]:
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for i in range(ring):
            fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(ring):
            fn(i)
    for _ in range(5):
        graph.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / ring)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", default="8.4,50.3,167.8", help="buffer sizes in MB (the shapes' W)")
    ap.add_argument("--replays", type=int, default=50)
    a = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    print(f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MB")
    src = torch.empty(1 << 29, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy = time_ring(lambda i: dst.copy_(src), 1, 20)
    print(f"device-to-device copy (read + write): {2 * src.numel() / statistics.median(copy) / 1e3:.0f} GB/s")
    for mb in (float(s) for s in a.mb.split(",")):
        n = int(mb * 1e6) // 2
        ring = max(2, 4 * l2 // (2 * n) + 1)
        bufs = [torch.randn(n, device="cuda").to(torch.bfloat16) for _ in range(ring)]
        rows = []
        for block, iters, warps in [(2048, 4, 4), (4096, 4, 8), (4096, 8, 8), (8192, 4, 8), (8192, 8, 16)]:
            grid = triton.cdiv(n, block * iters)
            out = torch.empty(grid, dtype=torch.float32, device="cuda")

            def run(i, block=block, iters=iters, warps=warps, grid=grid, out=out):
                _sum_kernel[(grid,)](bufs[i], out, n, BLOCK=block, ITERS=iters, num_warps=warps)

            us = statistics.median(time_ring(run, ring, a.replays))
            rows.append((us, block, iters, warps, grid))
        best = min(rows)[0]
        for us, block, iters, warps, grid in rows:
            mark = "  <- best" if us == best else ""
            print(
                f"{mb:7.1f} MB ring {ring:3d} block {block:5d} x {iters:2d} warps {warps:2d} "
                f"grid {grid:6d}: {us:8.2f} us {2 * n / us / 1e3:6.0f} GB/s{mark}"
            )
        del bufs


if __name__ == "__main__":
    main()
