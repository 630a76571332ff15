"""The augmentation pipeline of one format: batched, on the training device, seeded by a generator.

    pipe = AugmentPipeline(spec.audio.augment, sample_rate=22050)             # -> [N, T]
    pipe = AugmentPipeline(spec.spectrogram.augment, 22050, spec.spectrogram.mel)  # -> [N, 1, M, F]
    view = pipe(crops, generator)   # crops [N, T] float, generator on crops.device
    both = pipe.views(pairs, generator)  # pairs [B, 2, T]: what two calls give, [2B, ...]
    clean = pipe.plain(crops)       # evaluation: the same encoder input, no augmentation

A call first draws everything random (draw: the generator is asked in a fixed order), then
computes the view from those draws (apply), so the views of several calls can be computed together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clmr_ray.augment import audio as A
from clmr_ray.augment.spectrogram import FREQ_DIM, TIME_DIM, mask_span
from clmr_ray.config import SPECTROGRAM_AUGS, WAVEFORM_AUGS, AugmentSpec, MelSpec, SpecError
from clmr_ray.models.frontend import LogMel

MASK_DIMS = {"freq_mask": FREQ_DIM, "time_mask": TIME_DIM}

# What one call drew, per augmentation: its tensors, rows first (the examples, or on CPU the chosen ones).
Draws = dict[str, dict[str, torch.Tensor]]


class AugmentPipeline(nn.Module):
    """Waveform augmentations in the order of config.WAVEFORM_AUGS, then LogMel (when mel is
    given), then the masks. Each enabled augmentation hits each example with probability p,
    with parameters drawn per example; all randomness comes from the generator passed to
    forward, so a seeded generator reproduces a view exactly."""

    def __init__(self, spec: AugmentSpec, sample_rate: int, mel: MelSpec | None = None):
        super().__init__()
        for name in SPECTROGRAM_AUGS:
            aug = getattr(spec, name)
            if aug.enabled and mel is None:
                raise SpecError(f"augment.{name}: masks act on spectrograms but this pipeline feeds waveforms; disable it")
            if aug.enabled and aug.n_masks < 0:
                raise SpecError(f"augment.{name}.n_masks: must be >= 0, got {aug.n_masks}")
        self.spec = spec
        self.sample_rate = sample_rate
        self.logmel = LogMel(sample_rate, mel) if mel is not None else None
        self.waveform_augs = [name for name in WAVEFORM_AUGS if getattr(spec, name).enabled]
        self.mask_augs = [name for name in SPECTROGRAM_AUGS if getattr(spec, name).enabled]

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, augs={self.waveform_augs + self.mask_augs}"

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder input with no augmentation."""
        x = _waveforms(x)
        return self.logmel(x) if self.logmel is not None else x

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, *, others: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [N, T] (or [N, 1, T]) -> an augmented view. `others` [M, T]: clips that noise_mix
        (source "batch") draws from instead of the other examples of x."""
        x = self._checked(x, generator)
        with torch.autocast(device_type=x.device.type, enabled=False):  # filters and resampling in fp32
            return self.apply(x, self.draw(x, generator, others), others=others)

    def views(self, views: torch.Tensor, generator: torch.Generator | None = None, together: bool = True) -> torch.Tensor:
        """views [B, V, T] -> one augmented view of each, [V B, ...], view 0's rows first: what V calls,
        one per view in turn, give. Each view's draws are a call's; with `together` all V B rows are
        then computed at once (1/V of the calls' kernels on a GPU, noise_mix mixing within each view):
        the same views to float rounding (which could tip a near-tie between two places to join segments)."""
        if views.dim() != 3:
            raise ValueError(f"AugmentPipeline.views: expected views [B, V, T], got shape {tuple(views.shape)}")
        xs = [self._checked(views[:, v], generator) for v in range(views.shape[1])]
        draws = [self.draw(x, generator) for x in xs]
        with torch.autocast(device_type=views.device.type, enabled=False):
            if together:
                return self.apply(torch.cat(xs), cat_draws(draws), group=views.shape[0])
            return torch.cat([self.apply(x, d) for x, d in zip(xs, draws)])

    def _checked(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = _waveforms(x)
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"AugmentPipeline: generator is on {generator.device} but the batch is on {x.device}")
        return x

    def draw(self, x: torch.Tensor, generator: torch.Generator | None = None, others: torch.Tensor | None = None) -> Draws:
        """Everything random about a call on x [N, T]: for each augmentation in turn, which examples it
        hits, then its parameters and the noise it synthesises (for the chosen examples on CPU, for all
        on CUDA, where finding the chosen ones would wait for the GPU). Reads nothing of x but its shape."""
        n, device, g = x.shape[0], x.device, generator
        draws: Draws = {}
        for name in self.waveform_augs:
            aug = getattr(self.spec, name)
            selected = torch.rand(n, generator=g, device=device) < aug.p
            draws[name] = {"selected": selected, **self._draw_waveform_aug(name, aug, x, selected, g, others)}
        for name in self.mask_augs:
            aug = getattr(self.spec, name)
            selected = torch.rand(n, generator=g, device=device) < aug.p
            width_u, start_u = [], []
            for _ in range(aug.n_masks):
                width_u.append(torch.rand(n, generator=g, device=device))
                start_u.append(torch.rand(n, generator=g, device=device))
            draws[name] = {"selected": selected, "width_u": _columns(width_u, n, device),
                           "start_u": _columns(start_u, n, device)}
        return draws

    def _draw_waveform_aug(self, name, aug, x, selected, g, others) -> dict[str, torch.Tensor]:
        n, length, device = x.shape[0], x.shape[-1], x.device
        if name == "noise":
            snr = _uniform(n, aug.snr_db, g, device)
            return {"snr": snr, "noise": _noise_rows(A.rows_handed(selected), length, g, x)}
        if name == "gain":
            return {"gain_db": _uniform(n, aug.gain_db, g, device)}
        if name == "filter":
            highpass = torch.rand(n, generator=g, device=device) < 0.5
            return {"highpass": highpass, "low": _uniform(n, aug.lowpass_hz, g, device),
                    "high": _uniform(n, aug.highpass_hz, g, device)}
        if name == "delay":
            return {"delay_ms": _uniform(n, aug.delay_ms, g, device)}
        if name == "pitch":
            return {"steps_u": torch.rand(n, generator=g, device=device)}
        if name == "reverb":
            rt60, wet = _uniform(n, aug.rt60_s, g, device), _uniform(n, aug.wet, g, device)
            rows = A.rows_handed(selected)
            if device.type == "cuda":  # every row, as long as the longest rt60 the spec allows
                room = A.reverb_length(rt60, self.sample_rate, aug.rt60_s[1])
            else:  # the chosen rows, as long as their own longest rt60
                room = A.reverb_length(rt60[selected], self.sample_rate) if rows else 0
            return {"rt60": rt60, "wet": wet, "room": _noise_rows(rows, room, g, x)}
        if name == "noise_mix":
            never = torch.full((), float("inf"), device=device)  # the SNR of "add nothing" (a kernel, no copy: CUDA graphs)
            snr = torch.where(selected, _uniform(n, aug.snr_db, g, device), never)
            if aug.source == "white":
                return {"snr": snr, "noise": _noise_rows(n, length, g, x)}
            pool = None if others is None else others.shape[0]
            return {"snr": snr, "partner": A.draw_mix_partners(n, g, device, pool)}
        return {}

    def apply(self, x: torch.Tensor, draws: Draws, others: torch.Tensor | None = None, group: int | None = None) -> torch.Tensor:
        """The view of x [N, T] that `draws` (draw's, or several calls' joined by cat_draws) make.
        group: the rows of one call when draws are several calls' (noise_mix mixes within a call)."""
        source = x
        for name in self.waveform_augs:
            aug = getattr(self.spec, name)
            x = self._apply_waveform_aug(name, aug, x, draws[name], others, group, owned=x is not source)
        if self.logmel is None:
            return x
        spec = self.logmel(x)
        mean = spec.mean(dim=(1, 2, 3))
        for name in self.mask_augs:
            aug, d, dim = getattr(self.spec, name), draws[name], MASK_DIMS[name]
            for m in range(aug.n_masks):
                spec = mask_span(spec, int(aug.max_fraction * spec.shape[dim]), dim, d["width_u"][:, m],
                                 d["start_u"][:, m], d["selected"], mean)
        return spec

    def _apply_waveform_aug(self, name, aug, x, d, others, group, owned):
        """x after augmentation `name` with its draws d; owned: x is no caller's tensor (an earlier op
        made it), so on_rows may write the selected rows into it."""
        sr, selected = self.sample_rate, d["selected"]
        if name == "polarity":
            return A.invert_polarity(x, selected)
        if name == "noise":
            snr, noise = d["snr"], d["noise"]
            return A.on_rows(x, selected, lambda r: A.mix_at_snr(x[r], noise, snr[r]), owned)
        if name == "gain":
            return A.apply_gain(x, d["gain_db"] * selected)
        if name == "filter":
            cutoff, highpass = torch.where(d["highpass"], d["high"], d["low"]), d["highpass"]
            lowest = min(aug.lowpass_hz[0], aug.highpass_hz[0])  # sizes the FFT or the block scan without a read-back
            return A.on_rows(x, selected, lambda r: A.biquad_filter(x[r], cutoff[r], highpass[r], sr,
                                                                   lowest_cutoff_hz=lowest), owned)
        if name == "delay":
            delay = (d["delay_ms"] * sr / 1000).round()
            return A.add_delay(x, delay, aug.volume * selected)
        if name == "pitch":
            lo, hi = aug.semitones
            steps = lo + (d["steps_u"] * (hi - lo + 1)).floor().clamp_max(hi - lo)
            return A.pitch_shift(x, steps * selected, sr, owned)  # its own row selection: the shifts that are not 0
        if name == "reverb":
            rt60, wet, room = d["rt60"], d["wet"], d["room"]
            return A.on_rows(x, selected, lambda r: A.mix_reverb(x[r], A.shape_room_response(room, rt60[r], sr),
                                                                 wet[r]), owned)
        if name == "noise_mix":
            if aug.source == "white":
                return A.mix_at_snr(x, d["noise"], d["snr"])
            partner = d["partner"]
            if others is None and group is not None and group < x.shape[0]:  # several calls: each mixes within its own
                first = torch.div(torch.arange(x.shape[0], device=x.device), group, rounding_mode="floor") * group
                partner = partner + first
            return A.mix_partners(x, partner, d["snr"], others)
        raise AssertionError(f"no implementation for augmentation '{name}'")


def cat_draws(draws: list[Draws]) -> Draws:
    """Several calls' draws as one call's on their rows put one after the other (noise of different
    lengths, as reverb's on CPU, zero-padded to the longest)."""
    joined: Draws = {}
    for name, first in draws[0].items():
        joined[name] = {}
        for key in first:
            parts = [d[name][key] for d in draws]
            if parts[0].dim() == 2:
                width = max(p.shape[1] for p in parts)
                parts = [p if p.shape[1] == width else F.pad(p, (0, width - p.shape[1])) for p in parts]
            joined[name][key] = torch.cat(parts)
    return joined


def _noise_rows(rows: int, length: int, g, like: torch.Tensor) -> torch.Tensor:
    """Gaussian noise [rows, length]; none drawn for no rows."""
    if rows == 0:
        return like.new_empty(0, length)
    return torch.randn(rows, length, generator=g, device=like.device, dtype=like.dtype)


def _columns(parts: list[torch.Tensor], n: int, device) -> torch.Tensor:
    return torch.stack(parts, dim=1) if parts else torch.empty(n, 0, device=device)


def _uniform(n: int, bounds: tuple[float, float], g, device) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _waveforms(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3 and x.shape[1] == 1:
        x = x.squeeze(1)
    if x.dim() != 2:
        raise ValueError(f"AugmentPipeline: expected waveforms [N, T] or [N, 1, T], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"AugmentPipeline: expected float waveforms in [-1, 1], got dtype {x.dtype}")
    return x.float()
