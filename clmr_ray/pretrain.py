"""Contrastive pretraining in plain torch: the model, one training step, the epoch loop.

The loop runs the same in one process (tests, benchmarks) and in N Ray Train workers: the
Ray layer passes a TrainContext whose `wrap_model` adds DDP and whose `report` saves
checkpoints; nothing here imports Ray.

Reproducibility: the model is initialised from spec.seed; the crop sampler's order depends on
(spec.seed, epoch) and the augmentation generator is reseeded from (spec.seed, rank, epoch) at
the start of every epoch, so an epoch-boundary checkpoint resumes exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import ExperimentSpec, spec_hash
from .losses import cross_format_nt_xent, nt_xent
from .speedups import Speedups

SINGLE_FORMATS = ("audio", "spectrogram")


# --------------------------------------------------------------------- building


def build_pipeline(spec: ExperimentSpec, fmt: str, sample_rate: int | None = None) -> nn.Module:
    """The augmentation pipeline of one format (waveform -> encoder input)."""
    from .augment.pipeline import AugmentPipeline

    rate = sample_rate or spec.data.sample_rate
    if fmt == "audio":
        return AugmentPipeline(spec.audio.augment, rate, None)
    if fmt == "spectrogram":
        return AugmentPipeline(spec.spectrogram.augment, rate, spec.spectrogram.mel)
    raise ValueError(f"format '{fmt}' is not one of {', '.join(SINGLE_FORMATS)}")


def build_format_encoder(spec: ExperimentSpec, fmt: str) -> nn.Module:
    from .models import build_encoder

    if fmt not in SINGLE_FORMATS:
        raise ValueError(f"format '{fmt}' is not one of {', '.join(SINGLE_FORMATS)}")
    return build_encoder(getattr(spec, fmt).encoder, crop_samples=spec.pretrain.crop_samples)


def encoders_from_states(spec: ExperimentSpec, states: dict[str, dict]) -> dict[str, nn.Module]:
    """Rebuild pretrained encoders (eval mode) from PretrainResult.encoder_states."""
    encoders = {}
    for fmt, state in states.items():
        encoder = build_format_encoder(spec, fmt)
        encoder.load_state_dict(state)
        encoders[fmt] = encoder.eval()
    return encoders


def pretrain_formats(spec: ExperimentSpec, fmt: str) -> tuple[str, ...]:
    """Formats one pretraining run trains: one, or both for the cross-format objective."""
    if fmt in SINGLE_FORMATS:
        return (fmt,)
    if fmt == "both":
        if spec.pretrain.objective != "cross_format":
            raise ValueError("pretrain: format 'both' with objective 'ntxent' is two separate runs; "
                             "pretrain 'audio' and 'spectrogram' each (or set pretrain.objective: cross_format)")
        return SINGLE_FORMATS
    raise ValueError(f"pretrain: format '{fmt}' is not one of audio, spectrogram, both")


class ContrastiveModel(nn.Module):
    """Augmentation pipeline(s) + encoder(s) + projector(s) of one pretraining run.

    Single format: both views go through the same pipeline, encoder and projector (in one
    batch of 2B). Cross-format ('both'): view 0 becomes audio, view 1 a spectrogram, each with
    its own encoder and projector."""

    def __init__(self, spec: ExperimentSpec, fmt: str, sample_rate: int | None = None):
        super().__init__()
        from .models import Projector

        self.fmt = fmt
        self.formats = pretrain_formats(spec, fmt)
        p = spec.pretrain
        self.pipelines = nn.ModuleDict({f: build_pipeline(spec, f, sample_rate) for f in self.formats})
        self.encoders = nn.ModuleDict({f: build_format_encoder(spec, f) for f in self.formats})
        self.projectors = nn.ModuleDict(
            {f: Projector(self.encoders[f].out_dim, p.projection_hidden, p.projection_dim) for f in self.formats})
        self.views_in_one_call = False  # speedups.views_in_one_call; see augment_views

    def forward(self, views: torch.Tensor, generator: torch.Generator | None = None,
                amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """views [B, 2, T] -> projections (z_a, z_b), each [B, projection_dim]."""
        if views.dim() != 3 or views.shape[1] < 2:
            raise ValueError(f"ContrastiveModel: expected views [B, 2, T], got {tuple(views.shape)}")
        use_amp = amp and views.device.type == "cuda"
        if len(self.formats) == 1:
            f = self.formats[0]
            x = self.augment_views(views, generator)
            with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=use_amp):
                z = self.projectors[f](self.encoders[f](x))
            return z.float().chunk(2)
        zs = []
        for view, f in enumerate(self.formats):
            x = self.pipelines[f](views[:, view], generator)
            with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=use_amp):
                zs.append(self.projectors[f](self.encoders[f](x)).float())
        return zs[0], zs[1]

    def augment_views(self, views: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Both views [B, 2, T] of a single-format step through its pipeline: [2B, ...], view 0's
        rows first, drawn as two calls draw them; with views_in_one_call computed as one batch of
        2B rows (AugmentPipeline.views)."""
        return self.pipelines[self.formats[0]].views(views[:, :2], generator, together=self.views_in_one_call)

    def loss(self, z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, gather: bool) -> torch.Tensor:
        if len(self.formats) == 2:
            return cross_format_nt_xent(z_a, z_b, temperature, gather=gather)
        return nt_xent(z_a, z_b, temperature, gather=gather)


