#!/usr/bin/env bash
# The GPU half of experiments/README.md ("with a strong teacher"), one step per call of a GPU machine that
# is reached through transfers of at most 64 MiB (see experiments/pack_corpus.py). Run from the checkout:
#
#   bash experiments/strong_teacher_gpu.sh setup                  # wheels carried in .whl/ -> /tmp/site; versions
#   bash experiments/strong_teacher_gpu.sh receive CHUNK...       # verify chunks carried in .devdata/, keep in /tmp
#   bash experiments/strong_teacher_gpu.sh pretrain               # unpack, throughput probe, pre-train both recipes
#                                                                 # (VIEWS_ON_DEVICE=1: views made on the GPU)
#   bash experiments/strong_teacher_gpu.sh experiment [SIZES...]  # distill_vs_pretrain.py with the strong teacher
#
# Everything the steps write lives under /tmp (corpus, stage cache, checkpoints), outside the checkout the
# next call replaces; what should come back is copied to $OUT (at most 8 files of 16 MiB).
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FACTORY_CACHE=/tmp/factory-cache
OUT=${OUT:-/tmp/out}
CHUNKS=/tmp/devdata
CORPUS=/tmp/corpus
PRETRAINED=/tmp/pretrained
mkdir -p "$OUT" "$CHUNKS" "$CORPUS" "$PRETRAINED"

step=${1:?setup, receive, pretrain or experiment}
shift
case "$step" in
setup)
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E "^Model name|^CPU\(s\)"
  python3 -c "import torch, timm, torchvision, pydantic, onnxruntime; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'pydantic', pydantic.__version__, 'onnxruntime', onnxruntime.__version__)"
  python3 -c "import factory.pipeline, factory.pretrain"
  python3 -m factory.cli pretrain --help >/dev/null && echo "factory CLI ok"
  python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py -k build_on_cuda 2>&1 | tail -n 15
  ;;
receive)
  for chunk in "$@"; do
    cp .devdata/*-manifest.json "$CHUNKS"/ 2>/dev/null || true
    mv ".devdata/$chunk" "$CHUNKS/$chunk"
    python3 experiments/pack_corpus.py verify "$CHUNKS" "$chunk"
  done
  ;;
pretrain)
  for name in tinyimagenet200 flowers12; do
    [ -d "$CORPUS/$name" ] || python3 experiments/pack_corpus.py unpack "$CHUNKS" "$CORPUS" --name "$name"
  done
  python3 benchmarks/train_throughput.py --root "$CORPUS/tinyimagenet200" --models resnet50 resnet18 \
    --device cuda --workers 14 --batch-size 256 2>&1 | tee "$OUT/throughput.txt"
  for model in resnet50 resnet18; do
    python3 -m factory.cli pretrain "recipes/pretrain_tinyimagenet_${model}_gpu.yaml" --device cuda \
      --set data.root="$CORPUS/tinyimagenet200" --out "$PRETRAINED/tinyimagenet_${model}_gpu" \
      ${VIEWS_ON_DEVICE:+--set views_on_device=true} 2>&1 \
      | grep -v "━" | tee "$OUT/pretrain_${model}.log" | tail -n 4
    cp "$PRETRAINED/tinyimagenet_${model}_gpu/pretrain_report.json" "$OUT/pretrain_report_${model}.json"
  done
  split -b 15M "$PRETRAINED/tinyimagenet_resnet18_gpu/model.safetensors" "$OUT/resnet18_gpu.safetensors.part-"
  ;;
experiment)
  sizes=("${@:-all 20}")
  python3 experiments/distill_vs_pretrain.py recipes/flowers12_cpu.yaml --device cuda --name flowers12_strong_teacher \
    --train-per-class ${sizes[@]} \
    --set teacher.model=resnet50 --set teacher.weights="$PRETRAINED/tinyimagenet_resnet50_gpu" \
    --set baseline.weights="$PRETRAINED/tinyimagenet_resnet18_gpu" --set data.root="$CORPUS/flowers12" \
    --set data.num_workers=8 --set bench.rounds=3 --set bench.runs=10 2>&1 | grep -v "━" | tee "$OUT/experiment.log"
  cp experiments/results/flowers12_strong_teacher_methods.* "$OUT"/ 2>/dev/null || true
  ;;
fetch-teacher)
  split -b 15M "$PRETRAINED/tinyimagenet_resnet50_gpu/model.safetensors" "$OUT/resnet50_gpu.safetensors.part-"
  ;;
*)
  echo "unknown step $step: setup, receive, pretrain, experiment or fetch-teacher" >&2
  exit 2
  ;;
esac
