"""One experiment through the orchestration (and the CLI): data, pretraining, encoder reuse, evaluation."""

from clmr_ray import config, experiment
from clmr_ray.cli import main
from clmr_ray.experiment import EncoderStore, encoder_key, pretrain_units, run_experiment

FAST = {"pretrain.epochs": 1, "eval.epochs": 5, "audio.augment.pitch.enabled": False}


def test_both_reuses_single_format_encoders_also_through_shared_storage(tmp_path, monkeypatch):
    """Two stores that share nothing on disk (two nodes) but a storage URI: B reuses what A trained."""
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path))
    bucket = (tmp_path / "bucket" / "encoders").as_uri()
    node_a, node_b = EncoderStore(tmp_path / "a", shared=bucket), EncoderStore(tmp_path / "b", shared=bucket)
    audio = config.preset("tiny", {**FAST, "format": "audio"})
    first = run_experiment(audio, store=node_a, log=lambda *_: None)
    assert first.trained == ["audio"] and first.reused == []
    assert 0.0 <= first.metrics["test_acc"] <= 1.0
    key = first.encoder_keys["audio"]
    assert (tmp_path / "bucket" / "encoders" / f"{key}.pt").read_bytes() == node_a.path(key).read_bytes()

    both = config.with_overrides(audio, {"format": "both", "eval.epochs": 3})
    second = run_experiment(both, store=node_b, log=lambda *_: None)
    assert second.reused == ["audio"] and second.trained == ["spectrogram"]
    assert second.encoder_keys["audio"] == key and node_b.path(key).is_file()
    assert second.metrics["feature_dim"] == 1024
    assert EncoderStore(tmp_path / "c", shared=bucket).load("audio-unknown") is None


def test_encoder_key_ignores_eval_scaling_and_paths():
    spec = config.preset("tiny")
    same = config.with_overrides(spec, {"eval.head": "mlp", "scaling.num_workers": 2, "data.root": "/x",
                                        "spectrogram.mel.n_mels": 16})
    assert encoder_key(same, "audio") == encoder_key(spec, "audio")
    assert encoder_key(config.with_overrides(spec, {"audio.augment.noise.enabled": False}), "audio") != \
        encoder_key(spec, "audio")
    assert encoder_key(config.with_overrides(spec, {"seed": 1}), "audio") != encoder_key(spec, "audio")
    cross = config.with_overrides(spec, {"format": "both", "pretrain.objective": "cross_format"})
    assert pretrain_units(cross) == ("both",)


def test_run_command_prints_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path))
    args = ["run", "--preset", "tiny", "--serial", "--set", "pretrain.epochs=1", "--set", "eval.epochs=3",
            "--set", "format=spectrogram"]
    assert main(args) == 0
    assert "trained: spectrogram" in capsys.readouterr().out
    assert main(args) == 0
    assert "reused: spectrogram" in capsys.readouterr().out


def test_missing_gtzan_folder_fails_before_training(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["run", "--preset", "tiny", "--serial", "--set", "data.dataset=gtzan",
                 "--set", f"data.root={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clmr-ray: error:") and str(missing) in err and "\n" not in err


def test_encoders_of_an_older_training_code_are_not_reused(monkeypatch):
    spec = config.preset("tiny")
    current = encoder_key(spec, "audio")
    monkeypatch.setattr(experiment, "TRAINING_CODE_VERSION", experiment.TRAINING_CODE_VERSION + 1)
    assert encoder_key(spec, "audio") != current


def test_a_reused_encoder_is_probed_on_stored_features_bit_for_bit(tmp_path, monkeypatch):
    """The first run trains (no features kept), the second reuses the encoder (extracts, keeps its
    features), the third loads them: the same metrics and predictions as the second, to the bit."""
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path))
    store = EncoderStore(tmp_path / "encoders")
    spec = config.preset("tiny", {**FAST, "format": "audio"})
    first = run_experiment(spec, store=store, log=lambda *_: None)
    assert first.trained == ["audio"] and not (tmp_path / "features").exists()
    second = run_experiment(spec, store=store, log=lambda *_: None)
    assert second.reused == ["audio"] and second.features_reused == []
    assert len(list((tmp_path / "features").glob("audio-*.pt"))) == 1
    logged = []
    third = run_experiment(spec, store=store, log=logged.append)
    assert third.features_reused == ["audio"] and any("audio features: reused from" in line for line in logged)
    assert third.metrics == second.metrics == first.metrics
    for split in ("valid", "test"):
        assert (third.predictions[split].scores == second.predictions[split].scores).all()

    probe_only = config.with_overrides(spec, {"eval.head": "mlp"})  # another probe on the same features
    assert run_experiment(probe_only, store=store, log=lambda *_: None).features_reused == ["audio"]


def test_features_that_cannot_be_kept_cost_the_run_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path))
    store = EncoderStore(tmp_path / "encoders")
    spec = config.preset("tiny", {**FAST, "format": "audio"})
    first = run_experiment(spec, store=store, log=lambda *_: None)
    (tmp_path / "features").write_text("a file where the folder would go")
    logged = []
    again = run_experiment(spec, store=store, log=logged.append)
    assert again.metrics == first.metrics and again.features_reused == []
    assert any("audio features not kept" in line for line in logged)


def test_run_records_of_one_setup_share_a_row_and_other_setups_get_their_own(tmp_path, monkeypatch, capsys):
    """`clmr-ray run --results` records: the seeds of one setup pool in one row of table "run"; a run with
    another --set value lands in a row of its own, so `tables` averages seeds, never setups."""
    import pandas as pd

    from clmr_ray.results import read_records
    from clmr_ray.tables import write_tables

    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "data"))
    base = ["run", "--preset", "tiny", "--serial", "--set", "pretrain.epochs=1", "--set", "eval.epochs=3",
            "--set", "format=spectrogram", "--results", str(tmp_path / "results")]
    for extra in (["--set", "seed=0"], ["--set", "seed=1"], ["--set", "pretrain.temperature=0.3"]):
        assert main([*base, *extra]) == 0
    records = read_records(tmp_path / "results" / "runs")
    assert sorted(records.groupby("row").size()) == [1, 2]
    table = write_tables(records, tmp_path / "tables")["run"]["parquet"]
    assert sorted(pd.read_parquet(table)["n"]) == [1, 2]


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    driver = subprocess.Popen([sys.executable, "-m", "clmr_ray.cli", "run", "--preset", "tiny", "--serial",
                               "--set", "pretrain.epochs=500"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "CLMR_RAY_DATA": str(tmp_path)})
    deadline, seen = time.time() + 120, []
    while not any("epoch=2" in line for line in seen):
        line = driver.stdout.readline()
        assert line and time.time() < deadline, "".join(seen[-30:])
        seen.append(line)
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=60)[0]
    assert driver.returncode == 130 and output.strip().splitlines()[-1] == "clmr-ray: interrupted", output[-2000:]
    assert not list((tmp_path / "encoders").glob("*.pt"))  # no partial encoder
