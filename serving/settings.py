"""Typed serving settings, validated once at start-up and passed to ``create_app(settings)``.

Nothing is read at import time. ``load_settings(path, env=...)`` reads a YAML or JSON file and
then applies overrides from an environment mapping the caller passes in explicitly
(``INSPECTION_<FIELD>`` with ``__`` between nested keys, values parsed as YAML), so tests never
patch ``os.environ``. Example file::

    demo: false
    models_dir: models
    log_url: sqlite:///var/log.db
    frames_dir: var/frames
    stations:
      press-1:
        cameras: [top, side]
        part_deadline_ms: 250
    batching: {max_delay_ms: 2, max_batch: 16, queue_size: 256}
    api_keys:
      - {name: plc-gateway, role: line, sha256: "<64 hex>"}

Keys are stored only as sha256 digests (``inspection serve --new-key ROLE:NAME`` makes one). Outside demo
mode the server refuses to start without keys, or with a key whose digest is that of a
well-known default such as ``changethis``.

Other engineers extend this file additively: a new section is a new field with a default.

Why one module over 400 lines: it is the settings file's whole schema; one place to read every
setting, its default and its bounds is worth more than short files (sections with behaviour of
their own, such as monitoring, live beside the code they configure).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from inspection.config import deep_merge, safe_url
from inspection.errors import ConfigError
from inspection.imageheader import MAX_FRAME_PIXELS
from inspection.log.rows import STR_LIMITS
from serving.line.settings import LineSettings
from serving.monitoring.settings import MonitoringSettings

#: ``viewer`` is read-only and sees only the live line (a wall screen on the shop floor).
Role = Literal["line", "engineer", "auditor", "admin", "viewer"]
ROLES: tuple[Role, ...] = ("line", "engineer", "auditor", "admin", "viewer")
ENV_PREFIX = "INSPECTION_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: Keys nobody may use outside demo mode (they appear in docs, examples and demo configs).
DEFAULT_KEYS = ("", "changethis", "changeme", "secret", "password", "admin", "demo", "test", "key", "apikey",
                "api-key", "line", "engineer", "auditor", "demo-line", "demo-engineer", "demo-auditor", "demo-admin")


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in settings for an API key (keys are random tokens, so a
    fast hash is the right one: there is nothing to brute-force from a dictionary)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_DEFAULT_DIGESTS = frozenset(hash_key(k) for k in DEFAULT_KEYS)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrameSize(_Section):
    width: int = Field(ge=1, le=65_535)
    height: int = Field(ge=1, le=65_535)


#: The default pixel limit of a station with an ``expected_frame`` is this many times its area
#: (a camera re-configured to a larger frame still works; a bomb does not).
FRAME_HEADROOM = 4


class StationSettings(_Section):
    """One inspection station: the cameras that each see every part, and the part deadline."""

    cameras: list[str] = Field(min_length=1)
    #: Time from a part's first view (or first decision query) until missing views make it a
    #: fail-safe reject.
    part_deadline_ms: float = Field(default=500.0, gt=0, le=600_000)
    #: PLC (Modbus TCP / OPC UA) and MQTT integrations of this station (serving.line; docs/plc.md).
    line: LineSettings = Field(default_factory=LineSettings)
    #: The size of this station's camera frames, when known: the default ``max_frame_pixels``
    #: is derived from it.
    expected_frame: FrameSize | None = None
    #: The most pixels a frame's header may declare; more is refused before decoding (413 and a
    #: fail-safe reject). None: ``FRAME_HEADROOM`` x ``expected_frame``, or 64 MP when that is
    #: not set; never above 64 MP.
    max_frame_pixels: int | None = Field(default=None, ge=1, le=MAX_FRAME_PIXELS)
    #: The line watch: frame-quality gate, drift windows, control chart, alarm limits (docs/monitoring.md).
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    def frame_pixel_limit(self) -> int:
        """The pixel limit in force for this station's frames."""
        if self.max_frame_pixels is not None:
            return self.max_frame_pixels
        if self.expected_frame is not None:
            return min(MAX_FRAME_PIXELS, FRAME_HEADROOM * self.expected_frame.width * self.expected_frame.height)
        return MAX_FRAME_PIXELS

    @field_validator("cameras")
    @classmethod
    def _camera_names(cls, cameras: list[str]) -> list[str]:
        bad = [c for c in cameras if not _NAME.match(c)]
        if bad:
            raise ValueError(f"camera names {bad} are invalid: letters, digits, _ . - (max 64)")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names must be unique, got {cameras}")
        return cameras


