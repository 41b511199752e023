#!/usr/bin/env bash
# Three steps of the tiny DPO recipe in one process (32 rows) and in two CPU processes
# (2 x 16 rows) under DDP, ZeRO-2, ZeRO-3 and FSDP, with a live and a precomputed
# reference; prints each run's per-step losses and final eval metrics.
#   bash scripts/compare_backends.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/compare-backends}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
COMMON=(--training.max_steps=3 --training.logging_steps=1 --training.eval_on_start=false --training.learning_rate=0.01)
for ref in model precompute; do
  # A fresh datasets cache per run, so that every precompute pass really computes.
  HF_DATASETS_CACHE="$OUT/cache-one-$ref" python scripts/train.py --config recipes/tiny/dpo.yaml \
    --training.output_dir="$OUT/one-$ref" --reference.type=$ref --training.per_device_train_batch_size=32 \
    "${COMMON[@]}" > "$OUT/one-$ref.log" 2>&1
  for backend in ddp zero2 zero3 fsdp; do
    if [ "$backend" = ddp ]; then launcher=(--multi_gpu); else launcher=(--config_file "recipes/accelerate_configs/$backend.yaml"); fi
    HF_DATASETS_CACHE="$OUT/cache-$backend-$ref" accelerate launch --num_processes 2 --num_machines 1 "${launcher[@]}" \
      --mixed_precision no --dynamo_backend no scripts/train.py --config recipes/tiny/dpo.yaml \
      --training.output_dir="$OUT/$backend-$ref" --reference.type=$ref --training.per_device_train_batch_size=16 \
      "${COMMON[@]}" > "$OUT/$backend-$ref.log" 2>&1
  done
done
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| reference | run | losses at steps 1-3 | eval_reward_accuracy | eval_loss |")
print("|---|---|---|---|---|")
for ref in ("model", "precompute"):
    for run in ("one", "ddp", "zero2", "zero3", "fsdp"):
        history = json.load(open(f"{out}/{run}-{ref}/trainer_state.json"))["log_history"]
        final = json.load(open(f"{out}/{run}-{ref}/eval_results.json"))
        losses = ", ".join(f"{e['loss']:.7f}" for e in history if "loss" in e)
        print(f"| {ref} | {run} | {losses} | {final['eval_reward_accuracy']:.4f} | {final['eval_loss']:.7f} |")
PY
