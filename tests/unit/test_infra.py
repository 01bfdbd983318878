"""infra/ agrees with the code: entrypoints are real `facerestore` commands, one image everywhere,
the ports Ray and MLflow listen on, and environment variables that something actually reads."""

from __future__ import annotations

import re
import shlex
import tomllib
from functools import cache
from pathlib import Path

import pytest
import typer
import yaml

from pipelines.cli import app
from pipelines.config import load_config
from pipelines.jobs import JobError, check_store_is_shared, job_server_address

ROOT = Path(__file__).parents[2]
INFRA = ROOT / "infra"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE = f"ghcr.io/facerestore/facerestore:{PYPROJECT['project']['version']}"
THIRD_PARTY_IMAGES = {"postgres:17"}  # their environment is theirs; not checked against our code
PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
MLFLOW_PORT = 5000

# Variables read by a library rather than by our code, and the installed package that reads them:
# each is checked to occur in that package's files (Python source or compiled library).
LIBRARY_ENV = {
    "AWS_ENDPOINT_URL": "pyarrow", "AWS_ACCESS_KEY_ID": "pyarrow", "AWS_SECRET_ACCESS_KEY": "pyarrow",
    "AWS_DEFAULT_REGION": "pyarrow", "RAY_AUTH_MODE": "ray", "RAY_AUTH_TOKEN": "ray",
    "MLFLOW_TRACKING_USERNAME": "mlflow", "MLFLOW_TRACKING_PASSWORD": "mlflow", "MLFLOW_BACKEND_STORE_URI": "mlflow",
    "MLFLOW_ARTIFACTS_DESTINATION": "mlflow", "MLFLOW_S3_ENDPOINT_URL": "mlflow", "MLFLOW_AUTH_CONFIG_PATH": "mlflow",
    "MLFLOW_AUTH_ADMIN_USERNAME": "mlflow", "MLFLOW_AUTH_ADMIN_PASSWORD": "mlflow",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow", "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow",
}


@cache
def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((INFRA / name).read_text()) if doc]


def kind(name: str, k: str) -> list[dict]:
    return [doc for doc in documents(name) if doc.get("kind") == k]


def raycluster() -> dict:
    (cluster,) = kind("kuberay/raycluster.yaml", "RayCluster")
    return cluster


def pod_specs() -> list[dict]:
    """Every pod template in the Kubernetes manifests."""
    cluster = raycluster()["spec"]
    specs = [cluster["headGroupSpec"]["template"]["spec"]]
    specs += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    for name in ("mlflow/mlflow.yaml", "mlflow/postgres.yaml"):
        specs += [doc["spec"]["template"]["spec"] for doc in documents(name) if doc["kind"] in ("Deployment", "StatefulSet")]
    return specs


def our_containers() -> list[dict]:
    containers = [c for spec in pod_specs() for c in spec["containers"]]
    return [c for c in containers if c["image"] not in THIRD_PARTY_IMAGES]


def launcher() -> dict:
    (config,) = documents("cluster-launcher/aws.yaml")
    return config


def launcher_env() -> dict[str, str]:
    words = [w for option in launcher()["docker"]["run_options"] for w in shlex.split(option)]
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w in ("-e", "--env"))


