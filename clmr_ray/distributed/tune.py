"""Ray Tune + Optuna: one trainable runs one whole experiment; sweeps search over it.

`run_trial(config)` is the only trainable, for sweeps and ablation grids alike. Its config:

    {"spec": <full spec dict>, "params": {dotted key: value} (sweeps: Optuna's sample),
     "runs_dir": <folder of Parquet records>, "run_id": <optional>, "table": ..., "row": ...,
     "sweep": <sweep name>, "metric": "valid_map", "data_dir": ..., "encoders_dir": ...,
     "pretrain_storage": <Ray Train storage for distributed pretraining>,
     "shared_encoders": <folder or URI every node reaches, or None>, "driver_node": <Ray node id>}

It pretrains (or reuses, by content hash) every encoder the spec needs, evaluates, writes one
Parquet record, and reports the final metrics with `tune.report`. A trial whose record already
exists (it finished before an interruption the Tune state did not see) reports that record
instead of running again, so resuming never repeats finished work.

Where pretraining runs: with scaling.num_workers == 1 inside the trial process (the trial holds
the worker's CPU/GPU; no extra processes, no per-epoch checkpoint I/O); with more workers as a
Ray Train V2 TorchTrainer launched from the trial (distributed.ray_pretrain_fn). Such a trial is
only a driver: it reserves memory but no CPU, so the workers of `max_concurrent_trials` trials
fit in the cluster and trials never wait on each other's CPUs; the driver evaluates after its
workers finish, on the CPU they freed.

Every report carries the same keys, so Tune's strict metric check and ASHA both work: after each
pretraining epoch `pretrain_epoch` (cumulative over the trial's pretraining units),
`pretrain_train_loss`, `pretrain_valid_loss`, and the sweep metric as NaN; the last report
carries the real metrics. ASHA (optional) stops trials on `pretrain_valid_loss`; NT-Xent losses
at different temperatures are not comparable, so do not combine ASHA with a temperature sweep.
A trial ASHA stops has no evaluation, so it leaves no Parquet record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from .. import config as cfg
from .. import storage
from ..config import ExperimentSpec
from ..experiment import (
    EncoderStore,
    PretrainFn,
    default_device,
    local_pretrain_fn,
    pretrain_units,
    run_experiment,
)
from ..packing import trials_per_gpu
from ..results import RECORD_SUFFIX, existing_run_ids, read_records, run_record, write_record
from ..sweep_analysis import write_journal
from ..sweep_files import Sweep, SweepError
from .tasks import ensure_ray

DRIVER_MEMORY = 256 * 1024**2  # what a Ray Train driver trial reserves instead of a CPU
NAN = float("nan")


# ------------------------------------------------------------------- the trainable


def trial_config(spec: ExperimentSpec | dict, *, runs_dir, run_id: str | None = None, table: str | None = None,
                 row: str | None = None, metric: str = "valid_map", sweep: str | None = None,
                 pretrain_storage: str | None = None, shared_encoders: str | None = None) -> dict:
    """The config of one `run_trial` (ablation grids build one per row x seed)."""
    import ray

    from ..data.base import data_dir

    return {"spec": spec if isinstance(spec, dict) else cfg.to_dict(spec), "runs_dir": str(runs_dir),
            "run_id": run_id, "table": table, "row": row, "metric": metric, "sweep": sweep,
            "data_dir": str(data_dir()), "encoders_dir": None, "pretrain_storage": pretrain_storage,
            "shared_encoders": shared_encoders,
            "driver_node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None}


def shared_encoders_for(location) -> str | None:
    """Encoders go beside the records when those are on a URI (every node reaches it)."""
    return str(storage.join(location, "encoders")) if storage.is_uri(location) else None


def _use_driver_data_dir(config: dict) -> bool:
    """On the driver's node the driver's $CLMR_RAY_DATA holds (workers may have started before it was
    set); another node keeps its own when its raylet has one (per-node data), else takes the driver's."""
    if not config.get("data_dir"):
        return False
    if "CLMR_RAY_DATA" not in os.environ or config.get("driver_node") is None:
        return True
    import ray

    return ray.get_runtime_context().get_node_id() == config["driver_node"]


def trial_spec(config: dict) -> ExperimentSpec:
    return cfg.from_dict(ExperimentSpec, cfg.merge(config["spec"], config.get("params") or {}))


