"""Folders that are a local path or a pyarrow filesystem URI (file://, s3://, gs://, ...): results,
Tune state, shared encoders and dataset buckets. Depends on config only, so any layer may use it.

Local folders stay plain paths (`Path`), so everything that worked on one machine works unchanged;
a URI stays a string and is read and written through `pyarrow.fs`, which is also what Ray Tune and
Ray Train use for their `storage_path`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .config import SpecError


def is_uri(location) -> bool:
    return "://" in str(location)


def expand(location) -> str:
    """A local path with ~ expanded, a URI as given (Path() would turn s3://b into s3:/b)."""
    return str(location) if is_uri(location) else str(Path(location).expanduser())


def resolve(location) -> Path | str:
    """A local folder as an absolute Path; a URI checked by pyarrow and returned as given."""
    if not is_uri(location):
        return Path(location).expanduser().resolve()
    filesystem(location)
    return str(location).rstrip("/")


def join(location, *parts: str) -> Path | str:
    if not is_uri(location):
        return Path(location).joinpath(*parts)
    return "/".join([str(location).rstrip("/"), *parts])


def filesystem(location, what: str = "storage", error=SpecError):
    """(pyarrow FileSystem, path inside it) for a folder or a URI; a bad URI is one line naming it."""
    import pyarrow.fs

    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    try:
        return pyarrow.fs.FileSystem.from_uri(str(location))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad URI
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise error(f"{what} {str(location)!r}: not a usable filesystem URI ({reason})") from None


def list_names(folder, suffix: str) -> list[str]:
    """Names of the files directly in `folder` ending with `suffix` (none when it does not exist)."""
    import pyarrow.fs

    fs, path = filesystem(folder)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos
                  if info.type == pyarrow.fs.FileType.File and info.base_name.endswith(suffix))


def upload(local_file, folder, name: str | None = None) -> str:
    """Copy a local file into `folder` (a URI) as `name`: whole or not at all, even on file://."""
    import pyarrow.fs

    fs, path = filesystem(folder)
    name = name or Path(local_file).name
    fs.create_dir(path, recursive=True)
    staging = f"{path}/.{name}.partial"
    pyarrow.fs.copy_files(str(local_file), staging, destination_filesystem=fs)
    fs.move(staging, f"{path}/{name}")  # a rename on file:// and HDFS; object stores see one finished PUT
    return str(join(folder, name))


def exists(location) -> bool:
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def copy_stream(fs, path: str, sink) -> None:
    """Copy file `path` of pyarrow filesystem `fs` into the open binary file `sink`, in chunks."""
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 22):
            sink.write(chunk)


def download(location, local_file) -> None:
    """Copy the file at `location` (a path or a URI) to the local path `local_file`."""
    with open(local_file, "wb") as sink:
        copy_stream(*filesystem(location), sink)


def read_text(location) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_file(folder, name: str, write: Callable[[Path], None]) -> Path | str:
    """Make folder/name with `write(path)` so that readers see the whole file or none: a hidden temp
    file renamed into place in a local folder; written locally, then uploaded, for a URI."""
    if is_uri(folder):
        with tempfile.TemporaryDirectory(prefix="clmr-upload-") as staging:
            local = Path(staging) / name
            write(local)
            return upload(local, folder, name)
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the rest of a team
        os.replace(tmp, folder / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return folder / name


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(folder, name: str, text: str) -> Path | str:
    return write_file(folder, name, lambda path: path.write_text(text))
