#!/usr/bin/env bash
# Issue 11's GPU figures in one run (<= 5 min on an H100/H200): the training step of both encoders
# (bf16 and fp32, batch 48 and 256, with and without the speed-ups, views in two calls, deterministic
# algorithms, torch.compile),
# the augmentation throughput, a whole epoch against the step, then the issue's table. Needs torch,
# torchaudio, torchvision, numpy, pyarrow and yaml; installs nothing (no Ray, Optuna or soundfile: the benchmarks do not import them).
#
#   bash benchmarks/gpu_step.sh                              # on the GPU machine, in the repository root
#   PRESET=tiny DEVICE=cpu BATCHES="4 8" AUG_BATCH=4 STEPS=1 EPOCH_TRACKS=16 COMPILE_BACKEND=eager bash benchmarks/gpu_step.sh
#                                                            # a CPU dry run
#
# Every figure and the raw rows (JSON) are left in $OUT (default: a temporary folder). DEADLINE (epoch
# seconds) cuts each command short and skips those that would start in its last 20 s.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PRESET=${PRESET:-paper}
DEVICE=${DEVICE:-cuda}
BATCHES=${BATCHES:-48 256}
AUG_BATCH=${AUG_BATCH:-48}
AUG_SEEDS=${AUG_SEEDS:-2}  # on CUDA every crop goes through every augmentation whatever the draws: 2 seeds suffice
STEPS=${STEPS:-10}
RUN_LIMIT=${RUN_LIMIT:-120}  # seconds per benchmark command
COMPILE_LIMIT=${COMPILE_LIMIT:-80}  # seconds per torch.compile run (last, so a slow compiler costs only its row; COMPILE=0: none)
COMPILE_BACKEND=${COMPILE_BACKEND:-inductor}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
first_batch=${BATCHES%% *}

left() {  # seconds until DEADLINE (epoch seconds; unset: no deadline)
    if [ -n "${DEADLINE:-}" ]; then echo $(( DEADLINE - $(date +%s) )); else echo 100000; fi
}

bench_step() {  # name, then extra arguments of bench step
    local name=$1 limit=${LIMIT:-$RUN_LIMIT}
    shift
    if [ "$(left)" -lt 20 ]; then echo "== bench step $name: skipped (DEADLINE)"; return; fi
    [ "$(left)" -lt "$limit" ] && limit=$(left)
    echo "== bench step $name: $*"
    timeout "$limit" "$PYTHON" -m clmr_ray.bench.step --preset "$PRESET" --device "$DEVICE" --steps "$STEPS" \
        --json "$OUT/step_$name.json" "$@" 2>&1 | tee "$OUT/step_$name.txt" | grep -v '^\s*$'
}

"$PYTHON" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
EOF
for batch in $BATCHES; do
    bench_step "bf16_b$batch" --batch "$batch"
    if [ "$batch" = "$first_batch" ]; then
        bench_step "fp32_b$batch" --batch "$batch" --no-amp
        bench_step "bf16_b${batch}_plain" --batch "$batch" --without all --no-split
        bench_step "bf16_b${batch}_nograph" --batch "$batch" --without cuda_graph --no-split
        bench_step "bf16_b${batch}_no1dcl" --batch "$batch" --formats audio --without channels_last_1d --no-split
        bench_step "bf16_b${batch}_twocalls" --batch "$batch" --without views_in_one_call
    fi
done
echo "== bench augment --batch $AUG_BATCH"
timeout "$(( $(left) < RUN_LIMIT ? $(left) : RUN_LIMIT ))" "$PYTHON" -m clmr_ray.bench.augment --preset "$PRESET" --device "$DEVICE" --batch "$AUG_BATCH" --seeds "$AUG_SEEDS" \
    2>&1 | tee "$OUT/augment.txt"
echo "== bench epoch (a real pretraining epoch against the step)"
timeout "$(( $(left) < RUN_LIMIT ? $(left) : RUN_LIMIT ))" "$PYTHON" -m clmr_ray.bench.epoch --preset "$PRESET" --device "$DEVICE" --json "$OUT/epoch.json" \
    ${EPOCH_TRACKS:+--tracks "$EPOCH_TRACKS"} 2>&1 | tee "$OUT/epoch.txt"
for fmt in audio spectrogram; do  # one process each: a failure under deterministic algorithms stays local
    bench_step "bf16_b${first_batch}_deterministic.$fmt" --batch "$first_batch" --formats "$fmt" --deterministic --no-split
done
for fmt in audio spectrogram; do
    [ "${COMPILE:-1}" = 0 ] && break
    LIMIT=$COMPILE_LIMIT bench_step "bf16_b${first_batch}_compiled.$fmt" --batch "$first_batch" --formats "$fmt" \
        --compile "$COMPILE_BACKEND" --no-split
done

OUT="$OUT" FIRST_BATCH="$first_batch" BATCHES="$BATCHES" COMPILE="${COMPILE:-1}" "$PYTHON" - <<'EOF'
import json
import os
from pathlib import Path

