#!/usr/bin/env bash
# Everything issue 11 measures on a lent GPU, in one call that fits one lease (BUDGET seconds, default 540):
#   1. the CUDA tests (tests/unit/test_cuda.py: the CUDA paths against their CPU twins),
#   2. the code before issue 11 as the baseline (bench step bf16/fp32 and bench augment at batch 48),
#      from .bench_before/ when it is there (git archive 4d1d8f0 clmr_ray | tar -x -C .bench_before),
#   3. benchmarks/gpu_step.sh on this code (its own table at the end),
#   4. benchmarks/gpu_probe.py (the card's ceilings, encoder layout/precision variants, profiles).
# Every log goes into $OUT/session.tar.gz; the summary is printed last and left in $OUT/summary.txt. Needs soundfile for the
# tests and the old tree: wheels in .whl/ are installed to /tmp/site when present (see the device README).
# benchmarks/gpu_carry.sh [REV] prepares .bench_before/, .bench_prev/ and .whl/ on a machine with git and a registry.
#
# Knobs (environment): BUDGET (seconds for everything), PROBE_RESERVE (seconds kept for the probe),
# SKIP_BEFORE_AUGMENT=1 (no bench augment of the old tree), PROBE_SKIP=ceilings,encoders,profile (or
# profile-fp32, profile-spectrogram), COMPILE=0 (no torch.compile rows), WORK (logs). A .bench_prev/ beside
# .bench_before/ (git archive REV clmr_ray | tar -x -C .bench_prev) adds that revision's bf16 step and epoch.
#
#   bash benchmarks/gpu_session.sh                                           # on the GPU machine
#   PRESET=tiny DEVICE=cpu BATCHES="4 8" AUG_BATCH=4 STEPS=1 EPOCH_TRACKS=16 COMPILE_BACKEND=eager \
#       bash benchmarks/gpu_session.sh                                       # a CPU dry run
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PRESET=${PRESET:-paper}
DEVICE=${DEVICE:-cuda}
AUG_BATCH=${AUG_BATCH:-48}
FIRST_BATCH=${BATCHES:-48}
FIRST_BATCH=${FIRST_BATCH%% *}
PROBE_RESERVE=${PROBE_RESERVE:-75}  # seconds kept for gpu_probe.py after gpu_step.sh
export PYTHONUNBUFFERED=1
start=$(date +%s)
deadline=$(( start + ${BUDGET:-540} ))
left() { echo $(( deadline - $(date +%s) )); }
capped() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; [ "$want" -lt 1 ] && want=1; echo "$want"; }
work=${WORK:-/tmp/gpu_session}  # outside $OUT: only the archive and the summary come back
rm -rf "$work" && mkdir -p "$work"

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
    lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)"
} 2>&1 | tee "$work/info.txt"

echo "== 1. CUDA tests"
timeout "$(capped 90)" python3 -m pytest -q -p no:cacheprovider tests/unit/test_cuda.py 2>&1 | tee "$work/tests.txt" | tail -25

echo "== 2. before issue 11 (.bench_before)"
if [ -d .bench_before/clmr_ray ]; then
    (
        cd .bench_before || exit
        export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
        timeout "$(capped 45)" python3 -m clmr_ray.bench.step --preset "$PRESET" --device "$DEVICE" --batch "$FIRST_BATCH" \
            --steps 10 2>&1 | tee "$work/before_step_bf16.txt"
        timeout "$(capped 45)" python3 -m clmr_ray.bench.step --preset "$PRESET" --device "$DEVICE" --batch "$FIRST_BATCH" \
            --steps 10 --no-amp 2>&1 | tee "$work/before_step_fp32.txt"
        if [ -z "${SKIP_BEFORE_AUGMENT:-}" ]; then
            timeout "$(capped 45)" python3 -m clmr_ray.bench.augment --preset "$PRESET" --device "$DEVICE" \
                --batch "$AUG_BATCH" 2>&1 | tee "$work/before_augment.txt"
        fi
    )
else
    echo "no .bench_before/: skipped"
fi

echo "== 2b. an earlier state of this code (.bench_prev), for what one round of changes gave"
if [ -d .bench_prev/clmr_ray ]; then
    (
        cd .bench_prev || exit
        export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
        timeout "$(capped 45)" python3 -m clmr_ray.bench.step --preset "$PRESET" --device "$DEVICE" --batch "$FIRST_BATCH" \
            --steps 10 --no-split 2>&1 | tee "$work/prev_step_bf16.txt"
        timeout "$(capped 60)" python3 -m clmr_ray.bench.epoch --preset "$PRESET" --device "$DEVICE" \
            ${EPOCH_TRACKS:+--tracks "$EPOCH_TRACKS"} 2>&1 | tee "$work/prev_epoch.txt"
    )
else
    echo "no .bench_prev/: skipped"
fi

echo "== 3. benchmarks/gpu_step.sh on this code"
DEADLINE=$(( deadline - PROBE_RESERVE )) OUT="$work/step" PYTHON=python3 COMPILE=${COMPILE:-1} bash benchmarks/gpu_step.sh 2>&1 \
    | tee "$work/gpu_step.txt" | grep -v '^\s*$' | grep -v '^|' | tail -5

echo "== 4. benchmarks/gpu_probe.py"
timeout "$(capped 120)" python3 benchmarks/gpu_probe.py --preset "$PRESET" --device "$DEVICE" --batch "$FIRST_BATCH" \
    --out "$work/probe" --skip "${PROBE_SKIP:-}" > "$work/probe.txt" 2>&1

tar -czf "$OUT/session.tar.gz" -C "$(dirname "$work")" "$(basename "$work")"
{
echo
echo "################ summary ($(( $(date +%s) - start )) s) ################"
grep -E "passed|failed|error|^E  .*(error|share)" "$work/tests.txt" | tail -8
for f in before_step_bf16 before_step_fp32 prev_step_bf16 prev_epoch; do
    [ -f "$work/$f.txt" ] && { echo "-- $f"; grep -v '^\s*$' "$work/$f.txt" | tail -4; }
done
echo "-- before_augment"; grep -E "^(audio|spectrogram|log-mel|  filter|  pitch)" "$work/before_augment.txt" 2>/dev/null
echo "-- after: gpu_step.sh"
sed -n '/^### Training step/,$p' "$work/gpu_step.txt" | grep -v '^\s*$'
grep -E "^(audio|spectrogram|log-mel|  filter|  pitch|biquad_filter)" "$work/step/augment.txt" 2>/dev/null
echo "-- probe"
grep -E "^(ceilings|encoder|samplecnn|resnet|profile of [^a])" "$work/probe.txt"
grep -A20 "^profile of audio" "$work/probe.txt" | cut -c1-120
} 2>&1 | tee "$OUT/summary.txt"
