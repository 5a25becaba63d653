"""arq connection settings and pool creation from a Redis URL (redis://, rediss:// or unix://)."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings

from service import jobs


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 2
    settings.conn_retry_delay = 0.2  # type: ignore[assignment]
    return settings


def create_pool(url: str) -> ArqRedis:
    """An arq pool using the project's msgpack serializer and queue name.

    It connects lazily (unlike ``arq.create_pool``, which pings at creation), so the API starts and
    reports "redis: down" in its readiness check instead of refusing to boot while Redis is away.
    """
    settings = redis_settings(url)
    pool = ArqRedis(
        host=settings.host,
        port=settings.port,
        unix_socket_path=settings.unix_socket_path,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        ssl=settings.ssl,
        socket_connect_timeout=settings.conn_timeout,
        socket_timeout=10,
        encoding="utf8",
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        default_queue_name=jobs.QUEUE_NAME,
    )
    return pool
