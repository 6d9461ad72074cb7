"""The core: settings, schema, database, the work state machine and the pure inputs.

Everything else stands on it; it imports nothing above it (the layer contract in
pyproject.toml)."""
