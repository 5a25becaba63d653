"""``compose.yaml`` against the settings: no container engine runs here, so the file is checked as data.

Every ``OBLIVIATE_*`` variable a service sets must be one the settings read (a misspelt variable is
silently ignored by pydantic-settings); the API replicas serve through the ``vllm`` service; workers
reserve a GPU; vLLM allows runtime LoRA loading with a ``--max-lora-rank`` that fits the composed
adapters; secrets are references to the environment, never values. PyYAML comes with Litestar.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from gpu_runtime.pipeline.compose import VLLM_MAX_LORA_RANKS
from gpu_runtime.pipeline.types import PipelineOptions
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
REFERENCE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}$")
SECRET = re.compile(r"PASSWORD|SECRET|API_KEY|ACCESS_KEY")
USERINFO_PASSWORD = re.compile(r"://[^:/@]+:(\$\{[^}]*\}|[^@/]*)@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def setting_env_names() -> dict[str, str]:
    """Environment variable -> settings field, as pydantic-settings reads them."""
    names = {}
    prefix = Settings.model_config.get("env_prefix", "")
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            choices = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [prefix + field]
        for choice in choices:
            if choice.upper().startswith(prefix.upper()):
                names[choice.upper()] = field
    return names


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return [str(c) for c in (cmd.split() if isinstance(cmd, str) else cmd)]


def with_placeholders(value: str) -> str:
    """Interpolate ``${VAR...}`` as compose would, with a dummy value for every variable."""
    return re.sub(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?[^}]*\}", lambda m: m.group(2) or "placeholder", value)


def services_running(compose: dict[str, Any], subcommand: str) -> dict[str, dict[str, Any]]:
    found = {}
    for name, service in compose["services"].items():
        cmd = command(service)
        if cmd[:2] == ["obliviate", subcommand]:
            found[name] = service
    return found


def gpus(service: dict[str, Any]) -> int:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
        "devices"
    )
    return sum(int(d.get("count", 0)) for d in devices or [] if "gpu" in d.get("capabilities", []))


def test_the_topology_has_its_processes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "vllm"):
        assert name in services, f"compose.yaml has no {name!r} service"
    assert services_running(compose, "serve"), "no API replica (obliviate serve)"
    assert services_running(compose, "worker"), "no worker (obliviate worker)"
    assert services_running(compose, "migrate"), "no migration job (obliviate migrate)"


def test_every_obliviate_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = setting_env_names()
    unknown = [
        f"{name}: {key}"
        for name, service in compose["services"].items()
        for key in environment(service)
        if key.startswith("OBLIVIATE_") and key not in known
    ]
    assert not unknown, "compose.yaml sets variables no setting reads:\n" + "\n".join(unknown)


def test_the_artifact_store_setting_exists_and_every_process_uses_the_same_one(
    compose: dict[str, Any],
) -> None:
    if "OBLIVIATE_ARTIFACTS_URL" not in setting_env_names():
        pytest.fail(
            "compose.yaml stores artifacts in MinIO through OBLIVIATE_ARTIFACTS_URL, but service/settings.py "
            "has no `artifacts_url` setting yet (the object-store work of issue 12, item 3): add it there"
        )
    shared = ("OBLIVIATE_DATABASE_URL", "OBLIVIATE_REDIS_URL", "OBLIVIATE_ARTIFACTS_URL")
    processes = {**services_running(compose, "serve"), **services_running(compose, "worker")}
    for key in shared:
        values = {name: environment(service).get(key) for name, service in processes.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), f"{key} differs: {values}"
    env = environment(next(iter(processes.values())))
    services = compose["services"]
    assert urlsplit(with_placeholders(env["OBLIVIATE_DATABASE_URL"])).hostname == "postgres"
    assert urlsplit(env["OBLIVIATE_REDIS_URL"]).hostname == "redis"
    assert env["OBLIVIATE_ARTIFACTS_URL"].startswith("s3://")
    assert urlsplit(env["AWS_ENDPOINT_URL"]).hostname == "minio" and "minio" in services


def test_api_replicas_serve_through_the_vllm_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services_running(compose, "serve").items():
        env = environment(service)
        assert env.get("OBLIVIATE_SERVING_BACKEND") == "openai-upstream", name
        upstreams = [u for u in env.get("OBLIVIATE_UPSTREAM_URLS", "").split(",") if u]
        assert upstreams, f"{name}: OBLIVIATE_UPSTREAM_URLS is empty"
        for url in upstreams:
            host = urlsplit(url).hostname
            assert host in services, f"{name}: upstream {url} is not a service of compose.yaml"
            assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in environment(services[host]), host
        assert env.get("OBLIVIATE_WORKERS") == "0", f"{name}: workers run as their own service"
        assert gpus(service) == 0, f"{name}: an API replica needs no GPU"
        assert int((service.get("deploy") or {}).get("replicas", 1)) >= 2, (
            f"{name}: one replica is no scale-out"
        )
        # The settings accept what the replica gets.
        settings = Settings(
            **{f: with_placeholders(env[k]) for k, f in setting_env_names().items() if k in env}
        )
        assert settings.serving_backend == "openai-upstream" and settings.workers == 0
        assert settings.upstream_api_key is not None


def test_workers_reserve_a_gpu_and_have_the_model(compose: dict[str, Any]) -> None:
    for name, service in services_running(compose, "worker").items():
        assert gpus(service) >= 1, f"{name}: a worker needs a GPU reservation"
        env = environment(service)
        assert env.get("OBLIVIATE_BASE_MODEL"), f"{name}: the worker trains on the base model's files"
        assert "--max-jobs" not in command(service) or command(service)[-1] == "1", "GPU workers run one job"


def test_vllm_loads_loras_at_runtime_with_a_rank_that_fits(compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert environment(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].lower() == "true"
    args = command(vllm)
    assert "--enable-lora" in args and gpus(vllm) >= 1
    rank = int(args[args.index("--max-lora-rank") + 1])
    assert rank in VLLM_MAX_LORA_RANKS
    assert rank >= PipelineOptions().max_composed_rank, (
        "vLLM would refuse the re-compressed composed adapters"
    )
    api = next(iter(services_running(compose, "serve").values()))
    model = environment(api).get("OBLIVIATE_UPSTREAM_MODEL")
    assert model is None or args[args.index("--served-model-name") + 1] == model
    # The adapter store the replicas write is the one vLLM reads.
    adapter_dir = environment(api)["OBLIVIATE_UPSTREAM_ADAPTER_DIR"]
    data_dir = environment(api)["OBLIVIATE_DATA_DIR"]
    api_volume = {v.split(":")[0] for v in api["volumes"] if v.split(":")[1] == f"{data_dir}/adapters"}
    vllm_volume = {v.split(":")[0] for v in vllm["volumes"] if v.split(":")[1] == adapter_dir}
    assert api_volume and api_volume == vllm_volume


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    literal = [
        f"{name}: {key}"
        for name, service in compose["services"].items()
        for key, value in environment(service).items()
        if SECRET.search(key) and not REFERENCE.match(value)
    ]
    assert not literal, "secrets must be ${VAR} references:\n" + "\n".join(literal)
    in_urls = [
        f"{name}: {key}"
        for name, service in compose["services"].items()
        for key, value in environment(service).items()
        for password in USERINFO_PASSWORD.findall(value)
        if not REFERENCE.match(password)
    ]
    assert not in_urls, "passwords inside URLs must be ${VAR} references:\n" + "\n".join(in_urls)
