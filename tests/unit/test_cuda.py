"""The CUDA paths against their CPU twins. Skipped without a GPU (CI has none); run on a lent GPU
by benchmarks/gpu_session.sh. On CUDA the pipeline filters by FFT, shifts pitch on every row and
keeps the unshifted ones (as it adds noise, filters and reverberates every row and keeps the selected ones), and training uses the speed-ups of clmr_ray/speedups.py."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from clmr_ray.augment import AugmentPipeline
from clmr_ray.augment import audio as A
from clmr_ray.config import preset
from clmr_ray.data.sampling import CropBatch
from clmr_ray.graphed_step import capture, on_side_stream
from clmr_ray.pretrain import ContrastiveModel, train_step
from clmr_ray.speedups import Speedups

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SR = 22050


def noise(rows: int, samples: int, seed: int) -> torch.Tensor:
    return 0.3 * torch.randn(rows, samples, generator=torch.Generator().manual_seed(seed))


def magnitudes(y: torch.Tensor) -> torch.Tensor:
    return torch.stft(y, 512, 128, window=torch.hann_window(512), return_complex=True).abs()


def test_pitch_shift_on_cuda_matches_the_cpu():
    """The same function on both devices, on a tone whose partials leave no near-tie between the lags
    where segments join (on noise, a lag within rounding of another's score can go one way on the CPU
    and the other on the GPU, and every later segment then reads a few samples apart: the same sound,
    other samples). Compared sample by sample."""
    t = torch.arange(20000, dtype=torch.float64) / SR
    tone = sum(torch.sin(2 * math.pi * 196.0 * h * t + h) / h for h in range(1, 9)).float()
    x = 0.3 * tone.repeat(8, 1)
    steps = torch.tensor([0.0, 1.0, -1.0, 3.0, -4.0, 5.0, 0.0, -5.0])
    on_cpu = A.pitch_shift(x, steps, SR)
    on_cuda = A.pitch_shift(x.cuda(), steps.cuda(), SR).cpu()
    assert torch.equal(on_cuda[steps == 0], x[steps == 0])
    assert (on_cuda - on_cpu).abs().max() < 1e-3 * x.abs().max()


def test_pitch_shift_on_cuda_keeps_the_level_of_noise():
    x = noise(11, 30000, 0)
    steps = torch.arange(-5.0, 6.0)
    change = 20 * torch.log10(A.rms(A.pitch_shift(x.cuda(), steps.cuda(), SR).cpu()) / A.rms(x))
    assert torch.isfinite(change).all() and ((change[steps != 0] - 10 * math.log10(2 / 3)).abs() < 0.4).all()


def test_pitch_shift_on_cuda_moves_a_tone_within_a_cent():
    t = torch.arange(2 * SR) / SR
    x = (0.5 * torch.sin(2 * math.pi * 440.0 * t)).repeat(11, 1).cuda()
    steps = torch.arange(-5.0, 6.0, device="cuda")
    y = A.pitch_shift(x, steps, SR)[:, 1000:-1000].double().cpu()
    n = 16 * y.shape[-1]
    spectrum = torch.fft.rfft(y * torch.hann_window(y.shape[-1], dtype=torch.float64), n).abs()
    cents = 1200 * torch.log2(spectrum.argmax(dim=-1) * SR / n / (440.0 * 2 ** (steps.cpu().double() / 12)))
    assert cents.abs().max() < 1.0


def test_filter_on_cuda_is_the_fft_one_and_matches_the_recursive_biquad_on_cpu():
    x = noise(6, 30000, 1)
    cutoff = torch.tensor([150.0, 700.0, 2000.0, 2200.0, 4000.0, 8000.0])
    highpass = torch.tensor([True, True, True, False, False, False])
    on_cpu = A.biquad_filter(x, cutoff, highpass, SR, method="recursive")
    on_cuda = A.biquad_filter(x.cuda(), cutoff.cuda(), highpass.cuda(), SR, lowest_cutoff_hz=150.0).cpu()
    assert (on_cuda - on_cpu).abs().max() < 1e-4 * x.abs().max()


@pytest.mark.parametrize("fmt", ["audio", "spectrogram"])
def test_paper_pipelines_on_cuda_are_reproducible_and_finite(fmt):
    spec = preset("paper")
    mel = spec.spectrogram.mel if fmt == "spectrogram" else None
    pipe = AugmentPipeline(getattr(spec, fmt).augment, spec.data.sample_rate, mel).cuda()
    x = noise(8, spec.pretrain.crop_samples, 2).cuda()

    def view(seed):
        return pipe(x, torch.Generator(device="cuda").manual_seed(seed))

    a, b, c = view(7), view(7), view(8)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.isfinite(a).all()
    assert a.shape == pipe.plain(x).shape and a.dtype == torch.float32


@pytest.mark.parametrize("fmt", ["audio", "spectrogram"])
def test_views_together_on_cuda_are_the_views_one_at_a_time(fmt):
    """views_in_one_call (on for CUDA): each view drawn as its own call draws it, all rows computed at
    once; the same views to float rounding."""
    spec = preset("paper")
    mel = spec.spectrogram.mel if fmt == "spectrogram" else None
    pipe = AugmentPipeline(getattr(spec, fmt).augment, spec.data.sample_rate, mel).cuda()
    views = torch.stack([noise(8, spec.pretrain.crop_samples, 3), noise(8, spec.pretrain.crop_samples, 4)], 1).cuda()
    apart = pipe.views(views, torch.Generator(device="cuda").manual_seed(5), together=False)
    together = pipe.views(views, torch.Generator(device="cuda").manual_seed(5))
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-4)


def train_on_cuda(fmt: str, speed: Speedups, amp: bool, steps: int = 3) -> tuple[list[torch.Tensor], list[float]]:
    spec = preset("tiny", {"pretrain.crop_samples": 2187})
    torch.manual_seed(0)
    model = speed.prepare_model(ContrastiveModel(spec, fmt, 8000).cuda())
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05)
    generator = torch.Generator(device="cuda").manual_seed(1)
    data = torch.Generator().manual_seed(5)
    batches = [CropBatch(0.3 * torch.randn(8, 2, 2187, generator=data), torch.arange(8)) for _ in range(steps)]
    losses = [float(train_step(model, batch, optimizer, temperature=0.5, generator=generator, amp=amp, grad_clip=1.0))
              for batch in speed.batches(batches, "cuda")]
    return [p.detach().float().cpu() for p in params], losses


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls (cuDNN's default is TF32, 10 mantissa bits)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("fmt", ["audio", "spectrogram"])
def test_speedups_on_cuda_take_the_same_steps(fmt, no_tf32):
    """Every CUDA speed-up on vs all off, in float32 (TF32 off): the same losses and parameters up to
    kernel rounding (layouts and cuDNN's autotuned algorithms sum in other orders). With TF32 on, one
    weight of the first SampleCNN conv was seen 11 % apart after 3 steps on an H200."""
    torch.backends.cudnn.benchmark = False
    plain = train_on_cuda(fmt, Speedups(), amp=False)
    fast = train_on_cuda(fmt, Speedups.for_device("cuda", deterministic=False), amp=False)
    torch.backends.cudnn.benchmark = False
    assert fast[1] == pytest.approx(plain[1], rel=1e-2)
    for x, y in zip(plain[0], fast[0], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-2, atol=2e-3)


@pytest.mark.parametrize("fmt", ["audio", "spectrogram"])
def test_bf16_autocast_on_cuda_trains_like_float32(fmt):
    speed = Speedups.for_device("cuda", deterministic=False)
    fp32, bf16 = train_on_cuda(fmt, speed, amp=False), train_on_cuda(fmt, speed, amp=True)
    torch.backends.cudnn.benchmark = False
    assert all(math.isfinite(v) for v in bf16[1])
    assert bf16[1] == pytest.approx(fp32[1], rel=5e-2)


def test_graph_replays_draw_the_augmentations_an_eager_call_would():
    """The augmentation generator registered with a CUDA graph: a replay after manual_seed(s) gives
    the view an eager call after manual_seed(s) gives, and back-to-back replays continue the
    generator's stream as back-to-back eager calls do."""
    spec = preset("paper")
    pipe = AugmentPipeline(spec.audio.augment, spec.data.sample_rate).cuda()
    x = noise(8, spec.pretrain.crop_samples, 3).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    on_side_stream(lambda: pipe(x, gen))
    graph, static = capture(lambda: pipe(x, gen), gen)

    def close(a, b):
        return torch.allclose(a, b, rtol=1e-5, atol=1e-5 * x.abs().max().item())

    for seed in (5, 6):
        gen.manual_seed(seed)
        graph.replay()
        replayed = static.clone()
        gen.manual_seed(seed)
        assert close(replayed, pipe(x, gen)), f"seed {seed}"
    gen.manual_seed(7)
    graph.replay()
    first = static.clone()
    graph.replay()
    second = static.clone()
    gen.manual_seed(7)
    assert close(first, pipe(x, gen)) and close(second, pipe(x, gen)) and not close(first, second)


def steps_with(fmt: str, speed: Speedups, sizes: list[int], amp: bool = False):
    """Parameters, losses and the step object after steps on batches of the given sizes, from the same
    weights, augmentation seed and LR schedule."""
    spec = preset("tiny", {"pretrain.crop_samples": 2187})
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    model = speed.prepare_model(ContrastiveModel(spec, fmt, 8000).cuda())
    optimizer = speed.adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 / (1 + i))
    generator = torch.Generator(device="cuda").manual_seed(1)
    step = speed.step(model, optimizer, temperature=0.5, generator=generator, amp=amp, grad_clip=1.0,
                      scheduler=scheduler)
    data = torch.Generator().manual_seed(5)
    losses = [float(step(CropBatch(0.3 * torch.randn(n, 2, 2187, generator=data).cuda(), torch.arange(n))))
              for n in sizes]
    return [p.detach().float().cpu() for p in model.parameters()], losses, step


