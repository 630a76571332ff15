"""kuberay.yaml and its Dockerfile agree with pyproject.toml and with the CLI they run. There is no
Kubernetes here: these checks are what can be known offline (the CRD fields are KubeRay >= 1.5.1's)."""

import re
import shlex
from pathlib import Path

import yaml

from clmr_ray.ablation_files import load_ablation
from clmr_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
IMAGE_PROJECT = "/home/ray/clmr-ray"


def pinned_ray() -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.match(r"ray\[[^\]]*\]==(\S+)", d).group(1) for d in deps if d.startswith("ray["))


def rayjob() -> dict:
    return yaml.safe_load((ROOT / "kuberay.yaml").read_text())


def containers(job: dict) -> list[dict]:
    spec = job["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_versions_come_from_pyproject():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pinned_ray()
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE).group(1)
    assert base.startswith(f"rayproject/ray:{pinned_ray()}-") and base.endswith("-gpu")
    assert re.search(rf"^COPY .* \. {IMAGE_PROJECT}$", dockerfile, re.MULTILINE)
    assert re.search(rf"^RUN pip install .*{IMAGE_PROJECT}$", dockerfile, re.MULTILINE)  # no second set of pins
    assert len({c["image"] for c in containers(job)}) == 1


def test_cluster_shape_and_security():
    spec = rayjob()["spec"]
    cluster = spec["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        for container in group["template"]["spec"]["containers"]:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_every_pod_has_the_same_environment_and_the_datasets_are_bucket_uris():
    envs = [{e["name"]: e["value"] for e in c["env"]} for c in containers(rayjob())]
    assert all(env == envs[0] for env in envs)
    assert envs[0]["GTZAN_ROOT"].startswith("s3://") and envs[0]["MTAT_ROOT"].startswith("s3://")
    assert envs[0]["CLMR_RAY_STORAGE"].startswith("s3://")


def test_entrypoint_is_a_valid_clmr_ray_command_on_a_file_in_the_image():
    program, *args = shlex.split(rayjob()["spec"]["entrypoint"])
    assert program == "clmr-ray"
    parsed = build_parser().parse_args(args)
    assert parsed.results.startswith("s3://") and parsed.preset == "paper"
    assert parsed.file.startswith(IMAGE_PROJECT + "/")
    load_ablation(ROOT / Path(parsed.file).relative_to(IMAGE_PROJECT))  # the file exists and is valid
