import numpy as np
import pytest
import torch

from clmr_ray import metrics

# 4 examples, 3 classes; the values below were worked out by hand.
SCORES = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.3], [0.5, 0.1, 0.2], [0.2, 0.3, 0.5]])
LABELS = np.array([0, 1, 2, 2])


def test_accuracy():
    assert metrics.accuracy(SCORES, LABELS) == pytest.approx(0.75)  # row 2 predicts class 0


def test_average_precision_by_hand():
    # ranking: pos, neg, pos, neg -> precision 1 at recall 1/2, 2/3 at recall 1
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a tie between a positive and a negative is one threshold: precision 1/2 at recall 1/2
    assert metrics.average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.25 + 0.5 * 2 / 3)
    assert np.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))


def test_roc_auc_by_hand_with_ties():
    assert metrics.roc_auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)
    # pairs (pos, neg): (0.5, 0.5) tie counts 1/2, (0.2, 0.5) counts 0
    assert metrics.roc_auc([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.25)
    assert np.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))


def test_single_label_macro_metrics():
    np.testing.assert_allclose(metrics.per_class_average_precision(SCORES, LABELS), [1.0, 1.0, 0.5 + 0.5 * 2 / 3])
    assert metrics.mean_average_precision(SCORES, LABELS) == pytest.approx((2 + 0.5 + 1 / 3) / 3)
    assert metrics.macro_roc_auc(SCORES, LABELS) == pytest.approx((1 + 1 + 0.75) / 3)


def test_multilabel_skips_classes_without_positives():
    scores = np.array([[0.9, 0.3, 0.1], [0.8, 0.3, 0.9], [0.1, 0.3, 0.2], [0.2, 0.3, 0.4]])
    labels = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    # class 0: pos, neg, neg, pos -> AP 1/2 + 1/2 * 2/4; class 1: all tied -> AP 1/2, AUC 1/2
    assert metrics.mean_average_precision(scores, labels) == pytest.approx((0.75 + 0.5) / 2)
    assert metrics.macro_roc_auc(scores, labels) == pytest.approx((0.5 + 0.5) / 2)


def test_accepts_torch_tensors():
    assert metrics.mean_average_precision(torch.tensor(SCORES), torch.tensor(LABELS)) == pytest.approx(
        metrics.mean_average_precision(SCORES, LABELS))


def test_perfect_and_reversed_rankings():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    perfect = np.eye(5)[labels] + 0.01 * rng.random((200, 5))
    assert metrics.mean_average_precision(perfect, labels) == pytest.approx(1.0)
    assert metrics.macro_roc_auc(perfect, labels) == pytest.approx(1.0)
    assert metrics.macro_roc_auc(-perfect, labels) == pytest.approx(0.0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="scores: expected"):
        metrics.accuracy(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="labels: 2 rows"):
        metrics.accuracy(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="out of range"):
        metrics.mean_average_precision(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="multi-hot width"):
        metrics.mean_average_precision(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="accuracy: needs class indices"):
        metrics.accuracy(np.zeros((2, 2)), np.zeros((2, 2)))


def test_random_cases_match_brute_force_definitions():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.integers(0, 6, 30).astype(float)  # many ties
        targets = rng.random(30) < 0.4
        pos, neg = scores[targets], scores[~targets]
        pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        assert metrics.roc_auc(scores, targets) == pytest.approx(pairs.mean())

        distinct = scores + 1e-3 * rng.random(30)  # no ties: AP = mean precision at each positive
        order = np.argsort(-distinct)
        hits = targets[order]
        precision_at_hits = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        assert metrics.average_precision(distinct, targets) == pytest.approx(precision_at_hits.mean())


@pytest.mark.parametrize("multilabel", [False, True])
def test_resampled_map_equals_map_of_each_resample(multilabel):
    """The bootstrap's vectorised mAP: resampled tracks repeat (tied scores), rare classes vanish."""
    rng = np.random.default_rng(0)
    n, classes = 40, 6
    scores = np.round(rng.random((n, classes)), 2)  # rounding makes ties inside a class too
    labels = (rng.random((n, classes)) < 0.2).astype(float) if multilabel else rng.integers(0, classes, n)
    indices = rng.integers(0, n, size=(50, n))
    got = metrics.resampled_mean_average_precision(scores, labels, indices)
    want = np.array([metrics.mean_average_precision(scores[i], labels[i]) for i in indices])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
