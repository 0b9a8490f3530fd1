"""deploy/k8s, checked without a cluster: the manifests (Kubernetes schemas, kustomize layout), the Dockerfile of a
real `smallnets build` against the pod spec, and the server run the way the pod runs it to check probes and memory
sizing. tests/test_container.py builds the image itself and runs it with this Deployment's settings.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from servers import SERVER_PIDS, resident_mb, smallnets_server, worker_pids

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still maintained upstream when this was written
RESOURCE_FILES = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml")
MEBIBYTE = 1024 * 1024
QUANTITY = {"Ki": 1024, "Mi": MEBIBYTE, "Gi": 1024 * MEBIBYTE}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / name).read_text())


def bytes_of(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMG]i)", quantity).groups()
    return int(number) * QUANTITY[unit]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return load("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize("name", RESOURCE_FILES)
def test_manifests_match_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_sets_the_image(container: dict[str, Any]) -> None:
    kustomization = load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(RESOURCE_FILES)
    assert sorted(path.name for path in K8S.glob("*.yaml")) == sorted([*RESOURCE_FILES, "kustomization.yaml"])
    (image,) = kustomization["images"]
    assert image["name"] == container["image"], "the kustomize image entry replaces the deployment's placeholder"
    assert {"newName", "newTag"} <= set(image)
    images = re.findall(r"^\s*image:\s*(\S+)", "".join((K8S / name).read_text() for name in RESOURCE_FILES), re.M)
    assert images == [container["image"]], "the image is the one thing to set"


def test_selectors_and_names_agree(deployment: dict[str, Any]) -> None:
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for name, selector in [
        ("deployment", deployment["spec"]["selector"]["matchLabels"]),
        ("service", load("service.yaml")["spec"]["selector"]),
        ("pdb", load("pdb.yaml")["spec"]["selector"]["matchLabels"]),
    ]:
        assert selector.items() <= pod_labels.items(), name
    target = load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = load("hpa.yaml")["spec"]
    assert hpa["minReplicas"] > load("pdb.yaml")["spec"]["minAvailable"], "a drain can always evict one pod"
    assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"]


def test_security_context_is_non_root_with_a_read_only_root(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # What BentoML writes at start (its home: metrics files, tmp; TMPDIR: sockets) must be on a writable volume.
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert all("emptyDir" in volumes[mount["name"]] for mount in container["volumeMounts"])
    env = env_of(container)
    for variable in ("BENTOML_HOME", "TMPDIR"):
        assert any(env[variable].startswith(f"{mount}/") for mount in mounts), variable


def test_threads_follow_the_cpu_limit(container: dict[str, Any]) -> None:
    env = env_of(container)
    assert env["SMALLNETS_WORKERS"] == "1"
    field = env["SMALLNETS_THREADS"]["resourceFieldRef"]
    assert (field["containerName"], field["resource"], field["divisor"]) == (container["name"], "limits.cpu", "1")
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert float(limits["cpu"]) >= float(requests["cpu"]) >= 1
    assert bytes_of(limits["memory"]) >= bytes_of(requests["memory"])


@pytest.fixture(scope="module")
def bento(exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `smallnets build` for linux/amd64: the input of `smallnets containerize` (tests/test_container.py)."""
    home = tmp_path_factory.mktemp("k8s-bento")
    env = {**os.environ, "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    model = exported("efficientnet_lite0", weights="imagenet")
    command = [sys.executable, "-m", "smallnets", "build", str(model), "--platform", "linux/amd64"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    return Path(printed["dockerfile"]).parents[2]


def test_the_image_matches_the_deployment(bento: Path, deployment: dict[str, Any], container: dict[str, Any]) -> None:
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    arguments = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert int(arguments["BENTO_USER_UID"]) == pod_security["runAsUser"]
    assert int(arguments["BENTO_USER_GID"]) == pod_security["runAsGroup"]
    assert re.search(rf"^USER {pod_security['runAsUser']}:{pod_security['runAsGroup']}$", dockerfile, re.M)
    assert re.search(rf"^EXPOSE {container['ports'][0]['containerPort']}$", dockerfile, re.M)
    # The Bento is read from BENTO_PATH, which no volume may hide; BentoML's home is moved onto the volume.
    bento_path = arguments["BENTO_PATH"]
    mounts = [mount["mountPath"] for mount in container["volumeMounts"]]
    assert not any(bento_path.startswith(mount) or mount.startswith(bento_path) for mount in mounts)
    assert re.search(r"^ENV BENTOML_HOME=", dockerfile, re.M), "the image sets a home the manifest overrides"
    # The page's files ship in the Bento, so the pod serves /ui and /docs.
    static = {path.name for path in (bento / "src" / "smallnets" / "serve" / "ui" / "static").iterdir()}
    assert {"index.html", "app.js", "style.css", "docs.html", "docs.js"} <= static


@pytest.fixture(scope="module")
def pod_like_server(exported, container: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server as the pod runs it: one worker, threads = the CPU limit."""
    env = {"SMALLNETS_WORKERS": "1", "SMALLNETS_THREADS": str(int(float(container["resources"]["limits"]["cpu"])))}
    model = exported("efficientnet_lite0", weights="imagenet")
    with smallnets_server(model, tmp_path_factory.mktemp("k8s-server"), env) as url:
        yield url


def test_probes_answer_on_a_real_server(pod_like_server: str, container: dict[str, Any]) -> None:
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["livenessProbe"]["path"] == "/livez" and probes["readinessProbe"]["path"] == "/readyz"
    port_names = {port["name"] for port in container["ports"]}
    for kind, probe in probes.items():
        assert probe["port"] in port_names, kind
        assert httpx.get(f"{pod_like_server}{probe['path']}", timeout=10).status_code == 200, kind


def test_memory_request_covers_the_loaded_server(
    pod_like_server: str, container: dict[str, Any], photos: dict[str, Any]
) -> None:
    """Everything the pod runs (server process + worker) after real requests fits the memory request."""
    buffer = io.BytesIO()
    photos["astronaut"].save(buffer, format="JPEG", quality=92)
    files = [("images", (f"p{index}.jpg", buffer.getvalue(), "image/jpeg")) for index in range(16)]
    for _ in range(3):
        response = httpx.post(f"{pod_like_server}/classify_batch", files=files, timeout=120)
        assert response.status_code == 200, response.text
    pids = [SERVER_PIDS[pod_like_server], *worker_pids(pod_like_server)]
    pod_mb = sum(resident_mb(pid) for pid in pids)
    request_mb = bytes_of(container["resources"]["requests"]["memory"]) / MEBIBYTE
    assert pod_mb < request_mb, f"the pod's processes hold {pod_mb:.0f} MB, over the {request_mb:.0f} MiB request"
