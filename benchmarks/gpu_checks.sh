#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: the tests marked `gpu` (every loss on cuda vs CPU, under
# bf16/fp16 autocast; a few steps of every recipe with --device=cuda:0 --precision=bf16|fp16) and the
# GPU benchmarks (bench_loss_step.py, bench_mal_cost.py, bench_soft_dtw.py: ours on Triton against the
# peers that are installed; bench_okd_cost.py against SpeechBrain's MetricGAN+ recipe when its folder is
# there: on the CPU side export it into the ignored .gpu_sb/ and carry that folder,
#   mkdir -p .gpu_sb && git --git-dir=<SpeechBrain's .git> archive HEAD recipes/Voicebank/enhance/MetricGAN \
#       recipes/Voicebank/voicebank_prepare.py | tar -x -C .gpu_sb
# the training data comes from $SB_MAL_DEVSET, e.g. the sprint's pack: SB_MAL_DEVSET=.sprint/devset, whose 30 valid
# pairs the run validates on; the projection scales validation to VoiceBank's 770 either way). Run from the repository root on a machine
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
SB_RECIPE=${SB_RECIPE:-.gpu_sb}  # a SpeechBrain checkout, or the part of it exported above
if [ -f "$SB_RECIPE/recipes/Voicebank/enhance/MetricGAN/train.py" ]; then
    SB_RECIPE=$(cd "$SB_RECIPE" && pwd)
    (cd benchmarks && $PY bench_okd_cost.py --device cuda:0 --speechbrain-recipe "$SB_RECIPE" --epochs 3 --rounds 1 --valid 30 \
        --n-jobs "$(( $(nproc) - 1 ))") 2>&1 | tee "$OUT/bench_okd_cost_cuda.log"
else
    echo "bench_okd_cost skipped: no SpeechBrain MetricGAN recipe at $SB_RECIPE" | tee "$OUT/bench_okd_cost_cuda.log"
fi
