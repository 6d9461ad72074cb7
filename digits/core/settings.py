"""The one settings object. Every ``DIGITS_*`` variable is read here and nowhere else.

With no configuration at all everything runs on one machine with no servers: a SQLite file
and a kombu filesystem broker under ``./var``. Point ``DIGITS_DATABASE_URL`` at PostgreSQL and
``DIGITS_BROKER_URL`` at Redis and the very same commands run distributed.

The same settings can live in a ``digits.toml`` (keys are the names without the prefix,
``home = "/srv/digits"``): one in the current folder, then one in the user's config folder
(``$XDG_CONFIG_HOME/digits/digits.toml``, default ``~/.config/digits/digits.toml``).
Environment variables win over both files, the current folder's file over the user's.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_NAME = "digits.toml"

#: What a database URL must contain for DIGITS_NULL_MODEL to be accepted: the names of the
#: temporary folders and throwaway PostgreSQL databases `digits bench --null-model` creates.
NULL_BENCH_MARK = "digits_null_bench_"


class ConfigFileError(ValueError):
    """A digits.toml that cannot be used: not TOML, an unknown key, a bad value (the message
    names the file and the key)."""


def config_files() -> list[Path]:
    """The digits.toml files read, most important first: the current folder's, the user's."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path.cwd() / CONFIG_NAME, Path(base) / "digits" / CONFIG_NAME]


class ConfigFile(TomlConfigSettingsSource):
    """One digits.toml, checked key by key so a mistake names the file and the key (pydantic
    would name only the setting, and silently ignore an unknown key). A relative path in it is
    relative to the file's folder, so one in the user's config means one place wherever
    digits runs; ``~`` is the user's home."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.fields = settings_cls.model_fields  # _read_file runs inside the base __init__
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"{file_path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigFileError(f"{file_path}: cannot read: {exc.strerror or exc}") from None
        fields = self.fields
        checked: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                names = list(fields)
                close = difflib.get_close_matches(key.lower().removeprefix("digits_"), names, 1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigFileError(f"{file_path}: unknown key {key!r}{hint}")
            field = fields[key]
            kind: Any = (
                Annotated[(field.annotation, *field.metadata)]
                if field.metadata
                else field.annotation
            )
            try:
                value = TypeAdapter(kind).validate_python(value)
            except ValidationError as exc:
                raise ConfigFileError(f"{file_path}: {key}: {exc.errors()[0]['msg']}") from None
            if isinstance(value, Path):
                value = file_path.parent / value.expanduser()  # an absolute path stays itself
            checked[key] = value
        return checked


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
    staging: Literal["folder", "database"] = Field(
        "folder",
        description="Where a CSV chunk's rows are staged for the workers: the folder "
        "DIGITS_HOME/staging (every worker must share it), or the database (no shared disk).",
    )
    lease_seconds: float = Field(60.0, gt=0, description="How long a claimed chunk is owned.")
    max_attempts: int = Field(3, ge=1, description="Claims of a chunk before it is quarantined.")
    sweep_seconds: float = Field(5.0, gt=0, description="How often expired leases are swept.")
    visibility_timeout: int = Field(300, ge=10, description="Redis redelivery of unacked tasks.")
    task_time_limit: int = Field(
        50, ge=5, description="Hard limit for one chunk: below the lease and the visibility."
    )
    workers: int = Field(2, ge=1, description="Worker processes started by `digits run`/`up`.")
    tf_threads: int = Field(0, ge=0, description="TensorFlow threads per worker process; 0 = auto.")
    inference_path: Literal["float32", "tflite-int8-dynamic"] = Field(
        "tflite-int8-dynamic",
        description="How workers run the model: TFLite with int8 weights (dynamic range, the "
        "version's stored model.int8.tflite run by LiteRT: ~3x float32's images/s, no "
        "TensorFlow import), used only for a version whose card records it as checked with "
        "that file, else Keras float32; or float32 always.",
    )
    preload_runtime: bool = Field(
        True,
        description="Import the runtime (TensorFlow and Keras, or LiteRT on the int8 path) in "
        "the worker's parent before it forks its processes (imported, never run: fork-safe), "
        "so each process only loads the model.",
    )
    null_model: bool = Field(
        False,
        description="Benchmark only (`digits bench --null-model` sets it for its workers): "
        "score with a constant model that costs nothing; refused unless the database URL "
        f"names a bench database (contains {NULL_BENCH_MARK!r}).",
    )
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
    audit_share: float = Field(
        0.02, ge=0, le=1, description="Share of confident items also sent to review, as audit."
    )
    web_host: str = Field("127.0.0.1", description="Where `digits web` listens.")
    web_port: int = Field(8000, ge=1, le=65535, description="Port of `digits web`.")
    web_token: str | None = Field(
        None, description="Token for writes (and every page off loopback) in the web console."
    )
    max_upload_files: int = Field(1000, ge=1, description="Most files one web upload may carry.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the current folder's digits.toml, then the user's."""
        files = [ConfigFile(settings_cls, path) for path in config_files()]
        return (init_settings, env_settings, *files)

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

    @model_validator(mode="after")
    def _null_model_only_in_a_bench(self) -> Settings:
        """The null model writes the same answer for every item: a stray DIGITS_NULL_MODEL=1
        must never reach users' results, so it runs only against a database the bench made."""
        if self.null_model and NULL_BENCH_MARK not in self.db_url:
            raise ValueError(
                "DIGITS_NULL_MODEL is for `digits bench --null-model` only: the database URL "
                f"must name a bench database (contain {NULL_BENCH_MARK!r})"
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
