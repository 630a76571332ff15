"""Ray Train (V2) for contrastive pretraining: `clmr_ray.pretrain.pretrain` in N workers.

    run_experiment(spec, pretrain_fn=ray_pretrain_fn("s3://bucket/clmr/ray_results"))

Each pretraining unit is one `TorchTrainer` run with spec.scaling's workers (gloo on CPU, NCCL
on GPU, DDP through `ray.train.torch.prepare_model`).

Batch and negatives: pretrain.batch_size is the GLOBAL batch. Each of the N workers draws
batch_size / N crops per step from its shard of the epoch's track permutation, so a step sees
the same tracks as one process would. With pretrain.gather_negatives the projections are
all-gathered before NT-Xent, so every anchor has the 2 x batch_size - 2 negatives of the whole
global batch. What stays per worker: BatchNorm statistics (over batch_size / N crops) and the
random crop positions and augmentation parameters (seeded per rank).

Data: workers open the crop cache BY PATH, so that path must be readable on every node: the
same local path on one machine, a shared mount on a cluster, or `clmr-ray prepare` run on every
node (the same inputs give the same cache path).

Checkpoints and resume: rank 0 saves the full training state (state.pt) in a Ray Train
checkpoint each epoch, under <storage_path>/<run name>. `FailureConfig(max_failures)` restarts a
failed worker group from the latest checkpoint. The run name is the encoder key plus the spec
hash (pretrain refuses a checkpoint of another spec), so running the same spec again with the
same storage_path after an interruption (Ctrl-C, a lost driver or node) continues from the last
finished epoch; a finished run resumes straight to its end. The last checkpoint also holds
result.pt, the PretrainResult the driver returns. Both files are plain data with their SHA-256
beside them (safe_files): a checkpoint that fails its hash or needs more than weights_only=True is
refused, never unpickled (a refused state.pt restarts pretraining from the first epoch).

Test hook (tests only, never in real runs): CLMR_RAY_FAIL_AT_EPOCH=k in the driver's
environment makes rank 0 raise once, after epoch k's checkpoint is committed. A marker file in
the run's storage folder records the failure, so the restarted attempt runs through. The driver
hands the variable to the workers with RunConfig(worker_runtime_env), since Ray Train V2 only
propagates its own RAY_TRAIN_* variables.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from .. import machine, safe_files
from ..config import ExperimentSpec, spec_hash
from ..data.base import data_dir
from ..data.cache import CropCache, open_cache
from ..experiment import PretrainFn, encoder_key
from ..pretrain import PretrainResult, TrainContext, pretrain
from .tasks import ensure_ray

FAIL_AT_EPOCH_ENV = "CLMR_RAY_FAIL_AT_EPOCH"
STATE_FILE = "state.pt"  # the training state pretrain resumes from
RESULT_FILE = "result.pt"  # the final PretrainResult (last checkpoint only)
REPORTS_KEY = "ray_reports"  # kept in the training state so the log spans every attempt


@dataclass
class RayPretrainResult(PretrainResult):
    # One row per epoch of every attempt: the epoch's metrics plus attempt (1 + the attempts
    # before it that left a checkpoint), attempt_start_epoch, world_size and node_ids (per rank).
    reports: list[dict] = field(default_factory=list)
    path: str = ""  # the run's folder in storage


def default_storage_path() -> str:
    return str(data_dir() / "ray_results")


def run_name(spec: ExperimentSpec, unit: str, prefix: str | None = None) -> str:
    return f"{prefix or 'pretrain'}-{encoder_key(spec, unit)}-{spec_hash(spec)[:8]}"


def ray_pretrain_fn(storage_path: str | None = None, *, max_failures: int = 2, experiment_name: str | None = None,
                    callbacks=None, num_to_keep: int = 2, check_resources: bool = True) -> PretrainFn:
    """A PretrainFn running each pretraining unit as a Ray Train TorchTrainer.

    storage_path: a local folder (default <data dir>/ray_results) or any pyarrow filesystem URI
    (file://, s3://, gs://); on a multi-node cluster it must be shared. experiment_name prefixes
    the run names. callbacks: ray.train.UserCallback instances. check_resources: fail at once
    when the cluster can never fit the workers (turn off on an autoscaling cluster)."""
    def run(spec: ExperimentSpec, unit: str, cache: CropCache) -> RayPretrainResult:
        return ray_pretrain(spec, unit, cache, storage_path=storage_path, max_failures=max_failures,
                            name=run_name(spec, unit, experiment_name), callbacks=callbacks,
                            num_to_keep=num_to_keep, check_resources=check_resources)
    return run


def ray_pretrain(spec: ExperimentSpec, unit: str, cache: CropCache, *, storage_path: str | None = None,
                 max_failures: int = 2, name: str | None = None, callbacks=None, num_to_keep: int = 2,
                 check_resources: bool = True) -> RayPretrainResult:
    """Pretrain `unit` ('audio', 'spectrogram' or 'both') on `cache` with spec.scaling's workers."""
    import ray.train
    from ray.train.torch import TorchTrainer

    s = spec.scaling
    check_batch_split(spec)
    ensure_ray()
    if check_resources:
        check_cluster_fits(spec)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec": spec, "unit": unit, "cache_path": str(cache.path)},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=worker_resources(spec)),
        run_config=ray.train.RunConfig(
            name=name or run_name(spec, unit),
            storage_path=_storage_uri(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
            callbacks=callbacks,
            worker_runtime_env=_hook_runtime_env(),
        ),
    )
    return _read_result(trainer.fit())


def worker_resources(spec: ExperimentSpec) -> dict[str, float]:
    """What one Ray Train worker reserves: its CPUs and, on GPU, its share of a card (scaling.gpus_per_trial;
    config.validate keeps it above 0.5 with several workers, so two ranks of one run never share a card)."""
    s = spec.scaling
    return {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_trial} if s.use_gpu else {})}


