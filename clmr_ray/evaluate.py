"""Linear evaluation of frozen encoders: features, a probe, track-level scores, fusion.

Each track is cut into non-overlapping crops; a crop's representation is the encoder output
on the un-augmented input. The probe (linear or MLP head on standardised features) is trained
on crops; a track's prediction is the mean of its crops' probabilities. `both` concatenates the
audio and spectrogram features (the paper's 1024-d fusion) or averages two probes' outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .config import EvalSpec, ExperimentSpec

FORMATS = {"audio": ("audio",), "spectrogram": ("spectrogram",), "both": ("audio", "spectrogram")}


@dataclass
class Features:
    x: torch.Tensor  # float32 [n_crops, D], CPU
    track_index: torch.Tensor  # int64 [n_crops]: the crop's track in its split

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class TrackPredictions:
    """What a bootstrap over tracks needs: the probe's per-track probabilities and the labels."""
    scores: np.ndarray  # float32 [n_tracks, C]
    labels: np.ndarray  # int [n_tracks] class indices, or [n_tracks, C] multi-hot


@dataclass
class Evaluation:
    metrics: dict  # valid_/test_ metrics (track- and crop-level), probe and encoder sizes
    predictions: dict[str, TrackPredictions]  # split ("valid", "test") -> per-track predictions


class Probe(nn.Module):
    """A classification head on features standardised with the training set's statistics."""

    def __init__(self, head: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.best_epoch = 0
        self.epochs_run = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x - self.mean) / self.std)


# ----------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(encoder: nn.Module, pipeline: nn.Module, split, crop_samples: int, batch_size: int,
                     device) -> Features:
    """Encode every non-overlapping crop of every track of `split` (eval mode, no augmentation).
    The encoder and pipeline are moved to `device`."""
    from .data.sampling import eval_batches

    was_training = encoder.training
    encoder.to(device).eval()
    pipeline = pipeline.to(device)
    xs, tracks = [], []
    try:
        for audio, track_index in eval_batches(split, crop_samples, batch_size):
            h = encoder(pipeline.plain(audio.to(device, non_blocking=True)))
            xs.append(h.float().cpu())
            tracks.append(track_index.cpu())
    finally:
        encoder.train(was_training)
    if not xs:
        raise ValueError(f"extract_features: split '{getattr(split, 'name', '?')}' yielded no crops")
    return Features(torch.cat(xs), torch.cat(tracks).long())


def concat_features(parts: list[Features]) -> Features:
    """Feature-level fusion: the formats' features of the same crops side by side."""
    for other in parts[1:]:
        if not torch.equal(other.track_index, parts[0].track_index):
            raise ValueError("concat_features: the formats' features do not cover the same crops in the same order")
    return Features(torch.cat([p.x for p in parts], dim=1), parts[0].track_index)


# -------------------------------------------------------------------------- probe


