"""Pretraining under Ray Train V2 on a real local Ray: workers, checkpoints, resume, failures, nodes."""

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from clmr_ray import config
from clmr_ray.distributed.train import FAIL_AT_EPOCH_ENV, ray_pretrain_fn, run_name
from clmr_ray.experiment import EncoderStore, local_pretrain_fn, prepare_caches, run_experiment

RAY_ARGS = {"num_cpus": 4, "include_dashboard": False, "logging_level": "WARNING"}
# The slow augmentations are off: these tests are about workers, not audio.
FAST = {f"audio.augment.{name}.enabled": False for name in ("pitch", "filter", "noise", "gain")}
# Tracks exactly one crop long and no augmentation: both views of a track are the same on any
# worker, so 1 and 2 workers see identical inputs and only the per-worker BatchNorm differs.
# lr ~ 0 keeps the weights at their (seeded) init across the epoch. Must be > 0 for the spec.
SAME_INPUTS = {**FAST, "audio.augment.crop.enabled": False, "data.synthetic.seconds": 6561 / 8000,
               "pretrain.lr": 1e-12, "pretrain.epochs": 2, "scaling.num_workers": 2}


@pytest.fixture(scope="module")
def data_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLMR_RAY_DATA", str(tmp_path_factory.mktemp("data")))
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # propagated to the controller by Ray Train
        yield


@pytest.fixture(scope="module")
def ray_session(data_env):
    yield
    ray.shutdown()


def _start_local_ray():
    """The module's local Ray, started by the first test that needs it (again after a test that
    had its own cluster)."""
    if not ray.is_initialized():
        ray.init(**RAY_ARGS)


@pytest.fixture
def local_ray(ray_session):
    _start_local_ray()


@pytest.fixture(scope="module")
def two_workers(ray_session, tmp_path_factory):
    """One 2-worker run shared by the tests that only read it."""
    _start_local_ray()
    spec = config.preset("tiny", SAME_INPUTS)
    _, cache = prepare_caches(spec)
    storage = tmp_path_factory.mktemp("ray_results")
    return spec, cache, storage, ray_pretrain_fn(str(storage))(spec, "audio", cache)


def test_two_workers_report_every_epoch_and_return_encoders(two_workers):
    spec, _, storage, result = two_workers
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert [(r["epoch"], r["attempt"], r["world_size"]) for r in result.reports] == [(1, 1, 2), (2, 1, 2)]
    state = result.encoder_states["audio"]
    assert state and all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    assert result.path == str(storage / run_name(spec, "audio"))


def test_one_and_two_workers_give_the_same_loss_for_the_same_global_batch(two_workers):
    """A 2-worker step covers the tracks of the 1-process step and, with gathered negatives, the
    same 2 x 8 - 2 negatives per anchor. Not bit-equal: BatchNorm normalises over each worker's
    4 crops instead of all 8 (measured ~2% apart). Without the gather each anchor would only see
    its worker's 6 negatives, a loss ~0.8 lower here, far outside the tolerance."""
    spec, cache, _, result = two_workers
    first_epoch = config.with_overrides(spec, {"pretrain.epochs": 1})  # the schedule is constant
    single = local_pretrain_fn(report=lambda *_: None)(first_epoch, "audio", cache)
    assert result.history[0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], abs=0.1)


def test_rerun_with_the_same_storage_resumes_the_finished_run(two_workers):
    spec, cache, storage, first = two_workers
    again = ray_pretrain_fn(str(storage))(spec, "audio", cache)
    assert again.reports == first.reports  # no epoch trained again
    for name, value in first.encoder_states["audio"].items():
        torch.testing.assert_close(again.encoder_states["audio"][name], value, msg=name)


def test_failed_worker_restarts_from_the_last_checkpoint_on_file_uri_storage(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "1")
    spec = config.preset("tiny", {**FAST, "pretrain.epochs": 3, "scaling.num_workers": 2})
    _, cache = prepare_caches(spec)
    result = ray_pretrain_fn(f"file://{tmp_path}/runs", max_failures=1)(spec, "audio", cache)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [(r["epoch"], r["attempt"], r["attempt_start_epoch"]) for r in result.reports] == \
        [(1, 1, 1), (2, 2, 2), (3, 2, 2)]
    run = tmp_path / "runs" / run_name(spec, "audio")
    assert (run / ".failed_at_epoch_1").is_file() and any(run.glob("checkpoint_*/result.pt"))


def test_run_experiment_end_to_end(local_ray, tmp_path):
    spec = config.preset("tiny", {**FAST, "pretrain.epochs": 1, "eval.epochs": 3, "scaling.num_workers": 2})
    result = run_experiment(spec, store=EncoderStore(tmp_path / "encoders"),
                            pretrain_fn=ray_pretrain_fn(str(tmp_path / "runs")), log=lambda *_: None)
    assert result.trained == ["audio"] and [h["epoch"] for h in result.histories["audio"]] == [1]
    assert 0.0 <= result.metrics["test_acc"] <= 1.0


@pytest.mark.parametrize("overrides, storage, names", [
    ({"scaling.num_workers": 3}, None, "pretrain.batch_size: 8 does not split evenly over scaling.num_workers=3"),
    ({"scaling.num_workers": 8, "pretrain.batch_size": 16}, None, "scaling: 8 workers need 8 CPUs"),
    ({}, "nosuch://bucket/runs", "storage_path: 'nosuch://bucket/runs'"),
])
def test_bad_scaling_or_storage_fails_in_the_driver_in_one_line(local_ray, overrides, storage, names):
    spec = config.preset("tiny", {**FAST, **overrides})
    _, cache = prepare_caches(spec)
    with pytest.raises(ValueError) as error:
        ray_pretrain_fn(storage)(spec, "audio", cache)
    assert names in str(error.value) and "\n" not in str(error.value)


def test_bad_fail_hook_value_is_one_line(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "first")
    spec = config.preset("tiny", FAST)
    _, cache = prepare_caches(spec)
    with pytest.raises(ValueError, match=f"^{FAIL_AT_EPOCH_ENV}: expected an epoch number, got 'first'$"):
        ray_pretrain_fn(str(tmp_path))(spec, "audio", cache)


@pytest.fixture
def two_nodes(ray_session):
    """Its own Ray: a head and a second node with one CPU each, so 2 one-CPU workers must split."""
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_workers_on_two_nodes(two_nodes, tmp_path):
    spec = config.preset("tiny", {**FAST, "pretrain.epochs": 1, "scaling.num_workers": 2})
    _, cache = prepare_caches(spec)
    result = ray_pretrain_fn(str(tmp_path / "runs"))(spec, "audio", cache)
    node_ids = result.reports[0]["node_ids"]
    assert len(node_ids) == 2 and len(set(node_ids)) == 2
    assert set(node_ids) == {node["NodeID"] for node in ray.nodes() if node["Alive"]}
