"""deploy/, checked offline on this machine: the image is built for real (a base image made with
debootstrap, the ledgerci image with the classic builder), the Compose file is interpolated and
validated against the Compose Specification's schema, and the Kubernetes manifests are rendered
by kustomize and validated against the Kubernetes API's schemas. Beyond the schemas, each check
looks for what a schema cannot see: a reference to a service, volume, ConfigMap, Secret or
port that does not exist, a setting ledgerci does not read, a runner given database credentials.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.processes import NatsServer, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent  # the test dependencies' programs: kubectl, check-jsonschema
IMAGE = "ledgerci:test"
# The oldest Kubernetes the manifests claim (native sidecars), and the newest schemas we have.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
# Secrets the Compose file requires from its environment (deploy/env.example).
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "owner-pw", "LEDGERCI_APP_DB_PASSWORD": "app-pw",
    "LEDGERCI_ADMIN_TOKEN": "admin", "LEDGERCI_AUDIT_KEY": "audit",
}


def known_settings() -> set[str]:
    """Every LEDGERCI_* variable that ledgerci reads (ledgerci/settings.py)."""
    return set(re.findall(r'"(LEDGERCI_[A-Z0-9_]+)"', (REPO / "ledgerci" / "settings.py").read_text()))


def run(*argv: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=True, **kwargs)


# ----- the image ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image() -> str:
    """The ledgerci image, built as deploy/README.md says (the base first, if this machine has none)."""
    started = time.monotonic()
    base = run(DEPLOY / "base-image.sh").stdout.strip()
    based = time.monotonic()
    assert run(DEPLOY / "build-image.sh", IMAGE).stdout.strip() == IMAGE
    print(f"base image {base}: {based - started:.0f} s; ledgerci image: {time.monotonic() - based:.0f} s")
    made_from = json.loads(run("docker", "image", "inspect", base).stdout)[0]
    assert "debootstrap" in made_from["Comment"]  # made here, not pulled
    return IMAGE


@pytest.mark.timeout(1200)  # from nothing: debootstrap (1.5 to 4 min) and wheels, on a busy machine
def test_image_builds_offline_from_a_local_base_and_runs_as_non_root(image: str) -> None:
    config = json.loads(run("docker", "image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["ledgerci"]

    assert run("docker", "run", "--rm", image, "--help").stdout.startswith("usage: ledgerci")
    uid = run("docker", "run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
    assert uid == "10001"
    # Every module the services import is in the image (a package left out of pyproject's
    # list would only fail here), and the runners' tools are on the PATH.
    run("docker", "run", "--rm", "--entrypoint", "python", image, "-c",
        "import ledgerci.services.relay, ledgerci.services.projector, ledgerci.services.scheduler, "
        "ledgerci.services.reaper, ledgerci.services.gateway, ledgerci.services.runner, runner.docker")
    tools = run("docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
                "git --version && setpriv --version && nats-server --version").stdout
    assert "git version" in tools and "util-linux" in tools and "nats-server" in tools


@pytest.mark.timeout(1200)
def test_a_service_in_the_image_passes_the_compose_healthcheck_and_stops_on_sigterm(
    image: str, compose: dict[str, Any], postgres_url: str, nats_server: NatsServer,
) -> None:
    # The host's network: the test's PostgreSQL and nats-server listen on its loopback only.
    port = free_port()
    name = f"ledgerci-test-relay-{port}"
    healthcheck = [part.replace("9090", str(port)) for part in compose["x-ready-on-metrics-port"]["test"][1:]]
    run("docker", "run", "--detach", "--name", name, "--network", "host",
        "--env", f"LEDGERCI_DATABASE_URL={postgres_url}", "--env", f"LEDGERCI_NATS_URL={nats_server.url}",
        "--env", f"LEDGERCI_METRICS_PORT={port}", image, "relay")
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "exec", name, *healthcheck], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, run("docker", "logs", name).stderr[-3000:]
            time.sleep(0.5)  # the healthcheck's own polling, as Docker would
        run("docker", "stop", "--time", "20", name)
        state = json.loads(run("docker", "inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, run("docker", "logs", name).stderr[-3000:]
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", name], capture_output=True)


# ----- Compose -----------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (`${X}`, `${X:-default}`, `${X:?error}`, `$$`), done on
    the parsed file as Compose does, before its schema applies."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name, op, arg = found.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return arg or ""

    return _VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()), COMPOSE_ENV)


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any], tmp_path: Path) -> None:
    # check-jsonschema ships the Compose Specification's schema (the one Docker Compose v2
    # validates with), so this needs no network and no Compose plugin.
    def check(document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        resolved = tmp_path / "compose.json"
        resolved.write_text(json.dumps(document))
        return subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", resolved],
                              capture_output=True, text=True)

    checked = check(compose)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    typo = json.loads(json.dumps(compose))
    typo["services"]["relay"]["restart_policy"] = "always"
    assert check(typo).returncode != 0  # the schema does reject what Compose would
    raw = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for secret in COMPOSE_ENV:  # secrets are never defaulted: each one missing stops Compose
        with pytest.raises(AssertionError, match=secret):
            interpolate(raw, {key: value for key, value in COMPOSE_ENV.items() if key != secret})


def test_compose_runs_the_whole_cluster_and_every_reference_resolves(compose: dict[str, Any]) -> None:
    services: dict[str, dict[str, Any]] = compose["services"]
    commands = sorted(" ".join(spec.get("command", [])) for spec in services.values()
                      if spec["image"].startswith("ledgerci"))
    assert commands == ["gateway", "gateway", "migrate --grant ledgerci_app", "projector", "reaper",
                        "relay", "runner", "runner", "scheduler", "scheduler"]
    assert sum(spec["image"].startswith("nats:") for spec in services.values()) == 3

    settings = known_settings()
    for name, spec in services.items():
        for needed in spec.get("depends_on", {}):
            assert needed in services, f"{name} depends on {needed}, which is not a service"
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), f"{name} mounts {source}, which is missing"
            else:
                assert source in compose["volumes"], f"{name} uses volume {source}, never declared"
        if spec["image"].startswith("ledgerci"):
            unknown = {key for key in spec["environment"] if key.startswith("LEDGERCI_")} - settings
            assert not unknown, f"{name} sets {unknown}, which ledgerci does not read"
            assert "healthcheck" in spec or name == "migrate", f"{name} has no healthcheck"
    for runner in ("runner-1", "runner-2"):  # runners hold no database credentials
        assert "LEDGERCI_DATABASE_URL" not in services[runner]["environment"]
    assert services["migrate"]["restart"] == "no"

    proxy = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert set(re.findall(r"server (gateway-\d):8080", proxy)) == {"gateway-1", "gateway-2"}
    assert "proxy_buffering off;" in proxy  # SSE


@pytest.mark.parametrize("config", ["nats/nats.conf", "k8s/base/nats.conf"])
def test_nats_configurations_are_accepted_by_nats_server(config: str) -> None:
    checked = subprocess.run([BIN / "nats-server", "-t", "-c", DEPLOY / config], capture_output=True, text=True,
                             env={**os.environ, "SERVER_NAME": "nats-1"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"sync_interval:\s*always", (DEPLOY / config).read_text())


# ----- Kubernetes --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    rendered = run(BIN / "kubectl", "kustomize", DEPLOY / "k8s" / "overlays" / "example").stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_every_manifest_file_is_in_the_kustomization_and_every_resource_exists() -> None:
    base = DEPLOY / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {path.name for path in base.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files, f"not listed: {files - listed}; missing: {listed - files}"
    generated = {item for generator in kustomization["configMapGenerator"] for item in generator.get("files", [])}
    assert all((base / name).is_file() for name in generated)


def test_manifests_are_valid_kubernetes_objects(manifests: list[dict[str, Any]]) -> None:
    for version in KUBERNETES_VERSIONS:
        for manifest in manifests:
            kubernetes_validate.validate(manifest, version, strict=True)
    broken = json.loads(json.dumps(next(m for m in manifests if m["kind"] == "Deployment")))
    broken["spec"]["replica"] = 2  # a typo: strict validation must catch it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield manifest, manifest["spec"]["template"]


def test_manifests_run_every_service_and_their_references_resolve(manifests: list[dict[str, Any]]) -> None:
    named = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    components = {m["metadata"]["labels"].get("app.kubernetes.io/component"): m for m, _ in pod_specs(manifests)}
    assert {"gateway", "scheduler", "relay", "projector", "reaper", "runner", "migrate"} <= components.keys()
    assert all(m["metadata"].get("namespace") == "ledgerci" for m in manifests if m["kind"] != "Namespace")
    settings = known_settings()

    for manifest, template in pod_specs(manifests):
        spec = template["spec"]
        name = manifest["metadata"]["name"]
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        claims = {claim["metadata"]["name"] for claim in manifest["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in named, f"{name}: {volume}"
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            assert {"requests", "limits"} <= container["resources"].keys(), f"{where} has no requests/limits"
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in named, where
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in named, f"{where}: no Secret {ref['name']}"
                if variable["name"].startswith("LEDGERCI_"):
                    assert variable["name"] in settings, f"{where} sets {variable['name']}, never read"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, f"{where}: no volume {mount['name']}"
            ports = {port["name"] for port in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in ports, f"{where}: {probe} on unknown port {port}"
            if manifest["kind"] != "Job" and container.get("restartPolicy") != "Always":
                assert "livenessProbe" in container and "readinessProbe" in container, f"{where} is not probed"

    runner = components["runner"]["spec"]["template"]["spec"]
    runner_env = {variable["name"]: variable.get("value") for variable in runner["containers"][0]["env"]}
    assert runner_env["LEDGERCI_EXECUTOR"] == "docker" and "LEDGERCI_DATABASE_URL" not in runner_env


def test_services_budgets_and_policies_select_pods_that_exist(manifests: list[dict[str, Any]]) -> None:
    labels = [template["metadata"]["labels"] for _, template in pod_specs(manifests)]

    def selects(selector: dict[str, Any]) -> bool:
        wanted = selector.get("matchLabels", {})
        expressions = selector.get("matchExpressions", [])
        return any(
            wanted.items() <= pod.items()
            and all(pod.get(e["key"]) in e["values"] for e in expressions if e["operator"] == "In")
            for pod in labels
        )

    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "Service":
            assert selects({"matchLabels": manifest["spec"]["selector"]}), f"Service {name} selects no pod"
        elif kind == "PodDisruptionBudget":
            assert selects(manifest["spec"]["selector"]), f"PodDisruptionBudget {name} selects no pod"
        elif kind == "NetworkPolicy":
            assert selects(manifest["spec"]["podSelector"]), f"NetworkPolicy {name} selects no pod"
            for rule in manifest["spec"].get("ingress", []) + manifest["spec"].get("egress", []):
                for peer in rule.get("from", []) + rule.get("to", []):
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        assert selects(peer["podSelector"]), f"NetworkPolicy {name}: {peer} selects no pod"
    policies = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "NetworkPolicy"}
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    postgres_clients = policies["to-postgres"]["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert "runner" not in postgres_clients  # runners reach NATS, never the database


# ----- alerts ------------------------------------------------------------------------------------

def test_alert_rules_watch_metrics_and_labels_that_exist() -> None:
    sources = "".join((REPO / path).read_text() for path in ("gateway/metrics.py", "commands/metrics.py"))
    defined = set(re.findall(r'"(ledgerci_\w+)"', sources))
    rules = [rule for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
             for rule in group["rules"]]
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        for name, selector in re.findall(r"(ledgerci_\w+)(?:\{([^}]*)\})?", rule["expr"]):
            assert re.sub(r"_(bucket|count|sum)$", "", name) in defined, f"{rule['alert']}: no metric {name}"
            for label in re.findall(r'(\w+)=~?"', selector):
                assert f'"{label}"' in sources, f"{rule['alert']}: {name} has no label {label}"
