"""An ablation end to end on real Ray: records, reuse, tables, re-runs and a killed run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray

from clmr_ray.ablation_files import load_ablation
from clmr_ray.cli import main
from clmr_ray.distributed.ablate import run_ablation
from clmr_ray.results import read_records, record_paths

ABLATION = """\
name: mini
seeds: [0, 1]
base:
  pretrain.epochs: 1
  eval.epochs: 5
  audio.augment.pitch.enabled: false
rows:
  - id: audio
    label: audio, linear probe
    overrides: {format: audio}
  - id: audio_mlp
    label: audio, MLP probe (same encoder)
    overrides: {format: audio, eval.head: mlp}
"""


@pytest.fixture
def local_ray():
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def ablation_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "data"))
    path = tmp_path / "mini.yaml"
    path.write_text(ABLATION)
    return path


def test_ablation_records_reuse_tables_and_rerun(local_ray, ablation_file, tmp_path, capsys):
    results = tmp_path / "results"
    outcome = run_ablation(load_ablation(ablation_file), "tiny", results_dir=results)
    assert not outcome.failed and len(outcome.finished) == 4

    records = read_records(results / "runs").set_index("run_id")
    assert len(records) == 4
    # each seed pretrains its encoder once: one row trains it, the other reuses it (which one
    # depends on which of the two concurrent trials takes the encoder's lock first)
    trained = records.groupby("seed")["trained"].apply(lambda s: sorted(s))
    for seed in (0, 1):
        assert trained[seed] == ['["audio"]', "[]"]
    reusing = records[records["trained"] == "[]"]
    assert len(reusing) == 2 and (reusing["reused"] == '["audio"]').all()
    assert (records[records["row"] == "audio_mlp"]["spec.eval.head"] == "mlp").all()

    assert main(["tables", str(results)]) == 0
    table = pd.read_parquet(results / "mini.parquet").set_index("row")
    assert list(table.index) == ["audio", "audio_mlp"]
    for column in ("n", "valid_map_mean", "valid_map_std", "test_acc_mean", "test_acc_std", "run_ids"):
        assert column in table.columns
    mine = records[records["row"] == "audio"]
    assert table.loc["audio", "n"] == 2
    assert table.loc["audio", "test_acc_mean"] == pytest.approx(mine["test_acc"].mean())
    assert table.loc["audio", "valid_map_mean"] == pytest.approx(mine["valid_map"].mean())
    for suffix in (".md", ".csv", ".png"):
        assert (results / f"mini{suffix}").stat().st_size > 0
    assert "audio, MLP probe (same encoder)" in capsys.readouterr().out

    uri_out = tmp_path / "uri-tables"  # records read from a URI, tables uploaded to one
    assert main(["tables", results.as_uri(), "--out", uri_out.as_uri()]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(uri_out / "mini.parquet"), pd.read_parquet(results / "mini.parquet"))
    names = {p.name for p in uri_out.iterdir()}
    assert {"mini.csv", "mini.md", "mini.parquet", "mini.png"} <= names and not any(".partial" in n for n in names)
    assert f"{uri_out.as_uri()}/mini.*" in capsys.readouterr().out

    mtimes = {p: p.stat().st_mtime_ns for p in record_paths(results / "runs")}
    again = run_ablation(load_ablation(ablation_file), "tiny", results_dir=results)
    assert again.finished == [] and len(again.skipped) == 4
    assert {p: p.stat().st_mtime_ns for p in record_paths(results / "runs")} == mtimes


def test_killed_ablation_leaves_no_partial_record_and_rerun_completes(local_ray, ablation_file, tmp_path):
    # 4 seeds, 8 runs: a tiny run takes about a second, so the kill lands while most are still to come
    ablation_file.write_text(ABLATION.replace("seeds: [0, 1]", "seeds: [0, 1, 2, 3]"))
    results = tmp_path / "results"
    runs = results / "runs"
    env = {**os.environ, "RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "clmr_ray.cli", "ablate", str(ablation_file), "--preset", "tiny",
               "--results", str(results), "--max-concurrent", "1", "--num-cpus", "1"]
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not record_paths(runs) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert record_paths(runs), "the first run never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = record_paths(runs)
    for path in first:
        assert pq.read_table(path).num_rows == 1  # whatever is visible is whole
    assert len(first) < 8

    # A Ray worker of the killed driver can outlive it by a moment and finish its record (whole,
    # written atomically): the re-run skips every record there is and runs the rest.
    outcome = run_ablation(load_ablation(ablation_file), "tiny", results_dir=results)
    assert not outcome.failed
    assert len(outcome.skipped) >= len(first) and len(outcome.skipped) + len(outcome.finished) == 8
    assert set(first) <= set(record_paths(runs))
    assert len(read_records(runs)) == 8


def test_bad_ablation_file_fails_before_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows:\n  - {id: a, overrides: {audio.augment.pitchshift: {enabled: true}}}\n")
    result = subprocess.run([sys.executable, "-m", "clmr_ray.cli", "ablate", str(bad)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("clmr-ray: error: ")
    assert "unknown key 'audio.augment.pitchshift'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not Path(tmp_path / "results").exists()


def test_an_ablation_into_a_folder_of_another_setup_fails_before_ray(tmp_path, one_row_ablation):
    """Records of the same row at another setup (here another temperature) would be pooled with the new runs in
    one table cell: the ablation refuses before Ray starts, naming the row and the key."""
    from clmr_ray.ablation_files import expand, load_ablation
    from clmr_ray.experiment import ExperimentResult
    from clmr_ray.results import run_record, write_record

    path = tmp_path / "one.yaml"
    path.write_text(one_row_ablation("one"))
    old = expand(load_ablation(path), "tiny", extra={"pretrain.temperature": 0.3})[0]
    write_record(run_record(old.spec, ExperimentResult(metrics={"test_acc": 0.5}, encoder_keys={}), run_id=old.run_id,
                            table=old.table, row=old.row), tmp_path / "results" / "runs")
    result = subprocess.run([sys.executable, "-m", "clmr_ray.cli", "ablate", str(path), "--preset", "tiny",
                             "--results", str(tmp_path / "results")], capture_output=True, text=True, check=False,
                            env={**os.environ, "CLMR_RAY_DATA": str(tmp_path / "data")})
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith("clmr-ray: error: ") and len(line.splitlines()) == 1
    assert "one row 'audio' already holds runs of another setup (pretrain.temperature: 0.3 vs" in line
    assert not (tmp_path / "results" / "tune").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_reproduce_with_130_and_a_rerun_hint(tmp_path, stop):
    """Ctrl-C (or SIGTERM: `ray job stop`, a scheduler) during Table 1: Tune stops its trials and returns; the
    command must stop there too (no Table 2, no tables), exit 130 and say how to go on, instead of carrying on as
    if Table 1 had finished (SIGTERM: instead of Ray's native stack dump and exit 134)."""
    results = tmp_path / "results"
    driver = subprocess.Popen([sys.executable, "-m", "clmr_ray.cli", "reproduce", "--preset", "tiny", "--seeds", "0",
                               "--results", str(results), "--num-cpus", "2", "--set", "pretrain.epochs=500"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "CLMR_RAY_DATA": str(tmp_path / "data")})
    deadline, seen = time.time() + 180, []
    while not any("epoch 2/500" in line for line in seen):
        line = driver.stdout.readline()
        if not line or time.time() > deadline:
            driver.kill()
            pytest.fail("no pretraining epoch before the deadline:\n" + "".join(seen[-40:]))
        seen.append(line)
    driver.send_signal(stop)
    output = "".join(seen) + driver.communicate(timeout=120)[0]
    assert driver.returncode == 130, output[-3000:]
    assert "clmr-ray: ablation 'table1' stopped with 0/5 runs recorded" in output
    assert "run the same command again" in output
    assert "[table2]" not in output and not (results / "table1.md").exists()


def test_an_ablation_into_a_folder_it_cannot_write_fails_before_ray(tmp_path, one_row_ablation):
    path = tmp_path / "one.yaml"
    path.write_text(one_row_ablation("one"))
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    result = subprocess.run([sys.executable, "-m", "clmr_ray.cli", "ablate", str(path), "--preset", "tiny",
                             "--results", str(blocked)], capture_output=True, text=True, check=False,
                            env={**os.environ, "CLMR_RAY_DATA": str(tmp_path / "data")})
    line = result.stderr.strip()
    assert result.returncode == 2 and len(line.splitlines()) == 1, result.stderr
    assert line.startswith(f"clmr-ray: error: {blocked / 'runs'}: run records cannot be written there")
    assert not (tmp_path / "data").exists()
