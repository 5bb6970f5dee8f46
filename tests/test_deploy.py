"""Deployment files, validated offline with the real tools: hadolint, the compose spec,
kubectl kustomize + kubernetes-validate, promtool, a real Prometheus server and the Grafana
dashboard's queries against the metrics the server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from photofield_ai.config import Settings
from photofield_ai.testing.server import free_port
from tests.conftest import ServerProcess
from tests.images import jpeg

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
TOOLS = ROOT / "tools" / "bin"  # deploy/install-test-deps.sh unpacks Prometheus there
OVERLAYS = ["cpu", "gpu", "cpu-hpa"]


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (str(folder / name) for folder in (BIN, TOOLS) if (folder / name).exists()), None
    )
    if path is None:
        pytest.skip(f"{name} is not installed (deploy/install-test-deps.sh installs it as root)")
    return path


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def exported_metric_names(server: ServerProcess) -> set[str]:
    text = httpx.get(server.url + "/metrics").text
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bphotofield_ai_[a-z_]+\b", expr))


# -- containers ---------------------------------------------------------------------------------
def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint")
    run(hadolint, "deploy/docker/Dockerfile", "deploy/docker/Dockerfile.cuda")


def test_dockerfiles_use_the_shared_install_script_and_a_healthcheck() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / "docker" / name).read_text()
        assert "sh deploy/install.sh" in text
        assert "HEALTHCHECK" in text and "/health" in text
        assert "USER 10001" in text
        assert "photofield-ai download" in text and "BAKE_MODELS" in text
    assert "--gpu" in (DEPLOY / "docker" / "Dockerfile.cuda").read_text()
    # The same script builds the development environment (make setup), so CI exercises it.
    assert "deploy/install.sh --dev" in (ROOT / "Makefile").read_text()


def test_install_script_rejects_bad_usage() -> None:
    result = subprocess.run(
        ["sh", str(DEPLOY / "install.sh"), "--bogus", "x"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.parametrize(
    ("name", "services"),
    [
        ("docker-compose.yml", {"photofield-ai", "prometheus", "grafana"}),
        ("docker-compose.offline.yml", {"photofield-ai"}),
    ],
)
def test_compose_files_match_the_compose_spec(name: str, services: set[str]) -> None:
    check = tool("check-jsonschema")
    compose_file = DEPLOY / "compose" / name
    run(check, "--builtin-schema", "vendor.compose-spec", str(compose_file))
    compose = yaml.safe_load(compose_file.read_text())
    assert set(compose["services"]) == services
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (compose_file.parent / source).exists(), source
    build = compose["services"]["photofield-ai"]["build"]
    assert (compose_file.parent / build["context"] / build["dockerfile"]).exists()


def test_offline_compose_reads_every_model_from_the_mounted_folder() -> None:
    """Without the internet: every model setting a file in the read-only mount, nothing that
    would be downloaded (the test suite's settings check says what each variable reads)."""
    service = yaml.safe_load((DEPLOY / "compose" / "docker-compose.offline.yml").read_text())[
        "services"
    ]["photofield-ai"]
    (mount,) = service["volumes"]
    target, mode = mount.rsplit(":", 2)[1:]
    assert mode == "ro" and target == "/models"
    env = service["environment"]
    for name in ("PHOTOFIELD_AI_VISUAL_MODEL", "PHOTOFIELD_AI_TEXTUAL_MODEL"):
        assert env[name].startswith("/models/") and env[name].endswith(".onnx")
    assert env["PHOTOFIELD_AI_FACES_ENABLED"] == "0" and env["HF_HUB_OFFLINE"] == "1"
    # What the server does with exactly these settings and a folder of generated models: it
    # starts without fetching anything.
    settings = Settings.from_env(env)
    assert settings.visual_model is not None and settings.textual_model is not None


def test_face_weights_are_baked_only_on_their_own_explicit_choice() -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / "docker" / dockerfile).read_text()
        assert "ARG BAKE_FACE_MODELS=0" in text and "NON-COMMERCIAL" in text
        assert "PHOTOFIELD_AI_FACES_ENABLED=0 photofield-ai download" in text


