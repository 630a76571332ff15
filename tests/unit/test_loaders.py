import shutil
from collections import Counter

import numpy as np
import pytest

from clmr_ray.config import DataSpec, SyntheticSpec, spec_hash
from clmr_ray.data.base import DatasetError
from clmr_ray.data.cache import prepare
from clmr_ray.data.folder import scan_folder, split_counts
from clmr_ray.data.gtzan import GENRES, scan_gtzan
from clmr_ray.data.mtat import scan_mtat
from clmr_ray.data.registry import scan

# ------------------------------------------------------------------------------- GTZAN


def test_gtzan_filtered_split_counts_and_formats(gtzan_tree):
    listing = scan_gtzan(gtzan_tree)
    assert listing.counts() == {"train": 443, "valid": 197, "test": 290}
    assert listing.label_names == list(GENRES) and not listing.multilabel
    suffixes = Counter(t.path.suffix for t in listing.tracks)
    assert suffixes[".au"] > 0 and suffixes[".wav"] > 0
    blues = next(t for t in listing.tracks if t.track_id == "blues.00029")
    assert blues.split == "train" and blues.labels == (0,)


@pytest.mark.parametrize("parent", ["", "genres", "genres_original"])
def test_gtzan_accepts_each_parent_folder(gtzan_tree, tmp_path, parent):
    shutil.copytree(gtzan_tree / "genres_original", tmp_path / parent, dirs_exist_ok=True)
    assert len(scan_gtzan(tmp_path).tracks) == 930


def test_gtzan_missing_root_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match=r"GTZAN folder .*nowhere does not exist") as err:
        scan_gtzan(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="has no genre folders"):
        scan_gtzan(tmp_path)


def test_gtzan_missing_files_one_error(gtzan_tree, tmp_path):
    root = tmp_path / "g"
    shutil.copytree(gtzan_tree, root)
    gone = sorted((root / "genres_original" / "rock").iterdir())[:3]
    for path in gone:
        path.unlink()
    with pytest.raises(DatasetError, match="3 files") as err:
        scan_gtzan(root)
    message = str(err.value)
    assert "\n" not in message and gone[0].stem in message


def test_gtzan_corrupt_file_fails_strict_prepare(gtzan_tree, tmp_path):
    root = tmp_path / "g"
    shutil.copytree(gtzan_tree, root)
    listing = scan_gtzan(root)
    bad = next(t.path for t in listing.tracks if t.track_id == "disco.00010")
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    listing.tracks = [t for t in listing.tracks if t.track_id.startswith(("disco", "jazz"))]
    with pytest.raises(DatasetError, match="1 undecodable") as err:
        prepare(listing, 8000, min_samples=100, cache_root=tmp_path / "cache", strict=True)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"]  # no half-built cache left
    assert {t.path.suffix for t in listing.tracks} == {".au", ".wav"}
    lenient = prepare(listing, 8000, min_samples=100, cache_root=tmp_path / "cache")
    assert sum(lenient.manifest["counts"].values()) == len(listing.tracks) - 1  # .au and .wav decode


# ------------------------------------------------------------------------------ folder


def make_folder(root, noise_file, per_label=(10, 7, 3)):
    for label, n in zip(("bass", "drums", "voice"), per_label):
        for i in range(n):
            noise_file(root / label / f"{label}{i:02d}.{'wav' if i % 2 else 'flac'}", seed=i)
    return root


def test_folder_stratified_split_is_seeded_and_complete(tmp_path, noise_file):
    root = make_folder(tmp_path, noise_file)
    a, b, c = (
        scan_folder(root, split_seed=0),
        scan_folder(root, split_seed=0),
        scan_folder(root, split_seed=1),
    )
    assert a.tracks == b.tracks and a.tracks != c.tracks
    assert a.label_names == ["bass", "drums", "voice"] and len(a.tracks) == 20
    assert len({t.path for t in a.tracks}) == 20
    for label, n in enumerate((10, 7, 3)):
        got = Counter(t.split for t in a.tracks if t.labels == (label,))
        assert got == {k: v for k, v in split_counts(n).items() if v}
    assert split_counts(100) == {"train": 50, "valid": 20, "test": 30}


def test_folder_split_file_is_honoured(tmp_path, noise_file):
    root = make_folder(tmp_path, noise_file, per_label=(2, 1, 1))
    (root / "split.csv").write_text(
        "path,split\nbass/bass00.flac,test\nbass/bass01.wav,train\ndrums/drums00.flac,valid\nvoice/voice00.flac,train\n"
    )
    listing = scan_folder(root)
    assert {t.track_id: t.split for t in listing.tracks} == {
        "bass/bass00.flac": "test",
        "bass/bass01.wav": "train",
        "drums/drums00.flac": "valid",
        "voice/voice00.flac": "train",
    }


