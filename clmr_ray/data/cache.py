"""The crop cache: every track decoded once, mixed to mono, resampled, and stored per split as
one contiguous memory-mappable array plus a Parquet index and a JSON manifest.

    <cache root>/<listing name>-<key>/
        manifest.json          rate, dtype, labels, counts, rejected files and why, wall time
        audio_train.bin ...    raw int16 (x 32767) or float16 samples, tracks back to back
        index_train.parquet    track_id, path, offset, length, label | labels, source_sample_rate

The key hashes everything the contents depend on, so the same inputs reuse the cache and
changed inputs (a file touched, another rate) build a new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch
import torchaudio.functional as AF

from .base import SPLITS, DatasetError, Listing, data_dir, describe_problems, file_lock

CACHE_FORMAT = 1
DTYPES = ("int16", "float16")
INT16_SCALE = 32767.0
SILENCE_PEAK = 1e-4
# torchaudio's sinc resampler builds a [new/g, orig/g] kernel (g = gcd of the rates): rate pairs
# such as 22050 -> 16001 would need gigabytes and minutes per file, so such files are rejected.
MAX_RESAMPLE_KERNEL = 2_000_000
MANIFEST = "manifest.json"


# ------------------------------------------------------------------ decoding (per file)


@dataclass(frozen=True)
class DecodeJob:
    index: int
    path: str
    sample_rate: int
    dtype: str
    min_samples: int


@dataclass
class Decoded:
    index: int
    audio: np.ndarray | None  # 1-D, the cache dtype; None when rejected
    source_sample_rate: int = 0
    kind: str = ""  # why it was rejected: undecodable, non-finite, silent, odd rate, too short
    reason: str = ""


def decode_track(job: DecodeJob) -> Decoded:
    """Decode, mix to mono and resample one file; a bad file is rejected, never raised."""
    try:
        frames, source_rate = sf.read(job.path, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a rejection
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Decoded(job.index, None, kind="undecodable", reason=f"undecodable ({first_line})")
    mono = frames.mean(axis=1) if frames.shape[1] > 1 else frames[:, 0]
    if mono.size and not np.isfinite(mono).all():
        return Decoded(job.index, None, source_rate, "non-finite", "non-finite samples (NaN or inf)")
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    if peak < SILENCE_PEAK:
        return Decoded(job.index, None, source_rate, "silent", f"silent (peak {peak:.1e} < {SILENCE_PEAK:g})")
    g = math.gcd(source_rate, job.sample_rate)
    if (source_rate // g) * (job.sample_rate // g) > MAX_RESAMPLE_KERNEL:
        return Decoded(
            job.index,
            None,
            source_rate,
            "odd rate",
            f"odd rate ({source_rate} Hz has no small ratio to {job.sample_rate} Hz; convert it first)",
        )
    n_out = math.ceil(mono.size * job.sample_rate / source_rate)
    if n_out < job.min_samples:
        return Decoded(
            job.index, None, source_rate, "too short", f"too short ({n_out} < {job.min_samples} samples)"
        )
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    if source_rate != job.sample_rate:
        wave = AF.resample(wave, source_rate, job.sample_rate)
    wave = wave.clamp_(-1.0, 1.0).numpy()
    if job.dtype == "int16":
        audio = np.rint(wave * INT16_SCALE).astype(np.int16)
    else:
        audio = wave.astype(np.float16)
    return Decoded(job.index, audio, source_rate)


# --------------------------------------------------------------------------- prepare


@dataclass
class PreparedCache:
    path: Path
    manifest: dict
    reused: bool


def cache_key(listing: Listing, sample_rate: int, dtype: str, min_samples: int) -> str:
    """Hash of the sorted files (with sizes and mtimes), labels, splits and decode settings."""
    entries = []
    missing = []
    for t in listing.tracks:
        try:
            st = os.stat(t.path)
        except OSError:
            missing.append(t.path)
            continue
        entries.append([str(t.path), st.st_size, st.st_mtime_ns, t.track_id, t.split, list(t.labels)])
    if missing:
        raise DatasetError(describe_problems(f"{listing.name}: files vanished since the scan", missing))
    payload = {
        "format": CACHE_FORMAT,
        "files": sorted(entries),
        "label_names": list(listing.label_names),
        "multilabel": listing.multilabel,
        "sample_rate": sample_rate,
        "dtype": dtype,
        "min_samples": min_samples,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prepare(
    listing: Listing,
    sample_rate: int,
    *,
    min_samples: int,
    dtype: str = "int16",
    cache_root=None,
    map_fn: Callable = map,
    strict: bool = False,
    tolerate: Collection[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> PreparedCache:
    """Build (or reuse) the crop cache of `listing` at `sample_rate`.

    Files that do not decode, are silent or shorter than `min_samples` after resampling are
    left out and listed in the manifest; with `strict` any such file raises instead (except
    the track ids in `tolerate`). `map_fn(decode_track, jobs)` may run the decoding elsewhere
    (clmr_ray.distributed.tasks.ray_imap streams results back in order)."""
    if dtype not in DTYPES:
        raise DatasetError(f"cache dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    if sample_rate <= 0 or min_samples < 1:
        raise DatasetError(
            f"prepare: sample_rate and min_samples must be positive, got {sample_rate}, {min_samples}"
        )
    if not listing.tracks:
        raise DatasetError(f"{listing.name}: the listing has no tracks to prepare")
    root = Path(cache_root).expanduser() if cache_root is not None else data_dir() / "cache"
    key = cache_key(listing, sample_rate, dtype, min_samples)
    final = root / f"{listing.name}-{key}"
    if (final / MANIFEST).is_file():
        return PreparedCache(final, json.loads((final / MANIFEST).read_text()), reused=True)
    # Runs that start together on one node (or on a shared folder) build it once; the others wait.
    with file_lock(root / f".{final.name}.lock"):
        if (final / MANIFEST).is_file():
            return PreparedCache(final, json.loads((final / MANIFEST).read_text()), reused=True)
        return _build_into(final, listing, sample_rate, dtype, min_samples, key, map_fn, on_progress,
                           strict, tolerate)


def _build_into(final: Path, listing, sample_rate, dtype, min_samples, key, map_fn, on_progress, strict,
                tolerate) -> PreparedCache:
    root = final.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        manifest = _build(listing, sample_rate, dtype, min_samples, key, tmp, map_fn, on_progress)
        rejected = manifest["rejected"]
        fatal = [r for r in rejected if r["track_id"] not in set(tolerate)]
        if strict and fatal:
            reasons = ", ".join(f"{n} {kind}" for kind, n in Counter(r["kind"] for r in fatal).items())
            raise DatasetError(
                describe_problems(f"{listing.name}: unusable files ({reasons})", [r["path"] for r in fatal])
            )
        if sum(manifest["counts"].values()) == 0:
            raise DatasetError(
                f"{listing.name}: every file was rejected ({summarize(rejected, min_samples)})"
            )
        if rejected:
            print(summarize(rejected, min_samples))
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a concurrent prepare that finished first
                raise
            manifest = json.loads((final / MANIFEST).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedCache(final, manifest, reused=False)


def summarize(rejected: list[dict], min_samples: int) -> str:
    """'rejected 3 files: 2 silent, 1 too short (< 4000 samples)'."""
    counts = Counter(r["kind"] for r in rejected)
    parts = [
        f"{n} {kind}" + (f" (< {min_samples} samples)" if kind == "too short" else "")
        for kind, n in counts.items()
    ]
    return f"rejected {len(rejected)} file{'s' if len(rejected) != 1 else ''}: {', '.join(parts)}"


def _build(listing, sample_rate, dtype, min_samples, key, out: Path, map_fn, on_progress) -> dict:
    start = time.perf_counter()
    tracks = listing.tracks
    jobs = [DecodeJob(i, str(t.path), sample_rate, dtype, min_samples) for i, t in enumerate(tracks)]
    written = {s: 0 for s in SPLITS}
    rows: dict[str, list] = {s: [] for s in SPLITS}
    rejected = []
    with ExitStack() as stack:
        files = {s: stack.enter_context(open(out / f"audio_{s}.bin", "wb")) for s in SPLITS}
        stack.enter_context(_single_threaded_torch())
        for done, result in enumerate(map_fn(decode_track, jobs), start=1):
            track = tracks[result.index]
            if result.audio is None:
                rejected.append(
                    {
                        "track_id": track.track_id,
                        "path": str(track.path),
                        "split": track.split,
                        "kind": result.kind,
                        "reason": result.reason,
                    }
                )
            else:
                files[track.split].write(result.audio.tobytes())
                rows[track.split].append(
                    (track, written[track.split], result.audio.size, result.source_sample_rate)
                )
                written[track.split] += result.audio.size
            if on_progress is not None:
                on_progress(done, len(jobs))
    for split in SPLITS:
        pq.write_table(_index_table(rows[split], listing.multilabel), out / f"index_{split}.parquet")
    manifest = {
        "format": CACHE_FORMAT,
        "key": key,
        "name": listing.name,
        "source_root": str(listing.root),
        "sample_rate": sample_rate,
        "dtype": dtype,
        "min_samples": min_samples,
        "label_names": list(listing.label_names),
        "multilabel": listing.multilabel,
        "counts": {s: len(rows[s]) for s in SPLITS},
        "samples": written,
        "rejected": rejected,
        "wall_time_s": round(time.perf_counter() - start, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


@contextmanager
def _single_threaded_torch():
    """Parallelism is across files (map_fn). Intra-op threads on top of that only contend: on a
    busy 2-core machine they made a serial 30 s resample 30x slower (3 ms -> 110 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _index_table(rows: list, multilabel: bool) -> pa.Table:
    columns = {
        "track_id": pa.array([t.track_id for t, *_ in rows], pa.string()),
        "path": pa.array([str(t.path) for t, *_ in rows], pa.string()),
        "offset": pa.array([r[1] for r in rows], pa.int64()),
        "length": pa.array([r[2] for r in rows], pa.int64()),
    }
    if multilabel:
        columns["labels"] = pa.array([list(t.labels) for t, *_ in rows], pa.list_(pa.int32()))
    else:
        columns["label"] = pa.array([t.labels[0] for t, *_ in rows], pa.int64())
    columns["source_sample_rate"] = pa.array([r[3] for r in rows], pa.int32())
    return pa.table(columns)


# ---------------------------------------------------------------------------- reading


def _open_split(path: str, name: str) -> CachedSplit:
    return open_cache(path).split(name)


@dataclass(eq=False)
class CachedSplit:
    """One split of a cache: the memory-mapped samples and where each track lies in them."""

    name: str
    cache_path: Path
    audio: np.ndarray  # 1-D read-only memmap in the cache dtype
    scale: float  # multiply stored samples by this to get float audio in [-1, 1]
    offsets: np.ndarray  # int64 [n]
    lengths: np.ndarray  # int64 [n]
    labels: np.ndarray  # int64 [n] or float32 multi-hot [n, n_labels]
    track_ids: list[str]

    @property
    def n_tracks(self) -> int:
        return len(self.offsets)

    def __len__(self) -> int:
        return self.n_tracks

    def track(self, i: int) -> np.ndarray:
        start = int(self.offsets[i])
        return self.audio[start : start + int(self.lengths[i])].astype(np.float32) * np.float32(self.scale)

    def __reduce__(self):
        # Sent to another process (a Ray worker) it reopens the memmap there, never copies it.
        return _open_split, (str(self.cache_path), self.name)


class CropCache:
    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.label_names: list[str] = list(manifest["label_names"])
        self.multilabel: bool = bool(manifest["multilabel"])
        self.sample_rate: int = int(manifest["sample_rate"])
        self.dtype: str = manifest["dtype"]

    def __repr__(self) -> str:
        return f"CropCache({str(self.path)!r}, {self.manifest['counts']})"

    def split(self, name: str) -> CachedSplit:
        if name not in SPLITS:
            raise DatasetError(f"unknown split '{name}' (valid: {', '.join(SPLITS)})")
        index = pq.read_table(self.path / f"index_{name}.parquet")
        n_samples = int(self.manifest["samples"][name])
        dtype = np.dtype(self.dtype)
        if n_samples:
            audio = np.memmap(self.path / f"audio_{name}.bin", dtype=dtype, mode="r", shape=(n_samples,))
        else:
            audio = np.zeros(0, dtype=dtype)
        if self.multilabel:
            labels = np.zeros((index.num_rows, len(self.label_names)), dtype=np.float32)
            for row, tags in enumerate(index.column("labels").to_pylist()):
                labels[row, tags] = 1.0
        else:
            labels = index.column("label").to_numpy().astype(np.int64)
        return CachedSplit(
            name=name,
            cache_path=self.path,
            audio=audio,
            scale=1.0 / INT16_SCALE if self.dtype == "int16" else 1.0,
            offsets=index.column("offset").to_numpy().astype(np.int64),
            lengths=index.column("length").to_numpy().astype(np.int64),
            labels=labels,
            track_ids=index.column("track_id").to_pylist(),
        )


def open_cache(path) -> CropCache:
    path = Path(path).expanduser()
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DatasetError(f"{path}: not a crop cache (no {MANIFEST}; run `clmr-ray prepare` first)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != CACHE_FORMAT:
        raise DatasetError(
            f"{path}: cache format {manifest.get('format')} is not {CACHE_FORMAT}; prepare it again"
        )
    return CropCache(path, manifest)
