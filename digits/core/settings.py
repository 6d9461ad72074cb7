"""The one settings object. Every ``DIGITS_*`` variable is read here and nowhere else.

With no configuration at all everything runs on one machine with no servers: a SQLite file
and a kombu filesystem broker under ``./var``. Point ``DIGITS_DATABASE_URL`` at PostgreSQL and
``DIGITS_BROKER_URL`` at Redis and the very same commands run distributed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration for every part of digits (env prefix ``DIGITS_``)."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_", extra="ignore")

    home: Path = Field(Path("var"), description="Root for local state: database, broker, staging.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home.")
    broker_url: str | None = Field(None, description="Celery broker URL; default kombu filesystem.")
    models_dir: Path | None = Field(None, description="Where trained versions are written.")
    inbox: Path | None = Field(None, description="Inbox folder watched by the scheduler.")
    export_dir: Path | None = Field(None, description="Where nightly submissions are written.")
    data: Path | None = Field(None, description="Default training CSV for `digits train`.")

    chunk_size: int = Field(1000, ge=1, le=100_000, description="CSV rows per Celery task.")
    image_chunk_size: int = Field(250, ge=1, le=10_000, description="Image files per task.")
    lease_seconds: float = Field(60.0, gt=0, description="How long a claimed chunk is owned.")
    max_attempts: int = Field(3, ge=1, description="Claims of a chunk before it is quarantined.")
    sweep_seconds: float = Field(5.0, gt=0, description="How often expired leases are swept.")
    visibility_timeout: int = Field(300, ge=10, description="Redis redelivery of unacked tasks.")
    task_time_limit: int = Field(
        50, ge=5, description="Hard limit for one chunk: below the lease and the visibility."
    )
    workers: int = Field(2, ge=1, description="Worker processes started by `digits run`/`up`.")
    tf_threads: int = Field(0, ge=0, description="TensorFlow threads per worker process; 0 = auto.")
    confidence_threshold: float = Field(0.9, ge=0, le=1, description="Below this: needs review.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decompression-bomb limit.")
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest accepted image file.")
    model_version: int | None = Field(None, description="Force this model version for new batches.")
    inbox_poll_seconds: float = Field(1.0, gt=0, description="Inbox polling scan interval.")
    inbox_settle_seconds: float = Field(
        2.0, ge=0, description="An inbox entry unchanged (size, mtime) this long is complete."
    )
    export_hour: int = Field(2, ge=0, le=23, description="Nightly export time: hour.")
    export_minute: int = Field(0, ge=0, le=59, description="Nightly export time: minute.")
    export_timezone: str = Field("UTC", description="Time zone of the nightly export time.")
    export_schedule_seconds: float | None = Field(
        None, gt=0, description="Run the export every N seconds instead (tests, demos)."
    )
    metrics_port: int | None = Field(None, description="Serve Prometheus metrics on this port.")

    @model_validator(mode="after")
    def _timeouts_nest(self) -> Settings:
        """A live task is never handed to a second worker. The hard time limit kills a chunk
        before its lease expires (else the sweeper re-queues a chunk that is still being
        scored: every chunk of a slow batch ends quarantined as "worker lost") and before
        Redis's visibility timeout redelivers it. Running chunks also renew their lease
        (worker/chunks.py), so the lease only has to outlive one renewal interval."""
        if not self.task_time_limit < self.lease_seconds:
            raise ValueError(
                "DIGITS_LEASE_SECONDS must be above DIGITS_TASK_TIME_LIMIT (a chunk's lease "
                "must outlive its longest allowed run); got "
                f"{self.lease_seconds:g} and {self.task_time_limit}"
            )
        if not self.task_time_limit < self.visibility_timeout:
            raise ValueError(
                "DIGITS_TASK_TIME_LIMIT must be below DIGITS_VISIBILITY_TIMEOUT; got "
                f"{self.task_time_limit} and {self.visibility_timeout}"
            )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'digits.db').resolve()}"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.broker.startswith("filesystem")

    @property
    def broker_dir(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def staging_dir(self) -> Path:
        return (self.home / "staging").resolve()

    @property
    def local_models_dir(self) -> Path:
        return (self.models_dir or self.home / "models").resolve()

    @property
    def inbox_dir(self) -> Path:
        return (self.inbox or self.home / "inbox").resolve()

    @property
    def exports_dir(self) -> Path:
        return (self.export_dir or self.home / "exports").resolve()

    def threads_per_worker(self) -> int:
        """TensorFlow threads per process: share the cores between worker processes."""
        if self.tf_threads:
            return self.tf_threads
        return max(1, (os.cpu_count() or 1) // self.workers)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
