"""The GPU speed-ups keep the gradients: a few optimiser steps with and without each, on CPU."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from clmr_ray.config import preset
from clmr_ray.data.sampling import CropBatch
from clmr_ray.pretrain import ContrastiveModel, train_step
from clmr_ray.speedups import Prefetch, Speedups

CROP = 2187  # 3^7 samples at 8 kHz


def tiny_spec():
    return preset("tiny", {"pretrain.crop_samples": CROP, "audio.augment.pitch.enabled": False})


def batches(n: int = 3, size: int = 4) -> list[CropBatch]:
    g = torch.Generator().manual_seed(5)
    return [CropBatch(0.3 * torch.randn(size, 2, CROP, generator=g), torch.arange(size)) for _ in range(n)]


def train(fmt: str, speed: Speedups, steps: list[CropBatch], sgd: bool = False):
    """Parameters and losses after the given steps, from the same initial weights and augmentations.

    sgd: plain SGD instead of the speed-up's Adam. Adam turns rounding noise on a gradient that is
    0 in exact arithmetic (a convolution bias before BatchNorm) into full lr-sized steps."""
    spec = tiny_spec()
    torch.manual_seed(0)
    model = speed.prepare_model(ContrastiveModel(spec, fmt, 8000))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05) if sgd else speed.adam(params, lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(1)
    losses = [float(train_step(model, batch, optimizer, temperature=0.5, generator=generator, grad_clip=1.0))
              for batch in speed.batches(steps, "cpu")]
    return [p.detach().clone() for p in params], losses


def assert_same_training(a, b, rtol: float, atol: float) -> None:
    (params_a, losses_a), (params_b, losses_b) = a, b
    assert losses_a == pytest.approx(losses_b, rel=rtol, abs=0)
    for x, y in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def test_channels_last_gives_the_same_parameters_after_a_few_steps():
    steps = batches()
    # NHWC kernels round differently; over 3 steps that stays at float32 noise
    assert_same_training(train("spectrogram", Speedups(), steps, sgd=True),
                         train("spectrogram", Speedups(channels_last=True), steps, sgd=True), rtol=1e-4, atol=1e-6)


def test_samplecnn_channels_last_gives_the_same_parameters_after_a_few_steps():
    steps = batches()
    assert_same_training(train("audio", Speedups(), steps, sgd=True),
                         train("audio", Speedups(channels_last_1d=True), steps, sgd=True), rtol=1e-3, atol=1e-5)


def test_the_step_off_cuda_is_train_step_itself():
    """speed.step only graphs on CUDA: elsewhere it is train_step with the same arguments, bit for bit."""
    spec = tiny_spec()
    results = []
    for use_step in (False, True):
        torch.manual_seed(0)
        model = ContrastiveModel(spec, "audio", 8000)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 / (i + 1))
        args = {"temperature": 0.5, "generator": torch.Generator().manual_seed(1), "grad_clip": 1.0,
                "scheduler": scheduler}
        step = Speedups(cuda_graph=True).step(model, optimizer, **args) if use_step else None
        losses = [step(b) if use_step else train_step(model, b, optimizer, **args) for b in batches()]
        results.append(([p.detach().clone() for p in model.parameters()], [float(v) for v in losses]))
    assert_same_training(*results, 0, 0)


@pytest.mark.parametrize("fmt", ["audio", "spectrogram"])
def test_fused_adam_takes_the_same_steps_as_the_plain_one(fmt):
    """Fed the same gradients, the fused update matches the per-tensor one to float32 rounding."""
    torch.manual_seed(0)
    model = ContrastiveModel(tiny_spec(), fmt, 8000)
    twin = copy.deepcopy(model)
    plain = Speedups().adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    fused = Speedups(fused_adam=True).adam(twin.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(1)
    for batch in batches():
        plain.zero_grad()
        model.loss(*model(batch.audio, generator), 0.5, gather=False).backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        plain.step()
        fused.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_prefetched_training_is_bit_identical():
    steps = batches()
    assert_same_training(train("audio", Speedups(), steps), train("audio", Speedups(prefetch=True), steps), 0, 0)


def test_train_step_returns_the_loss_without_reading_it_back():
    spec = tiny_spec()
    model = ContrastiveModel(spec, "audio", 8000)
    optimizer = torch.optim.Adam(model.parameters())
    loss = train_step(model, batches(1)[0], optimizer, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad


def test_speedups_are_on_for_cuda_and_cudnn_autotuning_not_when_deterministic():
    assert Speedups.for_device("cpu") == Speedups(reuse_host_memory=True)
    assert Speedups.for_device("cuda", deterministic=False) == Speedups(*[True for _ in Speedups.names()])
    assert Speedups().with_(["views_in_one_call"]).views_in_one_call
    assert not Speedups.for_device("cuda", deterministic=True).cudnn_benchmark
    assert Speedups.for_device("cuda", deterministic=False).without(["prefetch"]).prefetch is False
    with pytest.raises(ValueError, match="speed-up 'graphs' is not one of fused_adam, channels_last"):
        Speedups().without(["graphs"])


def test_prefetch_keeps_order_stops_early_and_passes_errors_on():
    steps = batches(5)
    got = list(Prefetch(steps, "cpu", depth=2))
    assert len(got) == 5 and all(torch.equal(a.audio, b.audio) for a, b in zip(got, steps))
    before = threading.active_count()
    for _ in Prefetch(steps, "cpu", depth=1):
        break  # the producer thread is told to stop and joined
    assert threading.active_count() == before

    def failing():
        yield steps[0]
        raise OSError("cache file vanished")

    with pytest.raises(OSError, match="cache file vanished"):
        list(Prefetch(failing(), "cpu"))
    with pytest.raises(ValueError, match="Prefetch.depth: must be >= 1, got 0"):
        Prefetch(steps, "cpu", depth=0)


def test_the_graph_check_accepts_rounding_and_refuses_another_step():
    """GraphedStep's check after capture (CUDA only) is plain arithmetic: tested here on CPU."""
    from clmr_ray.graphed_step import _mismatch

    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g), None]
    loss = torch.tensor(2.5)
    rounded = [x * (1 + 1e-6) if x is not None else None for x in grads]
    assert _mismatch(loss, loss * (1 + 1e-6), grads, rounded) is None
    other = [torch.randn(5, 3, generator=g), grads[1], None]
    assert "gradients by" in _mismatch(loss, loss, grads, other)
    assert "loss by" in _mismatch(loss, loss * 1.5, grads, grads)
    assert "empty" in _mismatch(loss, loss, grads, [grads[0], None, None])


