"""Deployments: immutable adapter versions, served aliases with history, hot-swap and rollback."""
