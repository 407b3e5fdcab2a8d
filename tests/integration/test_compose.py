"""docker-compose.yml without a Docker engine: the compose specification's JSON schema,
then the structure that matters: start order, profiles, healthchecks and the settings
every Ponder container ends up with (interpolated as compose would, then parsed by
Ponder's own Settings)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from core.embedded.catalog import CATALOG
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_ENV = ROOT / "docker" / "cpu.env"
PONDER_SERVICES = ("migrate", "api", "worker", "reaper")


def load() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``$$`` (enough for this file)."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if env.get(name):
            return env[name]
        return default or ""

    value = re.sub(r"\$\{(\w+)(:?-([^}]*))?\}", one, value.replace("$$", "\0"))
    return value.replace("\0", "$")


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def settings_of(
    service: dict[str, Any], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The Settings a container of ``service`` would build from its environment."""
    import os

    for key in [k for k in os.environ if k.startswith("PONDER_")]:
        monkeypatch.delenv(key)
    for key, value in service["environment"].items():
        monkeypatch.setenv(key, interpolate(str(value), env))
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_validates_against_the_compose_specification() -> None:
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert exe is not None, "check-jsonschema is missing: pip install -e '.[test]'"
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_piece_is_there_and_profiles_choose_the_pools(services: dict[str, Any]) -> None:
    assert set(services) == {
        "postgres", "redis", "migrate", "api", "worker", "reaper",
        "vllm-small", "vllm-large", "models",
    }  # fmt: skip
    profiles = {name: s.get("profiles") for name, s in services.items()}
    assert profiles["vllm-small"] == profiles["vllm-large"] == ["gpu"]
    assert profiles["models"] == ["cpu"]
    always = {name for name, p in profiles.items() if p is None}
    assert always == {"postgres", "redis", "migrate", "api", "worker", "reaper"}


