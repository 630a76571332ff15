"""Run an ablation file: every row x seed as a Ray Tune trial of the one trainable.

Runs whose Parquet record exists are skipped before Ray starts, so re-running a finished
ablation trains nothing and re-running an interrupted one fills only the missing rows. Encoders
are content-addressed (experiment.encoder_key), so rows that share an encoder train it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ray import tune

from .. import storage
from ..ablation_files import Ablation, Run, expand
from ..config import merge
from ..data.base import DatasetError
from ..experiment import prepare_before_runs
from ..results import check_writable, existing_run_ids, read_records, setup_clashes
from .pack import pack_trials, packed_overrides, share_text
from .tasks import ensure_ray, ray_imap
from .tune import concurrency_limit, run_trial, shared_encoders_for, trial_config, trial_resources


@dataclass
class AblationOutcome:
    runs: list[Run]
    skipped: list[str] = field(default_factory=list)  # run ids with a record before we started
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "run_id: first line of the error"
    runs_dir: Path | str | None = None  # a URI string when results go to a pyarrow filesystem
    interrupted: bool = False  # stopped (Ctrl-C) with runs neither recorded nor failed


class AblationProgress(tune.Callback):
    """One line per finished run: runs done / total, the row, its metrics, the runs still going and
    how they share GPUs."""

    def __init__(self, name: str, cells: list[dict], total: int, done_before: int, share: str = ""):
        self.name, self.cells, self.total, self.done, self.share = name, cells, total, done_before, share
        self.started = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        cell = self.cells[trial.config["index"]]
        last = trial.last_result or {}
        shown = ", ".join(f"{k} {last[k]:.3f}" for k in ("valid_map", "test_acc") if k in last)
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not trial)
        share = f" ({self.share})" if self.share else ""
        print(f"[{self.name}] {self.done}/{self.total} runs done: {cell['run_id']} ({cell['label']}) {shown} "
              f"| {running} running{share} | {time.time() - self.started:.0f} s", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        cell = self.cells[trial.config["index"]]
        print(f"[{self.name}] run {cell['run_id']} failed (see its trial log)", flush=True)


def _cell_trial(config: dict, cells: list[dict]) -> None:
    run_trial(cells[config["index"]])


def run_ablation(ablation: Ablation, preset: str, *, results_dir="results", roots: dict | None = None,
                 seeds: list[int] | None = None, extra: dict | None = None, max_concurrent: int | None = None,
                 num_cpus: int | None = None, trials_per_gpu: int | str | None = None,
                 gpu_memory_gib: float | None = None, log=print) -> AblationOutcome:
    """Run every missing row x seed of `ablation` at `preset`; records go to <results_dir>/runs/.

    results_dir is a local folder or a pyarrow filesystem URI (file://, s3://): records, Tune state and
    distributed-pretraining checkpoints all go there. trials_per_gpu (N or 'auto') packs N runs on each
    GPU (distributed/pack.py), checked against the card's memory (gpu_memory_gib, else measured) before
    any run starts."""
    results_dir = storage.resolve(results_dir)
    runs_dir = storage.join(results_dir, "runs")
    runs = expand(ablation, preset, roots=roots, seeds=seeds, extra=extra)
    done = existing_run_ids(runs_dir)
    todo = [r for r in runs if r.run_id not in done]
    clashes = setup_clashes(read_records(runs_dir), [(r.table, r.row, r.spec) for r in todo]) if todo and done else []
    if clashes:
        more = f"; {len(clashes) - 1} more rows too" if len(clashes) > 1 else ""
        raise DatasetError(f"{runs_dir}: {clashes[0]}{more}; a table cell averages the seeds of one setup: "
                           "give these runs their own --results folder (or delete the old records)")
    if todo:
        check_writable(runs_dir)
    outcome = AblationOutcome(runs, skipped=[r.run_id for r in runs if r.run_id in done], runs_dir=runs_dir)
    if not todo:
        log(f"[{ablation.name}] all {len(runs)} runs already have records in {runs_dir}; nothing to train")
        return outcome
    log(f"[{ablation.name}] {len(todo)} of {len(runs)} runs to do ({len(ablation.rows)} rows x "
        f"{len(runs) // len(ablation.rows)} seeds, preset {preset}); records -> {runs_dir}")
    packing = pack_trials([r.spec for r in todo], trials_per_gpu, gpu_memory_gib=gpu_memory_gib, num_cpus=num_cpus,
                          log=log, prefix=f"[{ablation.name}] ")
    if packing is not None:  # the share is left out of the spec hash: the run ids stay the same
        packed = merge(extra or {}, packed_overrides(packing))
        todo = [r for r in expand(ablation, preset, roots=roots, seeds=seeds, extra=packed) if r.run_id not in done]

    ensure_ray(num_cpus)
    import ray

    started = time.perf_counter()
    prepared: set[str] = set()
    for run in todo:  # every dataset once, up front, with Ray tasks; trials then only read caches
        key = repr((run.spec.data, run.spec.pretrain_data, run.spec.pretrain.crop_samples))
        if key not in prepared:
            prepare_before_runs(run.spec, map_fn=ray_imap, log=lambda line: log(f"[{ablation.name}] {line}"))
            prepared.add(key)
    log(f"[{ablation.name}] data ready ({time.perf_counter() - started:.1f} s)")

    cells = []
    for run in todo:
        cell = trial_config(run.spec, runs_dir=runs_dir, run_id=run.run_id, table=run.table, row=run.row,
                            pretrain_storage=str(storage.join(results_dir, "pretrain")),
                            shared_encoders=shared_encoders_for(results_dir))
        cell["label"] = run.label
        cells.append(cell)
    wanted = max_concurrent or len(cells)
    limit = min(concurrency_limit(s.spec, wanted, ray.cluster_resources()) for s in todo)
    share = share_text(todo[0].spec)
    log(f"[{ablation.name}] {limit} runs at a time" + (f", {share}" if share else ""))
    trainable = tune.with_resources(tune.with_parameters(_cell_trial, cells=cells),
                                    lambda config: trial_resources(cells[config["index"]]))
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(list(range(len(cells))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=limit, reuse_actors=True,
                                    trial_dirname_creator=lambda trial: cells[trial.config["index"]]["run_id"]),
        run_config=tune.RunConfig(name=f"ablate-{ablation.name}", storage_path=str(storage.join(results_dir, "tune")),
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[AblationProgress(ablation.name, cells, len(runs), len(outcome.skipped),
                                                              share)]),
    )
    grid = tuner.fit()  # Tune catches Ctrl-C, stops its trials and returns what it has
    recorded = existing_run_ids(runs_dir)
    outcome.finished = [c["run_id"] for c in cells if c["run_id"] in recorded]
    for result in grid:
        if result.error is not None:
            run_id = cells[result.config["index"]]["run_id"]
            outcome.failed.append(f"{run_id}: {str(result.error).strip().splitlines()[-1]}")
    outcome.interrupted = len(outcome.finished) + len(outcome.failed) < len(cells)
    return outcome


def records_of(outcome: AblationOutcome):
    """The records of this ablation's runs (other tables' records in the same folder left out)."""
    records = read_records(outcome.runs_dir)
    if records.empty:
        return records
    return records[records["run_id"].isin({r.run_id for r in outcome.runs})]
