"""Waveform -> log-mel spectrogram, computed on the training device."""

from __future__ import annotations

import torch
import torchaudio.transforms as T
from torch import nn

from clmr_ray.config import MelSpec


class LogMel(nn.Module):
    """[B, T] (or [B, 1, T]) waveforms -> [B, 1, n_mels, frames] float32 log-mel in dB.

    Always computed in float32, even under autocast. top_db clamps each example relative
    to its own peak. With standardize=True (default) each example is then shifted and scaled
    to zero mean and unit variance over (mel, frame): the overall loudness carries no genre,
    and the ResNet stem then sees inputs of a fixed scale whatever the recording level. A
    silent example maps to all zeros."""

    def __init__(self, sample_rate: int, mel: MelSpec, standardize: bool = True):
        super().__init__()
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=mel.n_fft,
            hop_length=mel.hop_length,
            n_mels=mel.n_mels,
            f_min=mel.f_min,
            f_max=mel.f_max,
            power=2.0,
        )
        self.to_db = T.AmplitudeToDB(stype="power", top_db=mel.top_db)
        self.standardize = standardize

    def frames(self, samples: int) -> int:
        return samples // self.mel.hop_length + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # [B, 1, M, F]: the 4-D shape keeps top_db per example (not per batch).
            db = self.to_db(self.mel(x.float()))
            if self.standardize:
                mean = db.mean(dim=(-2, -1), keepdim=True)
                std = db.std(dim=(-2, -1), keepdim=True)
                db = (db - mean) / (std + 1e-5)
        return db
