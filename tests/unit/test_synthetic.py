"""The synthetic genre and tag corpora: real files on disk, read back with soundfile and the
real loaders."""

from __future__ import annotations

import csv
import importlib.util
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clmr_ray.config import SyntheticSpec
from clmr_ray.data.base import DatasetError
from clmr_ray.data.folder import scan_folder, split_counts
from clmr_ray.data.mtat import scan_mtat
from clmr_ray.data.synthetic import (
    GENRES,
    PEAK,
    TAGS,
    TrackJob,
    _encode_genre,
    generate_genres,
    generate_tags,
    render_genre_track,
)

RATE = 8000
SMALL = SyntheticSpec(seed=3, tracks_per_label=12, seconds=4.0)
TINY = SyntheticSpec(seed=5, tracks_per_label=2, seconds=1.5)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate_genres(tmp_path_factory.mktemp("synthetic") / "genres", SMALL, RATE)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    a = _tree(generate_genres(tmp_path / "a", TINY, RATE))
    b = _tree(generate_genres(tmp_path / "b", TINY, RATE, map_fn=ThreadPoolExecutor(2).map))
    assert a == b
    assert len(a) == 10 * TINY.tracks_per_label + 2  # + split.csv, corpus.json
    other = _tree(generate_genres(tmp_path / "c", SyntheticSpec(seed=6, tracks_per_label=2, seconds=1.5), RATE))
    assert a["blues/blues.00000.wav"] != other["blues/blues.00000.wav"]


def test_track_jobs_pickle_for_a_ray_map():
    job = TrackJob(0, 1, 2, RATE, 1.0)
    assert pickle.loads(pickle.dumps(_encode_genre))(pickle.loads(pickle.dumps(job))) == _encode_genre(job)


def test_layout_and_stratified_split(corpus):
    assert sorted(p.name for p in corpus.iterdir() if p.is_dir()) == sorted(GENRES)
    assert (corpus / "blues" / "blues.00000.wav").is_file()
    with open(corpus / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "split"]
    assert len(rows) == 10 * SMALL.tracks_per_label
    for genre in GENRES:
        splits = [r["split"] for r in rows if r["path"].startswith(f"{genre}/")]
        assert {s: splits.count(s) for s in set(splits)} == split_counts(SMALL.tracks_per_label)
    listing = scan_folder(corpus, name="synthetic")  # the real loader reads it back
    assert listing.label_names == sorted(GENRES)
    assert listing.counts() == {"train": 60, "valid": 20, "test": 40}


def test_wav_files_have_the_asked_rate_and_length(corpus):
    info = sf.info(corpus / "jazz" / "jazz.00011.wav")
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (RATE, 4 * RATE, 1, "PCM_16")
    audio, _ = sf.read(corpus / "metal" / "metal.00004.wav")
    assert 0 < np.abs(audio).max() <= PEAK + 1e-4


def test_nuisances_vary_within_a_genre(corpus):
    rms_db = [20 * np.log10(np.sqrt(np.mean(sf.read(corpus / "pop" / f"pop.{i:05d}.wav")[0] ** 2)))
              for i in range(SMALL.tracks_per_label)]
    assert np.ptp(rms_db) > 6.0  # gain is drawn in -20..0 dB whatever the genre


def test_second_call_changes_nothing(corpus):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}
    assert generate_genres(corpus, SMALL, RATE) == corpus
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == before


def test_a_lost_file_is_regenerated_identically(tmp_path):
    root = generate_genres(tmp_path / "g", TINY, RATE)
    lost = root / "reggae" / "reggae.00001.wav"
    original = lost.read_bytes()
    lost.unlink()
    generate_genres(root, TINY, RATE)
    assert lost.read_bytes() == original
    assert not list(root.rglob(".*tmp*"))


def test_other_parameters_in_the_same_folder_is_a_one_line_error(corpus):
    with pytest.raises(DatasetError, match="holds another synthetic corpus") as err:
        generate_genres(corpus, SyntheticSpec(seed=4, tracks_per_label=12, seconds=4.0), RATE)
    assert "seed 3 != 4" in str(err.value) and str(corpus) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="sample_rate 8000 != 16000"):
        generate_genres(corpus, SMALL, 16000)


