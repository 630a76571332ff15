"""What the paper-scale augmentation and encoders ask of a GPU, counted without one: the kernels they
would launch and the bytes they would write, for one batch of views on fake CUDA tensors (torch's
FakeTensorMode: shapes and devices, no data). Views and metadata queries are not kernels and are not
counted; of the encoders, only the forward pass (autograd's engine wants a real GPU).

A proxy for the GPU time of a change to the augmentation or an encoder, for a machine with no GPU:
inside a CUDA graph each kernel costs a few microseconds to start, and most of these kernels are
bound by the bytes they move (bytes are not time: a kernel can run well below the bandwidth).

    python benchmarks/cuda_op_count.py [--preset paper] [--views 96]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from clmr_ray.augment import AugmentPipeline
from clmr_ray.augment import audio as A
from clmr_ray.bench.augment import _only
from clmr_ray.bench.fake_cuda import KernelCount, cuda_autocast, on_fake_cuda
from clmr_ray.config import WAVEFORM_AUGS
from clmr_ray.config import preset as load_preset
from clmr_ray.pretrain import ContrastiveModel
from clmr_ray.speedups import Speedups


def count(pipe: AugmentPipeline, views: int, samples: int) -> tuple[int, int]:
    with FakeTensorMode():
        x = torch.empty(views, samples, device="cuda")
        with KernelCount() as counted:
            pipe(x)
    return counted.kernels, counted.bytes


def count_views(pipe: AugmentPipeline, batch: int, samples: int, together: bool) -> tuple[int, int]:
    """A training step's augmentation: two views of `batch` crops (AugmentPipeline.views), as two
    calls' computations or together (speed-up views_in_one_call)."""
    mode = FakeTensorMode()
    on_fake_cuda(mode, pipe)
    with mode:
        x = torch.empty(batch, 2, samples, device="cuda")
        with KernelCount() as counted:
            pipe.views(x, together=together)
    return counted.kernels, counted.bytes


def count_filter(method: str, views: int, samples: int, sample_rate: int, lowest_cutoff_hz: float) -> tuple[int, int]:
    """biquad_filter by `method` on every view, sized from the spec's lowest cutoff as the pipeline does."""
    with FakeTensorMode():
        x = torch.empty(views, samples, device="cuda")
        cutoff, highpass = torch.empty(views, device="cuda"), torch.empty(views, device="cuda", dtype=torch.bool)
        with KernelCount() as counted:
            A.biquad_filter(x, cutoff, highpass, sample_rate, method=method, lowest_cutoff_hz=lowest_cutoff_hz)
    return counted.kernels, counted.bytes


def count_encoder(spec, fmt: str, views: int) -> tuple[int, int]:
    """The forward pass of `fmt`'s encoder as training runs it on CUDA (the CUDA speed-ups' layouts,
    bf16 autocast) on `views` un-augmented crops; the backward pass cannot run on fake tensors."""
    model = Speedups.for_device("cuda", deterministic=False).prepare_model(ContrastiveModel(spec, fmt))
    mode = FakeTensorMode()
    on_fake_cuda(mode, model)
    with mode:
        x = model.pipelines[fmt].plain(torch.empty(views, spec.pretrain.crop_samples, device="cuda"))
        with KernelCount() as counted, cuda_autocast(torch.bfloat16):
            model.encoders[fmt](x)
    return counted.kernels, counted.bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper", choices=["paper", "demo", "tiny"])
    parser.add_argument("--views", type=int, default=96, help="crops in one call (default 96: batch 48, two views)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="CUDA is not available")
    spec = load_preset(args.preset)
    sr, samples = spec.data.sample_rate, spec.pretrain.crop_samples
    augment = spec.audio.augment
    rows = [("audio pipeline", augment)] + [(f"  {name} alone", _only(augment, name))
                                            for name in WAVEFORM_AUGS if getattr(augment, name).enabled]
    print(f"fake CUDA, preset {args.preset}: {args.views} views x {samples} samples at {sr} Hz")
    print(f"{'augmentation':<24} {'kernels':>8} {'MiB written':>12}")
    for label, aug in rows:
        kernels, written = count(AugmentPipeline(aug, sr), args.views, samples)
        print(f"{label:<24} {kernels:>8} {written / 2**20:>12.0f}")
        if label == "audio pipeline" and args.views % 2 == 0:  # a step's two views, as training augments them
            for together, how in ((False, "view by view"), (True, "together")):
                kernels, written = count_views(AugmentPipeline(aug, sr), args.views // 2, samples, together)
                print(f"{'  a step, ' + how:<24} {kernels:>8} {written / 2**20:>12.0f}"
                      + ("   (speed-up views_in_one_call)" if together else ""))
    lowest = min(augment.filter.lowpass_hz[0], augment.filter.highpass_hz[0])
    for method in ("fft", "blocks"):  # the pipeline's CUDA filter is "fft"; "blocks" is the CPU's
        kernels, written = count_filter(method, args.views, samples, sr, lowest)
        print(f"{'  filter, ' + method + ' method':<24} {kernels:>8} {written / 2**20:>12.0f}")
    print(f"{'encoder forward (bf16)':<24} {'kernels':>8} {'MiB written':>12}")
    for fmt in ("audio", "spectrogram"):
        kernels, written = count_encoder(spec, fmt, args.views)
        name = getattr(spec, fmt).encoder.name
        print(f"{'  ' + name + ' (' + fmt + ')':<24} {kernels:>8} {written / 2**20:>12.0f}")


if __name__ == "__main__":
    main()
