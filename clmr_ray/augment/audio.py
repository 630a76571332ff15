"""Batched waveform augmentations: x is [N, T], every parameter is a tensor [N] (one per example).

Functional ops in the style of torchaudio.functional: no randomness of their own beyond the
noise they synthesise (drawn from `generator`), lengths unchanged. The pipeline
(clmr_ray/augment/pipeline.py) draws the parameters and picks which examples get each op.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

EPS = 1e-8


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of each row: [N, T] -> [N]."""
    return torch.linalg.vector_norm(x, dim=-1) / math.sqrt(x.shape[-1])


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
    partners = draw_mix_partners(x.shape[0], generator, x.device, None if others is None else others.shape[0])
    return mix_partners(x, partners, snr_db, others)


def mix_partners(x: torch.Tensor, partners: torch.Tensor, snr_db: torch.Tensor,
                 others: torch.Tensor | None = None) -> torch.Tensor:
    """Each row i of x with row partners[i] of x (or of `others`) mixed in at snr_db [N]."""
    return mix_at_snr(x, (x if others is None else others)[partners].to(x.dtype), snr_db)


def draw_mix_partners(n: int, generator: torch.Generator | None, device, pool: int | None = None) -> torch.Tensor:
    """The row each of n examples mixes in [N]: a random *other* one of the n, or a random one of a
    pool of `pool` clips."""
    if pool is not None:
        return torch.randint(0, pool, (n,), generator=generator, device=device)
    if n < 2:
        raise ValueError(f"noise_mix.source: 'batch' mixes another clip of the batch; it needs >= 2 examples, got {n}")
    # A shift in [1, n-1] never maps an example onto itself.
    shift = torch.randint(1, n, (n,), generator=generator, device=device)
    return (torch.arange(n, device=device) + shift) % n


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
    row with its own coefficients): a sequential loop over time, ~4 ns a sample on a CPU core.
    method "blocks": the same recurrence solved FILTER_BLOCK samples at a time (biquad_blocks): one
    matrix product per block and a short scan across blocks; on CPU 2.3x faster than "recursive"
    and closer to float64 (6 crops of 59,049 samples: 3e-8 of a 0.45 peak off, lfilter 2e-6).
    method "fft": each row convolved with its own impulse response, cut where the slowest one has
    fallen below 1e-9 (biquad_tail), by one FFT multiplication (fft_convolve): parallel over time and
    rows, and it matches "recursive" to float rounding. The response is a few hundred samples in
    closed form (biquad_impulse_response): its FFT is the only full-size array it adds.
    "auto": fft on CUDA (measured there), blocks elsewhere. lowest_cutoff_hz (a bound on
    cutoff_hz) sizes the FFT and the scan without reading cutoff_hz back to the host, which would
    wait for the GPU."""
    if method == "auto":
        method = "fft" if x.device.type == "cuda" else "blocks"
    if method not in ("blocks", "fft", "recursive"):
        raise ValueError(f"biquad_filter.method: unknown method '{method}'; choose one of auto, blocks, fft, recursive")
    if x.shape[0] == 0:
        return x.clone()
    if method == "recursive":
        cutoff_hz = cutoff_hz.to(x.dtype).clamp(1.0, 0.45 * sample_rate)
        a, b = biquad_coefficients(cutoff_hz, highpass, sample_rate)
        with _without_onednn():
            return AF.lfilter(x, a, b, clamp=False, batching=True)
    # Coefficients and response in float64: near 1 Hz, B and A both almost vanish at DC.
    cutoff_hz = cutoff_hz.double().clamp(1.0, 0.45 * sample_rate)
    a, b = biquad_coefficients(cutoff_hz, highpass, sample_rate)
    tail = biquad_tail(a) if lowest_cutoff_hz is None else biquad_tail_bound(lowest_cutoff_hz, sample_rate)
    if method == "blocks":
        return biquad_blocks(x, a, b, tail)
    return fft_convolve(x, biquad_impulse_response(a, b, tail).to(x.dtype))


def biquad_modes(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pole p of positive angle and the amplitude C [N, 1] (complex) of each biquad (a, b [N, 3],
    a0 = 1, a pair of complex poles as for any Q above 1/2): its impulse response is h[0] = b0 and
    h[m] = Re(C p^m) for m >= 1 (C twice p's residue)."""
    a1, a2 = a[:, 1:2], a[:, 2:]
    pole = torch.complex(a1 / -2, (a2 - a1 * a1 / 4).clamp_min(0).sqrt())  # a root of z^2 + a1 z + a2
    inverse = 1 / pole
    amplitude = 2 * (b[:, :1] + inverse * (b[:, 1:2] + inverse * b[:, 2:])) / (1 - pole.conj() * inverse)
    return pole, amplitude


