"""Typed experiment specs: the single source of truth for a run.

Every field has a default that works offline (the synthetic corpus, CPU). YAML and dict
overrides go through :func:`from_dict`, which rejects unknown keys and wrong types with one
line that names the offending key (and suggests the closest valid one).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class SpecError(ValueError):
    """A spec or config file is invalid; the message is one line naming the key."""


# --------------------------------------------------------------------------- data


@dataclass
class SyntheticSpec:
    """Parameters of the generated offline corpora (see clmr_ray/data/synthetic.py)."""

    seed: int = 0
    tracks_per_label: int = 100  # GTZAN has ~100 per genre
    seconds: float = 30.0
    # Level (dB re the music's RMS) of a per-track recording-chain fingerprint: mains hum and a steady
    # whine, each at its own frequency per track, drawn independently of the genre (synthetic.py).
    # None: no fingerprint. Left out of hashes while unset, so corpora and records without it keep theirs.
    fingerprint_db: float | None = field(default=None, metadata={"hash": "if_set"})


@dataclass
class DataSpec:
    dataset: Literal["synthetic", "synthetic_tags", "gtzan", "mtat", "folder"] = "synthetic"
    # Folder holding the dataset. For the synthetic corpora it is where they are generated;
    # None means "<data dir>/<dataset>-<hash of its SyntheticSpec>". Not part of the spec hash.
    root: str | None = field(default=None, metadata={"hash": False})
    sample_rate: int = 22050
    cache_dtype: Literal["int16", "float16"] = "int16"
    split_seed: int = 0  # stratified split of a folder dataset without a split file
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)


# ------------------------------------------------------------------ augmentations


@dataclass
class CropAug:
    """Random crop: the two views come from independent positions of the same track.

    Disabled, both views share one crop position (they then differ only by the other
    augmentations)."""

    enabled: bool = True


@dataclass
class NoiseAug:
    """White Gaussian noise at a signal-to-noise ratio drawn uniformly in snr_db."""

    enabled: bool = True
    p: float = 0.8
    snr_db: tuple[float, float] = (10.0, 40.0)


@dataclass
class GainAug:
    """Gain change drawn uniformly in gain_db (the paper: reduce gain in [-6, 0] dB)."""

    enabled: bool = True
    p: float = 0.8
    gain_db: tuple[float, float] = (-6.0, 0.0)


@dataclass
class FilterAug:
    """A high-pass or a low-pass biquad (coin flip) at a cutoff drawn in the given range.

    Cutoffs above 0.45 x sample rate are clamped so tiny presets (8 kHz) stay valid."""

    enabled: bool = True
    p: float = 0.8
    lowpass_hz: tuple[float, float] = (2200.0, 4000.0)
    highpass_hz: tuple[float, float] = (200.0, 1200.0)


@dataclass
class PitchAug:
    """Pitch shift by a whole number of semitones drawn uniformly in semitones (at most 12 either way;
    WSOLA, as SoX's pitch effect: augment/audio.py pitch_shift)."""

    enabled: bool = True
    p: float = 0.6
    semitones: tuple[int, int] = (-5, 5)


@dataclass
class PolarityAug:
    enabled: bool = False
    p: float = 0.8


@dataclass
class DelayAug:
    """Add a delayed, attenuated copy (CLMR: 200-500 ms, volume 0.5)."""

    enabled: bool = False
    p: float = 0.3
    delay_ms: tuple[float, float] = (200.0, 500.0)
    volume: float = 0.5


@dataclass
class ReverbAug:
    """Convolve with a synthetic exponentially decaying noise impulse response."""

    enabled: bool = False
    p: float = 0.6
    rt60_s: tuple[float, float] = (0.2, 1.0)
    wet: tuple[float, float] = (0.1, 0.5)


@dataclass
class NoiseMixAug:
    """Mix another clip of the batch ("batch") or white noise ("white") into the waveform
    before the mel transform, at an SNR drawn in snr_db."""

    enabled: bool = False
    p: float = 0.5
    source: Literal["batch", "white"] = "batch"
    snr_db: tuple[float, float] = (5.0, 20.0)


@dataclass
class MaskAug:
    """SpecAugment-style masks: n_masks masks, each of width drawn uniformly in
    [0, max_fraction x axis length], independently per example (torchaudio iid masks)."""

    enabled: bool = False
    p: float = 1.0
    max_fraction: float = 0.1
    n_masks: int = 1


WAVEFORM_AUGS = ("polarity", "noise", "gain", "filter", "delay", "pitch", "reverb", "noise_mix")
SPECTROGRAM_AUGS = ("freq_mask", "time_mask")


@dataclass
class AugmentSpec:
    """All augmentations of one pipeline. Waveform ones run in the order of WAVEFORM_AUGS,
    then (spectrogram pipeline only) the mel transform, then the masks."""

    crop: CropAug = field(default_factory=CropAug)
    polarity: PolarityAug = field(default_factory=PolarityAug)
    noise: NoiseAug = field(default_factory=NoiseAug)
    gain: GainAug = field(default_factory=GainAug)
    filter: FilterAug = field(default_factory=FilterAug)
    delay: DelayAug = field(default_factory=DelayAug)
    pitch: PitchAug = field(default_factory=PitchAug)
    reverb: ReverbAug = field(default_factory=ReverbAug)
    noise_mix: NoiseMixAug = field(default_factory=NoiseMixAug)
    freq_mask: MaskAug = field(default_factory=MaskAug)
    time_mask: MaskAug = field(default_factory=MaskAug)

    def enabled_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name).enabled]


