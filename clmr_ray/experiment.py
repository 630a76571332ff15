"""One experiment end to end in plain torch: data -> pretrain each encoder -> evaluate.

Pretrained encoders are content-addressed: `encoder_key` hashes exactly what determines an
encoder (its pretraining data, its pipeline, the pretraining spec, the seed and the version of
the training code; not the evaluation, the scaling or any path), so Table 2's "both" row reuses
the two encoders Table 1 already trained, and with them the features they computed there
(feature_store). The Ray layer swaps `pretrain_fn` for a distributed one; nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import TRAINING_CODE_VERSION, machine, safe_files, storage
from .config import DataSpec, ExperimentSpec, spec_hash
from .data import cache as crop_cache
from .data import mirror, registry
from .data.base import data_dir, file_lock
from .evaluate import FORMATS, evaluate, extract_splits
from .feature_store import FeatureStore, features_key
from .pretrain import PretrainResult, TrainContext, encoders_from_states, pretrain
from .speedups import Speedups

PretrainFn = Callable[[ExperimentSpec, str, crop_cache.CropCache], PretrainResult]


def pretrain_units(spec: ExperimentSpec) -> tuple[str, ...]:
    """The pretraining runs an experiment needs: 'audio', 'spectrogram', or 'both' (one joint
    cross-format run)."""
    if spec.pretrain.objective == "cross_format":
        return ("both",)
    return FORMATS[spec.format]


def encoder_key(spec: ExperimentSpec, unit: str) -> str:
    """Content hash of everything that determines the encoder(s) of one pretraining unit, the
    version of the training code included."""
    formats = FORMATS[unit]
    return f"{unit}-" + spec_hash({
        "training_code_version": TRAINING_CODE_VERSION,
        "unit": unit,
        "data": spec.pretrain_data or spec.data,
        "pipelines": {f: getattr(spec, f) for f in formats},
        "pretrain": spec.pretrain,
        "seed": spec.seed,
    })


class EncoderStore:
    """Pretrained encoder states on disk, one file per encoder key, written atomically with its SHA-256
    beside it and loaded as data only (safe_files).

    `shared` (a folder or a filesystem URI that every node reaches, e.g. <results>/encoders on
    s3://) makes the store cluster-wide without a shared file system: a missing encoder is fetched
    from there, and every saved one is uploaded there. The lock stays per node, so two nodes may
    both train an encoder nobody has yet (same key, same result): lost time, never a wrong record."""

    def __init__(self, root: str | Path | None = None, shared: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else data_dir() / "encoders"
        self.shared = shared

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str, log: Callable[[str], None] = print) -> dict | None:
        """The stored encoder of `key`, or None. A file that fails its SHA-256 or is more than plain
        data (safe_files) is refused: one line logged, the local copy deleted, None returned, so the
        caller fetches it again or re-trains it."""
        path = self.path(key)
        if not path.is_file() and self.shared is not None:
            self._fetch(key)
        if not path.is_file():
            return None
        try:
            return safe_files.load_state(path)
        except safe_files.RefusedFile as exc:
            log(f"encoder refused: {exc}")
            safe_files.remove(path)
            return None

    def sha256(self, key: str) -> str | None:
        """The SHA-256 recorded beside the stored encoder (checked by every `load`)."""
        return safe_files.recorded_sha256(self.path(key))

    def _fetch(self, key: str) -> None:
        name = f"{key}.pt"
        remote = storage.join(self.shared, name)
        if storage.exists(remote):  # the hash first: it was uploaded before the encoder
            for each in (safe_files.hash_name(name), name):
                source = storage.join(self.shared, each)
                if storage.exists(source):
                    storage.write_file(self.root, each, lambda path, source=source: storage.download(source, path))

    @contextlib.contextmanager
    def lock(self, key: str):
        """Held while one process pretrains `key`, so concurrent runs that need the same encoder
        (Table 2 "both" beside Table 1's rows) train it once: the others wait, then load it."""
        with file_lock(self.root / f".{key}.lock"):
            yield

    def save(self, key: str, result: PretrainResult, spec: ExperimentSpec) -> Path:
        payload = {"encoder_states": result.encoder_states, "history": result.history,
                   "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                   "spec_hash": spec_hash(spec)}
        safe_files.save_state(payload, self.root, f"{key}.pt")
        if self.shared is not None:  # the hash first, so a node that sees the encoder sees its hash
            for each in (safe_files.hash_name(f"{key}.pt"), f"{key}.pt"):
                storage.upload(self.root / each, self.shared)
        return self.path(key)


@dataclass
class ExperimentResult:
    metrics: dict
    encoder_keys: dict[str, str]  # unit -> key
    trained: list[str] = field(default_factory=list)  # units pretrained by this run
    reused: list[str] = field(default_factory=list)  # units loaded from the store
    histories: dict[str, list[dict]] = field(default_factory=dict)
    encoder_sha256: dict[str, str] = field(default_factory=dict)  # unit -> SHA-256 of the encoder file used
    features_reused: list[str] = field(default_factory=list)  # formats whose features came from the FeatureStore
    seconds: dict[str, float] = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)  # split -> evaluate.TrackPredictions


def uri_roots(spec: ExperimentSpec) -> list[str]:
    """Dataset roots given as URIs. Each node mirrors and prepares those in its own first run
    (data/mirror.py), so a driver does not prepare them up front with tasks on other nodes."""
    return [d.root for d in (spec.data, spec.pretrain_data)
            if d is not None and d.root is not None and storage.is_uri(d.root)]


def prepare_before_runs(spec: ExperimentSpec, map_fn: Callable = map, log: Callable[[str], None] = print) -> None:
    """A driver's step before its runs start: build the crop caches once (with `map_fn`), or, for
    datasets given as URIs, only check that they list files: each node fetches and prepares those in
    its own first run, since tasks on other nodes could not see this node's mirror."""
    roots = uri_roots(spec)
    for uri in roots:
        log(f"{uri}: {mirror.check(uri)} files; each node fetches and prepares them in its first run")
    if not roots:
        prepare_caches(spec, map_fn=map_fn, log=log)


def prepare_caches(spec: ExperimentSpec, map_fn: Callable = map, log: Callable[[str], None] | None = None
                   ) -> tuple[crop_cache.CropCache, crop_cache.CropCache]:
    """(evaluation cache, pretraining cache); the same cache when no pretrain_data is set. `log`: where
    a cache being built reports its progress (decode_progress)."""
    def one(data):
        progress = decode_progress(data.dataset, log) if log is not None else None
        _, prepared, _ = prepare_dataset(data, spec.pretrain.crop_samples, map_fn=map_fn, on_progress=progress)
        return crop_cache.open_cache(prepared.path)

    evaluation = one(spec.data)
    return evaluation, (one(spec.pretrain_data) if spec.pretrain_data is not None else evaluation)


def prepare_dataset(data: DataSpec, min_samples: int, *, map_fn: Callable = map, cache_root=None,
                    on_progress: Callable[[int, int], None] | None = None):
    """Scan one dataset (generating a synthetic corpus if needed) and build or reuse its crop
    cache; returns (listing, PreparedCache, time the scan finished). A dataset given as a URI is
    decoded in this process: its files are in this node's mirror, which other nodes' tasks cannot see.
    on_progress(files decoded, files) while a cache is built."""
    if data.root is not None and storage.is_uri(data.root):
        map_fn = map
    listing = registry.scan(data, map_fn=map_fn)
    scanned = time.perf_counter()
    prepared = crop_cache.prepare(listing, data.sample_rate, min_samples=min_samples, dtype=data.cache_dtype,
                                  cache_root=cache_root, map_fn=map_fn, on_progress=on_progress, **strict_policy(data))
    return listing, prepared, scanned


def decode_progress(name: str, log: Callable[[str], None] = print, every_s: float = 10.0) -> Callable[[int, int], None]:
    """An on_progress that logs `name: N/M files decoded (T s)` at most every `every_s` seconds, and at the last file."""
    started = last = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done == total or now - last >= every_s:
            last = now
            log(f"{name}: {done}/{total} files decoded ({now - started:.0f} s)")

    return report


def strict_policy(data: DataSpec) -> dict:
    """GTZAN is a fixed benchmark split: any unusable file is an error, except the one known
    corrupt file of the widespread copy (jazz.00054)."""
    if data.dataset != "gtzan":
        return {}
    from .data.gtzan import KNOWN_CORRUPT

    return {"strict": True, "tolerate": KNOWN_CORRUPT}


def local_pretrain_fn(device: str | torch.device = "cpu", report=None) -> PretrainFn:
    """Pretrain in this process (tests, a single GPU box, the GPU benchmarks)."""
    def run(spec: ExperimentSpec, unit: str, cache: crop_cache.CropCache) -> PretrainResult:
        ctx = TrainContext(device=device) if report is None else TrainContext(device=device, report=report)
        return pretrain(spec, unit, cache.split("train"), cache.split("valid"), ctx)
    return run


def default_device(spec: ExperimentSpec) -> str:
    """'cuda' (the first device this process sees: under Ray, the trial's own card) when scaling.use_gpu,
    else 'cpu'. Without CUDA a use_gpu run falls back to the CPU with a warning (a CPU machine, or a Ray
    started with fake GPU resources, as the packing tests do)."""
    if not spec.scaling.use_gpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    warnings.warn("scaling.use_gpu is set but CUDA is not available here: running on the CPU",
                  RuntimeWarning, stacklevel=2)
    return "cpu"


def reused_features(spec: ExperimentSpec, encoders: dict, store: EncoderStore, result: ExperimentResult,
                    eval_cache, device, log: Callable[[str], None] = print) -> dict:
    """Features of the encoders this run reused (result.reused) on eval_cache, format -> split ->
    Features: loaded from the FeatureStore beside `store`, else extracted and saved there. An encoder
    this run trained keeps none: most encoders of a sweep are probed once, and features can take
    more disk than their encoder (the demo's SampleCNN: 0.7 MB, its features 9.9 MB); the second
    probe of an encoder saves them, the third on loads them."""
    features = FeatureStore(store.root.with_name("features"))
    found = {}
    for fmt in FORMATS[spec.format]:
        unit = fmt if fmt in result.encoder_sha256 else "both"
        if unit not in result.reused:
            continue
        key = features_key(spec, fmt, result.encoder_sha256[unit], eval_cache.path, device)
        found[fmt] = features.load(key, log)
        if found[fmt] is None:
            found[fmt] = extract_splits(spec, fmt, encoders[fmt], eval_cache, device)
            try:
                features.save(key, found[fmt])
            except OSError as exc:  # a full or read-only disk costs the next probe time, never this run
                log(f"[{spec.name}] {fmt} features not kept: {exc}")
        else:
            log(f"[{spec.name}] {fmt} features: reused from {features.path(key)}")
            result.features_reused.append(fmt)
    return found


def run_experiment(spec: ExperimentSpec, *, store: EncoderStore | None = None,
                   pretrain_fn: PretrainFn | None = None, map_fn: Callable = map,
                   device: str | None = None, log: Callable[[str], None] = print) -> ExperimentResult:
    """Prepare data, pretrain (or reuse) every encoder the experiment needs, evaluate."""
    store = store or EncoderStore()
    device = device or default_device(spec)
    machine.prepare(spec, device)
    Speedups.for_device(device).apply_backend()  # process-wide: evaluation gains too (reused host memory: -30 %)
    pretrain_fn = pretrain_fn or local_pretrain_fn(device)
    started = time.perf_counter()
    eval_cache, pretrain_cache = prepare_caches(spec, map_fn)
    seconds = {"prepare": time.perf_counter() - started}

    result = ExperimentResult(metrics={}, encoder_keys={})
    states: dict[str, dict] = {}
    for unit in pretrain_units(spec):
        key = encoder_key(spec, unit)
        result.encoder_keys[unit] = key
        stored = store.load(key, log)
        if stored is None:
            with store.lock(key):
                stored = store.load(key, log)  # another run may have trained it while we waited
                if stored is None:
                    log(f"[{spec.name}] {unit} encoder {key}: pretraining {spec.pretrain.epochs} epochs")
                    t0 = time.perf_counter()
                    trained = pretrain_fn(spec, unit, pretrain_cache)
                    seconds[f"pretrain_{unit}"] = time.perf_counter() - t0
                    store.save(key, trained, spec)
                    stored = store.load(key, log)
                    result.trained.append(unit)
        if unit not in result.trained:
            log(f"[{spec.name}] {unit} encoder {key}: reused from {store.path(key)}")
            result.reused.append(unit)
        states.update(stored["encoder_states"])
        result.histories[unit] = stored["history"]
        result.encoder_sha256[unit] = store.sha256(key)

    t0 = time.perf_counter()
    encoders = {f: e.to(device) for f, e in encoders_from_states(spec, states).items()}
    evaluation = evaluate(spec, encoders, eval_cache, device,
                          reused_features(spec, encoders, store, result, eval_cache, device, log))
    result.metrics, result.predictions = evaluation.metrics, evaluation.predictions
    seconds["evaluate"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    result.seconds = seconds
    return result
