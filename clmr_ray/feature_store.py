"""Frozen features on disk: what one stored encoder computes on the evaluation splits, kept so that a
later experiment probing the same encoder loads them instead of encoding every crop again (Table 2's
single-format and "both" rows probe Table 1's encoders; an ablation of the probe or the fusion
probes the same encoders many times).

A key hashes everything the features depend on: the encoder file's SHA-256, the format's input
(its encoder and mel settings), the evaluation data (the crop cache, whose name carries its content
key), the crop length and the batch size, the version of the code, and what runs the kernels
(device, GPU model or CPU model, capability, pins and threads, torch version). So loaded features are the
ones extraction would compute here, bit for bit, and a run's numbers do not depend on whether an
earlier run left its features behind. Files are written whole with their SHA-256 beside them and
loaded as data only (safe_files); a damaged one is deleted and computed again. Delete the folder to
reclaim its space: nothing else refers to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from . import TRAINING_CODE_VERSION, machine, safe_files
from .config import ExperimentSpec, spec_hash
from .data.base import data_dir
from .evaluate import Features

FEATURES_FORMAT = 1  # bump when a file's layout changes


class FeatureStore:
    """Features per key, as <root>/<key>.pt: {split name: Features} of one encoder on one split set."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else data_dir() / "features"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str, log: Callable[[str], None] = print) -> dict[str, Features] | None:
        """The stored features of `key`, or None (none stored, or a damaged file: one line logged, the
        file deleted, so the caller computes them again)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = safe_files.load_state(path)
            return {name: Features(split["x"], split["track_index"]) for name, split in stored["splits"].items()}
        except safe_files.RefusedFile as exc:
            reason = str(exc)
        except (KeyError, TypeError):
            reason = f"{path}: not a features file"
        log(f"features refused: {reason}")
        safe_files.remove(path)
        return None

    def save(self, key: str, features: dict[str, Features]) -> Path:
        splits = {name: {"x": f.x.contiguous(), "track_index": f.track_index.contiguous()} for name, f in features.items()}
        safe_files.save_state({"format": FEATURES_FORMAT, "splits": splits}, self.root, f"{key}.pt")
        return self.path(key)


def features_key(spec: ExperimentSpec, fmt: str, encoder_sha256: str, cache_path: str | Path,
                 device: str | torch.device) -> str:
    """Content hash of what `fmt`'s features of an encoder (its file's SHA-256) on the crop cache at
    cache_path depend on, computed on `device` by this process (its threads, its kernels)."""
    section = getattr(spec, fmt)
    return f"{fmt}-" + spec_hash({
        "format_version": FEATURES_FORMAT,
        "training_code_version": TRAINING_CODE_VERSION,
        "encoder_sha256": encoder_sha256,
        "input": {name: getattr(section, name) for name in ("encoder", "mel") if hasattr(section, name)},
        "eval_data": Path(cache_path).name,
        "crop_samples": spec.pretrain.crop_samples,
        "batch_size": spec.eval.batch_size,
        "kernels": kernel_context(device),
    })


def kernel_context(device: str | torch.device) -> dict:
    """What picks the kernels that compute features on `device` in this process."""
    device = torch.device(device)
    picked = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        picked.update(gpu=torch.cuda.get_device_name(device), deterministic=torch.are_deterministic_algorithms_enabled(),
                      cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        picked.update(cpu=machine.cpu_model(), capability=torch.backends.cpu.get_cpu_capability(),
                      pins=machine.cpu_pins(), threads=torch.get_num_threads())
    return picked
