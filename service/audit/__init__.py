"""Hash-chained, append-only audit trail and the signed certificate of a finished request."""
