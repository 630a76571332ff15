"""Where results live: a local folder or a pyarrow filesystem URI (file://, s3://, gs://, ...).

Local folders stay plain paths (`Path`), so everything that worked on one machine works unchanged;
a URI stays a string and is read and written through `pyarrow.fs`, which is also what Ray Tune and
Ray Train use for their `storage_path`.
"""

from __future__ import annotations

from pathlib import Path

from .config import SpecError


def is_uri(location) -> bool:
    return "://" in str(location)


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


def filesystem(location):
    """(pyarrow FileSystem, path inside it) for a folder or a URI; a bad URI is one line naming it."""
    import pyarrow.fs

    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    try:
        return pyarrow.fs.FileSystem.from_uri(str(location))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad URI
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SpecError(f"storage {str(location)!r}: not a usable filesystem URI ({reason})") from None


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
