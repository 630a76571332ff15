"""ResNets on log-mel spectrograms [B, 1, n_mels, frames] (torchvision, trained from scratch).

spec.width is ignored for ResNets (torchvision fixes the stage widths at 64..512); the
tiny/demo presets use the shallower "resnet10" instead."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from clmr_ray.config import EncoderSpec
from clmr_ray.models import register_encoder

RESNET_DIM = 512  # channels of the last BasicBlock stage


class GlobalAvgPool2d(nn.Module):
    """The mean over frequency and time. torchvision's AdaptiveAvgPool2d((1, 1)) computes the same,
    but its CUDA backward has no deterministic kernel (scaling.deterministic refuses it)."""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class SpectrogramResNet(nn.Module):
    """A torchvision ResNet with a 1-channel stem and no classifier: [B, 1, F, T] -> [B, out_dim]."""

    def __init__(self, net: ResNet, out_dim: int = RESNET_DIM):
        super().__init__()
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.avgpool = GlobalAvgPool2d()
        net.fc = nn.Identity()
        self.net = net
        self.fc = nn.Linear(RESNET_DIM, out_dim) if out_dim != RESNET_DIM else nn.Identity()
        self.out_dim = out_dim

    def forward(self, x):
        return self.fc(self.net(x))


@register_encoder("resnet18")
def resnet18(spec: EncoderSpec, crop_samples: int) -> SpectrogramResNet:
    return SpectrogramResNet(tv_resnet18(weights=None), spec.out_dim)


@register_encoder("resnet10")
def resnet10(spec: EncoderSpec, crop_samples: int) -> SpectrogramResNet:
    return SpectrogramResNet(ResNet(BasicBlock, [1, 1, 1, 1]), spec.out_dim)
