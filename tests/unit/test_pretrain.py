
from dataclasses import asdict

import numpy as np
import pytest
import soundfile as sf
import torch

from clmr_ray.config import preset
from clmr_ray.data.base import Listing, Track
from clmr_ray.data.cache import open_cache, prepare
from clmr_ray.data.sampling import TrainSampler
from clmr_ray.pretrain import (
    ContrastiveModel,
    TrainContext,
    encoders_from_states,
    lr_lambda,
    pretrain,
    train_step,
)
from clmr_ray.safe_files import load_state, save_state

RATE = 8000
CROP = 2187  # 3^7


def small_spec(**overrides):
    base = {"pretrain.crop_samples": CROP, "pretrain.batch_size": 4, "pretrain.epochs": 2,
            "spectrogram.mel": {"n_fft": 256, "hop_length": 128, "n_mels": 32}}
    return preset("tiny", {**base, **overrides})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """10 train, 4 valid, 4 test tracks of 0.6 s: two 'classes' of tones in noise, on disk."""
    root = tmp_path_factory.mktemp("tones")
    tracks = []
    t = np.arange(int(0.6 * RATE)) / RATE
    for i, split in enumerate(["train"] * 10 + ["valid"] * 4 + ["test"] * 4):
        label = i % 2
        rng = np.random.default_rng(i)
        wave = 0.3 * np.sin(2 * np.pi * (300 if label else 900) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / f"t{i:02d}.wav"
        sf.write(path, wave.astype(np.float32), RATE)
        tracks.append(Track(f"t{i:02d}", path, split, (label,)))
    listing = Listing("tones", root, ["high", "low"], False, tracks)
    return open_cache(prepare(listing, RATE, min_samples=CROP, cache_root=root / "cache").path)


@pytest.mark.parametrize("fmt,objective", [("audio", "ntxent"), ("both", "cross_format")])
def test_model_and_train_step(cache, fmt, objective):
    spec = small_spec(**{"format": "both" if fmt == "both" else fmt, "pretrain.objective": objective})
    torch.manual_seed(0)
    model = ContrastiveModel(spec, fmt, RATE)
    batch = next(iter(TrainSampler(cache.split("train"), CROP, 4, seed=0)))
    z_a, z_b = model(batch.audio, torch.Generator().manual_seed(0))
    assert z_a.shape == z_b.shape == (4, spec.pretrain.projection_dim)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = train_step(model, batch, optimizer, temperature=0.5, generator=torch.Generator().manual_seed(0),
                      grad_clip=1.0)
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert set(model.encoders) == ({"audio", "spectrogram"} if fmt == "both" else {fmt})


def test_pretrain_reports_every_epoch_and_resumes_exactly_from_a_checkpoint(cache, tmp_path):
    # Pitch shifting is the slowest augmentation and plays no part in the loop's logic.
    spec = small_spec(**{"pretrain.schedule": "cosine", "pretrain.warmup_epochs": 1,
                         "audio.augment.pitch.enabled": False})
    train, valid = cache.split("train"), cache.split("valid")
    full = []
    result = pretrain(spec, "audio", train, valid, TrainContext(report=lambda m, c: full.append((m, c))))
    assert [m["epoch"] for m, _ in full] == [1, 2]
    assert all(c is not None and c["epoch"] == m["epoch"] for m, c in full)
    assert {"train_loss", "valid_loss", "crops_per_s", "lr"} <= set(full[0][0])
    assert len(result.history) == 2 and set(result.encoder_states) == {"audio"}
    encoder = encoders_from_states(spec, result.encoder_states)["audio"]
    assert encoder(torch.zeros(2, CROP)).shape == (2, encoder.out_dim)

    # through a file, as a checkpoint travels: plain data that loads with weights_only=True
    save_state(full[0][1], tmp_path, "state.pt")
    save_state(asdict(result), tmp_path, "result.pt")
    assert load_state(tmp_path / "result.pt")["history"] == result.history
    resumed = []
    pretrain(spec, "audio", train, valid, TrainContext(report=lambda m, c: resumed.append((m, c)),
                                                       resume_state=load_state(tmp_path / "state.pt")))
    assert [m["epoch"] for m, _ in resumed] == [2]
    (m_full, c_full), (m_res, c_res) = full[-1], resumed[-1]
    assert m_res["train_loss"] == m_full["train_loss"] and m_res["valid_loss"] == m_full["valid_loss"]
    for name, value in c_full["model"].items():
        assert torch.equal(value, c_res["model"][name]), name
    assert c_res["optimizer"]["state"].keys() == c_full["optimizer"]["state"].keys()


def test_should_stop_ends_the_loop(cache):
    result = pretrain(small_spec(**{"pretrain.epochs": 5, "audio.augment.pitch.enabled": False}), "audio", cache.split("train"), None,
                      TrainContext(report=lambda m, c: None, should_stop=lambda: True))
    assert len(result.history) == 1 and "valid_loss" not in result.history[0]


def test_early_stopping_follows_the_valid_loss(cache):
    spec = small_spec(**{"pretrain.epochs": 6, "pretrain.early_stop_patience": 1, "pretrain.lr": 3e-3,
                         "audio.augment.pitch.enabled": False})
    result = pretrain(spec, "audio", cache.split("train"), cache.split("valid"), TrainContext(report=lambda m, c: None))
    losses = [h["valid_loss"] for h in result.history]
    # the rule replayed: stop at the first epoch whose loss is not below the best so far
    expected = next((i + 1 for i in range(1, 6) if losses[i] >= min(losses[:i])), 6)
    assert len(losses) == expected and result.stopped_early == (expected < 6 or losses[-1] >= min(losses[:-1]))
    assert result.best_epoch == int(np.argmin(losses)) + 1


def test_lr_schedule_warms_up_then_decays():
    factor = lr_lambda(small_spec(**{"pretrain.epochs": 4, "pretrain.warmup_epochs": 1,
                                     "pretrain.schedule": "cosine"}), steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(25) == pytest.approx(0.5) and factor(39) < 0.01


def test_bad_requests_have_one_line_errors(cache):
    train = cache.split("train")
    with pytest.raises(ValueError, match="format 'both' with objective 'ntxent'"):
        pretrain(small_spec(format="both"), "both", train, None)
    with pytest.raises(ValueError, match="batch_size: 4 does not split evenly over 3 workers"):
        pretrain(small_spec(), "audio", train, None, TrainContext(world_size=3))
    with pytest.raises(ValueError, match="format 'audio'.*not 'spectrogram'"):
        state = {"format": "audio"}
        pretrain(small_spec(), "spectrogram", train, None, TrainContext(resume_state=state))
    with pytest.raises(ValueError, match="pretrain: format 'image'"):
        pretrain(small_spec(), "image", train, None)



def test_features_cover_every_non_overlapping_crop(cache):
    from clmr_ray.evaluate import extract_features
    from clmr_ray.pretrain import build_format_encoder, build_pipeline

    spec = small_spec()
    encoder = build_format_encoder(spec, "spectrogram")
    split = cache.split("test")
    features = extract_features(encoder, build_pipeline(spec, "spectrogram", RATE), split, CROP, 3, "cpu")
    per_track = split.lengths // CROP
    assert features.x.shape == (per_track.sum(), encoder.out_dim) and features.x.dtype == torch.float32
    assert features.track_index.tolist() == np.repeat(np.arange(split.n_tracks), per_track).tolist()
    assert encoder.training  # the encoder's mode is restored
