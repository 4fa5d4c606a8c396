#!/usr/bin/env bash
# Paper Table 1 on MNIST (K = 10): every model through the same trainer and evaluation, then one table.
#   bash benchmarks/table1.sh OUT_DIR EPOCHS WARMUP IS_SAMPLES [extra cl-replay pretrain flags...]
# e.g. the full protocol:  bash benchmarks/table1.sh runs/table1 1000 100 5000 --device cuda
set -euo pipefail
out=${1:?output folder}; epochs=${2:?epochs}; warmup=${3:?warm-up epochs}; samples=${4:?importance samples}
shift 4
for model in cpvae cp1 vae mog vampprior hvae hvp flowprior; do
  cl-replay pretrain --config "configs/pretrain/${model}_mnist.yaml" --epochs "$epochs" --warmup "$warmup" \
    --is-samples "$samples" --out "$out/$model" "$@"
done
cl-replay compare "$out"/* --out "$out/comparison.png"
