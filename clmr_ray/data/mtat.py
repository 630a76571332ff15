"""MagnaTagATune: folders 0..f of clips plus the tab-separated annotations_final.csv
(clip_id, one 0/1 column per tag, mp3_path). The top-n tags by count are the labels; the
split follows the folders as in CLMR: 0-b train, c valid, d-f test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .base import DatasetError, Listing, Track, describe_problems

ANNOTATIONS = "annotations_final.csv"
FOLDER_SPLITS = {**{f: "train" for f in "0123456789ab"}, "c": "valid", **{f: "test" for f in "def"}}


def scan_mtat(root, n_tags: int = 50, name: str = "mtat") -> Listing:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"MagnaTagATune folder {root} does not exist (expected folders 0..f and {ANNOTATIONS})"
        )
    table = root / ANNOTATIONS
    if not table.is_file():
        raise DatasetError(f"{table}: no such file (MagnaTagATune's tab-separated tag annotations)")
    tag_names, clip_ids, paths, tags = _read_annotations(table)

    counts = tags.sum(axis=0)
    # Most frequent first; ties keep the file's column order. Tags nobody has are not labels.
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0][:n_tags]
    top = tags[:, order]
    tracks, bad_folder, missing = [], [], []
    for clip_id, rel, row in zip(clip_ids, paths, top):
        split = FOLDER_SPLITS.get(rel.split("/")[0]) if "/" in rel else None
        if split is None:
            bad_folder.append(rel)
            continue
        labels = tuple(int(i) for i in np.flatnonzero(row))
        if not labels and split != "train":
            continue  # valid/test clips without any top tag cannot be scored
        path = root / rel
        if not path.is_file():
            missing.append(path)
            continue
        tracks.append(Track(track_id=clip_id, path=path, split=split, labels=labels))
    if bad_folder:
        raise DatasetError(describe_problems(f"{table}: mp3_path must start with a folder 0..f", bad_folder))
    if missing:
        raise DatasetError(describe_problems(f"MagnaTagATune under {root} is incomplete, missing", missing))
    label_names = [tag_names[i] for i in order]
    return Listing(name=name, root=root, label_names=label_names, multilabel=True, tracks=tracks)


def _read_annotations(table: Path) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Tag names, clip ids, relative paths and a [clips, tags] 0/1 matrix."""
    with open(table, newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.reader(fh, delimiter="\t", quotechar='"') if row]
    if not rows:
        raise DatasetError(f"{table}: file is empty")
    header = [h.strip() for h in rows[0]]
    for column in ("clip_id", "mp3_path"):
        if column not in header:
            raise DatasetError(
                f"{table}: no '{column}' column (is it tab-separated? header: {header[:4]}...)"
            )
    id_col, path_col = header.index("clip_id"), header.index("mp3_path")
    tag_cols = [i for i in range(len(header)) if i not in (id_col, path_col)]
    clip_ids, paths, tags = [], [], np.zeros((len(rows) - 1, len(tag_cols)), dtype=np.int8)
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DatasetError(f"{table}:{r + 2}: {len(row)} fields, the header has {len(header)}")
        clip_ids.append(row[id_col].strip())
        paths.append(row[path_col].strip())
        try:
            tags[r] = [int(row[i]) for i in tag_cols]
        except ValueError:
            raise DatasetError(f"{table}:{r + 2}: tag columns must hold 0 or 1") from None
    return [header[i] for i in tag_cols], clip_ids, paths, tags
