#!/usr/bin/env bash
# One GPU call that checks a candidate build and times it against a base build (an A/B
# test), within a budget of wall-clock seconds, every log under $OUT.
#
#   BUDGET=540 bash scripts/ab_device.sh DIR
#
# DIR holds prebuilt binaries (a GPU host needs no Rust):
#   DIR/t/*              the candidate's GPU test binaries, run first (each to the end)
#   DIR/b/nanofuse_new   the candidate's `nanofuse`
#   DIR/b/nanofuse_base  the base's `nanofuse` (e.g. main's), timed interleaved with it
#   DIR/b/nanofuse-sweep the candidate's sweep, run under compute-sanitizer last (optional)
# DIR may also be a .tar.xz of that layout (unpacked to a temporary directory).
#
# In order, each step only if the seconds left cover its estimate (else it is named as
# skipped in summary.txt):
#   1. tests          every DIR/t binary         -> tests.txt, summary.txt
#   2. bench round 1  decode-bench base, new     -> bench.txt (fused and unfused per binary)
#   3. leave-out      decode-bench --leave-out   -> leave_out.txt, leave_out.json (new)
#   4. tune round 1   tune base, new             -> tune_base.txt, tune_new.txt
#   5. round 2 of the bench and of the tune (the spread of two identical runs)
#   6. sanitize       scripts/sanitize.sh over the sweep (memcheck, synccheck, racecheck)
# Compare the tunes with `python3 scripts/ab_tune.py base=tune_base.txt new=tune_new.txt`.
# Environment: BUDGET (seconds, default 540), MODELS (decode-bench's --model list), GEN
# (its --gen), TUNE_M (tune's --m), ONLY_BASE / ONLY_NEW (tune's --only per binary: a base
# without a variant the candidate adds times only the variants both have), STEPS (the
# steps to run, space-separated among: tests bench1 leave-out tune1 bench2 tune2 sanitize;
# default all).
set -u
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: ab_device.sh DIR (or DIR.tar.xz)}
out=${OUT:-.}
mkdir -p "$out"
if [ -f "$dir" ]; then
  tmp=$(mktemp -d)
  tar xJf "$dir" -C "$tmp"
  dir=$tmp
fi
budget=${BUDGET:-540}
models=${MODELS:-random:qwen3-0.6b,random:llama-3.2-1b}
gen=${GEN:-128}
tune_m=${TUNE_M:-512,1024,2048}
only_base=${ONLY_BASE:-wgmma packed}
only_new=${ONLY_NEW:-unfused-cublas,wgmma packed}
start=$(date +%s)
summary=$out/summary.txt
: >"$summary"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader >>"$summary" 2>&1

left() { echo $((budget - ($(date +%s) - start))); }
# step NAME ESTIMATE_S COMMAND...: runs COMMAND if the budget covers ESTIMATE_S.
steps=${STEPS:-tests bench1 leave-out tune1 bench2 tune2 sanitize}
step() {
  local name=$1 est=$2
  shift 2
  case " $steps " in *" $name "*) ;; *) return 0 ;; esac
  if [ "$(left)" -lt "$est" ]; then
    echo "skipped: $name (needs about ${est} s, $(left) s left)" | tee -a "$summary"
    return 0
  fi
  local t0 rc
  t0=$(date +%s)
  "$@"
  rc=$?
  echo "$name: rc=$rc, $(($(date +%s) - t0)) s" | tee -a "$summary"
}

run_tests() {
  local t rc=0
  for t in "$dir"/t/*; do
    [ -x "$t" ] || continue
    echo "== $(basename "$t")" >>"$out/tests.txt"
    "$t" >"$out/test.log" 2>&1 || rc=1
    cat "$out/test.log" >>"$out/tests.txt"
    grep -E "^test result|FAILED|panicked" "$out/test.log" | tail -n 3 | sed "s|^|  $(basename "$t"): |" >>"$summary"
  done
  return $rc
}
bench() {
  local bin
  for bin in base new; do
    echo "== $bin round $1" >>"$out/bench.txt"
    "$dir/b/nanofuse_$bin" decode-bench --model "$models" --gen "$gen" --runs 3 \
      --json "$out/bench_${bin}_$1.json" >>"$out/bench.txt" 2>&1 || return 1
  done
}
leave_out() {
  "$dir/b/nanofuse_new" decode-bench --model "$models" --gen "$gen" --runs 1 --leave-out \
    --json "$out/leave_out.json" >"$out/leave_out.txt" 2>&1
}
tune() {
  "$dir/b/nanofuse_base" tune --m "$tune_m" --replays 20 --only "$only_base" >>"$out/tune_base.txt" 2>&1 || return 1
  "$dir/b/nanofuse_new" tune --m "$tune_m" --replays 20 --only "$only_new" >>"$out/tune_new.txt" 2>&1
}
sanitize() {
  [ -x "$dir/b/nanofuse-sweep" ] || { echo "no sweep binary"; return 1; }
  bash "$here/sanitize.sh" --kernel-filter --tools memcheck,synccheck,racecheck "$dir/b/nanofuse-sweep" \
    >"$out/sanitize.txt" 2>&1
}

step tests 60 run_tests
step bench1 60 bench 1
step leave-out 40 leave_out
step tune1 60 tune
step bench2 60 bench 2
step tune2 60 tune
step sanitize 90 sanitize
echo "total: $(($(date +%s) - start)) s of $budget" | tee -a "$summary"
