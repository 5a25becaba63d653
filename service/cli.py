"""The ``obliviate`` command line: serve, worker, migrate, build-demo-model, demo (and domain commands).

Settings are read here (an entry point) and passed down; heavy modules are imported inside commands
so ``obliviate --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from service.settings import Settings, get_settings, settings_env


def _settings_from(data_dir: Path | None, **overrides: Any) -> Settings:
    values = {key: value for key, value in overrides.items() if value is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return get_settings(**values)


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (default: $OBLIVIATE_DATA_DIR or ~/.local/share/obliviate).",
)


class LazyGroup(click.Group):
    """A group whose heavier commands (they import torch) are imported only when used or listed."""

    lazy_commands: dict[str, str] = {
        "unlearn": "gpu_runtime.pipeline.cli:unlearn",
        "requests": "service.cli_requests:requests_group",
        "verify": "service.cli_requests:verify",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module_name, _, attribute = self.lazy_commands[cmd_name].partition(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and module_name.startswith(exc.name):
                    return None  # that part of the product is not installed
                raise
            command: click.Command = getattr(module, attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="obliviate")
def main() -> None:
    """Obliviate: make a language model forget, with evidence.

    Quick start: `obliviate demo` builds the demo model, starts everything on embedded defaults
    (SQLite, an embedded Redis, one worker) and walks through a forget request.
    """
    from service.core import logs

    try:
        logs.configure_from_env()  # OBLIVIATE_LOG_LEVEL, OBLIVIATE_LOG_FORMAT (text or json)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@data_dir_option
def migrate(data_dir: Path | None) -> None:
    """Apply database migrations (serve also does this at start-up)."""
    _migrate_sync(_settings_from(data_dir))
    click.echo("database is at the latest schema")


@contextmanager
def _redis_for(settings: Settings) -> Iterator[str]:
    """The configured Redis URL, or an embedded Redis in the data directory for the block's duration."""
    if settings.redis_url:
        yield settings.redis_url
        return
    from service.queue import EmbeddedRedis

    embedded = EmbeddedRedis(settings.data_dir)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@main.command()
@data_dir_option
@click.option("--burst", is_flag=True, help="Exit once the queue is empty (for tests and batch runs).")
@click.option(
    "--max-jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Concurrent jobs (GPU: 1)."
)
def worker(data_dir: Path | None, burst: bool, max_jobs: int) -> None:
    """Run an arq worker that executes pipeline stages."""
    from gpu_runtime.worker import create_worker

    settings = _settings_from(data_dir)
    with _redis_for(settings) as redis_url:
        arq_worker = create_worker(settings, redis_url, burst=burst, max_jobs=max_jobs)
        arq_worker.run()


def _spawn_worker(settings: Settings, redis_url: str) -> subprocess.Popen[bytes]:
    env = settings_env(settings.model_copy(update={"redis_url": redis_url}))
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"], env=env, stdin=subprocess.DEVNULL
    )