def _spectrogram_augment() -> AugmentSpec:
    """The paper's spectrogram pipeline: crop, frequency and time masking, noise mixing."""
    off = {"enabled": False}
    return AugmentSpec(
        noise=NoiseAug(**off),
        gain=GainAug(**off),
        filter=FilterAug(**off),
        pitch=PitchAug(**off),
        noise_mix=NoiseMixAug(enabled=True),
        freq_mask=MaskAug(enabled=True),
        time_mask=MaskAug(enabled=True),
    )


# ----------------------------------------------------------------------- encoders


@dataclass
class EncoderSpec:
    """An encoder built by name from clmr_ray.models' registry.

    width scales the channel counts (1.0 = the paper's); out_dim is the representation size."""

    name: str = "samplecnn"
    width: float = 1.0
    out_dim: int = 512


@dataclass
class MelSpec:
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    top_db: float = 80.0


@dataclass
class AudioPipelineSpec:
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    augment: AugmentSpec = field(default_factory=AugmentSpec)


@dataclass
class SpectrogramPipelineSpec:
    encoder: EncoderSpec = field(default_factory=lambda: EncoderSpec(name="resnet18"))
    mel: MelSpec = field(default_factory=MelSpec)
    augment: AugmentSpec = field(default_factory=_spectrogram_augment)


# ----------------------------------------------------------------- train / eval


@dataclass
class PretrainSpec:
    # 59049 = 3^10 samples (2.68 s at 22050 Hz), SampleCNN's native input as in CLMR; the
    # paper's 5 s clips are crop_samples: 110250.
    crop_samples: int = 59049
    epochs: int = 100
    batch_size: int = 48
    lr: float = 3e-4
    weight_decay: float = 1e-6  # the paper's Adam decay
    temperature: float = 0.5  # the paper's tau
    projection_dim: int = 128
    projection_hidden: int = 512
    objective: Literal["ntxent", "cross_format"] = "ntxent"
    gather_negatives: bool = True  # all-gather embeddings across DDP workers
    warmup_epochs: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = None
    amp: bool = True  # bf16 autocast, used on GPU only
    crops_per_track: int = 1  # random crops drawn per track per epoch
    val_every: int = 1
    early_stop_patience: int | None = None  # epochs without valid-loss improvement


