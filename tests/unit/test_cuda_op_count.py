"""benchmarks/cuda_op_count.py counts, without a GPU, the kernels and bytes of the augmentation on CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from clmr_ray.augment import AugmentPipeline
from clmr_ray.config import preset

pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cuda_op_count.py"


@pytest.fixture(scope="module")
def op_count():
    spec = importlib.util.spec_from_file_location("cuda_op_count", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_view_is_no_kernel_and_a_kernel_counts_what_it_writes(op_count):
    with torch._subclasses.fake_tensor.FakeTensorMode():
        x = torch.empty(4, 100, device="cuda")
        with op_count.KernelCount() as counted:
            x.view(2, 200)[:, 1:].unsqueeze(0)
            x * 2.0
    assert counted.kernels == 1 and counted.bytes == 4 * 100 * 4


def test_the_pipeline_on_fake_cuda_writes_at_least_its_output(op_count, capsys):
    spec = preset("tiny")
    pipe = AugmentPipeline(spec.audio.augment, spec.data.sample_rate)
    kernels, written = op_count.count(pipe, views=4, samples=spec.pretrain.crop_samples)
    assert kernels > 0 and written >= 4 * spec.pretrain.crop_samples * 4
    op_count.main(["--preset", "tiny", "--views", "4"])
    out = capsys.readouterr().out
    assert "audio pipeline" in out and "pitch alone" in out and "filter, blocks method" in out