# ------------------------------------------------------------------------- step


def train_step(model: nn.Module, batch, optimizer: torch.optim.Optimizer, *, temperature: float,
               generator: torch.Generator | None = None, gather: bool = False, amp: bool = False,
               grad_clip: float | None = None, scheduler=None) -> torch.Tensor:
    """One optimisation step on a CropBatch (two views per crop); returns the loss, detached and
    on the device: reading it (float(loss)) waits for the GPU, so the loop does it once per epoch.

    `model` is a ContrastiveModel, possibly wrapped (DDP): the loss is taken from the inner one."""
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(model, batch.audio, temperature=temperature, generator=generator, gather=gather, amp=amp,
                            grad_clip=grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss


def forward_backward(model: nn.Module, views: torch.Tensor, *, temperature: float,
                     generator: torch.Generator | None = None, gather: bool = False, amp: bool = False,
                     grad_clip: float | None = None) -> torch.Tensor:
    """The part of train_step before the optimiser: augment, encode, NT-Xent, backward, clip.
    Gradients are accumulated into .grad; returns the loss, detached."""
    inner = _unwrap(model)
    views = views.to(_device_of(inner), non_blocking=True)
    z_a, z_b = model(views, generator, amp)
    loss = inner.loss(z_a, z_b, temperature, gather)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    return loss.detach()


@torch.no_grad()
def validation_loss(model: nn.Module, sampler, *, temperature: float, generator: torch.Generator,
                    gather: bool = False, amp: bool = False) -> float:
    """Mean contrastive loss on held-out crops, computed like the training loss (BatchNorm on batch
    statistics) but leaving every buffer as it was; averaged over workers."""
    model = _unwrap(model)
    saved = [(b, b.clone()) for b in model.buffers()]
    was_training = model.training
    model.train()
    total, count = 0.0, 0
    try:
        for batch in sampler:
            z_a, z_b = model(batch.audio.to(_device_of(model)), generator, amp)
            total += model.loss(z_a, z_b, temperature, gather).item()
            count += 1
    finally:
        for buffer, value in saved:
            buffer.copy_(value)
        model.train(was_training)
    return _mean_over_workers(total / max(count, 1))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, sampler, *, generator: torch.Generator, amp: bool = False) -> None:
    """Precise BatchNorm: replace the encoders' running statistics (an EMA over changing weights,
    far from converged after a short run) by their average over one pass of training views with
    the final weights, averaged over workers. Evaluation then sees the statistics of its encoder."""
    model = _unwrap(model)
    norms = [m for m in model.encoders.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    was_training = model.training
    model.train()
    try:
        for batch in sampler:
            model(batch.audio.to(_device_of(model)), generator, amp)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for m in norms:
            for stat in (m.running_mean, m.running_var):
                dist.all_reduce(stat)
                stat.div_(dist.get_world_size())


# ------------------------------------------------------------------------- loop


def _print_report(metrics: dict, checkpoint: dict | None) -> None:
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    print(f"pretrain {shown}", flush=True)


@dataclass
class TrainContext:
    """How the loop talks to whoever runs it (a test, the CLI, a Ray Train worker).

    report(metrics, checkpoint) is called once per epoch on every rank; checkpoint is a CPU
    state dict on rank 0 (None elsewhere) from which `resume_state` continues exactly."""

    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1
    report: Callable[[dict, dict | None], None] = _print_report
    resume_state: dict | None = None
    wrap_model: Callable[[nn.Module], nn.Module] = lambda model: model
    should_stop: Callable[[], bool] | None = None


@dataclass
class PretrainResult:
    # format -> encoder state_dict (CPU): the epoch with the best valid loss (else the last one),
    # its BatchNorm statistics re-estimated by recalibrate_batchnorm.
    encoder_states: dict[str, dict]
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def pretrain(spec: ExperimentSpec, fmt: str, train_split, valid_split, ctx: TrainContext | None = None
             ) -> PretrainResult:
    """Pretrain the encoder(s) of `fmt` on `train_split` with NT-Xent; see the module docstring."""
    from .data.sampling import TrainSampler

    ctx = ctx or TrainContext()
    p = spec.pretrain
    device = torch.device(ctx.device)
    formats = pretrain_formats(spec, fmt)
    if p.batch_size % ctx.world_size:
        raise ValueError(f"pretrain.batch_size: {p.batch_size} does not split evenly over {ctx.world_size} workers")
    local_batch = p.batch_size // ctx.world_size
    if local_batch < 2:
        raise ValueError(f"pretrain.batch_size: {p.batch_size} over {ctx.world_size} workers leaves "
                         f"{local_batch} example per worker; NT-Xent needs at least 2")
    independent = all(getattr(spec, f).augment.crop.enabled for f in formats)
    sampler_args = {"crop_samples": p.crop_samples, "batch_size": local_batch, "rank": ctx.rank,
                        "world_size": ctx.world_size, "n_views": 2, "independent_views": independent}
    train_sampler = TrainSampler(train_split, seed=spec.seed, crops_per_track=p.crops_per_track, **sampler_args)
    if len(train_sampler) == 0:
        raise ValueError(f"pretrain: split '{train_split.name}' has too few tracks ({train_split.n_tracks}) "
                         f"for one batch of {local_batch} per worker")
    valid_sampler = None
    if valid_split is not None and p.val_every > 0 and valid_split.n_tracks > 0:
        valid_sampler = TrainSampler(valid_split, seed=spec.seed + 1, **sampler_args)  # fixed crops: epoch 0
        if len(valid_sampler) == 0:
            valid_sampler = None

    torch.manual_seed(spec.seed)
    speed = Speedups.for_device(device)
    speed.apply_backend()
    model = speed.prepare_model(ContrastiveModel(spec, fmt, _sample_rate(train_split, spec)).to(device))
    optimizer = speed.adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec, len(train_sampler)))
    gather = p.gather_negatives and ctx.world_size > 1
    generator = torch.Generator(device=device)

    start_epoch, history, stopped_early = 1, [], False
    best = {"loss": math.inf, "epoch": 0, "states": None, "stale": 0}
    if ctx.resume_state is not None:
        start_epoch, history, best, stopped_early = _restore(ctx.resume_state, spec, fmt, model, optimizer,
                                                             scheduler)
    trained = ctx.wrap_model(model)
    step = speed.step(trained, optimizer, temperature=p.temperature, generator=generator, gather=gather, amp=p.amp,
                      grad_clip=p.grad_clip, scheduler=scheduler)

    last_epoch = start_epoch - 1 if stopped_early else p.epochs  # a finished run resumes to its end
    epochs = range(start_epoch, last_epoch + 1)
    with speed.feed(train_sampler, device, epochs) as feed:  # prefetched across epoch ends on CUDA
        for epoch in epochs:
            generator.manual_seed(_epoch_seed(spec.seed, ctx.rank, epoch))
            train_sampler.set_epoch(epoch)
            trained.train()
            start, losses = time.perf_counter(), []
            for batch in feed.epoch(epoch):
                losses.append(step(batch))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            metrics = {"epoch": epoch, "train_loss": _mean_over_workers(float(torch.stack(losses).double().mean())),
                       "crops_per_s": len(losses) * local_batch * ctx.world_size / seconds,
                       "lr": optimizer.param_groups[0]["lr"], "epoch_s": seconds}

            if valid_sampler is not None and epoch % p.val_every == 0:
                generator.manual_seed(_epoch_seed(spec.seed, ctx.rank, 0))  # the same views every time
                metrics["valid_loss"] = validation_loss(trained, valid_sampler, temperature=p.temperature,
                                                        generator=generator, gather=gather, amp=p.amp)
                if metrics["valid_loss"] < best["loss"]:
                    best = {"loss": metrics["valid_loss"], "epoch": epoch, "states": _encoder_states(model), "stale": 0}
                else:
                    best["stale"] += 1
                stopped_early = p.early_stop_patience is not None and best["stale"] >= p.early_stop_patience
            history.append(metrics)

            checkpoint = None
            if ctx.rank == 0:
                checkpoint = _cpu_copy({
                    "format": fmt, "spec_hash": spec_hash(spec), "epoch": epoch, "history": history, "best": best,
                    "stopped_early": stopped_early,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "numpy_rng": numpy_rng_state(),
                })
            ctx.report(dict(metrics), checkpoint)
            if stopped_early or (ctx.should_stop is not None and ctx.should_stop()):
                break

    if best["states"] is not None:
        for f, state in best["states"].items():
            model.encoders[f].load_state_dict(state)
    train_sampler.set_epoch(0)  # a crop order training never used
    generator.manual_seed(_epoch_seed(spec.seed, ctx.rank, 0))
    recalibrate_batchnorm(model, train_sampler, generator=generator, amp=p.amp)
    return PretrainResult(encoder_states=_encoder_states(model), history=history,
                          best_epoch=best["epoch"] or (history[-1]["epoch"] if history else 0),
                          stopped_early=stopped_early)


