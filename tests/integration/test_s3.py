"""s3:// end to end against a real S3 endpoint on loopback (moto's server): a dataset bucket mirrored
and scanned, an ablation whose records, Tune state and encoders live in a bucket, and the tables
built from there. The code under test sees only `s3://...` URIs; AWS_ENDPOINT_URL (read by pyarrow,
as on MinIO or any S3-compatible store) points them at the local server."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray

from clmr_ray.cli import main
from clmr_ray.config import DataSpec
from clmr_ray.data import mirror, registry
from clmr_ray.data.base import DatasetError
from clmr_ray.results import read_records

pytestmark = pytest.mark.slow

MOTO = Path(sys.executable).parent / "moto_server"
BUCKET = "clmr"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server():
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = _free_port()
        server = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline and server.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return server, port
            except OSError:
                time.sleep(0.2)
        server.kill()
        server.wait()
    pytest.fail("moto_server did not start")


@pytest.fixture(scope="module")
def s3():
    server, port = _start_server()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                                   access_key="testing", secret_key="testing", allow_bucket_creation=True)
            fs.create_dir(BUCKET)
            yield fs
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def upload_folder(fs, local: Path, key: str) -> str:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        with fs.open_output_stream(f"{BUCKET}/{key}/{path.relative_to(local).as_posix()}") as out:
            out.write(path.read_bytes())
    return f"s3://{BUCKET}/{key}"


def test_dataset_bucket_is_mirrored_and_scanned(s3, tmp_path, make_songs, data_home):
    songs = make_songs(tmp_path / "songs")
    uri = upload_folder(s3, songs, "datasets/songs")
    assert mirror.check(uri) == 10
    copy = mirror.fetch(uri, log=lambda _: None)
    for path in songs.rglob("*.wav"):
        assert (copy / path.relative_to(songs)).read_bytes() == path.read_bytes()
    listing = registry.scan(DataSpec(dataset="folder", root=uri, sample_rate=8000))
    assert len(listing.tracks) == 10
    with pytest.raises(DatasetError, match="nothing-here: no such folder"):
        mirror.check(f"s3://{BUCKET}/datasets/nothing-here")


def test_ablation_on_s3_results_then_tables_from_the_bucket(s3, tmp_path, make_songs, one_row_ablation,
                                                            data_home, capsys):
    from clmr_ray.ablation_files import load_ablation
    from clmr_ray.distributed.ablate import run_ablation

    songs = upload_folder(s3, make_songs(tmp_path / "songs"), "datasets/songs2")
    (tmp_path / "s3mini.yaml").write_text(one_row_ablation("s3mini"))
    results = f"s3://{BUCKET}/results"
    extra = {"data.dataset": "folder", "data.root": songs}
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")  # workers get AWS_*
    try:
        outcome = run_ablation(load_ablation(tmp_path / "s3mini.yaml"), "tiny", results_dir=results, extra=extra,
                               log=lambda *_: None)
        assert not outcome.failed and len(outcome.finished) == 1, outcome.failed
        again = run_ablation(load_ablation(tmp_path / "s3mini.yaml"), "tiny", results_dir=results, extra=extra,
                             log=lambda *_: None)
        assert again.skipped == outcome.finished and again.finished == []
    finally:
        ray.shutdown()

    records = read_records(f"{results}/runs")
    assert len(records) == 1 and 0.0 <= records["test_acc"].iloc[0] <= 1.0
    names = {info.base_name for info in s3.get_file_info(pafs.FileSelector(f"{BUCKET}/results", recursive=True))}
    assert any(name.startswith("audio-") and name.endswith(".pt") for name in names)  # the shared encoder
    assert not [name for name in names if name.endswith(".partial")]

    assert main(["tables", results]) == 0
    assert f"{results}/s3mini.*" in capsys.readouterr().out
    with s3.open_input_stream(f"{BUCKET}/results/s3mini.md") as stream:
        assert "audio" in stream.read().decode()
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
