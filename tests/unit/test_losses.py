import math

import pytest
import torch

from clmr_ray.losses import cross_format_nt_xent, nt_xent


def reference_nt_xent(z_a, z_b, tau):
    """The SimCLR formula written out with loops over anchors i and candidates k."""
    u = torch.cat([z_a, z_b]).double()
    two_n = u.shape[0]
    n = two_n // 2

    def sim(x, y):
        return float(x @ y / (x.norm() * y.norm()))

    total = 0.0
    for i in range(two_n):
        j = (i + n) % two_n
        denominator = sum(math.exp(sim(u[i], u[k]) / tau) for k in range(two_n) if k != i)
        total += -math.log(math.exp(sim(u[i], u[j]) / tau) / denominator)
    return total / two_n


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_matches_loop_reference(tau, n):
    g = torch.Generator().manual_seed(n * 100 + int(tau * 10))
    z_a, z_b = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    assert nt_xent(z_a, z_b, tau).item() == pytest.approx(reference_nt_xent(z_a, z_b, tau), rel=1e-5)


def test_aligned_pairs_beat_shuffled_pairs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    z_b = z + 0.1 * torch.randn(32, 16, generator=g)
    aligned = nt_xent(z, z_b, 0.5)
    shuffled = nt_xent(z, z_b[torch.randperm(32, generator=g)], 0.5)
    assert aligned < shuffled


def test_scale_invariant_and_stable_at_small_temperature():
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert nt_xent(z_a, z_b, 0.5).item() == pytest.approx(nt_xent(1e3 * z_a, 1e-3 * z_b, 0.5).item(), rel=1e-5)
    loss = nt_xent(z_a, z_b, 1e-3)
    assert torch.isfinite(loss)


def test_gradient_flows_to_both_views_and_half_precision_inputs():
    z_a = torch.randn(4, 8, requires_grad=True)
    z_b = torch.randn(4, 8, requires_grad=True)
    nt_xent(z_a.bfloat16(), z_b.bfloat16(), 0.5).backward()
    assert z_a.grad.abs().sum() > 0 and z_b.grad.abs().sum() > 0


def test_gather_without_process_group_is_the_local_loss():
    z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    assert nt_xent(z_a, z_b, 0.5, gather=True).item() == pytest.approx(nt_xent(z_a, z_b, 0.5).item())


def test_cross_format_pairs_audio_with_spectrogram():
    z_audio, z_spec = torch.randn(5, 8), torch.randn(5, 8)
    assert cross_format_nt_xent(z_audio, z_spec, 0.3).item() == pytest.approx(
        reference_nt_xent(z_audio, z_spec, 0.3), rel=1e-5)


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="views must both be"):
        nt_xent(torch.randn(4, 8), torch.randn(3, 8), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), 0.0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        nt_xent(torch.randn(1, 8), torch.randn(1, 8), 0.5)


def test_masked_cross_entropy_equals_torch_cross_entropy():
    """NT-Xent's cross-entropy is written with a mask (F.cross_entropy's CUDA kernel refuses
    deterministic mode); value and gradient are F.cross_entropy's."""
    torch.manual_seed(3)
    z_a, z_b = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    loss = nt_xent(z_a, z_b, 0.2)
    loss.backward()
    a, b = z_a.detach().clone().requires_grad_(), z_b.detach().clone().requires_grad_()
    na, nb = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    z = torch.cat([na, nb])
    logits = (z @ z.T / 0.2).fill_diagonal_(torch.finfo(torch.float32).min)
    ref = torch.nn.functional.cross_entropy(logits, torch.cat([torch.arange(6, 12), torch.arange(6)]))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(z_a.grad, a.grad)
    torch.testing.assert_close(z_b.grad, b.grad)
