"""Augmentation throughput: the batched pipeline vs one crop at a time (as a per-sample DataLoader
transform does), same ops, same device. On CUDA also the batched call captured as a CUDA graph
and replayed, as the graphed training step runs it: eager calls there time the host issuing
kernels, the graph what they cost the GPU (which filter method is faster depends on which).

    python -m clmr_ray.bench.augment --preset paper --batch 32 --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from clmr_ray.augment import AugmentPipeline
from clmr_ray.augment import audio as A
from clmr_ray.bench.timing import call_times, graph_replay_ms
from clmr_ray.config import SPECTROGRAM_AUGS, WAVEFORM_AUGS, AugmentSpec
from clmr_ray.config import preset as load_preset
from clmr_ray.machine import device_arg
from clmr_ray.speedups import Speedups


def _seconds(call, device: torch.device, seeds: int, repeats: int, warmup: int = 3) -> float:
    """Mean over `seeds` generator seeds of the best of `repeats` wall times of call(seed).

    Each seed fixes the draws (which crops get an augmentation, and its parameters), so the
    best of its repeats is the same work timed under the least disturbance; the mean over seeds
    is the expected cost. Taking the best over changing draws instead would report the call
    that happened to draw the fewest crops for its costly augmentations. The first warm-up
    calls fill the caches (FFT plans, conv kernels) untimed."""
    for _ in range(warmup):
        call(0)
    return sum(min(call_times(lambda seed=seed: call(seed), device, repeats, 0)) for seed in range(seeds)) / seeds


def _only(spec: AugmentSpec, name: str) -> AugmentSpec:
    """A copy of spec with every augmentation but `name` disabled."""
    off = {f.name: dataclasses.replace(getattr(spec, f.name), enabled=False) for f in dataclasses.fields(spec)}
    off[name] = getattr(spec, name)
    return AugmentSpec(**off)


def compare(pipe: AugmentPipeline, x: torch.Tensor, seeds: int, repeats: int, plain: bool = False) -> dict:
    """Crops per second through pipe batched and one crop at a time (the generator seeded alike
    for both, once per batch), and their ratio."""
    g = torch.Generator(device=x.device)

    def batched(seed: int):
        return pipe.plain(x) if plain else pipe(x, g.manual_seed(seed))

    def one_at_a_time(seed: int):
        if plain:
            return [pipe.plain(x[i : i + 1]) for i in range(x.shape[0])]
        g.manual_seed(seed)
        return [pipe(x[i : i + 1], g, others=x) for i in range(x.shape[0])]

    t_batch = _seconds(batched, x.device, seeds, repeats)
    t_loop = _seconds(one_at_a_time, x.device, seeds, repeats)
    n = x.shape[0]
    out = {
        "batched_crops_per_s": n / t_batch,
        "per_example_crops_per_s": n / t_loop,
        "speedup": t_loop / t_batch,
    }
    if x.device.type == "cuda":
        out["graph_ms"] = graph_replay_ms(lambda: pipe.plain(x) if plain else pipe(x, g), g.manual_seed(0))
    return out


def interleaved_share(audio: AugmentPipeline, spectro: AugmentPipeline, x: torch.Tensor, seeds: int,
                      repeats: int) -> float:
    """The audio pipeline's batched throughput as a fraction of the log-mel's, their calls alternating:
    for each seed, `repeats` pairs of calls, the best of each pipeline's counts. Timed apart, a drift of
    the machine's speed between the two measurements moves their ratio; alternating, both see the same
    machine (README, Benchmarks)."""
    g = torch.Generator(device=x.device)
    for _ in range(3):
        audio(x, g.manual_seed(0))
        spectro.plain(x)
    audio_s = logmel_s = 0.0
    for seed in range(seeds):
        a, m = [], []
        for _ in range(repeats):
            a += call_times(lambda seed=seed: audio(x, g.manual_seed(seed)), x.device, 1, 0)
            m += call_times(lambda: spectro.plain(x), x.device, 1, 0)
        audio_s, logmel_s = audio_s + min(a), logmel_s + min(m)
    return logmel_s / audio_s


def run(preset: str = "paper", batch: int = 32, device: str = "cpu", repeats: int = 3, ops: bool = True,
        seeds: int = 8) -> dict:
    spec = load_preset(preset)
    sr, samples = spec.data.sample_rate, spec.pretrain.crop_samples
    dev = torch.device(device)
    Speedups.for_device(dev).apply_backend()  # the process settings training runs under
    x = 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(0)).to(dev)
    audio = AugmentPipeline(spec.audio.augment, sr).to(dev)
    spectro_spec = spec.spectrogram
    spectro = AugmentPipeline(spectro_spec.augment, sr, spectro_spec.mel).to(dev)
    result = {
        "preset": preset,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "seeds": seeds,
        "repeats": repeats,
        "sample_rate": sr,
        "crop_samples": samples,
        "audio": {"augs": audio.waveform_augs, **compare(audio, x, seeds, repeats)},
        "spectrogram": {"augs": spectro.waveform_augs + spectro.mask_augs, **compare(spectro, x, seeds, repeats)},
        # No draws, but timed as the pipelines are (the mean of `seeds` bests of `repeats`): a best of
        # seeds x repeats calls would be a luckier minimum than theirs on a noisy machine.
        "logmel": compare(spectro, x, seeds, repeats, plain=True),
        "audio_share_interleaved": interleaved_share(audio, spectro, x, seeds, repeats),
    }
    if ops:
        result["ops"] = {}
        for name in WAVEFORM_AUGS + SPECTROGRAM_AUGS:
            pipe_spec = spectro_spec.augment if name in SPECTROGRAM_AUGS + ("noise_mix",) else spec.audio.augment
            aug = dataclasses.replace(getattr(pipe_spec, name), enabled=True)
            one = _only(dataclasses.replace(pipe_spec, **{name: aug}), name)
            mel = spectro_spec.mel if name in SPECTROGRAM_AUGS else None
            result["ops"][name] = {"p": aug.p, **compare(AugmentPipeline(one, sr, mel).to(dev), x, seeds, repeats)}
        result["filter_methods"] = filter_methods(x, sr, seeds, repeats)
    return result


def filter_methods(x: torch.Tensor, sample_rate: int, seeds: int, repeats: int) -> dict:
    """Crops per second of each biquad_filter method on every crop of x (cutoffs and high/low-pass
    drawn per seed), on x's device: which one "auto" should pick there."""
    g = torch.Generator(device=x.device)

    def draw():
        highpass = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
        return 200 + 3800 * torch.rand(x.shape[0], generator=g, device=x.device), highpass

    def draws(seed: int):
        g.manual_seed(seed)
        return draw()

    def filtered(seed: int, method: str) -> torch.Tensor:
        return A.biquad_filter(x, *draws(seed), sample_rate, method=method, lowest_cutoff_hz=200.0)

    rates = {method: x.shape[0] / _seconds(lambda seed, method=method: filtered(seed, method), x.device, seeds, repeats)
             for method in ("blocks", "fft", "recursive")}
    if x.device.type == "cuda":  # the draws from the registered generator's running state: no reseeding in a graph
        g.manual_seed(0)
        graphed = {method: graph_replay_ms(lambda method=method: A.biquad_filter(
                       x, *draw(), sample_rate, method=method, lowest_cutoff_hz=200.0), g)
                   for method in ("blocks", "fft")}
        rates.update({f"{method} as a graph": x.shape[0] / ms * 1e3 if isinstance(ms, float) else ms
                      for method, ms in graphed.items()})
    return rates