def test_start_order_waits_for_healthy_services_and_the_migration(
    services: dict[str, Any],
) -> None:
    assert services["migrate"]["command"] == ["ponder", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker", "reaper"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"]["condition"] == "service_healthy", name
    # Workers wait for the model servers of whichever profile is active, and only those.
    for server in ("vllm-small", "vllm-large", "models"):
        assert services["worker"]["depends_on"][server] == {
            "condition": "service_healthy",
            "required": False,
        }
    # Whatever is waited for as healthy has a healthcheck.
    for name, service in services.items():
        for dep, rule in (service.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                assert "test" in services[dep].get("healthcheck", {}), f"{name} -> {dep}"
    for name in ("api", "worker", "postgres", "redis", "vllm-small", "vllm-large", "models"):
        assert services[name]["healthcheck"]["test"], name


def test_workers_scale_and_stop_gracefully(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:2] == ["ponder", "worker"]
    assert worker["stop_grace_period"] == "2m"
    assert services["reaper"]["command"] == ["python", "-m", "workers.reaper"]
    assert services["api"]["command"][0:2] == ["uvicorn", "app.api.main:app"]


def test_only_workers_may_create_the_sandboxs_namespaces_and_hold_no_capability(
    services: dict[str, Any],
) -> None:
    """bubblewrap in a container needs Docker's seccomp filter and /proc masks lifted
    (docs/deploy.md): on the worker, which runs the python tool, and nowhere else."""
    assert services["worker"]["security_opt"] == [
        "seccomp=unconfined",
        "systempaths=unconfined",
        "apparmor=unconfined",
    ]
    for name, service in services.items():
        assert "cap_add" not in service and not service.get("privileged"), name
        if name != "worker":
            assert "security_opt" not in service, name
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    (install,) = re.findall(r"apt-get install [^\n]*", dockerfile)
    assert {"bubblewrap", "python3"} <= set(install.split()), install


def test_the_api_is_published_on_loopback_unless_the_operator_says_otherwise(
    services: dict[str, Any],
) -> None:
    (port,) = services["api"]["ports"]
    assert interpolate(port, {}) == "127.0.0.1:8000:8000"
    assert interpolate(port, {"PONDER_BIND": "0.0.0.0", "PONDER_PORT": "9000"}) == (
        "0.0.0.0:9000:8000"
    )


def test_ponder_images_are_built_here_never_pulled(services: dict[str, Any]) -> None:
    for name in (*PONDER_SERVICES, "models"):
        service = services[name]
        assert service["pull_policy"] == "build", name
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name
        assert service["build"]["context"] == ".", name
    assert {services[name]["image"] for name in PONDER_SERVICES} == {"ponder:latest"}
    assert services["models"]["image"] == "ponder-embedded:latest"


def test_the_minimum_compose_version_is_stated() -> None:
    # env_file `required: false` and depends_on `required: false` need Compose 2.24.
    assert "Compose 2.24 or later" in COMPOSE.read_text().split("\nname:")[0]
    assert "Compose 2.24" in (ROOT / "docs" / "deploy.md").read_text()


def test_vllm_pools_serve_the_documented_models_on_gpus(services: dict[str, Any]) -> None:
    for name, model in (
        ("vllm-small", "Qwen/Qwen2.5-1.5B-Instruct"),
        ("vllm-large", "Qwen/Qwen2.5-7B-Instruct"),
    ):
        service = services[name]
        assert service["image"].startswith("vllm/vllm-openai:")
        args = service["command"]
        assert args[args.index("--model") + 1] == model
        assert "--enable-prefix-caching" in args
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_default_settings_point_every_process_at_postgres_redis_and_vllm(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    for name in PONDER_SERVICES:
        settings = settings_of(services[name], {}, monkeypatch)
        assert settings.environment == "production"
        assert settings.resolved_database_url().startswith("postgresql://ponder:ponder@postgres")
        assert settings.resolved_broker_url() == "redis://redis:6379/0"
        seen.append({role: (p.endpoints, p.model, p.kind) for role, p in settings.pools.items()})
    assert all(s == seen[0] for s in seen), "every Ponder process must see the same pools"
    assert seen[0] == {
        "small": (["http://vllm-small:8000"], "Qwen/Qwen2.5-1.5B-Instruct", "vllm"),
        "large": (["http://vllm-large:8000"], "Qwen/Qwen2.5-7B-Instruct", "vllm"),
    }
    served = {
        name: services[name]["command"][services[name]["command"].index("--served-model-name") + 1]
        for name in ("vllm-small", "vllm-large")
    }
    assert served == {"vllm-small": seen[0]["small"][1], "vllm-large": seen[0]["large"][1]}


def test_cpu_env_points_the_pools_at_the_embedded_models(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_file(CPU_ENV)
    assert env["COMPOSE_PROFILES"] == "cpu"
    settings = settings_of(services["worker"], env, monkeypatch)
    assert {role: (p.endpoints, p.model, p.kind) for role, p in settings.pools.items()} == {
        "small": (["http://models:8101"], CATALOG["small"].name, "llamacpp"),
        "large": (["http://models:8102"], CATALOG["large"].name, "llamacpp"),
    }
    models = services["models"]
    command = models["command"]
    assert (ROOT / command[1]).is_file()
    assert command[command.index("--small-port") + 1] == "8101"
    assert command[command.index("--large-port") + 1] == "8102"
    assert models["build"]["args"] == {"EXTRAS": "embedded,mcp,otel"}
    assert json.loads(env["PONDER_SMALL_ENDPOINTS"]) == ["http://models:8101"]


def test_the_image_installs_every_package_of_the_distribution() -> None:
    """A normal (non-editable) install of all of pyproject's packages, no source on the path."""
    import tomllib

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({pattern.rstrip("*").split(".")[0] for pattern in include})
    assert {"app", "core", "bench", "evals"} <= set(packages)
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, package
    assert "pip install --no-deps /src" in dockerfile
    assert "-e " not in dockerfile and "--editable" not in dockerfile
    assert "COPY docker ./docker" in dockerfile  # the models service runs docker/serve_models.py
    assert re.search(r"^USER ponder$", dockerfile, re.M)
