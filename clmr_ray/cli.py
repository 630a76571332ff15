"""`clmr-ray`: the command-line entry point.

Every command is a plain console script, so it runs the same from a shell, from `make`, or
through `ray job submit -- clmr-ray ...`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from clmr_ray import config, machine, storage
from clmr_ray.config import SpecError
from clmr_ray.data.base import DatasetError

ABLATIONS_DIR = Path(__file__).resolve().parent.parent / "ablations"

EPILOG = """\
examples:
  clmr-ray demo                                  Tables 1-2 on the synthetic corpus (offline, CPU)
  clmr-ray ablate ablations/table1.yaml --preset demo   one ablation file, rows x seeds as Tune trials
  clmr-ray tables results/demo                   Parquet run records -> tables beside the paper's numbers
  clmr-ray sweep ablations/sweeps/spectrogram_masks.yaml [--resume]   an Optuna sweep
  clmr-ray analyze results/sweeps/spectrogram_masks   which swept parameter matters (importance, effects)
  clmr-ray prepare synthetic --preset demo       generate + cache the synthetic genre corpus
  clmr-ray prepare gtzan --root ~/data/gtzan     decode + resample GTZAN once into a crop cache
  clmr-ray run --preset tiny --set format=both     one experiment in this process
  clmr-ray spec --preset tiny --set pretrain.lr=1e-3   print the resolved experiment spec
  clmr-ray bench augment --preset paper          batched vs per-example augmentation throughput

