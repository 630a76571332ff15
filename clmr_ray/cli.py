"""`clmr-ray`: the command-line entry point.

Every command is a plain console script, so it runs the same from a shell, from `make`, or
through `ray job submit -- clmr-ray ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from clmr_ray import config
from clmr_ray.config import SpecError
from clmr_ray.data.base import DatasetError

EPILOG = """\
examples:
  clmr-ray demo                                  prepare the synthetic corpora (offline, CPU)
  clmr-ray prepare synthetic --preset demo       generate + cache the synthetic genre corpus
  clmr-ray prepare gtzan --root ~/data/gtzan     decode + resample GTZAN once into a crop cache
  clmr-ray run --preset tiny --set format=both     one experiment in this process
  clmr-ray spec --preset tiny --set pretrain.lr=1e-3   print the resolved experiment spec
  clmr-ray bench augment --preset paper          batched vs per-example augmentation throughput

Generated corpora and caches live in $CLMR_RAY_DATA (default ~/.cache/clmr-ray).
Ray: a local Ray is started unless RAY_ADDRESS points at a running cluster.
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except (SpecError, DatasetError) as exc:
        print(f"clmr-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clmr-ray: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clmr-ray",
        description="Multi-format contrastive learning for music genre classification, on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("prepare", help="decode + resample a dataset once into a crop cache",
                       description="Scan a dataset, decode every file once (soundfile), mix to mono, "
                       "resample, and write one memory-mapped array per split plus an index and a "
                       "manifest. Re-running with the same inputs does nothing.")
    p.add_argument("dataset", choices=["synthetic", "synthetic_tags", "gtzan", "mtat", "folder"])
    p.add_argument("--root", help="dataset folder (required for gtzan, mtat, folder)")
    _add_spec_args(p)
    p.add_argument("--sample-rate", type=int, help="target rate in Hz (default: the spec's data.sample_rate)")
    p.add_argument("--cache-dir", help="where caches go (default: $CLMR_RAY_DATA/cache)")
    p.add_argument("--serial", action="store_true", help="decode in this process instead of Ray tasks")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="the main job on the embedded default (synthetic data, local Ray, CPU)")
    p.add_argument("--serial", action="store_true", help="decode in this process instead of Ray tasks")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run one experiment in this process: prepare, pretrain, evaluate",
                       description="Run one experiment without Ray Train (one process, CPU or one GPU). "
                       "Pretrained encoders are stored by content hash under $CLMR_RAY_DATA/encoders and "
                       "reused by any later experiment that needs the same encoder.")
    _add_spec_args(p)
    p.add_argument("--device", help="cpu | cuda (default: cuda when scaling.use_gpu and available)")
    p.add_argument("--serial", action="store_true", help="prepare data in this process instead of Ray tasks")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("spec", help="print the fully resolved experiment spec as YAML",
                       description="Resolve preset + spec file + --set overrides and print every field; "
                       "use it as a template for your own experiment files.")
    _add_spec_args(p)
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("bench", help="benchmarks that print figures (augment, step)")
    p.add_argument("what", choices=["augment", "step"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark (see its --help)")
    p.set_defaults(func=cmd_bench)
    return parser


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", help="tiny | demo | paper (default: paper)")
    p.add_argument("--config", help="experiment spec YAML applied on top of the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set pretrain.lr=1e-3 (repeatable)")


def resolve_spec(args: argparse.Namespace, extra: dict | None = None) -> config.ExperimentSpec:
    overrides: dict = {}
    if args.config:
        overrides = config.merge(overrides, config.load_yaml(args.config))
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.lr=1e-3")
        overrides = config.merge(overrides, {key: yaml.safe_load(raw)})
    overrides = config.merge(overrides, extra or {})
    return config.preset(args.preset, overrides)


def cmd_spec(args) -> int:
    print(yaml.safe_dump(config.to_dict(resolve_spec(args)), sort_keys=False), end="")
    return 0


def cmd_prepare(args) -> int:
    extra: dict = {"data.dataset": args.dataset}
    if args.root:
        extra["data.root"] = str(Path(args.root).expanduser())
    if args.sample_rate:
        extra["data.sample_rate"] = args.sample_rate
    spec = resolve_spec(args, extra)
    prepare_data(spec.data, spec.pretrain.crop_samples, cache_root=args.cache_dir, serial=args.serial)
    return 0


def prepare_data(data: config.DataSpec, min_samples: int, *, cache_root=None, serial=False):
    """Scan (generating a synthetic corpus if needed) and cache one dataset; print a summary."""
    from clmr_ray.experiment import prepare_dataset

    map_fn = map
    if not serial:
        from clmr_ray.parallel import ray_imap

        map_fn = ray_imap
    started = time.perf_counter()
    listing, prepared, scanned = prepare_dataset(data, min_samples, map_fn=map_fn, cache_root=cache_root)
    elapsed = time.perf_counter() - scanned
    counts = prepared.manifest.get("counts", {})
    n_files = len(listing.tracks)
    if prepared.reused:
        print(f"{listing.name}: reused cache {prepared.path}")
    else:
        rate = n_files / elapsed if elapsed > 0 else float("inf")
        print(f"{listing.name}: cached {n_files} files in {elapsed:.1f} s ({rate:.1f} files/s, "
              f"scan {scanned - started:.1f} s) -> {prepared.path}")
    split_text = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"  {len(listing.label_names)} {'tags' if listing.multilabel else 'labels'} at "
          f"{data.sample_rate} Hz; tracks: {split_text}; rejected: {len(prepared.manifest.get('rejected', []))}")
    return prepared


def cmd_run(args) -> int:
    from clmr_ray.experiment import run_experiment

    spec = resolve_spec(args)
    map_fn = map
    if not args.serial:
        from clmr_ray.parallel import ray_imap

        map_fn = ray_imap
    result = run_experiment(spec, map_fn=map_fn, device=args.device)
    m = result.metrics
    print(f"[{spec.name}] format {spec.format}: test acc {m['test_acc']:.3f}, test mAP {m['test_map']:.3f}, "
          f"valid mAP {m['valid_map']:.3f} (trained: {', '.join(result.trained) or 'none'}; "
          f"reused: {', '.join(result.reused) or 'none'}; {result.seconds['total']:.1f} s)")
    return 0


def cmd_demo(args) -> int:
    spec = config.preset("demo")
    print("clmr-ray demo: synthetic corpora at the demo preset "
          f"({spec.data.sample_rate} Hz, {spec.data.synthetic.seconds:g} s tracks)")
    prepare_data(spec.data, spec.pretrain.crop_samples, serial=args.serial)
    tags = config.with_overrides(spec, {"data.dataset": "synthetic_tags"}).data
    prepare_data(tags, spec.pretrain.crop_samples, serial=args.serial)
    return 0


def cmd_bench(args) -> int:
    if args.what == "augment":
        from clmr_ray.bench import augment as bench
    else:
        from clmr_ray.bench import step as bench
    status = bench.main(args.rest)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
