"""Whatever a bucket or another node wrote is data, never code: encoders fetched from <results>/encoders
and Ray Train checkpoints are refused when crafted, truncated or corrupt, and the run trains again."""

import hashlib
import json
from types import SimpleNamespace

import pytest
import torch
from ray.train import Checkpoint

from clmr_ray import config
from clmr_ray.distributed.train import RESULT_FILE, STATE_FILE, _load_state, _read_result
from clmr_ray.experiment import EncoderStore, encoder_key, run_experiment
from clmr_ray.results import run_record
from clmr_ray.safe_files import RefusedFile, hash_name, save_state

FAST = {"pretrain.epochs": 1, "eval.epochs": 3, "format": "audio",
        **{f"audio.augment.{name}.enabled": False for name in ("pitch", "filter", "noise", "gain")}}


def test_crafted_and_truncated_encoders_in_the_bucket_are_refused_and_trained_again(tmp_path, monkeypatch, crafted_state):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "data"))
    bucket = tmp_path / "results" / "encoders"
    spec = config.preset("tiny", FAST)
    key = encoder_key(spec, "audio")
    bucket.mkdir(parents=True)
    marker = tmp_path / "marker"
    crafted_state(bucket, f"{key}.pt", marker)  # with a matching hash: only weights_only stands in the way

    lines = []
    first = run_experiment(spec, store=EncoderStore(tmp_path / "node_a", shared=bucket.as_uri()), log=lines.append)
    assert not marker.exists()
    refused = [line for line in lines if line.startswith("encoder refused:")]
    assert refused and f"{key}.pt: holds more than tensors and plain data" in refused[0]
    assert first.trained == ["audio"]  # re-trained, and the bucket now holds the good encoder
    good = (bucket / f"{key}.pt").read_bytes()
    assert first.encoder_sha256 == {"audio": hashlib.sha256(good).hexdigest()}
    record = run_record(spec, first, run_id="r")
    assert json.loads(record["encoder_sha256"]) == first.encoder_sha256

    (bucket / f"{key}.pt").write_bytes(good[: len(good) // 2])  # half an upload
    lines.clear()
    second = run_experiment(spec, store=EncoderStore(tmp_path / "node_b", shared=bucket.as_uri()), log=lines.append)
    assert any("does not match the recorded" in line for line in lines if line.startswith("encoder refused:"))
    assert second.trained == ["audio"]
    assert second.encoder_sha256["audio"] == hashlib.sha256((bucket / f"{key}.pt").read_bytes()).hexdigest()

    lines.clear()
    third = run_experiment(spec, store=EncoderStore(tmp_path / "node_c", shared=bucket.as_uri()), log=lines.append)
    assert third.reused == ["audio"] and not any("refused" in line for line in lines)  # a good file still loads
    assert third.encoder_sha256 == second.encoder_sha256 and third.metrics == second.metrics


def test_a_local_encoder_without_its_hash_is_refused(tmp_path):
    store = EncoderStore(tmp_path)
    torch.save({"encoder_states": {}, "history": []}, store.path("audio-x"))
    lines = []
    assert store.load("audio-x", log=lines.append) is None
    assert lines == [(f"encoder refused: {store.path('audio-x')}: no SHA-256 recorded beside it "
                      "(audio-x.pt.sha256); not loaded")]
    assert not store.path("audio-x").exists()  # gone, so it is trained again


def test_a_crafted_state_in_a_checkpoint_folder_is_refused_and_training_starts_over(tmp_path, capsys, crafted_state):
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    marker = tmp_path / "marker"
    crafted_state(folder, STATE_FILE, marker)
    assert _load_state(Checkpoint.from_directory(str(folder))) is None
    assert not marker.exists()
    out = capsys.readouterr().out
    assert "checkpoint refused, pretraining from the first epoch:" in out and f"{STATE_FILE}: holds more" in out

    save_state({"epoch": 3}, folder, STATE_FILE)  # a good state still loads
    assert _load_state(Checkpoint.from_directory(str(folder))) == {"epoch": 3}


def test_a_crafted_result_in_the_last_checkpoint_fails_the_run_in_one_line(tmp_path, crafted_state):
    folder = tmp_path / "checkpoint_000002"
    folder.mkdir()
    marker = tmp_path / "marker"
    crafted_state(folder, RESULT_FILE, marker)
    result = SimpleNamespace(checkpoint=Checkpoint.from_directory(str(folder)), path=str(tmp_path))
    with pytest.raises(RefusedFile) as error:
        _read_result(result)
    assert not marker.exists()
    assert str(error.value).startswith(f"{folder}/{RESULT_FILE}: holds more") and "\n" not in str(error.value)

    (folder / hash_name(RESULT_FILE)).unlink()
    save_state({"encoder_states": {}, "history": [], "best_epoch": 0, "stopped_early": False, "reports": []},
               folder, RESULT_FILE)
    assert _read_result(result).path == str(tmp_path)