@dataclass
class EvalSpec:
    head: Literal["linear", "mlp"] = "linear"
    mlp_hidden: int = 512
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    early_stop_patience: int | None = 20  # epochs without valid-mAP improvement
    fusion: Literal["concat", "decision"] = "concat"  # how "both" combines the two formats


@dataclass
class ScalingSpec:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1  # also the torch threads of a run: fixed, so reruns are bit-identical
    # CUDA: torch's deterministic algorithms + cuBLAS's fixed workspace (slower; see bench step)
    deterministic: bool = False
    # Share of a GPU one trial reserves (Ray Tune/Train fractional resources): 0.25 packs 4 trials on a
    # card. Where a trial runs, not what it computes: left out of the spec hash (packing.py, README Scaling).
    gpus_per_trial: float = field(default=1.0, metadata={"hash": False})


@dataclass
class ExperimentSpec:
    name: str = "default"
    seed: int = 0
    format: Literal["audio", "spectrogram", "both"] = "audio"
    data: DataSpec = field(default_factory=DataSpec)
    # Data to pretrain on when it differs from the evaluation data (Table 2's transfer row).
    pretrain_data: DataSpec | None = None
    audio: AudioPipelineSpec = field(default_factory=AudioPipelineSpec)
    spectrogram: SpectrogramPipelineSpec = field(default_factory=SpectrogramPipelineSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)

    def __post_init__(self) -> None:
        validate(self)


# -------------------------------------------------------------------- validation


def validate(spec: ExperimentSpec) -> None:
    for name in SPECTROGRAM_AUGS:
        if getattr(spec.audio.augment, name).enabled:
            raise SpecError(f"audio.augment.{name}: masks act on spectrograms; disable it for the audio pipeline")
    for path, aug in _iter_augs(spec):
        p = getattr(aug, "p", None)
        if p is not None and not 0.0 <= p <= 1.0:
            raise SpecError(f"{path}.p: probability must be in [0, 1], got {p}")
        if isinstance(aug, MaskAug) and not 0.0 <= aug.max_fraction <= 1.0:
            raise SpecError(f"{path}.max_fraction: must be in [0, 1], got {aug.max_fraction}")
        for sub in dataclasses.fields(aug):
            value = getattr(aug, sub.name)
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise SpecError(f"{path}.{sub.name}: range {list(value)} has min > max")
    shifts = spec.audio.augment.pitch.semitones
    if min(shifts) < -12 or max(shifts) > 12:
        raise SpecError(f"audio.augment.pitch.semitones: an octave either way at most (-12 to 12), got {list(shifts)}")
    positive = {
        "pretrain.crop_samples": spec.pretrain.crop_samples,
        "pretrain.batch_size": spec.pretrain.batch_size,
        "pretrain.temperature": spec.pretrain.temperature,
        "pretrain.lr": spec.pretrain.lr,
        "eval.batch_size": spec.eval.batch_size,
        "eval.lr": spec.eval.lr,
        "scaling.num_workers": spec.scaling.num_workers,
    }
    at_least = {  # key: (value, smallest valid value); None (no early stopping) passes
        "seed": (spec.seed, 0),
        "pretrain.epochs": (spec.pretrain.epochs, 1),
        "pretrain.warmup_epochs": (spec.pretrain.warmup_epochs, 0),
        "pretrain.val_every": (spec.pretrain.val_every, 0),  # 0: no validation loss
        "pretrain.early_stop_patience": (spec.pretrain.early_stop_patience, 1),
        "pretrain.crops_per_track": (spec.pretrain.crops_per_track, 1),
        "pretrain.projection_dim": (spec.pretrain.projection_dim, 1),
        "pretrain.projection_hidden": (spec.pretrain.projection_hidden, 1),
        "pretrain.weight_decay": (spec.pretrain.weight_decay, 0),
        "eval.epochs": (spec.eval.epochs, 1),
        "eval.early_stop_patience": (spec.eval.early_stop_patience, 1),
        "eval.mlp_hidden": (spec.eval.mlp_hidden, 1),
        "eval.weight_decay": (spec.eval.weight_decay, 0),
        "audio.encoder.out_dim": (spec.audio.encoder.out_dim, 1),
        "spectrogram.encoder.out_dim": (spec.spectrogram.encoder.out_dim, 1),
        "spectrogram.mel.n_fft": (spec.spectrogram.mel.n_fft, 1),
        "spectrogram.mel.hop_length": (spec.spectrogram.mel.hop_length, 1),
        "spectrogram.mel.n_mels": (spec.spectrogram.mel.n_mels, 1),
        "scaling.cpus_per_worker": (spec.scaling.cpus_per_worker, 1),
    }
    for name in ("data", "pretrain_data"):
        data = getattr(spec, name)
        if data is not None:
            positive |= {f"{name}.sample_rate": data.sample_rate, f"{name}.synthetic.seconds": data.synthetic.seconds}
            at_least |= {f"{name}.split_seed": (data.split_seed, 0),
                         f"{name}.synthetic.seed": (data.synthetic.seed, 0),
                         f"{name}.synthetic.tracks_per_label": (data.synthetic.tracks_per_label, 1)}
    for key, value in positive.items():
        if value <= 0:
            raise SpecError(f"{key}: must be > 0, got {value}")
    for key, (value, low) in at_least.items():
        if value is not None and value < low:
            raise SpecError(f"{key}: must be >= {low}, got {value}")
    if spec.pretrain.batch_size < 2:
        raise SpecError("pretrain.batch_size: NT-Xent needs at least 2 examples per batch")
    share = spec.scaling.gpus_per_trial
    if not 0.0 < share <= 1.0:
        raise SpecError(f"scaling.gpus_per_trial: must be in (0, 1], got {share}")
    if spec.scaling.use_gpu and spec.scaling.num_workers > 1 and share <= 0.5:
        raise SpecError(f"scaling.gpus_per_trial: {share} with num_workers {spec.scaling.num_workers} could put two "
                        "ranks of one run on one GPU, which NCCL refuses; use > 0.5 (or 1) for multi-worker runs")
    if spec.pretrain.objective == "cross_format" and spec.format != "both":
        raise SpecError("pretrain.objective: cross_format pairs audio with spectrogram views; set format: both")


