"""Speed-ups of the training step. Most pay on a GPU only and are off on a CPU (they cost there or
change nothing, or, as views_in_one_call, they would change a CPU run's numbers at float rounding);
reusing freed host memory pays on both.

    speed = Speedups.for_device(device)            # what is on for this device
    speed.apply_backend()                          # host memory reuse, cuDNN autotuning (process-wide)
    model = speed.prepare_model(model)             # channels-last convolutions (2-D, and SampleCNN's 1-D)
    optimizer = speed.adam(model.parameters(), lr=1e-3, weight_decay=0.0)
    step = speed.step(model, optimizer, temperature=0.1, generator=g, amp=True, grad_clip=None)
    with speed.feed(sampler, device, epochs) as feed:  # sampled and pinned ahead, across epoch ends
        for epoch in epochs:
            for batch in feed.epoch(epoch):
                loss = step(batch)                 # replayed as one CUDA graph after a few steps

Each one that touches the computation keeps the gradients: tests/unit/test_speedups.py runs a few
optimiser steps with and without it on CPU and compares the parameters (reusing host memory touches
none; views_in_one_call's tests compare the views). bench step (--without NAME, --with NAME) measures each.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Self

import torch
from torch import nn

from .data.sampling import CropBatch, RawCrops


@dataclass(frozen=True)
class Speedups:
    fused_adam: bool = False  # the whole Adam update in one kernel instead of a few per parameter
    channels_last: bool = False  # NHWC 2-D convolutions: the tensor cores' native layout
    channels_last_1d: bool = False  # SampleCNN's 1-D convolutions as 1 x k 2-D ones in NHWC (same weights)
    cudnn_benchmark: bool = False  # cuDNN times its convolution algorithms once per shape
    prefetch: bool = False  # crops for the next step are sampled and pinned in a background thread
    cuda_graph: bool = False  # augmentation, forward, loss and backward of a step replayed as one CUDA graph
    reuse_host_memory: bool = False  # glibc keeps freed tensors' memory for the next ones (reuse_freed_host_memory)
    # Both views of a step drawn as two pipeline calls draw them, then augmented as one batch of 2B rows
    # (AugmentPipeline.views): the same views to float rounding; a paper audio step 289 kernels instead of 507.
    views_in_one_call: bool = False

    @classmethod
    def for_device(cls, device: torch.device | str, deterministic: bool | None = None) -> Speedups:
        """All on for CUDA; on other devices only reuse_host_memory. cuDNN autotuning stays off
        under deterministic algorithms (default: whether torch's are on): it may pick another
        algorithm on a rerun."""
        if torch.device(device).type != "cuda":
            return cls(reuse_host_memory=True)
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        return cls(fused_adam=True, channels_last=True, channels_last_1d=True, cudnn_benchmark=not deterministic,
                   prefetch=True, cuda_graph=True, reuse_host_memory=True, views_in_one_call=True)

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Speedups))

    def without(self, names: Iterable[str]) -> Speedups:
        return replace(self, **{name: False for name in self._known(names)})

    def with_(self, names: Iterable[str]) -> Speedups:
        return replace(self, **{name: True for name in self._known(names)})

    def _known(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        for name in names:
            if name not in self.names():
                raise ValueError(f"speed-up '{name}' is not one of {', '.join(self.names())}")
        return names

    def apply_backend(self) -> None:
        """Process-wide switches; only ever turns them on (cuDNN autotuning is off by default)."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if self.reuse_host_memory:
            reuse_freed_host_memory()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from .models.samplecnn import SampleCNN
        from .pretrain import ContrastiveModel

        if self.channels_last:  # only 4-D tensors change layout: 1-D convolutions are left alone
            model = model.to(memory_format=torch.channels_last)
        for module in model.modules():
            if isinstance(module, SampleCNN):
                module.channels_last = self.channels_last_1d
            if isinstance(module, ContrastiveModel):
                module.views_in_one_call = self.views_in_one_call
        return model

    def adam(self, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True if self.fused_adam else None)

    def batches(self, sampler: Iterable[CropBatch], device: torch.device | str) -> Iterable[CropBatch]:
        return Prefetch(sampler, device) if self.prefetch else sampler

    def feed(self, sampler, device: torch.device | str, epochs: Iterable[int]) -> EpochFeed:
        """A TrainSampler's batches for these epochs, prefetched across epoch ends when prefetch is on."""
        return EpochFeed(sampler, device, epochs, prefetch=self.prefetch)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, **step_args) -> Callable[[CropBatch], torch.Tensor]:
        """The training step: pretrain.train_step(model, batch, optimizer, **step_args), or with
        cuda_graph on a CUDA device (and a model not wrapped for DDP) a GraphedStep of it."""
        from .graphed_step import GraphedStep
        from .pretrain import train_step

        device = next(model.parameters()).device
        if self.cuda_graph and device.type == "cuda" and not hasattr(model, "module"):
            return GraphedStep(model, optimizer, **step_args)
        return functools.partial(train_step, model, optimizer=optimizer, **step_args)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest: host tensors up to 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30  # freed heap memory is given back to the system only past 1 GiB


