#!/usr/bin/env bash
# Issue #7 at CPU scale: SimCLR vs WCL under the 1% / 10% label protocol (relssl eval semisup) on
# Fashion-MNIST, both pretrained with compare.py's `cpu` budget (convnet_tiny, 20,000 images,
# 10 epochs, batch 256, seed 0), plus the randomly initialised network as the floor.
#   bash benchmarks/semisup_cpu.sh [RUNS_DIR]      # about 15 minutes on 2 CPU cores
set -euo pipefail
RUNS="${1:-/tmp/relssl-semisup}"
BIN="${BIN:-.venv/bin}"
BUDGET="backbone.name=convnet_tiny backbone.bn_splits=1 data.subset=20000 data.bank_subset=2000 data.test_subset=2000
  optim.batch_size=256 optim.epochs=10 optim.warmup_epochs=1 trainer.knn_every=10 trainer.accelerator=cpu
  trainer.progress_bar=false trainer.diagnose_every=0 seed=0 output_dir=$RUNS"
for m in simclr wcl; do
  extra=""; [ "$m" = wcl ] && extra="method.weak_aug_epochs=1"
  [ -f "$RUNS/semisup-$m/results.json" ] || $BIN/relssl pretrain fashion_mnist/$m $BUDGET $extra name=semisup-$m
  for f in 1% 10%; do
    $BIN/relssl eval semisup "$RUNS/semisup-$m" data.bank_subset=null data.test_subset=null --fraction $f --device cpu
  done
done
for f in 1% 10%; do
  $BIN/relssl eval semisup "$RUNS/semisup-simclr" data.bank_subset=null data.test_subset=null --fraction $f --device cpu --random-init
done
