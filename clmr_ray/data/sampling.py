"""Batches of crops read straight from a cache's memory map.

Crops are gathered with one fancy index into a sliding-window view of the split's samples
(`windows[start]` is the crop beginning at `start`), which copies each crop as one contiguous
row, with no per-sample index array and no Python loop over examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .base import DatasetError

if TYPE_CHECKING:  # cache.py imports soundfile: the benchmarks run where it is missing
    from .cache import CachedSplit


@dataclass
class CropBatch:
    audio: torch.Tensor  # float32 [B, n_views, crop_samples] in [-1, 1]
    track_index: torch.Tensor  # int64 [B], rows of the split


@dataclass
class RawCrops:
    """A CropBatch before its conversion to float32: the cache's samples (int16 or float16)."""

    samples: torch.Tensor  # [B, n_views, crop_samples], the cache's dtype
    track_index: torch.Tensor  # int64 [B]
    scale: float  # samples * scale in float32 are the crops in [-1, 1]

    def to_float(self, device: torch.device | str | None = None, non_blocking: bool = False) -> CropBatch:
        """The CropBatch (on `device`, default where the samples are): the same float32 values
        wherever it is converted (int16 and float16 are exact in float32; the scale is one rounded
        multiplication)."""
        samples = self.samples if device is None else self.samples.to(device, non_blocking=non_blocking)
        return CropBatch(scaled_float(samples, self.scale), self.track_index)


def check_crop_fits(split: CachedSplit, crop_samples: int) -> None:
    if crop_samples < 1:
        raise DatasetError(f"crop_samples must be >= 1, got {crop_samples}")
    short = np.flatnonzero(split.lengths < crop_samples)
    if short.size:
        worst = short[np.argmin(split.lengths[short])]
        raise DatasetError(
            f"{short.size} tracks of split '{split.name}' are shorter than crop_samples={crop_samples} "
            f"(e.g. {split.track_ids[worst]}: {split.lengths[worst]} samples); "
            f"prepare the cache with min_samples >= {crop_samples}"
        )


def crop_windows(split: CachedSplit, crop_samples: int) -> np.ndarray:
    """[n_samples - crop + 1, crop] read-only view: row s is the crop starting at sample s."""
    return np.lib.stride_tricks.sliding_window_view(split.audio, crop_samples)


def scaled_float(samples: torch.Tensor, scale: float) -> torch.Tensor:
    out = samples.to(torch.float32)
    return out.mul_(scale) if scale != 1.0 else out


def to_float(samples: np.ndarray, scale: float) -> torch.Tensor:
    return scaled_float(torch.from_numpy(samples), scale)


class TrainSampler:
    """Random crops for contrastive pretraining, sharded over DDP ranks.

    Each epoch permutes the tracks (each repeated crops_per_track times) with the same seed on
    every rank; rank r takes every world_size-th entry, the permutation wrapped around so every
    rank gets the same number of crops. Crop positions are drawn per rank."""

    def __init__(
        self,
        split: CachedSplit,
        crop_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        n_views: int = 2,
        independent_views: bool = True,
        crops_per_track: int = 1,
    ):
        if split.n_tracks == 0:
            raise DatasetError(f"split '{split.name}' of {split.cache_path} has no tracks to sample")
        if batch_size < 2:
            raise DatasetError(f"batch_size must be >= 2 for NT-Xent, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DatasetError(f"rank {rank} is outside world_size {world_size}")
        if n_views < 1 or crops_per_track < 1:
            raise DatasetError(f"n_views and crops_per_track must be >= 1, got {n_views}, {crops_per_track}")
        check_crop_fits(split, crop_samples)
        self.split = split
        self.crop_samples = crop_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.n_views = n_views
        self.independent_views = independent_views
        self.crops_per_track = crops_per_track
        self.epoch = 0

    @property
    def crops_per_rank(self) -> int:
        return -(-self.split.n_tracks * self.crops_per_track // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.crops_per_rank, self.batch_size)
        return full + (rest >= 2)

    def shard(self, epoch: int | None = None) -> np.ndarray:
        """Track indices this rank visits in `epoch` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        order = np.tile(np.arange(self.split.n_tracks), self.crops_per_track)
        order = np.random.default_rng([self.seed, epoch]).permutation(order)
        order = np.resize(order, self.crops_per_rank * self.world_size)  # wraps around
        return np.ascontiguousarray(order[self.rank :: self.world_size])

    def crop_starts(self, tracks: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """[len(tracks), n_views] start positions within each track."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        room = (self.split.lengths[tracks] - self.crop_samples + 1)[:, None]
        views = self.n_views if self.independent_views else 1
        starts = rng.integers(0, room, size=(len(tracks), views))
        return np.repeat(starts, self.n_views, axis=1) if views == 1 else starts

    def __iter__(self) -> Iterator[CropBatch]:
        for batch in self.raw_batches(self.epoch):
            yield batch.to_float()

    def raw_batches(self, epoch: int) -> Iterator[RawCrops]:
        """`epoch`'s batches as the cache stores its samples (int16 or float16: half the bytes of
        float32, to pin and copy to a GPU); iterating the sampler gives the same batches in float32."""
        tracks = self.shard(epoch)[: len(self) * self.batch_size]
        starts = self.split.offsets[tracks][:, None] + self.crop_starts(tracks, epoch)
        windows = crop_windows(self.split, self.crop_samples)  # a view; never stored, so pickling stays cheap
        for b in range(0, len(tracks), self.batch_size):
            crops = windows[starts[b : b + self.batch_size]]
            yield RawCrops(torch.from_numpy(crops), torch.from_numpy(tracks[b : b + self.batch_size]),
                           self.split.scale)


def eval_batches(
    split: CachedSplit, crop_samples: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every non-overlapping crop of every track, in track order: ([B, crop], track index [B])."""
    if split.n_tracks == 0:
        return
    check_crop_fits(split, crop_samples)
    n_crops = split.lengths // crop_samples
    track_index = np.repeat(np.arange(split.n_tracks), n_crops)
    first_crop = np.repeat(np.cumsum(n_crops) - n_crops, n_crops)
    starts = split.offsets[track_index] + (np.arange(len(track_index)) - first_crop) * crop_samples
    windows = crop_windows(split, crop_samples)
    for b in range(0, len(starts), batch_size):
        yield (
            to_float(windows[starts[b : b + batch_size]], split.scale),
            torch.from_numpy(track_index[b : b + batch_size]),
        )
