"""The shared model registry of a plant: model versions and promotions in PostgreSQL.

A line PC's registry is a folder (``inspection.registry.ModelRegistry``); a plant with many
lines keeps one registry on the PostgreSQL server it already runs for the inspection log:

* ``registry_versions``: one row per model version — its card (JSON, with the sha256 of every
  file) and who pushed it when;
* ``registry_files``: the version's files, each with its sha256 and size (bytea; a model is a
  few MB, the golden frames and scores less);
* ``registry_stations``: the promotion stack per station (what ``active.json`` holds locally),
  changed under a row lock so two engineers promoting at once cannot lose one promotion;
* ``registry_events``: every promotion and rollback, in order (who, when, why, from what).

``CentralRegistry`` offers what ``ModelRegistry`` offers (``get``, ``active``, ``promote``,
``rollback``, ``history``, ``list_versions``), so the promotion gate and the CLI work on either;
versions it hands out are copies in a local cache folder, pulled and checked first: every file
against the sha256 stored with it *and* the card's, then the golden frames re-scored
(``inspection.golden.verify_version``); processes sharing the cache pull a version one at a
time. Nothing that fails is ever placed in the cache, and a
push refuses a version whose files do not match its card, or a different version under a name
already taken. Line PCs follow the central promotions with ``sync_station`` (serving's registry
watch), which promotes in the local folder only what it pulled and verified.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from inspection.card import CARD_FILENAME, ModelCard, utc_now
from inspection.config import safe_url
from inspection.errors import ConfigError, ModelIntegrityError, RegistryError
from inspection.registry import DEFAULT_STATION, NAME_PATTERN, ModelRegistry, ModelVersion

#: pg_advisory_xact_lock key taken while creating the registry's tables.
_CREATE_LOCK = 0x1A5E_C7_11

_meta = sa.MetaData()
versions = sa.Table(
    "registry_versions",
    _meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("card", sa.Text, nullable=False),
    sa.Column("card_sha256", sa.String(64), nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("pushed_at", sa.String(40), nullable=False),
    sa.Column("pushed_by", sa.String(128), nullable=False),
)
files = sa.Table(
    "registry_files",
    _meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("path", sa.String(256), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.ForeignKeyConstraint(["name", "version"], ["registry_versions.name", "registry_versions.version"]),
)
stations = sa.Table(
    "registry_stations",
    _meta,
    sa.Column("station", sa.String(128), primary_key=True),
    sa.Column("stack", sa.Text, nullable=False),  # JSON: [{"model": "name/version", "at": iso}, ...]
    sa.Column("changed_at", sa.String(40), nullable=False),
)
events = sa.Table(
    "registry_events",
    _meta,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("station", sa.String(128), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("model", sa.String(257), nullable=False),
    sa.Column("previous", sa.String(257)),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)


class RegistryUnreachable(RegistryError):
    """The central registry's database did not answer (network, server down, credentials)."""


@dataclass(frozen=True)
class SyncResult:
    """What ``sync_station`` did: the central model for the station and whether it changed locally."""

    station: str
    central: str | None
    changed: bool
    event: dict[str, Any] | None = None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stored_card_sha(conn: sa.Connection, mv: ModelVersion) -> str | None:
    """The sha256 of the card the central registry holds for ``mv``'s name/version (None: not there)."""
    return conn.execute(
        sa.select(versions.c.card_sha256).where(versions.c.name == mv.name, versions.c.version == mv.version)
    ).scalar()