def _iter_augs(spec: ExperimentSpec):
    for pipe in ("audio", "spectrogram"):
        augment = getattr(spec, pipe).augment
        for f in dataclasses.fields(augment):
            yield f"{pipe}.augment.{f.name}", getattr(augment, f.name)


# ------------------------------------------------------------- dict / YAML <-> spec


def from_dict(cls: type, data: Any, path: str = ""):
    """Build dataclass `cls` from nested dicts, naming the first bad key in the error."""
    kwargs = _arguments(cls, data, path)
    try:
        return cls(**kwargs)
    except SpecError as exc:
        if path:
            raise SpecError(f"{path}.{exc}") from None
        raise


def _arguments(cls: type, data: Any, path: str = "") -> dict:
    """The keyword arguments of `cls` that `data` gives, converted to the field types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(names)})"
            raise SpecError(f"unknown key '{where}'{hint}")
        kwargs[key] = _convert(hints[key], value, where)
    return kwargs


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpecError(f"{where}: '{value}' is not one of {', '.join(map(str, args))}{hint}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SpecError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(spec) -> dict:
    """Plain nested dict (tuples as lists), the inverse of from_dict."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` into a copy of `base`. Keys may be dotted: {"pretrain.lr": 1e-3}."""
    out = json.loads(json.dumps(base))
    for key, value in overrides.items():
        head, *rest = str(key).split(".")
        if rest:
            value = {".".join(rest): value}
        if isinstance(value, dict) and isinstance(out.get(head), dict):
            out[head] = merge(out[head], value)
        else:
            out[head] = json.loads(json.dumps(value))
    return out