def run_trial(config: dict) -> None:
    """One experiment as a Tune trial (see the module docstring for `config`)."""
    if _use_driver_data_dir(config):
        os.environ["CLMR_RAY_DATA"] = config["data_dir"]
    spec = trial_spec(config)
    trial_id = tune.get_context().get_trial_id()
    run_id = config.get("run_id") or f"{config.get('sweep') or 'trial'}-{trial_id}"
    runs_dir = config["runs_dir"]  # a folder or a filesystem URI (see results.py)
    metric = config.get("metric") or "valid_map"

    if run_id in existing_run_ids(runs_dir):
        import pyarrow.parquet as pq

        record = pq.read_table(f"{runs_dir}/{run_id}{RECORD_SUFFIX}").to_pylist()[0]
        print(f"[{spec.name}] {run_id}: finished before, reporting its record", flush=True)
        tune.report(final_report(record, metric, pretrain_epoch=0))
        return

    started_at = time.time()
    progress = _EpochProgress(metric, f"[{spec.name}]")
    if spec.scaling.num_workers > 1:
        pretrain_fn = _distributed_pretrain(config, progress, run_id)
    else:
        pretrain_fn = _local_pretrain(progress)
    store = EncoderStore(config.get("encoders_dir"), shared=config.get("shared_encoders"))
    result = run_experiment(spec, store=store, pretrain_fn=pretrain_fn, log=lambda line: print(line, flush=True))
    extra = {"trial_id": trial_id, "sweep": config.get("sweep"), "status": "finished", "label": config.get("label"),
             "params": json.dumps(config.get("params") or {}, sort_keys=True),
             "trial_started_at": started_at, "trial_finished_at": time.time()}  # epoch s: packed trials overlap
    record = run_record(spec, result, run_id=run_id, table=config.get("table"), row=config.get("row"), extra=extra)
    write_record(record, runs_dir)
    tune.report(final_report(record, metric, pretrain_epoch=progress.epochs))


def final_report(record: dict, metric: str, *, pretrain_epoch: int) -> dict:
    """The last report of a trial: every number of its record (not the spec columns)."""
    out = {k: v for k, v in record.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("spec.")}
    def summary(suffix: str) -> list[float]:
        return [v for k, v in out.items() if k.startswith("pretrain_") and k.endswith(suffix) and not _is_nan(v)]

    train, valid = summary("_final_train_loss"), summary("_best_valid_loss")
    out.update(run_id=record["run_id"], pretrain_epoch=pretrain_epoch,
               pretrain_train_loss=train[-1] if train else NAN, pretrain_valid_loss=min(valid) if valid else NAN)
    out.setdefault(metric, NAN)
    return out


class _EpochProgress:
    """Turns pretraining epochs into Tune reports with the keys every report carries."""

    def __init__(self, metric: str, prefix: str):
        self.metric, self.prefix, self.epochs = metric, prefix, 0

    def report(self, unit: str, metrics: dict) -> dict:
        self.epochs += 1
        return {"pretrain_epoch": self.epochs, "pretrain_unit": unit,
                "pretrain_train_loss": float(metrics.get("train_loss", NAN)),
                "pretrain_valid_loss": float(metrics.get("valid_loss", NAN)), self.metric: NAN}


def _local_pretrain(progress: _EpochProgress) -> PretrainFn:
    def run(spec: ExperimentSpec, unit: str, cache):
        def report(metrics: dict, _checkpoint) -> None:
            row = progress.report(unit, metrics)
            print(f"{progress.prefix} {unit} epoch {metrics['epoch']}/{spec.pretrain.epochs} "
                  f"loss {row['pretrain_train_loss']:.4f} valid {row['pretrain_valid_loss']:.4f}", flush=True)
            tune.report(row)

        return local_pretrain_fn(default_device(spec), report=report)(spec, unit, cache)
    return run


class _TuneEpochCallback(TuneReportCallback):
    """Forwards rank 0's per-epoch Ray Train reports to Tune in the trial's report schema."""

    def __init__(self, metric: str, unit: str, first_epoch: int):
        super().__init__()
        self.progress = _EpochProgress(metric, "")
        self.progress.epochs = first_epoch
        self.unit = unit

    def after_report(self, run_context, metrics, checkpoint):
        row = metrics[0]
        if row.get("final") or "train_loss" not in row:
            return
        self._training_actor_item_queue.put(self.progress.report(self.unit, row))


def _distributed_pretrain(config: dict, progress: _EpochProgress, run_id: str) -> PretrainFn:
    from .train import ray_pretrain_fn

    def run(spec, unit, cache):
        callback = _TuneEpochCallback(progress.metric, unit, progress.epochs)
        fn = ray_pretrain_fn(config.get("pretrain_storage"), experiment_name=run_id, callbacks=[callback])
        result = fn(spec, unit, cache)
        progress.epochs += len(result.history)
        return result
    return run


