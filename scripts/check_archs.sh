#!/usr/bin/env bash
# Builds the kernels' PTX for several GPU architectures (NANOFUSE_CUDA_ARCH) and assembles
# each with ptxas for that architecture: that build.rs picks a PTX ISA version the pinned
# LLVM and ptxas accept for the target, and that the kernels' instructions exist there.
#
#   scripts/check_archs.sh [ARCH...]      default: sm_90 sm_90a sm_100 sm_120
#
# Each architecture builds in its own target directory, target/archs/<arch> (`cargo check
# --lib` runs build.rs, which compiles the kernels), so the default build in target/ is
# left alone and a rerun is incremental. ptxas is looked up as tests/ptx.rs does:
# $NANOFUSE_PTXAS, then PATH, then .tools/ (where .ci/run installs it); without it the PTX
# is still built and the assembly prints `skipped:`. About 55 s per architecture on two
# cores from a clean target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(sm_90 sm_90a sm_100 sm_120)

ptxas=${NANOFUSE_PTXAS:-$(command -v ptxas || true)}
[ -n "$ptxas" ] || ptxas=.tools/nvidia/cu13/bin/ptxas
if [ ! -x "$ptxas" ]; then
  echo "skipped: ptxas not found (pip install nvidia-cuda-nvcc, or see .ci/run); building the PTX only"
  ptxas=
else
  known=$("$ptxas" --help)
  echo "ptxas: $("$ptxas" --version | tail -1)"
fi

status=0
for arch in "${archs[@]}"; do
  dir=target/archs/$arch
  echo "-- $arch"
  if ! NANOFUSE_CUDA_ARCH=$arch cargo check --quiet --lib --target-dir "$dir"; then
    echo "FAILED: $arch: building the PTX"
    status=1
    continue
  fi
  ptx=$(ls -t "$dir"/debug/build/nanofuse-*/out/kernels.ptx | head -1)
  echo "$ptx: $(grep -m1 '^\.version' "$ptx"), $(grep -m1 '^\.target' "$ptx"), $(grep -c '^\.visible \.entry' "$ptx") entries"
  if [ -z "$ptxas" ]; then
    continue
  fi
  if ! grep -q "'$arch'" <<<"$known"; then
    echo "skipped: $ptxas does not know $arch"
    continue
  fi
  if ! log=$("$ptxas" -arch="$arch" -v -o "$dir/kernels.cubin" "$ptx" 2>&1); then
    printf '%s\n' "$log"
    echo "FAILED: $arch: ptxas"
    status=1
    continue
  fi
  regs=$(grep -o -E 'Used [0-9]+ registers' <<<"$log" | awk '{print $2}' | sort -n | tail -1)
  # Kernels with local memory (tests/ptx.rs requires none for the default sm_90 build).
  local_mem=$(awk '/Function properties for/ { f = $NF }
    /bytes stack frame/ && ($1 > 0 || $5 > 0) { s = $0; sub(/^ +/, "", s); printf " %s (%s)", f, s }' <<<"$log")
  echo "ptxas -arch=$arch: ok, at most $regs registers; spills or stack:${local_mem:- none}"
done
exit $status
