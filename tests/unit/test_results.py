import json
import os

import pandas as pd
import pyarrow as pa
import pytest

from clmr_ray import TRAINING_CODE_VERSION, config
from clmr_ray.experiment import ExperimentResult
from clmr_ray.results import (
    existing_run_ids,
    flatten,
    machine_summary,
    read_records,
    record_paths,
    run_record,
    write_record,
)


def _result(acc: float) -> ExperimentResult:
    return ExperimentResult(
        metrics={"test_acc": acc, "valid_map": 0.5, "test_map": 0.4},
        encoder_keys={"audio": "audio-abc"}, trained=["audio"],
        histories={"audio": [{"epoch": 1, "train_loss": 3.0, "valid_loss": 2.5},
                             {"epoch": 2, "train_loss": 2.0, "valid_loss": 2.7}]},
        seconds={"total": 1.5})


def test_flatten_nested_and_lists():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": None}


def test_record_round_trip_through_parquet(tmp_path):
    spec = config.preset("tiny")
    record = run_record(spec, _result(0.25), run_id="t1-row-seed0", table="table1", row="audio crop")
    assert record["spec.pretrain.temperature"] == 0.5
    assert record["pretrain_audio_best_valid_loss"] == 2.5
    assert record["pretrain_audio_epochs"] == 2
    assert json.loads(record["spec_json"])["format"] == "audio"
    path = write_record(record, tmp_path / "runs")
    assert path.name == "t1-row-seed0.parquet"
    other = run_record(config.with_overrides(spec, {"format": "both"}), _result(0.5), run_id="t1-both",
                       extra={"only_here": 1.0})
    write_record(other, tmp_path / "runs")
    frame = read_records(tmp_path / "runs")
    assert len(frame) == 2
    assert set(frame["run_id"]) == {"t1-row-seed0", "t1-both"}
    assert frame.set_index("run_id").loc["t1-row-seed0", "test_acc"] == 0.25
    assert pd.isna(frame.set_index("run_id").loc["t1-row-seed0", "only_here"])
    assert existing_run_ids(tmp_path / "runs") == {"t1-row-seed0", "t1-both"}


def test_a_crash_while_writing_leaves_no_record(tmp_path):
    record = run_record(config.preset("tiny"), _result(0.1), run_id="crash")
    record["unwritable"] = object()  # pyarrow cannot encode it: the write fails midway
    with pytest.raises((TypeError, ValueError, OverflowError, pa.ArrowException)):
        write_record(record, tmp_path)
    assert record_paths(tmp_path) == []
    assert os.listdir(tmp_path) == []


def test_empty_or_missing_folder_reads_as_empty(tmp_path):
    assert read_records(tmp_path / "nothing").empty
    with pytest.raises(ValueError, match="run_id"):
        write_record({"run_id": "../escape"}, tmp_path)


def test_records_say_which_training_code_made_them_and_summaries_count_each_version():
    spec = config.preset("tiny")
    new = run_record(spec, _result(0.25), run_id="new")
    assert new["training_code_version"] == TRAINING_CODE_VERSION
    old = {k: v for k, v in run_record(spec, _result(0.5), run_id="old").items() if k != "training_code_version"}
    mixed = pd.DataFrame([new, new, old])
    lines = machine_summary(mixed)
    assert len(lines) == 2  # one machine, two code versions
    assert any(line.startswith("2 runs on ") and line.endswith(f"training code v{TRAINING_CODE_VERSION}")
               for line in lines)
    assert any(line.startswith("1 runs on ") and line.endswith("training code v1") for line in lines)


def test_a_damaged_record_is_one_line_naming_it(tmp_path):
    from clmr_ray.data.base import DatasetError

    good = write_record(run_record(config.preset("tiny"), _result(0.1), run_id="good"), tmp_path)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DatasetError) as refused:
        read_records(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{damaged}: not a readable run record") and "\n" not in message


def test_a_results_folder_that_cannot_be_written_fails_before_anything_trains(tmp_path, capsys, monkeypatch):
    """A file where the folder would go (as root, a read-only folder would still be written): `run --results`
    and `ablate` refuse in one line before any data or encoder exists."""
    from clmr_ray.cli import main

    blocked = tmp_path / "a_file"
    blocked.write_text("")
    data = tmp_path / "data"
    monkeypatch.setenv("CLMR_RAY_DATA", str(data))
    assert main(["run", "--preset", "tiny", "--serial", "--results", str(blocked)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clmr-ray: error: {blocked / 'runs'}: run records cannot be written there")
    assert "\n" not in err and not data.exists()
