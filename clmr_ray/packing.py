"""How many trials share one GPU: a trial's memory estimate and the packing check (pure torch).

A trial's peak GPU memory is estimated from its model and batch, with a short probe on the CPU:

- parameters + gradients + Adam's two moments (4 float32 copies of every parameter) and buffers;
- pretraining activations: the bytes autograd keeps for the backward pass, counted with
  saved-tensor hooks during one forward pass of a probe batch of PROBE_CROPS crops, scaled
  linearly to the per-worker batch (batch_size / num_workers), plus the batch itself;
- evaluation (feature extraction, no gradients): the largest input + output of one layer at a
  probe batch, scaled to eval.batch_size, plus the encoder input;
- CUDA_CONTEXT_BYTES per process (CUDA context, cuBLAS/cuDNN workspaces).

The trial's peak is the larger of its pretraining units and its evaluation. The probe runs in
float32; with pretrain.amp on a GPU the encoder runs under bf16 autocast, so what it saves for
backward is halved (AMP_ACTIVATION_FACTOR). Evaluation runs in float32 on the GPU too.
A card holds floor(1 / gpus_per_trial) trials; a packing fits when that many peaks stay within
(1 - HEADROOM) of the card's memory (HEADROOM covers the caching allocator's fragmentation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ExperimentSpec, SpecError

GIB = 2**30
PROBE_CROPS = 2
CUDA_CONTEXT_BYTES = 768 * 2**20
HEADROOM = 0.10
RAY_RESOURCE_STEP = 1e-4  # Ray keeps resource amounts to 4 decimals
AMP_ACTIVATION_FACTOR = 0.5  # bf16 instead of float32 for what autocast's convolutions and matmuls save


class PackingError(SpecError):
    """A packing of trials onto GPUs that cannot work (memory, or an unusable request)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak GPU memory of one trial, in bytes, and what it is made of."""

    states: int  # parameters, gradients, optimizer moments, buffers
    pretrain_activations: int  # saved for backward + the batch, per worker
    eval_activations: int  # feature extraction's largest layer
    context: int = CUDA_CONTEXT_BYTES

    @property
    def total(self) -> int:
        return self.states + max(self.pretrain_activations, self.eval_activations) + self.context

    def describe(self) -> str:
        return (f"{self.total / GIB:.2f} GiB (states {self.states / GIB:.2f}, pretraining activations "
                f"{self.pretrain_activations / GIB:.2f}, evaluation {self.eval_activations / GIB:.2f}, "
                f"CUDA context {self.context / GIB:.2f})")


def gpus_per_trial(trials_per_gpu: int) -> float:
    """The GPU share of one of N trials on a card, rounded down to Ray's resource step so that N
    shares never add up to more than one GPU (1/3 -> 0.3333)."""
    if trials_per_gpu < 1:
        raise PackingError(f"--trials-per-gpu: must be >= 1, got {trials_per_gpu}")
    steps = math.floor(1 / RAY_RESOURCE_STEP / trials_per_gpu)
    if steps < 1:
        raise PackingError(f"--trials-per-gpu: {trials_per_gpu} is more trials than Ray can split one GPU into")
    return steps * RAY_RESOURCE_STEP


def trials_per_gpu(share: float) -> int:
    """How many trials of GPU share `share` fit on one card (the inverse of gpus_per_trial)."""
    return max(1, math.floor(1 / share + 1e-6))


def parse_trials_per_gpu(text: str) -> int | str:
    """'--trials-per-gpu' value: a whole number >= 1, or 'auto'."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise PackingError(f"--trials-per-gpu: expected a whole number or 'auto', got {text!r}") from None
    if n < 1:
        raise PackingError(f"--trials-per-gpu: must be >= 1, got {n}")
    return n


# ------------------------------------------------------------------------- the estimate


def estimate(spec: ExperimentSpec) -> MemoryEstimate:
    """The peak GPU memory of one trial of `spec` (see the module docstring)."""
    from .experiment import pretrain_units

    parts = [_pretrain_memory(spec, unit) for unit in pretrain_units(spec)]
    states = max(p[0] for p in parts)
    pretrain = max(p[1] for p in parts)
    evaluation = max(_eval_memory(spec, fmt) for fmt in _eval_formats(spec))
    return MemoryEstimate(states=states, pretrain_activations=pretrain, eval_activations=evaluation)


def _eval_formats(spec: ExperimentSpec) -> tuple[str, ...]:
    return ("audio", "spectrogram") if spec.format == "both" else (spec.format,)


