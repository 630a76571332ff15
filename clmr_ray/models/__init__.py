"""Encoders built by name (timm-style registry), projection/probe heads and the log-mel frontend.

    encoder = build_encoder(EncoderSpec(name="samplecnn"), crop_samples=59049)
    encoder.out_dim  # 512
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from clmr_ray.config import EncoderSpec, SpecError

EncoderBuilder = Callable[[EncoderSpec, int], nn.Module]
ENCODERS: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator adding `fn(spec, crop_samples) -> nn.Module with .out_dim` to ENCODERS."""

    def add(fn: EncoderBuilder) -> EncoderBuilder:
        if name in ENCODERS:
            raise ValueError(f"encoder '{name}' is already registered")
        ENCODERS[name] = fn
        return fn

    return add


def build_encoder(spec: EncoderSpec, *, crop_samples: int) -> nn.Module:
    if spec.name not in ENCODERS:
        close = difflib.get_close_matches(spec.name, list(ENCODERS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpecError(f"encoder.name: unknown encoder '{spec.name}'{hint}; choose one of {', '.join(ENCODERS)}")
    if spec.width <= 0:
        raise SpecError(f"encoder.width: must be > 0, got {spec.width}")
    if spec.out_dim <= 0:
        raise SpecError(f"encoder.out_dim: must be > 0, got {spec.out_dim}")
    return ENCODERS[spec.name](spec, crop_samples)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Registration happens on import; these come last because they use register_encoder.
from clmr_ray.models import resnet_spec, samplecnn  # noqa: F401
from clmr_ray.models.frontend import LogMel
from clmr_ray.models.heads import LinearHead, MLPHead, Projector, build_head

__all__ = [
    "ENCODERS",
    "LinearHead",
    "LogMel",
    "MLPHead",
    "Projector",
    "build_encoder",
    "build_head",
    "count_parameters",
    "register_encoder",
]