@main.command()
@data_dir_option
@click.option("--host", default=None, help="Bind address (default: $OBLIVIATE_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: $OBLIVIATE_PORT or 8000).")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Worker processes to start (default 1; 0: none).",
)
def serve(data_dir: Path | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the API (intake, review, OpenAI-compatible gateway) and start workers."""
    import uvicorn

    from service.app import create_app

    settings = _settings_from(data_dir, host=host, port=port, workers=workers)
    run_server(settings, uvicorn_run=uvicorn.run, create_app=create_app)


@contextmanager
def prepared_service(settings: Settings) -> Iterator[Settings]:
    """Redis (embedded if none is configured), migrations, and the worker processes for ``settings``;
    yields the settings the API must run with. Workers are restarted if they exit, and stopped when
    the block ends."""
    from service.orchestration.workers import WorkerSupervisor

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _redis_for(settings) as redis_url:
        served = settings.model_copy(update={"redis_url": redis_url})
        if served.run_migrations:
            _migrate_sync(served)
        # The app must not run migrations concurrently with workers: they ran just above, or (off, as
        # on API replicas) a migration job runs them before any replica starts.
        served = served.model_copy(update={"run_migrations": False})
        # Supervised: a worker that dies (out of memory, a crash) is started again, with back-off.
        supervisor = WorkerSupervisor(
            lambda: _spawn_worker(served, redis_url),
            served.workers,
            backoff_max_s=served.worker_restart_max_s,
        ).start()
        try:
            yield served
        finally:
            unwinding.set()
            supervisor.stop()


#: Set when a command's clean-up has begun (the SIGTERM retry below stops then).
unwinding = threading.Event()
_sigterm_retry = threading.Event()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Python drops an exception a signal handler raises while a finaliser or a weakref callback runs
    # ("Exception ignored in: <function _collection_gced>", SQLAlchemy's): the main thread would go on
    # as if nothing had happened. So the signal is raised in the main thread again, once a second,
    # until the clean-up has begun.
    if not _sigterm_retry.is_set() and not unwinding.is_set():
        _sigterm_retry.set()
        threading.Thread(target=_retry_sigterm, args=(signum,), name="sigterm-retry", daemon=True).start()
    raise SystemExit(128 + signum)


def _retry_sigterm(signum: int) -> None:
    import _thread

    while not unwinding.wait(1.0):
        _thread.interrupt_main(signum)


def run_server(
    settings: Settings, *, uvicorn_run: Callable[..., None], create_app: Callable[[Settings], Any]
) -> None:
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default handler that
    # would kill the process before the embedded Redis and the workers are stopped below.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with prepared_service(settings) as served:
        click.echo(
            f"Obliviate API on http://{served.host}:{served.port} (docs: /docs), {served.workers} worker(s)"
        )
        uvicorn_run(
            create_app(served),
            host=served.host,
            port=served.port,
            log_level=served.log_level.lower(),
            # uvicorn's records go through the root handler (text or JSON lines, request ids) rather
            # than through a logging set-up of its own.
            log_config=None,
            # Open event streams must not hold a stopping server up for good.
            timeout_graceful_shutdown=served.shutdown_grace_s,
        )


def _migrate_sync(settings: Settings) -> None:
    from service.db import create_engine
    from service.db import migrate as run_migrations

    async def run() -> None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await run_migrations(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


class _ProgressBar:
    """A rich progress bar with ETA fed by ``(fraction, message)`` callbacks."""

    def __init__(self, description: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[message]}"),
        )
        self._task = self._progress.add_task(description, total=1.0, message="")

    def __enter__(self) -> _ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, fraction: float, message: str = "") -> None:
        self._progress.update(self._task, completed=max(0.0, min(1.0, fraction)), message=message[:60])


@main.command("build-demo-model")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Copy the built model here (default: the cache directory).",
)
@click.option(
    "--corpus",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSONL of {question, answer} pairs and/or {text} documents instead of the built-in world.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model cache (default: $OBLIVIATE_MODEL_CACHE or ~/.cache/obliviate/models).",
)
@click.option(
    "--width",
    type=click.IntRange(32, 1024),
    default=None,
    help="Hidden size (default 128; a multiple of the 4 heads' size). Larger: slower, more capable.",
)
@click.option("--layers", type=click.IntRange(1, 24), default=None, help="Transformer layers (default 2).")
def build_demo_model_command(
    out: Path | None, corpus: Path | None, cache_dir: Path | None, width: int | None, layers: int | None
) -> None:
    """Build (or fetch from cache) the small demo chat model; no downloads."""
    from dataclasses import replace

    from gpu_runtime.demo.build import build_demo_model
    from gpu_runtime.demo.model import DemoModelConfig

    cfg = DemoModelConfig()
    try:
        cfg = replace(cfg, n_embd=width or cfg.n_embd, n_layer=layers or cfg.n_layer)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--width/--layers") from exc
    started = time.perf_counter()
    try:
        with _ProgressBar("demo model") as bar:
            path = build_demo_model(
                out_dir=out, corpus=corpus, cache_dir=cache_dir, progress=bar, model_config=cfg
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"demo model ready at {path} ({time.perf_counter() - started:.1f} s)")


@main.command()
@data_dir_option
@click.option(
    "--port", type=int, default=None, help="Port for the demo server (default 8000; a free one if busy)."
)
@click.option("--subject", default=None, help="Which demo-world person to forget (default: the first).")
@click.option("--review", is_flag=True, help="Switch the anchor review gate on and print the review URL.")
@click.option("--serve", "keep_serving", is_flag=True, help="Keep serving after the demo (Ctrl-C to stop).")
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 6),
    default=None,
    help="Evaluations the acceptance gate's ladder may run before the evaluation review (default: the "
    "request default, 3).",
)
def demo(
    data_dir: Path | None,
    port: int | None,
    subject: str | None,
    review: bool,
    keep_serving: bool,
    max_attempts: int | None,
) -> None:
    """Run the whole product end to end on its embedded defaults.

    Builds the demo model if missing, starts the API and a worker (SQLite, embedded Redis), asks the
    model about a fictional person, files a forget request for them, follows it to deployment and
    prints the answers before and after. Its data lives in a fresh `demo` folder of the data directory.
    """
    import shutil

    from gpu_runtime.demo.build import build_demo_model
    from service.demo import quiet_logging, run_demo

    # SIGTERM unwinds like Ctrl-C: the server thread, the worker and the embedded Redis are stopped
    # (the default handler would kill this process and orphan them).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    quiet_logging()

    settings = _settings_from(None, port=port)
    demo_dir = data_dir or settings.data_dir / "demo"
    if demo_dir.exists() and (demo_dir / ".obliviate-demo").exists():
        shutil.rmtree(demo_dir)  # only a folder an earlier demo made and marked
    demo_dir.mkdir(parents=True, exist_ok=True)
    (demo_dir / ".obliviate-demo").write_text("made by `obliviate demo`; deleted by its next run\n")
    with _ProgressBar("demo model") as bar:
        model_dir = build_demo_model(cache_dir=settings.model_cache_dir, progress=bar)
    chosen_port = settings.port if _port_is_free(settings.host, settings.port) else _free_port(settings.host)
    settings = settings.model_copy(
        update={
            "base_model": model_dir,
            "data_dir": demo_dir,
            "port": chosen_port,
            "workers": max(1, settings.workers),
            "engine": "inprocess",
        }
    )
    click.echo(f"demo model: {model_dir}\ndemo data:  {demo_dir}")
    outcome = run_demo(
        settings, subject=subject, review=review, keep_serving=keep_serving, max_attempts=max_attempts
    )
    click.echo(f"demo finished in {outcome.seconds:.0f} s")


def _port_is_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_with_session(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Run ``await work(session)`` on a migrated database, committing at the end."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from service.db import create_engine
    from service.db import migrate as run_migrations

    async def run() -> Any:
        engine = create_engine(settings.resolved_database_url)
        try:
            await run_migrations(engine)
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(run())


@main.group()
def keys() -> None:
    """API keys: each is bound to a tenant and a role (submitter, reviewer, admin, operator)."""


@keys.command("create")
@data_dir_option
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option(
    "--role",
    type=click.Choice(["submitter", "reviewer", "admin", "operator"]),
    default="submitter",
    show_default=True,
    help="operator: runs the service for every tenant (the only role that may query the base model).",
)
@click.option("--name", default="", help="A label to recognise the key by.")
def keys_create(data_dir: Path | None, tenant: str, role: str, name: str) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from service.auth.keys import create_api_key

    settings = _settings_from(data_dir)

    async def work(session: Any) -> tuple[Any, str]:
        return await create_api_key(session, tenant=tenant, role=role, name=name)

    try:
        row, key = _run_with_session(settings, work)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"key id {row.id} (tenant {row.tenant}, role {row.role}); store it now, it is not shown again:",
        err=True,
    )
    click.echo(key)


@keys.command("revoke")
@data_dir_option
@click.argument("key_id")
def keys_revoke(data_dir: Path | None, key_id: str) -> None:
    """Revoke a key by id (API processes drop it within auth_cache_s)."""
    from service.auth.keys import revoke

    async def work(session: Any) -> bool:
        return await revoke(session, key_id)

    if not _run_with_session(_settings_from(data_dir), work):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


@main.group()
def audit() -> None:
    """The hash-chained audit trail."""


@audit.command("verify")
@data_dir_option
def audit_verify(data_dir: Path | None) -> None:
    """Check every link and hash of the audit chain; exit 1 on tampering."""
    from service.audit.chain import verify

    result = _run_with_session(_settings_from(data_dir), verify)
    if result.ok:
        click.echo(f"audit chain OK: {result.events} events")
        return
    for problem in result.problems[:50]:
        click.echo(f"TAMPERED: {problem}", err=True)
    raise SystemExit(1)


if __name__ == "__main__":
    main()
