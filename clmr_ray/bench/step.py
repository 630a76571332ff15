"""Training-step throughput of both encoders: augment -> encode -> project -> NT-Xent -> Adam.

    python -m clmr_ray.bench.step --preset paper --device cuda

Crops per second count crops (each gives two views); steps run back to back, as in an epoch.
The split times each phase of one step on its own (synchronised after each): augmentation,
encoder + projector forward and backward (with the loss's backward), the loss, the optimiser.
On CUDA the FLOPs of one step are counted with torch.utils.flop_counter (matmuls and
convolutions, forward and backward; the STFT and the augmentations are not counted), divided
by the step time and by the card's dense bf16 peak (datasheet, by name; --peak-tflops to set it).
The GPU speed-ups of clmr_ray/speedups.py are on as in training; --without turns some off, --with
turns on some that are off for the device (on a CPU: views_in_one_call, the GPU's others).
With cuda_graph (on for CUDA) the timed steps are replays of the captured step (the row's
cuda_graph column says whether capture worked); the split and the FLOP count run eager steps,
and the augmentation is also timed as a graph of its own (augment_graph_ms, and its share of
the graphed step: augment_graph_pct).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from clmr_ray.bench.timing import sync
from clmr_ray.config import ExperimentSpec, SpecError
from clmr_ray.config import preset as load_preset
from clmr_ray.data.sampling import CropBatch
from clmr_ray.graphed_step import GraphedStep, capture, on_side_stream
from clmr_ray.machine import device_arg, device_problem, use_deterministic
from clmr_ray.pretrain import ContrastiveModel, train_step
from clmr_ray.speedups import Speedups

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the datasheets; first match of the
# device name wins, so the longer names come first.
PEAK_BF16_TFLOPS = (("GH200", 989.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
                    ("H100", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
                    ("A10", 125.0))


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def measure(preset: str = "tiny", fmt: str = "audio", device: str = "cpu", batch: int | None = None,
            steps: int = 5, warmup: int = 2, amp: bool | None = None, count_flops: bool | None = None,
            without: tuple[str, ...] = (), split: bool = True, peak: float | None = None,
            with_: tuple[str, ...] = (),
            compile_backend: str | Callable | None = None) -> dict:
    """One row: step time, crops/s, the split of one step and (CUDA by default) TFLOP/s of `fmt`'s step.

    compile_backend: run the encoder through torch.compile with that backend ("inductor" for real
    kernels); the first step's time is reported as compile_s. If compiling fails the row says so
    and the step runs uncompiled."""
    spec = load_preset(preset)
    dev = torch.device(device)
    p = spec.pretrain
    batch = batch or p.batch_size
    amp = p.amp if amp is None else amp
    speed = Speedups.for_device(dev).without(without).with_(with_)
    speed.apply_backend()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = speed.cudnn_benchmark
    model, optimizer, crops, generator = step_inputs(spec, fmt, dev, batch, speed)
    step_args = {"temperature": p.temperature, "generator": generator, "amp": amp, "grad_clip": p.grad_clip}
    train = speed.step(model, optimizer, **step_args)  # what pretrain runs: a GraphedStep with cuda_graph

    def step() -> torch.Tensor:
        return train(crops)

    encoder, compiled = model.encoders[fmt], {}
    if compile_backend:
        model.encoders[fmt] = torch.compile(encoder, backend=compile_backend)
        start = time.perf_counter()
        try:
            step()
            sync(dev)
            compiled = {"compile": compile_backend, "compile_s": time.perf_counter() - start}
        except Exception as exc:  # noqa: BLE001 - any compiler failure: measure the plain step instead
            model.encoders[fmt] = encoder
            compiled = {"compile": f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"}
    if isinstance(train, GraphedStep):  # the capture happens after its eager warm-up steps, not in the timing
        warmup = max(warmup, train.warmup + 1 - train.eager_steps)
    for _ in range(warmup):
        step()
    sync(dev)
    if dev.type == "cuda":  # steady state: cuDNN's autotuning may try workspaces far larger than a step needs
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    seconds = (time.perf_counter() - start) / steps
    row = {"preset": preset, "format": fmt, "encoder": getattr(spec, fmt).encoder.name, "device": str(dev),
           "batch": batch, "crop_samples": p.crop_samples, "amp": amp and dev.type == "cuda",
           "deterministic": torch.are_deterministic_algorithms_enabled(),
           "speedups": ",".join(n for n in Speedups.names() if getattr(speed, n) and n != "prefetch") or "none",
           "params_m": sum(x.numel() for x in model.encoders[fmt].parameters()) / 1e6,
           "step_ms": seconds * 1e3, "crops_per_s": batch / seconds, **compiled}
    if isinstance(train, GraphedStep):
        row["cuda_graph"] = train.status
    if split:
        row.update(split_step(model, crops, optimizer, generator, amp, p.temperature, p.grad_clip, steps))
        if isinstance(train, GraphedStep) and train.status == "replaying":
            row.update(graphed_augment(model, crops.audio, generator, steps, row["step_ms"]))
    if count_flops if count_flops is not None else dev.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        model.encoders[fmt] = encoder  # count the plain module's operations, in an eager step
        with FlopCounterMode(display=False) as counter:
            train_step(model, crops, optimizer, **step_args)
        row["gflop_per_step"] = counter.get_total_flops() / 1e9
        row["tflop_per_s"] = counter.get_total_flops() / seconds / 1e12
        peak = peak or peak_tflops(dev)
        if peak:
            row["peak_share_pct"] = 100 * row["tflop_per_s"] / peak
    if dev.type == "cuda":  # the timed steps, the split and the FLOP count after them
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def step_inputs(spec: ExperimentSpec, fmt: str, device: torch.device, batch: int, speed: Speedups, seed: int = 0):
    """What one benchmarked step trains: (model, optimizer, crops, generator), seeded, with `speed` applied."""
    p = spec.pretrain
    torch.manual_seed(seed)
    model = speed.prepare_model(ContrastiveModel(spec, fmt, spec.data.sample_rate).to(device))
    optimizer = speed.adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    audio = 0.1 * torch.randn(batch, 2, p.crop_samples, generator=torch.Generator().manual_seed(seed))
    crops = CropBatch(audio.to(device), torch.arange(batch))
    return model, optimizer, crops, torch.Generator(device=device).manual_seed(seed)


def print_rows(rows: list[dict], heading: str, table: str, device: str, json_path: str | None) -> None:
    """The heading (with the device's name and the CPU threads), the table, and the rows as JSON when asked."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"{heading}, {name}, {torch.get_num_threads()} CPU threads")
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps([{**r, "device_name": name} for r in rows], indent=1))


