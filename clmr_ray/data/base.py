"""What every dataset loader returns: a listing of tracks with labels and splits."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "valid", "test")
AUDIO_EXTENSIONS = (".wav", ".au", ".flac", ".mp3", ".ogg")


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or unreadable. The message is one line."""


@dataclass(frozen=True)
class Track:
    track_id: str  # unique within the dataset, e.g. "blues.00029"
    path: Path
    split: str  # one of SPLITS
    labels: tuple[int, ...]  # one index for single-label datasets, any number for multi-label


@dataclass
class Listing:
    name: str
    root: Path
    label_names: list[str]
    multilabel: bool
    tracks: list[Track] = field(default_factory=list)

    def split(self, name: str) -> list[Track]:
        return [t for t in self.tracks if t.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(t.split == s for t in self.tracks) for s in SPLITS}


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on `path` (created if missing) across processes of this machine
    (and of NFSv4/EFS clients); released when the block ends or the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def data_dir() -> Path:
    """Where generated corpora and crop caches live: $CLMR_RAY_DATA or ~/.cache/clmr-ray."""
    return Path(os.environ.get("CLMR_RAY_DATA", Path.home() / ".cache" / "clmr-ray")).expanduser()


def describe_problems(problem: str, paths: list, limit: int = 5) -> str:
    """One line: '<problem>: 3 files (a, b, c)' listing the first few paths and the count."""
    shown = ", ".join(str(p) for p in paths[:limit])
    more = f", ... {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{problem}: {len(paths)} file{'s' if len(paths) != 1 else ''} ({shown}{more})"
