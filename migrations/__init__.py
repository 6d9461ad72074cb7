"""Alembic migrations for the digits schema (``digits db upgrade`` / ``digits db check``)."""
