"""Encoders, heads and the log-mel frontend: shapes at the paper and tiny presets, errors."""

from __future__ import annotations

import pytest
import torch

from clmr_ray.config import EncoderSpec, MelSpec, SpecError, preset
from clmr_ray.models import (
    ENCODERS,
    LinearHead,
    LogMel,
    MLPHead,
    Projector,
    build_encoder,
    build_head,
    count_parameters,
    register_encoder,
)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_registry_lists_the_paper_encoders():
    assert {"samplecnn", "resnet18", "resnet10"} <= set(ENCODERS)


def test_samplecnn_paper_scale_gives_512_features():
    encoder = build_encoder(EncoderSpec(name="samplecnn"), crop_samples=59049).eval()
    print(f"samplecnn paper: {count_parameters(encoder):,} parameters")
    assert encoder.out_dim == 512
    with torch.no_grad():
        assert encoder(torch.randn(2, 59049)).shape == (2, 512)
        assert encoder(torch.randn(2, 1, 59049)).shape == (2, 512)
    # width 1.0 ends at 512 channels: no projection layer is added
    assert isinstance(encoder.fc, torch.nn.Identity)


def test_samplecnn_paper_clip_length_also_works():
    encoder = build_encoder(EncoderSpec(name="samplecnn", width=0.125), crop_samples=110250).eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 110250)).shape == (2, 512)


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_samplecnn_small_presets(name):
    spec = preset(name)
    samples = spec.pretrain.crop_samples
    encoder = build_encoder(spec.audio.encoder, crop_samples=samples)
    print(f"samplecnn {name}: {count_parameters(encoder):,} parameters")
    assert encoder(torch.randn(3, samples)).shape == (3, spec.audio.encoder.out_dim)
    if name == "tiny":  # 6561 = 3^8: the last two blocks cannot pool any more
        pools = [type(block[2]).__name__ for block in encoder.blocks]
        assert pools.count("Identity") == 2


def test_samplecnn_projects_to_requested_out_dim():
    encoder = build_encoder(EncoderSpec(name="samplecnn", width=0.125, out_dim=96), crop_samples=6561)
    assert encoder.out_dim == 96
    assert encoder(torch.randn(2, 6561)).shape == (2, 96)


def test_resnet18_on_paper_mel():
    encoder = build_encoder(EncoderSpec(name="resnet18"), crop_samples=59049).eval()
    print(f"resnet18: {count_parameters(encoder):,} parameters")
    with torch.no_grad():
        assert encoder(torch.randn(2, 1, 128, 116)).shape == (2, 512)
    assert encoder.out_dim == 512


def test_resnet10_on_tiny_mel():
    spec = preset("tiny")
    encoder = build_encoder(spec.spectrogram.encoder, crop_samples=spec.pretrain.crop_samples)
    print(f"resnet10: {count_parameters(encoder):,} parameters")
    mel = LogMel(spec.data.sample_rate, spec.spectrogram.mel)
    features = encoder(mel(torch.randn(3, spec.pretrain.crop_samples)))
    assert features.shape == (3, 512)


def test_unknown_encoder_is_one_line_with_suggestion():
    with pytest.raises(SpecError) as exc:
        build_encoder(EncoderSpec(name="samplecnnn"), crop_samples=59049)
    message = one_line(exc)
    assert "samplecnnn" in message and "did you mean 'samplecnn'" in message and "resnet18" in message


def test_bad_width_and_duplicate_registration():
    with pytest.raises(SpecError, match="encoder.width"):
        build_encoder(EncoderSpec(width=0.0), crop_samples=59049)
    with pytest.raises(SpecError, match="crop_samples"):
        build_encoder(EncoderSpec(), crop_samples=2)
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("samplecnn")(lambda spec, crop: None)


def test_logmel_paper_shape_fp32_under_autocast():
    mel = LogMel(22050, MelSpec())
    x = 0.1 * torch.randn(2, 59049)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mel(x)
    assert out.shape == (2, 1, 128, 116) and out.dtype == torch.float32
    assert mel.frames(59049) == 116


def test_logmel_standardises_each_example():
    mel = LogMel(8000, MelSpec(n_fft=256, hop_length=128, n_mels=32))
    x = 0.1 * torch.randn(3, 4000)
    x[1] *= 0.01  # 40 dB quieter: same spectrogram once standardised
    x[2] = 0.0  # silence maps to zeros, not NaN
    out = mel(x)
    mean, std = out.mean(dim=(1, 2, 3)), out.std(dim=(1, 2, 3))
    assert torch.allclose(mean[:2], torch.zeros(2), atol=1e-4)
    assert torch.allclose(std[:2], torch.ones(2), atol=1e-3)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    loud = mel(x[:1])
    quiet = mel(x[:1] * 0.01)
    assert torch.allclose(loud, quiet, atol=1e-3)


def test_logmel_raw_db_respects_top_db_per_example():
    mel = LogMel(8000, MelSpec(n_fft=256, hop_length=128, n_mels=32, top_db=60.0), standardize=False)
    x = torch.randn(2, 4000)
    x[1] *= 1e-3
    out = mel(x)
    for row in out:
        assert row.max() - row.min() <= 60.0 + 1e-3
    assert out[1].max() < out[0].max() - 50  # the quiet example was not clamped to the loud one's floor


