"""Any folder of audio laid out as `root/<label>/<file>`: one label per track.

The split comes from `root/split.csv` (columns `path,split`, paths relative to root) when
present, else from a seeded stratified split of each label's files.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np

from .base import AUDIO_EXTENSIONS, SPLITS, DatasetError, Listing, Track, describe_problems

SPLIT_FRACTIONS = {"train": 0.5, "valid": 0.2, "test": 0.3}
SPLIT_FILE = "split.csv"


def scan_folder(root, split_seed: int = 0, name: str = "folder") -> Listing:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: folder does not exist (expected <label>/<audio file> inside it)")
    split_file = root / SPLIT_FILE
    if split_file.is_file():
        rows = _read_split_file(split_file, root)
    else:
        rows = _stratified_split(_audio_files(root), split_seed)
    if not rows:
        exts = ", ".join(AUDIO_EXTENSIONS)
        raise DatasetError(f"{root}: no audio files ({exts}) in its label subfolders")
    label_names = sorted({rel.split("/")[0] for rel, _ in rows})
    label_index = {label: i for i, label in enumerate(label_names)}
    tracks = [
        Track(track_id=rel, path=root / rel, split=split, labels=(label_index[rel.split("/")[0]],))
        for rel, split in rows
    ]
    return Listing(name=name, root=root, label_names=label_names, multilabel=False, tracks=tracks)


def _audio_files(root: Path) -> dict[str, list[str]]:
    """label -> sorted relative paths of the audio files directly inside root/<label>/."""
    found = {}
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f"{label_dir.name}/{f.name}"
            for f in label_dir.iterdir()
            if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file()
        )
        if files:
            found[label_dir.name] = files
    return found


def split_counts(n: int) -> dict[str, int]:
    """How many of a label's n files go to each split: 50/20/30, at least one test file from
    n >= 2 and one valid file from n >= 3 so tiny corpora still have every split."""
    n_test = int(n * SPLIT_FRACTIONS["test"] + 0.5)
    n_valid = int(n * SPLIT_FRACTIONS["valid"] + 0.5)
    if n >= 2:
        n_test = max(n_test, 1)
    if n >= 3:
        n_valid = max(n_valid, 1)
    return {"train": n - n_valid - n_test, "valid": n_valid, "test": n_test}


def _stratified_split(files_by_label: dict[str, list[str]], seed: int) -> list[tuple[str, str]]:
    rows = []
    for label, files in files_by_label.items():
        # Seeded by the label's name too, so adding a label leaves the others' splits unchanged.
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        order = rng.permutation(len(files))
        counts = split_counts(len(files))
        bounds = np.cumsum([counts[s] for s in SPLITS])
        split_of = np.searchsorted(bounds, np.arange(len(files)), side="right")
        assigned = {files[j]: SPLITS[split_of[pos]] for pos, j in enumerate(order)}
        rows.extend((f, assigned[f]) for f in files)
    return rows


def _read_split_file(path: Path, root: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing_cols = {"path", "split"} - set(reader.fieldnames or [])
        if missing_cols:
            raise DatasetError(
                f"{path}: header must have columns path,split (missing {', '.join(sorted(missing_cols))})"
            )
        rows, seen = [], set()
        for line, row in enumerate(reader, start=2):
            rel, split = (row["path"] or "").strip().replace("\\", "/"), (row["split"] or "").strip()
            if split not in SPLITS:
                raise DatasetError(
                    f"{path}:{line}: unknown split '{split}' for {rel} (valid: {', '.join(SPLITS)})"
                )
            if "/" not in rel:
                raise DatasetError(f"{path}:{line}: path '{rel}' must be <label>/<file>, relative to {root}")
            if rel in seen:
                raise DatasetError(f"{path}:{line}: {rel} is listed twice")
            seen.add(rel)
            rows.append((rel, split))
    missing = [str(root / rel) for rel, _ in rows if not (root / rel).is_file()]
    if missing:
        raise DatasetError(describe_problems(f"{path} lists files that do not exist", missing))
    return rows
