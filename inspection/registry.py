"""The model registry on disk: ``models/<name>/<version>/`` plus which version is active where.

Layout (documented in models/README.md)::

    models/
      active.json              # per station (or line): current version and promotion history
      <name>/<version>/        # one exported model version (model.json + model.onnx + ...)

A station's active model is what serving loads; ``promote`` and ``rollback`` rewrite
``active.json`` atomically (temp file + rename under a lock) and serving notices the change
and swaps the model live. Promotion refuses a version whose files do not match its card.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from inspection.card import CARD_FILENAME, ModelCard, load_card, utc_now, verify_files
from inspection.errors import ModelCardError, RegistryError

ACTIVE_FILE = "active.json"
DEFAULT_STATION = "default"
#: Model names, versions and stations: what a folder name and a URL path segment can carry.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NAME = NAME_PATTERN


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    card: ModelCard

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"


def _latest(entry: dict[str, Any] | None) -> str | None:
    """The model at the top of a station's history (None: no entry, or an empty history)."""
    return entry["history"][-1]["model"] if entry and entry.get("history") else None


def parse_model_id(model_id: str) -> tuple[str, str]:
    """``"name/version"`` -> (name, version).

    Raises:
        RegistryError: not of the form name/version.
    """
    parts = model_id.strip().split("/")
    if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
        raise RegistryError(f"model {model_id!r} is not of the form NAME/VERSION (letters, digits, _ . -)")
    return parts[0], parts[1]


class Registry(Protocol):
    """What promotion needs of a registry: the local folder (``ModelRegistry``) or the plant's
    central one (``inspection.central.CentralRegistry``, whose versions are verified local copies)."""

    root: Path

    def get(self, name: str, version: str, *, verify: bool = False) -> ModelVersion: ...

    def active(self, station: str = DEFAULT_STATION) -> ModelVersion | None: ...

    def history(self, station: str = DEFAULT_STATION) -> list[dict[str, Any]]: ...

    def promote(
        self, name: str, version: str, *, station: str = DEFAULT_STATION, actor: str = "cli", reason: str = ""
    ) -> dict[str, Any]: ...

    def rollback(self, *, station: str = DEFAULT_STATION, actor: str = "cli", reason: str = "",
                 check: Callable[[ModelVersion], object] | None = None) -> dict[str, Any]: ...


