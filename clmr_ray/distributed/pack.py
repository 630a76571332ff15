"""Packing trials onto GPUs on the Ray side: the card's memory, and the GPU share every trial gets.

`pack_trials` runs on the driver before any trial starts: it turns `--trials-per-gpu N|auto` (or
the specs' own scaling.gpus_per_trial) into one GPU share for all trials, and refuses with one
line (packing.PackingError) a packing whose trials cannot fit in the card's memory. The card's
memory comes from --gpu-memory-gib, else from one short Ray task on a GPU of the cluster.
"""

from __future__ import annotations

import itertools

from ..config import ExperimentSpec, SpecError
from ..packing import GIB, Packing, PackingError, plan, trials_per_gpu
from ..sweep_files import Sweep

PROBE_TIMEOUT_S = 120
# Swept keys that change a trial's memory; a sweep's packing is checked at their extreme values.
MEMORY_KEYS = ("format", "data.sample_rate", "pretrain.batch_size", "pretrain.crop_samples", "pretrain.projection",
               "pretrain.objective", "audio.encoder", "spectrogram.encoder", "spectrogram.mel", "eval.batch_size",
               "scaling.num_workers")
MAX_SWEEP_SPECS = 32


def card_memory(gpu_memory_gib: float | None = None, num_cpus: int | None = None) -> int | None:
    """Bytes of one GPU of the Ray cluster: `gpu_memory_gib` when given, else read by a Ray task that
    holds a sliver of a GPU; None when the cluster has no GPU or its GPUs have no CUDA device
    behind them (a local Ray started with num_gpus on a CPU machine)."""
    if gpu_memory_gib is not None:
        if gpu_memory_gib <= 0:
            raise PackingError(f"--gpu-memory-gib: must be > 0, got {gpu_memory_gib:g}")
        return int(gpu_memory_gib * GIB)
    import ray

    from .tasks import ensure_ray

    ensure_ray(num_cpus)
    if ray.cluster_resources().get("GPU", 0) <= 0:
        return None
    # max_calls=1: the worker exits afterwards, so its CUDA context does not sit on the card
    probe = ray.remote(num_cpus=0, num_gpus=0.001, max_calls=1)(_visible_card_memory)
    ready, _ = ray.wait([ref := probe.remote()], timeout=PROBE_TIMEOUT_S)
    return ray.get(ref) if ready else None


def _visible_card_memory() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory


def pack_trials(specs: list[ExperimentSpec], wanted: int | str | None, *, gpu_memory_gib: float | None = None,
                num_cpus: int | None = None, log=print, prefix: str = "") -> Packing | None:
    """The packing of these trials (they all get its GPU share), checked against the card's memory;
    None when there is nothing to pack (no GPU trials, or whole GPUs asked for and nothing else).
    Raises PackingError (one line) before any trial starts when the packing cannot fit."""
    gpu_specs = [s for s in specs if s.scaling.use_gpu]
    if wanted is not None and not gpu_specs:
        raise PackingError(f"--trials-per-gpu {wanted}: the runs do not use a GPU; set scaling.use_gpu: true "
                           "(--set scaling.use_gpu=true) or leave the flag out")
    if not gpu_specs or (wanted is None and all(trials_per_gpu(s.scaling.gpus_per_trial) == 1 for s in gpu_specs)
                         and gpu_memory_gib is None):
        return None
    packing = plan(gpu_specs, wanted, card_memory(gpu_memory_gib, num_cpus))
    unchecked = "" if packing.card_bytes else " (the GPU's memory is unknown: not checked; pass --gpu-memory-gib)"
    log(f"{prefix}{packing.describe()}{unchecked}")
    return packing


def sweep_specs(sweep: Sweep) -> list[ExperimentSpec]:
    """The specs whose memory bounds a sweep's trials: its base, with every combination of the extreme
    values of the swept keys that change memory (MAX_SWEEP_SPECS at most; combinations that make no valid
    spec are skipped)."""
    base = sweep.base_spec()
    swept = [p for key, p in sweep.space.items() if any(key == k or key.startswith(f"{k}.") for k in MEMORY_KEYS)]
    specs = [base]
    combos = itertools.product(*[[(p.key, v) for v in p.sample_values()] for p in swept]) if swept else []
    for combo in itertools.islice(combos, MAX_SWEEP_SPECS):
        try:
            specs.append(sweep.spec_for(dict(combo)))
        except (SpecError, ValueError):
            continue
    return specs


def packed_overrides(packing: Packing | None) -> dict:
    """Spec overrides that give every trial the packing's GPU share."""
    return {} if packing is None else {"scaling.gpus_per_trial": packing.gpus_per_trial}


def share_text(spec: ExperimentSpec) -> str:
    """How a trial holds GPUs, for progress lines: '', '1 GPU each', or '4 per GPU (0.25 GPU each)'."""
    s = spec.scaling
    if not s.use_gpu:
        return ""
    if s.gpus_per_trial >= 1:
        return f"{s.num_workers} GPU{'s' if s.num_workers > 1 else ''} each"
    return f"{trials_per_gpu(s.gpus_per_trial)} per GPU ({s.gpus_per_trial * s.num_workers:g} GPU each)"
