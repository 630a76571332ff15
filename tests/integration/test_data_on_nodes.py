"""The two ways data reaches the workers of a multi-node cluster (README, Clusters), on a real
two-node Ray cluster (`ray.cluster_utils.Cluster`, one machine, one CPU per node).

1. A shared path: every node sees the same $CLMR_RAY_DATA; the driver prepares a dataset once and
   a run on the other node opens that cache as it is.
2. Per-node prepare from a bucket: each node has its own $CLMR_RAY_DATA (set per raylet here, as
   on separate machines) and the dataset root is a URI (file:// here, s3:// on AWS); a run on each
   node fetches its own mirror and builds its own cache, with identical crops.
"""

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from clmr_ray import config
from clmr_ray.experiment import prepare_caches

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster_factory(monkeypatch, tmp_path):
    monkeypatch.setenv("CLMR_RAY_DATA", str(tmp_path / "driver-data"))
    made = []

    def start(head_data, node_data, head_cpus=1):
        ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "include_dashboard": False, "env_vars": {"CLMR_RAY_DATA": str(head_data)}})
        cluster.add_node(num_cpus=1, env_vars={"CLMR_RAY_DATA": str(node_data)})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        made.append(cluster)
        return [node["NodeID"] for node in ray.nodes() if node["Alive"]]

    yield start
    ray.shutdown()
    for cluster in made:
        cluster.shutdown()


@ray.remote(num_cpus=1)
def prepare_on_this_node(spec):
    import os

    eval_cache, _ = prepare_caches(spec)
    return {"data_dir": os.environ["CLMR_RAY_DATA"], "cache": str(eval_cache.path),
            "node": ray.get_runtime_context().get_node_id(),
            "audio": np.array(eval_cache.split("train").audio)}


def on_node(node_id, spec):
    return prepare_on_this_node.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(spec)


def test_shared_path_is_prepared_once_by_the_driver(cluster_factory, tmp_path, make_songs):
    shared = tmp_path / "shared"
    nodes = cluster_factory(shared, shared)
    songs = make_songs(tmp_path / "songs")
    spec = config.preset("tiny", {"data.dataset": "folder", "data.root": str(songs)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLMR_RAY_DATA", str(shared))
        driver_cache, _ = prepare_caches(spec)
    mtime = (driver_cache.path / "manifest.json").stat().st_mtime_ns
    got = ray.get([on_node(node, spec) for node in nodes])
    assert {g["node"] for g in got} == set(nodes)
    assert {g["cache"] for g in got} == {str(driver_cache.path)}
    assert (driver_cache.path / "manifest.json").stat().st_mtime_ns == mtime  # opened, not rebuilt
    assert not (shared / "mirrors").exists()


def test_each_node_mirrors_a_bucket_and_builds_the_same_cache(cluster_factory, tmp_path, make_songs):
    node_dirs = [tmp_path / "node-a", tmp_path / "node-b"]
    nodes = cluster_factory(*node_dirs)
    bucket = make_songs(tmp_path / "bucket" / "songs")
    spec = config.preset("tiny", {"data.dataset": "folder", "data.root": bucket.as_uri()})
    got = ray.get([on_node(node, spec) for node in nodes])
    assert {g["node"] for g in got} == set(nodes)
    assert sorted(g["data_dir"] for g in got) == sorted(str(d) for d in node_dirs)
    for g in got:
        data_dir = g["data_dir"]
        assert g["cache"].startswith(data_dir)
        mirrors = list((tmp_path / data_dir / "mirrors").glob("songs-*"))
        assert len(mirrors) == 1 and len(list(mirrors[0].rglob("*.wav"))) == 10
    assert got[0]["cache"] != got[1]["cache"]
    np.testing.assert_array_equal(got[0]["audio"], got[1]["audio"])
    assert not (tmp_path / "driver-data").exists()  # the driver fetched nothing


def test_ablation_runs_on_a_node_that_fetches_the_bucket_and_shares_its_encoder(cluster_factory, tmp_path,
                                                                                   make_songs, one_row_ablation):
    """The head has no CPU (as in cluster.yaml): the run lands on the worker node, which keeps its own
    $CLMR_RAY_DATA, mirrors the dataset URI there, and uploads its encoder beside the records."""
    from clmr_ray.ablation_files import load_ablation
    from clmr_ray.distributed.ablate import run_ablation

    head_data, node_data = tmp_path / "node-a", tmp_path / "node-b"
    cluster_factory(head_data, node_data, head_cpus=0)
    bucket = make_songs(tmp_path / "bucket" / "songs")
    (tmp_path / "nodes.yaml").write_text(one_row_ablation("nodes"))
    results = tmp_path / "results"
    lines = []
    outcome = run_ablation(load_ablation(tmp_path / "nodes.yaml"), "tiny", results_dir=results.as_uri(),
                           extra={"data.dataset": "folder", "data.root": bucket.as_uri()}, log=lines.append)
    assert not outcome.failed and len(outcome.finished) == 1, outcome.failed
    assert any("10 files; each node fetches" in line for line in lines)
    assert len(list((results / "runs").glob("*.parquet"))) == 1
    assert len(list((results / "encoders").glob("audio-*.pt"))) == 1
    assert len(list((node_data / "mirrors").glob("songs-*"))) == 1 and list((node_data / "cache").iterdir())
    assert not head_data.exists() and not (tmp_path / "driver-data").exists()


def test_unreachable_dataset_uri_fails_before_any_run(cluster_factory, tmp_path, one_row_ablation):
    from clmr_ray.ablation_files import load_ablation
    from clmr_ray.data.base import DatasetError
    from clmr_ray.distributed.ablate import run_ablation

    cluster_factory(tmp_path / "node-a", tmp_path / "node-b")
    (tmp_path / "nodes.yaml").write_text(one_row_ablation("nodes"))
    missing = (tmp_path / "no-bucket").as_uri()
    with pytest.raises(DatasetError, match="no such folder"):
        run_ablation(load_ablation(tmp_path / "nodes.yaml"), "tiny", results_dir=tmp_path / "results",
                     extra={"data.dataset": "folder", "data.root": missing}, log=lambda *_: None)
    assert not (tmp_path / "results" / "runs").exists()