class ModelRegistry:
    """Model versions under one root folder, and the active version per station."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- versions -----------------------------------------------------------------------
    def version_dir(self, name: str, version: str) -> Path:
        if not (_NAME.match(name) and _NAME.match(version)):
            raise RegistryError(f"model {name!r}/{version!r}: names allow letters, digits, _ . - only")
        return self.root / name / version

    def get(self, name: str, version: str, *, verify: bool = False) -> ModelVersion:
        """One version with its validated card.

        Raises:
            RegistryError: no such version (the message lists the versions there are).
            ModelCardError / ModelIntegrityError: the card is invalid, or (verify=True) a file
                does not match its sha256.
        """
        folder = self.version_dir(name, version)
        if not (folder / CARD_FILENAME).is_file():
            known = [v.model_id for v in self.list_versions()]
            raise RegistryError(f"no model {name}/{version} under {self.root}; known: {known or 'none'}")
        card = load_card(folder)
        if (card.name, card.version) != (name, version):
            raise ModelCardError(f"{folder}: card names {card.model_id}, folder is {name}/{version}")
        if verify:
            verify_files(card, folder)
        return ModelVersion(name, version, folder, card)

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every valid version (oldest first by creation time); invalid folders are skipped."""
        found: list[ModelVersion] = []
        if not self.root.is_dir():
            return found
        for card_path in sorted(self.root.glob(f"*/*/{CARD_FILENAME}")):
            folder = card_path.parent
            if name is not None and folder.parent.name != name:
                continue
            try:
                card = load_card(folder)
            except ModelCardError:
                continue
            found.append(ModelVersion(card.name, card.version, folder, card))
        return sorted(found, key=lambda v: (v.card.created, v.model_id))

    def next_version(self, name: str) -> str:
        """``v1``, ``v2``, ... — the next free version label for a model name."""
        taken = {p.name for p in (self.root / name).glob("*")} if (self.root / name).is_dir() else set()
        n = 1
        while f"v{n}" in taken:
            n += 1
        return f"v{n}"

    # -- active versions ----------------------------------------------------------------
    @property
    def active_path(self) -> Path:
        return self.root / ACTIVE_FILE

    def read_state(self) -> dict[str, Any]:
        """The stations' active versions and events (``active.json``; empty when there is none).

        Raises:
            RegistryError: the file is not valid JSON, or cannot be read (e.g. the root is a file).
        """
        try:
            state = json.loads(self.active_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"stations": {}}
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{self.active_path} is not valid JSON: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:  # the root is a file, active.json a folder, ...
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise RegistryError(f"cannot read {self.active_path} ({why}); is {self.root} a model registry "
                                "folder?") from None
        state.setdefault("stations", {})
        return state

    def active(self, station: str = DEFAULT_STATION) -> ModelVersion | None:
        """The version active for ``station``, falling back to the ``default`` station."""
        stations = self.read_state()["stations"]
        entry = stations.get(station) or stations.get(DEFAULT_STATION)
        if not entry or not entry.get("history"):
            return None
        name, version = parse_model_id(entry["history"][-1]["model"])
        return self.get(name, version)

    def history(self, station: str = DEFAULT_STATION) -> list[dict[str, Any]]:
        entry = self.read_state()["stations"].get(station) or {}
        return list(entry.get("events", []))

    @contextmanager
    def _locked_state(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".active.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read_state()
            yield state
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".active.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.active_path)

    def promote(
        self, name: str, version: str, *, station: str = DEFAULT_STATION, actor: str = "cli", reason: str = ""
    ) -> dict[str, Any]:
        """Make ``name/version`` the active model for ``station``; returns the event recorded.

        A version already active for ``station`` (its own latest, not the ``default`` fallback)
        changes nothing and is not recorded: the event returned says ``"action": "already_active"``.
        A station without a history of its own ran the ``default`` station's model: its history
        starts with that model, which ``previous`` names and ``rollback`` returns to.

        Raises:
            RegistryError: unknown version or station name.
            ModelIntegrityError: a file of the version does not match the card's sha256.
        """
        if not _NAME.match(station):
            raise RegistryError(f"station {station!r}: letters, digits, _ . - only")
        mv = self.get(name, version, verify=True)
        event: dict[str, str | None] = {"action": "promote", "model": mv.model_id, "at": utc_now().isoformat(),
                                        "actor": actor, "reason": reason}
        with self._locked_state() as state:
            entry = state["stations"].setdefault(station, {"history": [], "events": []})
            previous = entry["history"][-1]["model"] if entry["history"] else None
            if previous == mv.model_id:
                # A second entry would make `rollback` "return" to this same version.
                return {**event, "previous": previous, "action": "already_active"}
            fallback = _latest(state["stations"].get(DEFAULT_STATION)) if station != DEFAULT_STATION else None
            if previous is None and fallback is not None and fallback != mv.model_id:
                # The station was really running the default's model: recorded as where it came
                # from, so that its rollback returns there instead of finding "no earlier model".
                entry["history"].append({"model": fallback, "at": event["at"], "via": DEFAULT_STATION})
            event["previous"] = previous or fallback
            entry["history"].append({"model": mv.model_id, "at": event["at"]})
            entry["events"].append(event)
        return event

    def rollback(self, *, station: str = DEFAULT_STATION, actor: str = "cli", reason: str = "",
                 check: Callable[[ModelVersion], object] | None = None) -> dict[str, Any]:
        """Re-activate the version that was active before the current one. ``check`` (e.g. the
        golden-frame check) is run on that version under the lock, before anything changes.

        Raises:
            RegistryError: the station has no earlier version to return to.
            ModelIntegrityError: a file of that version does not match the card's sha256.
            Whatever ``check`` raises: nothing changed.
        """
        with self._locked_state() as state:
            entry = state["stations"].get(station)
            if not entry or len(entry["history"]) < 2:
                raise RegistryError(f"station {station!r} has no earlier model to roll back to")
            name, version = parse_model_id(entry["history"][-2]["model"])
            target = self.get(name, version, verify=True)
            if check is not None:
                check(target)
            current = entry["history"].pop()["model"]
            event = {"action": "rollback", "model": f"{name}/{version}", "previous": current,
                     "at": utc_now().isoformat(), "actor": actor, "reason": reason}
            entry["events"].append(event)
        return event
