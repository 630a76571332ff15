import pytest
import torch

from clmr_ray.config import EvalSpec
from clmr_ray.evaluate import (
    Features,
    concat_features,
    score,
    score_probabilities,
    track_average,
    train_probe,
)


def test_track_average_is_the_mean_of_each_tracks_crops():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.6, 0.4]])
    means, tracks = track_average(probs, torch.tensor([3, 3, 0, 0]))
    assert tracks.tolist() == [0, 3]
    torch.testing.assert_close(means, torch.tensor([[0.4, 0.6], [0.5, 0.5]]))


def test_score_probabilities_track_and_crop_level():
    # track 0 (label 0): crops vote 0.9 / 0.3 for class 0 -> mean 0.6, right; crop-level one of two wrong
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    out = score_probabilities(probs, torch.tensor([0, 0, 1]), torch.tensor([0, 1]), multilabel=False, prefix="test")
    assert out["test_acc"] == pytest.approx(1.0)
    assert out["test_crop_acc"] == pytest.approx(2 / 3)
    assert out["test_map"] == pytest.approx(1.0)
    assert set(out) == {"test_acc", "test_map", "test_roc_auc", "test_crop_acc", "test_crop_map", "test_crop_roc_auc"}


def test_multilabel_scores_have_pr_auc_and_no_accuracy():
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = score_probabilities(probs, torch.arange(3), labels, multilabel=True, prefix="valid")
    assert out["valid_pr_auc"] == out["valid_map"] == pytest.approx(1.0)
    assert "valid_acc" not in out


def _blobs(n_tracks, crops, n_classes, seed, offset=0.0, scale=1.0):
    """Crops of tracks whose features sit around a class centre (well separated)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_tracks) % n_classes
    centres = torch.randn(n_classes, 16, generator=torch.Generator().manual_seed(99)) * 3
    track_index = torch.arange(n_tracks).repeat_interleave(crops)
    x = centres[labels[track_index]] + torch.randn(len(track_index), 16, generator=g)
    return Features(x * scale + offset, track_index), labels


def test_linear_probe_learns_separable_features_whatever_their_scale():
    train, y_train = _blobs(40, 3, 4, seed=0, offset=100.0, scale=50.0)
    valid, y_valid = _blobs(12, 3, 4, seed=1, offset=100.0, scale=50.0)
    test, y_test = _blobs(12, 3, 4, seed=2, offset=100.0, scale=50.0)
    probe = train_probe(train, valid, y_train, y_valid, EvalSpec(epochs=20, batch_size=32), 4, False, seed=0)
    out = score(probe, test, y_test, multilabel=False)
    assert out["test_acc"] > 0.9 and out["test_map"] > 0.9 and out["test_roc_auc"] > 0.9


def test_probe_is_deterministic_and_mlp_head_works():
    train, y_train = _blobs(20, 2, 3, seed=0)
    valid, y_valid = _blobs(6, 2, 3, seed=1)
    spec = EvalSpec(head="mlp", mlp_hidden=8, epochs=5, batch_size=8)
    a = train_probe(train, valid, y_train, y_valid, spec, 3, False, seed=3)
    b = train_probe(train, valid, y_train, y_valid, spec, 3, False, seed=3)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)


def test_early_stopping_keeps_the_best_epoch():
    train, y_train = _blobs(40, 2, 4, seed=0)
    valid, y_valid = _blobs(8, 2, 4, seed=1)  # perfectly ranked after the first epoch
    probe = train_probe(train, valid, y_train, y_valid, EvalSpec(epochs=50, batch_size=16, lr=0.1, early_stop_patience=2),
                        4, False, seed=0)
    assert probe.best_epoch == 1 and probe.epochs_run == 3


def test_multilabel_probe_uses_bce():
    train, y_single = _blobs(30, 2, 3, seed=0)
    valid, y_valid_single = _blobs(9, 2, 3, seed=1)
    to_multi_hot = lambda y: torch.nn.functional.one_hot(y, 3).float()
    probe = train_probe(train, valid, to_multi_hot(y_single), to_multi_hot(y_valid_single),
                        EvalSpec(epochs=10, batch_size=16, lr=0.02), 3, True, seed=0)
    out = score(probe, valid, to_multi_hot(y_valid_single), multilabel=True, prefix="valid")
    assert out["valid_map"] > 0.9 and out["valid_roc_auc"] > 0.9


def test_concat_features_is_feature_level_fusion():
    a = Features(torch.ones(3, 2), torch.tensor([0, 0, 1]))
    b = Features(torch.zeros(3, 5), torch.tensor([0, 0, 1]))
    assert concat_features([a, b]).x.shape == (3, 7)
    with pytest.raises(ValueError, match="same crops"):
        concat_features([a, Features(torch.zeros(3, 5), torch.tensor([0, 1, 1]))])


def test_labels_that_do_not_cover_the_tracks_are_rejected():
    train, y_train = _blobs(10, 2, 2, seed=0)
    with pytest.raises(ValueError, match="train_labels has 5 tracks"):
        train_probe(train, train, y_train[:5], y_train, EvalSpec(epochs=1), 2, False, seed=0)


def test_metric_names_are_the_keys_a_split_is_scored_under():
    from clmr_ray.evaluate import score_probabilities
    from clmr_ray.metrics import metric_names

    probs, tracks = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), torch.tensor([0, 1, 1])
    assert set(score_probabilities(probs, tracks, [0, 1], False, "valid")) == set(metric_names("valid", False))
    assert set(score_probabilities(probs, tracks, [[1, 0], [0, 1]], True, "test")) == set(metric_names("test", True))