def _impulse_response(b: torch.Tensor, amplitude: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """h[m] for m = 0 .. L - 1 from biquad_modes' amplitude and the pole's powers p^m [N, L]."""
    response = (amplitude * powers).real
    response[:, 0] = b[:, 0]
    return response


def biquad_impulse_response(a: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` samples of each biquad's impulse response: [N, length], in a's dtype."""
    pole, amplitude = biquad_modes(a, b)
    return _impulse_response(b, amplitude, pole ** torch.arange(length, device=a.device, dtype=a.dtype))


FILTER_BLOCK = 32  # samples per block of biquad_filter's method "blocks"


def biquad_blocks(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, tail: int, block: int = FILTER_BLOCK) -> torch.Tensor:
    """Each row of x [N, T] through its own biquad (a, b [N, 3], float64, a0 = 1, a pair of complex
    poles as for any Q above 1/2), `block` samples at a time; ringing that has fallen below 1e-9
    after `tail` samples (biquad_tail) is dropped.

    The impulse response is h[0] = b0 and h[m] = Re(C p^m) for m >= 1 (biquad_modes: p the pole of
    positive angle, C twice its residue), so all a block's input leaves ringing past its end is one complex
    amplitude, sum_j x[j] C p^(block - j). One matrix product per block gives the block's own
    response (h's Toeplitz matrix) and that amplitude (two more columns). Block b starts with the
    ringing ring_b = P ring_(b-1) + left_(b-1), P = p^block, found for all blocks at once by
    doubling (a scan of log2(tail / block) steps), and adds Re(ring_b p^i) to its sample i."""
    n, length = x.shape
    pole, amplitude = biquad_modes(a, b)
    powers = pole ** torch.arange(block + 1, device=x.device, dtype=a.dtype)  # p^m, m = 0 .. block: [N, block + 1]
    response = _impulse_response(b, amplitude, powers[:, :block])
    toeplitz = F.pad(response, (block - 1, 0)).unfold(-1, block, 1).flip(1)  # [N, j, i] = h[i - j]
    left = amplitude * powers[:, 1:].flip(-1)  # C p^(block - j): what x[j] leaves ringing at the block's end
    weights = torch.cat([toeplitz, torch.view_as_real(left)], dim=-1).to(x.dtype)  # [N, block, block + 2]
    blocks = -(-length // block)
    per_block = torch.bmm(F.pad(x, (0, blocks * block - length)).view(n, blocks, block), weights)
    ring = torch.view_as_complex(F.pad(per_block[:, :-1, block:], (0, 0, 1, 0)))  # [N, blocks]: left_(b-1)
    step, span, reach = powers[:, block:].to(ring.dtype), 1, min(blocks, -(-tail // block) + 1)
    while span < reach:
        ring[:, span:] = torch.addcmul(ring[:, span:], step, ring[:, :-span])
        step, span = step * step, 2 * span
    rings_into = torch.stack([powers[:, :block].real, -powers[:, :block].imag], dim=1).to(x.dtype)  # Re(ring p^i)
    return torch.baddbmm(per_block[..., :block], torch.view_as_real(ring), rings_into).view(n, -1)[:, :length]


def on_rows(x: torch.Tensor, selected: torch.Tensor, fn, owned: bool = False) -> torch.Tensor:
    """fn(rows) -> new rows of x [N, T], kept where selected [N] is True. On CPU fn sees only the
    selected rows (expensive ops skip the others; all of x when all are selected), written into x in
    place when the caller owns x, else into a copy; on CUDA it sees them all (rows = slice(None)):
    finding the selected ones would make the host wait for the GPU, and a CUDA graph cannot hold
    that wait."""
    if x.shape[0] == 0:
        return x
    if x.device.type == "cuda":
        return torch.where(selected.unsqueeze(-1), fn(slice(None)), x)
    if selected.all():
        return fn(slice(None))
    rows = selected.nonzero().squeeze(-1)
    if rows.numel() == 0:
        return x
    out = x if owned else x.clone()
    out[rows] = fn(rows)
    return out


def rows_handed(selected: torch.Tensor) -> int:
    """How many rows on_rows hands its function for `selected` [N]: all on CUDA, the selected ones
    elsewhere (read back)."""
    return selected.shape[0] if selected.device.type == "cuda" else int(selected.sum())


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
    length = reverb_length(rt60_s, sample_rate, length_s)
    noise = torch.randn(rt60_s.shape[0], length, generator=generator, device=rt60_s.device, dtype=dtype)
    return shape_room_response(noise, rt60_s, sample_rate)


def reverb_length(rt60_s: torch.Tensor, sample_rate: int, length_s: float | None = None) -> int:
    """Samples of reverb_impulse_response's response (at least 1)."""
    if length_s is None:
        length_s = float(rt60_s.max())
    return max(1, math.ceil(length_s * sample_rate))


def shape_room_response(noise: torch.Tensor, rt60_s: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Gaussian noise [N, L] under an exponential envelope that falls 60 dB at rt60_s [N]; unit energy."""
    t = torch.arange(noise.shape[-1], device=noise.device, dtype=noise.dtype) / sample_rate
    envelope = torch.exp(-math.log(1000.0) * t / rt60_s.to(noise.dtype).clamp_min(1e-3).unsqueeze(-1))
    ir = noise * envelope
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
    return mix_reverb(x, reverb_impulse_response(rt60_s, sample_rate, generator, x.dtype, length_s), wet)


def mix_reverb(x: torch.Tensor, ir: torch.Tensor, wet: torch.Tensor) -> torch.Tensor:
    """(1 - wet) * x + wet * (x convolved with ir [N, L]), wet [N]."""
    wet = wet.to(x.dtype).unsqueeze(-1)
    return (1 - wet) * x + wet * fft_convolve(x, ir)


# SoX's pitch effect's defaults (its tempo effect's): segment, search radius and crossfade.
SEGMENT_MS, SEARCH_MS, OVERLAP_MS = 82.0, 14.68, 12.0
SEARCH_RATE_HZ = 2756.25  # the alignment search runs on a copy averaged down to about this rate


def pitch_shift(x: torch.Tensor, semitones: torch.Tensor, sample_rate: int, owned: bool = False) -> torch.Tensor:
    """Per-example pitch shift by semitones [N] (rounded to whole numbers and clamped to an octave
    either way; 0 = unchanged), length kept. owned: as on_rows's (the shifted rows may be written
    into x).

    Waveform-similarity overlap-add (WSOLA), as SoX's pitch effect, which CLMR's pitch shift ran
    through WavAugment: 82 ms segments, each read at 2^(s/12) times the original speed (linear
    interpolation; this moves the pitch) and laid down every 70 ms with 12 ms crossfades, so length
    and timing stay; each segment's read position moves within +-14.68 ms of its nominal one to
    where it best continues the segment before (wsola_offsets). Rows are independent. No anti-alias
    filter (SoX's rate effect has one): an upward shift folds what lies above
    sample_rate / (2 ratio) back below Nyquist."""
    steps = semitones.round().clamp(-12, 12).to(x.dtype)
    ratio = torch.pow(2.0, steps / 12)
    return on_rows(x, steps != 0, lambda rows: wsola_resample(x[rows], ratio[rows], sample_rate), owned)


@dataclass(frozen=True)
class WsolaGeometry:
    """Segment, hop, crossfade and search radius in samples at one sample rate (host integers, so
    nothing is read back from the device), and the factor of the search's averaged copy."""

    segment: int
    overlap: int
    search: int
    decimate: int

    @classmethod
    def at(cls, sample_rate: int) -> WsolaGeometry:
        def samples(ms: float) -> int:
            return max(2, round(ms * sample_rate / 1000))

        return cls(samples(SEGMENT_MS), samples(OVERLAP_MS), samples(SEARCH_MS),
                   max(1, round(sample_rate / SEARCH_RATE_HZ)))

    @property
    def hop(self) -> int:
        return self.segment - self.overlap


def wsola_resample(x: torch.Tensor, ratio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Every row of x [N, T] with its frequencies multiplied by ratio [N] (in [0.5, 2]) and its length
    kept (WSOLA)."""
    n, length = x.shape
    geo = WsolaGeometry.at(sample_rate)
    hop, overlap = geo.hop, geo.overlap
    segments = max(1, -(-length // hop))  # segment k is output [k hop, k hop + segment)
    offsets = wsola_offsets(x, ratio, geo, segments)  # segment k reads x(ratio t + offsets[:, k])
    # Reads stay within a hop plus (1 + ratio) half segments plus the search radius of the crop: mirror it that far.
    margin = 3 * geo.segment + geo.search
    mirror = min(margin, length - 1)
    padded = torch.cat([x[:, 1 : mirror + 1].flip(-1), x, x[:, -mirror - 1 : -1].flip(-1)], dim=-1)
    if mirror < margin:  # a crop shorter than the margin: silence beyond its mirror images
        padded = F.pad(padded, (margin - mirror, margin - mirror))
    # Segment k reads at start_k + ratio u, u = 0 .. segment - 1: whole and fractional parts of start_k apart, so
    # positions stay exact to float32 precision of numbers below 2 segments, not of the whole padded crop.
    start = (ratio.double().unsqueeze(-1) * (torch.arange(segments, device=x.device) * hop)).add_(offsets).add_(margin)
    whole = start.floor()
    local = torch.addcmul((start - whole).to(x.dtype).unsqueeze(-1), ratio.view(n, 1, 1),
                          torch.arange(geo.segment, device=x.device, dtype=x.dtype))  # [N, K, segment], >= 0
    index = local.long().add_(whole.long().clamp_(0, padded.shape[-1] - 2 * geo.segment - 3).unsqueeze(-1))
    index = index.view(n, -1)
    weight = local.frac_()  # local >= 0: long() truncates to the sample below, frac_ leaves the distance past it
    left, right = padded.gather(1, index), padded[:, 1:].gather(1, index)  # the samples below and above
    read = torch.lerp(left, right, weight.view(n, -1)).view(n, segments, geo.segment)
    fade_in = torch.sin((torch.arange(overlap, device=x.device, dtype=x.dtype) + 0.5) * (math.pi / 2 / overlap)) ** 2
    out = read[:, :, :hop].clone()
    out[:, 1:, :overlap].mul_(fade_in).addcmul_(read[:, :-1, hop:], 1 - fade_in)
    return out.view(n, -1)[:, :length]


def wsola_offsets(x: torch.Tensor, ratio: torch.Tensor, geo: WsolaGeometry, segments: int) -> torch.Tensor:
    """Read offsets [N, K] such that segment k reads x(ratio t + offsets[:, k]) at output time t.

    The nominal offset, (1 - ratio) x segment k's centre, keeps each centre where it was. Where
    segments k-1 and k overlap they read x at the same speed, so k continues k-1 best at the lag
    where x most resembles itself: the normalised cross-correlation of the overlap's stretch of x
    (at its nominal place) with the lags around the nominal one, on a copy averaged over
    `decimate` samples. From the first segment to the last, each takes the best lag that keeps it
    within the search radius of its nominal offset, so the timing never drifts further (wsola_walk),
    refined by a parabola through the peak."""
    n, length = x.shape
    d, device, dtype = geo.decimate, x.device, x.dtype
    shrink = (1 - ratio).unsqueeze(-1)  # [N, 1]
    k = torch.arange(segments, device=device, dtype=dtype)
    nominal = shrink * (k * geo.hop + geo.segment / 2)  # [N, K]
    if segments == 1:
        return nominal
    width, radius = max(1, geo.overlap // d), max(1, geo.search // d)
    lags = 4 * radius + 1  # nominal lag + m for m in [-2 radius, 2 radius]: the walk's window moves with its drift
    span = width + lags - 1
    # coarse samples from here on: sums of d samples, padded so that no window below leaves them
    pad = span + 3 * -(-geo.segment // d)
    coarse = F.pad(sum(x[:, : length // d * d].view(n, -1, d).unbind(-1)), (pad, pad))
    step = (shrink * (k * (geo.hop / d))).round_().diff(dim=-1)  # [N, K-1]: the nominal lags, whole coarse samples
    # where segment k-1 reads at output time k hop, where it starts to overlap segment k
    at = (k[1:] * (geo.hop / d) + shrink * ((geo.segment / 2 - geo.hop) / d)).round_().add_(pad)
    starts = torch.stack([at, at + step - 2 * radius]).long().clamp_(0, coarse.shape[-1] - span)
    index = starts.unsqueeze(-1) + torch.arange(span, device=device)  # [2, N, K-1, span]
    ours, theirs = coarse.gather(1, index[0, ..., :width].reshape(n, -1)), coarse.gather(1, index[1].reshape(n, -1))
    ours, theirs = ours.view(n, segments - 1, width), theirs.view(n, segments - 1, span)
    nfft = 1 << (span - 1).bit_length()
    corr = torch.fft.irfft(torch.fft.rfft(theirs, nfft) * torch.fft.rfft(ours, nfft).conj_physical(), nfft)
    energy = F.pad(theirs.square().cumsum(-1), (1, 0))
    own = ours.square().sum(-1, keepdim=True)
    # a window 60 dB below the overlap counts as that loud: past the crop's end (zero padding) its correlation
    # is FFT rounding, which divided by a vanishing energy would outscore every real match
    energy = torch.maximum(energy[..., width:] - energy[..., :lags], own * SILENT_WINDOW).mul_(own)
    away = (torch.arange(lags, device=device, dtype=dtype) - 2 * radius).abs_().mul_(MOVE_PENALTY / (2 * radius))
    score = energy.clamp_min_(1e-20).rsqrt_().mul_(corr[..., :lags]).sub_(away)  # [N, K-1, lags]
    best = wsola_walk(score, radius)  # [N, K-1]: the lag each segment takes, as an index into score
    left, peak, right = score.gather(-1, (best.unsqueeze(-1) + torch.arange(-1, 2, device=device))
                                     .clamp_(0, lags - 1)).unbind(-1)
    curve = (left + right).sub_(peak, alpha=2)
    shift = torch.where(curve < 0, (left - right).div_(curve.clamp_max(-1e-12)).mul_(0.5), 0).clamp_(-0.5, 0.5)
    lag = (best - 2 * radius + step + shift) * d  # [N, K-1], samples
    return torch.cat([nominal[:, :1], nominal[:, :1] + lag.cumsum(-1)], dim=-1)


SILENT_WINDOW = 1e-6  # energy, relative to the overlap's, below which a window counts as silent
MOVE_PENALTY = 1e-3  # correlation a lag 2 search radii from the nominal one must gain over it


def wsola_walk(score: torch.Tensor, radius: int) -> torch.Tensor:
    """The index into score [N, J, 4 radius + 1] (lags from -2 radius to 2 radius around each nominal
    lag) that each of J segments takes, in turn, when each takes its best lag among those that keep
    its drift (the sum of the lags taken so far, off their nominal) within +-radius.

    A segment's choice depends only on the drift it inherits, one of 2 radius + 1 values, so each
    segment's choice for every inherited drift is computed at once (a sliding-window argmax), and
    the walk through the J segments is a prefix scan of those lookup tables: log2(J) gathers
    instead of J steps."""
    n, j, lags = score.shape
    w = 2 * radius + 1  # the window of allowed lags; window s (s = radius - drift) is score[..., s : s + w]
    # sliding-window argmax in two blocks of w (van Herk / Gil-Werman): suffix maxima of the first, prefix of the second
    blocks = F.pad(score, (0, 2 * w - lags), value=-math.inf).view(n, j, 2, w)
    tail, tail_at = blocks[..., 0, :].flip(-1).cummax(-1)
    tail, tail_at = tail.flip(-1), (w - 1) - tail_at.flip(-1)  # max of window s's part in block 0, and where
    head, head_at = blocks[..., 1, :].cummax(-1)  # head[s - 1]: max of its part in block 1 (none when s = 0)
    head = F.pad(head[..., :-1], (1, 0), value=-math.inf)
    head_at = F.pad(head_at[..., :-1], (1, 0)) + w
    choice = torch.where(head > tail, head_at, tail_at)  # [N, J, w]: window s's best index
    starts = torch.arange(w, device=score.device)
    table = starts + 2 * radius - choice  # the window the next segment gets: s - (choice - 2 radius)
    # prefix scan: after it, table[:, i, s] is the window segment i+1 gets when segment 0 got window s
    span = 1
    while span < j:
        table[:, span:] = table[:, span:].gather(-1, table[:, :-span])
        span *= 2
    windows = torch.cat([torch.full((n, 1), radius, device=score.device, dtype=torch.long),  # drift 0
                         table[..., radius]], dim=1)  # [N, J + 1]
    return windows[:, :-1] + 2 * radius - windows[:, 1:]
