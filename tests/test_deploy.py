"""docker-compose.yml and the Dockerfile, validated statically (no Docker engine in CI)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_compose_has_every_role() -> None:
    assert set(SERVICES) == {
        "redis",
        "postgres",
        "migrate",
        "worker",
        "scheduler",
        "web",
        "flower",
    }


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_data_services_publish_no_ports_and_have_healthchecks(name: str) -> None:
    service = SERVICES[name]
    assert "ports" not in service
    assert service["healthcheck"]["test"]


def test_redis_keeps_messages() -> None:
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_wait_on_health_or_completion(name: str) -> None:
    for dep, rule in (SERVICES[name].get("depends_on") or {}).items():
        assert dep in SERVICES
        if rule["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dep], f"{name} waits on {dep} with no healthcheck"
        else:
            assert rule["condition"] == "service_completed_successfully"
            assert SERVICES[dep]["restart"] == "no"


def test_app_services_share_volumes_and_use_declared_ones() -> None:
    declared = set(COMPOSE["volumes"])
    for name in ("migrate", "worker", "scheduler", "web"):
        for volume in SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            assert source.startswith("./") or source in declared
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"]
    assert SERVICES["worker"]["command"] == ["worker"]


@pytest.mark.parametrize("name", ["migrate", "worker", "scheduler", "web"])
def test_csv_batches_are_staged_in_the_database(name: str) -> None:
    """A worker on another machine needs no shared volume for CSV batches (issue 24)."""
    assert SERVICES[name]["environment"]["DIGITS_STAGING"] == "database"
    assert SERVICES[name]["environment"]["DIGITS_DATABASE_URL"].startswith("postgresql")


def test_no_secret_in_compose() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"PASSWORD:\s*\$\{POSTGRES_PASSWORD:\?", text)
    assert "change-me" not in text


def test_dockerfile_installs_the_package_and_drops_root() -> None:
    lines = [line.split("#")[0].strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [
        line.split()[0]
        for line in lines
        if line and not line.startswith("&&") and line.split()[0].isupper()
    ]
    first_from = next(line for line in lines if line.startswith("FROM"))
    assert instructions[0] == "FROM" and "python:3.11" in first_from
    assert "USER" in instructions and instructions[-1] == "CMD"
    for package in ("digits", "worker", "scheduler", "model_store", "migrations"):
        assert any(line.startswith(f"COPY {package} ") for line in lines), package
    assert any(line.startswith("RUN pip install .") for line in lines)


def test_web_service_serves_the_console_with_a_token_and_a_healthcheck() -> None:
    """The console in compose: same image, listens on every interface of its container (so it
    must have the token, from the environment, never from the file), published on the host's
    loopback only, healthy when /healthz answers, and it shares the home (uploads) and the
    models with the workers."""
    web = SERVICES["web"]
    assert web["image"] == SERVICES["worker"]["image"]
    assert web["command"][:3] == ["web", "--host", "0.0.0.0"]
    assert web["command"][web["command"].index("--port") + 1] == "8000"
    assert web["environment"]["DIGITS_WEB_TOKEN"].startswith("${DIGITS_WEB_TOKEN:?")
    assert web["ports"] == ["127.0.0.1:8000:8000"]
    check = " ".join(web["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in check
    assert web["volumes"] == SERVICES["worker"]["volumes"]
    assert (
        web["environment"]["DIGITS_DATABASE_URL"]
        == (SERVICES["worker"]["environment"]["DIGITS_DATABASE_URL"])
    )
    assert "DIGITS_WEB_TOKEN=" in (ROOT / ".env.example").read_text()