def split_step(model: ContrastiveModel, crops: CropBatch, optimizer, generator, amp: bool, temperature: float,
               grad_clip: float | None, repeats: int) -> dict:
    """Median milliseconds of each phase of one single-format step, each timed on its own."""
    (fmt,) = model.formats
    dev = crops.audio.device
    use_amp = amp and dev.type == "cuda"
    phases: dict[str, list[float]] = {"augment_ms": [], "encoder_ms": [], "loss_ms": [], "optimizer_ms": []}

    def timed(name: str, fn, *args):
        sync(dev)
        start = time.perf_counter()
        out = fn(*args)
        sync(dev)
        phases[name].append((time.perf_counter() - start) * 1e3)
        return out

    def forward(x):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            return model.projectors[fmt](model.encoders[fmt](x)).float().chunk(2)

    def optimise():
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(repeats):
        x = timed("augment_ms", lambda: model.augment_views(crops.audio, generator))
        start = time.perf_counter()
        z_a, z_b = forward(x)
        sync(dev)
        forward_ms = (time.perf_counter() - start) * 1e3
        loss = timed("loss_ms", model.loss, z_a, z_b, temperature, False)
        timed("encoder_ms", loss.backward)
        phases["encoder_ms"][-1] += forward_ms
        timed("optimizer_ms", optimise)
    out = {name: statistics.median(values) for name, values in phases.items()}
    out["augment_pct"] = 100 * out["augment_ms"] / sum(out.values())
    return out


