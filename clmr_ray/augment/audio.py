"""Batched waveform augmentations: x is [N, T], every parameter is a tensor [N] (one per example).

Functional ops in the style of torchaudio.functional: no randomness of their own beyond the
noise they synthesise (drawn from `generator`), lengths unchanged. The pipeline
(clmr_ray/augment/pipeline.py) draws the parameters and picks which examples get each op.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

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


def biquad_response(a: torch.Tensor, b: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Each biquad's complex frequency response B/A on the rfft grid of size n_fft: [N, n_fft // 2 + 1]
    (in real arithmetic: complex division is slow on CPU)."""
    w = torch.arange(n_fft // 2 + 1, device=a.device, dtype=a.dtype) * (2 * math.pi / n_fft)
    cos1, sin1, cos2, sin2 = torch.cos(w), torch.sin(w), torch.cos(2 * w), torch.sin(2 * w)

    def at_grid(c):  # c0 + c1 e^{-jw} + c2 e^{-2jw}
        return c[:, :1] + c[:, 1:2] * cos1 + c[:, 2:] * cos2, -(c[:, 1:2] * sin1 + c[:, 2:] * sin2)

    (b_re, b_im), (a_re, a_im) = at_grid(b), at_grid(a)
    power = a_re * a_re + a_im * a_im
    return torch.complex((b_re * a_re + b_im * a_im) / power, (b_im * a_re - b_re * a_im) / power)


def biquad_tail(a: torch.Tensor, floor: float = 1e-9) -> int:
    """Samples until the slowest biquad's impulse response falls below floor: its poles (complex
    for Q = 1/sqrt(2)) have radius sqrt(a2)."""
    log_radius = 0.5 * torch.log(a[:, 2].double().clamp(1e-300, 1 - 1e-16))
    return math.ceil(float((math.log(floor) / log_radius).max()))


def biquad_tail_bound(lowest_cutoff_hz: float, sample_rate: int, q: float = 1 / math.sqrt(2),
                      floor: float = 1e-9) -> int:
    """biquad_tail of the slowest biquad with a cutoff in [lowest_cutoff_hz, 0.45 x sample_rate],
    in host arithmetic (no tensor to read back): the slowest poles sit at either end of the range."""

    def tail(cutoff_hz: float) -> int:
        w0 = 2 * math.pi * cutoff_hz / sample_rate
        alpha = math.sin(w0) / (2 * q)
        a2 = (1 - alpha) / (1 + alpha)
        return math.ceil(math.log(floor) / (0.5 * math.log(min(max(a2, 1e-300), 1 - 1e-16))))

    top = 0.45 * sample_rate
    return max(tail(max(1.0, min(lowest_cutoff_hz, top))), tail(top))


def biquad_filter(x: torch.Tensor, cutoff_hz: torch.Tensor, highpass: torch.Tensor, sample_rate: int,
                  method: str = "auto", lowest_cutoff_hz: float | None = None) -> torch.Tensor:
    """Per-example low-pass (highpass False) or high-pass (True) at cutoff_hz.

    method "recursive": the biquad's recurrence, sample by sample (torchaudio's lfilter, each
    row with its own coefficients): fastest on CPU, but a sequential loop over time on a GPU.
    method "fft": one multiplication of each row's rfft by its own frequency response, magnitude
    and phase, parallel over time and rows; the FFT is long enough for the slowest impulse
    response to die out before it wraps around, so it matches "recursive" to float rounding.
    "auto": fft on CUDA, recursive elsewhere. lowest_cutoff_hz (a bound on cutoff_hz) sizes the
    FFT without reading cutoff_hz back to the host, which would wait for the GPU."""
    if method == "auto":
        method = "fft" if x.device.type == "cuda" else "recursive"
    if method not in ("fft", "recursive"):
        raise ValueError(f"biquad_filter.method: unknown method '{method}'; choose one of auto, fft, recursive")
    if method == "recursive":
        cutoff_hz = cutoff_hz.to(x.dtype).clamp(1.0, 0.45 * sample_rate)
        a, b = biquad_coefficients(cutoff_hz, highpass, sample_rate)
        with _without_onednn():
            return AF.lfilter(x, a, b, clamp=False, batching=True)
    # Coefficients and response in float64: near 1 Hz, B and A both almost vanish at DC.
    cutoff_hz = cutoff_hz.double().clamp(1.0, 0.45 * sample_rate)
    a, b = biquad_coefficients(cutoff_hz, highpass, sample_rate)
    length = x.shape[-1]
    tail = biquad_tail(a) if lowest_cutoff_hz is None else biquad_tail_bound(lowest_cutoff_hz, sample_rate)
    size = 1 << (length + tail - 1).bit_length()  # a power of two: fast on every FFT backend
    response = biquad_response(a, b, size).to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    return torch.fft.irfft(torch.fft.rfft(x, size) * response, size)[..., :length]


@contextmanager
def _without_onednn():
    """ATen's own convolution instead of oneDNN's. lfilter's FIR part is a grouped conv1d, one 3-tap
    kernel per row over the whole crop, and oneDNN's kernel for it is ~3x slower on a CPU (6 rows of
    59,049 samples: 4.8 vs 1.4 ms on 2 cores); the results agree to float rounding."""
    before = torch.backends.mkldnn.set_flags(False, None, None, None)
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(before[0], None, None, None)


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
    rt60_s: torch.Tensor, sample_rate: int, generator: torch.Generator | None = None, dtype=torch.float32,
    length_s: float | None = None,
) -> torch.Tensor:
    """Gaussian noise under an exponential envelope that falls 60 dB at rt60_s [N]; unit energy.

    Length is length_s, by default the longest rt60 of the batch (read back from rt60_s: on a GPU,
    pass a bound instead); shorter ones are ~silent past their own rt60."""
    if length_s is None:
        length_s = float(rt60_s.max())
    length = max(1, math.ceil(length_s * sample_rate))
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
    length_s: float | None = None,
) -> torch.Tensor:
    """(1 - wet) * x + wet * (x convolved with a synthetic room response of decay rt60_s, length_s
    long: see reverb_impulse_response)."""
    ir = reverb_impulse_response(rt60_s, sample_rate, generator, x.dtype, length_s)
    wet = wet.to(x.dtype).unsqueeze(-1)
    return (1 - wet) * x + wet * fft_convolve(x, ir)