class BatchingSettings(_Section):
    #: Longest a frame waits for others to share its model call (only while others are on the way).
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000)
    max_batch: int = Field(default=16, ge=1, le=1024)
    #: Frames waiting for the model; beyond this, 503 + Retry-After and a fail-safe reject.
    queue_size: int = Field(default=256, ge=1, le=100_000)
    retry_after_s: float = Field(default=1.0, gt=0, le=3600)


class DecodeSettings(_Section):
    """Where frames are decoded (``serving.decoding``)."""

    #: Frames whose header declares fewer pixels are decoded on the event loop, with no thread
    #: hop (~2 ms for 0.25 MP); larger ones in a bounded pool, so one big frame never stalls the
    #: frames of other cameras. 0: every frame goes to the pool.
    pool_min_pixels: int = Field(default=1_000_000, ge=0, le=MAX_FRAME_PIXELS)
    #: Worker threads of the pool (OpenCV decodes without holding the GIL).
    pool_threads: int = Field(default=2, ge=1, le=64)
    #: Memory the frames in the pool may take together (estimated from their headers at
    #: ``BYTES_PER_PIXEL``); a frame waits for room, and one larger than all of it runs alone.
    memory_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024, le=1 << 40)
    #: Longest a frame waits for room in the pool; then 503 + Retry-After and a fail-safe reject.
    max_wait_s: float = Field(default=2.0, gt=0, le=600)


class RuntimeSettings(_Section):
    """onnxruntime threads. ``None`` = as many intra-op threads as the machine has cores."""

    intra_op_threads: int | None = Field(default=None, ge=1, le=256)
    inter_op_threads: int = Field(default=1, ge=1, le=64)
    #: Intra-op threads for batches scored while more frames are arriving. ``None`` = auto:
    #: for a short inference (< 4 ms per frame, measured at load) one fewer than
    #: ``intra_op_threads``, so the event loop keeps a core to read and decode the next
    #: frames; otherwise all of them. Equal to ``intra_op_threads`` = one session for everything.
    busy_intra_op_threads: int | None = Field(default=None, ge=1, le=256)
    #: Spinning workers answer a few microseconds sooner but burn a core while idle.
    allow_spinning: bool = False
    #: OpenCV's own thread pool, per process. 1: each OpenCV call runs on the thread that makes
    #: it. Frames are already decoded in parallel by the decode pool and scored by onnxruntime's
    #: threads; an OpenCV call that splits a 128 px filter across a pool whose workers wait for a
    #: core behind those threads stalls the event loop (measured: the line watch's Laplacian
    #: cost +0.14 to +0.37 ms per frame at p50 with OpenCV's default, +0.035 ms with 1).
    opencv_threads: int = Field(default=1, ge=0, le=256)

    def resolved_intra_op_threads(self) -> int:
        return self.intra_op_threads or max(
            1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        )


class ApiKeySettings(_Section):
    name: str = Field(min_length=1, max_length=64)
    role: Role
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _HEX64.match(value):
            raise ValueError("sha256 must be 64 hex digits (make one with `inspection serve --new-key ROLE:NAME`)")
        return value


class LabellingSettings(_Section):
    """The labelling page (``serving.labelling``): which classes a label may take, queue order."""

    #: Classes a label may take, e.g. the active model's classes plus a new defect type.
    #: Empty: the union of the classes of the stations' active models.
    classes: list[str] = Field(default_factory=list)
    #: Frames whose P(defect) is within this distance of their threshold are "uncertain" (shown first).
    margin: float = Field(default=0.2, ge=0.0, le=1.0)
    #: Stored passes drawn at random into the queue.
    pass_sample: int = Field(default=50, ge=0, le=10_000)
    #: Newest inspection records considered for the queue.
    window: int = Field(default=5000, ge=1, le=1_000_000)
    seed: int = 0
    #: Station whose current model scores unlabelled imports (default: the first configured station).
    import_station: str | None = None

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes) or any(not c or len(c) > 128 for c in classes):
            raise ValueError(f"labelling classes must be unique non-empty names (max 128 characters), got {classes}")
        return classes


