"""Run records in a local folder or behind a pyarrow filesystem URI (file:// here; s3:// the same way)."""

import os
import stat
from pathlib import Path

import pytest

from clmr_ray import storage
from clmr_ray.config import SpecError
from clmr_ray.results import existing_run_ids, read_records, record_paths, write_record


def record(run_id, **extra):
    return {"run_id": run_id, "table": "t", "row": "r", "test_acc": 0.5, **extra}


def test_records_round_trip_through_a_file_uri(tmp_path):
    runs = f"file://{tmp_path}/results/runs"
    assert read_records(runs).empty and existing_run_ids(runs) == set()  # a missing folder is no records
    written = write_record(record("a"), runs)
    write_record(record("b", extra_metric=1.0), runs)
    assert written == f"{runs}/a.parquet"
    assert (tmp_path / "results" / "runs" / "a.parquet").is_file()
    assert not list((tmp_path / "results" / "runs").glob(".*"))  # no staging file left behind
    assert existing_run_ids(runs) == {"a", "b"}
    assert record_paths(runs) == [f"{runs}/a.parquet", f"{runs}/b.parquet"]
    frame = read_records(runs).set_index("run_id")
    assert frame.loc["a", "test_acc"] == 0.5 and frame["extra_metric"].isna().sum() == 1
    # the same folder read as a plain path sees the same records
    assert existing_run_ids(tmp_path / "results" / "runs") == {"a", "b"}


def test_rewriting_a_record_replaces_it(tmp_path):
    runs = f"file://{tmp_path}/runs"
    write_record(record("a"), runs)
    write_record(record("a", test_acc=0.75), runs)
    assert read_records(runs)["test_acc"].tolist() == [0.75]


def test_local_paths_stay_paths(tmp_path):
    assert storage.resolve(tmp_path / "x") == tmp_path / "x"
    assert storage.join(tmp_path, "runs") == tmp_path / "runs"
    assert storage.join("s3://bucket/prefix/", "runs") == "s3://bucket/prefix/runs"
    assert storage.resolve(f"file://{tmp_path}/") == f"file://{tmp_path}"


def test_a_bad_uri_is_one_line_naming_it():
    with pytest.raises(SpecError, match=r"storage 'nosuchfs://x/y': not a usable filesystem URI") as err:
        storage.resolve("nosuchfs://x/y")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    """Not mkstemp's 0600: a results folder shared by a team stays readable where the umask allows."""
    before = os.umask(umask)
    try:
        path = storage.write_text(tmp_path, "table.md", "| a |\n")
    finally:
        os.umask(before)
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o666 & ~umask
