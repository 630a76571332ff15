"""SampleCNN on raw waveforms (Lee et al. 2017, as used by CLMR and the paper)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from clmr_ray.config import EncoderSpec, SpecError
from clmr_ray.models import register_encoder

# Output channels of the strided front conv, then of the 9 blocks, at width 1.0.
CHANNELS = (128, 128, 128, 256, 256, 256, 256, 256, 256, 512)
POOL = 3


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """Conv, BatchNorm, max-pool, ReLU: the usual block with its ReLU moved after the pooling. Max
    and ReLU commute (ReLU never reorders values), so the outputs and every gradient are bit for
    bit those of the usual order, and the ReLU passes over a third of the samples."""
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm1d(c_out),
        nn.MaxPool1d(POOL) if pool else nn.Identity(),
        nn.ReLU(inplace=True),
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
        self.channels_last = False  # see forward_channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if self.channels_last:
            return self.forward_channels_last(x)
        h = self.norm(self.blocks(self.front(x)))
        return self.fc(h.amax(dim=-1))

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same function on [B, C, 1, T] in channels-last memory ([B, T, C] in order): each
        Conv1d as a 1 x k Conv2d with the same weights, BatchNorm and max-pool on the 4-D tensor.
        On a GPU the convolutions then run in the tensor cores' native layout (cuDNN transposes
        [B, C, T] to and from it around every convolution otherwise) and BatchNorm reduces over
        contiguous channels. The parameters are the module's own: state dicts do not change."""
        h = self._front_conv_channels_last(x)
        for layer in [*self.front[1:], *itertools.chain.from_iterable(self.blocks), self.norm]:
            if isinstance(layer, nn.Conv1d):
                weight = layer.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
                h = F.conv2d(h, weight, layer.bias, stride=(1, layer.stride[0]), padding=(0, layer.padding[0]))
            elif isinstance(layer, nn.MaxPool1d):
                h = F.max_pool2d(h, (1, layer.kernel_size))
            else:  # BatchNorm1d and ReLU take any trailing dimensions; Identity
                h = _norm_4d(layer, h) if isinstance(layer, nn.BatchNorm1d) else layer(h)
        return self.fc(h.amax(dim=(2, 3)))

    def _front_conv_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The front conv (kernel = stride = 3: windows that do not overlap) as one matrix product of
        the [B, T / 3, 3] windows with its [3, C] weights, which leaves [B, T / 3, C]: channels-last
        memory of [B, C, 1, T / 3]. As a Conv2d on its one input channel the output came back in
        NCHW (one channel is both layouts, and cuDNN keeps NCHW), and the first BatchNorm and block
        then ran on that layout: on an H200 a paper step's kernels took 24.5 ms that way, 16.2 this way."""
        conv = self.front[0]
        (k,), (stride,) = conv.kernel_size, conv.stride
        assert k == stride and conv.in_channels == 1 and conv.padding == (0,)
        frames = (x.shape[-1] - k) // stride + 1
        windows = x[:, 0, : frames * k].reshape(x.shape[0], frames, k)
        h = F.linear(windows, conv.weight.view(conv.out_channels, k), conv.bias)
        return h.unsqueeze(1).permute(0, 3, 1, 2)


def _norm_4d(norm: nn.BatchNorm1d, h: torch.Tensor) -> torch.Tensor:
    """What BatchNorm1d's forward does, on a 4-D tensor (the module itself refuses 4-D input)."""
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:  # cumulative average
            factor = 1.0 / float(norm.num_batches_tracked)
    batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
    track = not norm.training or norm.track_running_stats
    return F.batch_norm(h, norm.running_mean if track else None, norm.running_var if track else None,
                        norm.weight, norm.bias, batch_stats, factor, norm.eps)


@register_encoder("samplecnn")
def samplecnn(spec: EncoderSpec, crop_samples: int) -> SampleCNN:
    return SampleCNN(crop_samples, width=spec.width, out_dim=spec.out_dim)
