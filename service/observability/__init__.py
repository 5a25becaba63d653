"""Observability: Prometheus metrics at ``/metrics`` and optional OpenTelemetry spans.

``metrics`` holds the per-app registry (gateway, serving and scrape-time gauges), ``controller`` the
endpoint, ``stages`` the stage counters workers keep in Redis, ``tracing`` the spans (off by default).
Labels and span attributes carry ids, aliases, stage names, statuses and counts only: never a corpus,
a subject or a tenant.
"""
