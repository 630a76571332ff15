"""`clmr-ray analyze` on a hand-built sweep folder whose records carry one planted effect."""

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from clmr_ray import results
from clmr_ray.cli import main
from clmr_ray.sweep_analysis import JOURNAL, read_sweep_folder, write_analysis
from clmr_ray.sweep_files import sweep_from_dict

AUG = "audio.augment"
PLANTED = f"{AUG}.gain.enabled"  # the only parameter that moves the metric
TOGGLES = [f"{AUG}.noise.enabled", PLANTED, f"{AUG}.filter.enabled"]
PAPER = {f"{AUG}.noise.enabled": True, f"{AUG}.noise.p": 0.5, PLANTED: True, f"{AUG}.filter.enabled": True,
         "pretrain.temperature": 0.5}
SWEEP = {
    "name": "planted", "preset": "tiny", "base": {"format": "audio"},
    "space": {
        f"{AUG}.noise.enabled": {"type": "bool"},
        f"{AUG}.noise.p": {"type": "float", "low": 0.2, "high": 1.0, "when": {f"{AUG}.noise.enabled": True}},
        PLANTED: {"type": "bool"},
        f"{AUG}.filter.enabled": {"type": "bool"},
        "pretrain.temperature": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
    },
    "metric": "valid_map", "mode": "max", "budget": {"num_samples": 20, "max_concurrent_trials": 1, "seed": 0},
    "points_to_evaluate": [PAPER],
}


def record(i: int, params: dict, valid_map: float, status: str = "finished") -> dict:
    effective = {f"{AUG}.noise.p": 0.8, **params}  # 0.8: the base spec's value when noise is off
    return {"run_id": f"planted-{i:02d}", "sweep": "planted", "status": status,
            "created_at": f"2026-01-01T00:{i:02d}:00+00:00", "time_total_s": 30.0,
            "params": json.dumps(params, sort_keys=True), "valid_map": valid_map,
            "test_acc": valid_map - 0.1 if not math.isnan(valid_map) else valid_map,
            **{f"spec.{k}": v for k, v in effective.items()}}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """16 finished trials: every on/off combination of the three toggles twice, random temperature
    and noise.p; valid_map = 0.4 + 0.2 * gain + noise. Plus two stopped and one failed trial."""
    folder = tmp_path_factory.mktemp("sweeps") / "planted"
    folder.mkdir()
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep_from_dict(SWEEP).to_dict(), sort_keys=False))
    rng = np.random.default_rng(0)
    runs = folder / "runs"
    combos = [dict(zip(TOGGLES, on)) for on in itertools.product([True, False], repeat=3)] * 2
    for i, toggles in enumerate(combos):
        params = {**toggles, "pretrain.temperature": float(np.exp(rng.uniform(np.log(0.05), 0.0)))}
        if toggles[f"{AUG}.noise.enabled"]:
            params[f"{AUG}.noise.p"] = float(rng.uniform(0.2, 1.0))
        if i == 0:
            params = dict(PAPER)  # the paper's setting ran first, as points_to_evaluate does
        results.write_record(record(i, params, 0.4 + 0.2 * params[PLANTED] + rng.normal(0, 0.02)), runs)
    base = {t: False for t in TOGGLES} | {"pretrain.temperature": 0.2}
    results.write_record(record(16, base, math.nan, status="stopped_early"), runs)
    results.write_record(record(17, base, math.nan, status="stopped_early"), runs)
    results.write_record(record(18, base, math.nan), runs)  # finished without its metric
    return folder


def test_the_planted_toggle_ranks_first_and_only_its_interval_excludes_zero(sweep_dir, tmp_path):
    analysis = write_analysis(sweep_dir, out=tmp_path)
    table = analysis.parameters
    assert analysis.counts == {"finished": 16, "stopped early": 2, "failed": 1}
    assert table["fanova"].idxmax() == PLANTED and table["ped_anova"].idxmax() == PLANTED
    assert math.isnan(table.loc[f"{AUG}.noise.p", "fanova"])  # conditional: not in every finished trial
    assert table.loc[PLANTED, "ci_low"] > 0.15 and table.loc[PLANTED, "ci_high"] < 0.25
    for other in (f"{AUG}.noise.enabled", f"{AUG}.filter.enabled"):
        assert table.loc[other, "ci_low"] < 0 < table.loc[other, "ci_high"]
    assert (table.loc[TOGGLES, ["n_on", "n_off"]] == 8).all().all()
    assert analysis.reference_source == "first points_to_evaluate"
    assert analysis.reference_run["run_id"] == "planted-00" and analysis.best[f"spec.{PLANTED}"]

    names = {p.name for p in analysis.files}
    assert names == {JOURNAL, "analysis.md", "analysis.csv", "analysis_importance.png",
                     "analysis_slice_pretrain.temperature.png", f"analysis_slice_{AUG}.noise.p.png"}
    text = (tmp_path / "analysis.md").read_text()
    assert f"| {PLANTED} | 8 / 8 |" in text and "| helps |" in text and "planted-00" in text
    assert text.count("no clear effect") == 2
    csv = pd.read_csv(tmp_path / "analysis.csv", index_col="parameter")
    assert csv.loc[PLANTED, "reference"] == "on" and set(csv.index) == set(SWEEP["space"])

    storage = JournalStorage(JournalFileBackend(str(tmp_path / JOURNAL)))
    study = optuna.load_study(study_name="planted", storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == 19 and states.count(TrialState.PRUNED) == 2 and states.count(TrialState.FAIL) == 1
    assert study.best_trial.params[PLANTED] is True and study.best_trial.user_attrs["run_id"].startswith("planted-")
    assert study.metric_names == ["valid_map"]


def test_analyze_reads_a_file_uri_and_another_metric(sweep_dir, capsys):
    assert main(["analyze", sweep_dir.as_uri(), "--metric", "test_acc"]) == 0
    out = capsys.readouterr().out
    assert "metric test_acc (higher is better)" in out and f"| {PLANTED} | 8 / 8 |" in out
    assert (sweep_dir / "analysis.md").is_file() and (sweep_dir / JOURNAL).is_file()
    study = optuna.load_study(study_name="planted", storage=JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL))))
    assert study.metric_names == ["valid_map"]  # the journal is the sweep's own study, whatever --metric


def test_bad_inputs_are_one_line_errors(sweep_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "sweep.yaml").write_text((sweep_dir / "sweep.yaml").read_text())
    cases = {
        str(tmp_path / "missing"): ["missing", "no such sweep folder"],
        str(tmp_path): ["no sweep.yaml"],
        str(empty): ["runs", "no trial records"],
    }
    for folder, words in cases.items():
        assert main(["analyze", folder]) == 2
        err = capsys.readouterr().err
        assert err.startswith("clmr-ray: error: ") and err.count("\n") == 1
        assert all(word in err for word in words), err
    assert main(["analyze", str(sweep_dir), "--metric", "valid_mAP"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metric valid_mAP: not a metric" in err and "valid_map" in err


def test_reading_a_sweep_folder_keeps_the_trials_in_finishing_order(sweep_dir):
    found = read_sweep_folder(sweep_dir)
    assert found.sweep.name == "planted" and list(found.records["run_id"]) == sorted(found.records["run_id"])


def test_analyze_never_imports_ray(sweep_dir, tmp_path):
    code = ("import sys; from clmr_ray.cli import main; "
            f"assert main(['analyze', {str(sweep_dir)!r}, '--out', {str(tmp_path)!r}]) == 0; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert (tmp_path / "analysis.md").is_file()
