"""The deployment files, checked without Docker or Kubernetes.

docker-compose.yml against the Compose Specification schema, the RayService against
KubeRay's CRD schema (both vendored in tests/data/, see its README), every ``LORAQ_*``
variable they set against the settings classes, and the RayService's Serve application
against the repository's serve_config.yaml (which test_serve_config.py deploys).
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import tomllib
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from tests.conftest import REPO
from workers.app import app_builder
from workers.engine import native
from workers.settings import WorkerSettings

DATA = REPO / "tests" / "data"
KUBERAY = REPO / "deploy" / "kuberay"
SETTINGS = {f"LORAQ_{name.upper()}" for name in WorkerSettings.model_fields}
# Serve HTTP, Ray dashboard, Ray's metrics export.
PORTS = {WorkerSettings().http_port, 8265, WorkerSettings().metrics_export_port}
# Where the RayService's application may differ from serve_config.yaml's, and why: the
# Redis Service's address, and one model replica on each of the two worker pods.
KUBERAY_ARG_OVERRIDES = {"redis_url", "num_model_replicas", "max_model_replicas_per_node"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def manifests(path: Path) -> dict[str, dict[str, Any]]:
    """The documents of a multi-document manifest, by ``Kind/name``."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(REPO / "docker-compose.yml")
    return data


def rayservice() -> dict[str, Any]:
    return manifests(KUBERAY / "rayservice.yaml")["RayService/loraq"]


def serve_app(config: dict[str, Any]) -> dict[str, Any]:
    """The one application of a Serve config, after Serve's own validation."""
    [app] = ServeDeploySchema.model_validate(config).applications
    return app.model_dump(exclude_unset=True)


# ---- Dockerfile ------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in final_stage():
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def test_dockerfile_builds_a_slim_non_root_cpu_image_serving_the_worker_extra() -> None:
    steps = dockerfile()
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(a.startswith("${PYTHON_IMAGE}") for op, a in steps if op == "FROM")
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    runs = [a for op, a in steps if op == "RUN"]
    worker_extra = load_pyproject_worker_extra()
    [torch_pin] = [req for req in worker_extra if req.startswith("torch")]
    assert any(f'"{torch_pin}" --index-url "${{TORCH_INDEX_URL}}"' in run for run in runs)
    assert any('pip install ".[worker]"' in run for run in runs)
    [user] = [a for op, a in final_stage() if op == "USER"]
    assert user not in {"root", "0"}
    env = dockerfile_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["LORAQ_HTTP_HOST"] == "0.0.0.0"
    [expose] = [a for op, a in final_stage() if op == "EXPOSE"]
    assert {int(port) for port in expose.split()} == PORTS


@pytest.mark.skipif(
    shutil.which("gcc") is None or platform.machine() != "x86_64", reason="needs gcc on x86-64"
)
def test_dockerfile_builds_the_cpu_kernels_ahead_for_a_stated_level(tmp_path: Path) -> None:
    steps = dockerfile()
    build = steps[: steps.index(final_stage()[0])]
    args = dict(a.split("=", 1) for op, a in build if op == "ARG" and "=" in a)
    level = args["KERNEL_LEVEL"]
    assert level in native.LEVEL_FLAGS
    runs = [a for op, a in build if op == "RUN"]
    assert any("apt-get install" in run and " gcc " in run for run in runs)
    assert not any("gcc" in a for op, a in final_stage() if op == "RUN")  # none in the image
    [kernels] = [run for run in runs if "workers.engine.native" in run]
    assert 'python -m workers.engine.native "${KERNEL_LEVEL}"' in kernels
    assert "cd / &&" in kernels  # the installed package, not /src's copy, gets them
    # The step on a copy of the package as pip installs it: the libraries and their level
    # land beside native.py.
    site = tmp_path / "site-packages"
    skip = shutil.ignore_patterns("prebuilt", "__pycache__")
    shutil.copytree(REPO / "workers" / "engine", site / "workers" / "engine", ignore=skip)
    shutil.copy(REPO / "workers" / "__init__.py", site / "workers")
    subprocess.run(
        [sys.executable, "-m", "workers.engine.native", level],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin:/usr/local/bin"},
        check=True,
        capture_output=True,
    )
    prebuilt = site / "workers" / "engine" / "prebuilt"
    assert (prebuilt / native.LEVEL_FILE).read_text().strip() == level
    assert {path.stem for path in prebuilt.glob("*.so")} == {
        path.stem for path in native.SOURCES.glob("*.c")
    }


