"""Run records -> a Parquet dataset: one file per finished run, written atomically.

A record is one flat row: identity (run id, table, row, format, datasets, seed, hashes), every
spec field flattened as `spec.<dotted key>`, the metrics, a pretraining summary, wall times and
provenance (device, library versions, git commit). `read_records` reads the folder back as one
DataFrame; files written by other versions with other columns are unified, missing values as nulls.
The runs folder is a local path or a pyarrow filesystem URI (file://, s3://, ...).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import TRAINING_CODE_VERSION, __version__, machine, storage
from .config import ExperimentSpec, spec_hash, to_dict

RECORD_SUFFIX = ".parquet"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON text so every column is a scalar."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def run_record(spec: ExperimentSpec, result, *, run_id: str, table: str | None = None, row: str | None = None,
               extra: dict | None = None) -> dict:
    """One flat row for a finished experiment (`result` is an experiment.ExperimentResult)."""
    record = {
        "run_id": run_id,
        "table": table,
        "row": row,
        "name": spec.name,
        "format": spec.format,
        "dataset": spec.data.dataset,
        "pretrain_dataset": (spec.pretrain_data or spec.data).dataset,
        "seed": spec.seed,
        "spec_hash": spec_hash(spec),
        "encoder_keys": json.dumps(result.encoder_keys, sort_keys=True),
        "trained": json.dumps(result.trained),
        "reused": json.dumps(result.reused),
        "encoder_sha256": json.dumps(getattr(result, "encoder_sha256", {}), sort_keys=True),  # unit -> file hash
        "features_reused": json.dumps(getattr(result, "features_reused", [])),  # formats probed on stored features
        "training_code_version": TRAINING_CODE_VERSION,
    }
    record.update({k: _scalar(v) for k, v in result.metrics.items()})
    for split, predictions in getattr(result, "predictions", {}).items():
        record[f"{split}_track_scores"] = encode_array(predictions.scores.astype(np.float32))
        record[f"{split}_track_labels"] = encode_array(_small_ints(predictions.labels))
    for unit, history in result.histories.items():
        if not history:
            continue
        record[f"pretrain_{unit}_epochs"] = history[-1].get("epoch", len(history))
        record[f"pretrain_{unit}_final_train_loss"] = history[-1].get("train_loss")
        valid = [h["valid_loss"] for h in history if "valid_loss" in h]
        record[f"pretrain_{unit}_best_valid_loss"] = min(valid) if valid else None
    record.update({f"time_{k}_s": v for k, v in result.seconds.items()})
    record.update(provenance())
    record["spec_json"] = json.dumps(to_dict(spec), sort_keys=True)
    record.update(flatten(to_dict(spec), "spec."))
    record.update(extra or {})
    return record


def write_record(record: dict, runs_dir) -> Path | str:
    """Write one run as <runs_dir>/<run_id>.parquet; a crash never leaves a partial file.

    runs_dir is a local folder or a pyarrow filesystem URI (file://, s3://, ...)."""
    run_id = str(record["run_id"])
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise ValueError(f"run_id {run_id!r}: must be a non-empty file name")
    return storage.write_file(runs_dir, f"{run_id}{RECORD_SUFFIX}",
                              lambda path: pq.write_table(pa.Table.from_pylist([record]), path))


def record_paths(runs_dir) -> list[Path] | list[str]:
    if storage.is_uri(runs_dir):
        return [str(storage.join(runs_dir, name)) for name in storage.list_names(runs_dir, RECORD_SUFFIX)
                if not name.startswith(".")]
    runs_dir = Path(runs_dir).expanduser()
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.glob(f"*{RECORD_SUFFIX}") if not p.name.startswith("."))


def existing_run_ids(runs_dir) -> set[str]:
    return {Path(p).name[: -len(RECORD_SUFFIX)] for p in record_paths(runs_dir)}


def read_records(runs_dir) -> pd.DataFrame:
    """Every record under runs_dir as one DataFrame (empty when there is none)."""
    tables = [pq.read_table(p) for p in record_paths(runs_dir)]  # pyarrow reads URIs too
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def encode_array(array: np.ndarray) -> bytes:
    """An array as .npy bytes (dtype and shape included): per-track predictions in a record."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _small_ints(labels: np.ndarray) -> np.ndarray:
    if labels.size and float(np.abs(labels).max()) < 2**15 and np.all(labels == np.round(labels)):
        return labels.astype(np.int16)
    return labels


def provenance() -> dict:
    """The machine a record came from: what can make two runs of one spec and seed differ."""
    import torch

    cuda = torch.cuda.is_available()
    return {**_static_provenance(),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_driver": _gpu_driver() if cuda else None,
            "cuda_version": torch.version.cuda if cuda else None,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # the card(s) Ray gave the run
            "cpu_pins": json.dumps(machine.cpu_pins(), sort_keys=True),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def machine_summary(records: pd.DataFrame) -> list[str]:
    """One line per kind of machine the records came from (CPU model, the capability torch
    dispatched to, threads, kernel pins, GPU) and version of the training code, and how many runs
    each made."""
    if records.empty:
        return []
    columns = [c for c in ("cpu_model", "cpu_capability", "torch_threads", "cpu_pins", "gpu_name") if c in records]
    if not columns:
        return [f"{len(records)} runs from machines not recorded (records older than the provenance columns)"]
    records = records.assign(training_code_version=records.get("training_code_version", pd.Series(
        1, index=records.index)).fillna(1).astype(int))  # records without the column predate version 2
    columns.append("training_code_version")
    known = records[columns].map(lambda v: "" if pd.isna(v) else str(v))
    lines = []
    for values, group in known.groupby(columns, sort=True):
        m = dict(zip(columns, values))
        pins = f", pinned {m['cpu_pins']}" if m.get("cpu_pins", "{}") not in ("", "{}") else ""
        gpu = f", GPU {m['gpu_name']}" if m.get("gpu_name") else ", no GPU"
        lines.append(f"{len(group)} runs on {m.get('cpu_model') or 'an unrecorded CPU'} (torch CPU capability "
                     f"{m.get('cpu_capability') or '?'}, {m.get('torch_threads') or '?'} threads{pins}){gpu}, "
                     f"training code v{m['training_code_version']}")
    return lines


@functools.cache
def _static_provenance() -> dict:
    versions = {}
    for package in ("torch", "torchaudio", "ray"):
        try:
            versions[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"{package}_version"] = None
    return {"clmr_ray_version": __version__, **versions, "python_version": platform.python_version(),
            "hostname": platform.node(), "git_commit": _git_commit(), "cpu_model": machine.cpu_model(),
            "cpu_arch": platform.machine()}


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _scalar(value):
    if hasattr(value, "item"):
        return value.item()
    return value
