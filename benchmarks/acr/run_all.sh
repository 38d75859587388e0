#!/usr/bin/env bash
# Reproduces every number in benchmarks/acr/README.md (CPU only). Run from the repository root.
# `trustserve <cmd>` and `python -m app.multimodal.cli <cmd>` are the same commands.
set -euo pipefail
CLI="${CLI:-python -m app.multimodal.cli}"

# 1. datasets, built once and cached: av-digits (raw images + log-mels, for the from-scratch encoders) and
#    its pretrained-feature twin (the same pairs through EfficientNet-Lite0 and speech_embedding).
#    Val and test pair every image with 8 clips (2,880 pairs each) so the baselines make >= 150 test errors.
$CLI datasets build av-digits --out data/av-digits --pretrained-out data/av-digits-pretrained \
  --eval-pairs-per-image 8 --seed 0

# 2. the fair protocol, both configurations: grid on validation (tuning seed 100), 10 evaluation seeds
#    (0-9) per variant, paired statistics and confidence degeneration; resumable (runs/acr-fair).
/usr/bin/time -v $CLI fair-protocol --config benchmarks/acr/configs/pretrained.json \
  --config benchmarks/acr/configs/scratch.json --work-dir runs/acr-fair --workers 2 \
  --output runs/acr-fair/all.json
python benchmarks/acr/summarize_fair.py runs/acr-fair/all.json \
  --json-out benchmarks/acr/results/fair-protocol.json

# 3. outlier-synthesis cost per training step: paper dimensions and ours
$CLI eval-multimodal --dataset data/av-digits --timing --timing-dims 2304 2048 --output runs/acr-timing-2304.json
$CLI eval-multimodal --dataset data/av-digits --timing --timing-dims 256 256 --output runs/acr-timing-256.json

# 4. the shipped demo checkpoint: ACR on the pretrained configuration (the better one on validation) with
#    the grid point the protocol kept for ACR, seed 0; calibrated on the validation split.
$CLI train-multimodal --dataset data/av-digits-pretrained --out models/multimodal/av-digits-acr --variant acr \
  --seed 0 --epochs 30 --batch-size 32 --lr 1e-3 --lambda-acl 0.5 --n-min 128 --n-max 1024 \
  --n-reference-dim 2048 --feature-embed-dim 256 --feature-input-norm --target-risk 0.05 --delta 0.05 \
  --no-resume
