"""SpecAugment-style masks on batches of spectrograms [N, C, F, T], per-example widths/positions."""

from __future__ import annotations

import torch

FREQ_DIM = -2
TIME_DIM = -1


def mask_along_axis(
    spec: torch.Tensor,
    max_width: int,
    dim: int,
    generator: torch.Generator | None = None,
    selected: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """One mask per example along dim (FREQ_DIM or TIME_DIM) of spec [N, C, F, T].

    Width is a whole number drawn uniformly in [0, max_width] (mean max_width / 2), the
    start uniformly among the positions where the mask fits. Masked cells are set to value
    [N] (default: each example's own mean, which is 0 after LogMel's standardisation).
    Examples where selected [N] (bool) is False are left as they are."""
    n = spec.shape[0]
    width_u = torch.rand(n, generator=generator, device=spec.device)
    start_u = torch.rand(n, generator=generator, device=spec.device)
    return mask_span(spec, max_width, dim, width_u, start_u, selected, value)


def mask_span(
    spec: torch.Tensor,
    max_width: int,
    dim: int,
    width_u: torch.Tensor,
    start_u: torch.Tensor,
    selected: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """mask_along_axis with its two uniform draws in [0, 1) given: width_u and start_u [N]."""
    n, size = spec.shape[0], spec.shape[dim]
    device = spec.device
    max_width = min(int(max_width), size)
    width = (width_u * (max_width + 1)).long().clamp_max(max_width)
    start = (start_u * (size - width + 1)).long()
    if selected is not None:
        width = width * selected
    position = torch.arange(size, device=device)
    mask = (position >= start[:, None]) & (position < (start + width)[:, None])  # [N, size]
    shape = [n] + [1] * (spec.dim() - 1)
    shape[dim] = size
    if value is None:
        value = spec.mean(dim=tuple(range(1, spec.dim())))
    return torch.where(mask.view(shape), value.view(-1, *[1] * (spec.dim() - 1)).to(spec.dtype), spec)


def frequency_mask(spec, max_width, generator=None, selected=None, value=None):
    return mask_along_axis(spec, max_width, FREQ_DIM, generator, selected, value)


def time_mask(spec, max_width, generator=None, selected=None, value=None):
    return mask_along_axis(spec, max_width, TIME_DIM, generator, selected, value)