def train_probe(train: Features, valid: Features, train_labels, valid_labels, spec: EvalSpec, n_classes: int,
                multilabel: bool, seed: int) -> Probe:
    """Fit a head with Adam on crop features, keeping the state with the best valid track-level mAP
    (early stopping after spec.early_stop_patience epochs without improvement)."""
    from .models.heads import build_head

    train_labels, valid_labels = _labels(train_labels, "train_labels"), _labels(valid_labels, "valid_labels")
    _check_tracks(train, train_labels, "train")
    _check_tracks(valid, valid_labels, "valid")
    mean = train.x.mean(0)
    std = train.x.std(0, unbiased=False).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = build_head(spec.head, train.x.shape[1], n_classes, spec.mlp_hidden)
    probe = Probe(head, mean, std)
    optimizer = torch.optim.Adam(probe.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    targets = train_labels[train.track_index]
    loss_fn = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
    generator = torch.Generator().manual_seed(seed)

    best_map, best_state, stale = -float("inf"), copy.deepcopy(probe.state_dict()), 0
    for epoch in range(1, spec.epochs + 1):
        probe.train()
        for idx in torch.randperm(len(train), generator=generator).split(spec.batch_size):
            loss = loss_fn(probe(train.x[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        valid_map = score(probe, valid, valid_labels, multilabel, prefix="valid")["valid_map"]
        probe.epochs_run = epoch
        if valid_map > best_map:
            best_map, best_state, stale = valid_map, copy.deepcopy(probe.state_dict()), 0
            probe.best_epoch = epoch
        else:
            stale += 1
            if spec.early_stop_patience is not None and stale >= spec.early_stop_patience:
                break
    probe.load_state_dict(best_state)
    probe.eval()
    return probe


# ------------------------------------------------------------------------ scoring


@torch.no_grad()
def predict_proba(probe: nn.Module, features: Features, multilabel: bool) -> torch.Tensor:
    probe.eval()
    logits = probe(features.x)
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def track_average(crop_probs: torch.Tensor, track_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean crop probability per track [n_tracks, C], the track indices in that order)."""
    tracks, inverse = torch.unique(track_index, return_inverse=True)
    sums = torch.zeros(len(tracks), crop_probs.shape[1]).index_add_(0, inverse, crop_probs.float())
    counts = torch.bincount(inverse, minlength=len(tracks)).clamp_min(1)
    return sums / counts[:, None], tracks


def score(probe: nn.Module, features: Features, labels, multilabel: bool, prefix: str = "test") -> dict:
    """Crop- and track-level metrics of a probe: '<prefix>_acc', '<prefix>_map', '<prefix>_roc_auc',
    '<prefix>_crop_acc', ... (multi-label: '_map' / '_pr_auc' and '_roc_auc' over tags, no accuracy)."""
    return score_probabilities(predict_proba(probe, features, multilabel), features.track_index, labels,
                               multilabel, prefix)


def track_predictions(crop_probs: torch.Tensor, track_index: torch.Tensor, labels) -> TrackPredictions:
    track_probs, tracks = track_average(crop_probs, track_index)
    return TrackPredictions(track_probs.numpy().astype(np.float32), _labels(labels, "labels")[tracks].numpy())


def score_probabilities(crop_probs: torch.Tensor, track_index: torch.Tensor, labels, multilabel: bool,
                        prefix: str = "test") -> dict:
    labels = _labels(labels, "labels")
    track_probs, tracks = track_average(crop_probs, track_index)
    out = {}
    for level, probs, y in (("", track_probs, labels[tracks]), ("_crop", crop_probs, labels[track_index])):
        probs, y = probs.numpy(), y.numpy()
        if not multilabel:
            out[f"{prefix}{level}_acc"] = metrics.accuracy(probs, y)
        out[f"{prefix}{level}_map"] = metrics.mean_average_precision(probs, y)
        out[f"{prefix}{level}_roc_auc"] = metrics.macro_roc_auc(probs, y)
        if multilabel:
            out[f"{prefix}{level}_pr_auc"] = out[f"{prefix}{level}_map"]
    return out


# --------------------------------------------------------------------- experiment


SPLITS = ("train", "valid", "test")


def extract_splits(spec: ExperimentSpec, fmt: str, encoder: nn.Module, cache, device) -> dict[str, Features]:
    """`fmt`'s features of every split of `cache` (a CropCache): split name -> Features."""
    from .pretrain import build_pipeline

    pipeline = build_pipeline(spec, fmt, cache.sample_rate)
    return {name: extract_features(encoder, pipeline, cache.split(name), spec.pretrain.crop_samples,
                                   spec.eval.batch_size, device) for name in SPLITS}


def evaluate(spec: ExperimentSpec, encoders: dict[str, nn.Module], cache, device,
             features: dict[str, dict[str, Features]] | None = None) -> Evaluation:
    """Probe the frozen encoders of spec.format on `cache` (a CropCache): valid and test metrics
    (track- and crop-level), the probe's size, the encoders' parameter count, and the per-track
    valid and test predictions (what findings.py bootstraps over). `features`: format -> what
    extract_splits gave before (a feature_store's); formats not in it are extracted."""
    formats = FORMATS[spec.format]
    missing = [f for f in formats if f not in encoders]
    if missing:
        raise ValueError(f"evaluate: format '{spec.format}' needs an encoder for {', '.join(missing)} "
                         f"(got: {', '.join(encoders) or 'none'})")
    splits = {name: cache.split(name) for name in SPLITS}
    for name, split in splits.items():
        if split.n_tracks == 0:
            raise ValueError(f"evaluate: split '{name}' of {cache.path} has no tracks")
    n_classes, multilabel = len(cache.label_names), cache.multilabel
    feats = {fmt: (features or {}).get(fmt) or extract_splits(spec, fmt, encoders[fmt], cache, device)
             for fmt in formats}

    def fit(fs: dict[str, Features]) -> Probe:
        return train_probe(fs["train"], fs["valid"], splits["train"].labels, splits["valid"].labels, spec.eval,
                           n_classes, multilabel, spec.seed)

    result: dict = {"n_params": sum(_n_params(encoders[f]) for f in formats), "n_classes": n_classes}
    predictions: dict[str, TrackPredictions] = {}
    if len(formats) == 1 or spec.eval.fusion == "concat":
        fused = feats[formats[0]] if len(formats) == 1 else {
            name: concat_features([feats[f][name] for f in formats]) for name in splits}
        probe = fit(fused)
        for name in ("valid", "test"):
            probs = predict_proba(probe, fused[name], multilabel)
            result.update(score_probabilities(probs, fused[name].track_index, splits[name].labels, multilabel, name))
            predictions[name] = track_predictions(probs, fused[name].track_index, splits[name].labels)
        result.update(feature_dim=fused["train"].x.shape[1], probe_params=_n_params(probe),
                      probe_best_epoch=probe.best_epoch, probe_epochs=probe.epochs_run)
    else:  # decision-level fusion: one probe per format, probabilities averaged
        probes = {f: fit(feats[f]) for f in formats}
        for name in ("valid", "test"):
            per_format = {f: predict_proba(probes[f], feats[f][name], multilabel) for f in formats}
            for f, probs in per_format.items():
                single = score_probabilities(probs, feats[f][name].track_index, splits[name].labels, multilabel, name)
                result.update({f"{f}_{k}": v for k, v in single.items()})
            mean_probs = torch.stack(list(per_format.values())).mean(0)
            track_index = feats[formats[0]][name].track_index
            result.update(score_probabilities(mean_probs, track_index, splits[name].labels, multilabel, name))
            predictions[name] = track_predictions(mean_probs, track_index, splits[name].labels)
        result.update(feature_dim=sum(feats[f]["train"].x.shape[1] for f in formats),
                      probe_params=sum(_n_params(p) for p in probes.values()),
                      probe_best_epoch=max(p.best_epoch for p in probes.values()),
                      probe_epochs=max(p.epochs_run for p in probes.values()))
    return Evaluation(result, predictions)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _labels(labels, name: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels))
    if labels.dim() == 1:
        return labels.long()
    if labels.dim() == 2:
        return labels.float()
    raise ValueError(f"{name}: expected [n_tracks] class indices or [n_tracks, C] multi-hot, got {tuple(labels.shape)}")


def _check_tracks(features: Features, labels: torch.Tensor, name: str) -> None:
    if len(features) == 0:
        raise ValueError(f"train_probe: {name} features are empty")
    if int(features.track_index.max()) >= labels.shape[0]:
        raise ValueError(f"train_probe: {name} features refer to track {int(features.track_index.max())} "
                         f"but {name}_labels has {labels.shape[0]} tracks")
