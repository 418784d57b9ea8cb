#!/usr/bin/env bash
# compute-sanitizer sweep of nanofuse's kernels.
#
# What: runs `nanofuse-sweep` (cli/src/bin/nanofuse-sweep.rs: every kernel the host launches, over
# shapes with K/N/M tails, each result checked against the CPU reference) under the four
# compute-sanitizer tools, one after another:
#   memcheck   --leak-check full            out-of-bounds/misaligned accesses, leaks
#   racecheck  --racecheck-report all       shared-memory hazards and race analysis
#   synccheck                               invalid barrier / sync usage
#   initcheck                               reads of uninitialized global memory
# each with `--error-exitcode 1 --print-limit 20`. Nothing is suppressed: the sweep fills
# every buffer it allocates (zeros, uploads or NaN poison) before a kernel reads it, so an
# initcheck report is a real finding.
# Each tool's output (the sanitizer's and the sweep's, interleaved) is tee'd to
# ${OUT:-.}/sanitize-<tool>.log; a table at the end gives per tool: exit status, the count
# of the "ERROR SUMMARY: N errors" line (racecheck: its "RACECHECK SUMMARY" errors when that
# is its only summary), racecheck's hazard warnings, and whether the sweep itself passed
# ("sweep: N passed, 0 failed").
#
# Which kernels each run checks:
#   default        every kernel the sweep launches: nanofuse's entry points (rms_norm, the
#                  fused and plain decode kernels, the fused and plain tiled kernels, large and
#                  small tiles, the MLP's gate/up and projection decode kernels, silu_mul,
#                  residual_add; `nanofuse-sweep --list-kernels` names them) and cuBLAS's own
#                  kernels (the NormCublas paths, ops::gemm with GemmImpl::Cublas, the MLP
#                  fallbacks and baseline (a)). Any report
#                  fails the run, cuBLAS's included. On an H100 with CUDA 13.0 and
#                  compute-sanitizer 2025.3.1, racecheck reports thousands of WAR hazards inside
#                  cuBLAS's nvjet_sm90_* GEMM kernels (same value read and written), so the
#                  default racecheck fails for cuBLAS's sake; use --ours-only to judge ours.
#   --ours-only    every kernel is still instrumented, but only reports in nanofuse's kernels
#                  fail the run: all reports are printed (--print-limit 0, --show-backtrace
#                  device), each is attributed by the kernel it names ("at <kernel>+0x..."), and
#                  reports naming only other kernels (cuBLAS's) are counted, kept in the log and
#                  excused. A report that names no kernel (a leak, an API error, an internal
#                  sanitizer error) is not excused. Why not filter in the sanitizer: see below.
#   --kernel-filter  the sanitizer-side filter, `--kernel-name regex=<name>|<name>|...` built
#                  from `--list-kernels` (exact names, so no cuBLAS kernel matches; the regex is
#                  searched in each kernel's mangled name, and our kernels are unmangled).
#                  cuBLAS's kernels then run uninstrumented. Measured with 2025.3.1 on an H100:
#                  memcheck, synccheck and initcheck run clean this way, but racecheck faults
#                  ("Internal Sanitizer Error: The Sanitizer failed to handle a hardware
#                  exception", then CUDA_ERROR_ILLEGAL_ADDRESS) in an uninstrumented cuBLAS
#                  kernel (case "small M=1 baseline cublas"), with any filter that leaves
#                  cuBLAS out (even --kernel-name-exclude regex=.), with or without PDL, while
#                  the unfiltered run passes; hence --ours-only.
#                  Also: initcheck does not see writes by uninstrumented kernels (no nanofuse
#                  kernel reads memory cuBLAS wrote in this sweep, so no false reports here).
#
# Where: on the GPU host, from the repository root, after `../shared/gpu/pack` staged the
# release binaries in .gpu/bin/ (it builds `nanofuse-sweep` with the other binaries):
#   bash scripts/sanitize.sh [--ours-only | --kernel-filter] [--tools memcheck,racecheck,...]
#                            [BINARY] [-- SWEEP_ARGS]
#   BINARY defaults to .gpu/bin/nanofuse-sweep; SWEEP_ARGS go to the sweep (e.g. -- --seed 7,
#   -- --part engine: one part of the sweep, for a tool too slow for all of it in one call,
#   -- --no-pdl). COMPUTE_SANITIZER=/path/to/compute-sanitizer overrides the tool's location.
# Like `bash .gpu/run`, it puts /usr/local/cuda/lib64 and
# /usr/local/cuda/targets/x86_64-linux/lib (where they exist) on LD_LIBRARY_PATH for cuBLAS.
#
# How long: measured before the sweep's MLP cases were added (they about double its
# launches): the sweep alone takes about 5 s (under 1 s of GPU work, the rest CUDA start-up and CPU
# references). Measured on an H100: memcheck, synccheck and initcheck 1-5 s each,
# racecheck about 30-40 s (instrumenting cuBLAS's kernels dominates); under a minute for all
# four in any mode. --ours-only prints every report (racecheck's log is about 2 MB then).
#
# Exit status: 0 when every tool ran to its summary, the sweep passed under each, and no
# report counts (default: none at all; --ours-only: none in nanofuse's kernels or
# unattributed); 1 otherwise; 2 on a usage or setup problem (no compute-sanitizer, no
# binary, no GPU).
set -u -o pipefail