def with_overrides(spec: ExperimentSpec, overrides: dict) -> ExperimentSpec:
    return from_dict(ExperimentSpec, merge(to_dict(spec), overrides))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
        raise SpecError(f"{path}: expected a mapping of keys at the top level, got {kind}")
    return data


def load_spec(path: str | Path, overrides: dict | None = None) -> ExperimentSpec:
    data = merge(load_yaml(path), overrides or {})
    try:
        return from_dict(ExperimentSpec, data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def load_overrides(path: str | Path) -> dict:
    """A spec file's overrides, their keys and types checked (the values are checked once merged with a
    preset and --set overrides, which may change them)."""
    data = merge({}, load_yaml(path))
    try:
        _arguments(ExperimentSpec, data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    return data


def spec_hash(spec, length: int = 12) -> str:
    """Content hash of the fields that change results (fields with metadata hash=False,
    such as dataset paths, are left out)."""
    return hashlib.sha256(json.dumps(_hashable(spec), sort_keys=True).encode()).hexdigest()[:length]


def setup_of(spec: ExperimentSpec) -> dict:
    """What a spec sets up, as a dict: all but its name, its seed, its scaling (where and how it
    ran) and what the spec hash leaves out (dataset paths). The runs of one table cell share it."""
    same = dataclasses.replace(spec, name="", seed=0, scaling=ScalingSpec())
    return _hashable(same)


def setup_hash(spec: ExperimentSpec, length: int = 8) -> str:
    """Content hash of setup_of(spec): the same for every seed of one setup."""
    return spec_hash(setup_of(spec), length)


def _hashable(obj):
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _hashable(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("hash", True) is True
            or (f.metadata["hash"] == "if_set" and getattr(obj, f.name) != f.default)
        }
    if isinstance(obj, dict):
        return {str(k): _hashable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_hashable(v) for v in obj]
    return obj


# ------------------------------------------------------------------------ presets

# Scales a whole experiment. "tiny" is for tests (seconds on a CPU), "demo" for `make demo`
# (minutes on a 2-core CPU), "paper" is the defaults above (GTZAN at paper scale).
PRESETS: dict[str, dict] = {
    "paper": {},
    "tiny": {
        "data.sample_rate": 8000,
        "data.synthetic.tracks_per_label": 6,
        "data.synthetic.seconds": 4.0,
        "pretrain.crop_samples": 6561,  # 3^8
        "pretrain.epochs": 2,
        "pretrain.batch_size": 8,
        "audio.encoder.width": 0.125,
        "spectrogram.encoder.name": "resnet10",
        "spectrogram.mel": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
        "pretrain.projection_dim": 32,
        "pretrain.projection_hidden": 64,
        "eval.epochs": 30,
        "eval.early_stop_patience": None,
    },
    "demo": {
        "data.sample_rate": 8000,
        "data.synthetic.tracks_per_label": 40,
        "data.synthetic.seconds": 10.0,
        "pretrain.crop_samples": 6561,  # 3^8, 0.82 s at 8 kHz: keeps Tables 1-2 under 15 min on 2 cores
        "pretrain.epochs": 20,
        "pretrain.batch_size": 32,
        "pretrain.lr": 1e-3,
        "audio.encoder.width": 0.25,
        "spectrogram.encoder.name": "resnet10",
        "spectrogram.mel": {"n_fft": 512, "hop_length": 160, "n_mels": 64},
        "pretrain.projection_dim": 64,
        "pretrain.projection_hidden": 256,
        "eval.epochs": 100,
    },
}


def preset(name: str, overrides: dict | None = None) -> ExperimentSpec:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpecError(f"unknown preset '{name}'{hint}; choose one of {', '.join(PRESETS)}")
    data = merge(to_dict(ExperimentSpec()), PRESETS[name])
    return from_dict(ExperimentSpec, merge(data, overrides or {}))
