"""A `ray job submit --working-dir DIR` driver moves off the folder Ray unpacked DIR into.

Ray starts the job's driver inside <session>/runtime_resources/working_dir_files/_ray_pkg_<hash>,
with that folder on PYTHONPATH, and the runtime-env agent of a node removes and unpacks that
folder again whenever it sets the package up anew (`download_and_unpack_package(overwrite=True)`).
Two raylets on one host share the folder, so the second one's first worker replaces it under the
running driver: lazy imports fail while it is half unpacked, and once it is back the driver's cwd
is a deleted folder, so anything that calls os.getcwd() (Tune's ExperimentAnalysis after `fit`)
raises FileNotFoundError and the job is reported FAILED although every run finished. A node that
garbage-collects or refreshes the package does the same on a real cluster.

So a driver started there re-runs itself, before doing anything, from a copy of the package under
$CLMR_RAY_DATA/ray_jobs (named by Ray's content hash, so each package is copied once), with that
copy as its cwd and on PYTHONPATH: relative paths keep meaning the same files, and nothing the
driver reads or imports can be removed under it. Ray's own workers still use Ray's folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from .data.base import data_dir

PACKAGES_FOLDER = "working_dir_files"  # Ray's folder of unpacked working_dir packages
PACKAGE_PREFIX = "_ray_pkg_"
COPIED_ENV = "CLMR_RAY_JOB_WORKDIR"  # set in the re-run driver: the copy it runs from
COMPLETE = ".clmr-ray-copy-complete"


def ray_package(folder: Path) -> Path | None:
    """`folder` itself when it is a working_dir package Ray unpacked, else None."""
    if folder.parent.name == PACKAGES_FOLDER and folder.name.startswith(PACKAGE_PREFIX):
        return folder
    return None


def stable_copy(package: Path, root: Path) -> Path:
    """root/<package name>, a complete copy of `package` (made once; concurrent drivers agree)."""
    target = root / package.name
    if (target / COMPLETE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.name}.", dir=root))
    try:
        shutil.copytree(package, staging, symlinks=True, dirs_exist_ok=True)
        (staging / COMPLETE).write_text("")
        os.rename(staging, target)
    except OSError:
        if not (target / COMPLETE).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # another driver's copy got there first
    return target


def leave_ray_package(argv: list[str]) -> None:
    """Re-run this command (`argv`, without the program name) from a stable copy when this process
    is a job driver started inside its working_dir package; return at once otherwise."""
    if os.environ.get(COPIED_ENV):
        return
    try:
        package = ray_package(Path.cwd())
    except FileNotFoundError:
        return
    if package is None:
        return
    copy = stable_copy(package, data_dir() / "ray_jobs")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, COPIED_ENV: str(copy),
           "PYTHONPATH": os.pathsep.join(str(copy) if Path(p) == package else p for p in paths) or str(copy)}
    print(f"clmr-ray: running from {copy}, a copy of the job's working_dir that Ray cannot replace", flush=True)
    os.chdir(copy)
    os.execve(sys.executable, [sys.executable, "-m", "clmr_ray.cli", *argv], env)
