#!/usr/bin/env bash
# The device checks, in one script (a GPU machine's time is scarce): recipes/benchmark/run_cost.py (model
# step, student ratios, data pipeline, end to end), the KD-loss micro-benchmark, and a short end-to-end
# GPU run of the recipes (ERM, shot teachers + student, OLTR) on the synthetic benchmark.
# Usage: OUT=/some/folder bash recipes/benchmark/gpu_checks.sh    (wheels for missing packages in .whl/)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"
# the whole-run benchmark first (model step, student ratios, pipeline, end to end; about 3 min)
python3 -m recipes.benchmark --json "$OUT/benchmark.json" 2>&1 | grep -v '^[ {}]' | tee "$OUT/benchmark.txt"
python3 -m recipes.benchmark.kd_loss --repeats 100 2>&1 | tee "$OUT/bench_kd_loss.txt"
python3 -m recipes.table3 --profile demo --out /tmp/gpu_sweep --tables 3 --rows erm ours_shot oltr \
  --set run.device=cuda run.amp=auto model.name=resnet18 data.num_workers=4 2>&1 | tail -40 | tee "$OUT/gpu_sweep.txt"
