"""Scaling benchmarks on Ray.

    python -m clmr_ray.bench.scaling train --preset tiny --workers 0 1 2 --epochs 2

`train`: pretraining throughput with N Ray Train workers (0 = in this process, no Ray), same
global batch. crops/s is the median over the epochs after the first (the first one warms up)
of training crops per second, all workers together, validation excluded; wall_s is the whole
call, Ray worker startup and checkpoints included. Every run, the in-process one too, gets
scaling.cpus_per_worker torch threads per process: on a busy machine more intra-op threads than
free cores make each step many times slower (measured 20x on a loaded 2-core box).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid

import torch

from clmr_ray.config import SpecError, with_overrides
from clmr_ray.config import preset as load_preset

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
    columns = list(rows[0])
    cells = [[f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


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
    parser = argparse.ArgumentParser(prog="python -m clmr_ray.bench.scaling", description=__doc__.split("\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    train = parts.add_parser("train", help="pretraining crops/s with N Ray Train workers")
    train.add_argument("--preset", default="tiny")
    train.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts; 0 = no Ray")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--format", default="audio", choices=["audio", "spectrogram"])
    sweep = parts.add_parser("sweep", help="wall time of a small sweep vs the sum of its trials' own times")
    sweep.add_argument("--preset", default="tiny")
    sweep.add_argument("--trials", type=int, default=4)
    sweep.add_argument("--concurrent", type=int, default=1)
    args = parser.parse_args(argv)
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