def check_batch_split(spec: ExperimentSpec) -> None:
    """The global batch must split evenly into per-worker batches of >= 2 (checked here so a bad
    spec fails in the driver instead of in every retry of every worker)."""
    batch, workers = spec.pretrain.batch_size, spec.scaling.num_workers
    if batch % workers:
        raise ValueError(f"pretrain.batch_size: {batch} does not split evenly over scaling.num_workers={workers}")
    if batch // workers < 2:
        raise ValueError(f"pretrain.batch_size: {batch} over scaling.num_workers={workers} leaves "
                         f"{batch // workers} crop per worker; NT-Xent needs at least 2")


def check_cluster_fits(spec: ExperimentSpec) -> None:
    """Ray Train waits forever for resources the cluster does not have: fail at once instead."""
    import ray

    s = spec.scaling
    total = ray.cluster_resources()
    # a GPU share of a multi-worker run is > 0.5 (config.validate): each worker needs a card of its own
    need = {"CPU": s.num_workers * s.cpus_per_worker, "GPU": s.num_workers if s.use_gpu else 0}
    for resource, amount in need.items():
        if amount > total.get(resource, 0):
            raise ValueError(f"scaling: {s.num_workers} workers need {amount:g} {resource}s but the Ray cluster "
                             f"has {total.get(resource, 0):g}; lower scaling.num_workers / cpus_per_worker, "
                             "set use_gpu: false or add nodes")


def _storage_uri(storage_path: str | None) -> str:
    path = str(storage_path or default_storage_path())
    if "://" not in path:
        return str(Path(path).expanduser().resolve())
    import pyarrow.fs

    try:
        pyarrow.fs.FileSystem.from_uri(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad URI
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"storage_path: {path!r} is not a usable filesystem URI ({reason})") from None
    return path


def _hook_runtime_env() -> dict | None:
    value = os.environ.get(FAIL_AT_EPOCH_ENV)
    if not value:
        return None
    if not value.strip().isdigit():
        raise ValueError(f"{FAIL_AT_EPOCH_ENV}: expected an epoch number, got {value!r}")
    return {"env_vars": {FAIL_AT_EPOCH_ENV: value.strip()}}


