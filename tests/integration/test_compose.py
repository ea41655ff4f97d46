"""compose.yaml is accepted by docker-compose and says what the operations guide promises."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ROLES = ("ingest", "monitor", "commander", "diagnostician", "fixer", "resolver")
REQUIRED = {"ERDU_FLOWER_PASSWORD": "flower-secret", "ERDU_API_TOKEN": "api-token"}


def docker_compose() -> str:
    """The docker-compose binary; installed from Debian's package when missing (validating needs no engine)."""
    found = shutil.which("docker-compose")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "docker-compose"], capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("docker-compose")
        if found:
            return found
    pytest.fail("docker-compose is not installed and could not be installed here: install Debian's "
                "docker-compose package (apt-get install docker-compose) to validate compose.yaml")


def config(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ERDU_", "POSTGRES_"))}
    return subprocess.run([docker_compose(), "-f", str(COMPOSE), "config", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**clean, **env})


def resolved(**env: str) -> dict:
    done = config(**{**REQUIRED, **env})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_docker_compose_config_accepts_the_file():
    done = config("-q", **REQUIRED)
    assert done.returncode == 0, done.stderr


def test_every_part_of_the_stack_is_a_service_and_each_role_scales_by_variables():
    services = resolved(ERDU_FIXER_REPLICAS="3", ERDU_FIXER_CONCURRENCY="2")["services"]
    assert {"redis", "postgres", "migrate", "api", "beat", "flower", "metrics", *ROLES} <= set(services)
    for role in ROLES:
        assert services[role]["command"][:3] == ["erdu", "worker", role], role
        assert "healthcheck" in services[role], role
    assert services["fixer"]["deploy"]["replicas"] == 3
    assert services["fixer"]["command"][-2:] == ["--concurrency", "2"]
    assert services["commander"]["deploy"]["replicas"] == 1
    for name in ("redis", "postgres", "api", "beat", "flower", "metrics"):
        assert "healthcheck" in services[name], name
    assert services["fixer"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_redis_keeps_messages_append_only_and_never_evicts():
    command = resolved()["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_flower_and_the_api_refuse_to_start_without_credentials():
    done = config("-q", ERDU_API_TOKEN="api-token")
    assert done.returncode != 0 and "set ERDU_FLOWER_PASSWORD" in done.stderr
    flower = resolved()["services"]["flower"]
    assert flower["environment"]["ERDU_FLOWER__PASSWORD"] == "flower-secret"
    assert flower["ports"] and all(str(p).startswith("127.0.0.1:") for p in flower["ports"])  # published locally
