"""Supervised baseline on the synthetic genre corpus: log-mel band means and stds per track,
then multinomial logistic regression (torch, L2 picked on valid), accuracy on test.

It must land well above chance (10%) and well below 100% for the corpus to tell
representations apart.

    python benchmarks/corpus_baseline.py --sample-rate 8000 --seconds 10 --tracks 40
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from clmr_ray.config import SyntheticSpec
from clmr_ray.data.synthetic import generate_genres

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def mel_features(paths: list[Path], sample_rate: int) -> torch.Tensor:
    """[tracks, 2 * n_mels]: mean and std over time of each log-mel band."""
    n_fft = 1024 if sample_rate > 16000 else 512
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 2, n_mels=64)
    rows = []
    for path in paths:
        audio, rate = sf.read(path, dtype="float32")
        if rate != sample_rate:
            raise ValueError(f"{path}: {rate} Hz, expected {sample_rate} Hz")
        logmel = torch.log(mel(torch.from_numpy(audio)) + 1e-6)
        rows.append(torch.cat([logmel.mean(dim=1), logmel.std(dim=1)]))
    return torch.stack(rows)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, steps: int = 100) -> torch.nn.Linear:
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], n_classes, dtype=x.dtype)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def accuracy(model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def baseline_accuracy(root: Path, sample_rate: int) -> dict[str, float]:
    """Test accuracy of the baseline on a generated genre corpus (root holds split.csv)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    try:
        return _baseline_accuracy(root, sample_rate)
    finally:
        torch.set_num_threads(threads)


def _baseline_accuracy(root: Path, sample_rate: int) -> dict[str, float]:
    with open(root / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = sorted({r["path"].split("/")[0] for r in rows})
    feats = mel_features([root / r["path"] for r in rows], sample_rate).double()
    target = torch.tensor([labels.index(r["path"].split("/")[0]) for r in rows])
    split = np.array([r["split"] for r in rows])
    part = {s: torch.from_numpy(np.flatnonzero(split == s)) for s in ("train", "valid", "test")}
    mean, std = feats[part["train"]].mean(0), feats[part["train"]].std(0) + 1e-6
    feats = (feats - mean) / std
    fits = []
    for l2 in L2_GRID:
        model = fit_logistic(feats[part["train"]], target[part["train"]], len(labels), l2)
        fits.append((accuracy(model, feats[part["valid"]], target[part["valid"]]), l2, model))
    valid_acc, l2, model = max(fits, key=lambda f: (f[0], f[1]))
    return {"test_acc": accuracy(model, feats[part["test"]], target[part["test"]]), "valid_acc": valid_acc,
            "train_acc": accuracy(model, feats[part["train"]], target[part["train"]]), "l2": l2,
            "chance": 1 / len(labels)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tracks", type=int, default=40, help="tracks per genre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="corpus folder (default: a temporary one)")
    args = parser.parse_args(argv)
    spec = SyntheticSpec(seed=args.seed, tracks_per_label=args.tracks, seconds=args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "genres"
        start = time.perf_counter()
        generate_genres(root, spec, args.sample_rate)
        took = time.perf_counter() - start
        n = 10 * args.tracks
        print(f"generated {n} tracks ({args.sample_rate} Hz, {args.seconds:g} s) serially in {took:.1f} s: "
              f"{n / took:.1f} tracks/s")
        result = baseline_accuracy(root, args.sample_rate)
    print(f"log-mel + logistic regression: test accuracy {result['test_acc']:.1%} (valid {result['valid_acc']:.1%}, "
          f"train {result['train_acc']:.1%}, l2 {result['l2']:g}; chance {result['chance']:.0%})")


if __name__ == "__main__":
    sys.exit(main())
