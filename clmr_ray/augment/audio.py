"""Batched waveform augmentations: x is [N, T], every parameter is a tensor [N] (one per example).

Functional ops in the style of torchaudio.functional: no randomness of their own beyond the
noise they synthesise (drawn from `generator`), lengths unchanged. The pipeline
(clmr_ray/augment/pipeline.py) draws the parameters and picks which examples get each op.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torchaudio.functional as AF

EPS = 1e-8


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of each row: [N, T] -> [N]."""
    return x.pow(2).mean(dim=-1).sqrt()


def db_to_amplitude(db: torch.Tensor) -> torch.Tensor:
    return torch.pow(10.0, db / 20.0)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def apply_gain(x: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    return x * db_to_amplitude(gain_db).unsqueeze(-1)


def invert_polarity(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Negate the rows where flip [N] (bool) is True."""
    return x * (1.0 - 2.0 * flip.to(x.dtype)).unsqueeze(-1)


def mix_at_snr(x: torch.Tensor, other: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """x + other scaled so that rms(x) / rms(added) = snr_db. snr_db = inf adds nothing."""
    scale = rms(x) * db_to_amplitude(-snr_db) / rms(other).clamp_min(EPS)
    return x + scale.unsqueeze(-1) * other


def add_white_noise(x: torch.Tensor, snr_db: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian white noise at snr_db [N] relative to each example's own RMS."""
    return mix_at_snr(x, _noise(x, generator), snr_db)


def noise_mix(
    x: torch.Tensor,
    snr_db: torch.Tensor,
    source: str = "batch",
    generator: torch.Generator | None = None,
    others: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mix in, at snr_db [N], white noise (source "white") or another clip (source "batch").

    "batch" picks for each example a random *other* example of x, or a random row of
    `others` [M, T] when given (a pool of clips, e.g. the whole batch when x is one crop)."""
    if source == "white":
        return mix_at_snr(x, _noise(x, generator), snr_db)
    if source != "batch":
        raise ValueError(f"noise_mix.source: unknown source '{source}'; choose one of batch, white")
    n = x.shape[0]
    if others is not None:
        pick = torch.randint(0, others.shape[0], (n,), generator=generator, device=x.device)
        return mix_at_snr(x, others[pick].to(x.dtype), snr_db)
    if n < 2:
        raise ValueError("noise_mix.source: 'batch' mixes another clip of the batch; it needs >= 2 examples, got 1")
    # A shift in [1, n-1] never maps an example onto itself.
    shift = torch.randint(1, n, (n,), generator=generator, device=x.device)
    pick = (torch.arange(n, device=x.device) + shift) % n
    return mix_at_snr(x, x[pick], snr_db)


def biquad_coefficients(
    cutoff_hz: torch.Tensor, highpass: torch.Tensor, sample_rate: int, q: float = 1 / math.sqrt(2)
) -> tuple[torch.Tensor, torch.Tensor]:
    """RBJ-cookbook low/high-pass biquads, one per example: (a [N, 3], b [N, 3]), a0 = 1."""
    w0 = 2 * math.pi * cutoff_hz / sample_rate
    cos_w0, alpha = torch.cos(w0), torch.sin(w0) / (2 * q)
    a0 = 1 + alpha
    a = torch.stack([torch.ones_like(a0), -2 * cos_w0 / a0, (1 - alpha) / a0], dim=-1)
    low = torch.stack([(1 - cos_w0) / 2, 1 - cos_w0, (1 - cos_w0) / 2], dim=-1)
    high = torch.stack([(1 + cos_w0) / 2, -(1 + cos_w0), (1 + cos_w0) / 2], dim=-1)
    b = torch.where(highpass.unsqueeze(-1), high, low) / a0.unsqueeze(-1)
    return a, b


def biquad_filter(x: torch.Tensor, cutoff_hz: torch.Tensor, highpass: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Per-example low-pass (highpass False) or high-pass (True) at cutoff_hz, in ONE lfilter
    call: with batching=True lfilter gives row i of x [N, T] its own coefficients a[i], b[i]."""
    cutoff_hz = cutoff_hz.to(x.dtype).clamp(1.0, 0.45 * sample_rate)
    a, b = biquad_coefficients(cutoff_hz, highpass, sample_rate)
    return AF.lfilter(x, a, b, clamp=False, batching=True)


def add_delay(x: torch.Tensor, delay_samples: torch.Tensor, volume: float | torch.Tensor) -> torch.Tensor:
    """x[t] + volume * x[t - delay]: an echo delay_samples [N] later (silence before it)."""
    t = torch.arange(x.shape[-1], device=x.device)
    source = t - delay_samples.long().unsqueeze(-1)
    delayed = x.gather(-1, source.clamp_min(0)) * (source >= 0)
    volume = torch.as_tensor(volume, dtype=x.dtype, device=x.device)
    return x + volume.reshape(-1, 1) * delayed


def fft_convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Causal convolution of each row of x [N, T] with its kernel [N, L], cut to T samples."""
    n = x.shape[-1] + kernel.shape[-1] - 1
    size = 1 << (n - 1).bit_length()  # a power of two: fast on every FFT backend
    spectrum = torch.fft.rfft(x, size) * torch.fft.rfft(kernel, size)
    return torch.fft.irfft(spectrum, size)[..., : x.shape[-1]]


def reverb_impulse_response(
    rt60_s: torch.Tensor, sample_rate: int, generator: torch.Generator | None = None, dtype=torch.float32
) -> torch.Tensor:
    """Gaussian noise under an exponential envelope that falls 60 dB at rt60_s [N]; unit energy.

    Length is the longest rt60 of the batch; shorter ones are ~silent past their own rt60."""
    length = max(1, math.ceil(float(rt60_s.max()) * sample_rate))
    t = torch.arange(length, device=rt60_s.device, dtype=dtype) / sample_rate
    envelope = torch.exp(-math.log(1000.0) * t / rt60_s.to(dtype).clamp_min(1e-3).unsqueeze(-1))
    ir = torch.randn(envelope.shape, generator=generator, device=rt60_s.device, dtype=dtype) * envelope
    return ir / ir.norm(dim=-1, keepdim=True).clamp_min(EPS)


def add_reverb(
    x: torch.Tensor,
    rt60_s: torch.Tensor,
    wet: torch.Tensor,
    sample_rate: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(1 - wet) * x + wet * (x convolved with a synthetic room response of decay rt60_s)."""
    ir = reverb_impulse_response(rt60_s, sample_rate, generator, x.dtype)
    wet = wet.to(x.dtype).unsqueeze(-1)
    return (1 - wet) * x + wet * fft_convolve(x, ir)


def semitone_ratio(semitones: int, max_denominator: int = 64) -> Fraction:
    """2^(semitones/12) as a small fraction (within 2 cents for |semitones| <= 12)."""
    return Fraction(2.0 ** (semitones / 12)).limit_denominator(max_denominator)


def pitch_shift_uniform(x: torch.Tensor, semitones: int, n_fft: int = 512) -> torch.Tensor:
    """Shift every row of x [N, T] by the same whole number of semitones, length kept.

    The steps of torchaudio.functional.pitch_shift (phase-vocoder time stretch, then
    resampling back to the original length), except that the frequency ratio is the nearest
    small fraction P/Q: torchaudio resamples from int(sr / rate) to sr, which at 22050 Hz are
    coprime and build a ~1.4 GB sinc kernel (~2 s per call); P/Q <= 64 keeps the kernel tiny
    for an error under 2 cents."""
    if semitones == 0:
        return x
    ratio = semitone_ratio(semitones)
    rate = 1 / float(ratio)  # the phase vocoder's speed-up; < 1 stretches
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)
    phase_advance = torch.linspace(0, math.pi * hop, spec.shape[-2], device=x.device, dtype=x.dtype).unsqueeze(-1)
    stretched = AF.phase_vocoder(spec, rate, phase_advance)
    length = round(x.shape[-1] / rate)
    y = torch.istft(stretched, n_fft, hop, window=window, length=length)
    y = AF.resample(y, ratio.numerator, ratio.denominator)
    return _fit_length(y, x.shape[-1])


def _fit_length(y: torch.Tensor, length: int) -> torch.Tensor:
    if y.shape[-1] >= length:
        return y[..., :length]
    return torch.nn.functional.pad(y, (0, length - y.shape[-1]))


def pitch_shift(x: torch.Tensor, semitones: torch.Tensor, sample_rate: int | None = None, n_fft: int = 512) -> torch.Tensor:
    """Per-example pitch shift by semitones [N] (rounded to whole numbers; 0 = unchanged).

    The batch is grouped by value: one pitch_shift_uniform call per distinct non-zero shift.
    The result does not depend on the sample rate (a ratio of frequencies); the argument is
    accepted for symmetry with the other ops."""
    steps = semitones.round().long()
    out = x.clone()
    for value in torch.unique(steps).tolist():
        if value == 0:
            continue
        rows = (steps == value).nonzero().squeeze(-1)
        out[rows] = pitch_shift_uniform(x[rows], value, n_fft)
    return out