@cache
def code_env() -> set[str]:
    """Environment variables our code reads (pipelines/, components/)."""
    pattern = re.compile(r"""(?:environ(?:\.get)?\(?\[?|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    return {name for folder in ("pipelines", "components") for path in (ROOT / folder).rglob("*.py")
            for name in pattern.findall(path.read_text())}


@cache
def package_mentions(package: str, name: str) -> bool:
    root = Path(__import__(package).__file__).parent
    needle = name.encode()
    return any(needle in path.read_bytes() for path in root.rglob("*")
               if path.is_file() and path.suffix in (".py", ".so", ".pyx", ".pxi") or ".so." in path.name)


def test_every_manifest_parses_and_names_a_kind():
    files = sorted(p for p in INFRA.rglob("*.yaml"))
    assert {p.relative_to(INFRA).as_posix() for p in files} >= {
        "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "mlflow/mlflow.yaml", "mlflow/postgres.yaml",
        "cluster-launcher/aws.yaml"}
    for path in files:
        docs = documents(path.relative_to(INFRA).as_posix())
        assert docs, path
        if "kuberay" in path.parts or "mlflow" in path.parts:
            assert all(doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name") for doc in docs), path


def test_one_image_everywhere_tagged_with_the_project_version():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"-t {IMAGE} ." in dockerfile
    images = {c["image"] for spec in pod_specs() for c in spec["containers"]}
    assert images == {IMAGE} | THIRD_PARTY_IMAGES
    assert launcher()["docker"]["image"] == IMAGE
    assert len(our_containers()) == 4  # head, CPU workers, GPU workers, MLflow server


def test_dockerfile_installs_the_pinned_torch_before_the_project_and_keeps_the_recipes():
    text = (INFRA / "Dockerfile").read_text()
    torch_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert torch_pin == "torch==2.13.0"
    assert text.index(f"pip install {torch_pin}") < text.index("pip install .")
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "COPY pipelines pipelines" in text and "COPY components components" in text


def test_head_ports_are_the_ones_ray_listens_on_in_every_launcher(monkeypatch):
    head = raycluster()["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == PORTS
    start = " ".join(launcher()["head_start_ray_commands"])
    assert f"--port={PORTS['gcs-server']}" in start and f"--dashboard-port={PORTS['dashboard']}" in start
    assert f"--ray-client-server-port={PORTS['client']}" in start
    assert f"$RAY_HEAD_IP:{PORTS['gcs-server']}" in " ".join(launcher()["worker_start_ray_commands"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(JobError, match=f"HEAD:{PORTS['dashboard']}"):  # what `submit` tells users to pass
        job_server_address(None)


def test_mlflow_port_agrees_between_server_service_and_clients():
    (service,) = kind("mlflow/mlflow.yaml", "Service")
    (deployment,) = kind("mlflow/mlflow.yaml", "Deployment")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert service["metadata"]["name"] == "mlflow"
    assert service["spec"]["ports"][0]["port"] == service["spec"]["ports"][0]["targetPort"] == MLFLOW_PORT
    assert server["ports"][0]["containerPort"] == MLFLOW_PORT
    command = server["command"]
    assert command[:2] == ["mlflow", "server"] and command[command.index("--port") + 1] == str(MLFLOW_PORT)
    assert "--serve-artifacts" in command
    (settings,) = [d for d in kind("kuberay/raycluster.yaml", "ConfigMap") if d["metadata"]["name"] == "facerestore-settings"]
    assert settings["data"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{MLFLOW_PORT}"
    assert launcher_env()["MLFLOW_TRACKING_URI"].endswith(f":{MLFLOW_PORT}")


def test_mlflow_server_has_a_sql_backend_and_object_store_artifacts():
    (mlflow_settings,) = [d for d in kind("mlflow/mlflow.yaml", "ConfigMap")]
    assert mlflow_settings["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "postgresql://" in (INFRA.parent / "README.md").read_text()  # the backend URI the README has users store
    (postgres,) = kind("mlflow/postgres.yaml", "Service")
    assert postgres["metadata"]["name"] == "postgres" and postgres["spec"]["ports"][0]["port"] == 5432


def test_rayjob_entrypoint_is_a_valid_facerestore_run_of_a_recipe_inside_the_image():
    (job,) = kind("kuberay/rayjob.yaml", "RayJob")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["facerestore", "run"]
    assert PYPROJECT["project"]["scripts"]["facerestore"] == "pipelines.cli:app"
    params = typer.main.get_command(app).commands["run"].make_context("run", words[2:]).params
    workdir = re.search(r"^WORKDIR (\S+)", (INFRA / "Dockerfile").read_text(), re.M).group(1)
    config = Path(params["config"])
    assert config.is_absolute() and config.is_relative_to(workdir)
    in_repo = ROOT / config.relative_to(workdir)
    assert in_repo.is_file()
    cfg = load_config(in_repo, params["set_"] or [], preset=params["preset"])  # every --set key is a real key
    check_store_is_shared(cfg.store)
    assert cfg.store.startswith("s3://")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == raycluster()["metadata"]["name"]


def test_autoscaling_bounds_and_worker_groups():
    spec = raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-synthesis", "gpu-training"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] > 0
    gpu = groups["gpu-training"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    cpu = groups["cpu-synthesis"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"]
    nodes = launcher()["available_node_types"]
    assert nodes[launcher()["head_node_type"]]["resources"] == {"CPU": 0}
    assert all(n.get("min_workers", 0) <= n.get("max_workers", 0) for k, n in nodes.items() if k != "head")
    assert sum(n.get("max_workers", 0) for n in nodes.values()) <= launcher()["max_workers"]


def env_names() -> dict[str, str]:
    """Every variable set in a container running our image, and where."""
    names = {e["name"]: c["name"] for c in our_containers() for e in c.get("env", [])}
    names.update({name: "cluster launcher" for name in launcher_env()})
    return names


def test_every_env_name_is_read_by_our_code_or_by_the_library_named_for_it():
    for name, where in env_names().items():
        if name in code_env():
            continue
        assert name in LIBRARY_ENV, f"{name} (set for {where}) is read by nothing we know of"
        assert package_mentions(LIBRARY_ENV[name], name), f"{LIBRARY_ENV[name]} does not read {name}"


def test_ray_pods_get_tracking_and_object_store_settings_and_no_ray_address():
    head = raycluster()["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in head["env"]}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
    assert {"MLFLOW_TRACKING_URI", "RAY_ADDRESS"} <= code_env()  # the code does read these two
    assert "RAY_ADDRESS" not in names  # Ray sets it for each job's driver; a fixed one would misdirect it
    for group in raycluster()["spec"]["workerGroupSpecs"]:
        assert group["template"]["spec"]["containers"][0]["env"] == head["env"]


def test_env_references_point_at_defined_configmaps_and_documented_secrets():
    configmaps = {d["metadata"]["name"]: d["data"] for name in ("kuberay/raycluster.yaml", "mlflow/mlflow.yaml")
                  for d in kind(name, "ConfigMap")}
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster"):]
    for container in our_containers() + [c for spec in pod_specs() for c in spec["containers"] if c["image"] in THIRD_PARTY_IMAGES]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                cm = ref["configMapKeyRef"]
                assert cm["key"] in configmaps[cm["name"]] or cm.get("optional"), env
            if "secretKeyRef" in ref:
                secret = ref["secretKeyRef"]
                assert secret["key"] == env["name"] or secret["key"] == "auth_token"
                assert f"kubectl create secret generic {secret['name']}" in section, secret["name"]
                if not secret.get("optional"):
                    assert f"{secret['key']}=" in section, f"README never sets {secret['name']}/{secret['key']}"


def test_env_check_would_catch_a_name_nothing_reads():
    assert "FACERESTORE_STORE" not in code_env() and "FACERESTORE_STORE" not in LIBRARY_ENV
    assert not package_mentions("mlflow", "MLFLOW_TRACKING_PASSWORDX")
    assert package_mentions("pyarrow", "AWS_ENDPOINT_URL")