def reuse_freed_host_memory() -> bool:
    """Make glibc's malloc serve host tensors up to 32 MiB from its heap and keep freed memory for
    the next ones. By default it maps each block above a threshold afresh and unmaps it when freed
    (its pages fault in again at the next step), and it moves that threshold as blocks come and go:
    which tensors a process happened to free first decided whether its CPU steps ran fast or ~10 %
    slower (`bench step --preset demo --device cpu`, audio: 78-97 ms per step over 4 processes, 78-82
    with this). Changes no number; costs resident memory (a demo run's peak 1.29 -> 1.39 GB). Returns
    whether it applied: False off glibc (macOS, musl)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    # In this order, the second only if the first took: a trim threshold alone also freezes the mmap
    # threshold, at its 128 KiB start, and then every tensor above it is mapped (3x slower steps here).
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class Prefetch:
    """Iterate `batches` in a background thread, `depth` batches ahead: crop sampling (memory-map
    reads) overlaps the step running on the device. Items are CropBatch or RawCrops (the cache's
    int16 samples, half the bytes: converted to float32 on the device, the same values as on the
    host); anything else passes through as it is (EpochFeed's epoch ends). On CUDA each batch is
    pinned in the thread and copied on a stream of its own, which the step's stream waits for:
    the copy of batch i + 1 runs while step i computes. The order is the iterator's."""

    _DONE = object()

    def __init__(self, batches: Iterable, device: torch.device | str, depth: int = 2):
        if depth < 1:
            raise ValueError(f"Prefetch.depth: must be >= 1, got {depth}")
        self.batches, self.device, self.depth = batches, torch.device(device), depth

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        cuda = self.device.type == "cuda"
        copies = torch.cuda.Stream(self.device) if cuda else None
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self.batches:
                    if cuda and isinstance(item, RawCrops):
                        item = RawCrops(item.samples.pin_memory(), item.track_index, item.scale)
                    elif cuda and isinstance(item, CropBatch):
                        item = CropBatch(item.audio.pin_memory(), item.track_index)
                    if not put(item):
                        return
                put(self._DONE)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
                put(exc)

        thread = threading.Thread(target=produce, name="crop-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._to_device(item, copies) if isinstance(item, RawCrops | CropBatch) else item
        finally:
            stop.set()
            thread.join()

    def _to_device(self, item: RawCrops | CropBatch, copies: torch.cuda.Stream | None) -> CropBatch:
        def move(non_blocking: bool) -> CropBatch:
            if isinstance(item, RawCrops):
                return item.to_float(self.device, non_blocking=non_blocking)
            return CropBatch(item.audio.to(self.device, non_blocking=non_blocking), item.track_index)

        if copies is None:
            return move(non_blocking=False)
        with torch.cuda.stream(copies):
            batch = move(non_blocking=True)
        step_stream = torch.cuda.current_stream(self.device)
        step_stream.wait_stream(copies)
        batch.audio.record_stream(step_stream)  # made on the copy stream, used and freed on the step's
        return batch


@dataclass(frozen=True)
class _EpochEnd:
    epoch: int


class EpochFeed:
    """The training batches of a run's epochs, in order: `feed.epoch(e)` iterates epoch e's, as
    iterating the sampler after set_epoch(e) would. With prefetch, one Prefetch runs through all
    the epochs: the next epoch's first batches are sampled and pinned while this one's last
    steps, its validation and its checkpoint run, so an epoch never starts by waiting for the
    sampler (at the paper's 443 training tracks an epoch is 10 steps: 9 of 48 crops, one of 11).
    Epochs must be asked for in order; what an epoch left unread is skipped; close() (or the
    with-block's end) stops the thread."""

    def __init__(self, sampler, device: torch.device | str, epochs: Iterable[int], prefetch: bool):
        epochs = list(epochs)
        self.sampler, self.device, self.prefetch = sampler, torch.device(device), prefetch
        self.epochs = iter(epochs)
        self._stream = iter(Prefetch(self._all_epochs(epochs), self.device)) if prefetch else None
        self._unread = None  # an epoch whose end the stream has not passed, though the caller moved on

    def _all_epochs(self, epochs: list[int]) -> Iterator:
        for epoch in epochs:
            yield from self.sampler.raw_batches(epoch)
            yield _EpochEnd(epoch)

    def epoch(self, epoch: int) -> Iterator[CropBatch]:
        expected = next(self.epochs, None)
        if epoch != expected:
            raise ValueError(f"EpochFeed: epoch {epoch} asked for, {expected} comes next")
        if self._stream is None:
            for raw in self.sampler.raw_batches(epoch):
                yield raw.to_float(self.device)
            return
        if self._unread is not None:
            for item in self._stream:  # the rest of the epoch before
                if isinstance(item, _EpochEnd):
                    break
        self._unread = epoch
        for item in self._stream:
            if isinstance(item, _EpochEnd):
                self._unread = None
                return
            yield item

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # the generator's finally: stop and join the thread

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