usage() {
  sed -n '/^# Where:/,/^# How long:/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

mode=all
tools=(memcheck racecheck synccheck initcheck)
bin=
sweep_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --ours-only) mode=ours ;;
    --kernel-filter) mode=filter ;;
    --tools)
      [ $# -ge 2 ] || { echo "sanitize.sh: --tools needs a list" >&2; exit 2; }
      IFS=, read -r -a tools <<< "$2"
      shift
      ;;
    --tools=*) IFS=, read -r -a tools <<< "${1#--tools=}" ;;
    -h | --help) usage; exit 0 ;;
    --) shift; sweep_args=("$@"); break ;;
    -*) echo "sanitize.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      [ -z "$bin" ] || { echo "sanitize.sh: one binary only (sweep arguments go after --)" >&2; exit 2; }
      bin=$1
      ;;
  esac
  shift
done
bin=${bin:-.gpu/bin/nanofuse-sweep}

for t in "${tools[@]}"; do
  case $t in
    memcheck | racecheck | synccheck | initcheck) ;;
    *) echo "sanitize.sh: unknown tool '$t' (memcheck, racecheck, synccheck, initcheck)" >&2; exit 2 ;;
  esac
done

for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

cs=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
if [ ! -x "$cs" ]; then
  echo "sanitize.sh: compute-sanitizer not found (not on PATH, not at $cs); set COMPUTE_SANITIZER" >&2
  exit 2
fi
if [ ! -x "$bin" ]; then
  echo "sanitize.sh: no executable '$bin' (stage it with ../shared/gpu/pack, or pass its path)" >&2
  exit 2
fi

out=${OUT:-.}
mkdir -p "$out" || exit 2

# nanofuse's entry points as the binary itself names them (its KernelId table), so both modes
# follow kernel renames. One regex alternation: names hold no regex metacharacters.
ours_regex=
if [ "$mode" != all ]; then
  if ! names=$("$bin" --list-kernels) || [ -z "$names" ]; then
    echo "sanitize.sh: '$bin' --list-kernels failed; cannot tell nanofuse's kernels apart" >&2
    exit 2
  fi
  ours_regex=$(printf '%s\n' "$names" | paste -sd'|' -)
fi

mode_flags=()
case $mode in
  all) mode_flags=(--print-limit 20) ;;
  ours) mode_flags=(--print-limit 0 --show-backtrace device) ;;
  filter) mode_flags=(--print-limit 20 --kernel-name "regex=$ours_regex") ;;
esac

# attribute LOG: counts the reports in a sanitizer log by the kernels they name in their
# "at <symbol>+0x<offset>" lines (host frames aside) and prints "OURS OTHER UNATTRIBUTED":
# reports naming one of nanofuse's kernels, reports naming only other kernels, reports
# naming none. A report starts at a prefixed line whose text is not indented and runs until
# the next one or an empty prefixed line.
attribute() {
  awk -v ours="^($ours_regex)\$" '
    function flush() {
      if (open) { if (o) n_ours++; else if (x) n_other++; else n_none++ }
      open = 0; o = 0; x = 0
    }
    /^=========/ {
      line = $0
      sub(/^=+ ?/, "", line)
      if (line ~ /^(COMPUTE-SANITIZER|ERROR SUMMARY|LEAK SUMMARY|RACECHECK SUMMARY)/) { flush(); next }
      if (line ~ /^[ \t]*$/) { flush(); next }
      if (line ~ /^[^ \t]/) { flush(); open = 1 }
      if (open && line !~ /Host Frame/) {
        s = line
        while (match(s, /at [A-Za-z_][A-Za-z0-9_$.]*\+0x/)) {
          sym = substr(s, RSTART + 3, RLENGTH - 6)
          if (sym ~ ours) o = 1; else x = 1
          s = substr(s, RSTART + RLENGTH)
        }
      }
    }
    END { flush(); print n_ours + 0, n_other + 0, n_none + 0 }' "$1"
}

