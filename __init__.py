"""pero-worker: the repository root is the `pero_worker` package (see pyproject.toml)."""
