"""Batched, on-device augmentations with per-example random parameters.

audio.py and spectrogram.py are the functional ops; pipeline.AugmentPipeline composes them
from an AugmentSpec."""

from clmr_ray.augment.pipeline import AugmentPipeline

__all__ = ["AugmentPipeline"]