def test_refuses_a_folder_that_holds_other_files(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not empty and has no corpus.json"):
        generate_genres(tmp_path, TINY, RATE)


@pytest.mark.parametrize("spec, rate, key", [
    (SyntheticSpec(tracks_per_label=0), RATE, "synthetic.tracks_per_label"),
    (SyntheticSpec(seconds=0.0), RATE, "synthetic.seconds"),
    (SyntheticSpec(seed=-1), RATE, "synthetic.seed"),
    (TINY, 2000, "sample_rate"),
])
def test_bad_parameters_name_the_key(tmp_path, spec, rate, key):
    with pytest.raises(DatasetError, match=key):
        generate_genres(tmp_path / "x", spec, rate)
    assert not (tmp_path / "x").exists()


def test_every_genre_renders_at_low_and_high_rates():
    for label in range(len(GENRES)):
        for rate in (RATE, 22050):
            audio = render_genre_track(TrackJob(0, label, 0, rate, 1.0))
            assert audio.dtype == np.float32 and audio.shape == (rate,)
            assert np.isfinite(audio).all() and 0 < np.abs(audio).max() <= PEAK


def test_tag_corpus_goes_through_the_mtat_loader(tmp_path):
    root = generate_tags(tmp_path / "tags", TINY, RATE)
    n_clips = 10 * TINY.tracks_per_label
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == list("0123456789abcdef")
    with open(root / "annotations_final.csv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["clip_id", *TAGS, "mp3_path"]
    assert len(rows) == n_clips + 1
    assert all(sum(map(int, row[1:-1])) >= 1 for row in rows[1:])
    first = root / rows[1][-1]
    audio, rate = sf.read(first)
    assert rate == RATE and len(audio) == int(TINY.seconds * RATE)
    listing = scan_mtat(root, name="synthetic_tags")
    assert listing.multilabel and len(listing.tracks) >= n_clips - 2  # unscorable valid/test clips are dropped
    assert set(listing.label_names) <= set(TAGS)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    generate_tags(root, TINY, RATE)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_supervised_baseline_is_between_chance_and_perfect(corpus):
    spec = importlib.util.spec_from_file_location("corpus_baseline", REPO / "benchmarks" / "corpus_baseline.py")
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    result = baseline.baseline_accuracy(corpus, RATE)
    print(f"log-mel logistic-regression baseline, {RATE} Hz, {SMALL.seconds:g} s, "
          f"{SMALL.tracks_per_label}/genre: test accuracy {result['test_acc']:.1%}")
    assert result["chance"] < result["test_acc"] < 0.95


def test_fingerprint_is_off_by_default_and_leaves_hashes_and_corpus_params_unchanged():
    from clmr_ray.config import SyntheticSpec, spec_hash
    from clmr_ray.data.synthetic import _params

    assert spec_hash(SyntheticSpec()) == "ae145283c138"  # as before the option existed
    assert "fingerprint_db" not in _params("genres", SyntheticSpec(), 8000, "wav")
    assert spec_hash(SyntheticSpec(fingerprint_db=-30.0)) != spec_hash(SyntheticSpec())


def test_fingerprint_adds_a_per_track_hum_and_whine_and_nothing_else_changes():
    from clmr_ray.data.synthetic import fingerprint_frequencies

    plain = render_genre_track(TrackJob(0, 3, 1, RATE, 2.0))
    job = TrackJob(0, 3, 1, RATE, 2.0, fingerprint_db=-25.0)
    marked = render_genre_track(job)
    hum, whine, _ = fingerprint_frequencies(job)
    freqs = np.fft.rfftfreq(len(plain), 1 / RATE)

    def level(x, f):  # magnitude at f relative to the median of the spectrum
        spectrum = np.abs(np.fft.rfft(x))
        return spectrum[np.argmin(np.abs(freqs - f))] / np.median(spectrum)

    assert level(marked, whine) > 10 * level(plain, whine)
    assert level(marked, hum) > level(plain, hum)  # the hum sits under the bass: weaker than the whine
    other = fingerprint_frequencies(TrackJob(0, 3, 2, RATE, 2.0, fingerprint_db=-25.0))
    assert abs(other[1] - whine) > 1.0  # each track its own whine
    assert np.corrcoef(plain, marked)[0, 1] > 0.95  # the music is the same
