"""Stored training states (encoders, Ray Train checkpoints) written and read as data only.

Whatever another node or a bucket wrote is untrusted: anyone who can write to a shared results
prefix could place a pickle that runs code when unpickled. So every state is loaded with
`torch.load(weights_only=True)` (tensors, numbers, strings, lists, tuples, dicts; never an
arbitrary object), and every state written gets its SHA-256 beside it as `<name>.sha256`. A file
whose hash does not match (truncated by half an upload, corrupt, replaced without its hash), that
has no hash, or that needs more than plain data is refused with one line naming it. The hash
catches damage; it is no signature, since whoever can write the file can write its hash: what keeps
code from running is weights_only.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

from . import storage
from .data.base import DatasetError

HASH_SUFFIX = ".sha256"


class RefusedFile(DatasetError):
    """A stored state that was not loaded (its hash, its format or its content); one line naming it."""


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def hash_name(name: str) -> str:
    return f"{name}{HASH_SUFFIX}"


def recorded_sha256(path) -> str | None:
    """The SHA-256 written beside `path` (None when there is none)."""
    beside = Path(path).with_name(hash_name(Path(path).name))
    if not beside.is_file():
        return None
    return beside.read_text().strip() or None


def save_state(payload: dict, folder, name: str) -> str:
    """Write `payload` as folder/name (a local folder or a URI) with its SHA-256 beside it, each file
    whole or not at all; returns the hash. The hash lands first, so whoever sees the state sees its hash."""
    import torch

    written = {}

    def write(path: Path) -> None:
        torch.save(payload, path)
        written["sha256"] = sha256_of(path)
        storage.write_text(folder, hash_name(name), written["sha256"] + "\n")

    storage.write_file(folder, name, write)
    return written["sha256"]


def load_state(path, shown: str | None = None) -> dict:
    """Load a state written by `save_state`, as data only; RefusedFile (naming `shown`, default the
    path) when its hash is missing or does not match, or when it is not plain data."""
    import torch

    shown = shown or str(path)
    expected = recorded_sha256(path)
    if expected is None:
        raise RefusedFile(f"{shown}: no SHA-256 recorded beside it ({hash_name(Path(path).name)}); not loaded")
    actual = sha256_of(path)
    if actual != expected:
        raise RefusedFile(f"{shown}: SHA-256 {actual[:16]}... does not match the recorded {expected[:16]}... "
                          "(truncated, corrupt or replaced); not loaded")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise RefusedFile(f"{shown}: holds more than tensors and plain data (it needs "
                          f"{needs.group(1) if needs else 'an object'}); refused, nothing in it was run") from None
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged archive
        raise RefusedFile(f"{shown}: not a readable torch file ({first_line(exc)}); not loaded") from None


def remove(path) -> None:
    """Delete a refused local state and its hash, so it is fetched again or re-trained."""
    for each in (Path(path), Path(path).with_name(hash_name(Path(path).name))):
        each.unlink(missing_ok=True)


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