def graphed_augment(model: ContrastiveModel, views: torch.Tensor, generator: torch.Generator, repeats: int,
                    step_ms: float) -> dict:
    """The augmentation of one step (both views) captured as a CUDA graph of its own and replayed:
    what it costs inside a graphed step, where the host no longer issues its kernels one by one
    (the split's augment_ms is the eager cost). augment_graph_pct is its share of the step."""
    def augment():
        return model.augment_views(views, generator)

    try:
        on_side_stream(augment)
        graph, _ = capture(augment, generator)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the row
        return {"augment_graph_ms": f"failed ({type(exc).__name__})"}
    times = []
    for _ in range(max(repeats, 3)):
        sync(views.device)
        start = time.perf_counter()
        graph.replay()
        sync(views.device)
        times.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times)
    return {"augment_graph_ms": ms, "augment_graph_pct": 100 * ms / step_ms}


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or ["format", "encoder", "device", "batch", "amp", "deterministic", "speedups", "cuda_graph",
               "compile", "compile_s",
               "step_ms", "crops_per_s",
               "augment_ms", "encoder_ms", "loss_ms", "optimizer_ms", "augment_pct", "augment_graph_ms",
               "augment_graph_pct", "gflop_per_step", "tflop_per_s",
               "peak_share_pct", "peak_mem_gib"]
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


def check_device_and_preset(parser: argparse.ArgumentParser, device: str, preset: str) -> ExperimentSpec:
    """The preset's spec, or a one-line parser error for an unknown preset or a device torch cannot use here
    (--device's type, device_arg, already refuses those while parsing; this covers a device from elsewhere)."""
    problem = device_problem(device)
    if problem:
        parser.error(f"--device {device}: {problem}")
    try:
        return load_preset(preset)
    except SpecError as exc:
        parser.error(str(exc))


def parse_formats(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """--formats "audio,spectrogram" -> ["audio", "spectrogram"], or a parser error naming the unknown one."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    for fmt in formats:
        if fmt not in ("audio", "spectrogram"):
            parser.error(f"--formats: unknown format '{fmt}' (choose audio, spectrogram)")
    return formats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clmr-ray bench step", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny, demo or paper (default: tiny)")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when this machine has a CUDA device, else cpu: "
                        "%(default)s here)")
    parser.add_argument("--batch", type=int, default=None, help="crops per step (default: the preset's)")
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps (back to back; also the split's repeats) (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--formats", default="audio,spectrogram", help="comma-separated: audio,spectrogram")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA instead of bf16 autocast")
    parser.add_argument("--flops", action="store_true", help="count FLOPs on CPU too")
    parser.add_argument("--without", default="", help=f"speed-ups to turn off, comma-separated: "
                        f"{','.join(Speedups.names())} (or 'all')")
    parser.add_argument("--with", dest="with_", default="", help="speed-ups to turn on that are off for the "
                        "device (on a CPU all but reuse_host_memory), comma-separated")
    parser.add_argument("--no-split", action="store_true", help="skip timing the phases of a step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's peak (default: by its name)")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch's deterministic algorithms, as scaling.deterministic sets them")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the encoder (default backend: inductor); reports the compile time")
    args = parser.parse_args(argv)
    check_device_and_preset(parser, args.device, args.preset)
    if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 2):
        parser.error("--steps must be >= 1, --warmup >= 0 and --batch >= 2")
    without = Speedups.names() if args.without == "all" else tuple(n for n in args.without.split(",") if n)
    with_ = tuple(n for n in args.with_.split(",") if n)
    for flag, names, apply in (("--without", without, Speedups().without), ("--with", with_, Speedups().with_)):
        try:
            apply(names)
        except ValueError as exc:
            parser.error(f"{flag}: {exc}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops: must be > 0, got {args.peak_tflops}")
    if args.deterministic:
        use_deterministic(True)
    formats = parse_formats(parser, args.formats)
    rows = run(args.preset, args.device, formats, batch=args.batch, steps=args.steps, warmup=args.warmup,
               amp=False if args.no_amp else None, count_flops=True if args.flops else None, without=without, with_=with_,
               split=not args.no_split, peak=args.peak_tflops, compile_backend=args.compile)
    print_rows(rows, f"training step, preset {args.preset}", format_table(rows), args.device, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
