"""deploy/: the Kubernetes manifests pass Kubernetes' own schemas (strict: no unknown
fields) and replicate, own their data dir, and say how a node's apps reach fpcd."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
#: The oldest Kubernetes still maintained upstream when this was written, and the newest
#: whose schemas the validator ships.
VERSIONS = ["1.31.0", "1.34.0"]


def documents() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents() if d["kind"] == kind]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes(version: str) -> None:
    assert {d["kind"] for d in documents()} == {"DaemonSet", "Secret", "Service"}
    for document in documents():
        kubernetes_validate.validate(document, version, strict=True)
    # The validator does catch a mistake (a misspelt field, a wrong type).
    broken = copy.deepcopy(by_kind("DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
    broken = copy.deepcopy(by_kind("DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "api"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_daemonset_replicates_owns_its_data_and_is_reachable() -> None:
    daemonset = by_kind("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secret = by_kind("Secret")
    # Every node gets the same upstream, doorbell, master key and token secret.
    env = {e["name"]: e for e in container["env"]}
    for variable, key in {
        "DATABASE_URL": "database-url",
        "REDIS_URL": "redis-url",
        "CONFIG_ENCRYPTION_KEY": "encryption-key",
        "FPCD_AUTH__JWT_SECRET": "jwt-secret",
    }.items():
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and key in secret["stringData"]
    # The hostPath dirs are made the daemon's before it starts (fsGroup skips hostPath).
    uid = pod["securityContext"]["runAsUser"]
    (init,) = pod["initContainers"]
    script = " ".join(init["command"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    host_paths = {v["name"] for v in pod["volumes"] if "hostPath" in v}
    for name in host_paths:
        assert f"{uid}:{uid}" in script and mounts[name] in script
    assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert env["FPCD_DATA_DIR"]["value"] == mounts["data"]
    assert env["FPCD_RUNTIME_DIR"]["value"] == mounts["run"]  # sockets on the host
    # Resources and probes on the daemon's own endpoints.
    assert {"requests", "limits"} <= container["resources"].keys()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert {p["hostPort"] for p in container["ports"]} == {3001, 8080}
    # The image is built and loaded, never pulled as :latest from nowhere.
    for c in [container, init]:
        assert not c["image"].endswith(":latest") and c["imagePullPolicy"] == "Never"
    service = by_kind("Service")
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert service["spec"]["selector"] == daemonset["spec"]["selector"]["matchLabels"]


def test_dockerfile_healthcheck_and_readme_build_command() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    (healthcheck,) = re.findall(r"^HEALTHCHECK [^\n]*\\\n\s+CMD (\[.*\])$", dockerfile, re.M)
    command = json.loads(healthcheck)
    assert command[:2] == ["python", "-c"] and "/health/live" in command[2]
    compile(command[2], "healthcheck", "exec")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Containers and Kubernetes") :]
    build = next(line for line in section.splitlines() if line.startswith("docker build"))
    args = shlex.split(build)
    assert args[args.index("-f") + 1] == "deploy/Dockerfile" and args[-1] == "."
    image = by_kind("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert args[args.index("-t") + 1] == image
