"""Artifact store: where corpora, derived training data and adapters live (never in logs or tables)."""
