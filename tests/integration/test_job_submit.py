"""`ray job submit -- clmr-ray ...` against a real two-node Ray cluster on loopback.

Two `ray start` processes (a head with 2 CPUs, a second raylet with 1) form the cluster; the job
server listens on 127.0.0.1 only. Token authentication is on, as on a real cluster: the token lives
in a file that every `ray` command finds through RAY_AUTH_TOKEN_PATH. Teardown kills exactly the
processes of this cluster (found by its temp dir), never `ray stop`, which would stop every Ray on
the machine.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
CLMR_RAY = str(BIN / "clmr-ray")

REPO = Path(__file__).resolve().parents[2]
TABLE1_ROWS = ["audio_crop", "audio_crop_noise", "audio_all", "spectrogram_time_mask", "spectrogram_all"]

ABLATION = """\
name: jobmini
seeds: [0]
base:
  pretrain.epochs: 1
  eval.epochs: 5
  audio.augment.pitch.enabled: false
rows:
  - id: audio
    label: audio, linear probe
    overrides: {format: audio}
"""

BAD_ABLATION = ABLATION.replace("pretrain.epochs: 1", "pretrain.epoks: 1")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def node_ports(agent_grpc, agent_http, metrics, runtime_env) -> list[str]:
    """Ports Ray would otherwise take at fixed defaults (52365, ...): two nodes on one host clash."""
    return ["--dashboard-agent-grpc-port", str(agent_grpc), "--dashboard-agent-listen-port", str(agent_http),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env)]


def cluster_pids(temp_dir: str) -> list[int]:
    """Every process whose command line names this cluster's temp dir (raylets, GCS, agents, workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_cluster(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_pids(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 3
        while cluster_pids(temp_dir) and time.time() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="clmr", dir="/tmp")  # short: Ray's unix sockets live under it
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, client, *rest = free_ports(11)
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--port", str(gcs),
                        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                        "--ray-client-server-port", str(client), *common, *node_ports(*rest[:4])],
                       env=env, check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", "1", *common,
                        *node_ports(*rest[4:8])], env=env, check=True, capture_output=True, text=True, timeout=120)
        yield {"env": env, "address": f"http://127.0.0.1:{dashboard}", "temp_dir": temp_dir}
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"ray start failed: {exc.stderr[-2000:]}")
    finally:
        kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_job(cluster, *args, timeout=150) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, "job", *args[:1], "--address", cluster["address"], *args[1:]], env=cluster["env"],
                          capture_output=True, text=True, timeout=timeout, check=False)


def submit(cluster, job_id: str, workdir: Path, entrypoint: list[str], env_vars: dict) -> subprocess.CompletedProcess:
    """Blocks until the job ends, printing its logs (the default of `ray job submit`)."""
    return ray_job(cluster, "submit", "--submission-id", job_id, "--working-dir", str(workdir),
                   "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *entrypoint)


def status(cluster, job_id: str) -> str:
    out = ray_job(cluster, "status", job_id, timeout=60)
    text = (out.stdout + out.stderr).lower()
    for state in ("succeeded", "failed", "stopped", "running", "pending"):
        if f"job '{job_id}' {state}" in text or f"status for job '{job_id}': {state}" in text:
            return state.upper()
    return text


def repository_copy(dest: Path) -> Path:
    """The repository's files as a user has them (tracked and untracked, not ignored): the working_dir."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_job_runs_an_ablation_on_the_cluster(cluster, tmp_path):
    """The README's command from the repository root: every row of Table 1 as trials on both raylets.

    On one host both raylets unpack the job's working_dir into the same folder, and the second one
    replaces it (removes, then unpacks again) when its first trial starts: the driver's cwd is gone
    under it. The job must still report what happened (SUCCEEDED, every record written)."""
    workdir = repository_copy(tmp_path / "repo")
    results = tmp_path / "results"
    env_vars = {"CLMR_RAY_DATA": str(tmp_path / "data")}

    # a job driver sees RAY_ADDRESS, so ensure_ray joins the cluster (both raylets: 3 CPUs)
    script = ("import os, ray; from clmr_ray.distributed.tasks import ensure_ray; ensure_ray(); "
              "print('address', os.environ['RAY_ADDRESS'], 'cpus', ray.cluster_resources()['CPU'])")
    probe = submit(cluster, "clmr-probe", workdir, [sys.executable, "-c", script], env_vars)
    assert status(cluster, "clmr-probe") == "SUCCEEDED", probe.stdout[-3000:] + probe.stderr[-3000:]
    assert "cpus 3.0" in probe.stdout, probe.stdout[-3000:]

    # results as a filesystem URI (file:// here, s3:// on a cloud cluster): records and Tune state go there
    job = submit(cluster, "clmr-ablate", workdir, [CLMR_RAY, "ablate", "ablations/table1.yaml", "--preset", "tiny",
                                                   "--seeds", "0", "--results", f"file://{results}",
                                                   "--set", "pretrain.epochs=1", "--set", "eval.epochs=5"], env_vars)
    assert status(cluster, "clmr-ablate") == "SUCCEEDED", job.stdout[-4000:] + job.stderr[-4000:]
    records = [pq.read_table(p).to_pylist()[0] for p in sorted((results / "runs").glob("*.parquet"))]
    assert sorted(r["row"] for r in records) == sorted(TABLE1_ROWS)
    assert all(r["table"] == "table1" and 0.0 <= r["test_acc"] <= 1.0 for r in records)
    assert "5/5 runs have records" in job.stdout
    assert (results / "tune" / "ablate-table1").is_dir()
    # the fault did happen: the second raylet replaced the folder the driver was started in
    assert "a copy of the job's working_dir" in job.stdout
    setup_logs = "".join(p.read_text(errors="replace")
                         for p in (Path(cluster["temp_dir"]) / "session_latest" / "logs").glob("runtime_env*.log"))
    assert re.search(r"Removing \S+/working_dir_files/_ray_pkg_", setup_logs), "the working_dir was never replaced"


def test_failed_job_shows_the_one_line_error(cluster, tmp_path):
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "bad.yaml").write_text(BAD_ABLATION)
    submit(cluster, "clmr-bad", workdir, [CLMR_RAY, "ablate", "bad.yaml", "--preset", "tiny",
                                          "--results", str(tmp_path / "results")],
           {"CLMR_RAY_DATA": str(tmp_path / "data")})
    assert status(cluster, "clmr-bad") == "FAILED"
    logs = ray_job(cluster, "logs", "clmr-bad", timeout=60).stdout
    errors = [line for line in logs.splitlines() if line.startswith("clmr-ray: error:")]
    assert len(errors) == 1 and "epoks" in errors[0], logs[-3000:]
    assert not (tmp_path / "results").exists()
