#!/usr/bin/env bash
# Reproduces every number in benchmarks/acr/README.md (CPU only). Run from the repository root.
# `trustserve <cmd>` and `python -m app.multimodal.cli <cmd>` are the same commands.
set -euo pipefail
CLI="${CLI:-python -m app.multimodal.cli}"
COMMON="--epochs 15 --batch-size 32 --lr 2e-3"   # = the CLI defaults

# 1. dataset (≈30 s; bit-identical for a given seed)
$CLI datasets build av-digits --out data/av-digits --seed 0

# 2. ablation: 5 variants × 3 seeds, clean + corrupted test (≈2 min per run on a busy 2-core box)
$CLI eval-multimodal --dataset data/av-digits --ablation --seed 0 --seed 1 --seed 2 $COMMON \
  --n-min 8 --n-max 32 --lambda-acl 2.0 --work-dir runs/acr-ablation --output runs/acr-ablation/report.json
python benchmarks/acr/summarize.py runs/acr-ablation

# 3. investigation: smaller MFS blocks, weaker ACL (ACR only; baseline reused from step 2)
$CLI eval-multimodal --dataset data/av-digits --ablation --seed 0 --seed 1 --seed 2 --variant acr $COMMON \
  --n-min 2 --n-max 16 --work-dir runs/acr-nmax16 --output runs/acr-nmax16/report.json
$CLI eval-multimodal --dataset data/av-digits --ablation --seed 0 --seed 1 --seed 2 --variant acr $COMMON \
  --lambda-acl 0.5 --work-dir runs/acr-lacl05 --output runs/acr-lacl05/report.json
$CLI eval-multimodal --dataset data/av-digits --ablation --seed 0 --seed 1 --seed 2 --variant acr $COMMON \
  --acl-detach-unimodal --work-dir runs/acr-detach --output runs/acr-detach/report.json
for v in baseline acr; do  # longer, calmer training
  $CLI eval-multimodal --dataset data/av-digits --ablation --seed 0 --seed 1 --seed 2 --variant $v \
    --epochs 30 --lr 1e-3 --work-dir runs/long30 --output runs/long30/report-$v.json
done
python benchmarks/acr/summarize.py runs/long30

# 4. outlier-synthesis cost per training step: paper dimensions and ours
$CLI eval-multimodal --dataset data/av-digits --timing --timing-dims 2304 2048 --output runs/acr-timing-2304.json
$CLI eval-multimodal --dataset data/av-digits --timing --timing-dims 64 64 --output runs/acr-timing-64.json

# 5. the shipped demo checkpoint (identical weights to runs/acr-ablation/acr-seed0)
$CLI train-multimodal --dataset data/av-digits --out models/multimodal/av-digits-acr --variant acr --seed 0 \
  $COMMON --n-min 8 --n-max 32 --target-risk 0.05 --delta 0.05