class CheckpointSettings(_Section):
    """Signed checkpoints of the log's chain head (``inspection.log.checkpoints``; docs/inspection-log.md)."""

    #: Ed25519 private key file (``inspection serve --new-signing-key PATH``), owner-readable only.
    #: None: no checkpoints (a rewrite of the whole chain would not be detected).
    signing_key: Path | None = None
    #: A checkpoint after this many new records ...
    every_records: int = Field(default=1000, ge=1, le=10_000_000)
    #: ... or this many seconds after the last one, when records were added since.
    every_s: float = Field(default=60.0, gt=0, le=86_400)
    #: Append-only JSON Lines file the checkpoints are also written to (put it on another disk or
    #: a mounted share); None: only the log and MQTT.
    file: Path | None = None
    #: Publish each checkpoint as a retained message on ``<topic_prefix>/log/checkpoint`` of every
    #: station whose MQTT is enabled.
    mqtt: bool = True


class RegistrySettings(_Section):
    """The plant's central model registry this line PC follows (``inspection.central``)."""

    #: postgresql+psycopg://... ; None: the local folder ``models_dir`` alone decides.
    url: str | None = None
    #: How often the central promotions are read (a change is pulled, verified, then swapped in).
    poll_s: float = Field(default=5.0, gt=0, le=3600)
    #: Seconds to wait for the registry's database before calling it unreachable.
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: At start, when the registry does not answer: serve the verified local copy (True; reported
    #: on /readyz and /metrics until it answers) or refuse to start (False).
    offline_start: bool = True


class ServeSettings(_Section):
    """Everything ``inspection serve`` needs, validated before the app is built."""

    #: Demo mode allows well-known keys and no keys at all (then every route is open).
    demo: bool = False
    models_dir: Path = Path("models")
    log_url: str = "sqlite:///var/log.db"
    frames_dir: Path | None = None
    #: Fraction of passed frames whose image is kept in the log (rejects always; records always).
    frame_sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    #: SQLite only: FULL survives power loss; NORMAL survives a process crash and commits faster.
    log_sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    #: SQLite only: when no other frame is in flight, commit a frame's records on the event
    #: loop's thread instead of handing them to the log's writer thread and back (saves two
    #: thread wake-ups per lone frame; never waits for the database lock).
    log_inline_commit: bool = True
    #: Frame retention (records are always kept; each pruning is itself a ``prune`` record):
    #: frames older than this many days are removed ...
    frames_max_age_days: float | None = Field(default=None, gt=0, le=36_500)
    #: ... then the oldest frames until all of them take at most this many bytes.
    frames_max_bytes: int | None = Field(default=None, ge=0)
    #: How often the server applies the retention policy (only when one of the limits is set).
    retention_interval_s: float = Field(default=3600.0, ge=1, le=7 * 86400)
    #: Free-space floor (bytes) of the frames' filesystem: below it passes' frames are no longer kept
    #: and the oldest frames are pruned (a ``prune`` record) until it is met again. 0: no floor.
    log_min_free_bytes: int = Field(default=0, ge=0)
    #: How often the log's health (commit probe while failing, free space) is checked.
    log_health_interval_s: float = Field(default=1.0, gt=0, le=3600)
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    stations: dict[str, StationSettings] = Field(min_length=1)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    decoding: DecodeSettings = Field(default_factory=DecodeSettings)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1, le=1 << 31)
    #: At most what the log's part_id column stores: a longer id would be scored and then not logged.
    max_part_id_length: int = Field(default=128, ge=1, le=STR_LIMITS["part_id"])
    #: How often models/active.json is checked for a promotion or rollback.
    reload_poll_s: float = Field(default=0.5, gt=0, le=3600)
    #: Part decisions kept in memory for GET /v1/parts/{id}/decision after they are made.
    parts_remembered: int = Field(default=10_000, ge=10, le=10_000_000)
    #: At start, parts whose views are logged but whose part record is not (a crash) are searched
    #: among this many newest records and fail-safe rejected (serving.parts). 0: not searched.
    parts_repair_window: int = Field(default=100_000, ge=0, le=100_000_000)
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: On SIGTERM, open connections get this long to finish before they are closed (a /line page's
    #: event stream never finishes by itself) and the server decides its open parts and closes the log.
    shutdown_grace_s: int = Field(default=5, ge=1, le=300)
    labelling: LabellingSettings = Field(default_factory=LabellingSettings)
    #: Stations of this line PC that another serving process answers (station -> host:port);
    #: their frames get 421 naming it. Set by ``worker_settings`` (``inspection serve --workers``).
    served_elsewhere: dict[str, str] = Field(default_factory=dict)

    @field_validator("stations")
    @classmethod
    def _station_names(cls, stations: dict[str, StationSettings]) -> dict[str, StationSettings]:
        bad = [s for s in stations if not _NAME.match(s)]
        if bad:
            raise ValueError(f"station names {bad} are invalid: letters, digits, _ . - (max 64)")
        return stations

    @model_validator(mode="after")
    def _safe_keys(self) -> ServeSettings:
        names = [k.name for k in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError(f"api key names must be unique, got {names}")
        if len({k.sha256 for k in self.api_keys}) != len(self.api_keys):
            raise ValueError("two api keys have the same digest; give every client its own key")
        if self.demo:
            return self
        if not self.api_keys:
            raise ValueError("no api_keys configured; outside demo mode every client needs a key "
                             "(make one with `inspection serve --new-key ROLE:NAME`)")
        weak = [k.name for k in self.api_keys if k.sha256 in _DEFAULT_DIGESTS]
        if weak:
            raise ValueError(f"api keys {weak} use an empty or well-known default key; allowed only with demo: true")
        return self

    def redacted(self) -> dict[str, Any]:
        """Settings as JSON, without key digests (for the admin settings route)."""
        data = self.model_dump(mode="json")
        data["api_keys"] = [{"name": k.name, "role": k.role} for k in self.api_keys]
        for section, key in ((data, "log_url"), (data["registry"], "url")):
            if section.get(key) and "://" in section[key]:
                section[key] = safe_url(section[key])
        data["resolved_paths"] = resolved_paths(self)
        return data


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        nxt = target.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            target[key] = nxt
        target = nxt
    target[path[-1]] = value


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``INSPECTION_BATCHING__MAX_DELAY_MS=1`` -> ``{"batching": {"max_delay_ms": 1}}``.

    Values are parsed as YAML, so lists and mappings can be given inline
    (``INSPECTION_STATIONS='{s1: {cameras: [top]}}'``).

    Raises:
        ConfigError: a value is not valid YAML.
    """
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "SETTINGS":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path or path[0] not in ServeSettings.model_fields:
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {name}: not valid YAML ({exc})") from None
        _set_path(out, path, value)
    return out


def read_settings_file(path: Path) -> dict[str, Any]:
    """The raw mapping from a YAML (.yaml/.yml) or JSON file.

    Raises:
        ConfigError: missing, unreadable, or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings file {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"settings file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping, got {type(data).__name__}")
    return data


def build_settings(data: Mapping[str, Any], *, source: str = "settings") -> ServeSettings:
    """Validate a mapping into ``ServeSettings``.

    Raises:
        ConfigError: a value is invalid; the message lists each field and what is allowed.
    """
    try:
        return ServeSettings.model_validate(dict(data))
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<settings>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source} invalid: {problems}") from None


def load_settings(path: Path | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> ServeSettings:
    """Settings from a file, then the environment mapping, then explicit overrides (last wins).

    Raises:
        ConfigError: the file cannot be read or any value is invalid.
    """
    data: dict[str, Any] = read_settings_file(path) if path is not None else {}
    if env is not None:
        data = deep_merge(data, env_overrides(env))
    if overrides:
        data = deep_merge(data, dict(overrides))
    # Relative paths are relative to the settings file (to the current directory when there is
    # none), resolved once here: a server started from another directory uses the same files.
    for key in ("models_dir", "log_url"):  # the defaults are relative paths too
        data.setdefault(key, str(ServeSettings.model_fields[key].default))
    resolve_paths(data, Path(path).resolve().parent if path is not None else Path.cwd())
    return build_settings(data, source=str(path) if path else "settings")


#: Settings holding a filesystem path (dotted for nested ones); ``log_url`` is handled apart.
PATH_KEYS = ("models_dir", "frames_dir", "checkpoints.signing_key", "checkpoints.file")


def resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make every relative path in ``data`` (and a SQLite ``log_url``'s file) absolute under ``base``, in place."""
    for dotted in PATH_KEYS:
        *parents, key = dotted.split(".")
        target: Any = data
        for name in parents:
            target = target.get(name) if isinstance(target, dict) else None
        if isinstance(target, dict) and isinstance(target.get(key), str | Path):
            value = Path(target[key]).expanduser()
            target[key] = str(value if value.is_absolute() else base / value)
    url = data.get("log_url")
    if isinstance(url, str):
        data["log_url"] = resolve_sqlite_url(url, base)


def resolve_sqlite_url(url: str, base: Path) -> str:
    """``sqlite:///var/log.db`` -> ``sqlite:////<base>/var/log.db``; other urls unchanged."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # validated (and refused, naming the url) when the log is opened
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    db = Path(parsed.database).expanduser()
    if db.is_absolute():
        return url
    return parsed.set(database=str(base / db)).render_as_string(hide_password=False)


def resolved_paths(settings: ServeSettings) -> dict[str, str | None]:
    """The files the server uses, as resolved (logged at start, shown on ``GET /v1/admin/settings``)."""
    from sqlalchemy.engine import make_url

    log_file: str | None = None
    try:
        url = make_url(settings.log_url)
        if url.get_backend_name() == "sqlite":
            log_file = url.database
    except Exception:  # noqa: BLE001 -- an unparsable url is refused when the log opens
        log_file = None
    frames = settings.frames_dir
    if frames is None and log_file:
        frames = Path(log_file + ".frames")
    cp = settings.checkpoints
    return {
        "models_dir": str(settings.models_dir),
        "log_file": log_file,
        "frames_dir": str(frames) if frames is not None else None,
        "checkpoint_signing_key": str(cp.signing_key) if cp.signing_key else None,
        "checkpoint_file": str(cp.file) if cp.file else None,
    }


def worker_groups(settings: ServeSettings, workers: int) -> list[list[str]]:
    """The stations each of ``workers`` serving processes answers: round robin over the sorted names.

    The sticky rule of ``inspection serve --workers``: every view of a part reaches the process
    that holds its station's open parts (parts are decided in one process's memory).

    Raises:
        ConfigError: fewer stations than workers, or fewer than one worker.
    """
    names = sorted(settings.stations)
    if workers < 1 or workers > len(names):
        raise ConfigError(f"--workers {workers}: allowed 1..{len(names)} (one station or more per serving process; "
                          f"stations: {names})")
    return [names[i::workers] for i in range(workers)]


def worker_settings(settings: ServeSettings, index: int, workers: int, *, host: str, port: int) -> ServeSettings:
    """Serving process ``index`` of ``workers`` on ``port + index``: its stations only, the others
    named as served elsewhere. Machine-wide duties (signed checkpoints, frame retention) stay
    with process 0, so one log gets one checkpointer and one pruner.

    Raises:
        ConfigError: ``index`` outside 0..workers-1, or as ``worker_groups``.
    """
    groups = worker_groups(settings, workers)
    if not 0 <= index < workers:
        raise ConfigError(f"--worker {index}/{workers}: the index must be 0..{workers - 1}")
    mine = set(groups[index])
    elsewhere = {s: f"{host}:{port + j}" for j, group in enumerate(groups) if j != index for s in group}
    update: dict[str, Any] = {
        "stations": {k: v for k, v in settings.stations.items() if k in mine},
        "served_elsewhere": elsewhere,
        "port": port + index,
        "host": host,
    }
    if index > 0:
        update["checkpoints"] = settings.checkpoints.model_copy(update={"signing_key": None, "file": None})
        update["frames_max_age_days"] = None
        update["frames_max_bytes"] = None
    return settings.model_copy(update=update)
