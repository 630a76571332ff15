"""Scaling benchmarks: Ray Train workers, Tune sweep overhead, and trials packed on one GPU.

    python -m clmr_ray.bench.scaling train --preset tiny --workers 0 1 2 --epochs 2
    python -m clmr_ray.bench.scaling pack --preset paper --trials 1 2 4 8      # on a GPU, no Ray needed

`pack`: N processes train the same paper-scale step (the step training runs, with the speed-ups it uses
on that device, clmr_ray/speedups.py) on one device at once, as N packed trials would; after
their warm-up they start together and each counts its steps for --seconds. Rows: aggregate crops/s,
speedup over one trial alone, each trial's crops/s, the peak memory of one process (allocated by
torch, the CUDA context not counted) beside packing.py's estimate of the same pretraining step,
and pretraining trials per hour on that device: aggregate crops/s over the crops one trial
pretrains (epochs x GTZAN_TRAIN_TRACKS training tracks x crops_per_track; evaluation not counted).
Nothing here imports Ray.

`train`: pretraining throughput with N Ray Train workers (0 = in this process, no Ray), same
global batch. crops/s is the median over the epochs after the first (the first one warms up)
of training crops per second, all workers together, validation excluded; wall_s is the whole
call, Ray worker startup and checkpoints included. Every run, the in-process one too, gets
scaling.cpus_per_worker torch threads per process: on a busy machine more intra-op threads than
free cores make each step many times slower (measured 20x on a loaded 2-core box).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
import uuid

import torch

from clmr_ray.config import SpecError, with_overrides
from clmr_ray.config import preset as load_preset
from clmr_ray.machine import device_arg

# ------------------------------------------------------------- Ray Train scaling


def train_scaling(preset: str = "tiny", workers=(1, 2), epochs: int = 2, fmt: str = "audio",
                  overrides: dict | None = None) -> list[dict]:
    """One row per worker count: crops/s, epoch time, wall time, speedup over the first row."""
    from clmr_ray.distributed.tasks import ensure_ray
    from clmr_ray.distributed.train import ray_pretrain_fn
    from clmr_ray.experiment import local_pretrain_fn, prepare_caches

    spec = load_preset(preset, {"pretrain.epochs": epochs, "format": fmt, **(overrides or {})})
    _, cache = prepare_caches(spec)
    if any(n > 0 for n in workers):
        ensure_ray()
    rows = []
    with tempfile.TemporaryDirectory(prefix="clmr-ray-bench-") as storage:
        for n in workers:
            run_spec = with_overrides(spec, {"scaling.num_workers": max(n, 1)})
            if n == 0:
                pretrain_fn = local_pretrain_fn(report=lambda *_: None)
            else:
                pretrain_fn = ray_pretrain_fn(storage, experiment_name=f"bench-{uuid.uuid4().hex[:8]}",
                                              max_failures=0)
            threads = torch.get_num_threads()
            torch.set_num_threads(spec.scaling.cpus_per_worker)  # as many as one Ray worker gets
            start = time.perf_counter()
            try:
                result = pretrain_fn(run_spec, fmt, cache)
            finally:
                torch.set_num_threads(threads)
            wall = time.perf_counter() - start
            timed = result.history[1:] or result.history
            rows.append({
                "preset": preset, "format": fmt, "workers": n if n else "in-process",
                "global_batch": spec.pretrain.batch_size, "epochs": len(result.history),
                "crops_per_s": statistics.median(h["crops_per_s"] for h in timed),
                "epoch_s": statistics.median(h["epoch_s"] for h in timed), "wall_s": wall,
            })
    for row in rows:
        row["speedup"] = row["crops_per_s"] / rows[0]["crops_per_s"]
    return rows


def format_rows(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    cells = [[f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------ trials packed on one GPU

GTZAN_TRAIN_TRACKS = 443  # torchaudio's filtered GTZAN training split, the paper's pretraining set
PACK_BARRIER_TIMEOUT_S = 600


def pack_sweep(preset: str = "paper", trials=(1, 2, 4, 8), device: str = "cuda", fmt: str = "audio",
               seconds: float = 20.0, warmup: int = 3, trial_crops: int | None = None) -> list[dict]:
    """One row per packing: N processes running the same training step on `device` at once."""
    from clmr_ray import packing

    spec = load_preset(preset, {"scaling.use_gpu": device.startswith("cuda")})
    estimate = packing.estimate(with_overrides(spec, {"format": fmt}))
    p = spec.pretrain
    trial_crops = trial_crops or p.epochs * GTZAN_TRAIN_TRACKS * p.crops_per_track
    rows = []
    for n in trials:
        outcomes = _run_packed(n, preset, fmt, device, seconds, warmup)
        errors = sorted((o["error"] for o in outcomes if "error" in o), key=lambda e: e.startswith("BrokenBarrier"))
        row = {"trials": n, "device": outcomes[0].get("device", device), "format": fmt, "batch": p.batch_size}
        if errors:
            rows.append({**row, "error": errors[0]})
            continue
        per_trial = [o["steps"] * p.batch_size / o["seconds"] for o in outcomes]
        total = sum(per_trial)
        row.update(crops_per_s=total, trial_crops_per_s=min(per_trial))
        if device.startswith("cuda"):
            row["peak_mem_gib"] = max(o["peak_mem_gib"] for o in outcomes)
        row.update(est_mem_gib=(estimate.states + estimate.pretrain_activations) / packing.GIB,
                   trials_per_h=3600 * total / trial_crops)
        rows.append(row)
    first = next((r for r in rows if "crops_per_s" in r), None)
    for row in rows:  # aggregate throughput over the first packing's (one trial alone, by default)
        if first is not None and "crops_per_s" in row:
            row["speedup"] = row["crops_per_s"] / first["crops_per_s"]
    return rows


def _run_packed(n: int, preset: str, fmt: str, device: str, seconds: float, warmup: int) -> list[dict]:
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    barrier = context.Barrier(n, timeout=PACK_BARRIER_TIMEOUT_S)
    results = context.Queue()
    workers = [context.Process(target=_pack_worker, args=(rank, preset, fmt, device, seconds, warmup, barrier,
                                                          results), daemon=True) for rank in range(n)]
    for worker in workers:
        worker.start()
    outcomes = []
    for _ in workers:
        try:
            outcomes.append(results.get(timeout=PACK_BARRIER_TIMEOUT_S + seconds + 60))
        except Exception:  # noqa: BLE001 - a worker died without reporting (killed for memory)
            outcomes.append({"error": "a trial process ended without a result (out of memory?)"})
            break
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
    return outcomes


def _pack_worker(rank: int, preset: str, fmt: str, device: str, seconds: float, warmup: int, barrier,
                 results) -> None:
    from clmr_ray.bench.step import step_inputs
    from clmr_ray.bench.timing import sync
    from clmr_ray.speedups import Speedups

    try:
        spec = load_preset(preset)
        p = spec.pretrain
        dev = torch.device(device)
        torch.set_num_threads(spec.scaling.cpus_per_worker)
        speed = Speedups.for_device(dev)
        speed.apply_backend()
        model, optimizer, crops, generator = step_inputs(spec, fmt, dev, p.batch_size, speed, seed=rank)

        train = speed.step(model, optimizer, temperature=p.temperature, generator=generator, amp=p.amp,
                           grad_clip=p.grad_clip)  # on CUDA a GraphedStep, captured after its warm-up steps

        def step():
            return train(crops)

        for _ in range(max(warmup, getattr(train, "warmup", 0) + 1)):
            step()
        sync(dev)
        barrier.wait()
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            step()
            steps += 1
        sync(dev)
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        results.put({"rank": rank, "steps": steps, "seconds": elapsed, "peak_mem_gib": peak, "device": name})
    except Exception as exc:  # noqa: BLE001 - reported as the row's error; the others must not wait
        barrier.abort()
        lines = str(exc).strip().splitlines()
        results.put({"rank": rank, "error": f"{type(exc).__name__}: {lines[0] if lines else ''}"})


# ---------------------------------------------------------------- Tune sweep overhead


def sweep_overhead(preset: str = "tiny", trials: int = 4, concurrent: int = 1, epochs: int = 1) -> dict:
    """Wall time of a sweep of `trials` experiments vs the sum of their own times (prepare +
    pretrain + evaluate, from the records): what Ray Tune, Optuna and the trial processes add.
    Fresh data and encoder folders, so every trial trains; Ray start-up and the corpus
    generation are reported apart."""
    import os

    from clmr_ray import results, sweep_files
    from clmr_ray.distributed.tasks import ensure_ray
    from clmr_ray.distributed.tune import run_sweep
    from clmr_ray.experiment import prepare_caches

    sweep = sweep_files.sweep_from_dict({
        "name": "overhead", "preset": preset,
        "base": {"format": "audio", "pretrain.epochs": epochs, "audio.augment.pitch.enabled": False},
        "space": {"pretrain.temperature": {"type": "float", "low": 0.1, "high": 1.0, "log": True}},
        "budget": {"num_samples": trials, "max_concurrent_trials": concurrent, "seed": 0},
    })
    with tempfile.TemporaryDirectory(prefix="clmr-ray-bench-") as folder:
        previous = os.environ.get("CLMR_RAY_DATA")
        os.environ["CLMR_RAY_DATA"] = f"{folder}/data"
        try:
            start = time.perf_counter()
            ensure_ray()
            ray_start = time.perf_counter() - start
            start = time.perf_counter()
            prepare_caches(sweep.base_spec())  # generate the corpus apart: the sweep finds it ready
            prepare = time.perf_counter() - start
            start = time.perf_counter()
            outcome = run_sweep(sweep, f"{folder}/sweeps", log=lambda *_: None)
            wall = time.perf_counter() - start
            records = results.read_records(outcome.runs_dir)
        finally:
            if previous is None:
                os.environ.pop("CLMR_RAY_DATA", None)
            else:
                os.environ["CLMR_RAY_DATA"] = previous
    trial_sum = float(records["time_total_s"].sum())
    ideal = trial_sum / concurrent
    return {"preset": preset, "trials": len(records), "concurrent": concurrent, "ray_start_s": ray_start,
            "prepare_s": prepare, "sweep_wall_s": wall, "trials_sum_s": trial_sum, "overhead_s": wall - ideal,
            "overhead_share": (wall - ideal) / wall}


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clmr-ray bench scaling", description=__doc__.split("\n")[0])
    parts = parser.add_subparsers(dest="part", required=True, metavar="{train,sweep,pack}")
    train = parts.add_parser("train", help="pretraining crops/s with N Ray Train workers")
    train.add_argument("--preset", default="tiny")
    train.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts; 0 = no Ray")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--format", default="audio", choices=["audio", "spectrogram"])
    sweep = parts.add_parser("sweep", help="wall time of a small sweep vs the sum of its trials' own times")
    sweep.add_argument("--preset", default="tiny")
    sweep.add_argument("--trials", type=int, default=4)
    sweep.add_argument("--concurrent", type=int, default=1)
    pack = parts.add_parser("pack", help="N trials' training steps at once on one GPU: aggregate crops/s, "
                            "trials/hour (no Ray)")
    pack.add_argument("--preset", default="paper")
    pack.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU to try")
    pack.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                      help="cpu, cuda or cuda:N (default: cuda when this machine has a CUDA device, else cpu: "
                      "%(default)s here)")
    pack.add_argument("--format", default="audio", choices=["audio", "spectrogram"])
    pack.add_argument("--seconds", type=float, default=20.0, help="timed seconds per packing, after the warm-up")
    pack.add_argument("--warmup", type=int, default=3, help="untimed steps per trial first")
    pack.add_argument("--trial-crops", type=int, help="crops one trial pretrains, for trials/hour "
                      f"(default: epochs x {GTZAN_TRAIN_TRACKS} GTZAN training tracks x crops_per_track)")
    args = parser.parse_args(argv)
    if args.part == "pack":
        if any(n < 1 for n in args.trials) or args.seconds <= 0 or args.warmup < 0:
            parser.error("--trials must be >= 1, --seconds > 0 and --warmup >= 0")
        try:
            rows = pack_sweep(args.preset, tuple(args.trials), args.device, args.format, args.seconds, args.warmup,
                              args.trial_crops)
        except SpecError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        print(f"trials packed on one {rows[0]['device']}, preset {args.preset}, {args.seconds:g} s each")
        print(format_rows(rows))
        return 0
    if args.part == "sweep":
        row = sweep_overhead(args.preset, args.trials, args.concurrent)
        print("\n".join(f"{k:>14}: {v:.2f}" if isinstance(v, float) else f"{k:>14}: {v}" for k, v in row.items()))
        return 0
    if args.part == "train":
        if any(n < 0 for n in args.workers) or args.epochs < 1:
            parser.error("--workers must be >= 0 and --epochs >= 1")
        try:
            rows = train_scaling(args.preset, tuple(args.workers), args.epochs, args.format)
        except (SpecError, ValueError) as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
