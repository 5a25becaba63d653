"""Cross-domain plumbing: application state, errors and their HTTP mapping."""
