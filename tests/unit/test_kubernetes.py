"""deploy/kubernetes is valid Kubernetes and says what ERDU is: every role has its Deployment, the commands
are ERDU's own, the probes point at endpoints and commands that exist, and liveness asks nothing of Redis
or Postgres. Validated offline against the schemas kubernetes-validate ships."""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import click
import kubernetes_validate
import pytest
import typer
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from erdu_tasks.api import routes_health
from erdu_tasks.celery_ext import liveness
from erdu_tasks.cli.main import app as cli_app
from erdu_tasks.names import ROLES
from erdu_tasks.store.metrics import wsgi_app

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
KEDA = "keda.sh/v1alpha1"
AUTOSCALED = {"ingest", "commander", "diagnostician", "fixer", "resolver"}


def documents() -> list[dict]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]
    return docs


DOCS = documents()


def of_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


def containers() -> list[tuple[str, dict]]:
    out = []
    for d in DOCS:
        if d["kind"] in ("Deployment", "Job"):
            out += [(d["metadata"]["name"], c) for c in d["spec"]["template"]["spec"]["containers"]]
    return out


def parses(argv: list[str]) -> click.Context:
    """Parse an `erdu ...` command line with the real CLI (options checked, nothing run)."""
    assert argv[0] == "erdu", argv
    group = typer.main.get_command(cli_app)
    ctx = click.Context(group, info_name="erdu")
    cmd = group.get_command(ctx, argv[1])
    assert cmd is not None, f"erdu has no command {argv[1]!r}"
    return cmd.make_context(argv[1], list(argv[2:]), parent=ctx)


def test_every_manifest_is_valid_kubernetes_or_a_keda_object():
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    for doc in DOCS:
        if doc["apiVersion"] == KEDA:
            assert doc["kind"] in ("ScaledObject", "TriggerAuthentication")
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_refused_by_the_validator():
    broken = yaml.safe_load((KUBE / "api.yaml").read_text().split("---")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"not": "a port"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_role_has_a_deployment_running_its_worker_with_replicas_and_concurrency():
    deployments = of_kind("Deployment")
    for role in ROLES:
        dep = deployments[f"erdu-{role}"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        argv = container["command"]
        assert argv[:3] == ["erdu", "worker", role] and argv[3] == "--concurrency", argv
        assert parses(argv).params["concurrency"] >= 1
        assert dep["spec"]["replicas"] >= 1
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployments["erdu-beat"]["spec"]["replicas"] == 2
    for name in ("erdu-beat", "erdu-api", "erdu-flower", "erdu-metrics"):
        parses(deployments[name]["spec"]["template"]["spec"]["containers"][0]["command"])
    parses(of_kind("Job")["erdu-migrate"]["spec"]["template"]["spec"]["containers"][0]["command"])


def test_the_image_and_its_user_and_data_directory_are_the_dockerfiles():
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)$", dockerfile, re.M)
    assert user, "the Dockerfile's USER must be numeric for runAsNonRoot"
    workdir = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.M)[-1]
    images = {i["name"] for i in yaml.safe_load((KUBE / "kustomization.yaml").read_text())["images"]}
    config = of_kind("ConfigMap")["erdu-config"]["data"]
    assert config["ERDU_STATE_DIR"] == workdir
    for d in DOCS:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(user[1]) and pod["securityContext"]["runAsNonRoot"]
        for c in pod["containers"]:
            assert c["image"] in images
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert d["metadata"]["name"] == "erdu-metrics" or workdir in mounts, d["metadata"]["name"]


def test_liveness_asks_nothing_of_redis_or_postgres_and_every_probe_points_at_something_real():
    api_paths = {r.path for r in routes_health.router.routes}
    flower_paths = {"/healthcheck"}   # Flower's own handler: it answers without the broker
    for name, c in containers():
        if name == "erdu-migrate":
            continue
        for kind in ("livenessProbe", "readinessProbe"):
            probe = c[kind]
            if "httpGet" in probe:
                path = probe["httpGet"]["path"]
                port = probe["httpGet"]["port"]
                assert port in {p["name"] for p in c["ports"]}
                known = {"erdu-api": api_paths, "erdu-flower": flower_paths, "erdu-metrics": {"/healthz"}}[name]
                assert path in known, (name, path)
                if kind == "livenessProbe":
                    assert path != "/healthz" or name == "erdu-metrics", "the API's /healthz asks Redis and Postgres"
            else:
                argv = probe["exec"]["command"]
                if argv[0] == "erdu":
                    parses(argv)
                    assert argv[1] == "alive"
                else:
                    assert kind == "readinessProbe", f"{name}: liveness through the broker cascades on a blip"
                    script = shlex.split(argv[-1])
                    role = name.removeprefix("erdu-")
                    assert script[:5] == ["celery", "-A", "erdu_tasks.app", "inspect", "ping"]
                    assert script[script.index("-d") + 1] == f"{role}@$HOSTNAME"


