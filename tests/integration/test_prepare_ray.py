"""`prepare` through real Ray tasks gives the same corpus and cache as a serial run."""

import filecmp
from pathlib import Path

import pytest
import ray

from clmr_ray.cli import main
from clmr_ray.distributed.tasks import ray_imap


@pytest.fixture(scope="module")
def local_ray():
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_imap_keeps_input_order(local_ray):
    assert list(ray_imap(abs, [-3, 1, -2, 5, -8], max_in_flight=2)) == [3, 1, 2, 5, 8]


def _cache_dir(data: Path) -> Path:
    (cache,) = [p for p in (data / "cache").iterdir() if p.name.startswith("synthetic-")]
    return cache


def test_prepare_with_ray_tasks_matches_serial(local_ray, tmp_path, monkeypatch, capsys):
    args = ["prepare", "synthetic", "--preset", "tiny"]
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "ray"))
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "synthetic: cached 60 files" in first and "train 30, valid 10, test 20" in first
    assert "synthetic: 60/60 files decoded" in first  # progress while decoding; the last file always says so
    assert main(args) == 0
    assert "reused cache" in capsys.readouterr().out

    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "serial"))
    assert main(args + ["--serial"]) == 0
    with_ray, serial = _cache_dir(tmp_path / "ray"), _cache_dir(tmp_path / "serial")
    for name in sorted(p.name for p in serial.iterdir() if p.suffix != ".json" and "index" not in p.name):
        assert filecmp.cmp(with_ray / name, serial / name, shallow=False), name
    corpus_ray = next((tmp_path / "ray").glob("synthetic-8000hz-*"))
    corpus_serial = next((tmp_path / "serial").glob("synthetic-8000hz-*"))
    wav = "blues/blues.00003.wav"
    assert filecmp.cmp(corpus_ray / wav, corpus_serial / wav, shallow=False)
