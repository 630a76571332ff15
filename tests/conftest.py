"""Shared fixtures. Data: tiny real audio files written with soundfile."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from torchaudio.datasets import gtzan


def write_noise(
    path,
    seconds: float = 0.05,
    sample_rate: int = 8000,
    amplitude: float = 0.01,
    seed: int = 0,
    channels: int = 1,
) -> Path:
    """Write low-level uniform noise (peak ~amplitude) as 16-bit PCM, in the format of the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (round(seconds * sample_rate), channels)
    sf.write(
        path, rng.uniform(-amplitude, amplitude, size=shape).astype(np.float32), sample_rate, subtype="PCM_16"
    )
    return path


GTZAN_IDS = gtzan.filtered_train + gtzan.filtered_valid + gtzan.filtered_test


def make_gtzan(parent: Path, au_every: int = 7) -> Path:
    """Every id of torchaudio's filtered split as a 0.05 s noise file in parent/<genre>/; every
    au_every-th one as .au, the rest as .wav (one encoding of each, copied: 930 files)."""
    encoded = {ext: write_noise(parent / f"noise{ext}").read_bytes() for ext in (".au", ".wav")}
    for ext in encoded:
        (parent / f"noise{ext}").unlink()
    for genre in {track_id.split(".")[0] for track_id in GTZAN_IDS}:
        (parent / genre).mkdir(parents=True, exist_ok=True)
    for i, track_id in enumerate(GTZAN_IDS):
        ext = ".au" if i % au_every == 0 else ".wav"
        (parent / track_id.split(".")[0] / f"{track_id}{ext}").write_bytes(encoded[ext])
    return parent


@pytest.fixture(scope="session")
def gtzan_tree(tmp_path_factory) -> Path:
    """A read-only fake GTZAN: <root>/genres_original/<genre>/<id>.wav|.au. Copy it to mutate."""
    root = tmp_path_factory.mktemp("gtzan")
    make_gtzan(root / "genres_original")
    return root


@pytest.fixture
def noise_file():
    return write_noise


MTAT_TAGS = ["guitar", "piano", "rock", "quiet", "never"]
MTAT_TAG_ROWS = [
    [1, 0, 1, 0, 0],
    [1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [1, 0, 0, 1, 0],
    [0, 0, 0, 0, 0],
    [0, 1, 0, 0, 0],
    [1, 0, 0, 0, 0],
    [0, 0, 0, 1, 0],
]


def make_mtat(root: Path) -> Path:
    """A MagnaTagATune layout: two clips in each of folders 0 and b (train), c (valid), e (test),
    and a tab-separated annotations_final.csv with every field quoted, as in the real file."""
    rows = []
    for clip, (folder, tags) in enumerate(zip("00bbccee", MTAT_TAG_ROWS)):
        rel = f"{folder}/artist-album-{clip:02d}-song-0-29.wav"
        write_noise(root / rel, seed=clip)
        rows.append([f'"{clip}"'] + [f'"{v}"' for v in tags] + [f'"{rel}"'])
    header = ['"clip_id"'] + [f'"{t}"' for t in MTAT_TAGS] + ['"mp3_path"']
    (root / "annotations_final.csv").write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")
    return root


@pytest.fixture(name="make_mtat")
def make_mtat_fixture():
    return make_mtat


def make_songs(root: Path, per_label: int = 5, seconds: float = 1.0) -> Path:
    """A folder dataset (two labels): <root>/bass/bass<i>.wav and <root>/drums/drums<i>.wav, noise
    with a different seed per file."""
    for offset, label in enumerate(("bass", "drums")):
        for i in range(per_label):
            write_noise(root / label / f"{label}{i}.wav", seconds=seconds, seed=i + 10 * offset)
    return root


@pytest.fixture(name="make_songs")
def make_songs_fixture():
    return make_songs


def one_row_ablation(name: str) -> str:
    """An ablation file: one audio row, seed 0, 1 pretraining epoch (the fastest real run)."""
    return f"""\
name: {name}
seeds: [0]
base:
  pretrain.epochs: 1
  eval.epochs: 3
  audio.augment.pitch.enabled: false
rows:
  - id: audio
    label: audio
    overrides: {{format: audio}}
"""


@pytest.fixture(name="one_row_ablation")
def one_row_ablation_fixture():
    return one_row_ablation


class _ShellPayload:
    """What an attacker would put in a bucket: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_state(folder: Path, name: str, marker: Path) -> Path:
    """folder/name: a torch file whose unpickling creates `marker`, with its matching SHA-256 beside
    it (whoever can write a bucket can write the hash too), so only weights_only stands in the way."""
    import hashlib

    import torch

    path = Path(folder) / name
    torch.save({"encoder_states": {"audio": {}}, "history": _ShellPayload(marker)}, path)
    (Path(folder) / f"{name}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    return path


@pytest.fixture(name="crafted_state")
def crafted_state_fixture():
    return crafted_state
