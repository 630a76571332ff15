"""A whole pretraining epoch against `bench step`: does the data path keep the step busy?

    python -m clmr_ray.bench.epoch --preset paper --device cuda

Runs pretrain(), the loop every run trains with (crops sampled from a split's samples, the
prefetching thread on CUDA, the step), for --epochs epochs on an in-memory split of noise
tracks shaped like the preset's training split, then bench step's back-to-back steps on one
fixed batch of the same size. Reports the median epoch's crops/s (the first epoch, which warms up,
left out when there are more) and its share of the step's:
below 100 %, something outside the step (sampling, the host-to-device copy, the loop) costs
time. Needs neither Ray nor soundfile, so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clmr_ray.bench.step import check_device_and_preset, format_table, measure, parse_formats, print_rows
from clmr_ray.config import preset as load_preset
from clmr_ray.machine import device_arg
from clmr_ray.pretrain import TrainContext, pretrain

INT16_SCALE = 1 / 32768


@dataclass
class MemorySplit:
    """What TrainSampler reads of a cached split (data.cache.CachedSplit), held in memory."""

    name: str
    audio: np.ndarray  # int16 [total samples]
    offsets: np.ndarray
    lengths: np.ndarray
    sample_rate: int
    scale: float = INT16_SCALE
    cache_path: Path = Path("<memory>")

    @property
    def n_tracks(self) -> int:
        return len(self.offsets)


def noise_split(tracks: int, seconds: float, sample_rate: int, seed: int = 0) -> MemorySplit:
    """`tracks` tracks of `seconds` of int16 noise at about -20 dBFS."""
    length = round(seconds * sample_rate)
    audio = (np.random.default_rng(seed).standard_normal(tracks * length, dtype=np.float32) * 3277).astype(np.int16)
    offsets = np.arange(tracks, dtype=np.int64) * length
    return MemorySplit("train", audio, offsets, np.full(tracks, length, dtype=np.int64), sample_rate)


def measure_epoch(preset: str = "tiny", fmt: str = "audio", device: str = "cpu", epochs: int = 6,
                  tracks: int | None = None, seconds: float | None = None, steps: int = 10) -> dict:
    """One row: the median epoch's crops/s (pretrain's own figure; the first epoch left out when
    there are more), the step's (bench step) and their ratio."""
    spec = load_preset(preset, {"pretrain.epochs": epochs, "pretrain.val_every": 0})
    counts = spec.data.synthetic  # the preset's corpus size, unless told otherwise
    tracks = tracks or max(2 * spec.pretrain.batch_size, round(counts.tracks_per_label * 10 * 443 / 930))
    seconds = seconds or counts.seconds
    split = noise_split(tracks, seconds, spec.data.sample_rate)
    history: list[dict] = []
    pretrain(spec, fmt, split, None, TrainContext(device=device, report=lambda m, _: history.append(m)))
    step = measure(preset, fmt, device, steps=steps, split=False, count_flops=False)
    warm = sorted(history[1:] or history, key=lambda m: m["crops_per_s"])
    median = warm[len(warm) // 2]  # one short epoch is a noisy figure
    return {"preset": preset, "format": fmt, "device": device, "batch": spec.pretrain.batch_size,
            "tracks": tracks, "steps_per_epoch": round(median["crops_per_s"] * median["epoch_s"] / spec.pretrain.batch_size),
            "epoch_s": median["epoch_s"], "epoch_crops_per_s": median["crops_per_s"],
            "step_crops_per_s": step["crops_per_s"], "epoch_share_pct": 100 * median["crops_per_s"] / step["crops_per_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clmr-ray bench epoch", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny, demo or paper (default: tiny)")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when this machine has a CUDA device, else cpu: "
                        "%(default)s here)")
    parser.add_argument("--formats", default="audio,spectrogram", help="comma-separated: audio,spectrogram")
    parser.add_argument("--epochs", type=int, default=6,
                        help="epochs to run; the median of all but the first is reported (default: 6)")
    parser.add_argument("--tracks", type=int, default=None,
                        help="training tracks (default: the training split of the preset's synthetic corpus, "
                        "443/930 of its tracks as in GTZAN)")
    parser.add_argument("--seconds", type=float, default=None, help="track length (default: the preset's)")
    parser.add_argument("--steps", type=int, default=10, help="bench step's timed steps (default: 10)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    spec = check_device_and_preset(parser, args.device, args.preset)
    if args.epochs < 1 or args.steps < 1 or (args.tracks is not None and args.tracks < 2):
        parser.error("--epochs and --steps must be >= 1, --tracks >= 2")
    if args.seconds is not None and args.seconds * spec.data.sample_rate < spec.pretrain.crop_samples:
        parser.error(f"--seconds: {args.seconds} s is shorter than one crop "
                     f"({spec.pretrain.crop_samples} samples at {spec.data.sample_rate} Hz)")
    formats = parse_formats(parser, args.formats)
    rows = [measure_epoch(args.preset, fmt, args.device, args.epochs, args.tracks, args.seconds, args.steps)
            for fmt in formats]
    print_rows(rows, f"epoch vs step, preset {args.preset}", format_table_epoch(rows), args.device, args.json)
    return 0


def format_table_epoch(rows: list[dict]) -> str:
    return format_table(rows, ["format", "device", "batch", "tracks", "steps_per_epoch", "epoch_s",
                               "epoch_crops_per_s", "step_crops_per_s", "epoch_share_pct"])


if __name__ == "__main__":
    raise SystemExit(main())
