#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: the tests marked `gpu` (every loss on cuda vs CPU, under
# bf16/fp16 autocast; a few steps of every recipe with --device=cuda:0 --precision=bf16|fp16) and the
# GPU benchmarks (bench_loss_step.py, bench_mal_cost.py, bench_soft_dtw.py: ours on Triton against the
# peers that are installed). Run from the repository root on a machine
# with a GPU and sb_mal's dependencies importable; logs and RESULTS.md go to $OUT: a copy of the committed
# benchmarks/RESULTS.md with the GPU sections rewritten (the checkout itself is left as it was).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-/tmp/sb_mal_gpu}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the benchmarks run from benchmarks/
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SB_MAL_BENCH_RESULTS="$OUT/RESULTS.md"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, speechbrain; print('torch', torch.__version__, 'speechbrain', speechbrain.__version__)" | tee -a "$OUT/gpu.txt"
$PY -m pytest tests/test_gpu.py -m gpu -v -p no:cacheprovider -o addopts="" --durations=0 2>&1 | tee "$OUT/gpu_tests.log"
(cd benchmarks && $PY bench_loss_step.py --device cuda:0 --precisions fp32 bf16 fp16 --repeats 20) 2>&1 \
    | grep -v "Loading weights" | tee "$OUT/bench_loss_step.log"
(cd benchmarks && $PY bench_mal_cost.py --device cuda:0 --repeats 10) 2>&1 | tee "$OUT/bench_mal_cost.log"
(cd benchmarks && $PY bench_soft_dtw.py --device cuda:0) 2>&1 | tee "$OUT/bench_soft_dtw_cuda.log"
