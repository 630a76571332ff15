"""A dataset root given as a URI is fetched into this node's data folder once, then scanned from there."""

import pytest

from clmr_ray.config import DataSpec
from clmr_ray.data import mirror, registry
from clmr_ray.data.base import DatasetError


def make_bucket(tmp_path, make_songs):
    return make_songs(tmp_path / "bucket" / "songs", per_label=4, seconds=0.05)


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "node-data"))
    return tmp_path / "node-data"


def test_local_root_is_left_alone(tmp_path):
    assert mirror.local_root(str(tmp_path)) == str(tmp_path)


def test_uri_root_is_mirrored_once_and_scanned_from_the_copy(tmp_path, make_songs, data_home):
    bucket = make_bucket(tmp_path, make_songs)
    uri = bucket.as_uri()
    lines = []
    copy = mirror.fetch(uri, log=lines.append)
    assert copy.parent == data_home / "mirrors" and copy.name.startswith("songs-")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*.wav")) == sorted(
        p.relative_to(bucket).as_posix() for p in bucket.rglob("*.wav"))
    assert (copy / "bass" / "bass0.wav").read_bytes() == (bucket / "bass" / "bass0.wav").read_bytes()
    assert "8 of 8 files" in lines[0] and lines[-1].startswith("  8/8 files")

    lines.clear()
    assert mirror.fetch(uri, log=lines.append) == copy and lines == []  # finished: no listing, no copy

    listing = registry.scan(DataSpec(dataset="folder", root=uri, sample_rate=8000))
    assert len(listing.tracks) == 8 and all(str(t.path).startswith(str(copy)) for t in listing.tracks)


def test_interrupted_mirror_fetches_only_what_is_missing(tmp_path, make_songs, data_home):
    bucket = make_bucket(tmp_path, make_songs)
    uri = bucket.as_uri()
    copy = mirror.fetch(uri, log=lambda _: None)
    (copy / mirror.COMPLETE).unlink()
    (copy / "bass" / "bass1.wav").unlink()
    (copy / "drums" / "drums2.wav").write_bytes(b"trunc")
    lines = []
    mirror.fetch(uri, log=lines.append)
    assert "2 of 8 files" in lines[0]
    assert (copy / "drums" / "drums2.wav").read_bytes() == (bucket / "drums" / "drums2.wav").read_bytes()
    assert (copy / mirror.COMPLETE).is_file()


@pytest.mark.parametrize("make_uri, message", [
    (lambda tmp: (tmp / "nope").as_uri(), "no such folder"),
    (lambda tmp: (tmp / "empty").as_uri(), "holds no files"),
    (lambda tmp: "nosuchscheme://bucket/gtzan", "not a usable filesystem URI"),
])
def test_bad_dataset_uri_is_one_line(tmp_path, data_home, make_uri, message):
    (tmp_path / "empty").mkdir()
    uri = make_uri(tmp_path)
    with pytest.raises(DatasetError, match=message) as info:
        mirror.fetch(uri, log=lambda _: None)
    assert uri in str(info.value) and "\n" not in str(info.value)


def test_prepare_command_takes_a_uri_and_decodes_from_the_mirror(tmp_path, make_songs, data_home, capsys):
    from clmr_ray.cli import main

    bucket = make_bucket(tmp_path, make_songs)
    assert main(["prepare", "folder", "--root", bucket.as_uri(), "--preset", "tiny", "--set",
                 "pretrain.crop_samples=200"]) == 0
    out = capsys.readouterr().out
    assert "mirroring" in out and "folder: cached 8 files" in out and str(data_home / "cache") in out
    assert main(["prepare", "folder", "--root", bucket.as_uri(), "--preset", "tiny", "--set",
                 "pretrain.crop_samples=200"]) == 0
    assert "reused cache" in capsys.readouterr().out