@pytest.mark.parametrize(
    "rows, message",
    [
        ("bass/bass00.flac,training\n", r"split.csv:2: unknown split 'training'"),
        ("bass/bass00.flac,train\nbass/gone.wav,test\n", r"do not exist: 1 file \(.*gone.wav\)"),
        ("bass00.flac,train\n", "must be <label>/<file>"),
    ],
)
def test_folder_bad_split_file(tmp_path, noise_file, rows, message):
    root = make_folder(tmp_path, noise_file, per_label=(2, 1, 1))
    (root / "split.csv").write_text("path,split\n" + rows)
    with pytest.raises(DatasetError, match=message) as err:
        scan_folder(root)
    assert "\n" not in str(err.value)


def test_folder_missing_or_empty(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty_label").mkdir()
    with pytest.raises(DatasetError, match="no audio files"):
        scan_folder(tmp_path)


# -------------------------------------------------------------------------------- MTAT


def test_mtat_top_tags_and_folder_splits(tmp_path, make_mtat):
    listing = scan_mtat(make_mtat(tmp_path), n_tags=3)
    assert listing.multilabel and listing.label_names == ["guitar", "piano", "quiet"]
    by_id = {t.track_id: t for t in listing.tracks}
    assert {i: by_id[i].split for i in by_id} == {
        "0": "train",
        "1": "train",
        "2": "train",
        "3": "train",
        "5": "valid",
        "6": "test",
        "7": "test",
    }  # clip 4 (valid, no top tag) dropped; clip 2 (train, no top tag) kept
    assert by_id["2"].labels == () and by_id["1"].labels == (0, 1) and by_id["7"].labels == (2,)
    # fewer tags in the file than asked, and a tag nobody has, give fewer labels
    assert scan_mtat(tmp_path, n_tags=50).label_names == ["guitar", "piano", "quiet", "rock"]


def test_mtat_errors(tmp_path, make_mtat):
    with pytest.raises(DatasetError, match="MagnaTagATune folder .* does not exist"):
        scan_mtat(tmp_path / "nope")
    with pytest.raises(DatasetError, match="annotations_final.csv: no such file"):
        scan_mtat(tmp_path)
    make_mtat(tmp_path)
    next((tmp_path / "e").iterdir()).unlink()
    with pytest.raises(DatasetError, match=r"incomplete, missing: 1 file"):
        scan_mtat(tmp_path)


# ---------------------------------------------------------------------------- registry


def test_registry_errors():
    with pytest.raises(DatasetError, match="needs its folder: pass --root"):
        scan(DataSpec(dataset="gtzan"))
    with pytest.raises(DatasetError, match=r"unknown dataset 'gtzn' \(valid: synthetic, "):
        scan(DataSpec(dataset="gtzn"))


def test_registry_real_datasets(gtzan_tree, tmp_path, noise_file, make_mtat):
    assert len(scan(DataSpec(dataset="gtzan", root=str(gtzan_tree))).tracks) == 930
    make_folder(tmp_path / "f", noise_file)
    assert scan(DataSpec(dataset="folder", root=str(tmp_path / "f"), split_seed=3)).name == "folder"
    make_mtat(tmp_path / "m")
    assert scan(DataSpec(dataset="mtat", root=str(tmp_path / "m"))).multilabel


def test_registry_generates_synthetic_corpora_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path))
    small = SyntheticSpec(tracks_per_label=3, seconds=1.0)
    genres = scan(DataSpec(dataset="synthetic", sample_rate=8000, synthetic=small))
    assert genres.name == "synthetic" and len(genres.label_names) == 10
    assert genres.counts() == {"train": 10, "valid": 10, "test": 10}
    assert genres.root == tmp_path / f"synthetic-8000hz-{spec_hash(small)}"
    stamp = {p: p.stat().st_mtime_ns for p in genres.root.rglob("*")}
    again = scan(DataSpec(dataset="synthetic", sample_rate=8000, synthetic=small))
    assert (
        again.tracks == genres.tracks and {p: p.stat().st_mtime_ns for p in genres.root.rglob("*")} == stamp
    )
    tags = scan(
        DataSpec(dataset="synthetic_tags", sample_rate=8000, synthetic=small, root=str(tmp_path / "t"))
    )
    assert tags.name == "synthetic_tags" and tags.multilabel and tags.root == tmp_path / "t"
