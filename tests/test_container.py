"""`smallnets containerize`, for real: the amd64 image of a small model is built with the engine of this machine
(Docker where an engine answers, else podman; CI installs podman), run exactly as deploy/k8s runs it (its user,
read-only root, scratch tmpfs, env, port, memory and CPU limits) and asked /readyz, /classify, /metrics; then
stopped within the termination grace period. The containers and every image it made are removed whatever happens
(the base image too, when the test had to build it: 2 min for the whole module on a clean, idle 2-core machine).

Bad input costs no build: a folder without a model, a model for another architecture, no engine, a broken engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from servers import free_port

from smallnets.cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_USAGE
from smallnets.serve.engines import Engine, EngineMissingError, detect_engine

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
MAX_IMAGE_MB = 450  # the bound for Lite0 int8; the fp32 model built here is 4x larger
BUILD_TIMEOUT_S = 1800
FORBIDDEN_COMMANDS = ("gcc", "cc", "g++", "make", "git")
FORBIDDEN_MODULES = ("torch", "onnxsim", "onnx")


@pytest.fixture(scope="module")
def engine() -> Engine:
    try:
        return detect_engine()
    except EngineMissingError as error:
        if os.environ.get("CI"):
            raise  # .ci/run installs podman: its absence there is a failure, not a skip
        pytest.skip(f"no container engine here: {error}")


def smallnets(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smallnets", *args], capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S
    )


def printed(result: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return yaml.safe_load((K8S / "deployment.yaml").read_text())


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported("efficientnet_lite0", weights="imagenet")


@pytest.fixture(scope="module")
def image(engine: Engine, model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`smallnets containerize MODEL`: what it printed; the image is removed after the module."""
    home = tmp_path_factory.mktemp("container-bentoml")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    before = set(all_image_ids(engine))
    started = time.monotonic()
    result = smallnets("containerize", str(model), env=env)
    print(f"containerize took {time.monotonic() - started:.0f} s")  # shown with -s; CI time is watched
    fields = printed(result)
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        yield fields
    finally:
        if "image" in fields:
            engine.remove_image(fields["image"])
        for image_id in set(all_image_ids(engine)) - before:  # the build's intermediate layers
            engine.run("image", "rm", "--force", image_id, timeout=120)


def all_image_ids(engine: Engine) -> list[str]:
    return engine.run("images", "--all", "--quiet", "--no-trunc", timeout=60, check=True).stdout.split()


def container_ids(engine: Engine) -> list[str]:
    return engine.run("ps", "--all", "--quiet", "--no-trunc", timeout=60, check=True).stdout.split()