def lr_lambda(spec: ExperimentSpec, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step LR multiplier: linear warmup over warmup_epochs, then constant or cosine to 0."""
    p = spec.pretrain
    warmup = p.warmup_epochs * steps_per_epoch
    total = max(p.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if p.schedule == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def _restore(state: dict, spec, fmt, model, optimizer, scheduler):
    if state.get("format") != fmt:
        raise ValueError(f"resume_state: checkpoint is for format '{state.get('format')}', not '{fmt}'")
    if state.get("spec_hash") != spec_hash(spec):
        raise ValueError(f"resume_state: checkpoint spec hash {state.get('spec_hash')} != {spec_hash(spec)} "
                         "(the experiment spec changed since it was saved)")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    set_numpy_rng_state(state["numpy_rng"])
    return state["epoch"] + 1, list(state["history"]), dict(state["best"]), bool(state.get("stopped_early"))


def numpy_rng_state() -> dict:
    """NumPy's global RNG state as plain data, so a checkpoint loads with weights_only=True."""
    state = np.random.get_state(legacy=False)
    return {"bit_generator": state["bit_generator"], "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
            "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def set_numpy_rng_state(state: dict) -> None:
    np.random.set_state({"bit_generator": state["bit_generator"],
                         "state": {"key": state["key"].numpy().astype(np.uint32), "pos": int(state["pos"])},
                         "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])})


def _epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _encoder_states(model: ContrastiveModel) -> dict[str, dict]:
    return {f: _cpu_copy(enc.state_dict()) for f, enc in model.encoders.items()}


def _cpu_copy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _cpu_copy(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_copy(v) for v in obj)
    return obj


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _mean_over_workers(value: float) -> float:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        t = torch.tensor([value], device="cuda" if backend == "nccl" else "cpu", dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / dist.get_world_size()
    return value


def _sample_rate(split, spec: ExperimentSpec) -> int:
    return getattr(split, "sample_rate", None) or (spec.pretrain_data or spec.data).sample_rate
