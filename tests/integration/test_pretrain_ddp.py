"""The pretraining loop under DDP: 2 gloo workers on localhost, negatives gathered across them."""

import os
import socket

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from clmr_ray.config import preset
from clmr_ray.data.base import Listing, Track
from clmr_ray.data.cache import open_cache, prepare
from clmr_ray.pretrain import TrainContext, pretrain

RATE, CROP, WORLD = 8000, 2187, 2


def _spec():
    return preset("tiny", {"pretrain.crop_samples": CROP, "pretrain.batch_size": 4, "pretrain.epochs": 2,
                           "audio.augment.pitch.enabled": False})


def _make_cache(root):
    t = np.arange(int(0.5 * RATE)) / RATE
    tracks = []
    for i, split in enumerate(["train"] * 8 + ["valid"] * 4 + ["test"] * 2):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * np.random.default_rng(i).standard_normal(t.size)
        sf.write(root / f"t{i}.wav", wave.astype(np.float32), RATE)
        tracks.append(Track(f"t{i}", root / f"t{i}.wav", split, (i % 2,)))
    return prepare(Listing("tones", root, ["a", "b"], False, tracks), RATE, min_samples=CROP,
                   cache_root=root / "cache").path


def _worker(rank, port, cache_path, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cache = open_cache(cache_path)
        checkpoints = []
        ctx = TrainContext(rank=rank, world_size=WORLD, wrap_model=DistributedDataParallel,
                           report=lambda metrics, checkpoint: checkpoints.append(checkpoint is not None))
        result = pretrain(_spec(), "audio", cache.split("train"), cache.split("valid"), ctx)
        torch.save({"states": result.encoder_states, "history": result.history, "checkpoints": checkpoints},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_agree_on_weights_losses_and_batchnorm(tmp_path):
    cache_path = _make_cache(tmp_path)
    mp.spawn(_worker, args=(_free_port(), str(cache_path), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert ranks[0]["checkpoints"] == [True, True] and ranks[1]["checkpoints"] == [False, False]
    for key in ("train_loss", "valid_loss"):
        assert [h[key] for h in ranks[0]["history"]] == [h[key] for h in ranks[1]["history"]]
    for name, value in ranks[0]["states"]["audio"].items():
        torch.testing.assert_close(value, ranks[1]["states"]["audio"][name], msg=name)
