from tests.support.infra import arq_pool, clean_redis, database_url, pg_database_url, redis_url, settings

__all__ = ["arq_pool", "clean_redis", "database_url", "pg_database_url", "redis_url", "settings"]