# -- kubernetes ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = tool("kubectl")
    out = {}
    for overlay in OVERLAYS:
        result = run(kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay))
        out[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_are_schema_valid(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    validate = tool("kubernetes-validate")
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(rendered[overlay]))
    result = run(validate, "--strict", str(path))
    assert "failed" not in result.stdout.lower()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_and_shutdown(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    pod = by_kind(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e["value"] for e in container["env"]}
    grace = float(env["PHOTOFIELD_AI_SHUTDOWN_GRACE_S"])
    delay = float(env["PHOTOFIELD_AI_SHUTDOWN_DELAY_S"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    # preStop, then the server keeps accepting for the delay, then running requests get the
    # grace: the kubelet's deadline must cover all three.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + delay + grace + 5
    # A drain of a one-replica deployment must be possible.
    assert by_kind(rendered[overlay], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    service = by_kind(rendered[overlay], "Service")
    assert (
        service["spec"]["selector"]
        == by_kind(rendered[overlay], "Deployment")["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_share_one_model_cache_filled_by_an_init_container(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Scale-up must not download ~600 MB per pod: the models volume is one claim, filled and
    checked (sha256 sidecars) by `photofield-ai download` before the server starts."""
    pod = by_kind(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["photofield-ai", "download"]
    assert init["image"] == pod["containers"][0]["image"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert by_kind(rendered[overlay], "PersistentVolumeClaim")["metadata"]["name"] == claim
    for container in (init, pod["containers"][0]):
        assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]


def test_gpu_overlay_requests_a_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    container = by_kind(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in json.dumps(by_kind(rendered["cpu"], "Deployment"))


def test_autoscalers_target_the_deployment_on_queue_depth(
    rendered: dict[str, list[dict[str, Any]]], server: ServerProcess
) -> None:
    names = exported_metric_names(server)
    for overlay in ("cpu", "gpu"):
        scaled = by_kind(rendered[overlay], "ScaledObject")  # KEDA: no schema offline
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert (
            scaled["spec"]["scaleTargetRef"]["name"]
            == by_kind(rendered[overlay], "Deployment")["metadata"]["name"]
        )
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert metric_names_in(trigger["metadata"]["query"]) == {"photofield_ai_queue_depth"}
        assert int(trigger["metadata"]["threshold"]) > 0
        assert scaled["spec"]["minReplicaCount"] >= 1
    assert "photofield_ai_queue_depth" in names
    hpa = by_kind(rendered["cpu-hpa"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "photofield-ai"
    rules = yaml.safe_load(by_kind(rendered["cpu-hpa"], "ConfigMap")["data"]["rules.yaml"])
    assert rules["rules"][0]["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric_names_in(rules["rules"][0]["seriesQuery"]) <= names


# -- prometheus and grafana ---------------------------------------------------------------------
def test_prometheus_config_and_alert_rules(tmp_path: Path, server: ServerProcess) -> None:
    promtool = tool("promtool")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]  # the compose mount
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    run(promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    run(promtool, "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    names = exported_metric_names(server)
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        assert metric_names_in(rule["expr"]) <= names, rule["alert"]


def test_grafana_dashboard_queries_exported_metrics(server: ServerProcess) -> None:
    # Histograms export _bucket/_sum/_count; make sure those exist by having batched once.
    httpx.post(server.url + "/text-embeddings", json={"texts": ["warm"]})
    names = exported_metric_names(server)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "photofield-ai.json").read_text())
    titles = set()
    for panel in dashboard["panels"]:
        titles.add(panel["title"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metric_names_in(target["expr"])
            assert used, (panel["title"], target["expr"])
            assert used <= names, (panel["title"], used - names)
    for wanted in ("Queue depth", "Batch size", "per second", "latency", "Failures", "Dropped"):
        assert any(wanted.lower() in t.lower() for t in titles), wanted
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == dashboard["panels"][0]["datasource"]["uid"]


@pytest.fixture
def prometheus(tmp_path: Path, server: ServerProcess) -> Iterator[str]:
    binary = tool("prometheus")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    target = urllib.parse.urlparse(server.url).netloc
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_real_prometheus_scrapes_the_server(prometheus: str, server: ServerProcess) -> None:
    for i in range(8):
        httpx.post(
            server.url + "/image-embeddings", files={"image": ("a.jpg", jpeg(200, 150, seed=i))}
        )
    server_text = httpx.get(server.url + "/metrics").text
    match = re.search(
        r'^photofield_ai_batch_size_count\{model="visual"\} (\S+)$', server_text, re.M
    )
    assert match is not None
    want = float(match.group(1))

    def query(expr: str) -> list[dict[str, Any]]:
        body = httpx.get(prometheus + "/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    deadline = time.monotonic() + 60
    while True:
        batches = query('photofield_ai_batch_size_count{model="visual"}')
        if batches and float(batches[0]["value"][1]) == want:
            break
        assert time.monotonic() < deadline, f"Prometheus never saw {want} batches: {batches}"
        time.sleep(0.5)
    depth = query("photofield_ai_queue_depth")
    assert {r["metric"]["model"] for r in depth} == {"visual", "textual"}
    assert all(float(r["value"][1]) == 0 for r in depth)  # idle now, and the gauge is exact
    assert query('up{job="photofield-ai"}')[0]["value"][1] == "1"


# -- the names the deploy files use, checked without any tool -----------------------------------
SELECTOR = re.compile(r"\b(photofield_ai_[a-z_]+)\s*(\{[^}]*\})?")
# Labels Prometheus adds when it scrapes (target labels), not the exporter.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "le"}
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the alert rules, the autoscalers and the dashboard,
    read from the files themselves (no kubectl, no promtool)."""
    found = []
    for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    keda = yaml.safe_load(
        (DEPLOY / "k8s" / "components" / "keda" / "scaledobject.yaml").read_text()
    )
    for trigger in keda["spec"]["triggers"]:
        found.append(("KEDA trigger", trigger["metadata"]["query"]))
    adapter = yaml.safe_load(
        (DEPLOY / "k8s" / "components" / "hpa" / "prometheus-adapter-rules.yaml").read_text()
    )
    for rule in yaml.safe_load(adapter["data"]["rules.yaml"])["rules"]:
        found.append(("prometheus-adapter", rule["seriesQuery"]))
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "photofield-ai.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((f"panel {panel['title']}", target["expr"]))
    return found


def test_deploy_queries_name_metrics_and_label_values_the_server_exports(
    server: ServerProcess,
) -> None:
    """Every metric a deploy file queries exists in a live /metrics, and every label it matches
    exactly exists there with that value (a renamed metric or label value would make an alert
    or an autoscaler silently never fire)."""
    httpx.post(server.url + "/text-embeddings", json={"texts": ["warm"]})
    httpx.post(server.url + "/image-embeddings", files={"image": ("a.jpg", b"not an image")})
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    problems = []
    for where, expr in queries():
        for name, selector in SELECTOR.findall(expr):
            if name not in samples:
                problems.append(f"{where}: no metric {name}")
                continue
            for label, op, value in MATCHER.findall(selector or ""):
                if label in TARGET_LABELS:
                    continue
                seen = {labels.get(label) for labels in samples[name]}
                # A pattern for statuses that occur only under failure (5..) is checked
                # against what the server can answer.
                possible = seen | ({"500", "503"} if label == "status" else set())
                if None in seen and len(seen) == 1:
                    problems.append(f"{where}: {name} has no label {label}")
                elif op == "=" and value not in seen:
                    problems.append(f"{where}: {name}{{{label}={value!r}}} never exported")
                elif op == "=~" and not any(re.fullmatch(value, v or "") for v in possible):
                    problems.append(f"{where}: {name}{{{label}=~{value!r}}} matches nothing")
    assert problems == []
