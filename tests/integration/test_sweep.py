"""Sweeps on a real local Ray: Optuna trials, Parquet records, best spec, resume, early stopping."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from clmr_ray import config, results
from clmr_ray.sweep_files import load_sweep

TEMPERATURE = {"type": "float", "low": 0.1, "high": 1.0, "log": True}
NOISE = "audio.augment.noise"
TINY = {
    "name": "tiny",
    "preset": "tiny",
    "base": {"format": "audio", "pretrain.epochs": 1, "eval.epochs": 5, "audio.augment.pitch.enabled": False},
    "space": {
        "pretrain.temperature": TEMPERATURE,
        f"{NOISE}.enabled": {"type": "bool"},
        f"{NOISE}.p": {"type": "float", "low": 0.2, "high": 1.0, "when": {f"{NOISE}.enabled": True}},
    },
    "metric": "valid_map",
    "mode": "max",
    "budget": {"num_samples": 3, "max_concurrent_trials": 2, "seed": 0},
    "points_to_evaluate": [{"pretrain.temperature": 0.5, f"{NOISE}.enabled": True, f"{NOISE}.p": 0.8}],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLMR_RAY_DATA", str(path))
        yield path


@pytest.fixture(scope="module")
def local_ray(data_dir):
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def write_sweep(folder: Path, **changes) -> Path:
    path = folder / f"{changes.get('name', TINY['name'])}.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


def test_sweep_records_every_trial_and_saves_the_best_spec(tmp_path, local_ray, capsys):
    from clmr_ray.distributed.tune import run_sweep

    sweep = load_sweep(write_sweep(tmp_path))
    outcome = run_sweep(sweep, tmp_path / "sweeps")
    assert not outcome.interrupted and outcome.errors == []

    records = results.read_records(outcome.runs_dir)
    assert len(records) == 3 and records["run_id"].is_unique and set(records["status"]) == {"finished"}
    assert records["valid_map"].between(0, 1).all()
    for _, row in records.iterrows():  # the record's spec is the trial's sample
        params = json.loads(row["params"])
        assert row["spec.pretrain.temperature"] == pytest.approx(params["pretrain.temperature"])
        assert (f"{NOISE}.p" in params) == params[f"{NOISE}.enabled"]
        assert row["spec.pretrain.epochs"] == 1 and row["spec.format"] == "audio"
    first = records[records["params"].str.contains('"pretrain.temperature": 0.5')]
    assert len(first) == 1  # points_to_evaluate ran as given

    best = records.loc[records["valid_map"].idxmax()]
    spec = config.load_spec(outcome.best_spec_path)
    assert outcome.best_spec_path == tmp_path / "sweeps" / "tiny" / "best_spec.yaml"
    assert config.to_dict(spec) == json.loads(best["spec_json"])
    out = capsys.readouterr().out
    assert "3/3 done" in out and f"best of 3: {best['run_id']}" in out

    # the sweep keeps its Optuna study beside Tune's state; `analyze` reads the same folder
    from clmr_ray.cli import main

    assert (outcome.experiment_dir / "optuna.journal").is_file() and "optuna study ->" in out
    assert main(["analyze", str(outcome.experiment_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 trials in" in out and "| pretrain.temperature | float |" in out and f"{NOISE}.enabled" in out
    assert (outcome.experiment_dir / "analysis.md").is_file()


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, local_ray, capsys):
    """On URI storage (file:// here, s3:// on a cluster): Tune's state, records and best spec all there."""
    from clmr_ray.cli import main

    path = write_sweep(tmp_path, name="resumable", budget={"num_samples": 3, "max_concurrent_trials": 1, "seed": 1})
    storage = tmp_path / "sweeps"
    runs = storage / "resumable" / "runs"
    args = ["sweep", str(path), "--storage", storage.as_uri()]
    driver = subprocess.Popen([sys.executable, "-m", "clmr_ray.cli", *args, "--num-cpus", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 150
    while not list(runs.glob("*.parquet")):
        if driver.poll() is not None or time.time() > deadline:
            driver.kill()
            pytest.fail(f"the sweep ended before its first record:\n{driver.communicate()[0][-3000:]}")
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)  # Ctrl-C
    output = driver.communicate(timeout=120)[0]
    assert driver.returncode == 130, output
    # the hint, not necessarily last: trial actors' final log lines may arrive after it
    assert any("continue it with: clmr-ray sweep" in line and "--resume" in line for line in output.splitlines())
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.parquet")}
    assert 1 <= len(before) < 3

    assert main(args) == 2  # without --resume the folder is refused
    assert "pass --resume" in capsys.readouterr().err

    assert main([*args, "--resume"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.parquet")}
    assert len(after) == 3
    assert all(after[name] == mtime for name, mtime in before.items())  # finished trials untouched
    records = results.read_records(runs)
    assert records["run_id"].is_unique and records["valid_map"].notna().all()
    assert "resuming 3 trials" in capsys.readouterr().out
    assert config.load_spec(storage / "resumable" / "best_spec.yaml").pretrain.epochs == 1
    assert (storage / "resumable" / "optuna.journal").is_file()  # the study, uploaded to the URI too


def test_a_trial_whose_record_exists_reports_it_instead_of_running(tmp_path, local_ray):
    from ray import tune

    from clmr_ray.distributed.tune import trainable, trial_config

    spec = config.preset("tiny", TINY["base"])
    runs = tmp_path / "runs"
    record = {"run_id": "table1-row-s0", "valid_map": 0.75, "test_acc": 0.5, "spec_json": "{}"}
    written = results.write_record(record, runs)
    mtime = written.stat().st_mtime_ns
    cfg = trial_config(spec, runs_dir=runs, run_id="table1-row-s0", table="table1", row="row")
    grid = tune.Tuner(trainable(), param_space=cfg,
                      run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    assert grid[0].error is None and grid[0].metrics["valid_map"] == 0.75
    assert written.stat().st_mtime_ns == mtime and results.existing_run_ids(runs) == {"table1-row-s0"}


def test_asha_stops_on_per_epoch_reports_and_every_trial_keeps_a_record(tmp_path, local_ray):
    from clmr_ray.distributed.tune import run_sweep

    base = {**TINY["base"], "pretrain.epochs": 2}
    path = write_sweep(tmp_path, name="asha", base=base, space={"pretrain.temperature": TEMPERATURE},
                       points_to_evaluate=[], scheduler={"type": "asha", "grace_period": 1},
                       budget={"num_samples": 2, "max_concurrent_trials": 1, "seed": 0})
    outcome = run_sweep(load_sweep(path), tmp_path / "sweeps")
    records = results.read_records(outcome.runs_dir)
    assert len(records) == 2 and not outcome.interrupted
    finished = records[records["status"] == "finished"]
    stopped = records[records["status"] == "stopped_early"]
    assert len(finished) >= 1 and len(finished) + len(stopped) == 2
    assert finished["valid_map"].notna().all() and (finished["pretrain_audio_epochs"] == 2).all()
    assert all(math.isnan(v) for v in stopped.get("valid_map", []))
    progress = [json.loads(line) for f in (outcome.experiment_dir).glob("trial_*/result.json")
                for line in f.read_text().splitlines()]
    epochs = [r["pretrain_epoch"] for r in progress if math.isnan(r["valid_map"])]
    assert epochs and set(epochs) <= {1, 2}  # per-epoch reports reached Tune before the final one

    from clmr_ray.sweep_analysis import write_analysis

    analysis = write_analysis(outcome.experiment_dir)  # stopped trials are pruned trials of the study
    assert analysis.counts == {"finished": len(finished), "stopped early": len(stopped), "failed": 0}


BAD_SPACES = {
    "unknown_parameter": ({"pretrain.temprature": TEMPERATURE}, "pretrain.temprature"),
    "empty_space": ({}, "space: empty"),
    "unknown_augmentation": ({"audio.augment.chorus.enabled": {"type": "bool"}}, "chorus"),
}


def test_bad_sweep_files_fail_before_ray_starts(tmp_path, data_dir):
    paths = {name: str(write_sweep(tmp_path, name=name, space=space, points_to_evaluate=[]))
             for name, (space, _) in BAD_SPACES.items()}
    script = ("import json, sys\nfrom clmr_ray.cli import main\n"
              f"codes = {{n: main(['sweep', p, '--storage', {str(tmp_path / 'sweeps')!r}]) "
              f"for n, p in {paths!r}.items()}}\n"
              "print(json.dumps({'codes': codes, 'ray_imported': 'ray' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == {"codes": {name: 2 for name in BAD_SPACES}, "ray_imported": False}
    errors = done.stderr.strip().splitlines()
    assert len(errors) == len(BAD_SPACES)
    for line, (name, (_, words)) in zip(errors, BAD_SPACES.items()):
        assert line.startswith(f"clmr-ray: error: {paths[name]}: ") and words in line
    assert not (tmp_path / "sweeps").exists()