class CentralRegistry:
    """Model versions and promotions in PostgreSQL, with ``cache`` as the local copy of versions.

    Raises (constructor): ConfigError for a url that is not PostgreSQL or a bad schema name;
    RegistryUnreachable when the database does not answer.
    """

    def __init__(self, url: str, cache: ModelRegistry, *, schema: str | None = None, timeout_s: float = 5.0) -> None:
        try:
            backend = make_url(url).get_backend_name()
        except Exception:  # noqa: BLE001 -- sqlalchemy's url parser raises several kinds
            raise ConfigError(f"registry url {url!r} is not a database url; use postgresql+psycopg://...") from None
        if backend != "postgresql":
            raise ConfigError(f"registry url {url!r} uses {backend!r}; the central registry lives in PostgreSQL")
        connect_args: dict[str, Any] = {"connect_timeout": max(1, round(timeout_s))}
        if schema is not None:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
                raise ConfigError(f"registry schema {schema!r} is not a plain identifier (letters, digits, _)")
            connect_args["options"] = f"-csearch_path={schema}"
        self.url = safe_url(url)
        self.cache = cache
        self.root = cache.root  # where versions handed out live (ModelRegistry's attribute)
        self._engine: Engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        with self._db("opening the registry") as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CREATE_LOCK})
            _meta.create_all(conn)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _db(self, doing: str) -> Iterator[sa.Connection]:
        """One transaction; a database that does not answer is ``RegistryUnreachable``."""
        try:
            with self._engine.begin() as conn:
                yield conn
        except (OperationalError, InterfaceError) as exc:
            raise RegistryUnreachable(
                f"central registry at {self.url} unreachable while {doing}: {type(exc).__name__}: "
                f"{getattr(exc, 'orig', None) or exc}"
            ) from None
        except SQLAlchemyError as exc:
            raise RegistryError(f"central registry at {self.url}: {doing} failed: {type(exc).__name__}: "
                                f"{getattr(exc, 'orig', None) or exc}") from None

    # -- versions -----------------------------------------------------------------------
    def push(self, mv: ModelVersion, *, actor: str = "cli") -> bool:
        """Store a local version centrally; True when stored, False when the same version was there.

        Raises:
            ModelIntegrityError: a file of the version does not match its card (checked here,
                before anything is sent), or the golden frames fail.
            RegistryError: a different version is stored under the same name/version.
        """
        from inspection.golden import verify_version

        verify_version(mv.card, mv.path)
        card_text = (mv.path / CARD_FILENAME).read_text(encoding="utf-8")
        card_sha = _digest(card_text.encode())
        with self._db(f"pushing {mv.model_id}") as conn:
            stored = _stored_card_sha(conn, mv)
            if stored is not None:
                if stored != card_sha:
                    raise RegistryError(
                        f"{mv.model_id} is already in the central registry with a different card (sha256 "
                        f"{stored[:12]}…, this one {card_sha[:12]}…): refused; train or re-export under a new version"
                    )
                return False
            conn.execute(
                versions.insert().values(name=mv.name, version=mv.version, card=card_text, card_sha256=card_sha,
                                         created=mv.card.created.isoformat(), pushed_at=utc_now().isoformat(),
                                         pushed_by=actor)
            )
            for rel, sha in sorted(mv.card.files.items()):
                content = (mv.path / rel).read_bytes()
                if _digest(content) != sha:  # changed since verify_version: refuse the whole push
                    raise ModelIntegrityError(f"{mv.model_id}: file {rel!r} changed while it was being pushed")
                conn.execute(files.insert().values(name=mv.name, version=mv.version, path=rel, sha256=sha,
                                                   size=len(content), content=content))
        return True

    def list_versions(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every central version: name, version, created, pushed_at, pushed_by (oldest first)."""
        query = sa.select(versions.c.name, versions.c.version, versions.c.created, versions.c.pushed_at,
                          versions.c.pushed_by).order_by(versions.c.created, versions.c.name, versions.c.version)
        if name is not None:
            query = query.where(versions.c.name == name)
        with self._db("listing versions") as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def get(self, name: str, version: str, *, verify: bool = False) -> ModelVersion:
        """The version from the local cache, pulled first when the cache lacks it.

        Raises:
            RegistryError: the central registry has no such version.
            ModelIntegrityError: the central copy (or the cached one) does not match its hashes,
                or its golden frames fail; nothing is placed in the cache then.
        """
        folder = self.cache.version_dir(name, version)
        if (folder / CARD_FILENAME).is_file():
            cached = self.cache.get(name, version, verify=verify)
            self._same_as_central(cached)
            return cached
        return self.pull(name, version)

    def _same_as_central(self, mv: ModelVersion) -> None:
        with self._db(f"checking {mv.model_id}") as conn:
            stored = _stored_card_sha(conn, mv)
        if stored is None:
            return  # a local-only version: the central registry has nothing to say about it
        local = _digest((mv.path / CARD_FILENAME).read_bytes())
        if local != stored:
            raise ModelIntegrityError(
                f"{mv.model_id}: the local copy under {self.cache.root} has a different card from the central "
                "registry's: refused (delete the local folder to pull the central version)"
            )

    def pull(self, name: str, version: str) -> ModelVersion:
        """Copy a central version into the cache after checking every byte and the golden frames.

        Processes sharing the cache (``serve --workers N``) pull a version one at a time (a lock
        file beside its folder); a folder another one placed is used when its card is the
        central one and its files match that card.

        Raises:
            RegistryError: no such version centrally; the cache cannot be written (disk full,
                permissions: the path is named), or something else is in the version's place.
            ModelIntegrityError: a file differs from its stored sha256 or the card's, a file of
                the card is missing, or the golden frames fail; a folder found in the version's
                place differs from the central version.
        """
        target = self.cache.version_dir(name, version)
        try:
            with self._pull_lock(target):
                if (target / CARD_FILENAME).is_file():  # pulled by another process while this one waited
                    return self._placed_by_another(name, version)
                with self._db(f"pulling {name}/{version}") as conn:
                    row = conn.execute(
                        sa.select(versions.c.card).where(versions.c.name == name, versions.c.version == version)
                    ).first()
                    if row is None:
                        known = [f"{v['name']}/{v['version']}" for v in self.list_versions()]
                        raise RegistryError(
                            f"no model {name}/{version} in the central registry; known: {known or 'none'}"
                        )
                    blobs = conn.execute(
                        sa.select(files.c.path, files.c.sha256, files.c.content).where(
                            files.c.name == name, files.c.version == version
                        )
                    ).all()
                if not self._place(name, version, row.card, blobs, target):
                    return self._placed_by_another(name, version)
        except OSError as exc:  # a domain error, so the registry watch counts it and carries on
            raise RegistryError(f"cannot pull {name}/{version} into {self.cache.root}: "
                                f"{exc.strerror or exc} ({exc.filename or target})") from None
        return self.cache.get(name, version)

    @contextmanager
    def _pull_lock(self, target: Path) -> Iterator[None]:
        """One pull of ``target``'s version at a time among the processes sharing the cache."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.pull.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, a crashed holder's too
            yield

    def _placed_by_another(self, name: str, version: str) -> ModelVersion:
        """The version folder another process placed, once its card is the central one and its
        files match that card (its golden frames passed there, and pass again on load).

        Raises:
            RegistryError: the folder in the version's place holds no model card.
            ModelIntegrityError: its card differs from the central one, or a file from the card.
        """
        if not (self.cache.version_dir(name, version) / CARD_FILENAME).is_file():
            raise RegistryError(f"{self.cache.version_dir(name, version)} is in the way of pulling "
                                f"{name}/{version} and holds no model card: remove it and pull again")
        mv = self.cache.get(name, version, verify=True)
        self._same_as_central(mv)
        return mv

    def _place(self, name: str, version: str, card_text: str, blobs: Sequence[Any], target: Path) -> bool:
        """Check the central files in a staging folder of the cache, then move it to ``target``.

        Returns False when a folder took ``target``'s place meanwhile (the caller checks it).
        """
        from inspection.card import load_card
        from inspection.golden import verify_version

        staging_root = self.cache.root / ".staging" / name
        staging_root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=staging_root, prefix=f"{version}."))
        try:
            (stage / CARD_FILENAME).write_text(card_text, encoding="utf-8")
            card: ModelCard = load_card(stage)
            stored = {b.path: b for b in blobs}
            for rel, sha in card.files.items():
                blob = stored.get(rel)
                if blob is None:
                    raise ModelIntegrityError(
                        f"{name}/{version}: file {rel!r} of the card is not in the central registry"
                    )
                if blob.sha256 != sha or _digest(blob.content) != sha:
                    raise ModelIntegrityError(
                        f"{name}/{version}: central file {rel!r} does not match its sha256 (card {sha[:12]}…): refused"
                    )
                dest = stage / rel
                if stage.resolve() not in dest.resolve().parents:
                    raise ModelIntegrityError(f"{name}/{version}: file path {rel!r} leaves the version folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(blob.content)
            verify_version(card, stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                return False
            try:
                os.replace(stage, target)
            except OSError as exc:
                # A folder placed between the check and the move, by a process without the lock.
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return False
                raise
            return True
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    # -- stations -----------------------------------------------------------------------
    def _stack(self, conn: sa.Connection, station: str, *, lock: bool = False) -> list[dict[str, str]]:
        query = sa.select(stations.c.stack).where(stations.c.station == station)
        text = conn.execute(query.with_for_update() if lock else query).scalar()
        return json.loads(text) if text else []

    def active_id(self, station: str = DEFAULT_STATION) -> str | None:
        """``name/version`` active centrally for ``station`` (else the ``default`` station's), or None."""
        with self._db(f"reading station {station!r}") as conn:
            stack = self._stack(conn, station) or self._stack(conn, DEFAULT_STATION)
        return stack[-1]["model"] if stack else None

    def active_by_station(self) -> dict[str, str]:
        """Station -> the ``name/version`` active centrally (stations rolled back to nothing left out)."""
        with self._db("reading the stations") as conn:
            rows = conn.execute(sa.select(stations.c.station, stations.c.stack)).all()
        return {r.station: json.loads(r.stack)[-1]["model"] for r in rows if json.loads(r.stack)}

    def active(self, station: str = DEFAULT_STATION) -> ModelVersion | None:
        model = self.active_id(station)
        if model is None:
            return None
        name, version = model.split("/")
        return self.get(name, version)

    def history(self, station: str = DEFAULT_STATION) -> list[dict[str, Any]]:
        with self._db(f"reading station {station!r}'s history") as conn:
            rows = conn.execute(sa.select(events).where(events.c.station == station).order_by(events.c.id)).all()
        return [{k: v for k, v in r._mapping.items() if k not in ("id", "station")} for r in rows]

    def _change(self, station: str, action: str, change: Any, *, actor: str, reason: str) -> dict[str, Any]:
        if not NAME_PATTERN.match(station):
            raise RegistryError(f"station {station!r}: letters, digits, _ . - only")
        now = utc_now().isoformat()
        with self._db(f"{action} on station {station!r}") as conn:
            conn.execute(
                pg_insert(stations)
                .values(station=station, stack="[]", changed_at=now)
                .on_conflict_do_nothing()
            )
            stack = self._stack(conn, station, lock=True)
            before = list(stack)
            default = self._stack(conn, DEFAULT_STATION) if station != DEFAULT_STATION else []
            model, previous = change(stack, default[-1]["model"] if default else None)
            event = {"action": action, "model": model, "previous": previous, "at": now, "actor": actor,
                     "reason": reason}
            if stack == before:  # the version was already active: nothing changed, nothing recorded
                return {**event, "action": "already_active"}
            conn.execute(stations.update().where(stations.c.station == station)
                         .values(stack=json.dumps(stack), changed_at=now))
            conn.execute(events.insert().values(station=station, **event))
        return event

    def promote(
        self, name: str, version: str, *, station: str = DEFAULT_STATION, actor: str = "cli", reason: str = ""
    ) -> dict[str, Any]:
        """Make a central version active for ``station`` (for every line PC that follows it).

        A version already active for ``station`` (its own latest, not the ``default`` fallback)
        changes nothing and is not recorded: the event returned says ``"action": "already_active"``
        (as ``ModelRegistry.promote``).

        Raises:
            RegistryError: unknown version or station name.
            ModelIntegrityError: the version fails its checks when pulled here.
        """
        mv = self.get(name, version, verify=True)

        def push_on(stack: list[dict[str, str]], fallback: str | None) -> tuple[str, str | None]:
            previous = stack[-1]["model"] if stack else None
            if previous == mv.model_id:
                # A second entry would make `rollback` "return" to this same version.
                return mv.model_id, previous
            now = utc_now().isoformat()
            if previous is None and fallback is not None and fallback != mv.model_id:
                # The station ran the default's model (``active_id`` falls back to it): its stack
                # starts there, so that its rollback returns to it.
                stack.append({"model": fallback, "at": now, "via": DEFAULT_STATION})
            stack.append({"model": mv.model_id, "at": now})
            return mv.model_id, previous or fallback

        return self._change(station, "promote", push_on, actor=actor, reason=reason)

    def rollback(self, *, station: str = DEFAULT_STATION, actor: str = "cli", reason: str = "",
                 check: Callable[[ModelVersion], object] | None = None) -> dict[str, Any]:
        """Re-activate the version that was active before the current one, centrally; ``check``
        (e.g. the golden-frame check) runs on that version before anything changes.

        Raises:
            RegistryError: the station has no earlier version to return to.
            Whatever ``check`` raises: nothing changed.
        """

        def pop(stack: list[dict[str, str]], fallback: str | None) -> tuple[str, str | None]:
            if len(stack) < 2:
                raise RegistryError(f"station {station!r} has no earlier model to roll back to")
            name, version = stack[-2]["model"].split("/")
            target = self.get(name, version, verify=True)
            if check is not None:
                check(target)
            current = stack.pop()["model"]
            return stack[-1]["model"], current

        return self._change(station, "rollback", pop, actor=actor, reason=reason)


def sync_station(central: CentralRegistry, station: str) -> SyncResult:
    """Make the local folder's active model for ``station`` the central one: pull, verify, promote.

    The local promotion is what serving's model watch acts on (hot swap, golden frames re-scored
    again on load). A version that fails its checks is never promoted locally: the station keeps
    its current model and the error propagates.

    Raises:
        RegistryUnreachable: the central database did not answer.
        ModelIntegrityError / RegistryError: the central version is unusable.
    """
    model = central.active_id(station)
    if model is None:
        return SyncResult(station, None, changed=False)
    local = central.cache
    state = local.read_state()["stations"]
    entry = state.get(station) or {}
    current = entry["history"][-1]["model"] if entry.get("history") else None
    if current == model:
        return SyncResult(station, model, changed=False)
    name, version = model.split("/")
    central.get(name, version, verify=True)
    event = local.promote(name, version, station=station, actor="central-registry",
                          reason=f"following the central registry at {central.url}")
    return SyncResult(station, model, changed=True, event=event)
