"""Stored features: keyed by all they depend on (and nothing else), written whole, damaged files computed again."""

from pathlib import Path

import torch

from clmr_ray import config
from clmr_ray.evaluate import Features
from clmr_ray.feature_store import FeatureStore, features_key
from clmr_ray.safe_files import save_state

CACHE = Path("/data/cache/synthetic-63020f993fc5525e")


def _features(n: int = 6) -> dict[str, Features]:
    return {name: Features(torch.randn(n, 4), torch.arange(n) // 2) for name in ("train", "valid", "test")}


def test_features_key_changes_with_what_features_depend_on_only():
    spec = config.preset("tiny")
    base = features_key(spec, "spectrogram", "a" * 64, CACHE, "cpu")
    same = config.with_overrides(spec, {"eval.head": "mlp", "eval.epochs": 2, "seed": 3, "pretrain.lr": 0.5,
                                        "spectrogram.augment.time_mask.enabled": False, "audio.encoder.width": 0.5})
    assert features_key(same, "spectrogram", "a" * 64, CACHE, "cpu") == base  # probe, seed, training: the encoder's hash
    assert features_key(spec, "spectrogram", "b" * 64, CACHE, "cpu") != base  # another encoder
    assert features_key(spec, "audio", "a" * 64, CACHE, "cpu") != base
    assert features_key(spec, "spectrogram", "a" * 64, CACHE.with_name("synthetic-0000000000000000"), "cpu") != base
    for change in ({"eval.batch_size": 7}, {"pretrain.crop_samples": spec.pretrain.crop_samples * 2},
                   {"spectrogram.mel.n_mels": 16}):
        assert features_key(config.with_overrides(spec, change), "spectrogram", "a" * 64, CACHE, "cpu") != base, change
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # other CPU kernels' blocking: other float rounding
        assert features_key(spec, "spectrogram", "a" * 64, CACHE, "cpu") != base
    finally:
        torch.set_num_threads(threads)
    assert features_key(spec, "spectrogram", "a" * 64, CACHE, "cpu") == base


def test_features_round_trip_bit_for_bit(tmp_path):
    store, features = FeatureStore(tmp_path), _features()
    assert store.load("audio-x") is None
    store.save("audio-x", features)
    loaded = store.load("audio-x")
    assert loaded.keys() == features.keys()
    for name, f in features.items():
        assert torch.equal(loaded[name].x, f.x) and torch.equal(loaded[name].track_index, f.track_index)


def test_a_damaged_or_foreign_features_file_is_dropped_with_one_line(tmp_path):
    store, logged = FeatureStore(tmp_path), []
    store.save("audio-x", _features())
    path = store.path("audio-x")
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    assert store.load("audio-x", logged.append) is None
    assert len(logged) == 1 and "features refused" in logged[0] and str(path) in logged[0]
    assert not path.exists() and not path.with_name(path.name + ".sha256").exists()

    save_state({"w": torch.ones(2)}, tmp_path, "audio-y.pt")  # a whole, hashed state, but not features
    assert store.load("audio-y", logged.append) is None
    assert "not a features file" in logged[-1] and str(store.path("audio-y")) in logged[-1]
    assert not store.path("audio-y").exists()