@pytest.fixture
def deterministic():
    """torch's deterministic algorithms for one test. Without them two all-eager runs already part
    after two steps (an H200, 2026-11-26: losses 3e-4 apart at the third step): cuDNN's default
    algorithms and pooling backward add with atomics, and Adam turns the rounding left in gradients
    that are 0 in exact arithmetic into whole lr-sized steps."""
    from clmr_ray.machine import use_deterministic

    use_deterministic(True)
    yield
    use_deterministic(False)


@pytest.mark.parametrize("fmt", ["audio", "spectrogram"])
def test_graphed_step_trains_like_the_eager_step(fmt, no_tf32, deterministic):
    """3 eager warm-up steps, capture, replays, one smaller batch (eager) between replays: the same
    losses and parameters as all-eager steps, with the learning rate changing every step."""
    sizes = [8, 8, 8, 8, 8, 6, 8, 8]
    eager = steps_with(fmt, Speedups(), sizes)
    graphed = steps_with(fmt, Speedups(cuda_graph=True), sizes)
    assert graphed[2].status == "replaying"
    assert graphed[1] == pytest.approx(eager[1], rel=1e-4)
    for x, y in zip(eager[0], graphed[0], strict=True):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)


def test_bench_step_on_cuda_times_the_graphed_step_and_its_augmentation():
    from clmr_ray.bench import step as bench

    row = bench.measure("tiny", "audio", "cuda", batch=4, steps=2, warmup=0)
    assert row["cuda_graph"] == "replaying"
    assert 0 < row["augment_graph_ms"] and 0 < row["augment_graph_pct"] < 100