def test_the_health_endpoints_answer_without_redis_or_postgres():
    api = FastAPI()
    api.include_router(routes_health.router)
    assert TestClient(api).get("/livez").json() == {"status": "alive"}
    metrics = wsgi_app("postgresql://nobody@127.0.0.1:9/none", "redis://127.0.0.1:9/0")
    seen = []
    body = metrics({"PATH_INFO": "/healthz", "REQUEST_METHOD": "GET"}, lambda status, headers: seen.append(status))
    assert seen == ["200 OK"] and b"".join(body) == b"ok\n"


def test_services_select_pods_and_disruption_budgets_cover_every_deployment():
    deployments = of_kind("Deployment")
    for svc in of_kind("Service").values():
        target = deployments[svc["metadata"]["name"]]
        assert svc["spec"]["selector"] == target["spec"]["selector"]["matchLabels"]
    assert set(of_kind("Service")) == {"erdu-api", "erdu-flower", "erdu-metrics"}
    budgets = {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())): p for p in
               of_kind("PodDisruptionBudget").values()}
    for name, dep in deployments.items():
        if name in ("erdu-flower", "erdu-metrics"):
            continue
        budget = budgets[tuple(sorted(dep["spec"]["selector"]["matchLabels"].items()))]
        if dep["spec"]["replicas"] == 1 or name.removeprefix("erdu-") in ROLES:
            assert budget["spec"].get("maxUnavailable") == 1, name   # a pool of one can still be drained
        else:
            assert budget["spec"]["minAvailable"] == 1, name


def test_role_pools_scale_on_their_own_queue_length():
    from importlib import import_module

    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in DOCS if d["kind"] == "ScaledObject"}
    assert set(scaled) == {f"erdu-{r}" for r in AUTOSCALED}
    auth = {d["metadata"]["name"] for d in DOCS if d["kind"] == "TriggerAuthentication"}
    for role in AUTOSCALED:
        obj = scaled[f"erdu-{role}"]
        assert f"erdu-{role}" in of_kind("Deployment")
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "redis" and trigger["authenticationRef"]["name"] in auth
        assert trigger["metadata"]["listName"] == import_module(f"workers.{role}").POOL.queue
        assert int(trigger["metadata"]["listLength"]) >= 1
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]


@pytest.fixture()
def state_dir(tmp_path, monkeypatch):
    """ERDU_STATE_DIR set to a fresh directory, the process's cached settings rebuilt around it."""
    from erdu_tasks.settings import get_settings

    monkeypatch.setenv("ERDU_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("ERDU_CONFIG", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_erdu_alive_reads_the_file_a_live_process_keeps_touching(state_dir):
    tmp_path = state_dir
    path = liveness.alive_file(tmp_path, "worker")
    runner = CliRunner()
    env = {"COLUMNS": "300"}
    missing = runner.invoke(cli_app, ["alive", "worker"], env=env)
    assert missing.exit_code == 1 and "does not exist" in missing.output
    liveness.keep_touching(path, every=0.05)
    os.utime(path, (time.time() - 600, time.time() - 600))
    deadline = time.monotonic() + 5
    while liveness.age_seconds(path) > 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    fresh = runner.invoke(cli_app, ["alive", "worker", "--max-age", "60"], env=env)
    assert fresh.exit_code == 0, fresh.output
    stale = liveness.alive_file(tmp_path, "beat")
    stale.touch()
    os.utime(stale, (time.time() - 600, time.time() - 600))
    wedged = runner.invoke(cli_app, ["alive", "beat", "--max-age", "60"], env=env)
    assert wedged.exit_code == 1 and "wedged" in wedged.output