def test_heads():
    h = torch.randn(4, 512)
    assert Projector(512, 512, 128)(h).shape == (4, 128)
    assert LinearHead(512, 10)(h).shape == (4, 10)
    mlp = MLPHead(512, 64, 10)
    assert mlp(h).shape == (4, 10) and len(list(mlp.children())) == 3
    assert isinstance(build_head("linear", 512, 10), LinearHead)
    assert isinstance(build_head("mlp", 512, 10, hidden=32), MLPHead)
    with pytest.raises(SpecError) as exc:
        build_head("svm", 512, 10)
    assert "svm" in one_line(exc)


@pytest.mark.parametrize("name", ["resnet18", "resnet10", "samplecnn"])
def test_encoders_have_no_layer_that_refuses_deterministic_mode_on_cuda(name):
    """torch raises in deterministic mode for these layers' CUDA backward (scaling.deterministic)."""
    refused = (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveAvgPool3d,
               torch.nn.MaxPool3d, torch.nn.AvgPool3d, torch.nn.FractionalMaxPool2d, torch.nn.NLLLoss)
    encoder = build_encoder(EncoderSpec(name=name, width=0.125), crop_samples=6561)
    assert not [m for m in encoder.modules() if isinstance(m, refused)]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_samplecnn_channels_last_path_computes_the_same_function(mode):
    """SampleCNN.forward_channels_last (the GPU layout, speedups.channels_last_1d) against the 1-D
    forward on the same weights, both in float32 against the 1-D forward in float64: outputs and
    BatchNorm statistics agree to float32 rounding, and each gradient is as close to float64's as
    the 1-D path's (within 3x its error, or 1e-3 of the norm). The conv biases right before a
    BatchNorm have a gradient of exactly 0 (BatchNorm removes any constant), so there every path
    holds rounding noise: they are not compared."""
    def build():
        torch.manual_seed(0)
        net = build_encoder(EncoderSpec(name="samplecnn", width=0.25), crop_samples=6561)
        return getattr(net, mode)()

    plain, fast, exact = build(), build(), build().double()
    fast.channels_last = True
    x = torch.randn(6, 6561, generator=torch.Generator().manual_seed(1))
    outputs = [net(x.to(dtype)) for net, dtype in ((plain, torch.float32), (fast, torch.float32), (exact, torch.float64))]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4 * outputs[0].abs().max().item())
    for y in outputs:
        y.square().sum().backward()
    for (name, p), q, r in zip(plain.named_parameters(), fast.parameters(), exact.parameters(), strict=True):
        if name.endswith(".0.bias") and not name.startswith("fc"):
            continue  # a Conv1d's bias right before its BatchNorm
        error_plain, error_fast = ((g.grad.double() - r.grad).norm() / r.grad.norm() for g in (p, q))
        assert error_fast <= max(3 * error_plain, 1e-3), f"{name}: {error_fast:.2e} vs {error_plain:.2e}"
    for (name, a), b in zip(plain.named_buffers(), fast.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert list(fast.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("channels_last", [False, True])
def test_samplecnn_relu_after_pooling_is_bit_identical_to_relu_before(channels_last):
    """The blocks apply their ReLU after the max-pool (a third of the samples): the outputs, every
    gradient and the BatchNorm statistics equal, bit for bit, those of the textbook order
    (BatchNorm, ReLU, max-pool) on the same weights, on the 1-D path and the channels-last one."""
    def build():
        torch.manual_seed(0)
        net = build_encoder(EncoderSpec(name="samplecnn", width=0.25), crop_samples=6561)
        net.channels_last = channels_last
        return net

    ours, textbook = build(), build()
    for block in textbook.blocks:
        assert isinstance(block[3], torch.nn.ReLU)
        block[2], block[3] = block[3], block[2]  # Conv, BatchNorm, ReLU, MaxPool
    assert any(isinstance(block[2], torch.nn.MaxPool1d) for block in ours.blocks)
    x = torch.randn(6, 6561, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # the second step sees the first one's BatchNorm statistics
        outputs = [net(x) for net in (ours, textbook)]
        assert torch.equal(outputs[0], outputs[1])
        for net, y in zip((ours, textbook), outputs):
            net.zero_grad()
            y.square().sum().backward()
        for (name, p), q in zip(ours.named_parameters(), textbook.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad), name
    for (name, a), b in zip(ours.named_buffers(), textbook.buffers(), strict=True):
        assert torch.equal(a, b), name
    assert list(ours.state_dict()) == list(textbook.state_dict())


def test_samplecnn_channels_last_path_keeps_every_activation_channels_last():
    """Every 4-D tensor the channels-last path makes with more than one channel (convolutions,
    BatchNorm, pooling, ReLU, forward and backward) lies in channels-last memory. The front conv
    has one input channel, a layout-free tensor, and as a Conv2d it left NCHW output behind: on an
    H200 the first BatchNorm and block then ran in NCHW kernels and transposes (a step's kernels 24.5
    ms against 16.2)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Layouts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.nchw: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if (isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[0] == batch and t.shape[1] > 1
                        and t.shape[3] > 1 and not t.is_contiguous(memory_format=torch.channels_last)):
                    self.nchw.append(f"{func} -> {tuple(t.shape)}")
            return out

    torch.manual_seed(0)
    net = build_encoder(EncoderSpec(name="samplecnn", width=0.25), crop_samples=6561)
    net.channels_last = True
    batch = 4  # activations lead with it; weights (and their gradients) with their output channels
    x = torch.randn(batch, 6561, generator=torch.Generator().manual_seed(1))
    with Layouts() as seen:
        net(x).square().sum().backward()
    assert seen.nchw == []
