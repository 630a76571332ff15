"""benchmarks/cuda_op_count.py counts, without a GPU, the kernels and bytes of the augmentation on CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from clmr_ray.augment import AugmentPipeline
from clmr_ray.bench.fake_cuda import cuda_autocast, on_fake_cuda
from clmr_ray.config import EncoderSpec, preset
from clmr_ray.models import build_encoder

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
    assert "samplecnn (audio)" in out and "resnet10 (spectrogram)" in out


def test_cuda_autocast_holds_on_fake_cuda_and_is_undone():
    with FakeTensorMode():
        x, w = torch.empty(2, 4, 1, 30, device="cuda"), torch.empty(8, 4, 1, 3, device="cuda")
        with cuda_autocast(torch.bfloat16):
            assert torch.nn.functional.conv2d(x, w).dtype == torch.bfloat16
        assert torch.nn.functional.conv2d(x, w).dtype == torch.float32
    assert not torch.is_autocast_enabled("cuda")


def test_samplecnn_forward_writes_less_with_relu_after_pooling(op_count):
    def written(textbook: bool) -> int:
        net = build_encoder(EncoderSpec(name="samplecnn", width=0.25), crop_samples=6561)
        if textbook:
            for block in net.blocks:
                block[2], block[3] = block[3], block[2]
        mode = FakeTensorMode()
        on_fake_cuda(mode, net)
        with mode, op_count.KernelCount() as counted, cuda_autocast():
            net(torch.empty(4, 6561, device="cuda"))
        return counted.bytes

    assert written(textbook=False) < 0.95 * written(textbook=True)


def test_fft_filter_writes_a_few_arrays_of_the_ffts_size(op_count):
    """Its per-row part is an impulse response a few hundred samples long: the full-size arrays are
    the two padded inputs, their spectra, the product and the inverse (the frequency response on the
    FFT's grid, in float64, wrote ~35 such arrays)."""
    views, samples, sample_rate = 8, 59049, 22050
    _, written = op_count.count_filter("fft", views, samples, sample_rate, lowest_cutoff_hz=200.0)
    full_size = views * 65536 * 4  # the FFT's length for 59,049 samples and a ~500-sample response, float32
    assert written < 7 * full_size
