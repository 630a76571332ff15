import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from clmr_ray.data.base import DatasetError
from clmr_ray.data.cache import open_cache, prepare
from clmr_ray.data.folder import scan_folder
from clmr_ray.data.sampling import CropBatch, TrainSampler, eval_batches

CROP = 64


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """10 train and 7 valid tracks at 8 kHz whose int16 sample j of track k is k * 1000 + j, so a
    crop's values tell which track and position it came from."""
    root = tmp_path_factory.mktemp("ramps")
    (root / "x").mkdir()
    rows = ["path,split"]
    for k in range(17):
        length = 200 + (k * 97) % 700
        ramp = (k * 1000 + np.arange(length)) / 32767.0
        sf.write(root / "x" / f"t{k:02d}.wav", ramp.astype(np.float32), 8000, subtype="FLOAT")
        rows.append(f"x/t{k:02d}.wav,{'train' if k < 10 else 'valid'}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    prepared = prepare(scan_folder(root), 8000, min_samples=CROP, cache_root=root / "cache")
    return open_cache(prepared.path)


def decode(crop: torch.Tensor) -> np.ndarray:
    return np.rint(crop.numpy() * 32767).astype(np.int64)


def track_of(split, i):
    """The track-number k encoded in the samples of row i of the split."""
    return int(np.rint(split.track(i)[0] * 32767)) // 1000


def epoch_tracks(sampler, epoch):
    sampler.set_epoch(epoch)
    return torch.cat([b.track_index for b in sampler]).numpy()


def test_two_ranks_are_disjoint_and_cover_every_track(cache):
    train = cache.split("train")
    ranks = [TrainSampler(train, CROP, 5, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        a, b = (epoch_tracks(s, epoch) for s in ranks)
        assert len(a) == len(b) == 5 and not set(a) & set(b)
        assert sorted(np.concatenate([a, b])) == list(range(10))
    assert not np.array_equal(epoch_tracks(ranks[0], 0), epoch_tracks(ranks[0], 1))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_uneven_shards_wrap_to_equal_length(cache, world_size):
    valid = cache.split("valid")  # 7 tracks
    samplers = [TrainSampler(valid, CROP, 2, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({len(s) for s in samplers}) == 1
    shards = [s.shard(epoch=4) for s in samplers]
    assert len({len(x) for x in shards}) == 1
    together = np.concatenate(shards)
    assert set(together) == set(range(7)) and len(together) - 7 <= world_size - 1


def test_batches_shapes_and_last_batch_of_one_dropped(cache):
    valid = cache.split("valid")
    sampler = TrainSampler(valid, CROP, 3, n_views=2)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 2  # 7 = 3 + 3 + 1, the lone crop is dropped
    assert isinstance(batches[0], CropBatch)
    assert batches[0].audio.shape == (3, 2, CROP) and batches[0].audio.dtype == torch.float32
    assert batches[0].track_index.dtype == torch.int64
    sampler = TrainSampler(valid, CROP, 5)
    assert [len(b.track_index) for b in sampler] == [5, 2]


def test_same_seed_same_batches_other_seed_differs(cache):
    train = cache.split("train")

    def run(seed):
        sampler = TrainSampler(train, CROP, 4, seed=seed)
        sampler.set_epoch(2)
        return [b.audio for b in sampler]

    assert all(torch.equal(x, y) for x, y in zip(run(7), run(7)))
    assert not all(torch.equal(x, y) for x, y in zip(run(7), run(8)))


def test_crops_lie_inside_their_track(cache):
    train = cache.split("train")
    sampler = TrainSampler(train, CROP, 4, n_views=3, crops_per_track=3)
    seen = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for crops, i in zip(batch.audio, batch.track_index.tolist()):
                values = decode(crops)  # [views, crop]
                k, starts = values[:, 0] // 1000, values[:, 0] % 1000
                assert (k == track_of(train, i)).all()
                assert (values == values[:, :1] + np.arange(CROP)).all()  # contiguous
                assert (starts + CROP <= train.lengths[i]).all()
                seen.extend(starts)
    assert len(set(seen)) > 50  # positions spread over the tracks
    assert len(epoch_tracks(sampler, 0)) == 30  # 10 tracks x 3 crops each


def test_shared_views_are_identical(cache):
    train = cache.split("train")
    shared = next(iter(TrainSampler(train, CROP, 8, independent_views=False))).audio
    assert torch.equal(shared[:, 0], shared[:, 1])
    independent = next(iter(TrainSampler(train, CROP, 8))).audio
    assert not torch.equal(independent[:, 0], independent[:, 1])


def test_eval_batches_cover_every_whole_crop(cache):
    valid = cache.split("valid")
    crops, owners = zip(*eval_batches(valid, CROP, batch_size=5))
    crops, owners = torch.cat(crops), torch.cat(owners).numpy()
    expected = np.repeat(np.arange(7), valid.lengths // CROP)
    assert np.array_equal(owners, expected)  # floor(len / crop) crops per track, in order
    for i in range(7):
        mine = crops[owners == i].reshape(-1).numpy()
        np.testing.assert_array_equal(mine, valid.track(i)[: len(mine)])


def test_sampler_pickles_small(cache):
    sampler = TrainSampler(cache.split("train"), CROP, 4, seed=3)
    copy = pickle.loads(pickle.dumps(sampler))
    assert len(pickle.dumps(sampler)) < 4000
    assert all(torch.equal(a.audio, b.audio) for a, b in zip(sampler, copy))


def test_sampler_errors(cache):
    train = cache.split("train")
    with pytest.raises(DatasetError, match=r"shorter than crop_samples=600 \(e.g. x/t00.wav: 200 samples\)"):
        TrainSampler(train, 600, 4)
    with pytest.raises(DatasetError, match="batch_size must be >= 2"):
        TrainSampler(train, CROP, 1)
    with pytest.raises(DatasetError, match="rank 2 is outside world_size 2"):
        TrainSampler(train, CROP, 4, rank=2, world_size=2)
    with pytest.raises(DatasetError, match="shorter than crop_samples"):
        next(eval_batches(train, 600, 4))


def test_raw_batches_hold_the_cache_samples_and_convert_to_the_sampler_floats(cache):
    """raw_batches(e) is what iterating after set_epoch(e) gives, before the float conversion: the
    cache's int16 samples (half the bytes to pin and copy), bit for bit the same floats once
    converted."""
    sampler = TrainSampler(cache.split("train"), CROP, 4, seed=3)
    for epoch in (0, 2):
        sampler.set_epoch(epoch)
        floats = list(sampler)
        raw = list(sampler.raw_batches(epoch))
        assert len(raw) == len(floats) == len(sampler)
        for r, f in zip(raw, floats, strict=True):
            assert r.samples.dtype == torch.int16 and r.samples.shape == f.audio.shape
            assert torch.equal(r.to_float().audio, f.audio) and torch.equal(r.track_index, f.track_index)
