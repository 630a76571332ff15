"""GTZAN from a local folder, with the fault-filtered split (Sturm 2013; Kereliuk et al. 2015)
that torchaudio ships: 443 train, 197 valid, 290 test tracks."""

from __future__ import annotations

from pathlib import Path

from torchaudio.datasets import gtzan as _torchaudio_gtzan

from .base import DatasetError, Listing, Track, describe_problems

GENRES: tuple[str, ...] = tuple(_torchaudio_gtzan.gtzan_genres)
SPLIT_IDS: dict[str, list[str]] = {
    "train": _torchaudio_gtzan.filtered_train,
    "valid": _torchaudio_gtzan.filtered_valid,
    "test": _torchaudio_gtzan.filtered_test,
}
EXTENSIONS = (".wav", ".au")
# GTZAN ships as genres/<genre>/*.au (original) and genres_original/<genre>/*.wav (Kaggle).
PARENT_FOLDERS = ("", "genres", "genres_original")
# The Kaggle copy's jazz.00054.wav does not decode; it is in the filtered train split.
KNOWN_CORRUPT = ("jazz.00054",)


def find_genre_parent(root: Path) -> Path:
    """The folder holding the genre subfolders: root, root/genres or root/genres_original."""
    root = Path(root).expanduser()
    expected = (
        "<genre>/<genre>.000NN.wav|.au for the 10 genres, directly or under genres/ or genres_original/"
    )
    if not root.is_dir():
        raise DatasetError(f"GTZAN folder {root} does not exist (expected {expected})")
    for sub in PARENT_FOLDERS:
        parent = root / sub
        if any((parent / genre).is_dir() for genre in GENRES):
            return parent
    raise DatasetError(f"GTZAN folder {root} has no genre folders (expected {expected})")


def scan_gtzan(root) -> Listing:
    parent = find_genre_parent(root)
    present = {
        genre: {p.name for p in (parent / genre).iterdir()} if (parent / genre).is_dir() else set()
        for genre in GENRES
    }
    label_index = {genre: i for i, genre in enumerate(GENRES)}
    tracks, missing = [], []
    for split, ids in SPLIT_IDS.items():
        for track_id in ids:
            genre = track_id.split(".")[0]
            name = next((track_id + ext for ext in EXTENSIONS if track_id + ext in present[genre]), None)
            if name is None:
                missing.append(parent / genre / f"{track_id}.wav")
                continue
            tracks.append(Track(track_id, parent / genre / name, split, (label_index[genre],)))
    if missing:
        raise DatasetError(
            describe_problems(f"GTZAN under {parent} is incomplete, missing (.wav or .au)", missing)
        )
    return Listing(name="gtzan", root=Path(parent), label_names=list(GENRES), multilabel=False, tracks=tracks)
