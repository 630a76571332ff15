"""Crop-cache throughput: `prepare` on N noise files of S seconds at 22050 Hz, resampled to each
target rate (serial, optionally through Ray), then TrainSampler batches per second.

    python benchmarks/prepare_throughput.py --files 100 --seconds 30 --rates 8000 16000 22050 [--ray]

Files are written to a temporary folder and deleted at the end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from clmr_ray.data.cache import open_cache, prepare
from clmr_ray.data.folder import scan_folder
from clmr_ray.data.sampling import TrainSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--source-rate", type=int, default=22050)
    parser.add_argument("--rates", type=int, nargs="+", default=[8000, 16000, 22050])
    parser.add_argument("--crop", type=int, default=59049)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--ray", action="store_true", help="also prepare through clmr_ray.distributed.tasks.ray_imap")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="clmr-prepare-bench-"))
    try:
        rng = np.random.default_rng(0)
        n_samples = int(args.seconds * args.source_rate)
        for i in range(args.files):
            path = tmp / "src" / f"label{i % 10}" / f"track{i:04d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
            sf.write(path, noise, args.source_rate, subtype="PCM_16")
        listing = scan_folder(tmp / "src")
        print(f"{args.files} files x {args.seconds:g} s at {args.source_rate} Hz")

        for rate in args.rates:
            wall, cpu = time.perf_counter(), time.process_time()
            prepared = prepare(listing, rate, min_samples=args.crop, cache_root=tmp / "cache")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"prepare serial -> {rate} Hz: {args.files / wall:.1f} files/s ({wall:.2f} s wall, {cpu:.2f} CPU-s)"
            )
        start = time.perf_counter()
        assert prepare(listing, rate, min_samples=args.crop, cache_root=tmp / "cache").reused
        print(f"prepare again (reused): {time.perf_counter() - start:.3f} s")

        if args.ray:
            from clmr_ray.distributed.tasks import ensure_ray, ray_imap

            ensure_ray()
            start = time.perf_counter()
            prepare(listing, args.rates[0], min_samples=args.crop, cache_root=tmp / "ray", map_fn=ray_imap)
            wall = time.perf_counter() - start
            print(f"prepare ray_imap -> {args.rates[0]} Hz: {args.files / wall:.1f} files/s ({wall:.2f} s)")

        sampler = TrainSampler(open_cache(prepared.path).split("train"), args.crop, args.batch)
        start, batches = time.perf_counter(), 0
        for epoch in range(20):
            sampler.set_epoch(epoch)
            batches += sum(1 for _ in sampler)
        wall = time.perf_counter() - start
        print(
            f"TrainSampler at {rate} Hz, crop {args.crop}, batch {args.batch} x 2 views: {batches / wall:.1f} batches/s"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
