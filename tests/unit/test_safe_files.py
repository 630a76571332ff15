"""Stored states load as data only, with their SHA-256 checked: crafted, truncated, unhashed files are refused."""

import numpy as np
import pytest
import torch

from clmr_ray.data.base import DatasetError
from clmr_ray.pretrain import numpy_rng_state, set_numpy_rng_state
from clmr_ray.safe_files import RefusedFile, load_state, recorded_sha256, save_state, sha256_of


def test_a_state_round_trips_with_its_hash(tmp_path):
    state = {"w": torch.arange(4.0), "history": [{"epoch": 1, "loss": 0.5}], "best": (1, None), "name": "x"}
    digest = save_state(state, tmp_path, "s.pt")
    assert digest == sha256_of(tmp_path / "s.pt") == recorded_sha256(tmp_path / "s.pt")
    loaded = load_state(tmp_path / "s.pt")
    assert torch.equal(loaded["w"], state["w"]) and loaded["history"] == state["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt", "s.pt.sha256"]  # no temp files left


def test_a_state_on_a_file_uri_round_trips(tmp_path):
    save_state({"w": torch.ones(3)}, (tmp_path / "bucket").as_uri(), "s.pt")
    assert torch.equal(load_state(tmp_path / "bucket" / "s.pt")["w"], torch.ones(3))


def test_the_crafted_file_is_live_but_refused_and_never_run(tmp_path, crafted_state):
    control = tmp_path / "control_marker"
    torch.load(crafted_state(tmp_path, "control.pt", control), weights_only=False)  # what loading it used to do
    assert control.exists()

    marker = tmp_path / "marker"
    path = crafted_state(tmp_path, "enc.pt", marker)
    with pytest.raises(RefusedFile) as error:
        load_state(path)
    message = str(error.value)
    assert message.startswith(f"{path}: holds more than tensors and plain data") and "\n" not in message
    assert "posix.system" in message and "nothing in it was run" in message
    assert not marker.exists()
    assert isinstance(error.value, DatasetError)  # the CLI prints it as one line


@pytest.mark.parametrize("damage, words", [
    ("truncate", "does not match the recorded"),
    ("flip", "does not match the recorded"),
    ("no_hash", "no SHA-256 recorded beside it (s.pt.sha256)"),
    ("garbage_rehashed", "not a readable torch file"),
])
def test_damaged_files_are_refused_in_one_line(tmp_path, damage, words):
    save_state({"w": torch.randn(1000)}, tmp_path, "s.pt")
    path = tmp_path / "s.pt"
    data = path.read_bytes()
    if damage == "truncate":  # half an upload
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "no_hash":
        (tmp_path / "s.pt.sha256").unlink()
    else:
        path.write_bytes(data[: len(data) // 2])
        (tmp_path / "s.pt.sha256").write_text(sha256_of(path))
    with pytest.raises(RefusedFile) as error:
        load_state(path, shown="bucket/s.pt")
    assert str(error.value).startswith("bucket/s.pt: ") and words in str(error.value)
    assert "\n" not in str(error.value)


def test_numpy_rng_state_is_plain_data_and_restores(tmp_path):
    np.random.seed(7)
    np.random.standard_normal()  # a cached Gaussian is part of the state
    save_state({"numpy_rng": numpy_rng_state()}, tmp_path, "rng.pt")
    expected = np.random.standard_normal(5)
    np.random.seed(0)
    set_numpy_rng_state(load_state(tmp_path / "rng.pt")["numpy_rng"])
    assert np.array_equal(np.random.standard_normal(5), expected)
