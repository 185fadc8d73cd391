#!/usr/bin/env bash
# The GPU measurements this project still owes, in as few calls as a lent GPU session allows
# (10 minutes a call, 30 minutes a session). Run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh speed            # ~6 min: throughput vs ceiling, augmentation, diagnostics cost, WCL graph step, CUDA tests
#   bash benchmarks/gpu_session.sh compare 0 540    # the equal-budget comparison, seed 0, stop starting runs after 540 s
#   bash benchmarks/gpu_session.sh compare 1 540    # next call / next session: seed 1 (the JSON says what is done)
#
# Data: Fashion-MNIST from $RELSSL_DATA (carry the IDX files, e.g. in the git-ignored .carry/fmnist).
# Results: benchmarks/results/*.json, copied to $OUT/results when $OUT is set (the device machine
# keeps nothing: copy them back into benchmarks/results/ here and commit). compare.py appends to
# benchmarks/results/compare_gpu.json: carry that file back to the next call so finished runs are skipped.
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-}:src"
export RELSSL_DATA="${RELSSL_DATA:-.carry/fmnist}"
PY="${PYTHON:-python3}"
stage="${1:-speed}"

copy_out() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/results"
    cp benchmarks/results/*.json benchmarks/results/*.md benchmarks/results/*.png "$OUT/results/" 2>/dev/null || true
  fi
}
trap copy_out EXIT

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
$PY -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', lightning.__version__)"

case "$stage" in
  speed)
    $PY benchmarks/throughput.py --save
    # ViT-Tiny (patch 4 at 32 px) beside ResNet-18: needs timm (carry its wheel and pip install it first)
    if $PY -c "import timm" 2>/dev/null; then
      $PY benchmarks/throughput.py --methods simclr mocov2 msvq --backbone timm:vit_tiny_patch16_224 --save
    fi
    $PY benchmarks/augment_throughput.py --workers 8 --batches 50 --compile --save
    $PY benchmarks/diagnostics_overhead.py --backbone resnet18 --batch 512 --steps 120 --every 5 --save
    $PY benchmarks/graph_step.py --save   # WCL's graph step (issue #7)
    # the CUDA-only tests (bf16 losses under autocast, device views) that CPU CI skips
    $PY -m pytest -q -x tests/test_losses_api.py tests/test_augment.py tests/test_losses_graph.py tests/test_precision.py tests/test_engine.py -k "cuda or gpu or bf16 or autocast" || true
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
    echo "usage: bash benchmarks/gpu_session.sh speed | compare SEED [SECONDS] | long [SECONDS]" >&2
    exit 2
    ;;
esac
