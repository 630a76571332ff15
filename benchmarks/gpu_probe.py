"""Where the paper-scale step's GPU time goes: the card's two ceilings, each encoder alone under
layout and precision variants, and a profile of one whole training step per format.

    python benchmarks/gpu_probe.py                                 # on the GPU machine
    python benchmarks/gpu_probe.py --preset tiny --device cpu      # a CPU dry run

Encoder variants run forward + backward of the encoder alone on the 2B views of one step (no
augmentation, no optimiser), timed back to back after a warm-up, cuDNN autotuning on:
  1d / cl       SampleCNN on [B, C, T] / its channels-last path (SampleCNN.forward_channels_last:
                the same weights as 1 x k Conv2d on [B, C, 1, T] in NHWC memory)
  nchw / cl     ResNet in the default / channels-last layout
  fp32 / bf16-autocast / bf16-weights   float32 / autocast as training uses it / the whole
                encoder cast to bf16 (what autocast would cost if it cast nothing)
The profile lists the 20 kernels that took the most GPU time (per step: time, launches) over three
eager training steps, and the share of the wall clock the GPU was busy: far below 100 % means
launches or host work set the pace (the CUDA graph removes that in training).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clmr_ray.bench.step import step_inputs
from clmr_ray.config import preset as load_preset
from clmr_ray.pretrain import build_format_encoder, train_step
from clmr_ray.speedups import Speedups


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, repeats=10, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ceilings(device) -> None:
    if device.type != "cuda":
        return
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    ms = median_ms(lambda: a @ b, device)
    src = torch.randn(2**30 // 4, device=device)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device)
    print(f"ceilings: bf16 8192^3 matmul {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s; "
          f"device copy {2 * src.numel() * 4 / copy_ms / 1e6:.0f} GB/s (read + write)", flush=True)


def encoder_variants(spec, device, batch: int) -> None:
    views = 2 * batch
    gen = torch.Generator().manual_seed(0)
    wave = (0.1 * torch.randn(views, spec.pretrain.crop_samples, generator=gen)).to(device)
    mel = spec.spectrogram.mel
    frames = spec.pretrain.crop_samples // mel.hop_length + 1
    image = torch.randn(views, 1, mel.n_mels, frames, generator=gen).to(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    rows = []

    def run(name, encoder, x, precision):
        encoder = encoder.to(device).train()
        if precision == "bf16-weights":
            encoder, x = encoder.to(torch.bfloat16), x.to(torch.bfloat16)
        use_amp = precision == "bf16-autocast" and device.type == "cuda"

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = encoder(x)
            out.float().square().mean().backward()

        try:
            ms = median_ms(step, device)
            rows.append((name, precision, f"{ms:.2f} ms", f"{batch / ms * 1e3:.0f} crops/s"))
        except Exception as exc:  # noqa: BLE001 - one failing variant must not hide the others
            rows.append((name, precision, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:70]}", ""))
        print(" | ".join(rows[-1]), flush=True)

    print(f"encoder forward + backward alone, {views} views ({batch} crops x 2)", flush=True)
    for precision in ("fp32", "bf16-autocast", "bf16-weights"):
        for channels_last in (False, True):
            torch.manual_seed(0)
            audio = build_format_encoder(spec, "audio")
            audio.channels_last = channels_last
            run(f"{spec.audio.encoder.name} {'cl' if channels_last else '1d'}", audio, wave, precision)
    for precision in ("fp32", "bf16-autocast"):
        for layout in ("nchw", "cl"):
            torch.manual_seed(0)
            net = build_format_encoder(spec, "spectrogram")
            x = image
            if layout == "cl":
                net, x = net.to(memory_format=torch.channels_last), image.contiguous(memory_format=torch.channels_last)
            run(f"{spec.spectrogram.encoder.name} {layout}", net, x, precision)


def profile_steps(spec, device, batch: int, fmt: str, amp: bool, out: Path | None) -> None:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    speed = Speedups.for_device(device)
    speed.apply_backend()
    p = spec.pretrain
    model, optimizer, crops, generator = step_inputs(spec, fmt, device, batch, speed)

    def step():
        return train_step(model, crops, optimizer, temperature=p.temperature, generator=generator, amp=amp,
                          grad_clip=p.grad_clip)

    for _ in range(3):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = 3
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    averages = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # kernels only: an operator's own row repeats the device time of the kernels it launched
    kernels = [e for e in averages if device.type != "cuda" or e.device_type == DeviceType.CUDA]
    busy_ms = sum(getattr(e, key) for e in kernels) / 1e3 / steps
    label = f"{fmt} {'bf16' if amp else 'fp32'} batch {batch}"
    print(f"\nprofile of {label}: {wall_ms:.1f} ms a step (under the profiler), "
          f"{'GPU' if device.type == 'cuda' else 'CPU'} busy {busy_ms:.1f} ms ({100 * busy_ms / wall_ms:.0f} %)",
          flush=True)
    for e in sorted(kernels, key=lambda e: getattr(e, key), reverse=True)[:20]:  # per step: time, launches
        print(f"  {getattr(e, key) / 1e3 / steps:6.2f} ms {e.count / steps:4.0f}x  {e.key[:100]}", flush=True)
    if out is not None:
        name = f"profile_{fmt}_{'bf16' if amp else 'fp32'}"
        (out / f"{name}.txt").write_text(averages.table(sort_by=key, row_limit=80, max_name_column_width=100))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=None, help="crops per step (default: the preset's)")
    parser.add_argument("--out", default=None, help="folder for the long profile tables")
    parser.add_argument("--skip", default="", help="comma-separated: ceilings,encoders,profile "
                        "(or one profile: profile-audio,profile-spectrogram,profile-fp32)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    spec = load_preset(args.preset)
    batch = args.batch or spec.pretrain.batch_size
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_probe: preset {args.preset}, batch {batch}, {name}, torch {torch.__version__}", flush=True)
    if "ceilings" not in skip:
        ceilings(device)
    if "encoders" not in skip:
        encoder_variants(spec, device, batch)
    if "profile" not in skip:
        for fmt in ("audio", "spectrogram"):
            if f"profile-{fmt}" not in skip:
                profile_steps(spec, device, batch, fmt, amp=device.type == "cuda", out=out)
        if device.type == "cuda" and "profile-fp32" not in skip:
            profile_steps(spec, device, batch, "audio", amp=False, out=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
