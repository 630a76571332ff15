"""A job driver started in Ray's working_dir folder moves to a stable copy (the re-run itself is tested
by tests/integration/test_job_submit.py on a real two-raylet cluster)."""

import os

from clmr_ray.job_workdir import COMPLETE, leave_ray_package, ray_package, stable_copy


def package_tree(tmp_path):
    package = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (package / "ablations").mkdir(parents=True)
    (package / "ablations" / "table1.yaml").write_text("name: table1\n")
    return package


def test_only_a_ray_working_dir_package_is_recognised(tmp_path):
    package = package_tree(tmp_path)
    assert ray_package(package) == package
    assert ray_package(package / "ablations") is None
    assert ray_package(tmp_path / "working_dir_files") is None
    assert ray_package(tmp_path) is None


def test_the_copy_is_made_once_and_outlives_the_package(tmp_path):
    package = package_tree(tmp_path)
    copy = stable_copy(package, tmp_path / "ray_jobs")
    assert copy == tmp_path / "ray_jobs" / package.name and (copy / COMPLETE).is_file()
    assert (copy / "ablations" / "table1.yaml").read_text() == "name: table1\n"
    (package / "ablations" / "table1.yaml").unlink()  # what Ray's agent does when it unpacks again
    assert stable_copy(package, tmp_path / "ray_jobs") == copy
    assert (copy / "ablations" / "table1.yaml").is_file()
    assert [p.name for p in (tmp_path / "ray_jobs").iterdir()] == [package.name]  # no staging left


def test_outside_a_package_nothing_happens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLMR_RAY_JOB_WORKDIR", raising=False)
    leave_ray_package(["spec"])  # returns: it would have replaced this process otherwise
    assert os.getcwd() == str(tmp_path)
