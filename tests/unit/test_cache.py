import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from clmr_ray.data.base import DatasetError
from clmr_ray.data.cache import DecodeJob, decode_track, open_cache, prepare
from clmr_ray.data.folder import scan_folder
from clmr_ray.data.mtat import scan_mtat


def make_corpus(root, noise_file, seconds=0.5, rate=16000):
    """Two labels x 3 noise files at `rate` (one stereo), split 1/1/1 per label."""
    for label in ("a", "b"):
        for i in range(3):
            noise_file(
                root / label / f"{label}{i}.wav",
                seconds=seconds,
                sample_rate=rate,
                amplitude=0.5,
                seed=i + 10 * (label == "b"),
                channels=2 if i == 0 else 1,
            )
    return scan_folder(root)


def expected_audio(path, rate):
    frames, source_rate = sf.read(path, dtype="float32", always_2d=True)
    return AF.resample(torch.from_numpy(frames.mean(axis=1)), source_rate, rate).clamp(-1, 1).numpy()


def snapshot(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


def test_round_trip_resamples_and_matches_source(tmp_path, noise_file):
    listing = make_corpus(tmp_path / "src", noise_file)
    progress = []
    prepared = prepare(
        listing,
        8000,
        min_samples=1000,
        cache_root=tmp_path / "cache",
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert progress == [(i, 6) for i in range(1, 7)]
    assert not prepared.reused and prepared.path.parent == tmp_path / "cache"
    assert sorted(p.name for p in prepared.path.iterdir()) == sorted(
        ["manifest.json"]
        + [
            f"{kind}_{s}.{ext}"
            for s in ("train", "valid", "test")
            for kind, ext in (("audio", "bin"), ("index", "parquet"))
        ]
    )
    cache = open_cache(prepared.path)
    assert cache.sample_rate == 8000 and cache.label_names == ["a", "b"] and not cache.multilabel
    assert cache.manifest["counts"] == {"train": 2, "valid": 2, "test": 2}
    by_path = {t.track_id: t for t in listing.tracks}
    for name in ("train", "valid", "test"):
        split = cache.split(name)
        assert split.n_tracks == 2 and split.labels.dtype == np.int64
        for i in range(split.n_tracks):
            track = by_path[split.track_ids[i]]
            assert split.labels[i] == track.labels[0]
            audio = split.track(i)
            assert audio.dtype == np.float32 and len(audio) == 4000  # 0.5 s at 16 kHz -> 8 kHz
            np.testing.assert_allclose(audio, expected_audio(track.path, 8000), atol=0.6 / 32767)
    assert not split.audio.flags.writeable
    index = pq.read_table(prepared.path / "index_train.parquet").column_names
    assert index == ["track_id", "path", "offset", "length", "label", "source_sample_rate"]


def test_prepare_twice_reuses_without_writing(tmp_path, noise_file):
    listing = make_corpus(tmp_path / "src", noise_file)
    first = prepare(listing, 8000, min_samples=1000, cache_root=tmp_path / "cache")
    before = snapshot(tmp_path / "cache")
    again = prepare(scan_folder(tmp_path / "src"), 8000, min_samples=1000, cache_root=tmp_path / "cache")
    assert again.reused and again.path == first.path and again.manifest == first.manifest
    assert snapshot(tmp_path / "cache") == before
    # another rate, or a touched source file, is another cache
    assert prepare(listing, 4000, min_samples=1000, cache_root=tmp_path / "cache").path != first.path
    os.utime(listing.tracks[0].path, ns=(1, 1))
    assert not prepare(listing, 8000, min_samples=1000, cache_root=tmp_path / "cache").reused


def test_rejected_files_are_listed_with_reasons(tmp_path, noise_file, capsys):
    listing = make_corpus(tmp_path / "src", noise_file)
    noise_file(listing.tracks[0].path, seconds=0.05, sample_rate=16000, amplitude=0.5)  # 400 samples at 8 kHz
    sf.write(listing.tracks[1].path, np.zeros(8000, np.float32), 16000)
    listing.tracks[2].path.write_bytes(b"RIFF not really a wav")
    prepared = prepare(listing, 8000, min_samples=1000, cache_root=tmp_path / "cache")
    reasons = {r["path"]: r["reason"] for r in prepared.manifest["rejected"]}
    assert reasons[str(listing.tracks[0].path)] == "too short (400 < 1000 samples)"
    assert reasons[str(listing.tracks[1].path)].startswith("silent (peak 0.0e+00")
    assert reasons[str(listing.tracks[2].path)].startswith("undecodable (")
    assert sum(prepared.manifest["counts"].values()) == 3
    out = capsys.readouterr().out.strip()
    assert out == "rejected 3 files: 1 too short (< 1000 samples), 1 silent, 1 undecodable"

    with pytest.raises(
        DatasetError, match=r"unusable files \(1 too short, 1 silent, 1 undecodable\): 3 files"
    ) as err:
        prepare(listing, 8000, min_samples=999, cache_root=tmp_path / "cache", strict=True)
    assert "\n" not in str(err.value)
    ok = prepare(
        listing,
        8000,
        min_samples=999,
        cache_root=tmp_path / "cache",
        strict=True,
        tolerate=[t.track_id for t in listing.tracks[:3]],
    )
    assert (
        ok.manifest["counts"]["train"] + ok.manifest["counts"]["valid"] + ok.manifest["counts"]["test"] == 3
    )
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    assert [name for name in leftovers if not name.endswith(".lock")] == []  # locks stay; no half-built cache


def test_rate_pairs_without_a_small_ratio_are_rejected(tmp_path, noise_file):
    path = tmp_path / "odd.wav"
    noise_file(path, seconds=0.2, sample_rate=16001)
    result = decode_track(DecodeJob(0, str(path), 8000, "int16", 10))
    assert result.audio is None and result.kind == "odd rate" and "16001 Hz" in result.reason
    assert decode_track(DecodeJob(0, str(path), 16001, "int16", 10)).audio.size == 3200


def test_multilabel_round_trip_and_float16(tmp_path, make_mtat):
    listing = scan_mtat(make_mtat(tmp_path / "src"), n_tags=3)
    prepared = prepare(listing, 8000, min_samples=100, dtype="float16", cache_root=tmp_path / "cache")
    cache = open_cache(prepared.path)
    assert cache.multilabel and cache.label_names == ["guitar", "piano", "quiet"]
    train = cache.split("train")
    assert train.labels.dtype == np.float32 and train.labels.shape == (4, 3)
    expected = {t.track_id: t.labels for t in listing.tracks}
    for row, track_id in enumerate(train.track_ids):
        assert tuple(np.flatnonzero(train.labels[row])) == expected[track_id]
    source = sf.read(listing.tracks[0].path, dtype="float32")[0]
    np.testing.assert_allclose(train.track(0), source, atol=1e-5)  # 8 kHz source: no resampling
    assert train.audio.dtype == np.float16


def test_split_pickles_as_a_reference(tmp_path, noise_file):
    prepared = prepare(
        make_corpus(tmp_path / "src", noise_file), 8000, min_samples=1000, cache_root=tmp_path / "cache"
    )
    split = open_cache(prepared.path).split("test")
    payload = pickle.dumps(split)
    assert len(payload) < 2000  # the path, not the samples
    copy = pickle.loads(payload)
    assert isinstance(copy.audio, np.memmap) and np.array_equal(copy.track(1), split.track(1))


def test_cache_errors(tmp_path, noise_file):
    listing = make_corpus(tmp_path / "src", noise_file)
    with pytest.raises(DatasetError, match="cache dtype 'int8' is not one of int16, float16"):
        prepare(listing, 8000, min_samples=10, dtype="int8", cache_root=tmp_path)
    with pytest.raises(DatasetError, match=r"not a crop cache \(no manifest.json"):
        open_cache(tmp_path)
    cache = open_cache(prepare(listing, 8000, min_samples=10, cache_root=tmp_path / "c").path)
    with pytest.raises(DatasetError, match=r"unknown split 'val' \(valid: train, valid, test\)"):
        cache.split("val")
    for track in listing.tracks:
        track.path.write_bytes(b"")
    with pytest.raises(DatasetError, match="every file was rejected"):
        prepare(listing, 8000, min_samples=10, cache_root=tmp_path / "c")


def test_decode_progress_says_at_most_every_interval_and_always_at_the_end():
    from clmr_ray.experiment import decode_progress

    lines = []
    report = decode_progress("gtzan", lines.append, every_s=3600.0)
    for done in range(1, 1001):
        report(done, 1000)
    assert len(lines) == 1 and lines[0].startswith("gtzan: 1000/1000 files decoded (")
    every = decode_progress("gtzan", lines.append, every_s=0.0)
    every(1, 2)
    every(2, 2)
    assert lines[1:] == ["gtzan: 1/2 files decoded (0 s)", "gtzan: 2/2 files decoded (0 s)"]
