"""Dataset name -> listing. Real datasets need a root; synthetic ones are generated on first
use and then read by the same loaders as real data (folder layout / MagnaTagATune layout)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import DataSpec, spec_hash
from .base import DatasetError, Listing, data_dir
from .folder import scan_folder
from .gtzan import scan_gtzan
from .mirror import local_root
from .mtat import scan_mtat

DATASETS = ("synthetic", "synthetic_tags", "gtzan", "mtat", "folder")


def synthetic_root(spec: DataSpec) -> Path:
    """Where a synthetic corpus lives: spec.root, else one folder per (kind, rate, corpus spec)."""
    if spec.root is not None:
        return Path(spec.root).expanduser()
    return data_dir() / f"{spec.dataset}-{spec.sample_rate}hz-{spec_hash(spec.synthetic)}"


def scan(spec: DataSpec, map_fn: Callable = map) -> Listing:
    name = spec.dataset
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (valid: {', '.join(DATASETS)})")
    if name in ("synthetic", "synthetic_tags"):
        return _scan_synthetic(spec, map_fn)
    if spec.root is None:
        raise DatasetError(
            f"dataset '{name}' needs its folder: pass --root PATH or set data.root in the spec"
        )
    root = local_root(spec.root)  # a URI: this node's copy of it
    if name == "gtzan":
        return scan_gtzan(root)
    if name == "mtat":
        return scan_mtat(root)
    return scan_folder(root, split_seed=spec.split_seed)


def _scan_synthetic(spec: DataSpec, map_fn: Callable) -> Listing:
    from . import synthetic

    root = synthetic_root(spec)
    # Generation is a no-op when the corpus is complete and resumes one left half-written.
    if spec.dataset == "synthetic":
        synthetic.generate_genres(root, spec.synthetic, spec.sample_rate, map_fn=map_fn)
        return scan_folder(root, split_seed=spec.split_seed, name="synthetic")
    synthetic.generate_tags(root, spec.synthetic, spec.sample_rate, map_fn=map_fn)
    return scan_mtat(root, name="synthetic_tags")
