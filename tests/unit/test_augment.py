"""Batched augmentations measured on real signals at 8 kHz: each op does what its parameters say."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchaudio

from clmr_ray.augment import AugmentPipeline
from clmr_ray.augment import audio as A
from clmr_ray.augment.spectrogram import FREQ_DIM, TIME_DIM, mask_along_axis
from clmr_ray.config import WAVEFORM_AUGS, AugmentSpec, MaskAug, MelSpec, SpecError, preset

SR = 8000
MEL = MelSpec(n_fft=256, hop_length=128, n_mels=32)


def sine(freq_hz: float, seconds: float = 1.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return amplitude * torch.sin(2 * math.pi * freq_hz * t)


def db(ratio: torch.Tensor) -> torch.Tensor:
    return 20 * torch.log10(ratio)


def peak_hz(x: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.rfft(x * torch.hann_window(x.shape[-1]), dim=-1).abs()
    return spectrum.argmax(dim=-1) * SR / x.shape[-1]


def disabled(**enabled) -> AugmentSpec:
    """An AugmentSpec with everything off except the given augmentations (name=aug)."""
    spec = AugmentSpec()
    off = {f.name: dataclasses.replace(getattr(spec, f.name), enabled=False) for f in dataclasses.fields(spec)}
    return AugmentSpec(**{**off, **enabled})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------- functional ops


def test_gain_changes_rms_by_the_drawn_db():
    x = torch.randn(4, 4000)
    gain_db = torch.tensor([-6.0, -1.5, 0.0, 3.0])
    measured = db(A.rms(A.apply_gain(x, gain_db)) / A.rms(x))
    assert torch.allclose(measured, gain_db, atol=1e-4)


def test_white_noise_reaches_the_drawn_snr():
    x = sine(440, seconds=4).repeat(3, 1)
    snr_db = torch.tensor([5.0, 20.0, 35.0])
    y = A.add_white_noise(x, snr_db, gen())
    measured = db(A.rms(x) / A.rms(y - x))
    assert (measured - snr_db).abs().max() < 0.5
    assert torch.equal(A.add_white_noise(x, torch.full((3,), math.inf), gen()), x)


def test_lowpass_and_highpass_in_one_batched_call():
    low, high = sine(200), sine(3000)
    x = torch.stack([high, low, low, high])
    cutoff = torch.full((4,), 1000.0)
    highpass = torch.tensor([False, False, True, True])
    y = A.biquad_filter(x, cutoff, highpass, SR)
    change = db(A.rms(y[:, 800:]) / A.rms(x[:, 800:]))  # skip the filter's onset
    assert change[0] < -10  # 3 kHz through a 1 kHz low-pass
    assert change[1].abs() < 1  # 200 Hz through it
    assert change[2] < -10  # 200 Hz through a 1 kHz high-pass
    assert change[3].abs() < 1


def test_filter_cutoff_is_clamped_below_nyquist():
    y = A.biquad_filter(sine(200).unsqueeze(0), torch.tensor([5000.0]), torch.tensor([False]), SR)
    assert torch.isfinite(y).all() and y.shape == (1, SR)


@pytest.mark.parametrize("rows", [[-5, 0, 3, 5], [2, 2, -1, 0]])
def test_pitch_shift_moves_the_peak_by_the_drawn_semitones(rows):
    x = sine(440, seconds=2).repeat(4, 1)
    steps = torch.tensor(rows, dtype=torch.float32)
    y = A.pitch_shift(x, steps, SR)
    assert y.shape == x.shape
    expected = 440 * 2 ** (steps / 12)
    bin_hz = SR / x.shape[-1]
    assert ((peak_hz(y) - expected).abs() <= 2 * bin_hz).all()
    assert torch.equal(y[steps == 0], x[steps == 0])


def cents_off(y: torch.Tensor, expected_hz: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """How far, in cents, each row's strongest frequency is from expected_hz (FFT zero-padded 16x)."""
    n = 16 * y.shape[-1]
    spectrum = torch.fft.rfft(y.double() * torch.hann_window(y.shape[-1], dtype=torch.float64), n).abs()
    return 1200 * torch.log2(spectrum.argmax(dim=-1) * sample_rate / n / expected_hz)