def trial_resources(config: dict):
    """What a trial reserves: the worker's CPUs (+ its share of a GPU, scaling.gpus_per_trial) when it
    pretrains in-process, only memory when it is a Ray Train driver (its workers reserve their own)."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    s = trial_spec(config).scaling
    if s.num_workers > 1:
        return PlacementGroupFactory([{"CPU": 0, "memory": DRIVER_MEMORY}])
    return PlacementGroupFactory([{"CPU": s.cpus_per_worker, "GPU": s.gpus_per_trial if s.use_gpu else 0}])


def trainable():
    """run_trial with its resource request, for tune.Tuner / Tuner.restore."""
    def clmr_trial(config: dict) -> None:
        run_trial(config)
    return tune.with_resources(clmr_trial, trial_resources)


def trial_needs(spec: ExperimentSpec) -> dict[str, float]:
    """Cluster resources one running trial occupies (its Ray Train workers included)."""
    s = spec.scaling
    gpus = s.num_workers * s.gpus_per_trial if s.use_gpu else 0
    return {"CPU": s.num_workers * s.cpus_per_worker, "GPU": gpus}


def concurrency_limit(spec: ExperimentSpec, wanted: int, resources: dict) -> int:
    """The most trials that fit side by side (never more than `wanted`)."""
    fits = wanted
    for resource, amount in trial_needs(spec).items():
        if amount > 0:
            have = resources.get(resource, 0)
            if have < amount:
                raise SweepError(f"scaling: one trial needs {amount:g} {resource}s, the Ray cluster has {have:g}; "
                                 "lower scaling.num_workers / cpus_per_worker or start Ray with more")
            fits = min(fits, _trials_fitting(spec, resource, have, amount))
    return max(1, fits)


def _trials_fitting(spec: ExperimentSpec, resource: str, have: float, amount: float) -> int:
    """Trials whose `amount` of `resource` fit in `have`; GPU shares fill each card on its own (two 0.4
    shares per card: 2 cards hold 4 such trials, not 5)."""
    s = spec.scaling
    if resource == "GPU" and s.gpus_per_trial < 1:
        return int(have + 1e-6) * trials_per_gpu(s.gpus_per_trial) // s.num_workers
    return int(have / amount + 1e-6)


# ------------------------------------------------------------------------ sweeps


class DefineByRun:
    """Optuna define-by-run space of a sweep (a class, so the searcher's state pickles)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep

    def __call__(self, trial) -> None:
        self.sweep.suggest(trial)  # values land in config["params"] via the "params/" names


class SweepProgress(tune.Callback):
    """One line per finished trial: trials done / budget, this trial's metric, best so far."""

    def __init__(self, sweep: Sweep, runs_dir):
        self.sweep, self.runs_dir = sweep, runs_dir  # a folder or a URI
        self.started = time.time()

    def setup(self, **info) -> None:
        self.started = time.time()  # also on resume (the callback comes back from the pickle)

    def log(self, line: str) -> None:
        print(line, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        value = last.get(self.sweep.metric, NAN)
        if _is_nan(value):
            record_stopped_trial(trial, self.runs_dir)
            outcome = f"stopped after {last.get('pretrain_epoch', '?')} pretraining epochs"
        else:
            outcome = f"{self.sweep.metric} {value:.4f}"
        done, best = self._best()
        best_text = (f"best {best[self.sweep.metric]:.4f} ({best['run_id']})" if best is not None
                     else "none evaluated yet")
        # the last two parts of a dotted key are enough to tell parameters apart
        params = ", ".join(f"{'.'.join(k.split('.')[-2:])}={_short(v)}"
                           for k, v in (trial.config.get("params") or {}).items())
        from .pack import share_text

        running = sum(1 for t in trials if t.status == "RUNNING" and t is not trial)
        share = share_text(self.sweep.base_spec())
        self.log(f"[{self.sweep.name}] {done}/{self.sweep.num_samples} done, {trial.trial_id}: {outcome} | "
                 f"{best_text} | {params} | {running} running{f' ({share})' if share else ''} | "
                 f"{time.time() - self.started:.0f} s")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"[{self.sweep.name}] trial {trial.trial_id} failed: {_error_line(trial)}")

    def _best(self):
        records = read_records(self.runs_dir)
        return len(records), best_record(records, self.sweep.metric, self.sweep.mode)


def record_stopped_trial(trial, runs_dir) -> None:
    """A record for a trial the scheduler stopped during pretraining: its spec and how far it
    got, no evaluation metrics (so every trial of a sweep has a record)."""
    from ..experiment import ExperimentResult

    config = trial.config
    run_id = config.get("run_id") or f"{config.get('sweep') or 'trial'}-{trial.trial_id}"
    if run_id in existing_run_ids(runs_dir):
        return
    last = trial.last_result or {}
    extra = {"trial_id": trial.trial_id, "sweep": config.get("sweep"), "status": "stopped_early",
             "params": json.dumps(config.get("params") or {}, sort_keys=True),
             "pretrain_epochs_done": last.get("pretrain_epoch"), "pretrain_valid_loss": last.get("pretrain_valid_loss")}
    result = ExperimentResult(metrics={}, encoder_keys={})
    write_record(run_record(trial_spec(config), result, run_id=run_id, table=config.get("table"),
                            row=config.get("row"), extra=extra), runs_dir)


@dataclass
class SweepOutcome:
    experiment_dir: Path | str  # a folder, or a URI (see storage.py)
    runs_dir: Path | str
    records: int  # Parquet records under runs_dir
    best: dict | None  # the best record
    best_spec_path: Path | str | None
    interrupted: bool
    errors: list[str]


def run_sweep(sweep: Sweep, location="results/sweeps", *, resume: bool = False, num_cpus: int | None = None,
              trials_per_gpu: int | str | None = None, gpu_memory_gib: float | None = None,
              log=print) -> SweepOutcome:
    """Run (or resume) a sweep; every finished trial leaves a Parquet record under
    <location>/<name>/runs/, and the best trial's spec is saved as <location>/<name>/best_spec.yaml.
    `location` is a folder or a filesystem URI (file://, s3://, ...): Tune's state goes there too.
    trials_per_gpu (N or 'auto') packs N trials on each GPU (distributed/pack.py), checked against the
    card's memory (gpu_memory_gib, else measured) before any trial starts."""
    from ..experiment import prepare_before_runs
    from .pack import pack_trials, packed_overrides, share_text, sweep_specs
    from .tasks import ray_imap

    packing = pack_trials(sweep_specs(sweep), trials_per_gpu, gpu_memory_gib=gpu_memory_gib, num_cpus=num_cpus,
                          log=log, prefix=f"[{sweep.name}] ")
    if packing is not None:  # part of the sweep's base, so a resume with other flags is refused
        sweep = dataclasses.replace(sweep, base=cfg.merge(sweep.base, packed_overrides(packing)))
    base_dir = storage.resolve(location)
    exp_dir = storage.join(base_dir, sweep.name)
    runs_dir = storage.join(exp_dir, "runs")
    restoring = _check_folder(sweep, exp_dir, resume, log)
    storage.write_text(exp_dir, "sweep.yaml", yaml.safe_dump(sweep.to_dict(), sort_keys=False))

    ensure_ray(num_cpus)
    import ray

    base = sweep.base_spec()
    limit = concurrency_limit(base, sweep.max_concurrent_trials, ray.cluster_resources())
    if limit < sweep.max_concurrent_trials:
        log(f"[{sweep.name}] max_concurrent_trials {sweep.max_concurrent_trials} -> {limit}: "
            "that many trials' workers fit in the Ray cluster")
    started = time.perf_counter()
    prepare_before_runs(base, map_fn=ray_imap, log=lambda line: log(f"[{sweep.name}] {line}"))
    share = share_text(base)
    log(f"[{sweep.name}] data ready ({time.perf_counter() - started:.1f} s); "
        f"{'resuming' if restoring else 'starting'} {sweep.num_samples} trials, {limit} at a time"
        f"{f', {share}' if share else ''} -> {exp_dir}")

    if restoring:
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable(), resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = _new_tuner(sweep, base_dir, runs_dir, limit)
    grid = tuner.fit()

    outcome = summarize(sweep, exp_dir, log=log)
    outcome.errors = [f"{Path(r.path).name}: {_first_line(r.error)}" for r in grid if r.error is not None]
    # ASHA's stopped trials count as terminated; an interrupted run leaves trials short of the budget.
    outcome.interrupted = grid.num_terminated + grid.num_errors < sweep.num_samples
    return outcome


def _new_tuner(sweep: Sweep, base_dir, runs_dir, limit: int):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = sweep.base_spec()
    exp_dir = storage.join(base_dir, sweep.name)
    param_space = trial_config(base, runs_dir=runs_dir, metric=sweep.metric, sweep=sweep.name,
                               pretrain_storage=str(storage.join(exp_dir, "pretrain")),
                               shared_encoders=shared_encoders_for(exp_dir))
    search = OptunaSearch(space=DefineByRun(sweep), metric=sweep.metric, mode=sweep.mode,
                          points_to_evaluate=sweep.optuna_points() or None, seed=sweep.seed)
    scheduler = None
    if sweep.scheduler is not None:
        from ray.tune.schedulers import ASHAScheduler

        s = sweep.scheduler
        # One report per pretraining epoch, then the final one: a trial is never stopped at its
        # last epoch for reaching max_t, before it could evaluate.
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=s.metric, mode=s.mode,
                                  max_t=(s.max_t or max_pretrain_epochs(sweep)) + 1,
                                  grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    return tune.Tuner(
        trainable(),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=sweep.num_samples,
                                    max_concurrent_trials=limit, trial_dirname_creator=_trial_dirname,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=sweep.name, storage_path=str(base_dir), verbose=0,
                                  callbacks=[SweepProgress(sweep, runs_dir)]),
    )


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def max_pretrain_epochs(sweep: Sweep) -> int:
    """ASHA's max_t: the pretraining epochs of the longest trial (all units)."""
    base = sweep.base_spec()
    epochs = [base.pretrain.epochs]
    swept = sweep.space.get("pretrain.epochs")
    if swept is not None:
        epochs += [v for v in swept.sample_values() if isinstance(v, int)]
    return max(epochs) * len(pretrain_units(base))


