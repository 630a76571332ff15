import dataclasses

import pytest

from clmr_ray import config
from clmr_ray.config import ExperimentSpec, SpecError


def test_defaults_match_the_paper():
    spec = ExperimentSpec()
    assert spec.pretrain.temperature == 0.5
    assert spec.pretrain.weight_decay == 1e-6
    assert spec.audio.augment.gain.gain_db == (-6.0, 0.0)
    assert spec.audio.augment.pitch.semitones == (-5, 5)
    assert spec.spectrogram.encoder.name == "resnet18"
    assert set(spec.spectrogram.augment.enabled_names()) == {"crop", "noise_mix", "freq_mask", "time_mask"}
    assert set(spec.audio.augment.enabled_names()) == {"crop", "noise", "gain", "filter", "pitch"}


def test_round_trip_through_dict():
    spec = config.preset("tiny")
    again = config.from_dict(ExperimentSpec, config.to_dict(spec))
    assert again == spec
    assert config.spec_hash(again) == config.spec_hash(spec)


def test_hash_ignores_dataset_path_but_not_hyperparameters():
    spec = config.preset("tiny")
    moved = config.with_overrides(spec, {"data.root": "/elsewhere"})
    changed = config.with_overrides(spec, {"pretrain.temperature": 0.1})
    assert config.spec_hash(moved) == config.spec_hash(spec)
    assert config.spec_hash(changed) != config.spec_hash(spec)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pretrain": {"temprature": 0.1}}, "unknown key 'pretrain.temprature' (did you mean 'temperature'?)"),
        ({"audio": {"augment": {"pitchshift": {"enabled": True}}}}, "unknown key 'audio.augment.pitchshift'"),
        ({"format": "audi"}, "format: 'audi' is not one of audio, spectrogram, both (did you mean 'audio'?)"),
        ({"pretrain": {"epochs": "ten"}}, "pretrain.epochs: expected an integer, got 'ten'"),
        ({"audio": {"augment": {"noise": {"p": 1.5}}}}, "audio.augment.noise.p: probability must be in [0, 1]"),
        ({"audio": {"augment": {"gain": {"gain_db": [0, -6]}}}}, "has min > max"),
        ({"audio": {"augment": {"time_mask": {"enabled": True}}}}, "audio.augment.time_mask: masks act on spectrograms"),
        ({"pretrain": {"batch_size": 1}}, "NT-Xent needs at least 2"),
        ({"pretrain": {"objective": "cross_format"}}, "set format: both"),
        ({"data": {"dataset": "gtzann"}}, "did you mean 'gtzan'"),
        ({"audio": {"augment": {"pitch": {"semitones": [-5, 14]}}}}, "audio.augment.pitch.semitones: an octave either"),
        ({"pretrain": {"epochs": -3}}, "pretrain.epochs: must be >= 1, got -3"),
        ({"eval": {"epochs": 0}}, "eval.epochs: must be >= 1, got 0"),
        ({"eval": {"early_stop_patience": 0}}, "eval.early_stop_patience: must be >= 1, got 0"),
        ({"pretrain": {"projection_dim": 0}}, "pretrain.projection_dim: must be >= 1, got 0"),
        ({"pretrain": {"val_every": -1}}, "pretrain.val_every: must be >= 0, got -1"),
        ({"seed": -1}, "seed: must be >= 0, got -1"),
        ({"data": {"split_seed": -2}}, "data.split_seed: must be >= 0, got -2"),
        ({"data": {"synthetic": {"seed": -1}}}, "data.synthetic.seed: must be >= 0, got -1"),
        ({"data": {"synthetic": {"tracks_per_label": -5}}}, "data.synthetic.tracks_per_label: must be >= 1, got -5"),
        ({"pretrain_data": {"synthetic": {"seconds": 0}}}, "pretrain_data.synthetic.seconds: must be > 0, got 0.0"),
    ],
)
def test_bad_specs_fail_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(SpecError) as info:
        config.from_dict(ExperimentSpec, config.merge(config.to_dict(ExperimentSpec()), overrides))
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("pretrain:\n  lr: [1e-3\n")
    with pytest.raises(SpecError, match="exp.yaml: line"):
        config.load_spec(bad)
    bad.write_text("pretrain:\n  epochz: 3\n")
    with pytest.raises(SpecError, match=r"exp.yaml: unknown key 'pretrain.epochz'"):
        config.load_spec(bad)
    with pytest.raises(SpecError, match="no such file"):
        config.load_spec(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, kind", [("- pretrain.lr: 0.1\n", "a list"), ("pretrain\n", "a string")])
def test_a_config_file_must_hold_a_mapping(tmp_path, text, kind):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    for load in (config.load_spec, config.load_overrides):
        with pytest.raises(SpecError) as info:
            load(path)
        assert str(info.value) == f"{path}: expected a mapping of keys at the top level, got {kind}"


def test_config_file_overrides_name_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("pretrain.lr: 0.01\npretrain:\n  epochs: 3\n")
    assert config.load_overrides(path) == {"pretrain": {"lr": 0.01, "epochs": 3}}
    path.write_text("pretrain:\n  temprature: 0.1\n")
    with pytest.raises(SpecError) as info:
        config.load_overrides(path)
    assert str(info.value) == f"{path}: unknown key 'pretrain.temprature' (did you mean 'temperature'?)"
    path.write_text("eval.epochs: ten\n")
    with pytest.raises(SpecError, match=r"exp.yaml: eval.epochs: expected an integer, got 'ten'$"):
        config.load_overrides(path)
    path.write_text("pretrain.objective: cross_format\n")  # valid once --set format=both joins it
    assert config.preset("tiny", config.merge(config.load_overrides(path), {"format": "both"})).format == "both"


def test_dotted_overrides_and_presets():
    spec = config.preset("tiny", {"pretrain.lr": 1e-2, "audio.augment.pitch.enabled": False})
    assert spec.pretrain.lr == 1e-2
    assert not spec.audio.augment.pitch.enabled
    assert spec.data.sample_rate == 8000
    with pytest.raises(SpecError, match="unknown preset 'tinny' \\(did you mean 'tiny'\\?\\)"):
        config.preset("tinny")


def test_every_preset_builds():
    for name in config.PRESETS:
        assert dataclasses.is_dataclass(config.preset(name))