@pytest.mark.parametrize(("sample_rate", "tone_hz"), [(8000, 440.0), (8000, 1234.5), (22050, 110.0), (22050, 3000.0)])
def test_pitch_shift_moves_a_tone_within_a_cent_and_keeps_its_level(sample_rate, tone_hz):
    """Tolerances: pitch within 1 cent of 2^(s/12) (measured: < 0.2); level within 1 dB (measured: < 0.7,
    linear interpolation's roll-off, largest for the tones at 14-15 % of the sample rate; the phase
    vocoder before WSOLA lost up to 1.8 dB at any frequency)."""
    t = torch.arange(2 * sample_rate) / sample_rate
    x = (0.5 * torch.sin(2 * math.pi * tone_hz * t)).repeat(11, 1)
    steps = torch.arange(-5.0, 6.0)
    y = A.pitch_shift(x, steps, sample_rate)[:, 1000:-1000]  # away from the edges
    assert cents_off(y, tone_hz * 2 ** (steps / 12), sample_rate).abs().max() < 1.0
    assert db(A.rms(y) / A.rms(x)).abs().max() < 1.0


def harmonic_tone(f0: float, sample_rate: int, seconds: float, partials: int) -> torch.Tensor:
    """A sawtooth-like tone: partials h = 1..partials at 1/h, phases fixed but not aligned."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return sum(torch.sin(2 * math.pi * f0 * h * t + h * h) / h for h in range(1, partials + 1)).float() * 0.3


@pytest.mark.parametrize("f0", [55.0, 220.0])
def test_pitch_shift_keeps_a_harmonic_tone_harmonic(f0):
    """Segments joined where they continue each other: all but 1e-3 of the energy stays on the shifted
    partials (within 10 Hz); joined out of phase, the seams would spread it between them."""
    sr = 22050
    x = harmonic_tone(f0, sr, 2.7, partials=12).repeat(11, 1)
    steps = torch.arange(-5.0, 6.0)
    y = A.pitch_shift(x, steps, sr)[:, 4096:-4096].double()
    n = 1 << 18
    spectrum = torch.fft.rfft(y * torch.hann_window(y.shape[-1], dtype=torch.float64), n).abs().square()
    hz = torch.arange(spectrum.shape[-1]) * sr / n
    f = (f0 * 2 ** (steps.double() / 12)).unsqueeze(-1)
    on_partials = sum(((hz - h * f).abs() < 10).double() for h in range(1, 13))
    assert ((spectrum * on_partials).sum(-1) / spectrum.sum(-1)).min() > 0.999


def test_pitch_shift_of_white_noise_loses_what_linear_interpolation_loses():
    """Reading between samples by linear interpolation keeps, on average over the fractions, 2/3 of the
    power of white noise (-1.76 dB); the unshifted row stays as it was. Music, with little at the top
    of its band, loses much less (tones: the test above)."""
    x = 0.3 * torch.randn(11, 3 * SR, generator=gen(4))
    steps = torch.arange(-5.0, 6.0)
    change = db(A.rms(A.pitch_shift(x, steps, SR)) / A.rms(x))
    assert change[steps == 0].item() == 0.0
    assert ((change[steps != 0] - 10 * math.log10(2 / 3)).abs() < 0.4).all()


def test_pitch_shift_of_silence_is_silence():
    silent = torch.zeros(3, SR)
    assert torch.equal(A.pitch_shift(silent, torch.tensor([-5.0, 2.0, 5.0]), SR), silent)


@pytest.mark.parametrize("samples", [50, 700, 3000])
def test_pitch_shift_of_crops_shorter_than_its_segments_and_margins(samples):
    """82 ms segments are 656 samples at 8 kHz; the mirrored margins 3 segments and a search radius."""
    x = 0.3 * torch.randn(3, samples, generator=gen(5))
    y = A.pitch_shift(x, torch.tensor([-5.0, 3.0, 12.0]), SR)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(y, x)


def test_pitch_shift_clamps_to_an_octave():
    x = sine(300).repeat(2, 1)
    assert torch.equal(A.pitch_shift(x, torch.tensor([20.0, -15.0]), SR), A.pitch_shift(x, torch.tensor([12.0, -12.0]), SR))


def test_wsola_timing_stays_within_the_search_radius():
    """Noise continues itself best where segments overlap: without the bound, each segment would read on
    from the last and the crop would drift by (1 - ratio) x its length."""
    sr = 22050
    x = 0.3 * torch.randn(6, 59049, generator=gen(6))
    ratio = 2 ** (torch.tensor([-5.0, -3.0, -1.0, 1.0, 3.0, 5.0]) / 12)
    geo = A.WsolaGeometry.at(sr)
    segments = -(-x.shape[-1] // geo.hop)
    offsets = A.wsola_offsets(x, ratio, geo, segments)
    nominal = (1 - ratio).unsqueeze(-1) * (torch.arange(segments) * geo.hop + geo.segment / 2)
    drift = (offsets - nominal).abs()
    assert drift.max() <= geo.search + 2 * geo.decimate  # + rounding of the nominal lags and the parabola's shift
    assert drift.max() > geo.search / 2  # noise does drift as far as it may
    silent = A.wsola_offsets(torch.zeros_like(x), ratio, geo, segments)  # nothing to match: the nominal lag
    assert (silent - nominal).abs().max() <= geo.decimate / 2 + 1e-3


def walk_one_segment_at_a_time(score: torch.Tensor, radius: int) -> torch.Tensor:
    """wsola_walk's definition, directly: each segment takes the best lag that keeps |drift| <= radius."""
    n, j, _ = score.shape
    drift, taken = torch.zeros(n, dtype=torch.long), []
    for i in range(j):
        low = radius - drift  # lags m - 2 radius with |drift + m - 2 radius| <= radius
        window = score[:, i].gather(1, low.unsqueeze(-1) + torch.arange(2 * radius + 1))
        best = window.argmax(-1) + low
        drift = drift + best - 2 * radius
        taken.append(best)
    return torch.stack(taken, dim=-1)