def summarize(sweep: Sweep, exp_dir, *, log=print) -> SweepOutcome:
    """Read the sweep's records, save the best trial's spec as best_spec.yaml, print it."""
    runs_dir = storage.join(exp_dir, "runs")
    records = read_records(runs_dir)
    outcome = SweepOutcome(exp_dir, runs_dir, len(records), None, None, False, [])
    if not records.empty:  # the study rebuilt from the records, for optuna-dashboard
        journal = write_journal(sweep, records, exp_dir)
        log(f"[{sweep.name}] optuna study -> {journal}; analyse it with: clmr-ray analyze {exp_dir}")
    best = best_record(records, sweep.metric, sweep.mode)
    if best is None:
        log(f"[{sweep.name}] no trial has finished its evaluation yet")
        return outcome
    spec = json.loads(best["spec_json"])
    path = storage.join(exp_dir, "best_spec.yaml")
    header = (f"# Best trial of sweep '{sweep.name}': {best['run_id']}, {sweep.metric} = "
              f"{best[sweep.metric]:.4f} ({sweep.mode}, {len(records)} trials).\n"
              f"# Run it: clmr-ray run --config {path}\n")
    storage.write_text(exp_dir, "best_spec.yaml", header + yaml.safe_dump(spec, sort_keys=False))
    params = json.loads(best.get("params") or "{}")
    log(f"[{sweep.name}] best of {len(records)}: {best['run_id']} {sweep.metric} {best[sweep.metric]:.4f}"
        + (f", test_acc {best['test_acc']:.4f}" if "test_acc" in best else ""))
    for key, value in params.items():
        log(f"  {key}: {value}")
    log(f"  spec -> {path}")
    outcome.best, outcome.best_spec_path = best, path
    return outcome