def pitch_shift(x: torch.Tensor, semitones: torch.Tensor, sample_rate: int | None = None, n_fft: int = 512) -> torch.Tensor:
    """Per-example pitch shift by semitones [N] (rounded to whole numbers; 0 = unchanged), length kept.

    All shifted rows go through one STFT and one inverse STFT whatever their shifts (see
    shift_spectrum_pitch). The result does not depend on the sample rate (a ratio of
    frequencies); the argument is accepted for symmetry with the other ops."""
    steps = semitones.round().to(x.dtype)
    if x.device.type == "cuda":  # every row, then keep x where the shift is 0: no wait for the GPU
        return torch.where((steps != 0).unsqueeze(-1), _shift_rows(x, torch.pow(2.0, steps / 12), n_fft), x)
    rows = (steps != 0).nonzero().squeeze(-1)  # on CPU, only the rows that move
    if rows.numel() == 0:
        return x
    out = x.clone()
    out[rows] = _shift_rows(x[rows], torch.pow(2.0, steps[rows] / 12), n_fft)
    return out


CPU_BLOCK = 1 << 17  # STFT cells per block of rows on CPU: a block's tensors stay in the core's cache


def _shift_rows(x: torch.Tensor, ratio: torch.Tensor, n_fft: int) -> torch.Tensor:
    """STFT, shift_spectrum_pitch, inverse STFT, all frame-major. On CPU in blocks of rows (about
    CPU_BLOCK cells: one row of a paper-scale crop), which runs ~2x faster than the whole batch at
    once, whose dozen passes over [N, F, K] tensors would each go out to memory; on CUDA in one go."""
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    cells = (n_fft // 2 + 1) * (x.shape[-1] // hop + 1)
    block = x.shape[0] if x.device.type == "cuda" else max(1, CPU_BLOCK // cells)
    out = []
    for i in range(0, x.shape[0], block):
        spec = frame_stft(x[i : i + block], n_fft, hop, window)
        shifted = shift_spectrum_pitch(spec, ratio[i : i + block], hop)
        out.append(frame_istft(shifted, hop, window, x.shape[-1]))
    return torch.cat(out) if len(out) > 1 else out[0]


def frame_stft(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True) with its two last
    axes swapped, [N, frames, K], but contiguous: every pass over it reads memory in order."""
    padded = torch.nn.functional.pad(x.unsqueeze(1), (n_fft // 2, n_fft // 2), mode="reflect").squeeze(1)
    return torch.fft.rfft(padded.unfold(-1, n_fft, hop) * window)


def frame_istft(spec: torch.Tensor, hop: int, window: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of frame_stft (torch.istft's windowed overlap-add), for n_fft a multiple of hop:
    n_fft / hop shifted adds of whole frames instead of istft's fold, ~3x faster on CPU."""
    n_fft = window.shape[0]
    frames = torch.fft.irfft(spec, n_fft) * window  # [N, F, n_fft]
    n, f, _ = frames.shape
    overlap = n_fft // hop
    if overlap * hop != n_fft:
        raise ValueError(f"frame_istft: n_fft ({n_fft}) must be a multiple of hop ({hop})")
    out = frames.new_zeros(n, f + overlap - 1, hop)
    envelope = frames.new_zeros(f + overlap - 1, hop)
    pieces, window_power = frames.view(n, f, overlap, hop), (window * window).view(overlap, hop)
    for j in range(overlap):
        out[:, j : j + f] += pieces[:, :, j]
        envelope[j : j + f] += window_power[j]
    first = n_fft // 2  # centred frames: the signal starts half a window in
    return out.view(n, -1)[:, first : first + length] / envelope.view(-1)[first : first + length]


PHASE_UNIT = 1 << 20  # phases are summed as whole 1/2^20ths of a turn


def shift_spectrum_pitch(spec: torch.Tensor, ratio: torch.Tensor, hop: int) -> torch.Tensor:
    """Multiply every frequency of a frame-major STFT [N, F, K] (frame_stft: centred Hann window,
    K = n_fft/2 + 1) by its row's ratio [N]; time stays as it is.

    A phase vocoder that moves frequencies instead of stretching time: output bin j takes the
    magnitude found at bin j / ratio (linear interpolation) and the phase advance per hop measured
    at the nearest bin, times ratio; its phase is the sum of those advances over frames. Phases are
    kept relative to the window centre (bin k of a centred frame carries an extra half turn * k), so
    the bins of one partial stay coherent. Moving a partial's spectral peak to ratio times its bin
    also compresses it by ratio in time, a gain the inverse STFT would apply: it is divided out.
    Phases are in turns (fractions of 2 pi) throughout."""
    n, f, k = spec.shape
    n_fft = 2 * (k - 1)
    dtype, device = ratio.dtype, spec.device
    bins = torch.arange(k, device=device, dtype=dtype)
    source = bins / ratio.unsqueeze(-1)  # [N, K]: where output bin j's content is
    below = source.floor().clamp_max(k - 2).long()
    nearest = source.round().clamp_max(k - 1).long()
    # weights of the two bins around source, gain divided out; 0 past the top (a downward shift leaves it empty)
    inside = (source <= k - 1) / _compression_gain(ratio, n_fft).unsqueeze(-1)
    upper = ((source - below) * inside).unsqueeze(1)
    lower = ((1 - (source - below)).clamp_min(0) * inside).unsqueeze(1)

    def take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """t[i, :, index[i, j]] for every row i and output bin j."""
        return t.gather(-1, index.unsqueeze(1).expand(n, f, k))

    real, imag = torch.view_as_real(spec).unbind(-1)
    magnitude = torch.hypot(real, imag)
    out_magnitude = (take(magnitude, below) * lower).add_(take(magnitude, below + 1) * upper)
    phase = torch.atan2(take(imag, nearest), take(real, nearest)).mul_(1 / (2 * math.pi))
    own_advance = ((hop / n_fft) * nearest.to(dtype)).unsqueeze(1)  # a bin-centred sinusoid's, per hop
    deviation = phase[:, 1:] - phase[:, :-1] - own_advance
    deviation -= deviation.round()
    advance = (deviation + own_advance).mul_(ratio.view(-1, 1, 1))
    start = phase[:, :1] + 0.5 * (bins - nearest).unsqueeze(1)  # centred at source, out at j
    # Summed in integers: exact, so the same on every device and thread count.
    steps = torch.cat([start, advance], dim=1).mul_(PHASE_UNIT).round_().to(torch.int64)
    out_phase = steps.cumsum_(1).bitwise_and_(PHASE_UNIT - 1).to(dtype).mul_(2 * math.pi / PHASE_UNIT)
    return torch.complex(out_magnitude * torch.cos(out_phase), out_magnitude * torch.sin(out_phase))


def _compression_gain(ratio: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Gain of Hann-window overlap-add on a frame whose window was compressed by ratio [N] in time
    (its spectrum stretched by ratio): sum(ratio * w(ratio * t) * w(t)) / sum(w(t)^2)."""
    t = (torch.arange(4 * n_fft, device=ratio.device, dtype=torch.float64) + 0.5) / (4 * n_fft) - 0.5

    def hann(u):
        return torch.where(u.abs() < 0.5, 0.5 + 0.5 * torch.cos(2 * math.pi * u), u.new_zeros(()))

    r = ratio.double().unsqueeze(-1)
    return ((r * hann(r * t) * hann(t)).sum(-1) / hann(t).pow(2).sum()).to(ratio.dtype)
