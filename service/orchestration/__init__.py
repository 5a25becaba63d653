"""Outbox relay and sweeper: the database drives the queue, and lost or stalled jobs are re-enqueued."""