def load_pyproject_worker_extra() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra: list[str] = pyproject["project"]["optional-dependencies"]["worker"]
    return extra


def test_dockerfile_copies_the_package_and_the_demo_kit_past_dockerignore() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        source
        for op, args in dockerfile()
        if op == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    for package in ("schemas", "producer", "workers", "demo", "pyproject.toml"):
        assert package in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not any(Path(source).match(pattern) for pattern in ignored), source
        assert source.split("/")[0] not in ignored, source


def entrypoint_script() -> Path:
    [entrypoint] = [a for op, a in final_stage() if op == "ENTRYPOINT"]
    script_in_image = json.loads(entrypoint)[-1]
    [copy] = [a for op, a in final_stage() if op == "COPY" and a.endswith(script_in_image)]
    return REPO / copy.split()[0]


def run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> list[list[str]]:
    """Run the entrypoint with ``ray`` and ``loraq`` replaced by scripts that log their
    arguments (and RAY_ADDRESS): the shell logic, without starting anything."""
    tmp_path.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    for tool in ("ray", "loraq"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $* RAY_ADDRESS=${{RAY_ADDRESS:-}}" >> {log}\n')
        stub.chmod(0o755)
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    subprocess.run([str(entrypoint_script()), *args], env={**base, **env}, check=True, timeout=30)
    return [line.split() for line in log.read_text().splitlines()]


def test_entrypoint_starts_a_reachable_ray_head_then_loraq_serve(tmp_path: Path) -> None:
    assert entrypoint_script().stat().st_mode & 0o111, "the entrypoint is not executable"
    ray_start, serve = run_entrypoint(tmp_path, {}, "--num-model-replicas", "2")
    assert ray_start[:3] == ["ray", "start", "--head"]
    for option in ("--port=6379", "--dashboard-host=0.0.0.0", "--dashboard-port=8265"):
        assert option in ray_start
    assert f"--metrics-export-port={WorkerSettings().metrics_export_port}" in ray_start
    assert serve == ["loraq", "serve", "--num-model-replicas", "2", "RAY_ADDRESS=127.0.0.1:6379"]


def test_entrypoint_takes_the_metrics_port_setting_or_joins_a_cluster(tmp_path: Path) -> None:
    ray_start, _ = run_entrypoint(tmp_path / "a", {"LORAQ_METRICS_EXPORT_PORT": "9100"})
    assert "--metrics-export-port=9100" in ray_start
    calls = run_entrypoint(tmp_path / "b", {"RAY_ADDRESS": "ray-head:6379"})
    assert calls == [["loraq", "serve", "RAY_ADDRESS=ray-head:6379"]]


# ---- docker-compose.yml ----------------------------------------------------------------


def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((DATA / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_compose_file_follows_the_compose_specification() -> None:
    errors = [error.message for error in compose_validator().iter_errors(compose())]
    assert not errors
    # The schema is strict where a typo would otherwise be ignored by Compose.
    typo = compose()
    typo["services"]["redis"]["helthcheck"] = typo["services"]["redis"].pop("healthcheck")
    assert not compose_validator().is_valid(typo)


def test_compose_redis_is_durable_never_evicts_and_gates_the_worker() -> None:
    services = compose()["services"]
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    command = " ".join(redis["command"])
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert option in command
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert worker["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert urlsplit(worker["environment"]["LORAQ_REDIS_URL"]).hostname == "redis"
        assert {int(port.split(":")[-1]) for port in worker["ports"]} == PORTS
        assert worker["env_file"] == [{"path": ".env", "required": False}]


def test_compose_gpu_profile_reserves_nvidia_gpus_for_a_cuda_build() -> None:
    gpu = compose()["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert float(gpu["environment"]["LORAQ_MODEL_NUM_GPUS"]) >= 1
    assert "profiles" not in compose()["services"]["worker"]
    assert compose()["services"]["prometheus"]["profiles"] == ["monitoring"]


# ---- LORAQ_* variables -----------------------------------------------------------------


def loraq_variables() -> dict[str, set[str]]:
    """Every LORAQ_* name each file sets."""
    env_example = set(re.findall(r"^#? ?(LORAQ_\w+)=", (REPO / ".env.example").read_text(), re.M))
    in_compose = {
        name
        for service in compose()["services"].values()
        for name in service.get("environment", {})
    }
    in_kuberay: set[str] = set()
    for path in KUBERAY.glob("*.yaml"):
        for doc in manifests(path).values():
            in_kuberay |= set(doc.get("data", {}))
            in_kuberay |= {env["name"] for env in find_key(doc, "env") for env in env}
    found = {
        ".env.example": env_example,
        "docker-compose.yml": in_compose,
        "Dockerfile": set(dockerfile_env()),
        "deploy/kuberay": in_kuberay,
    }
    return {
        where: {name for name in names if name.startswith("LORAQ_")}
        for where, names in found.items()
    }


def find_key(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        here = [node[key]] if key in node else []
        return here + [v for value in node.values() for v in find_key(value, key)]
    if isinstance(node, list):
        return [v for item in node for v in find_key(item, key)]
    return []


def test_every_loraq_variable_the_files_set_is_a_setting() -> None:
    variables = loraq_variables()
    assert all(variables.values()), variables  # each file sets some
    unknown = {where: names - SETTINGS for where, names in variables.items() if names - SETTINGS}
    assert not unknown, f"not a field of WorkerSettings/ClientSettings: {unknown}"
    assert variables[".env.example"] == SETTINGS


# ---- KubeRay ---------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as `kubectl apply --validate=strict`
    does (the API server would silently drop them)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def test_rayservice_validates_against_kuberays_crd_schema() -> None:
    schema = json.loads((DATA / "kuberay-rayservice-v1.schema.json").read_text())
    validator = jsonschema.Draft4Validator(strict(schema))
    service = rayservice()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert not [error.message for error in validator.iter_errors(service)]
    typo = yaml.safe_load(yaml.safe_dump(service))
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    assert not validator.is_valid(typo)


def test_rayservice_cluster_has_a_head_and_at_least_two_worker_pods_of_the_image() -> None:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    image = compose()["services"]["worker"]["image"]
    [group] = cluster["workerGroupSpecs"]
    assert group["replicas"] >= 2 and group["minReplicas"] >= 2
    pods = [cluster["headGroupSpec"]["template"], group["template"]]
    for pod in pods:
        [container] = pod["spec"]["containers"]
        assert container["image"] == image
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["envFrom"] == [{"configMapRef": {"name": "loraq-settings"}}]
    config = manifests(KUBERAY / "rayservice.yaml")["ConfigMap/loraq-settings"]
    assert all(isinstance(value, str) for value in config["data"].values())


def test_rayservice_runs_the_repository_serve_config_with_documented_overrides() -> None:
    ours = serve_app(load_yaml(REPO / "serve_config.yaml"))
    config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    theirs = serve_app(config)
    assert set(WorkerSettings.model_fields) >= KUBERAY_ARG_OVERRIDES
    changed = {
        n
        for n in ours["args"].keys() | theirs["args"].keys()
        if ours["args"].get(n) != theirs["args"].get(n)
    }
    assert changed == KUBERAY_ARG_OVERRIDES
    assert {k: v for k, v in theirs.items() if k != "args"} == {
        k: v for k, v in ours.items() if k != "args"
    }
    assert isinstance(app_builder(theirs["args"]), Application)
    [group] = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert theirs["args"]["num_model_replicas"] == group["replicas"]
    assert theirs["args"]["max_model_replicas_per_node"] == 1
    # Every node serves HTTP, reachable from its pod's network.
    assert config["proxy_location"] == "EveryNode"
    assert config["http_options"]["host"] == "0.0.0.0"
    redis = urlsplit(theirs["args"]["redis_url"])
    service = manifests(KUBERAY / "redis.yaml")["Service/loraq-redis"]
    assert redis.hostname == service["metadata"]["name"]
    assert redis.port == service["spec"]["ports"][0]["port"]


def redis_args(statefulset: dict[str, Any]) -> str:
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    return " ".join(container["args"])


@pytest.mark.parametrize("name", ["loraq-redis", "loraq-redis-replica"])
def test_kubernetes_redis_is_durable_and_never_evicts(name: str) -> None:
    statefulset = manifests(KUBERAY / "redis.yaml")[f"StatefulSet/{name}"]
    args = redis_args(statefulset)
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert option in args
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {
        claim["metadata"]["name"]: "/data"
    }


def test_kubernetes_redis_service_selects_the_primary_and_the_replica_follows_it() -> None:
    docs = manifests(KUBERAY / "redis.yaml")
    service = docs["Service/loraq-redis"]
    primary, replica = docs["StatefulSet/loraq-redis"], docs["StatefulSet/loraq-redis-replica"]
    selector = service["spec"]["selector"].items()
    assert selector <= primary["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= replica["spec"]["template"]["metadata"]["labels"].items()
    port = service["spec"]["ports"][0]["port"]
    assert f"--replicaof {service['metadata']['name']} {port}" in redis_args(replica)
