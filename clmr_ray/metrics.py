"""Classification metrics in numpy: accuracy, average precision, ROC-AUC.

Scores are [n, C] (probabilities or logits); labels are class indices [n] (single-label)
or multi-hot [n, C] (multi-label). Per-class metrics are one-vs-rest; macro averages skip
the classes that have no positive (ROC-AUC: no positive or no negative) example.
"""

from __future__ import annotations

import numpy as np


def metric_names(prefix: str, multilabel: bool) -> tuple[str, ...]:
    """The metrics evaluate.score_probabilities reports for a split (prefix "valid" or "test"), track-level
    then crop-level ("_crop"): accuracy (single-label) or PR-AUC (multi-label, = mAP), mAP, ROC-AUC."""
    names = ("map", "roc_auc", "pr_auc") if multilabel else ("acc", "map", "roc_auc")
    return tuple(f"{prefix}{level}_{name}" for level in ("", "_crop") for name in names)


def recorded_metric_names(*prefixes: str) -> tuple[str, ...]:
    """metric_names of these splits, single- and multi-label together, sorted."""
    return tuple(sorted({name for prefix in prefixes for labels in (False, True)
                         for name in metric_names(prefix, labels)}))


def as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def one_hot_targets(labels, n_classes: int) -> np.ndarray:
    """Bool [n, C]: one-hot for class indices [n], thresholded for multi-hot [n, C]."""
    labels = as_numpy(labels)
    if labels.ndim == 2:
        if labels.shape[1] != n_classes:
            raise ValueError(f"labels: multi-hot width {labels.shape[1]} != {n_classes} classes")
        return labels > 0.5
    if labels.ndim != 1:
        raise ValueError(f"labels: expected [n] class indices or [n, C] multi-hot, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels: class index out of range [0, {n_classes}): {labels.min()}..{labels.max()}")
    out = np.zeros((labels.shape[0], n_classes), dtype=bool)
    out[np.arange(labels.shape[0]), labels.astype(np.int64)] = True
    return out


def accuracy(scores, labels) -> float:
    """Fraction of rows whose top-scoring class is the label (single-label)."""
    scores, labels = _check(scores, labels)
    if labels.ndim != 1:
        raise ValueError("accuracy: needs class indices [n], got multi-hot labels")
    return float((scores.argmax(axis=1) == labels).mean())


def average_precision(scores, targets) -> float:
    """Step-wise AP of one class: sum over score thresholds of (R_t - R_{t-1}) * P_t, tied scores
    forming one threshold (the definition of sklearn's average_precision_score). NaN without positives."""
    scores = as_numpy(scores).astype(np.float64).ravel()
    targets = as_numpy(targets).astype(bool).ravel()
    n_pos = targets.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    last_of_tie = np.r_[np.diff(scores) != 0, True]  # the end of each group of equal scores
    tp = np.cumsum(targets)[last_of_tie]
    seen = (np.flatnonzero(last_of_tie) + 1)
    precision = tp / seen
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float((recall_gain * precision).sum())


def roc_auc(scores, targets) -> float:
    """Area under the ROC curve of one class via the rank-sum (Mann-Whitney) statistic, ties
    getting average ranks. NaN when the class has no positive or no negative example."""
    scores = as_numpy(scores).astype(np.float64).ravel()
    targets = as_numpy(targets).astype(bool).ravel()
    n_pos = int(targets.sum())
    n_neg = targets.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_class_average_precision(scores, labels) -> np.ndarray:
    scores, labels = _check(scores, labels)
    targets = one_hot_targets(labels, scores.shape[1])
    return np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])


def mean_average_precision(scores, labels) -> float:
    """Macro mAP over the classes with at least one positive."""
    return _nanmean(per_class_average_precision(scores, labels))


def resampled_mean_average_precision(scores, labels, indices: np.ndarray) -> np.ndarray:
    """mean_average_precision(scores[i], labels[i]) for every row i of indices [B, n] at once
    (a bootstrap over tracks): the same step-wise AP, tied scores one threshold, per class and row."""
    scores, labels = _check(scores, labels)
    targets = one_hot_targets(labels, scores.shape[1])
    out = np.empty((indices.shape[0], scores.shape[1]))
    ranks = np.arange(1, indices.shape[1] + 1)
    for c in range(scores.shape[1]):
        s = scores[indices, c].astype(np.float64)  # [B, n]
        order = np.argsort(-s, axis=1, kind="stable")
        s = np.take_along_axis(s, order, axis=1)
        tp = np.cumsum(np.take_along_axis(targets[indices, c], order, axis=1), axis=1)
        last_of_tie = np.ones_like(s, dtype=bool)
        last_of_tie[:, :-1] = s[:, 1:] != s[:, :-1]
        tp_at_ends = np.where(last_of_tie, tp, 0)
        before = np.zeros_like(tp)
        before[:, 1:] = np.maximum.accumulate(tp_at_ends, axis=1)[:, :-1]  # tp at the previous threshold
        gain = np.where(last_of_tie, tp - before, 0)
        n_pos = tp[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, c] = (gain * tp / ranks).sum(axis=1) / n_pos
        out[n_pos == 0, c] = np.nan
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(out)).sum(axis=1)
        return np.where(counts > 0, np.nansum(out, axis=1) / np.maximum(counts, 1), np.nan)


def macro_roc_auc(scores, labels) -> float:
    """Macro one-vs-rest ROC-AUC over the classes with both positives and negatives."""
    scores, labels = _check(scores, labels)
    targets = one_hot_targets(labels, scores.shape[1])
    return _nanmean(np.array([roc_auc(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, equal values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[True, np.diff(sorted_values) != 0]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    sizes = np.diff(np.r_[first, values.size])
    mean_rank = first + (sizes + 1) / 2  # ranks first+1 .. first+size, averaged
    ranks = np.empty(values.size)
    ranks[order] = mean_rank[group]
    return ranks


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = as_numpy(scores), as_numpy(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected [n, C], got shape {scores.shape}")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels: {labels.shape[0]} rows but scores have {scores.shape[0]}")
    return scores, labels


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")
