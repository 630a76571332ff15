"""Training-step throughput of both encoders: augment -> encode -> project -> NT-Xent -> Adam.

    python -m clmr_ray.bench.step --preset paper --device cuda

Crops per second count crops (each gives two views). On CUDA the FLOPs of one step are counted
with torch.utils.flop_counter (matmuls and convolutions, forward and backward; the STFT and
the augmentations are not counted) and divided by the measured step time.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from clmr_ray.bench.timing import call_times
from clmr_ray.config import SpecError
from clmr_ray.config import preset as load_preset
from clmr_ray.data.sampling import CropBatch
from clmr_ray.pretrain import ContrastiveModel, train_step


def measure(preset: str = "tiny", fmt: str = "audio", device: str = "cpu", batch: int | None = None,
            steps: int = 5, warmup: int = 2, amp: bool | None = None, count_flops: bool | None = None) -> dict:
    """One row: median step time, crops/s and (CUDA by default) TFLOP/s of `fmt`'s training step."""
    spec = load_preset(preset)
    dev = torch.device(device)
    p = spec.pretrain
    batch = batch or p.batch_size
    amp = p.amp if amp is None else amp
    torch.manual_seed(0)
    model = ContrastiveModel(spec, fmt, spec.data.sample_rate).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    audio = 0.1 * torch.randn(batch, 2, p.crop_samples, generator=torch.Generator().manual_seed(0))
    crops = CropBatch(audio.to(dev), torch.arange(batch))
    generator = torch.Generator(device=dev).manual_seed(0)

    def step() -> float:
        return train_step(model, crops, optimizer, temperature=p.temperature, generator=generator, amp=amp,
                          grad_clip=p.grad_clip)

    seconds = statistics.median(call_times(step, dev, steps, warmup))
    row = {"preset": preset, "format": fmt, "encoder": getattr(spec, fmt).encoder.name, "device": str(dev),
           "batch": batch, "crop_samples": p.crop_samples, "amp": amp and dev.type == "cuda",
           "params_m": sum(x.numel() for x in model.encoders[fmt].parameters()) / 1e6,
           "step_ms": seconds * 1e3, "crops_per_s": batch / seconds}
    if count_flops if count_flops is not None else dev.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        row["gflop_per_step"] = counter.get_total_flops() / 1e9
        row["tflop_per_s"] = counter.get_total_flops() / seconds / 1e12
    if dev.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def format_table(rows: list[dict]) -> str:
    columns = ["format", "encoder", "device", "batch", "crop_samples", "amp", "params_m", "step_ms", "crops_per_s",
               "gflop_per_step", "tflop_per_s", "peak_mem_gib"]
    columns = [c for c in columns if any(c in r for r in rows)]
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def run(preset: str = "tiny", device: str = "cpu", formats=("audio", "spectrogram"), **kwargs) -> list[dict]:
    """One measure() row per format."""
    return [measure(preset, fmt, device, **kwargs) for fmt in formats]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clmr-ray bench step", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny, demo or paper (default: tiny)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="crops per step (default: the preset's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--formats", default="audio,spectrogram", help="comma-separated: audio,spectrogram")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA instead of bf16 autocast")
    parser.add_argument("--flops", action="store_true", help="count FLOPs on CPU too")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 2):
        parser.error("--steps must be >= 1, --warmup >= 0 and --batch >= 2")
    try:
        load_preset(args.preset)
    except SpecError as exc:
        parser.error(str(exc))
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for fmt in formats:
        if fmt not in ("audio", "spectrogram"):
            parser.error(f"--formats: unknown format '{fmt}' (choose audio, spectrogram)")
    rows = run(args.preset, args.device, formats, batch=args.batch, steps=args.steps, warmup=args.warmup,
               amp=False if args.no_amp else None, count_flops=True if args.flops else None)
    print(f"training step, preset {args.preset}, {torch.get_num_threads()} CPU threads")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