def best_record(records, metric: str, mode: str) -> dict | None:
    if records.empty or metric not in records:
        return None
    rows = records.dropna(subset=[metric])
    if rows.empty:
        return None
    index = rows[metric].idxmax() if mode == "max" else rows[metric].idxmin()
    return rows.loc[index].to_dict()


def _check_folder(sweep: Sweep, exp_dir, resume: bool, log) -> bool:
    """Whether to restore; refuses to mix a new sweep into an old folder."""
    saved = storage.join(exp_dir, "sweep.yaml")
    has_state = tune.Tuner.can_restore(str(exp_dir)) if storage.exists(exp_dir) else False
    if not resume:
        if has_state or existing_run_ids(storage.join(exp_dir, "runs")):
            raise SweepError(f"{exp_dir}: holds sweep '{sweep.name}' already; pass --resume to continue it, "
                             "or use another --storage")
        return False
    if not has_state:
        log(f"[{sweep.name}] nothing to resume under {exp_dir}; starting the sweep")
        return False
    if storage.exists(saved):
        before = yaml.safe_load(storage.read_text(saved))
        key = _first_difference(before, sweep.to_dict())
        if key is not None:
            raise SweepError(f"{exp_dir}: the sweep changed since it started ({key}); resume with the same file "
                             "and flags, or start a new sweep under another name or --storage")
    return True


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if a == b else prefix.rstrip(".") or "sweep"


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    return f"see {path}" if path else "see the trial's log"
