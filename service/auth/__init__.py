"""API keys bound to a tenant and a role, and the ``principal`` dependency every domain uses."""