def _pretrain_memory(spec: ExperimentSpec, unit: str) -> tuple[int, int]:
    """(states, activations) of one pretraining unit, from a forward pass of PROBE_CROPS crops."""
    from .pretrain import ContrastiveModel

    torch.manual_seed(0)
    model = ContrastiveModel(spec, unit, spec.data.sample_rate).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    states = 4 * _bytes(model.parameters()) + _bytes(model.buffers())
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    views = 0.1 * torch.randn(PROBE_CROPS, 2, spec.pretrain.crop_samples, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        z_a, z_b = model(views, torch.Generator().manual_seed(0))
        model.loss(z_a, z_b, spec.pretrain.temperature, gather=False)
    amp = AMP_ACTIVATION_FACTOR if spec.pretrain.amp and spec.scaling.use_gpu else 1.0
    per_crop = (amp * sum(saved.values()) + views.nbytes) / PROBE_CROPS
    return states, math.ceil(per_crop * spec.pretrain.batch_size / spec.scaling.num_workers)


@torch.no_grad()
def _eval_memory(spec: ExperimentSpec, fmt: str) -> int:
    """Feature extraction of eval.batch_size crops: the largest layer's input + output, the encoder's
    input, and the encoder's weights (float32)."""
    from .pretrain import build_format_encoder, build_pipeline

    encoder = build_format_encoder(spec, fmt).eval()
    pipeline = build_pipeline(spec, fmt, spec.data.sample_rate)
    largest = 0

    def measure(_module: nn.Module, inputs, output) -> None:
        nonlocal largest
        largest = max(largest, _tensor_bytes(inputs) + _tensor_bytes(output))

    hooks = [m.register_forward_hook(measure) for m in encoder.modules() if not list(m.children())]
    try:
        x = pipeline.plain(0.1 * torch.randn(PROBE_CROPS, spec.pretrain.crop_samples))
        encoder(x)
    finally:
        for hook in hooks:
            hook.remove()
    per_crop = (largest + x.nbytes) / PROBE_CROPS
    return math.ceil(per_crop * spec.eval.batch_size) + _bytes(encoder.parameters()) + _bytes(encoder.buffers())


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


# ------------------------------------------------------------------------------ packing


@dataclass(frozen=True)
class Packing:
    """Trials per GPU for a set of trials, and why."""

    trials_per_gpu: int
    estimate: MemoryEstimate  # of the largest trial
    card_bytes: int | None  # None: the card's memory is unknown, the packing was not checked

    @property
    def gpus_per_trial(self) -> float:
        return gpus_per_trial(self.trials_per_gpu)

    def describe(self) -> str:
        card = (f" of a {self.card_bytes / GIB:.0f} GiB card" if self.card_bytes else "")
        return (f"{self.trials_per_gpu} trials per GPU ({self.gpus_per_trial:g} GPU each); one trial needs about "
                f"{self.estimate.total / GIB:.2f} GiB, {self.trials_per_gpu} need "
                f"{self.trials_per_gpu * self.estimate.total / GIB:.1f} GiB{card}")


def memory_key(spec: ExperimentSpec) -> str:
    """What a trial's memory estimate depends on (not its seed or its augmentations)."""
    from .config import to_dict

    d = to_dict(spec)
    return json.dumps([d["format"], d["data"]["sample_rate"], d["pretrain"], d["audio"]["encoder"],
                       d["spectrogram"]["encoder"], d["spectrogram"]["mel"], d["eval"]["batch_size"], d["scaling"]],
                      sort_keys=True)


def usable(card_bytes: int) -> int:
    """What trials may fill of a card, HEADROOM kept free."""
    return int(card_bytes * (1 - HEADROOM))


def plan(specs: list[ExperimentSpec], wanted: int | str | None, card_bytes: int | None) -> Packing:
    """Trials per GPU for `specs` (every one gets the same share): `wanted` trials, 'auto' (as many as the
    largest trial's estimate lets fit in the card's usable memory), or None (the specs' own
    scaling.gpus_per_trial, the smallest share counting). Raises PackingError, with one line, for a
    packing that cannot fit, and for 'auto' without the card's memory."""
    if not specs:
        raise PackingError("packing: no trials to pack")
    distinct = {memory_key(spec): spec for spec in specs}  # seeds and augmentations change no memory
    largest = max((estimate(spec) for spec in distinct.values()), key=lambda e: e.total)
    if wanted == "auto":
        if card_bytes is None:
            raise PackingError("--trials-per-gpu auto: the GPU's memory is unknown (no CUDA device visible to the "
                               "driver or to a Ray task); pass --gpu-memory-gib")
        n = usable(card_bytes) // largest.total
        if n < 1:
            raise PackingError(f"--trials-per-gpu auto: one trial needs about {largest.describe()}, more than the "
                               f"{usable(card_bytes) / GIB:.1f} GiB usable of a {card_bytes / GIB:.0f} GiB GPU")
        return Packing(int(n), largest, card_bytes)
    n = wanted if wanted is not None else max(trials_per_gpu(s.scaling.gpus_per_trial) for s in specs)
    if card_bytes is not None and n * largest.total > usable(card_bytes):
        fits = usable(card_bytes) // largest.total
        raise PackingError(f"--trials-per-gpu {n}: {n} trials need about {n * largest.total / GIB:.1f} GiB, more "
                           f"than the {usable(card_bytes) / GIB:.1f} GiB usable of a {card_bytes / GIB:.0f} GiB GPU "
                           f"(one trial: {largest.describe()}); "
                           + (f"at most {fits} fit" if fits else "not even one fits"))
    return Packing(int(n), largest, card_bytes)
