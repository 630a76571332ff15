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
from .config import ExperimentSpec, SpecError, from_dict, setup_of, spec_hash, to_dict
from .data.base import DatasetError
from .safe_files import first_line

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
    """Every record under runs_dir as one DataFrame (empty when there is none). A file that is no
    readable record (truncated, or not Parquet: records are written whole, so something else damaged
    it) stops this with one line naming it."""
    tables = [_read_record(p) for p in record_paths(runs_dir)]
    if not tables:
        return pd.DataFrame()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _read_record(path) -> pa.Table:
    try:
        return pq.read_table(path)  # pyarrow reads URIs too
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path}: not a readable run record ({first_line(exc)}); move it away or delete it "
                           "(an ablation re-runs a run whose record is gone)") from None


def check_writable(runs_dir) -> None:
    """Fail in one line, before anything trains, when run records cannot be written into runs_dir (a
    local folder: its nearest existing folder must take files; creates nothing). URIs are not checked."""
    if storage.is_uri(runs_dir):
        return
    existing = Path(runs_dir).expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DatasetError(f"{runs_dir}: run records cannot be written there ({existing} is a file)")
    if not os.access(existing, os.W_OK):  # also false on a read-only mount, even for root
        raise DatasetError(f"{runs_dir}: run records cannot be written there ({existing} is not writable)")


def record_setup(spec_json: str) -> str:
    """The setup (config.setup_of) of a record's spec, as canonical JSON. A spec that no longer
    parses (keys of another version) is taken as written, less its name, seed and scaling."""
    data = json.loads(spec_json)
    try:
        return spec_setup(from_dict(ExperimentSpec, data))
    except SpecError:
        return json.dumps({key: value for key, value in data.items() if key not in ("name", "seed", "scaling")},
                          sort_keys=True)


def spec_setup(spec: ExperimentSpec) -> str:
    return json.dumps(setup_of(spec), sort_keys=True)


def mixed_setups(records: pd.DataFrame) -> list[str]:
    """One line for each (table, row) whose records are runs of more than one setup (a cell's mean
    and std are over seeds of one setup), naming the first keys that differ."""
    lines = []
    for (table, row), setups in _setups_by_row(records).items():
        if len(setups) > 1:
            lines.append(f"{table} row '{row}' holds runs of {len(setups)} setups "
                         f"({_differences(json.loads(setups[0]), json.loads(setups[1]))})")
    return lines


def setup_clashes(records: pd.DataFrame, planned: list[tuple[str, str, ExperimentSpec]]) -> list[str]:
    """One line for each planned run's (table, row) that already holds records of another setup:
    running it would pool two setups in one table cell."""
    held, lines = _setups_by_row(records), {}
    for table, row, spec in planned:
        if (table, row) in lines or (table, row) not in held:
            continue
        setup = spec_setup(spec)
        other = next((s for s in held[(table, row)] if s != setup), None)
        if other is not None:
            lines[(table, row)] = (f"{table} row '{row}' already holds runs of another setup "
                                   f"({_differences(json.loads(other), json.loads(setup))})")
    return list(lines.values())


def _setups_by_row(records: pd.DataFrame) -> dict[tuple, list[str]]:
    """(table, row) -> the distinct setups (record_setup) of its records, each record parsed once."""
    if records.empty or not {"table", "row", "spec_json"} <= set(records):
        return {}
    held = records.dropna(subset=["spec_json"])
    setups = held["spec_json"].map(record_setup)
    return {key: list(dict.fromkeys(group)) for key, group in setups.groupby([held["table"], held["row"]], sort=False)}


def _differences(a: dict, b: dict, shown: int = 3) -> str:
    flat_a, flat_b = flatten(a), flatten(b)
    keys = [k for k in dict.fromkeys([*flat_a, *flat_b]) if flat_a.get(k) != flat_b.get(k)]
    text = ", ".join(f"{k}: {flat_a.get(k)} vs {flat_b.get(k)}" for k in keys[:shown])
    return text + (f", and {len(keys) - shown} more keys" if len(keys) > shown else "")


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
