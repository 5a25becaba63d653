"""Queue infrastructure: the embedded Redis server and the arq connection settings."""

from service.queue.embedded import EmbeddedRedis, EmbeddedRedisError
from service.queue.pool import create_pool, redis_settings

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "create_pool", "redis_settings"]
