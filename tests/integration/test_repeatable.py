"""A record is a pure function of (spec, seed, code, machine): the same runs with 1 or 2 trials at a
time, and `clmr-ray run` of one row, give exactly equal metrics and per-track predictions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from clmr_ray.ablation_files import load_ablation
from clmr_ray.distributed.ablate import run_ablation
from clmr_ray.results import read_records

pytestmark = pytest.mark.slow

ABLATION = """\
name: repeat
seeds: [0]
base:
  pretrain.epochs: 1
  eval.epochs: 5
  audio.augment.pitch.enabled: false
rows:
  - id: audio
    label: audio
    overrides: {format: audio}
  - id: spectrogram
    label: spectrogram
    overrides: {format: spectrogram}
"""
EXACT = ["valid_map", "valid_acc", "test_acc", "test_map", "test_roc_auc", "test_crop_acc", "test_track_scores",
         "valid_track_scores", "pretrain_audio_final_train_loss", "pretrain_spectrogram_final_train_loss"]


def run_fresh(tmp_path, monkeypatch, name: str, max_concurrent: int):
    """The ablation from scratch: its own data dir, so corpus and encoders are made anew."""
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / f"data-{name}"))
    path = tmp_path / "repeat.yaml"
    path.write_text(ABLATION)
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        outcome = run_ablation(load_ablation(path), "tiny", results_dir=tmp_path / name, max_concurrent=max_concurrent)
    finally:
        ray.shutdown()
    assert not outcome.failed and len(outcome.finished) == 2
    return read_records(tmp_path / name / "runs").set_index("row").sort_index()


def test_one_or_two_trials_at_a_time_and_a_plain_run_give_identical_records(tmp_path, monkeypatch):
    serial = run_fresh(tmp_path, monkeypatch, "serial", max_concurrent=1)
    parallel = run_fresh(tmp_path, monkeypatch, "parallel", max_concurrent=2)
    for column in EXACT:
        for row in ("audio", "spectrogram"):
            a, b = serial.loc[row].get(column), parallel.loc[row].get(column)
            if a is None or (isinstance(a, float) and np.isnan(a)):
                continue
            assert a == b, f"{row}.{column}: {a!r} with 1 trial at a time, {b!r} with 2"
    # the machine is in every record
    for column in ("cpu_model", "cpu_capability", "torch_threads", "device", "git_commit"):
        assert serial[column].notna().all(), column
    assert (serial["torch_threads"] == serial["spec.scaling.cpus_per_worker"]).all()

    # `clmr-ray run` of the spectrogram row, in its own process and data dir, equals its trial
    spec_file = tmp_path / "row.yaml"
    spec_file.write_text(yaml.safe_dump(json.loads(serial.loc["spectrogram", "spec_json"])))
    env_data = tmp_path / "data-run"
    out = subprocess.run([str(Path(sys.executable).parent / "clmr-ray"), "run", "--serial", "--config", str(spec_file),
                          "--results", str(tmp_path / "plain")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CLMR_RAY_DATA": str(env_data)}, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    plain = read_records(tmp_path / "plain" / "runs").iloc[0]
    assert plain["spec_hash"] == serial.loc["spectrogram", "spec_hash"]
    for column in EXACT:
        a = serial.loc["spectrogram"].get(column)
        if a is None or (isinstance(a, float) and np.isnan(a)):
            continue
        assert plain[column] == a, f"clmr-ray run: {column} {plain[column]!r}, trial {a!r}"
