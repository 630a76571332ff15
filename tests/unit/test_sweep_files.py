"""Sweep files: schema, validation (one line naming file and key), define-by-run sampling. No Ray."""

from pathlib import Path

import optuna
import pytest
import yaml

from clmr_ray import config
from clmr_ray.sweep_files import PARAM_PREFIX, SweepError, load_sweep, validation_metrics

SHIPPED = sorted((Path(__file__).parents[2] / "ablations" / "sweeps").glob("*.yaml"))

MASKS = "spectrogram.augment.time_mask"
GOOD = {
    "name": "masks",
    "preset": "tiny",
    "base": {"format": "spectrogram"},
    "space": {
        f"{MASKS}.enabled": {"type": "bool"},
        f"{MASKS}.max_fraction": {"type": "float", "low": 0.02, "high": 0.2, "when": {f"{MASKS}.enabled": True}},
        "pretrain.temperature": {"type": "categorical", "choices": [0.1, 0.5]},
        "pretrain.batch_size": {"type": "int", "low": 4, "high": 16, "step": 4},
    },
    "metric": "valid_map",
    "mode": "max",
    "budget": {"num_samples": 5, "max_concurrent_trials": 2, "seed": 3},
    "points_to_evaluate": [{f"{MASKS}.enabled": True, f"{MASKS}.max_fraction": 0.1, "pretrain.temperature": 0.5}],
}


