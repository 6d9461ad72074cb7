"""Aliases (``production``, ``candidate``) stored in the database with their history.

An alias is a movable name for an immutable version: new batches are pinned to whatever
``production`` names at enqueue time, so moving it is how a model is deployed, and moving it
back is how a bad deployment is undone. Every move is written in the same transaction as an
``AliasHistory`` row (from → to, when, why), so the audit trail can never disagree with the
alias itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from digits.core.db import aware, no_data_here, session
from digits.core.schema import AliasHistory, ModelAlias, utcnow
from digits.core.settings import get_settings
from model_store.registry import ModelError, ModelVersion, default_version, get_version

PRODUCTION = "production"
ROLLBACK_REASON = "rollback"


class AliasError(ValueError):
    """An alias cannot be moved: unknown version, bad name, or nothing to roll back to."""


@dataclass(frozen=True)
class AliasChange:
    """One row of an alias' history (or the outcome of a move; ``moved`` False = no-op)."""

    alias: str
    from_version: int | None
    to_version: int
    reason: str
    created_at: datetime | None
    moved: bool = True

    def as_dict(self) -> dict[str, object]:
        return {
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "reason": self.reason,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


def alias_target(alias: str) -> int | None:
    """The version an alias points at, or None when it has never been set (or there is no
    database yet: reading one must not create it)."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if no_data_here():
        return None
    try:
        with session() as sess:
            return sess.scalar(select(ModelAlias.version).where(ModelAlias.alias == alias))
    except (OperationalError, ProgrammingError):
        return None  # schema not created yet: no alias


def all_aliases() -> dict[int, list[str]]:
    """version → the aliases naming it (for listings; empty before the schema exists)."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError, ProgrammingError

    found: dict[int, list[str]] = {}
    if no_data_here():
        return found
    try:
        with session() as sess:
            for alias, version in sess.execute(
                select(ModelAlias.alias, ModelAlias.version).order_by(ModelAlias.alias)
            ).all():
                found.setdefault(version, []).append(alias)
    except (OperationalError, ProgrammingError):
        return {}
    return found


def _check_name(alias: str) -> None:
    if not alias or len(alias) > 64 or not alias.replace("-", "").replace("_", "").isalnum():
        raise AliasError(
            f"invalid alias name {alias!r}: use letters, digits, '-' or '_' (at most 64 characters)"
        )


def _check_version(version: int) -> None:
    """Refuse a version the registry does not know, with the list of known ones."""

    try:
        get_version(version)
    except ModelError as exc:
        raise AliasError(str(exc)) from exc


def set_alias(alias: str, version: int, reason: str = "") -> AliasChange:
    """Point ``alias`` at ``version`` and record the move, both in one transaction.

    The alias row is locked (``SELECT … FOR UPDATE``; SQLite's write transactions are
    serialised anyway) so two concurrent moves cannot both read the same "from" version.
    When ``production`` was never set, "from" is the bundled default: that is what new
    batches were pinned to, so a rollback after the first promotion returns to it (pinning
    production to the default itself records "from" as None: nothing earlier to return to).
    Pointing an alias at the version it already names changes nothing and records nothing.
    """

    _check_name(alias)
    _check_version(version)
    now = utcnow()
    with session(write=True) as sess:
        row = sess.get(ModelAlias, alias, with_for_update=True)
        previous = row.version if row is not None else None
        if previous == version:
            return AliasChange(alias, previous, version, reason, None, moved=False)
        if row is None:
            if alias == PRODUCTION:
                try:
                    served = default_version().version
                except ModelError:
                    served = None
                previous = served if served != version else None
            sess.add(ModelAlias(alias=alias, version=version, updated_at=now))
        else:
            row.version = version
            row.updated_at = now
        sess.add(
            AliasHistory(
                alias=alias,
                from_version=previous,
                to_version=version,
                reason=reason,
                created_at=now,
            )
        )
    return AliasChange(alias, previous, version, reason, now)


def history(alias: str = PRODUCTION, limit: int | None = None) -> list[AliasChange]:
    """The alias' moves, newest first (empty when it never moved or the schema is missing)."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError, ProgrammingError

    query = select(AliasHistory).where(AliasHistory.alias == alias).order_by(AliasHistory.id.desc())
    if limit is not None:
        query = query.limit(limit)
    if no_data_here():
        return []
    try:
        with session() as sess:
            rows = sess.scalars(query).all()
    except (OperationalError, ProgrammingError):
        return []
    return [
        AliasChange(r.alias, r.from_version, r.to_version, r.reason, aware(r.created_at))
        for r in rows
    ]


def rollback_target(moves: list[AliasChange]) -> int | None:
    """The version a rollback returns to, given the history newest first.

    Rollbacks are undone like an undo stack: each earlier rollback cancels one earlier move,
    so rolling back twice after promoting v2 then v3 goes v3 → v2 → v1, instead of bouncing
    between v3 and v2 as "the latest row's from-version" would.
    """
    pending_undos = 0
    for move in moves:
        if move.reason == ROLLBACK_REASON:
            pending_undos += 1
        elif pending_undos:
            pending_undos -= 1
        else:
            return move.from_version
    return None


def rollback(alias: str = PRODUCTION) -> AliasChange:
    """Move ``alias`` back to the version it named before its last (non-undone) move.

    Recorded as a new history row with reason ``rollback``: history is append-only.
    """
    moves = history(alias)
    if not moves:
        raise AliasError(f"alias {alias!r} has never been set: nothing to roll back")
    target = rollback_target(moves)
    if target is None:
        raise AliasError(
            f"alias {alias!r} has no earlier version to roll back to "
            f"(it was first set to v{moves[-1].to_version})"
        )
    return set_alias(alias, target, ROLLBACK_REASON)


def resolve_active(requested: int | None = None) -> ModelVersion:
    """The version a new batch is pinned to: explicit request, ``DIGITS_MODEL_VERSION``, the
    ``production`` alias, or the bundled default, in that order. (Here, not in the registry:
    the registry knows versions, the aliases know which one is deployed.)"""
    if requested is not None:
        return get_version(requested)
    forced = get_settings().model_version
    if forced is not None:
        return get_version(forced)
    target = alias_target(PRODUCTION)
    if target is None:
        return default_version()
    try:
        return get_version(target)
    except ModelError as exc:  # e.g. a release that no longer bundles the version it names
        raise ModelError(
            f"the production alias names version {target}, which is not installed "
            f"here; move it to an installed version (digits models list), e.g. "
            f"digits models promote {default_version().version}"
        ) from exc


@dataclass(frozen=True)
class ActiveModel:
    """The version new batches are pinned to, and why: said plainly wherever a version is
    shown (`models list/show/history`, `status`), so "no alias" never reads as "no model"."""

    version: ModelVersion
    source: str  # "setting" (DIGITS_MODEL_VERSION), "alias" (production) or "default"
    what: str  # "the bundled default", "named by the production alias", …

    @property
    def why(self) -> str:
        return f"{self.what}; no production alias is set" if self.source == "default" else self.what

    def as_dict(self) -> dict[str, object]:
        return {"version": self.version.version, "source": self.source, "why": self.why}


def active_model() -> ActiveModel:
    """What `resolve_active()` picks for a new batch, with the reason in words."""
    forced = get_settings().model_version
    if forced is not None:
        return ActiveModel(resolve_active(), "setting", "forced by DIGITS_MODEL_VERSION")
    if alias_target(PRODUCTION) is not None:
        return ActiveModel(resolve_active(), "alias", "named by the production alias")
    version = default_version()
    kind = "the bundled default" if version.bundled else "the newest version (none is bundled)"
    return ActiveModel(version, "default", kind)
