"""Forget requests: intake API, lifecycle, compliance deadlines and the service functions other domains call."""
