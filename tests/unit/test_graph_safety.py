"""The CUDA training step can be captured as a CUDA graph: checked on CPU, without a GPU.

A graph cannot hold a read of a GPU value by the host (`.item()`, `float(t)`, `nonzero`, a
shape that depends on data) nor a copy from host memory (a CPU tensor used by a CUDA op, as
`mask[rows, cols] = True` does with its CPU `True`). Both run fine eagerly, so only a GPU
would notice, at capture. Here the step runs on fake CUDA tensors (torch's FakeTensorMode:
shapes, dtypes and devices, no data, no GPU needed), which refuse every data-dependent read;
HostTraffic records every op that mixes CPU and CUDA tensors.

Not covered: the backward pass (autograd's engine wants a real CUDA device), whose ops are
torch's own.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from clmr_ray.augment import AugmentPipeline
from clmr_ray.augment import audio as A
from clmr_ray.bench.fake_cuda import on_fake_cuda
from clmr_ray.config import SPECTROGRAM_AUGS, WAVEFORM_AUGS
from clmr_ray.config import preset as load_preset
from clmr_ray.pretrain import ContrastiveModel
from clmr_ray.speedups import Speedups

pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")


class HostTraffic(TorchDispatchMode):
    """Records the ops that take both CPU and CUDA tensors (or make CUDA ones from CPU ones)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        if {"cpu", "cuda"} <= devices:
            self.ops.append(str(func))
        return out


def host_traffic(fn, *modules: torch.nn.Module) -> list[str]:
    """Run fn(*modules on fake CUDA) and return the ops that moved data between host and GPU;
    a host read of GPU data raises (DataDependentOutputException, DynamicOutputShapeException)."""
    mode = FakeTensorMode()
    fakes = [on_fake_cuda(mode, m) for m in modules]
    with mode, HostTraffic() as traffic:
        fn(*fakes)
    return sorted(set(traffic.ops))


def step_without_backward(spec, fmt: str, batch: int = 4, without: tuple[str, ...] = ()):
    """What GraphedStep captures, minus the backward: augmentation, encoder, projector, NT-Xent,
    gradient clipping."""
    speed = Speedups.for_device("cuda", deterministic=False).without(without)
    model = speed.prepare_model(ContrastiveModel(spec, fmt))

    def step(model):
        views = torch.randn(batch, 2, spec.pretrain.crop_samples, device="cuda")
        z_a, z_b = model(views, None, True)
        loss = model.loss(z_a, z_b, spec.pretrain.temperature, False)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return loss

    return step, model


def test_harness_sees_host_reads_and_copies():
    def reads(m):
        float(m.weight.detach().sum())

    def copies(m):
        mask = torch.zeros(3, 3, dtype=torch.bool, device="cuda")
        mask[torch.arange(3, device="cuda"), torch.arange(3, device="cuda")] = True  # the CPU True is copied

    def selects(m):
        m.weight[m.weight > 0]

    with pytest.raises(DataDependentOutputException):
        host_traffic(reads, torch.nn.Linear(3, 3))
    assert host_traffic(copies, torch.nn.Linear(3, 3)) == ["aten.index_put_.default"]
    with pytest.raises(DynamicOutputShapeException):
        host_traffic(selects, torch.nn.Linear(3, 3))


@pytest.mark.parametrize("preset", ["paper", "tiny"])
@pytest.mark.parametrize("fmt", ["audio", "spectrogram", "both"])
def test_training_step_stays_on_the_gpu(preset, fmt):
    spec = load_preset(preset)
    if fmt == "both":
        spec = dataclasses.replace(spec, format="both",
                                   pretrain=dataclasses.replace(spec.pretrain, objective="cross_format"))
    step, model = step_without_backward(spec, fmt)
    assert host_traffic(step, model) == []


@pytest.mark.parametrize("fmt", ["audio", "spectrogram"])
def test_training_step_with_views_in_two_calls_stays_on_the_gpu(fmt):
    step, model = step_without_backward(load_preset("paper"), fmt, without=("views_in_one_call",))
    assert not model.views_in_one_call and host_traffic(step, model) == []


@pytest.mark.parametrize("name", WAVEFORM_AUGS + SPECTROGRAM_AUGS)
def test_every_augmentation_stays_on_the_gpu(name):
    spec = load_preset("tiny")
    fmt = "spectrogram" if name in SPECTROGRAM_AUGS + ("noise_mix",) else "audio"
    augment = getattr(spec, fmt).augment
    only = {f.name: dataclasses.replace(getattr(augment, f.name), enabled=False) for f in dataclasses.fields(augment)}
    only[name] = dataclasses.replace(getattr(augment, name), enabled=True, p=0.5)
    pipe = AugmentPipeline(type(augment)(**only), spec.data.sample_rate, spec.spectrogram.mel if fmt == "spectrogram" else None)

    def augment_batch(pipe):
        return pipe(torch.randn(6, spec.pretrain.crop_samples, device="cuda"))

    assert host_traffic(augment_batch, pipe) == []


@pytest.mark.parametrize("method", ["fft", "blocks"])
def test_both_parallel_filters_stay_on_the_gpu(method):
    """The pipeline's CUDA filter is the FFT one; the block one (the CPU's) could replace it without a host read."""

    def filter_batch(_):
        x = torch.randn(6, 6561, device="cuda")
        cutoff, highpass = 200 + 3800 * torch.rand(6, device="cuda"), torch.rand(6, device="cuda") < 0.5
        return A.biquad_filter(x, cutoff, highpass, 8000, method=method, lowest_cutoff_hz=200.0)

    assert host_traffic(filter_batch, torch.nn.Identity()) == []
