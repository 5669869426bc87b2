"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine.

The compose file is parsed as YAML and its `${VAR}` references are resolved with `.env.example`,
as `docker compose --env-file .env.example` would: required services, ports, variables, volumes,
`depends_on` targets and conditions, healthchecks, the GPU reservation, no hard-coded secrets.
The Dockerfile's command must be a console script of this package. Where a Compose CLI is
installed, `docker compose config` (or the older `docker-compose config`) must accept the file
and its output parse (that needs no engine); otherwise that test is skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

REQUIRED = {"postgres", "prefect-server", "minio", "minio-init", "dask-scheduler", "gpu-worker"}
ONE_SHOT = {"minio-init"}
# `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `$VAR`; `$$` is a literal `$`
VAR = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _env_example() -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f".env.example:{n}: not KEY=VALUE"
        assert key not in out, f".env.example:{n}: {key} defined twice"
        out[key] = value
    return out


def _walk_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_walk_strings(k), *_walk_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _walk_strings(item)]
    return []


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    """Resolve `${VAR}` as compose does (defaults included), `$$` → `$`."""

    def one(text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(4)
            op, default = m.group(2), m.group(3) or ""
            value = env.get(name)
            if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
                return default
            assert value is not None, f"${{{name}}} has no value"
            return value

        return VAR.sub(sub, text).replace("$$", "$")

    if isinstance(node, str):
        return one(node)
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(item, env) for item in node]
    return node


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    resolved = _interpolate(raw, _env_example())
    assert isinstance(resolved, dict)
    return resolved


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def test_required_services(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) >= REQUIRED
    for name, svc in _services(compose).items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"


def test_every_variable_is_defined_in_env_example_and_used(raw: dict[str, Any]) -> None:
    used = {m.group(1) or m.group(4) for s in _walk_strings(raw) for m in VAR.finditer(s)}
    defined = set(_env_example())
    assert used, "the compose file takes its settings from .env"
    assert used - defined == set(), f"used in docker-compose.yml, missing from .env.example: {used - defined}"
    assert defined - used == set(), f"defined in .env.example, never used: {defined - used}"


def test_no_hard_coded_secrets(raw: dict[str, Any]) -> None:
    for name, svc in raw["services"].items():
        env = svc.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env)
        for key, value in items:
            if SECRET_NAME.search(str(key)):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", str(value)), (
                    f"{name}: {key} must come from .env as ${{VAR}}, got {value!r}"
                )
        for text in _walk_strings(svc):  # e.g. a database URL with an inline password
            for m in re.finditer(r"://([^:/@\s]+):([^@\s]+)@", text):
                assert m.group(2).startswith("${"), f"{name}: a password written into {text!r}"
    for key, value in _env_example().items():
        if SECRET_NAME.search(key) and "ACCESS_KEY_ID" not in key:
            assert "change-me" in value, f".env.example: {key} must be a placeholder, got {value!r}"


def _ports(svc: dict[str, Any]) -> list[tuple[int, int]]:
    out = []
    for entry in svc.get("ports", []):
        if isinstance(entry, dict):
            out.append((int(entry["published"]), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"port {entry!r}: publish as HOST:CONTAINER"
        out.append((int(parts[-2]), int(parts[-1])))
    return out


def test_ports_unique_and_sane(compose: dict[str, Any]) -> None:
    published: dict[int, str] = {}
    for name, svc in _services(compose).items():
        for host, container in _ports(svc):
            assert 1024 <= host <= 65535 and 1 <= container <= 65535, f"{name}: port {host}:{container}"
            assert host not in published, f"host port {host} published by {published[host]} and {name}"
            published[host] = name
    assert {published.get(4200), published.get(9000)} == {"prefect-server", "minio"}


def test_volumes_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    named: set[str] = set()
    for name, svc in _services(compose).items():
        for entry in svc.get("volumes", []):
            source = entry["source"] if isinstance(entry, dict) else str(entry).split(":")[0]
            if source.startswith((".", "/", "~")):
                continue  # a bind mount of a host path
            assert source in declared, f"{name}: volume {source!r} is not declared under volumes:"
            named.add(source)
    assert declared == named, f"declared but unused volumes: {declared - named}"
    assert {"postgres-data", "minio-data"} <= declared


def test_depends_on_targets_and_conditions(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions (a mapping)"
        for target, spec in deps.items():
            assert target in services and target != name, f"{name}: depends_on unknown service {target!r}"
            condition = spec.get("condition")
            assert condition in CONDITIONS, f"{name} → {target}: condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health: none defined"
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["gpu-worker"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_healthchecks(compose: dict[str, Any]) -> None:
    for name, svc in _services(compose).items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no"
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name}: a long-running service needs a healthcheck"


def test_bucket_init(compose: dict[str, Any]) -> None:
    init = _services(compose)["minio-init"]
    script = " ".join(_walk_strings(init.get("command"))) + " ".join(_walk_strings(init.get("entrypoint")))
    assert "mc mb" in script and "$TPGRPO_BUCKET" in script.replace("${TPGRPO_BUCKET}", "$TPGRPO_BUCKET")


def test_gpu_reservation(compose: dict[str, Any]) -> None:
    gpu = _services(compose)["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "build" in gpu and "BASE_IMAGE" in gpu["build"]["args"]  # the CUDA base image


def test_worker_environment(compose: dict[str, Any]) -> None:
    for name in ("gpu-worker", "prefect-worker"):
        env = _services(compose)[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]


def _exec_form(instruction: str, text: str) -> list[str] | None:
    lines = [ln for ln in text.splitlines() if ln.strip().upper().startswith(instruction + " ")]
    if not lines:
        return None
    value = json.loads(lines[-1].strip()[len(instruction) :].strip())  # the last one wins
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{instruction}: exec form"
    return value


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint, cmd = _exec_form("ENTRYPOINT", text), _exec_form("CMD", text)
    program = (entrypoint or cmd or [""])[0]
    assert program in scripts, f"the image runs {program!r}, not a console script of the package ({scripts})"
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert "tesseract-ocr" in text  # the OCR reward
    assert re.search(r"^ARG BASE_IMAGE=", text, re.MULTILINE)
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch")
    )
    assert f"ARG TORCH_VERSION={pin.split('==')[1]}" in text  # the same pin as pyproject.toml
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".venv" in ignored and ".git" in ignored


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy and subprocess.run([legacy, "version"], capture_output=True).returncode == 0:
        return [legacy]
    return None


def test_compose_config_cli(compose: dict[str, Any]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI here (neither `docker compose` nor `docker-compose`)")
    out = subprocess.run(
        [*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)
    assert set(rendered["services"]) == set(_services(compose))
    assert rendered["services"]["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