def k8s_run_arguments(deployment: dict[str, Any], engine: Engine) -> tuple[list[str], list[str], int]:
    """The pod spec as `run` flags (before the image) and arguments (after it), and the container port."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security, limits = container["securityContext"], container["resources"]["limits"]
    flags = ["--user", f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    if security["readOnlyRootFilesystem"]:
        flags.append("--read-only")
        if engine.name == "podman":
            flags.append("--read-only-tmpfs=false")  # podman adds writable /tmp, /run by default; a pod has none
    flags += [f"--cap-drop={cap}" for cap in security["capabilities"]["drop"]]
    if security["allowPrivilegeEscalation"] is False:
        flags += ["--security-opt", "no-new-privileges"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        size = volumes[mount["name"]]["emptyDir"]["sizeLimit"].replace("Mi", "m")
        flags += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777,size={size}"]
    for item in container["env"]:
        if "value" in item:
            value = item["value"]
        else:
            field = item["valueFrom"]["resourceFieldRef"]
            assert field["resource"] == "limits.cpu", field
            value = str(int(float(limits["cpu"])))
        flags += ["-e", f"{item['name']}={value}"]
    flags += ["--memory", limits["memory"].replace("Gi", "g").replace("Mi", "m"), "--cpus", str(limits["cpu"])]
    flags += engine.ulimit_flags()
    return flags, list(container["args"]), container["ports"][0]["containerPort"]


@pytest.fixture(scope="module")
def pod(engine: Engine, image: dict[str, str], deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The image started as the Deployment starts it; waits for /readyz within the startup probe's budget."""
    flags, args, port = k8s_run_arguments(deployment, engine)
    host_port = free_port()
    name = f"smallnets-test-{host_port}"
    run = engine.run(
        "run", "--detach", "--name", name, "-p", f"127.0.0.1:{host_port}:{port}", *flags, image["image"], *args,
        timeout=120,
    )  # fmt: skip
    try:
        assert run.returncode == 0, run.stderr
        url = f"http://127.0.0.1:{host_port}"
        startup = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        while not ready(url):
            logs = engine.run("logs", name, timeout=60)
            assert time.monotonic() < deadline, (
                f"/readyz never answered 200:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
            )
            time.sleep(1)
        yield {"name": name, "url": url}
    finally:
        engine.run("rm", "--force", name, timeout=120)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_containerize_prints_the_image_its_size_and_run_line(image: dict[str, str], model: Path) -> None:
    assert image["image"].startswith("smallnets-classifier:") and image["image"] == image["bento"]
    assert image["platform"] == "linux/amd64"
    size_mb = float(image["size"].removesuffix(" MB"))
    assert 50 < size_mb <= MAX_IMAGE_MB, image["size"]
    run = image["run"].split()
    assert run[0] in ("docker", "podman") and run[1] == "run" and run[-1] == image["image"]
    assert {"--read-only", "--tmpfs", "/scratch", "-p", "3000:3000"} <= set(run)