Generated corpora and caches live in $CLMR_RAY_DATA (default ~/.cache/clmr-ray).
Dataset roots and results/storage may be URIs (s3://bucket/prefix, gs://..., file://...): a dataset URI is
copied once per node into $CLMR_RAY_DATA/mirrors; a results URI also gets Tune state and encoders.
Ray: a local Ray is started unless RAY_ADDRESS points at a running cluster.
"""


def main(argv: list[str] | None = None) -> int:
    from clmr_ray.distributed.tasks import quiet_ray_defaults

    if argv is None:  # a console command; a `ray job submit` driver first leaves Ray's working_dir folder
        from clmr_ray.job_workdir import leave_ray_package

        leave_ray_package(sys.argv[1:])
    quiet_ray_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)  # no command, or a bad argument: a usage line and exit 2
    if getattr(args, "portable_cpu", False):
        machine.pin_portable_cpu()  # before torch runs an op here or in any Ray worker we start
    machine.stop_on_sigterm_as_on_ctrl_c()
    try:
        return args.func(args) or 0
    except (SpecError, DatasetError) as exc:
        print(f"clmr-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clmr-ray: interrupted", file=sys.stderr)
        return INTERRUPTED


INTERRUPTED = 130  # the shell's exit status for a process stopped by Ctrl-C (128 + SIGINT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clmr-ray",
        description="Multi-format contrastive learning for music genre classification, on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help="decode + resample a dataset once into a crop cache",
                       description="Scan a dataset, decode every file once (soundfile), mix to mono, "
                       "resample, and write one memory-mapped array per split plus an index and a "
                       "manifest. Re-running with the same inputs does nothing.")
    p.add_argument("dataset", choices=["synthetic", "synthetic_tags", "gtzan", "mtat", "folder"])
    p.add_argument("--root", help="dataset folder, or a URI (s3://..., file://...) copied once into "
                   "$CLMR_RAY_DATA/mirrors (required for gtzan, mtat, folder)")
    _add_spec_args(p)
    p.add_argument("--sample-rate", type=positive_int, metavar="HZ",
                   help="target rate in Hz (default: the spec's data.sample_rate)")
    p.add_argument("--cache-dir", help="where caches go (default: $CLMR_RAY_DATA/cache)")
    p.add_argument("--serial", action="store_true", help="decode in this process instead of Ray tasks")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("ablate", help="run an ablation file (rows x seeds) as Ray Tune trials",
                       description="Run every row x seed of an ablation file through the one Tune trainable "
                       "(pretraining with Ray Train inside when scaling.num_workers > 1). Each finished run "
                       "writes RESULTS/runs/<run id>.parquet; runs that already have a record are skipped, "
                       "so re-running fills only the missing rows and a finished ablation trains nothing. "
                       "Encoders are reused across rows and tables by content hash.")
    p.add_argument("file", help="ablation YAML (see ablations/)")
    _add_ablation_args(p)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("tables", help="Parquet run records -> the paper's Tables 1-2 (+ the paper's numbers)",
                       description="Read RESULTS/runs/*.parquet and write <table>.parquet/.csv/.md/.png into "
                       "--out: mean +/- std and n over seeds per row, the paper's value beside it, and the run "
                       "ids behind each cell. Rows without runs show as missing.")
    p.add_argument("results", nargs="?", default="results",
                   help="results folder or URI (file://..., s3://bucket/prefix) holding runs/ (default: results)")
    p.add_argument("--out", help="folder or URI the tables go to (default: RESULTS)")
    _add_findings_arg(p)
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("reproduce", help="Tables 1 and 2 end to end: ablate both, then build the tables",
                       description="Prepare the data, run ablations/table1.yaml and table2.yaml at --preset, "
                       "write the tables and print them beside the paper's numbers.")
    _add_ablation_args(p, default_results="results/PRESET")
    _add_findings_arg(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("demo", help="the main job: reproduce --preset demo (synthetic data, local Ray, CPU)",
                       description="Reproduce the paper's Tables 1 (augmentations) and 2 (input formats) at "
                       "preset demo: `clmr-ray reproduce --preset demo`, 27 runs (3 seeds a row) as Ray Tune "
                       "trials on a local Ray (CPU, offline), the synthetic genre corpus generated first. About "
                       "6 minutes on a 2-core CPU (README, The demo). Prints the tables and findings beside the "
                       "paper's numbers and writes them to RESULTS (table{1,2}.*, findings.*: .md, .csv, "
                       ".parquet, .png), the run records to RESULTS/runs/*.parquet; a second run reuses them "
                       "and trains nothing.")
    p.add_argument("--results", default="results/demo", help="results folder (default: results/demo)")
    _add_machine_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run one experiment in this process: prepare, pretrain, evaluate",
                       description="Run one experiment without Ray Train (one process, CPU or one GPU). "
                       "Pretrained encoders are stored by content hash under $CLMR_RAY_DATA/encoders and "
                       "reused by any later experiment that needs the same encoder.")
    _add_spec_args(p)
    p.add_argument("--device", type=machine.device_arg,
                   help="cpu | cuda | cuda:N (default: cuda when scaling.use_gpu and available)")
    p.add_argument("--serial", action="store_true", help="prepare data in this process instead of Ray tasks")
    p.add_argument("--results", help="also write the run's Parquet record to RESULTS/runs/ (a folder or URI)")
    _add_machine_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("spec", help="print the fully resolved experiment spec as YAML",
                       description="Resolve preset + spec file + --set overrides and print every field; "
                       "use it as a template for your own experiment files.")
    _add_spec_args(p)
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("sweep", help="hyperparameter sweep with Ray Tune + Optuna (sweep file)",
                       description="Run a sweep file: every trial is one experiment (pretrain + evaluate) in a "
                       "Ray Tune trial, sampled by Optuna (TPE). Each finished trial leaves a Parquet record "
                       "in STORAGE/NAME/runs/; the best spec is saved as STORAGE/NAME/best_spec.yaml "
                       "(run it with `clmr-ray run --config`). Ctrl-C stops cleanly; --resume continues.")
    p.add_argument("file", help="sweep YAML (see ablations/sweeps/)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (finished trials are kept)")
    p.add_argument("--storage", default="results/sweeps",
                   help="folder or URI (file://..., s3://bucket/prefix) of sweeps (default: results/sweeps)")
    p.add_argument("--num-cpus", type=positive_int,
                   help="CPUs of the local Ray (default: all; ignored with RAY_ADDRESS)")
    p.add_argument("--preset", help="tiny | demo | paper (default: the file's preset)")
    p.add_argument("--num-samples", type=positive_int, help="trials to run (default: the file's budget)")
    p.add_argument("--max-concurrent", type=positive_int, help="trials at a time (default: the file's budget)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field of the sweep's base spec, e.g. --set pretrain.epochs=5 (repeatable)")
    _add_packing_args(p)
    _add_machine_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("analyze", help="which parameter of a sweep matters: importance, toggle effects, slices",
                       description="Read a sweep's folder (sweep.yaml + runs/*.parquet; finished, resumed or on a "
                       "bucket) and rebuild its Optuna study from the records. Prints and writes into the folder "
                       "(or --out): each parameter's importance (Optuna's fANOVA and PED-ANOVA), the effect of "
                       "every boolean toggle (metric with minus without, Welch 95% CI), a slice plot per numeric "
                       "parameter, the best trial beside the paper's setting (the sweep's first "
                       "points_to_evaluate), and the study as optuna.journal for `optuna-dashboard`. "
                       "Files: analysis.md, analysis.csv, analysis_importance.png, analysis_slice_*.png.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR_OR_URI",
                   help="the sweep's folder, STORAGE/NAME (e.g. results/sweeps/audio_augmentations, or "
                   "s3://bucket/sweeps/audio_augmentations, file:///...)")
    p.add_argument("--metric", help="metric to analyse: valid_* or test_* of the records (default: the sweep's)")
    p.add_argument("--out", help="folder or URI for the files (default: the sweep folder)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("bench", help="benchmarks that print figures (augment, step, epoch, scaling)",
                       description="Benchmarks that print figures; the arguments after the benchmark's name are "
                       "its own (see clmr-ray bench BENCHMARK --help).")
    benches = p.add_subparsers(title="benchmarks", dest="what", metavar="{" + ",".join(BENCHES) + "}",
                               required=True)
    # Each benchmark parses its own arguments, --help included: its parser here has no options (prefix "+",
    # so an argument starting with "-" is none of its own) and hands everything after its name on.
    for name, text in BENCHES.items():
        bench = benches.add_parser(name, help=text, add_help=False, prefix_chars="+")
        bench.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


BENCHES = {
    "augment": "augmentation throughput: batched vs one crop at a time",
    "step": "training-step throughput of both encoders, and the split of one step",
    "epoch": "a whole pretraining epoch against bench step: does the data path keep the step busy?",
    "scaling": "Ray Train workers, Tune sweep overhead, trials packed on one GPU",
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts: CPUs, trials at a time, a rate in Hz)."""
    return _int_at_least(text, 1)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        return _int_at_least(text, 0)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"seed {text}: expected an integer >= 0") from None