def test_pretrain_on_cuda_replays_the_graph_and_resumes_exactly():
    """The loop as training runs it on a GPU (every speed-up on): two epochs straight, and the
    second again resumed from the first's checkpoint, give the same epoch-2 loss."""
    from clmr_ray.bench.epoch import noise_split
    from clmr_ray.pretrain import TrainContext, pretrain

    spec = preset("tiny", {"pretrain.epochs": 2, "pretrain.val_every": 0, "pretrain.batch_size": 8})
    split = noise_split(40, 2.0, spec.data.sample_rate)
    reports = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pretrain(spec, "audio", split, None, TrainContext(device="cuda", report=lambda m, c: reports.append((m, c))))
        resumed = []
        pretrain(spec, "audio", split, None, TrainContext(device="cuda", resume_state=reports[0][1],
                                                          report=lambda m, c: resumed.append(m)))
    assert not [w for w in caught if "CUDA graph" in str(w.message)]
    assert [m["epoch"] for m, _ in reports] == [1, 2] and [m["epoch"] for m in resumed] == [2]
    assert all(math.isfinite(m["train_loss"]) for m, _ in reports)
    assert resumed[0]["train_loss"] == pytest.approx(reports[1][0]["train_loss"], rel=1e-4)


def test_epoch_feed_on_cuda_gives_the_host_batches_bit_for_bit():
    """Prefetched across epochs, int16 samples pinned, copied on a stream of their own and converted
    on the GPU: every batch of every epoch equals the sampler's float32 batch on the host."""
    from clmr_ray.bench.epoch import noise_split
    from clmr_ray.data.sampling import TrainSampler
    from clmr_ray.speedups import EpochFeed

    sampler = TrainSampler(noise_split(12, 1.0, 8000), 2187, 4, seed=1)
    with EpochFeed(sampler, "cuda", [1, 2, 3], prefetch=True) as feed:
        for epoch in (1, 2, 3):
            sampler.set_epoch(epoch)
            for got, host in zip(feed.epoch(epoch), sampler, strict=True):
                assert got.audio.is_cuda and torch.equal(got.audio.cpu(), host.audio)


def test_bench_augment_on_cuda_times_the_pipelines_and_filter_methods_as_graphs():
    """bench augment's graph column: the batched call captured with its generator registered and
    replayed, for the pipelines, each op and both parallel filter methods."""
    from clmr_ray.bench import augment

    result = augment.run("tiny", batch=4, device="cuda", repeats=1, seeds=1)
    for r in (result["audio"], result["spectrogram"], result["logmel"], *result["ops"].values()):
        assert isinstance(r["graph_ms"], float) and r["graph_ms"] > 0
    assert result["filter_methods"]["blocks as a graph"] > 0 and result["filter_methods"]["fft as a graph"] > 0
    assert "as a CUDA graph" in augment.report(result)