out, first = Path(os.environ["OUT"]), os.environ["FIRST_BATCH"]


def rows(name):
    paths = [out / f"step_{name}.json", *sorted(out.glob(f"step_{name}.*.json"))]
    return {r["format"]: r for path in paths if path.exists() for r in json.loads(path.read_text())}


def cell(r, flops=True):
    if not r:
        return "(failed)"
    text = f"{r['step_ms']:.1f} ms, {r['crops_per_s']:.0f} crops/s"
    return text + (f", {r['tflop_per_s']:.1f} TFLOP/s" if flops and "tflop_per_s" in r else "")


bf16, fp32 = rows(f"bf16_b{first}"), rows(f"fp32_b{first}")
plain, det = rows(f"bf16_b{first}_plain"), rows(f"bf16_b{first}_deterministic")
nograph, no1dcl = rows(f"bf16_b{first}_nograph"), rows(f"bf16_b{first}_no1dcl")
twocalls = rows(f"bf16_b{first}_twocalls")
compiled = rows(f"bf16_b{first}_compiled")
names = {"audio": "SampleCNN (audio, all its augs)", "spectrogram": "ResNet on log-mel (its augs)"}
device = next((r.get("device_name") for r in [*bf16.values(), *fp32.values()]), "?")
print(f"\n### Training step on {device}, preset {bf16.get('audio', {}).get('preset', '?')}, batch {first}\n")
print("| step | bf16 autocast | fp32 | FLOPs counted | share of the card's dense bf16 peak |")
print("|---|---|---|---|---|")
for fmt, label in names.items():
    b, f = bf16.get(fmt, {}), fp32.get(fmt, {})
    gflop = f"{b['gflop_per_step']:.0f} GFLOP" if "gflop_per_step" in b else "?"
    share = f"{b['peak_share_pct']:.1f} %" if "peak_share_pct" in b else "(peak unknown)"
    print(f"| {label} | {cell(b)} | {cell(f, flops=False)} | {gflop} | {share} |")
for batch in os.environ["BATCHES"].split()[1:]:
    big = rows(f"bf16_b{batch}")
    print(f"| same at batch {batch}, bf16 | "
          + ", ".join(f"{names[k].split(' ')[0]} {cell(big.get(k, {}))}" for k in names) + " | | | |")
print("\n| split of one step (eager phases) | augment | encoder fwd+bwd | loss | optimiser | augment share "
      "| augment as a graph, share of the graphed step |")
print("|---|---|---|---|---|---|---|")
for fmt, label in names.items():
    for precision, table in (("bf16", bf16), ("fp32", fp32), ("bf16, views in two calls (--without views_in_one_call)", twocalls)):
        r = table.get(fmt)
        if r and "augment_ms" in r:
            graphed = r.get("augment_graph_ms", "")
            if isinstance(graphed, float):
                graphed = f"{graphed:.1f} ms, {r['augment_graph_pct']:.0f} %"
            print(f"| {label}, {precision} | {r['augment_ms']:.1f} ms | {r['encoder_ms']:.1f} ms | "
                  f"{r['loss_ms']:.2f} ms | {r['optimizer_ms']:.2f} ms | {r['augment_pct']:.0f} % | {graphed} |")
print("\n| bf16 step | speed-ups on | without cuda_graph | without channels_last_1d | all off (--without all) "
      "| deterministic algorithms | torch.compile | without views_in_one_call |")
print("|---|---|---|---|---|---|---|---|")
for fmt, label in names.items():
    c = compiled.get(fmt, {})
    compile_cell = cell(c, False) + (f", compiled in {c['compile_s']:.0f} s" if "compile_s" in c else
                                     f", {c['compile']}" if c else "")
    if os.environ["COMPILE"] == "0":
        compile_cell = "(not run: COMPILE=0)"
    graph = bf16.get(fmt, {}).get("cuda_graph")
    print(f"| {label} | {cell(bf16.get(fmt), False)}{f' (graph {graph})' if graph else ''} | "
          f"{cell(nograph.get(fmt), False)} | {cell(no1dcl.get(fmt), False) if fmt == 'audio' else ''} | "
          f"{cell(plain.get(fmt), False)} | {cell(det.get(fmt), False)} | {compile_cell} | "
          f"{cell(twocalls.get(fmt), False)} |")
epoch_path = out / "epoch.json"
if epoch_path.exists():
    print("\n| a whole epoch (bench epoch) | crops/s | bench step's crops/s | share |")
    print("|---|---|---|---|")
    for r in json.loads(epoch_path.read_text()):
        print(f"| {names[r['format']]}, {r['tracks']} tracks, {r['steps_per_epoch']} steps | "
              f"{r['epoch_crops_per_s']:.0f} | {r['step_crops_per_s']:.0f} | {r['epoch_share_pct']:.0f} % |")
EOF
echo "figures and raw rows in $OUT; took $(( $(date +%s) - started )) s"
