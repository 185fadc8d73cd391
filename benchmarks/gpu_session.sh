#!/usr/bin/env bash
# The GPU measurements this project owes, in as few calls as a lent GPU session allows (at most 10
# minutes a call, 15 minutes of device time a session, a machine's start included). Run from the
# repository root on the GPU machine. The speed stage ran on 2026-12-04 (H200; results and the log
# benchmarks/results/gpu_session_20261204.log); what is owed now (`owed`) is one GPU test, the
# GPU-busy column of the throughput and the comparison: with the committed
# benchmarks/results/compare_gpu.json in the tree, `compare` skips the runs already done (a run takes
# 90-120 s: about 5 per call of 540 s).
#
#   bash benchmarks/gpu_session.sh speed            # ~5-9 min: CUDA tests, throughput vs ceiling, augmentation (also compiled),
#                                                   # diagnostics cost, WCL graph step
#   bash benchmarks/gpu_session.sh compare 0 540    # the equal-budget comparison, seed 0, stop starting runs after 540 s
#   bash benchmarks/gpu_session.sh compare 1 540    # next call / next session: seed 1 (the JSON says what is done)
#   bash benchmarks/gpu_session.sh all 560          # one call: the CUDA tests, then every speed step, then the
#                                                   # comparison (seed 0) in whatever remains of the 560 s
#   bash benchmarks/gpu_session.sh owed 560         # NEXT: the GPU test left out on 2026-12-04, throughput with
#                                                   # its GPU-busy column, then the comparison (seeds 0 1 2) till 560 s
#
# Data: Fashion-MNIST from $RELSSL_DATA (carry the IDX files, e.g. in the git-ignored .carry/fmnist).
# Results: benchmarks/results/*, packed into $OUT/gpu_results.tar.gz when $OUT is set (the device machine
# keeps nothing and returns at most 8 files: unpack it here, copy the new files into benchmarks/results/
# and commit). compare.py appends to benchmarks/results/compare_gpu.json: have it in the tree at the next
# call so finished runs are skipped. Run as
#   set -o pipefail; bash benchmarks/gpu_session.sh all 560 2>&1 | tee $OUT/log.txt
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-}:src"
export RELSSL_DATA="${RELSSL_DATA:-.carry/fmnist}"
PY="${PYTHON:-python3}"
stage="${1:-speed}"

copy_out() {  # one archive: the device tool returns at most 8 files
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_results.tar.gz" benchmarks/results 2>/dev/null || true
  fi
}
trap copy_out EXIT
T0=$(date +%s)
deadline="${2:-100000}"
failed=()
step() {  # step SECONDS CMD...: one measurement; a failure or overrun is reported and the session goes on
  local limit="$1"; shift
  local left=$(( ${deadline:-100000} - ($(date +%s) - T0) - 20 ))  # never past the call's deadline
  if [ "$left" -lt "$limit" ]; then limit="$left"; fi
  if [ "$limit" -lt 10 ]; then failed+=("$* (not started: deadline)"); echo "=== not started (deadline): $*"; return; fi
  echo "=== $(date -u +%H:%M:%S) ($(( $(date +%s) - T0 )) s) $*"
  if ! timeout -s INT "$limit" "$@"; then failed+=("$*"); echo "=== FAILED or over ${limit} s: $*"; fi
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
$PY -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', lightning.__version__)"

case "$stage" in
  speed|all)
    # the CUDA-only tests first (bf16 losses under autocast, device views): CPU CI skips them
    # (measured 2026-12-04 on an H200, 15 minutes of device time: tests 39 s, ResNet-18 throughput 71 s,
    # ViT 38 s, augmentation 40 s, diagnostics 56 s, graph step 18 s; the limits below leave room)
    # (-rs lists what was skipped: on the GPU machine, nothing should say "needs a CUDA device")
    step 90 $PY -m pytest -q -rs tests/test_losses_api.py tests/test_augment.py tests/test_losses_graph.py \
      tests/test_precision.py tests/test_engine.py tests/test_no_host_sync.py -k "cuda or gpu or bf16 or autocast"
    step 150 $PY benchmarks/throughput.py --save
    # ViT-Tiny (patch 4 at 32 px) beside ResNet-18: needs timm
    if $PY -c "import timm" 2>/dev/null; then
      step 90 $PY benchmarks/throughput.py --methods simclr mocov2 msvq --backbone timm:vit_tiny_patch16_224 --save
    fi
    step 90 $PY benchmarks/augment_throughput.py --workers 8 --batches 50 --save
    step 120 $PY benchmarks/diagnostics_overhead.py --backbone resnet18 --batch 512 --steps 120 --every 5 --save
    step 60 $PY benchmarks/graph_step.py --save   # WCL's graph step (issue #7)
    if [ "$stage" = speed ]; then
      # torch.compile of the views: the 1-channel shape compiled in well under a minute, the 3-channel one
      # (a second compile) had not finished after 120 s: last, so that nothing waits on it
      step 300 $PY benchmarks/augment_throughput.py --workers 8 --batches 50 --compile --save
    fi
    if [ "$stage" = all ]; then
      left=$(( deadline - ($(date +%s) - T0) - 15 ))
      if [ "$left" -gt 60 ]; then
        step "$left" $PY benchmarks/compare.py --preset gpu --seeds 0 --time-budget $(( left - 60 ))
      else
        echo "=== no time left for the comparison (${left} s)"
      fi
    fi
    echo "=== done in $(( $(date +%s) - T0 )) s; failed: ${#failed[@]}"; for f in "${failed[@]}"; do echo "  $f"; done
    ;;
  owed)
    # what the session of 2026-12-04 left: the whole-step no-sync GPU test (with the rest of the CUDA
    # selection, ~40 s), throughput with its new GPU-busy column (~75 s), then the comparison, seed by seed
    step 90 $PY -m pytest -q -rs tests/test_losses_api.py tests/test_augment.py tests/test_losses_graph.py \
      tests/test_precision.py tests/test_engine.py tests/test_no_host_sync.py -k "cuda or gpu or bf16 or autocast"
    step 150 $PY benchmarks/throughput.py --save
    # two runs at a time (--jobs 2): a run left the GPU idle part of each step on 2026-12-04 (0.55 of the
    # ceiling); whether two share it faster than one by one is what the runs' wall times then show. A run
    # cut off by the deadline is lost (the next machine starts bare), hence the wider margin
    left=$(( deadline - ($(date +%s) - T0) - 15 ))
    if [ "$left" -gt 200 ]; then
      step "$left" $PY benchmarks/compare.py --preset gpu --seeds 0 1 2 --jobs 2 --time-budget $(( left - 180 ))
    fi
    echo "=== done in $(( $(date +%s) - T0 )) s; failed: ${#failed[@]}"; for f in "${failed[@]}"; do echo "  $f"; done
    ;;
  compare)
    seed="${2:-0}"
    budget="${3:-540}"
    $PY benchmarks/compare.py --preset gpu --seeds "$seed" --time-budget "$budget"
    ;;
  long)
    budget="${2:-540}"
    $PY benchmarks/compare.py --preset long --best-from benchmarks/results/compare_gpu.json --time-budget "$budget"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh speed | all SECONDS | owed SECONDS | compare SEED [SECONDS] | long [SECONDS]" >&2
    exit 2
    ;;
esac
