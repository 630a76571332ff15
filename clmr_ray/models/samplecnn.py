"""SampleCNN on raw waveforms (Lee et al. 2017, as used by CLMR and the paper)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from clmr_ray.config import EncoderSpec, SpecError
from clmr_ray.models import register_encoder

# Output channels of the strided front conv, then of the 9 blocks, at width 1.0.
CHANNELS = (128, 128, 128, 256, 256, 256, 256, 256, 256, 512)
POOL = 3


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(POOL) if pool else nn.Identity(),
    )


class SampleCNN(nn.Module):
    """Front conv (k3, stride 3) + 9 conv blocks + final BatchNorm + global max-pool.

    Input [B, T] or [B, 1, T]; output [B, out_dim]. A block whose input is already shorter
    than 3 samples (short crops such as 3^8) skips its pooling; any remainder after the last
    block is reduced by the global max-pool. A linear layer maps to out_dim only when the last
    block's width differs from it."""

    def __init__(self, crop_samples: int, width: float = 1.0, out_dim: int = 512):
        super().__init__()
        if crop_samples < 3:
            raise SpecError(f"pretrain.crop_samples: SampleCNN needs at least 3 samples, got {crop_samples}")
        channels = [max(8, round(c * width)) for c in CHANNELS]
        self.front = nn.Sequential(
            nn.Conv1d(1, channels[0], kernel_size=3, stride=3),
            nn.BatchNorm1d(channels[0]),
            nn.ReLU(inplace=True),
        )
        length = crop_samples // 3
        blocks = []
        for c_in, c_out in itertools.pairwise(channels):
            pool = length >= POOL
            blocks.append(_block(c_in, c_out, pool))
            length = length // POOL if pool else length
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm1d(channels[-1])  # the paper's added final 1-D BatchNorm
        self.fc = nn.Linear(channels[-1], out_dim) if channels[-1] != out_dim else nn.Identity()
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        h = self.norm(self.blocks(self.front(x)))
        return self.fc(h.amax(dim=-1))


@register_encoder("samplecnn")
def samplecnn(spec: EncoderSpec, crop_samples: int) -> SampleCNN:
    return SampleCNN(crop_samples, width=spec.width, out_dim=spec.out_dim)