REUSE_CHECK = """
import ctypes, sys, torch
from clmr_ray import speedups
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("no-glibc"); sys.exit()

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc.mallinfo2.restype = Info
if sys.argv[1] == "reuse":
    assert speedups.reuse_freed_host_memory()
before, mapped = libc.mallinfo2().hblks, []
for _ in range(3):  # 16 MiB tensors, each freed before the next, as a training step's are
    x = torch.ones(4 << 20)
    mapped.append(libc.mallinfo2().hblks)
    del x
print(max(mapped) - before)
"""


@pytest.mark.parametrize("mode", ["default", "reuse"])
def test_reused_host_memory_serves_large_tensors_from_the_heap(mode):
    """glibc maps a fresh 16 MiB block for the first such tensor (its threshold starts at 128 KiB);
    with reuse_freed_host_memory no tensor up to 32 MiB is mapped."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", REUSE_CHECK, mode], capture_output=True, text=True, check=True)
    if out.stdout.strip() == "no-glibc":
        pytest.skip("not glibc")
    assert (int(out.stdout) == 0) == (mode == "reuse")


def test_epoch_feed_gives_each_epoch_the_sampler_batches_and_prefetches_across_epochs(tmp_path):
    """EpochFeed with and without prefetch: each epoch's batches equal the sampler's after
    set_epoch, bit for bit; with prefetch one thread serves every epoch (it lives on past each
    epoch's end, sampling the next); epochs out of order are refused; what an epoch left unread is
    skipped by the next; closing mid-epoch joins the thread."""
    from clmr_ray.bench.epoch import noise_split
    from clmr_ray.data.sampling import TrainSampler
    from clmr_ray.speedups import EpochFeed

    sampler = TrainSampler(noise_split(10, 0.5, 8000), CROP, 4, seed=2)
    expected = {}
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        expected[epoch] = list(sampler)
    before = threading.active_count()
    for prefetch in (False, True):
        with EpochFeed(sampler, "cpu", [1, 2, 3], prefetch=prefetch) as feed:
            for epoch in (1, 2, 3):
                got = list(feed.epoch(epoch))
                assert len(got) == len(expected[epoch]) == 3
                for a, b in zip(got, expected[epoch], strict=True):
                    assert torch.equal(a.audio, b.audio) and torch.equal(a.track_index, b.track_index)
                if prefetch and epoch < 3:
                    assert threading.active_count() == before + 1  # the one thread, still running
        assert threading.active_count() == before
    with EpochFeed(sampler, "cpu", [1, 2], prefetch=True) as feed, \
            pytest.raises(ValueError, match="EpochFeed: epoch 2 asked for, 1 comes next"):
        next(feed.epoch(2))
    with EpochFeed(sampler, "cpu", [1, 2], prefetch=True) as feed:
        next(feed.epoch(1))  # stopped mid-epoch: the next epoch skips what is left of it
        got = list(feed.epoch(2))
        assert len(got) == 3 and all(torch.equal(a.audio, b.audio) for a, b in zip(got, expected[2], strict=True))
    with EpochFeed(sampler, "cpu", [1, 2], prefetch=True) as feed:
        next(feed.epoch(1))  # stopped mid-epoch, as a run told to stop does
    assert threading.active_count() == before


def test_views_in_one_call_draws_the_two_calls_views_and_augments_them_together():
    """Off: the two calls of before, bit for bit. On: the pipeline's views() with its rows together,
    each view drawn as its own call draws it (the views themselves: tests/unit/test_augment.py).
    Training with it on gives the two-call training to float rounding."""
    views = batches(1, size=4)[0].audio

    def model_with(one_call: bool) -> ContrastiveModel:
        spec = preset("tiny", {"pretrain.crop_samples": CROP})
        return Speedups(views_in_one_call=one_call).prepare_model(ContrastiveModel(spec, "audio", 8000))

    one, two = model_with(True), model_with(False)
    assert one.views_in_one_call and not two.views_in_one_call
    pipe = two.pipelines["audio"]
    g = torch.Generator().manual_seed(3)
    calls = torch.cat([pipe(views[:, 0], g), pipe(views[:, 1], g)])
    assert torch.equal(two.augment_views(views, torch.Generator().manual_seed(3)), calls)
    together = one.augment_views(views, torch.Generator().manual_seed(3))
    assert torch.equal(together, pipe.views(views, torch.Generator().manual_seed(3), together=True))
    assert torch.allclose(together, calls, rtol=0, atol=1e-6)

    steps = batches()
    assert_same_training(train("audio", Speedups(), steps, sgd=True),
                         train("audio", Speedups(views_in_one_call=True), steps, sgd=True), rtol=1e-5, atol=1e-6)
