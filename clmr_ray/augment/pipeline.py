"""The augmentation pipeline of one format: batched, on the training device, seeded by a generator.

    pipe = AugmentPipeline(spec.audio.augment, sample_rate=22050)             # -> [N, T]
    pipe = AugmentPipeline(spec.spectrogram.augment, 22050, spec.spectrogram.mel)  # -> [N, 1, M, F]
    view = pipe(crops, generator)   # crops [N, T] float, generator on crops.device
    clean = pipe.plain(crops)       # evaluation: the same encoder input, no augmentation
"""

from __future__ import annotations

import torch
from torch import nn

from clmr_ray.augment import audio as A
from clmr_ray.augment.spectrogram import FREQ_DIM, TIME_DIM, mask_along_axis
from clmr_ray.config import SPECTROGRAM_AUGS, WAVEFORM_AUGS, AugmentSpec, MelSpec, SpecError
from clmr_ray.models.frontend import LogMel

MASK_DIMS = {"freq_mask": FREQ_DIM, "time_mask": TIME_DIM}


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

    @property
    def rows_independent(self) -> bool:
        """Whether each row's view depends on that row alone: not so when noise_mix mixes in other
        rows of the batch (then the rows of one call are what it mixes from)."""
        return "noise_mix" not in self.waveform_augs or self.spec.noise_mix.source != "batch"

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
        x = _waveforms(x)
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"AugmentPipeline: generator is on {generator.device} but the batch is on {x.device}")
        with torch.autocast(device_type=x.device.type, enabled=False):  # filters and resampling in fp32
            return self._augment(x, generator, others)

    def _augment(self, x, generator, others):
        source = x
        for name in self.waveform_augs:
            aug = getattr(self.spec, name)
            selected = torch.rand(x.shape[0], generator=generator, device=x.device) < aug.p
            x = self._waveform_aug(name, aug, x, selected, generator, others, owned=x is not source)
        if self.logmel is None:
            return x
        spec = self.logmel(x)
        mean = spec.mean(dim=(1, 2, 3))
        for name in self.mask_augs:
            aug = getattr(self.spec, name)
            dim = MASK_DIMS[name]
            selected = torch.rand(x.shape[0], generator=generator, device=x.device) < aug.p
            for _ in range(aug.n_masks):
                spec = mask_along_axis(spec, int(aug.max_fraction * spec.shape[dim]), dim, generator, selected, mean)
        return spec

    def _waveform_aug(self, name, aug, x, selected, g, others, owned):
        """x after augmentation `name`; owned: x is no caller's tensor (an earlier op made it), so
        on_rows may write the selected rows into it."""
        n, sr, device = x.shape[0], self.sample_rate, x.device
        never = torch.full((), float("inf"), device=device)  # the SNR of "add nothing" (a kernel, no copy: CUDA graphs)
        if name == "polarity":
            return A.invert_polarity(x, selected)
        if name == "noise":
            snr = _uniform(n, aug.snr_db, g, device)
            return A.on_rows(x, selected, lambda r: A.add_white_noise(x[r], snr[r], g), owned)
        if name == "gain":
            return A.apply_gain(x, _uniform(n, aug.gain_db, g, device) * selected)
        if name == "filter":
            highpass = torch.rand(n, generator=g, device=device) < 0.5
            low, high = _uniform(n, aug.lowpass_hz, g, device), _uniform(n, aug.highpass_hz, g, device)
            cutoff = torch.where(highpass, high, low)
            lowest = min(aug.lowpass_hz[0], aug.highpass_hz[0])  # sizes the FFT or the block scan without a read-back
            return A.on_rows(x, selected, lambda r: A.biquad_filter(x[r], cutoff[r], highpass[r], sr,
                                                                   lowest_cutoff_hz=lowest), owned)
        if name == "delay":
            delay = (_uniform(n, aug.delay_ms, g, device) * sr / 1000).round()
            return A.add_delay(x, delay, aug.volume * selected)
        if name == "pitch":
            lo, hi = aug.semitones
            steps = lo + (torch.rand(n, generator=g, device=device) * (hi - lo + 1)).floor().clamp_max(hi - lo)
            return A.pitch_shift(x, steps * selected, sr, owned)  # its own row selection: the shifts that are not 0
        if name == "reverb":
            rt60, wet = _uniform(n, aug.rt60_s, g, device), _uniform(n, aug.wet, g, device)
            longest = aug.rt60_s[1] if device.type == "cuda" else None  # CPU: the batch's own longest rt60
            return A.on_rows(x, selected, lambda r: A.add_reverb(x[r], rt60[r], wet[r], sr, g, longest), owned)
        if name == "noise_mix":
            snr = torch.where(selected, _uniform(n, aug.snr_db, g, device), never)
            return A.noise_mix(x, snr, aug.source, g, others)
        raise AssertionError(f"no implementation for augmentation '{name}'")


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