def report(result: dict) -> str:
    head = (
        f"augmentation throughput, preset {result['preset']}: {result['batch']} crops x {result['crop_samples']} "
        f"samples at {result['sample_rate']} Hz on {result['device']} ({result['threads']} threads); "
        f"mean over {result['seeds']} seeds of the best of {result['repeats']} calls"
    )
    graphs = "graph_ms" in result["audio"]
    lines = [head, f"{'pipeline':<28}{'batched crops/s':>17}{'per-example':>14}{'speedup':>9}"
                   + (f"{'as a CUDA graph':>20}" if graphs else "")]

    def row(label, r):
        graph = r.get("graph_ms")
        graph = (f"{graph:>12.3f} ms/call" if isinstance(graph, float) else f"{graph!s:>20}") if graphs else ""
        lines.append(
            f"{label:<28}{r['batched_crops_per_s']:>17.1f}{r['per_example_crops_per_s']:>14.1f}{r['speedup']:>8.1f}x"
            + graph
        )

    row("audio (" + ",".join(result["audio"]["augs"]) + ")", result["audio"])
    row("spectrogram (" + ",".join(result["spectrogram"]["augs"]) + ")", result["spectrogram"])
    row("log-mel only", result["logmel"])
    for name, r in result.get("ops", {}).items():
        row(f"  {name} (p={r['p']})", r)
    if "filter_methods" in result:
        lines.append("biquad_filter on every crop: " + ", ".join(
            f"{method} {rate:.0f} crops/s" if isinstance(rate, float) else f"{method} {rate}"
            for method, rate in result["filter_methods"].items()))
    share = result["audio"]["batched_crops_per_s"] / result["logmel"]["batched_crops_per_s"]
    lines.append(f"batched audio pipeline at {100 * share:.0f} % of the log-mel's throughput timed apart (the rows "
                 f"above), {100 * result['audio_share_interleaved']:.0f} % with their calls alternating")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="clmr-ray bench augment",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))  # the first paragraph
    parser.add_argument("--preset", default="paper", choices=["paper", "demo", "tiny"],
                        help="the preset whose crops and augmentations are timed (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="crops per call, at least 2 (default: %(default)s)")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when this machine has a CUDA device, else cpu: "
                        "%(default)s here)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per seed; the best counts (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=8, help="generator seeds, each fixing which crops get which "
                        "augmentation; their mean counts (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-ops", action="store_true", help="skip the per-augmentation breakdown")
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error(f"--batch: noise mixing needs at least 2 crops, got {args.batch}")
    for name in ("repeats", "seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.preset, args.batch, args.device, args.repeats, ops=not args.no_ops, seeds=args.seeds)
    print(report(result))
    return result


if __name__ == "__main__":
    main()