echo "compute-sanitizer: $cs ($("$cs" --version 2>/dev/null | tail -n 1))"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
echo "binary: $bin ${sweep_args[*]}"
case $mode in
  all) echo "mode: every kernel checked, every report counts (cuBLAS's included)" ;;
  ours) echo "mode: --ours-only: every kernel checked, only reports in ($ours_regex) or in no kernel count" ;;
  filter) echo "mode: --kernel-filter: only ($ours_regex) instrumented" ;;
esac

rows=()
worst=0
for tool in "${tools[@]}"; do
  flags=(--tool "$tool" --error-exitcode 1 "${mode_flags[@]}")
  case $tool in
    memcheck) flags+=(--leak-check full) ;;
    racecheck) flags+=(--racecheck-report all) ;;
  esac
  log="$out/sanitize-$tool.log"
  echo
  echo "=== $tool: $cs ${flags[*]} $bin ${sweep_args[*]}"
  start=$SECONDS
  "$cs" "${flags[@]}" "$bin" "${sweep_args[@]}" 2>&1 | tee "$log"
  rc=$?
  secs=$((SECONDS - start))
  if [ "$rc" = 2 ] && grep -aq '^nanofuse-sweep: no GPU to run on' "$log"; then
    echo "sanitize.sh: no CUDA driver or device on this machine; run it on the GPU host" >&2
    exit 2
  fi

  # Errors: the last "ERROR SUMMARY: N error(s)" line; racecheck may print only
  # "RACECHECK SUMMARY: H hazards displayed (E errors, W warnings)".
  errors=$(grep -aE 'ERROR SUMMARY: [0-9]+ errors?' "$log" | tail -n 1 | sed -E 's/.*ERROR SUMMARY: ([0-9]+).*/\1/')
  warnings=-
  race=$(grep -aE 'RACECHECK SUMMARY: [0-9]+ hazards? displayed' "$log" | tail -n 1)
  if [ -n "$race" ]; then
    warnings=$(sed -E 's/.*\(([0-9]+) errors?, ([0-9]+) warnings?\).*/\2/' <<< "$race")
    [ -n "$errors" ] || errors=$(sed -E 's/.*\(([0-9]+) errors?, ([0-9]+) warnings?\).*/\1/' <<< "$race")
  fi
  errors=${errors:-none}

  sweep_line=$(grep -aE '^sweep: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
  if [ -z "$sweep_line" ]; then
    sweep="no summary"
  else
    read -r passed failed <<< "$(sed -E 's/^sweep: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/' <<< "$sweep_line")"
    if [ "$failed" = 0 ]; then sweep="ok ($passed passed)"; else sweep="FAILED ($failed of $((passed + failed)))"; fi
  fi

  verdict=PASS
  split=-
  if [ "$mode" = ours ]; then
    read -r n_ours n_other n_none <<< "$(attribute "$log")"
    split="$n_ours/$n_other/$n_none"
    # The sanitizer exits 1 for excused reports too; what counts is the attribution.
    if [ "$errors" = none ] || [ "${sweep:0:2}" != ok ] || [ "$n_ours" != 0 ] || [ "$n_none" != 0 ]; then
      verdict=FAIL
    elif [ "$rc" != 0 ] && [ "$n_other" = 0 ]; then
      verdict=FAIL # a non-zero exit with nothing to excuse it
    elif [ "$errors" -gt $((n_ours + n_other + n_none)) ]; then
      verdict=FAIL # more errors than reports parsed: some could be ours
    fi
  elif [ "$rc" != 0 ] || [ "$errors" != 0 ] || [ "${sweep:0:2}" != ok ]; then
    verdict=FAIL
  fi
  [ "$verdict" = PASS ] || worst=1
  rows+=("$(printf '%-10s %-5s %-7s %-9s %-15s %-24s %-6s %-7s %s' \
    "$tool" "$rc" "$errors" "$warnings" "$split" "$sweep" "${secs}s" "$verdict" "$log")")
done

echo
echo "=== summary ($mode)"
printf '%-10s %-5s %-7s %-9s %-15s %-24s %-6s %-7s %s\n' \
  tool exit errors warnings ours/other/none sweep time verdict log
printf '%s\n' "${rows[@]}"
echo "errors: the sanitizer's ERROR SUMMARY (none = no summary line: crashed or killed);"
echo "ours/other/none (--ours-only): reports naming nanofuse's kernels / only other kernels / no kernel"
if [ "$worst" = 0 ]; then
  echo "sanitize: every tool clean"
else
  echo "sanitize: FAILED (see the logs)"
fi
exit "$worst"