def test_the_deployment_runs_the_image_containerize_names(image: dict[str, str], deployment: dict[str, Any]) -> None:
    """deploy/k8s's image is the repository `smallnets containerize` tags; kustomize sets the registry and tag."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    repository, version = image["image"].rsplit(":", 1)
    assert container["image"] == repository
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    assert entry["name"] == repository and entry["newName"].rsplit("/", 1)[-1] == repository
    assert version and image["bento"].endswith(f":{version}")


def test_the_pod_answers_like_smallnets_classify(
    pod: dict[str, Any], model: Path, photos: dict[str, Any], tmp_path: Path
) -> None:
    photo = tmp_path / "coffee.jpg"
    photos["coffee"].save(photo, quality=92)
    with photo.open("rb") as handle:
        response = httpx.post(f"{pod['url']}/classify", files={"image": handle}, data={"top_k": "5"}, timeout=60)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    local = subprocess.run(
        [sys.executable, "-m", "smallnets", "classify", str(model), str(photo), "--top-k", "5", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    expected = json.loads(local.stdout)["results"][0]["predictions"]
    assert [p["class_id"] for p in served] == [p["class_id"] for p in expected]
    assert served[0]["label"] == "espresso"
    for got, want in zip(served, expected, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    metrics = httpx.get(f"{pod['url']}/metrics", timeout=10)
    assert metrics.status_code == 200 and "smallnets_" in metrics.text
    assert httpx.get(f"{pod['url']}/livez", timeout=10).status_code == 200


def test_the_image_healthcheck_passes(engine: Engine, pod: dict[str, Any]) -> None:
    if engine.name == "podman":
        check = engine.run("healthcheck", "run", pod["name"], timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    else:
        deadline = time.monotonic() + 60
        while (status := engine.run("inspect", "--format", "{{.State.Health.Status}}", pod["name"]).stdout.strip()) != (
            "healthy"
        ):
            assert time.monotonic() < deadline, status
            time.sleep(2)


def test_the_image_is_small_and_safe(engine: Engine, image: dict[str, str], model: Path) -> None:
    """Non-root numeric user, labels from the model card, no compilers/git/torch/onnxsim, no host CA bundle."""
    inspected = json.loads(engine.run("image", "inspect", image["image"], timeout=60, check=True).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "1034:1034"
    healthcheck = inspected.get("Healthcheck") or config.get("Healthcheck") or {}  # podman | docker
    assert "/readyz" in " ".join(healthcheck.get("Test", [])), "HEALTHCHECK kept (podman: docker format)"
    labels = config["Labels"]
    from smallnets import __version__
    from smallnets.serve.store import read_card

    card = read_card(model)
    assert labels["io.github.smallnets.model"] == card.display_name
    assert labels["io.github.smallnets.precision"] == card.precision == "fp32"
    assert labels["io.github.smallnets.accuracy"] == card.accuracy.summary
    assert labels["io.github.smallnets.version"] == labels["org.opencontainers.image.version"] == __version__
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    host_digest = hashlib.sha256(host_bundle.read_bytes()).hexdigest() if host_bundle.is_file() else "-"
    probe = (
        f"command -v {' '.join(FORBIDDEN_COMMANDS)}; "
        f'for m in {" ".join(FORBIDDEN_MODULES)}; do python -c "import $m" 2>/dev/null && echo module $m; done; '
        "find / -xdev \\( -name '*.crt' -o -name '*.pem' \\) -type f -exec sha256sum {} +"
    )
    found = engine.run("run", "--rm", *engine.ulimit_flags(), "--entrypoint", "sh", image["image"], "-c", probe)
    lines = found.stdout.splitlines()
    assert any(line.endswith("/certifi/cacert.pem") for line in lines), f"the probe did not run: {found.stderr}"
    assert not [line for line in lines if line.startswith("/")], f"compilers or git in the image: {lines}"
    assert not [line for line in lines if line.startswith("module ")], lines
    assert host_digest not in found.stdout, "the host's CA bundle is in the image"


def test_the_pod_stops_gracefully_within_its_grace_period(
    engine: Engine, pod: dict[str, Any], deployment: dict[str, Any]
) -> None:
    """SIGTERM (what the kubelet sends) drains and exits 0 well before the grace period ends in SIGKILL."""
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    stop = engine.run("stop", "--time", str(grace), pod["name"], timeout=grace + 60)
    elapsed = time.monotonic() - started
    assert stop.returncode == 0, stop.stderr
    exit_code = engine.run("inspect", "--format", "{{.State.ExitCode}}", pod["name"], timeout=60).stdout.strip()
    assert exit_code == "0" and elapsed < grace, (exit_code, elapsed)


@pytest.fixture
def nothing_left(engine: Engine) -> Iterator[None]:
    """No image, layer or container more after the test than before it."""
    images, containers = set(all_image_ids(engine)), set(container_ids(engine))
    yield
    assert set(all_image_ids(engine)) == images and set(container_ids(engine)) == containers


def with_card(source: Path, target: Path, **changes: object) -> Path:
    import onnx

    from smallnets.core.metadata import CARD_KEY, ModelCard

    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            prop.value = ModelCard.from_json(prop.value).with_updates(**changes).to_json()
    onnx.save(proto, str(target))
    return target


def test_bad_input_is_one_line_and_builds_nothing(
    engine: Engine, nothing_left: None, model: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    empty = tmp_path / "empty"
    empty.mkdir()
    arm64 = with_card(
        model, tmp_path / "model.int8.onnx", precision="int8", quantization={"name": "arm64", "arch": "aarch64"}
    )
    cases = [
        ([str(empty)], EXIT_NOT_FOUND, "holds none of model.int8.onnx"),
        ([str(arm64)], EXIT_USAGE, "is int8 for aarch64 CPUs (target arm64), not for --platform linux/amd64"),
    ]
    for args, code, message in cases:
        result = smallnets("containerize", *args, env=env)
        assert result.returncode == code, result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "use --platform linux/arm64" in smallnets("containerize", str(arm64), env=env).stderr


def test_a_missing_or_broken_engine_is_one_line(
    engine: Engine, nothing_left: None, model: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    no_tools = tmp_path / "bin"
    no_tools.mkdir()
    missing = smallnets("containerize", str(model), env={**env, "PATH": str(no_tools)})
    assert missing.returncode == EXIT_FAILED
    assert missing.stderr.count("\n") == 1 and "apt-get install podman" in missing.stderr, missing.stderr
    if shutil.which("podman") and engine.name == "podman":
        broken = tmp_path / "containers.conf"
        broken.write_text('[engine]\nruntime = "no-such-runtime"\n')
        refused = smallnets(
            "containerize", str(model), "--engine", "podman", env={**env, "CONTAINERS_CONF": str(broken)}
        )
        assert refused.returncode == EXIT_FAILED
        assert refused.stderr.count("\n") == 1 and "podman does not work here" in refused.stderr, refused.stderr
        assert "no-such-runtime" in refused.stderr


ARM64_OPT_IN = "SMALLNETS_TEST_ARM64_IMAGE"
NEOVERSE_N1_CPUINFO = (
    "processor\t: {index}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    "CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
)


@pytest.mark.skipif(
    not os.environ.get(ARM64_OPT_IN),
    reason=f"the arm64 image builds and serves under qemu emulation (minutes, more than CI's budget): set "
    f"{ARM64_OPT_IN}=1 (needs qemu-user-static + binfmt-support)",
)
def test_the_arm64_image_classifies_under_emulation(
    engine: Engine, model: Path, photos: dict[str, Any], tmp_path: Path
) -> None:
    """An arm64-target int8 model, its linux/arm64 image built and run under qemu (binfmt): one photo, espresso."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    base = smallnets("base-image", "--platform", "linux/arm64", env=env)  # kept: 13 min under emulation
    assert base.returncode == 0, base.stderr
    before = set(all_image_ids(engine))
    folder = tmp_path / "arm64"
    optimized = smallnets("optimize", str(model), "-o", str(folder), "--target", "arm64", "--effort", "quick", env=env)
    assert optimized.returncode == 0 and (folder / "model.int8.onnx").is_file(), optimized.stderr
    built = smallnets("containerize", str(folder), "--platform", "linux/arm64", "-t", "smallnets-test:arm64", env=env)
    fields = printed(built)
    name = f"smallnets-test-arm64-{os.getpid()}"
    try:
        assert built.returncode == 0, built.stderr[-3000:]
        assert engine.image_architecture(fields["image"]) == "arm64"
        port = free_port()
        # qemu-user before 8.0 (Debian bookworm's 7.2) shows the host's x86 /proc/cpuinfo, on which onnxruntime's
        # cpuinfo crashes at import (SIGSEGV); an aarch64 one (two Neoverse-N1 cores) is mounted over it.
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("".join(NEOVERSE_N1_CPUINFO.format(index=index) for index in range(2)))
        run = engine.run(
            "run", "--detach", "--name", name, "--platform", "linux/arm64", "-p", f"127.0.0.1:{port}:3000",
            "-v", f"{cpuinfo}:/proc/cpuinfo:ro", *engine.ulimit_flags(), fields["image"], timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # an emulated start: imports and warm-up run 10-20x slower
        while not ready(url):
            assert time.monotonic() < deadline, engine.run("logs", name).stderr[-3000:]
            time.sleep(2)
        photo = tmp_path / "coffee.jpg"
        photos["coffee"].save(photo, quality=92)
        with photo.open("rb") as handle:
            response = httpx.post(f"{url}/classify", files={"image": handle}, data={"top_k": "1"}, timeout=300)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == "espresso"
        assert response.json()["model"].endswith("_int8")
    finally:
        engine.run("rm", "--force", name, timeout=120)
        if "image" in fields:
            engine.remove_image(fields["image"])
        for image_id in set(all_image_ids(engine)) - before:
            engine.run("image", "rm", "--force", image_id, timeout=120)