class _DistinctSeeds(argparse.Action):
    """--seeds: each seed once (a repeated seed would be the same run, counted twice)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen: set[int] = set()
        for seed in values:
            if seed in seen:
                raise argparse.ArgumentError(self, f"seed {seed} is given more than once")
            seen.add(seed)
        setattr(namespace, self.dest, values)


def _add_ablation_args(p: argparse.ArgumentParser, default_results: str = "results") -> None:
    p.add_argument("--preset", default="demo", help="tiny | demo | gpu | paper (default: demo)")
    p.add_argument("--results", default=os.environ.get("CLMR_RAY_STORAGE") or default_results,
                   help="results folder or filesystem URI (file://..., s3://bucket/prefix): runs/, tables, Tune "
                   f"state (default: $CLMR_RAY_STORAGE, else {default_results})")
    p.add_argument("--seeds", type=_seed, nargs="+", action=_DistinctSeeds, metavar="SEED",
                   help="seeds to run, each an integer >= 0 given once (default: 0 1 2 at preset demo, else the "
                   "file's)")
    p.add_argument("--gtzan-root", help="GTZAN folder or URI (s3://...: each node mirrors it) for the real-data "
                   "presets (or $GTZAN_ROOT)")
    p.add_argument("--mtat-root", help="MagnaTagATune folder or URI for the real-data presets (or $MTAT_ROOT)")
    p.add_argument("--max-concurrent", type=positive_int, help="runs at a time (default: as many as fit)")
    p.add_argument("--num-cpus", type=positive_int,
                   help="CPUs of the local Ray (default: all; ignored with RAY_ADDRESS)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one spec field in every row, e.g. --set pretrain.epochs=5 (repeatable)")
    _add_packing_args(p)
    _add_machine_args(p)


def _add_packing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials-per-gpu", type=_trials_per_gpu, metavar="N|auto",
                   help="GPU runs: pack N trials on each GPU (Ray fractional GPUs, 1/N each); auto: as many as the "
                   "trial's memory estimate lets fit in the card with 10%% headroom. A packing that cannot fit is "
                   "refused before any trial starts (see README, Scaling)")
    p.add_argument("--gpu-memory-gib", type=float, metavar="GIB",
                   help="memory of one GPU, for --trials-per-gpu (default: read on a GPU of the Ray cluster)")


def _trials_per_gpu(text: str):
    from clmr_ray.packing import parse_trials_per_gpu

    try:
        return parse_trials_per_gpu(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--trials-per-gpu: ")) from None


def _add_findings_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--findings", metavar="FILE",
                   help="claims to test, as comparisons between rows (default: ablations/findings.yaml): each gets "
                   "an effect, a 95%% interval (seeds + a bootstrap over test tracks) and a verdict, written as "
                   "findings.{parquet,csv,md,png} beside the tables")


def _add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--portable-cpu", action="store_true",
                   help="pin the CPU kernels to AVX2 (torch, oneDNN, MKL), so x86 machines with wider vector units "
                   "run the same kernels; on one machine, reruns are identical without it (see README, Repeatable runs)")


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", help="tiny | demo | paper (default: paper)")
    p.add_argument("--config", help="experiment spec YAML applied on top of the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set pretrain.lr=1e-3 (repeatable)")


def parse_sets(items: list[str]) -> dict:
    """['pretrain.lr=1e-3', ...] -> {'pretrain.lr': 0.001, ...} (values parsed as YAML)."""
    overrides: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.lr=1e-3")
        overrides = config.merge(overrides, {key: yaml.safe_load(raw)})
    return overrides


def resolve_spec(args: argparse.Namespace, extra: dict | None = None) -> config.ExperimentSpec:
    overrides: dict = {}
    if args.config:
        overrides = config.merge(overrides, config.load_overrides(args.config))
    overrides = config.merge(overrides, parse_sets(args.set))
    overrides = config.merge(overrides, extra or {})
    return config.preset(args.preset, overrides)


def cmd_spec(args) -> int:
    print(yaml.safe_dump(config.to_dict(resolve_spec(args)), sort_keys=False), end="")
    return 0


def cmd_prepare(args) -> int:
    extra: dict = {"data.dataset": args.dataset}
    if args.root:
        extra["data.root"] = storage.expand(args.root)
    if args.sample_rate is not None:
        extra["data.sample_rate"] = args.sample_rate
    spec = resolve_spec(args, extra)
    prepare_data(spec.data, spec.pretrain.crop_samples, cache_root=args.cache_dir, serial=args.serial)
    return 0


def prepare_data(data: config.DataSpec, min_samples: int, *, cache_root=None, serial=False):
    """Scan (generating a synthetic corpus if needed) and cache one dataset; print a summary."""
    from clmr_ray.experiment import decode_progress, prepare_dataset

    map_fn = map
    if not serial:
        from clmr_ray.distributed.tasks import ray_imap

        map_fn = ray_imap
    started = time.perf_counter()
    listing, prepared, scanned = prepare_dataset(data, min_samples, map_fn=map_fn, cache_root=cache_root,
                                                 on_progress=decode_progress(data.dataset))
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
        from clmr_ray.distributed.tasks import ray_imap

        map_fn = ray_imap
    if args.results:
        from clmr_ray.results import check_writable

        check_writable(storage.join(storage.resolve(args.results), "runs"))  # before the training, not after
    result = run_experiment(spec, map_fn=map_fn, device=args.device)
    m = result.metrics
    print(f"[{spec.name}] format {spec.format}: test acc {m['test_acc']:.3f}, test mAP {m['test_map']:.3f}, "
          f"valid mAP {m['valid_map']:.3f} (trained: {', '.join(result.trained) or 'none'}; "
          f"reused: {', '.join(result.reused) or 'none'}; {result.seconds['total']:.1f} s)")
    if args.results:
        from clmr_ray.config import setup_hash, spec_hash
        from clmr_ray.results import run_record, write_record

        runs = storage.join(storage.resolve(args.results), "runs")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)
        row = f"{spec.name}-{setup_hash(spec)}"  # one row per setup: its seeds pool, other --set values do not
        path = write_record(run_record(spec, result, run_id=f"run-{name}-{spec_hash(spec)}", table="run",
                                      row=row, extra={"status": "finished"}), runs)
        print(f"record: {path}")
    return 0


def _ablate(path, args, log=print):
    from clmr_ray.ablation_files import load_ablation
    from clmr_ray.distributed.ablate import run_ablation

    ablation = load_ablation(path)
    roots = {"gtzan": args.gtzan_root, "mtat": args.mtat_root}
    outcome = run_ablation(ablation, args.preset, results_dir=args.results, roots=roots, seeds=args.seeds,
                           extra=parse_sets(args.set), max_concurrent=args.max_concurrent,
                           num_cpus=args.num_cpus, trials_per_gpu=args.trials_per_gpu,
                           gpu_memory_gib=args.gpu_memory_gib, log=log)
    for failure in outcome.failed:
        print(f"clmr-ray: run failed: {failure}", file=sys.stderr)
    if outcome.interrupted:
        done = len(outcome.finished) + len(outcome.skipped)
        print(f"clmr-ray: ablation '{ablation.name}' stopped with {done}/{len(outcome.runs)} runs recorded in "
              f"{outcome.runs_dir}; run the same command again to run the rest (runs in progress start over)",
              file=sys.stderr)
    return outcome


def cmd_ablate(args) -> int:
    from clmr_ray.ablation_files import load_ablation

    load_ablation(args.file)  # a bad file fails here, before Ray starts
    outcome = _ablate(args.file, args)
    if outcome.interrupted:
        return INTERRUPTED
    print(f"{len(outcome.finished) + len(outcome.skipped)}/{len(outcome.runs)} runs have records in "
          f"{outcome.runs_dir}; build the tables with: clmr-ray tables {args.results}")
    return 1 if outcome.failed else 0


def cmd_tables(args) -> int:
    from clmr_ray.results import read_records

    results = storage.resolve(args.results)
    runs = storage.join(results, "runs")
    records = read_records(runs)
    if records.empty:
        raise DatasetError(f"{runs}: no run records (*.parquet) to build tables from")
    shown = build_tables(records, storage.resolve(args.out) if args.out else results, findings=args.findings)
    for text in shown.values():
        print(text)
    print("written: " + ", ".join(f"{base}.*" for base in shown))
    return 0


def build_tables(records, out, titles: dict | None = None, findings=None) -> dict[str, str]:
    """Write the tables and the findings (claims of `findings`, default ablations/findings.yaml, whose
    rows have records) into `out` (a folder or a URI: written locally, then uploaded file by file);
    returns {where each table went, without suffix: its markdown}, the findings last."""
    from clmr_ray.findings import load_claims, write_findings
    from clmr_ray.tables import write_tables

    claims = load_claims(findings) if findings else load_claims()
    local = Path(tempfile.mkdtemp(prefix="clmr-tables-")) if storage.is_uri(out) else Path(out)
    try:
        written = write_tables(records, local, titles)
        _, findings_paths = write_findings(records, local, claims, "Findings: the paper's claims, tested")
        if findings_paths:
            written["findings"] = findings_paths
        shown = {}
        for paths in written.values():
            for path in paths.values():
                if local != out:
                    storage.upload(path, out)
            shown[str(storage.join(out, paths["md"].stem))] = paths["md"].read_text()
        return shown
    finally:
        if local != out:
            shutil.rmtree(local, ignore_errors=True)


def cmd_reproduce(args) -> int:
    from clmr_ray.ablation_files import load_ablation
    from clmr_ray.findings import load_claims
    from clmr_ray.results import read_records

    files = [ABLATIONS_DIR / "table1.yaml", ABLATIONS_DIR / "table2.yaml"]
    for path in files:
        load_ablation(path)  # both files valid before anything runs
    if args.findings:
        load_claims(args.findings)
    if args.results == "results/PRESET":  # each preset's tables in a folder of their own
        args.results = f"results/{args.preset}"
    started = time.perf_counter()
    failed = []
    for path in files:
        outcome = _ablate(path, args)
        if outcome.interrupted:  # no second table, no tables: the user asked to stop
            return INTERRUPTED
        failed += outcome.failed
    results = storage.resolve(args.results)
    shown = build_tables(read_records(storage.join(results, "runs")), results,
                         {"table1": "Table 1: augmentations", "table2": "Table 2: input formats"}, args.findings)
    print(f"\nclmr-ray reproduce --preset {args.preset}: {time.perf_counter() - started:.0f} s\n")
    for text in shown.values():
        print(text)
    print("tables and findings: " + ", ".join(f"{base}.*" for base in shown))
    print(f"run records: {storage.join(results, 'runs')}/*.parquet")
    return 1 if failed else 0


def cmd_demo(args) -> int:
    print("clmr-ray demo: the paper's Tables 1-2 on the synthetic corpus (local Ray, CPU, preset demo)")
    return main(["reproduce", "--preset", "demo", "--results", args.results]
                + (["--portable-cpu"] if args.portable_cpu else []))


def cmd_sweep(args) -> int:
    from clmr_ray import sweep_files

    sweep = sweep_files.load_sweep(args.file, preset=args.preset, num_samples=args.num_samples,
                              max_concurrent_trials=args.max_concurrent, base=parse_sets(args.set))
    from clmr_ray.distributed import tune  # imports Ray: only once the sweep file is valid

    outcome = tune.run_sweep(sweep, args.storage, resume=args.resume, num_cpus=args.num_cpus,
                             trials_per_gpu=args.trials_per_gpu, gpu_memory_gib=args.gpu_memory_gib)
    for error in outcome.errors:
        print(f"clmr-ray: trial failed: {error}", file=sys.stderr)
    if outcome.interrupted:
        print(f"clmr-ray: sweep '{sweep.name}' stopped with {outcome.records}/{sweep.num_samples} trials recorded; "
              f"continue it with: clmr-ray sweep {args.file} --resume --storage {args.storage}", file=sys.stderr)
        return INTERRUPTED
    return 1 if outcome.errors else 0


def cmd_analyze(args) -> int:
    from clmr_ray.sweep_analysis import report, write_analysis

    started = time.perf_counter()
    analysis = write_analysis(args.sweep_dir, metric=args.metric, out=args.out)
    print(report(analysis), end="")
    print(f"written in {time.perf_counter() - started:.1f} s: " + ", ".join(str(f) for f in analysis.files))
    return 0


def cmd_bench(args) -> int:
    if args.what == "augment":
        from clmr_ray.bench import augment as bench
    elif args.what == "step":
        from clmr_ray.bench import step as bench
    elif args.what == "epoch":
        from clmr_ray.bench import epoch as bench
    else:
        from clmr_ray.bench import scaling as bench
    status = bench.main(args.rest)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
