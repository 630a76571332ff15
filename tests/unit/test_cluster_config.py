"""cluster.yaml passes Ray's own launcher validation (offline) and installs exactly this project."""

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def validated(config: dict) -> dict:
    """What `ray up` checks before touching the cloud: defaults filled in, then the JSON schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def pinned(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.match(rf"{re.escape(name)}(\[[^\]]*\])?==(\S+)$", dep)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no {name}")


def test_cluster_yaml_passes_ray_schema():
    config = validated(load(CLUSTER))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # no trial on the head
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert {t["node_config"]["InstanceType"] for t in gpu_types} >= {"g5.xlarge", "g5.12xlarge"}
    assert all(t["min_workers"] == 0 for t in gpu_types)
    assert config["idle_timeout_minutes"] > 0


def test_a_typo_in_cluster_yaml_is_rejected():
    config = load(CLUSTER)
    config["available_node_types"]["gpu_1x"]["min_wokers"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        validated(config)


def test_cluster_installs_this_project_so_pyproject_is_the_only_pin():
    config = load(CLUSTER)
    mounts = config["file_mounts"]
    project_dir = next(remote for remote, local in mounts.items() if (ROOT / local).resolve() == ROOT)
    commands = "\n".join(config["setup_commands"])
    assert re.search(rf"pip install .*{re.escape(project_dir)}\s*$", commands, re.MULTILINE)
    for package in ("torch", "torchaudio", "torchvision", "ray"):
        pinned(package)  # pyproject pins each one...
        # ...and the cluster never installs its own copy (no drift from a second pin)
        assert not re.search(rf"pip install .*\b{package}(\[[^\]]*\])?[=<>~]", commands), package
    assert (ROOT / "ablations" / "table1.yaml").is_file()  # shipped to the nodes by the mount


def test_cluster_keeps_dashboard_private_with_token_auth_and_passes_storage():
    config = load(CLUSTER)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    assert "CLMR_RAY_STORAGE=s3://" in "\n".join(config["setup_commands"])
    # token authentication on every node, with one token shipped from the laptop
    assert "RAY_AUTH_MODE=token" in "\n".join(config["setup_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]

