"""compose.yaml is accepted by docker-compose and says what the operations guide promises.

Where the docker-compose binary is absent the file is resolved in Python the way `docker-compose config`
resolves it (anchors, variables, required variables), so every structural test still runs and can fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ROLES = ("ingest", "monitor", "commander", "diagnostician", "fixer", "resolver")
REQUIRED = {"ERDU_FLOWER_PASSWORD": "flower-secret", "ERDU_API_TOKEN": "api-token"}


class ComposeError(Exception):
    """What `docker-compose config` would refuse, with its message."""


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}."""

    def one(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        expr = match["braced"]
        for op in (":-", ":?", "-", "?"):
            name, sep, arg = expr.partition(op)
            if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                value = env.get(name)
                unset = value is None or (op.startswith(":") and value == "")
                if op.endswith("-"):
                    return arg if unset else value
                if unset:
                    raise ComposeError(f"required variable {name} is missing a value: {arg}")
                return value
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", expr):
            raise ComposeError(f"invalid interpolation format: ${{{expr}}}")
        return env.get(expr, "")

    return _VARIABLE.sub(one, text)


def resolve_in_python(env: dict[str, str]) -> dict:
    """compose.yaml as `docker-compose config` resolves it: anchors merged, variables substituted,
    extension fields dropped, replicas as numbers; refused (ComposeError) where docker-compose refuses."""
    raw = yaml.safe_load(COMPOSE.read_text())

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if not str(k).startswith("x-")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return interpolate(node, env)
        return node

    doc = walk(raw)
    if not isinstance(doc.get("services"), dict) or not doc["services"]:
        raise ComposeError("compose.yaml has no services")
    for name, service in doc["services"].items():
        if not isinstance(service, dict) or not ("image" in service or "build" in service):
            raise ComposeError(f"service {name} has neither an image nor a build")
        deploy = service.get("deploy") or {}
        if "replicas" in deploy:
            try:
                deploy["replicas"] = int(deploy["replicas"])
            except (TypeError, ValueError):
                raise ComposeError(f"service {name}: replicas {deploy['replicas']!r} is not a number") from None
        for dep in service.get("depends_on") or {}:
            if dep not in doc["services"]:
                raise ComposeError(f"service {name} depends on undefined service {dep}")
        health = service.get("healthcheck")
        if health is not None and not (isinstance(health.get("test"), list) and health["test"][0] in
                                       ("CMD", "CMD-SHELL", "NONE")):
            raise ComposeError(f"service {name}: healthcheck test must be a CMD or CMD-SHELL list")
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~")) and source not in (doc.get("volumes") or {}):
                raise ComposeError(f"service {name} uses undefined volume {source}")
    return doc


def config(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`docker-compose config` when the binary is here; otherwise the same resolution in Python."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ERDU_", "POSTGRES_"))}
    found = shutil.which("docker-compose")
    if found:
        return subprocess.run([found, "-f", str(COMPOSE), "config", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**clean, **env})
    try:
        doc = resolve_in_python({**clean, **env})
    except ComposeError as exc:
        return subprocess.CompletedProcess(["compose-config"], 1, "", str(exc))
    return subprocess.CompletedProcess(["compose-config"], 0, "" if "-q" in args else yaml.safe_dump(doc), "")


def resolved(**env: str) -> dict:
    done = config(**{**REQUIRED, **env})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed; the file's "
                    "structure is still checked by the tests below")
def test_docker_compose_config_accepts_the_file():
    done = config("-q", **REQUIRED)
    assert done.returncode == 0, done.stderr


def test_the_file_resolved_in_python_has_images_commands_healthchecks_and_the_shared_environment():
    services = resolve_in_python({**REQUIRED, "ERDU_IMAGE": "erdu:test"})["services"]
    assert services["redis"]["image"].startswith("redis:") and services["postgres"]["image"].startswith("postgres:")
    for name in ("migrate", "api", "beat", "flower", "metrics", *ROLES):
        service = services[name]
        assert service["image"] == "erdu:test" and service["command"][0] == "erdu", name
        env = service["environment"]
        assert env["ERDU_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["ERDU_DATABASE_URL"] == "postgresql://postgres:erdu@postgres:5432/erdu", name
        assert env["ERDU_STATE_DIR"] == "/data", name
        if name != "migrate":
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    for role in ROLES:
        assert f"-d {role}@$HOSTNAME" in services[role]["healthcheck"]["test"][1], role   # $$ is a literal $
        assert services[role]["depends_on"]["postgres"]["condition"] == "service_healthy", role
    assert services["api"]["environment"]["ERDU_API_TOKEN"] == "api-token"


def test_the_python_resolution_refuses_what_docker_compose_refuses():
    assert interpolate("${A:-x} ${B-y} $$C ${D}", {"B": ""}) == "x  $C "
    with pytest.raises(ComposeError, match="set A"):
        interpolate("${A:?set A}", {"A": ""})
    with pytest.raises(ComposeError, match="invalid interpolation"):
        interpolate("${not valid}", {})
    with pytest.raises(ComposeError, match="replicas"):
        resolve_in_python({**REQUIRED, "ERDU_FIXER_REPLICAS": "many"})


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
