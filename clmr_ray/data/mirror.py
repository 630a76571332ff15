"""A dataset folder given as a URI (s3://bucket/gtzan, gs://..., file:///...) is copied once per node.

Every node that scans such a dataset fetches it into its own `<data dir>/mirrors/<name>-<hash>/`
and caches crops from there, so a cluster without a shared file system still reads the same data
everywhere: the per-node `prepare` of the README. A mirror is finished when its `.complete` file
exists; until then every file is fetched to a hidden temporary name and renamed, and a later call fetches
only what is missing or differs in size (an interrupted download resumes). One process per node
fetches at a time (file lock); the others wait and then use the finished mirror. A finished mirror
is not compared with the bucket again: delete its folder to fetch a changed dataset.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .. import storage
from .base import DatasetError, data_dir, file_lock

COMPLETE = ".complete"


def mirror_dir(uri: str, root: Path | None = None) -> Path:
    uri = str(uri).rstrip("/")
    name = uri.rsplit("/", 1)[-1] or "dataset"
    return (root or data_dir() / "mirrors") / f"{name}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"


def local_root(root: str, *, log=print) -> str:
    """`root` unchanged when it is a local folder; for a URI, the path of this node's mirror of it."""
    if not storage.is_uri(root):
        return root
    return str(fetch(root, log=log))


def check(uri: str) -> int:
    """The number of files under `uri`; a missing, empty or unreadable folder is a one-line error."""
    return len(_remote_files(str(uri).rstrip("/"))[2])


def fetch(uri: str, *, mirrors: Path | None = None, log=print) -> Path:
    target = mirror_dir(uri, mirrors)
    if (target / COMPLETE).is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if not (target / COMPLETE).is_file():  # another process may have finished it while we waited
            _copy_tree(str(uri).rstrip("/"), target, log)
    return target


def _remote_files(uri: str):
    import pyarrow.fs

    fs, base = storage.filesystem(uri, what="dataset", error=DatasetError)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
    except FileNotFoundError:
        raise DatasetError(f"dataset {uri}: no such folder") from None
    except OSError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetError(f"dataset {uri}: cannot list it ({reason})") from None
    files = [(info.path[len(base):].lstrip("/"), info.size) for info in infos
             if info.type == pyarrow.fs.FileType.File]
    if not files:
        raise DatasetError(f"dataset {uri}: the folder holds no files")
    return fs, base, sorted(files)


def _copy_tree(uri: str, target: Path, log) -> None:
    fs, base, files = _remote_files(uri)
    missing = [(rel, size) for rel, size in files
               if not (target / rel).is_file() or (target / rel).stat().st_size != size]
    total = sum(size for _, size in missing)
    log(f"mirroring {uri}: {len(missing)} of {len(files)} files ({total / 1e6:.1f} MB) -> {target}")
    started = last_report = time.perf_counter()
    done_bytes = 0
    for i, (rel, size) in enumerate(missing, 1):
        local = target / rel
        storage.write_file(local.parent, local.name, lambda path, rel=rel: _fetch_file(fs, f"{base}/{rel}", path))
        done_bytes += size
        now = time.perf_counter()
        if now - last_report > 10 or i == len(missing):
            rate = done_bytes / 1e6 / max(now - started, 1e-9)
            log(f"  {i}/{len(missing)} files, {done_bytes / 1e6:.1f} MB ({rate:.1f} MB/s)")
            last_report = now
    (target / COMPLETE).write_text(json.dumps({"uri": uri, "files": len(files),
                                               "bytes": sum(size for _, size in files)}))


def _fetch_file(fs, remote_path: str, local: Path) -> None:
    with open(local, "wb") as sink:
        storage.copy_stream(fs, remote_path, sink)