def write(tmp_path, data, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def with_space(**space) -> dict:
    return {**GOOD, "space": space, "points_to_evaluate": []}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_sweeps_load(path):
    sweep = load_sweep(path)
    assert sweep.space and sweep.metric.startswith("valid_")
    for point in sweep.points_to_evaluate:
        sweep.spec_for(point)


def test_good_file_and_flag_overrides(tmp_path):
    path = write(tmp_path, GOOD)
    sweep = load_sweep(path, preset="demo", num_samples=9, base={"pretrain.epochs": 1})
    assert (sweep.name, sweep.preset, sweep.num_samples, sweep.max_concurrent_trials, sweep.seed) == \
        ("masks", "demo", 9, 2, 3)
    spec = sweep.spec_for({f"{MASKS}.max_fraction": 0.15, "pretrain.temperature": 0.1})
    assert spec.spectrogram.augment.time_mask.max_fraction == 0.15 and spec.pretrain.temperature == 0.1
    assert spec.pretrain.epochs == 1 and spec.format == "spectrogram" and spec.name == "masks"
    assert spec.data.sample_rate == config.preset("demo").data.sample_rate
    assert sweep.to_dict()["space"][f"{MASKS}.max_fraction"]["when"] == {f"{MASKS}.enabled": [True]}


def test_define_by_run_samples_conditional_parameters_only_when_enabled(tmp_path):
    sweep = load_sweep(write(tmp_path, GOOD))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for point in sweep.optuna_points():
        study.enqueue_trial(point)
    first = sweep.suggest(study.ask())
    assert first == {f"{MASKS}.enabled": True, f"{MASKS}.max_fraction": 0.1, "pretrain.temperature": 0.5,
                     "pretrain.batch_size": first["pretrain.batch_size"]}
    seen = [sweep.suggest(study.ask()) for _ in range(30)]
    for values in seen:
        assert (f"{MASKS}.max_fraction" in values) == values[f"{MASKS}.enabled"]
        assert values["pretrain.batch_size"] in (4, 8, 12, 16)
        sweep.spec_for(values)
    assert {v[f"{MASKS}.enabled"] for v in seen} == {True, False}
    assert all(name.startswith(PARAM_PREFIX) for name in study.trials[0].params)


@pytest.mark.parametrize("space, words", [
    ({"pretrain.temprature": {"type": "float", "low": 0.1, "high": 1.0}}, ["space.pretrain.temprature",
                                                                          "temperature"]),
    ({"spectrogram.augment.timemask.enabled": {"type": "bool"}}, ["timemask", "time_mask"]),
    ({"audio.augment.reverb_big.enabled": {"type": "bool"}}, ["reverb_big"]),
    ({"pretrain.temperature": {"type": "uniform", "low": 0.1, "high": 1.0}}, ["uniform", "categorical"]),
    ({"pretrain.temperature": {"type": "float", "low": 1.0, "high": 0.1}}, ["pretrain.temperature", "low"]),
    ({"pretrain.temperature": {"type": "float", "low": 0.1}}, ["pretrain.temperature.high"]),
    ({"pretrain.temperature": {"type": "float", "low": 0.1, "high": 1.0, "lgo": True}}, ["space.pretrain.temperature", "lgo"]),
    ({"pretrain.temperature": {"type": "categorical", "choices": []}}, ["pretrain.temperature.choices"]),
    ({"pretrain.batch_size": {"type": "float", "low": 4, "high": 16}}, ["pretrain.batch_size", "integer"]),
    ({"audio.augment.time_mask.enabled": {"type": "bool"}}, ["audio.augment.time_mask", "spectrogram"]),
    ({"scaling.num_workers": {"type": "int", "low": 1, "high": 4}}, ["scaling.num_workers", "not a hyperparameter"]),
    ({"pretrain.temperature": 0.5}, ["pretrain.temperature", "distribution"]),
])
def test_bad_parameters_fail_with_one_line_naming_the_key(tmp_path, space, words):
    message = error_of(tmp_path, with_space(**space))
    for word in words:
        assert word in message


def test_empty_space(tmp_path):
    assert "space: empty" in error_of(tmp_path, {**GOOD, "space": {}, "points_to_evaluate": []})
    assert "space: empty" in error_of(tmp_path, {k: v for k, v in GOOD.items() if k not in ("space",
                                                                                          "points_to_evaluate")})


def test_conditions_must_name_earlier_parameters(tmp_path):
    unknown = with_space(**{f"{MASKS}.max_fraction": {"type": "float", "low": 0.0, "high": 0.2,
                                                      "when": {f"{MASKS}.enabld": True}}})
    assert f"'{MASKS}.enabld' is not a parameter" in error_of(tmp_path, unknown)
    later = with_space(**{f"{MASKS}.max_fraction": {"type": "float", "low": 0.0, "high": 0.2,
                                                    "when": {f"{MASKS}.enabled": True}},
                          f"{MASKS}.enabled": {"type": "bool"}})
    assert "declare it before this one" in error_of(tmp_path, later)
    impossible = with_space(**{f"{MASKS}.enabled": {"type": "bool"},
                               f"{MASKS}.max_fraction": {"type": "float", "low": 0.0, "high": 0.2,
                                                         "when": {f"{MASKS}.enabled": "yes"}}})
    assert f"when.{MASKS}.enabled" in error_of(tmp_path, impossible)


@pytest.mark.parametrize("change, words", [
    ({"name": "bad name/x"}, ["name"]),
    ({"preset": "huge"}, ["preset", "huge"]),
    ({"base": {"pretrain.lrr": 1.0}}, ["base", "pretrain.lrr"]),
    ({"metric": "test_acc"}, ["metric", "test_acc"]),
    ({"metric": "valid_mAP"}, ["metric: 'valid_mAP' is not one of", "(did you mean 'valid_map'?)"]),
    ({"mode": "maximise"}, ["mode"]),
    ({"budget": {"num_samples": 0}}, ["budget.num_samples"]),
    ({"budget": {"samples": 3}}, ["budget", "samples", "num_samples"]),
    ({"scheduler": {"type": "hyperband"}}, ["scheduler.type", "hyperband"]),
    ({"scheduler": {"type": "asha", "grace": 1}}, ["scheduler", "grace", "grace_period"]),
    ({"scheduler": {"type": "asha", "metric": "valid_map"}}, ["scheduler.metric", "pretrain_valid_loss", "every"]),
    ({"points_to_evaluate": [{"pretrain.temperature": 0.3}]}, ["points_to_evaluate[0].pretrain.temperature"]),
    ({"points_to_evaluate": [{"pretrain.lr": 0.1}]}, ["points_to_evaluate[0]", "pretrain.lr"]),
    ({"points_to_evaluate": [{f"{MASKS}.enabled": False, f"{MASKS}.max_fraction": 0.1}]}, ["never used"]),
    ({"spaces": {}}, ["spaces", "space"]),
])
def test_bad_top_level_fields(tmp_path, change, words):
    message = error_of(tmp_path, {**GOOD, **change})
    for word in words:
        assert word in message


def test_every_recorded_validation_metric_can_be_tuned(tmp_path):
    metrics = validation_metrics()
    assert {"valid_map", "valid_acc", "valid_crop_map", "valid_pr_auc"} <= set(metrics)
    for metric in metrics:
        assert load_sweep(write(tmp_path, {**GOOD, "metric": metric})).metric == metric


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(config.SpecError, match="no such file"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: [unclosed\n")
    with pytest.raises(config.SpecError, match="not valid YAML"):
        load_sweep(bad)


def test_cli_reports_a_bad_sweep_file_in_one_line(tmp_path, capsys):
    from clmr_ray.cli import main

    path = write(tmp_path, with_space(**{"spectrogram.augment.timemask.enabled": {"type": "bool"}}))
    storage = tmp_path / "storage"
    assert main(["sweep", str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clmr-ray: error:") and "timemask" in err and str(path) in err and "\n" not in err
    assert not storage.exists()  # stopped before any sweep folder or Ray
