"""HTTP API (FastAPI). Route modules live in ``controlplane.api.routes`` and are found by name."""