def _read_result(result) -> RayPretrainResult:
    if result.checkpoint is None:
        raise RuntimeError(f"{result.path}: the Ray Train run ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        path = Path(folder) / RESULT_FILE
        if not path.is_file():
            raise RuntimeError(f"{result.checkpoint.path}: no {RESULT_FILE} in the run's last checkpoint")
        payload = safe_files.load_state(path, shown=f"{result.checkpoint.path}/{RESULT_FILE}")
    return RayPretrainResult(**payload, path=str(result.path))


# ------------------------------------------------------------------- in each worker


def _train_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    spec: ExperimentSpec = config["spec"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    machine.prepare(spec, device)
    cache = open_cache(config["cache_path"])
    resume = _load_state(ray.train.get_checkpoint())
    node_ids = _all_gather(ray.get_runtime_context().get_node_id(), world_size)
    reports = list(resume.get(REPORTS_KEY, [])) if resume else []
    attempt = 1 + max((row["attempt"] for row in reports), default=0)
    start_epoch = resume["epoch"] + 1 if resume else 1
    last_state = {"state": resume}

    def report(metrics: dict, state: dict | None) -> None:
        row = {**metrics, "attempt": attempt, "attempt_start_epoch": start_epoch, "world_size": world_size,
               "node_ids": node_ids}
        if state is None:
            ray.train.report(row)
        else:
            reports.append(row)
            state[REPORTS_KEY] = list(reports)
            last_state["state"] = state
            _report_files(row, {STATE_FILE: state})
        _maybe_fail(metrics["epoch"], rank)

    ctx = TrainContext(device=device, rank=rank, world_size=world_size, report=report, resume_state=resume,
                       wrap_model=lambda model: ray.train.torch.prepare_model(model, move_to_device=False))
    result = pretrain(spec, config["unit"], cache.split("train"), cache.split("valid"), ctx)

    final = {"final": True, "epoch": result.history[-1]["epoch"] if result.history else 0,
             "best_epoch": result.best_epoch}
    if rank != 0:
        ray.train.report(final)
        return
    files = {RESULT_FILE: {"encoder_states": result.encoder_states, "history": result.history,
                           "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                           "reports": reports}}
    if last_state["state"] is not None:
        files[STATE_FILE] = last_state["state"]
    _report_files(final, files)


def _report_files(metrics: dict, files: dict[str, dict]) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        for name, payload in files.items():
            safe_files.save_state(payload, folder, name)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _load_state(checkpoint) -> dict | None:
    """The training state to resume from; None (train from the start) when there is none or when it
    is refused (safe_files: its hash, its format, anything but plain data), with one line saying so."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return None
        try:
            return safe_files.load_state(path, shown=f"{checkpoint.path}/{STATE_FILE}")
        except safe_files.RefusedFile as exc:
            print(f"checkpoint refused, pretraining from the first epoch: {exc}", flush=True)
            return None


def _all_gather(value, world_size: int) -> list:
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def _maybe_fail(epoch: int, rank: int) -> None:
    """The test hook (see the module docstring): fail rank 0 once after epoch k is committed."""
    import pyarrow.fs
    import ray.train
    from ray.train import CheckpointConsistencyMode

    at = os.environ.get(FAIL_AT_EPOCH_ENV)
    if rank != 0 or not at or int(at) != epoch:
        return
    storage = ray.train.get_context().get_storage()
    marker = f"{storage.experiment_fs_path}/.failed_at_epoch_{epoch}"
    if storage.storage_filesystem.get_file_info(marker).type != pyarrow.fs.FileType.NotFound:
        return
    ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
    with storage.storage_filesystem.open_output_stream(marker) as stream:
        stream.write(b"failed once\n")
    raise RuntimeError(f"{FAIL_AT_EPOCH_ENV}={at}: injected failure of rank 0 after epoch {epoch} (test hook)")