@pytest.mark.parametrize(("segments", "radius"), [(1, 1), (2, 3), (7, 1), (38, 40), (50, 6)])
def test_wsola_walk_is_the_segment_by_segment_walk(segments, radius):
    score = torch.randn(4, segments, 4 * radius + 1, generator=gen(segments + radius))
    assert torch.equal(A.wsola_walk(score, radius), walk_one_segment_at_a_time(score, radius))


def test_pitch_shift_of_a_row_does_not_depend_on_the_rest_of_the_batch():
    x = 0.3 * torch.randn(5, 4000, generator=gen(2))
    steps = torch.tensor([3.0, -2.0, 0.0, 5.0, -5.0])
    together = A.pitch_shift(x, steps, SR)
    alone = torch.cat([A.pitch_shift(x[i : i + 1], steps[i : i + 1], SR) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.equal(together, A.pitch_shift(x, steps, SR))


@pytest.mark.parametrize(("sample_rate", "length"), [(8000, 4000), (22050, 59049)])
def test_pitch_shift_joins_segments_where_float64_joins_them(sample_rate, length):
    """Where a join's search window reaches past the crop's end (zero padding), its correlation is FFT
    rounding over a vanishing energy: such windows once outscored every real match, by rounding noise,
    so float32 joined the last segments hundreds of samples from where float64 did (and a row's view
    depended on the rest of its batch). Silent windows now count as 60 dB below the overlap."""
    x = 0.3 * torch.randn(8, length, generator=gen(0), dtype=torch.float64)
    ratio = torch.pow(2.0, torch.tensor([-5.0, -3.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64) / 12)
    geo = A.WsolaGeometry.at(sample_rate)
    segments = -(-length // geo.hop)
    exact = A.wsola_offsets(x, ratio, geo, segments)
    single = A.wsola_offsets(x.float(), ratio.float(), geo, segments).double()
    assert (single - exact).abs().max() < 0.01  # samples


def impulse_responses(method: str, cutoff: torch.Tensor, highpass: torch.Tensor, sample_rate: int) -> torch.Tensor:
    x = torch.zeros(cutoff.shape[0], 8192, dtype=torch.float64)
    x[:, 0] = 1.0
    return A.biquad_filter(x, cutoff, highpass, sample_rate, method=method)


@pytest.mark.parametrize("method", ["fft", "blocks"])
@pytest.mark.parametrize("sample_rate", [8000, 22050])
def test_parallel_filters_have_the_magnitude_response_of_the_recursive_biquad(sample_rate, method):
    """Tolerance: 0.001 dB wherever the response is above -100 dB; waveforms agree to 1e-5 of full scale."""
    cutoff = torch.tensor([200.0, 700.0, 1200.0, 2200.0, 3000.0, 4000.0])
    highpass = torch.tensor([True, True, True, False, False, False])
    responses = [torch.fft.rfft(impulse_responses(m, cutoff, highpass, sample_rate)).abs() for m in (method, "recursive")]
    parallel_db, recursive_db = (db(r.clamp_min(1e-12)) for r in responses)
    audible = recursive_db > -100
    assert (parallel_db - recursive_db)[audible].abs().max() < 1e-3
    x = 0.5 * torch.randn(6, 20000, generator=gen(3))
    in_parallel = A.biquad_filter(x, cutoff, highpass, sample_rate, method=method)
    by_recurrence = A.biquad_filter(x, cutoff, highpass, sample_rate, method="recursive")
    assert (in_parallel - by_recurrence).abs().max() < 1e-5 * x.abs().max()


@pytest.mark.parametrize("method", ["blocks", "fft"])
@pytest.mark.parametrize("length", [1, 31, 32, 33, 1000, 20011])
def test_parallel_filters_are_the_recurrence_to_float_rounding(length, method):
    """Crops shorter than a block, not a whole number of blocks, a 1 Hz cutoff (ringing longer than the
    crop: the block scan spans every block, the FFT's impulse response is ~100,000 samples long) and one
    above the clamp (0.45 x the sample rate). In float64 each is lfilter's recurrence to 1e-9; in float32
    each is closer to that than lfilter's own float32 run (which drifts ~2e-6 of full scale)."""
    cutoff = torch.tensor([1.0, 200.0, 1200.0, 2200.0, 4000.0, 9922.5])
    highpass = torch.tensor([True, True, False, False, True, False])
    x = 0.5 * torch.randn(6, length, generator=gen(5), dtype=torch.float64)
    exact = A.biquad_filter(x, cutoff, highpass, SR, method="recursive")
    assert (A.biquad_filter(x, cutoff, highpass, SR, method=method) - exact).abs().max() < 1e-9
    single = A.biquad_filter(x.float(), cutoff, highpass, SR, method=method)
    assert single.dtype == torch.float32 and single.shape == x.shape
    assert (single - exact).abs().max() < 1e-6 * x.abs().max()


def test_block_filter_scan_sized_from_a_cutoff_bound_matches_the_recurrence():
    x = 0.5 * torch.randn(3, 6000, generator=gen(4))
    cutoff, highpass = torch.tensor([200.0, 900.0, 3000.0]), torch.tensor([True, True, False])
    bounded = A.biquad_filter(x, cutoff, highpass, SR, method="blocks", lowest_cutoff_hz=200.0)
    assert (bounded - A.biquad_filter(x, cutoff, highpass, SR, method="recursive")).abs().max() < 1e-5 * x.abs().max()


def test_filter_on_cpu_is_the_block_one():
    x = 0.5 * torch.randn(2, 3000, generator=gen(4))
    cutoff, highpass = torch.tensor([300.0, 2500.0]), torch.tensor([True, False])
    assert torch.equal(A.biquad_filter(x, cutoff, highpass, SR), A.biquad_filter(x, cutoff, highpass, SR, method="blocks"))


def test_an_empty_batch_comes_back_empty():
    empty = torch.zeros(0, 1000)
    for method in ("auto", "blocks", "fft", "recursive"):
        assert A.biquad_filter(empty, torch.zeros(0), torch.zeros(0, dtype=torch.bool), SR, method=method).shape == (0, 1000)
    assert A.pitch_shift(empty, torch.zeros(0), SR).shape == (0, 1000)
    assert AugmentPipeline(preset("paper").audio.augment, SR)(empty, gen()).shape == (0, 1000)


def test_filter_method_errors_are_one_line():
    with pytest.raises(ValueError, match="biquad_filter.method: unknown method 'iir'; choose one of auto, blocks, fft, recursive"):
        A.biquad_filter(torch.randn(1, 100), torch.tensor([500.0]), torch.tensor([False]), SR, method="iir")


def test_polarity_flips_only_the_chosen_rows():
    x = torch.randn(3, 100)
    y = A.invert_polarity(x, torch.tensor([True, False, True]))
    assert torch.equal(y, torch.stack([-x[0], x[1], -x[2]]))


def test_delay_adds_an_attenuated_echo_per_example():
    x = torch.zeros(2, 1000)
    x[:, 0] = 1.0
    y = A.add_delay(x, torch.tensor([100, 250]), 0.5)
    assert y[0, 100] == 0.5 and y[1, 250] == 0.5 and y[:, 0].eq(1).all()
    assert y.abs().sum() == pytest.approx(3.0)


def test_reverb_tail_follows_rt60_and_dry_is_identity():
    x = torch.zeros(2, SR)
    x[:, 0] = 1.0
    rt60 = torch.tensor([0.1, 0.5])
    y = A.add_reverb(x, rt60, torch.tensor([1.0, 1.0]), SR, gen())
    assert y.shape == x.shape
    late = A.rms(y[:, int(0.3 * SR) : int(0.4 * SR)])
    assert late[0] < late[1] * 1e-2  # the short room has died out, the long one rings on
    dry = A.add_reverb(x, rt60, torch.zeros(2), SR, gen())
    assert torch.equal(dry, x)


def test_reverb_with_a_length_bound_rings_the_same():
    """What the pipeline does on CUDA: the impulse response is as long as the spec's longest rt60,
    not the batch's (no read-back); past each row's own rt60 the extra length is ~silent."""
    x = torch.zeros(2, SR)
    x[:, 0] = 1.0
    rt60 = torch.tensor([0.1, 0.5])
    ir = A.reverb_impulse_response(rt60, SR, gen(), length_s=1.0)
    assert ir.shape == (2, SR)
    assert (ir[:, int(0.5 * SR):].norm(dim=-1) < 1e-2).all()
    y = A.add_reverb(x, rt60, torch.tensor([1.0, 1.0]), SR, gen(), length_s=1.0)
    late = A.rms(y[:, int(0.3 * SR) : int(0.4 * SR)])
    assert y.shape == x.shape and late[0] < late[1] * 1e-2


def test_noise_mix_uses_another_clip_at_the_drawn_snr():
    freqs = [300.0, 700.0, 1100.0, 1900.0]
    x = torch.stack([sine(f) for f in freqs])
    snr = torch.tensor([6.0, 10.0, 15.0, 20.0])
    y = A.noise_mix(x, snr, "batch", gen())
    added = y - x
    spectrum_peak = peak_hz(added)
    for i, f in enumerate(freqs):
        assert spectrum_peak[i] != f and spectrum_peak[i] in freqs  # another example, never itself
    assert (db(A.rms(x) / A.rms(added)) - snr).abs().max() < 1e-3
    white = A.noise_mix(x, snr, "white", gen()) - x
    assert (db(A.rms(x) / A.rms(white)) - snr).abs().max() < 1e-3


def test_noise_mix_errors_are_one_line():
    with pytest.raises(ValueError, match="needs >= 2 examples"):
        A.noise_mix(torch.randn(1, 100), torch.tensor([10.0]), "batch", gen())
    with pytest.raises(ValueError, match="unknown source 'pink'"):
        A.noise_mix(torch.randn(2, 100), torch.tensor([10.0, 10.0]), "pink", gen())


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("dim", [FREQ_DIM, TIME_DIM])
def test_masks_cover_at_most_the_fraction_and_half_on_average(dim):
    spec = torch.randn(2000, 1, 40, 60) + 5.0
    size = spec.shape[dim]
    max_width = int(0.2 * size)
    value = torch.full((2000,), -99.0)
    out = mask_along_axis(spec, max_width, dim, gen(), value=value)
    masked = (out == -99.0).any(dim=1)  # [N, F, T]
    covered = masked.any(dim=-1 if dim == FREQ_DIM else -2).sum(dim=-1).float()  # lines per example
    assert covered.max() <= max_width
    assert covered.mean() == pytest.approx(max_width / 2, rel=0.1)
    assert covered.unique().numel() > 3  # widths differ per example


def test_masks_default_to_the_example_mean_and_respect_selection():
    spec = torch.randn(4, 1, 20, 30) + torch.arange(4.0).view(4, 1, 1, 1) * 10
    selected = torch.tensor([True, False, True, False])
    out = mask_along_axis(spec, 10, FREQ_DIM, gen(1), selected)
    assert torch.equal(out[~selected], spec[~selected])
    means = spec.mean(dim=(1, 2, 3))
    for i in (0, 2):
        changed = out[i] != spec[i]
        assert torch.allclose(out[i][changed], means[i].expand(int(changed.sum())))


# ------------------------------------------------------------------------ pipeline


def test_the_pipeline_leaves_its_input_as_it_was():
    """On CPU the selected rows are written in place, into the pipeline's own copy of the batch."""
    spec = preset("paper")
    x = 0.3 * torch.randn(6, 6561, generator=gen(9))
    before = x.clone()
    for augment in (spec.audio.augment, AugmentSpec(reverb=dataclasses.replace(AugmentSpec().reverb, enabled=True))):
        AugmentPipeline(augment, spec.data.sample_rate)(x, gen())
        assert torch.equal(x, before)


def test_everything_disabled_is_the_identity():
    x = torch.randn(4, 2000)
    pipe = AugmentPipeline(disabled(), SR)
    assert torch.equal(pipe(x, gen()), x)
    assert torch.equal(pipe.plain(x), x)
    mel_pipe = AugmentPipeline(disabled(), SR, MEL)
    assert torch.equal(mel_pipe(x, gen()), mel_pipe.plain(x))


@pytest.mark.parametrize("name", WAVEFORM_AUGS)
def test_each_waveform_aug_keeps_length_and_p0_is_identity(name):
    x = 0.3 * torch.randn(4, 4000)
    default = getattr(AugmentSpec(), name)
    always = AugmentPipeline(disabled(**{name: dataclasses.replace(default, enabled=True, p=1.0)}), SR)
    never = AugmentPipeline(disabled(**{name: dataclasses.replace(default, enabled=True, p=0.0)}), SR)
    y = always(x, gen())
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(never(x, gen()), x)
    if name != "pitch":  # 0 semitones may be drawn
        assert not torch.equal(y, x)


def test_parameters_differ_within_a_batch():
    x = torch.randn(1, 4000).repeat(8, 1)
    pipe = AugmentPipeline(disabled(gain=dataclasses.replace(AugmentSpec().gain, p=1.0)), SR)
    gains = db(A.rms(pipe(x, gen())) / A.rms(x))
    assert gains.unique().numel() == 8
    assert gains.min() >= -6.0 - 1e-4 and gains.max() <= 1e-4


def test_probability_picks_a_random_subset():
    x = torch.randn(1, 1000).repeat(400, 1)
    pipe = AugmentPipeline(disabled(polarity=dataclasses.replace(AugmentSpec().polarity, enabled=True, p=0.3)), SR)
    flipped = (pipe(x, gen())[:, 0] != x[:, 0]).float().mean()
    assert flipped == pytest.approx(0.3, abs=0.08)


def test_white_noise_reaches_the_chosen_rows_only_and_leaves_the_input_alone():
    """On CPU the noise is drawn for the chosen rows alone and written into a copy."""
    x = torch.randn(1, 1000).repeat(400, 1)
    before = x.clone()
    pipe = AugmentPipeline(disabled(noise=dataclasses.replace(AugmentSpec().noise, enabled=True, p=0.5)), SR)
    out = pipe(x, gen())
    untouched = (out == x).all(dim=1)
    assert torch.equal(x, before)
    assert untouched.float().mean() == pytest.approx(0.5, abs=0.08)
    assert ((out - x)[~untouched].abs() > 0).float().mean() > 0.99  # the others got noise on (almost) every sample


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_preset_pipelines_are_reproducible_from_the_generator(name):
    spec = preset(name)
    sr, mel = spec.data.sample_rate, spec.spectrogram.mel
    x = 0.3 * torch.randn(4, 6561)
    for pipe in (AugmentPipeline(spec.audio.augment, sr), AugmentPipeline(spec.spectrogram.augment, sr, mel)):
        a, b, c = pipe(x, gen(7)), pipe(x, gen(7)), pipe(x, gen(8))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.shape == pipe.plain(x).shape and torch.isfinite(a).all()
    assert AugmentPipeline(spec.spectrogram.augment, sr, mel)(x, gen()).shape == (4, 1, mel.n_mels, 6561 // mel.hop_length + 1)


def every_augmentation_alone() -> dict[str, tuple[AugmentSpec, MelSpec | None]]:
    """Each augmentation alone at p = 0.5 (noise_mix from the batch and from white noise), and the tiny
    preset's two pipelines: name -> (spec, mel or None)."""
    spec = preset("tiny")
    cases = {"audio": (spec.audio.augment, None), "spectrogram": (spec.spectrogram.augment, MEL)}
    for name in WAVEFORM_AUGS + ("freq_mask", "time_mask"):
        aug = dataclasses.replace(getattr(AugmentSpec(), name), enabled=True, p=0.5)
        cases[name] = (disabled(**{name: aug}), MEL if name.endswith("mask") else None)
    cases["noise_mix_white"] = (disabled(noise_mix=dataclasses.replace(cases["noise_mix"][0].noise_mix, source="white")),
                                None)
    return cases


@pytest.mark.parametrize("case", list(every_augmentation_alone()))
def test_views_are_the_views_of_one_call_per_view(case):
    """views() draws each view as a call on it draws it: computed a view at a time, the calls' views
    bit for bit; computed together (2B rows at once), the same to float rounding (on other inputs,
    rounding can tip the pitch shift's choice of where segments join). noise_mix from the batch mixes
    within each view's rows."""
    augment, mel = every_augmentation_alone()[case]
    pipe = AugmentPipeline(augment, SR, mel)
    for batch in (2, 5):
        views = 0.3 * torch.randn(batch, 2, 4000, generator=gen(batch))
        g = gen(3)
        calls = torch.cat([pipe(views[:, 0], g), pipe(views[:, 1], g)])
        assert torch.equal(pipe.views(views, gen(3), together=False), calls)
        together = pipe.views(views, gen(3))
        assert together.shape == calls.shape
        torch.testing.assert_close(together, calls, rtol=0, atol=1e-6)


def test_views_errors_are_one_line():
    pipe = AugmentPipeline(AugmentSpec(), SR)
    with pytest.raises(ValueError, match=r"AugmentPipeline.views: expected views \[B, V, T\], got shape \(2, 100\)"):
        pipe.views(torch.randn(2, 100), gen())
    with pytest.raises(ValueError, match="generator is on cpu but the batch is on meta"):
        pipe.views(torch.randn(2, 2, 100, device="meta"), gen())


def test_spectrogram_pipeline_masks_after_logmel():
    x = 0.3 * torch.randn(6, 8000)
    masks = {"enabled": True, "p": 1.0, "max_fraction": 0.25, "n_masks": 2}
    pipe = AugmentPipeline(disabled(freq_mask=MaskAug(**masks), time_mask=MaskAug(**masks)), SR, MEL)
    out, clean = pipe(x, gen()), pipe.plain(x)
    changed = (out != clean).float().mean(dim=(1, 2, 3))
    assert (changed > 0).all() and (changed < 1 - (1 - 0.5) ** 2).all()


def test_pipeline_errors_are_one_line():
    with pytest.raises(SpecError) as exc:
        AugmentPipeline(disabled(time_mask=MaskAug(enabled=True)), SR)
    assert "augment.time_mask" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(SpecError, match="n_masks"):
        AugmentPipeline(disabled(freq_mask=MaskAug(enabled=True, n_masks=-1)), SR, MEL)
    pipe = AugmentPipeline(AugmentSpec(), SR)
    with pytest.raises(ValueError, match=r"expected waveforms \[N, T\]"):
        pipe(torch.randn(2, 2, 100), gen())
    with pytest.raises(ValueError, match="dtype torch.int16"):
        pipe(torch.zeros(2, 100, dtype=torch.int16), gen())


def test_others_pool_lets_a_single_crop_mix_from_the_batch():
    batch = torch.stack([sine(f) for f in (300.0, 700.0)])
    spec = disabled(noise_mix=dataclasses.replace(AugmentSpec().noise_mix, enabled=True, p=1.0))
    pipe = AugmentPipeline(spec, SR)
    y = pipe(batch[:1], gen(), others=batch[1:])
    assert peak_hz(y - batch[:1]).item() == 700.0


def test_autocast_does_not_change_the_augmentation():
    spec = preset("tiny")
    pipe = AugmentPipeline(spec.audio.augment, SR)
    x = 0.3 * torch.randn(4, 6561)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = pipe(x, gen(3))
    assert mixed.dtype == torch.float32 and torch.equal(mixed, pipe(x, gen(3)))


def test_fft_filter_sized_from_a_cutoff_bound_matches_the_recursive_one():
    """What the pipeline does on CUDA: the FFT length comes from the lowest cutoff the spec allows."""
    x = 0.5 * torch.randn(3, 6000, generator=gen(4))
    cutoff, highpass = torch.tensor([200.0, 900.0, 3000.0]), torch.tensor([True, True, False])
    bounded = A.biquad_filter(x, cutoff, highpass, SR, method="fft", lowest_cutoff_hz=200.0)
    assert (bounded - A.biquad_filter(x, cutoff, highpass, SR, method="recursive")).abs().max() < 1e-5 * x.abs().max()


@pytest.mark.parametrize("sample_rate", [8000, 22050])
@pytest.mark.parametrize("lowest", [1.0, 30.0, 200.0, 5000.0])
def test_filter_tail_bound_is_the_tail_of_the_slowest_biquad_in_range(sample_rate, lowest):
    top = 0.45 * sample_rate
    cutoffs = torch.linspace(max(1.0, min(lowest, top)), top, 200, dtype=torch.float64)
    a, _ = A.biquad_coefficients(cutoffs, torch.zeros(200, dtype=torch.bool), sample_rate)
    assert A.biquad_tail_bound(lowest, sample_rate) == A.biquad_tail(a)


def test_audio_pipeline_does_not_depend_on_the_thread_count():
    """Every op computes each output element alone or splits work by rows: the same bits on 1 or 2 threads."""
    spec = preset("paper")
    x = 0.1 * torch.randn(4, 59049, generator=gen(6))
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(AugmentPipeline(spec.audio.augment, spec.data.sample_rate)(x, gen(3)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*outs)


def test_recursive_filter_leaves_onednn_as_it_found_it():
    x = 0.3 * torch.randn(2, 4000, generator=gen(6))
    cutoff, highpass = torch.tensor([300.0, 2500.0]), torch.tensor([True, False])
    assert torch.backends.mkldnn.enabled
    y = A.biquad_filter(x, cutoff, highpass, SR, method="recursive")
    assert torch.backends.mkldnn.enabled
    a, b = A.biquad_coefficients(cutoff, highpass, SR)  # lfilter with oneDNN on, as by default
    assert torch.allclose(y, torchaudio.functional.lfilter(x, a, b, clamp=False, batching=True), atol=1e-5)
