"""Signed checkpoints: the chain head, signed with an Ed25519 key, kept where the database is not.

The hash chain finds any edit, deletion, insertion or reordering, except one: whoever can
write to the database can recompute every hash from the record they changed on, head row
included. A checkpoint closes that gap: every N records or T seconds the server signs
``(seq, hash, time)`` of the chain head with a key that is not in the database, appends it to
the log as a ``checkpoint`` record, and publishes it outside the database (an append-only
JSON Lines file that can live on another disk or machine; a retained MQTT message). A rewrite
then disagrees with a signed hash at some seq, and a truncated tail leaves a checkpoint
pointing past the end. Forging a checkpoint needs the private key.

The key file holds an Ed25519 private key (PKCS#8 PEM) readable by its owner only; the public
key (64 hex digits) is what auditors pass to ``inspection audit verify --public-key``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from inspection.errors import ConfigError, ValidationError
from inspection.log import chain
from inspection.log.faults import from_os_error
from inspection.log.tables import records

log = logging.getLogger(__name__)

#: Part of every signed message: a signature over anything else is never taken for a checkpoint.
DOMAIN = "inspection-log-checkpoint/v1"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: "the chain had ``hash`` at ``seq`` at ``time``"."""

    seq: int
    hash: str
    time: str          # canonical UTC time (chain.canonical_time)
    key: str           # the signer's public key, 64 hex digits
    signature: str     # Ed25519 signature of ``message()``, 128 hex digits

    def message(self) -> bytes:
        return signed_message(self.seq, self.hash, self.time)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "time": self.time, "key": self.key, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: Any) -> Checkpoint:
        """Raises ValidationError when ``data`` is not a checkpoint."""
        if not isinstance(data, dict):
            raise ValidationError(f"a checkpoint is a JSON object, got {type(data).__name__}")
        try:
            cp = cls(seq=data["seq"], hash=data["hash"], time=data["time"], key=data["key"],
                     signature=data["signature"])
        except KeyError as exc:
            raise ValidationError(f"checkpoint {data!r} lacks {exc}; needs seq, hash, time, key, signature") from None
        if not isinstance(cp.seq, int) or cp.seq < 0 or not all(isinstance(v, str) for v in
                                                                 (cp.hash, cp.time, cp.key, cp.signature)):
            raise ValidationError(f"checkpoint {data!r} has a field of the wrong type")
        return cp


def signed_message(seq: int, hash_: str, time: str) -> bytes:
    return chain.canonical_json({"domain": DOMAIN, "seq": seq, "hash": hash_, "time": time}).encode("utf-8")


# ---------------------------------------------------------------------------- keys
def _ed25519() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def generate_signing_key(path: Path) -> str:
    """Write a new private key to ``path`` (mode 0600, never over an existing file); returns the public key hex.

    Raises ConfigError when ``path`` exists, StorageError when it cannot be written.
    """
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"signing key file {path} already exists; a key is never overwritten "
                          "(move it away first if you really mean to replace it)") from None
    except OSError as exc:
        raise from_os_error(exc, "writing the signing key") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return public_key_hex(key)


def public_key_hex(private_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


class Signer:
    """Signs chain heads with the private key read from a file (checked: owner-only permissions)."""

    def __init__(self, private_key: Any) -> None:
        self._key = private_key
        self.public_key = public_key_hex(private_key)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """Raises ConfigError when the file is missing, not an Ed25519 key, or readable by others."""
        from cryptography.hazmat.primitives import serialization

        path = Path(path)
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"signing key file {path} does not exist "
                              "(make one with `inspection serve --new-signing-key PATH`)") from None
        except OSError as exc:
            raise ConfigError(f"signing key file {path} cannot be read: {exc.strerror}") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError(f"signing key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
                              "may read it; allowed: owner only (chmod 600)")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"signing key file {path} is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, _ed25519().Ed25519PrivateKey):
            raise ConfigError(f"signing key file {path} holds a {type(key).__name__}; allowed: an Ed25519 key")
        return cls(key)

    def sign(self, seq: int, hash_: str, time: datetime) -> Checkpoint:
        t = chain.canonical_time(time)
        signature = self._key.sign(signed_message(seq, hash_, t)).hex()
        return Checkpoint(seq=seq, hash=hash_, time=t, key=self.public_key, signature=signature)


def load_public_key(value: str) -> Any:
    """An Ed25519 public key from 64 hex digits, or from a file holding them (or a PEM public key).

    Raises ConfigError naming the value and what is allowed.
    """
    text = value.strip()
    path = Path(text)
    if len(text) != 64 and path.is_file():
        text = path.read_text(encoding="utf-8").strip()
    if text.startswith("-----BEGIN PUBLIC KEY-----"):
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_public_key(text.encode("ascii"))
        if not isinstance(key, _ed25519().Ed25519PublicKey):
            raise ConfigError(f"public key {value!r} is not an Ed25519 key")
        return key
    try:
        raw = bytes.fromhex(text)
        if len(raw) != 32:
            raise ValueError
    except ValueError:
        raise ConfigError(f"public key {value!r} is not 64 hex digits (an Ed25519 public key) "
                          "nor a file holding one") from None
    return _ed25519().Ed25519PublicKey.from_public_bytes(raw)


def signature_ok(cp: Checkpoint, public_key: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes.fromhex(cp.signature), cp.message())
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------- publishing
def append_to_file(path: Path, cp: Checkpoint) -> None:
    """Append ``cp`` as one JSON line (O_APPEND, fsynced). Raises StorageError."""
    line = (json.dumps(cp.as_dict(), separators=(",", ":")) + "\n").encode("utf-8")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_os_error(exc, "appending to the checkpoint file") from exc


def read_file(path: Path) -> tuple[list[Checkpoint], list[str]]:
    """The checkpoints of a JSON Lines file, and a note per line that is not one.

    Raises ConfigError when the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"checkpoint file {path} cannot be read: {exc.strerror}") from None
    out: list[Checkpoint] = []
    bad: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Checkpoint.from_dict(json.loads(line)))
        except (ValueError, ValidationError) as exc:
            bad.append(f"{path} line {number} is not a checkpoint ({str(exc)[:120]})")
    return out, bad


def fetch_mqtt(url: str, *, timeout_s: float = 5.0) -> list[Checkpoint]:
    """The retained checkpoint at ``mqtt://host[:port]/topic`` (empty when none is retained).

    Raises ConfigError when the url is malformed or the broker cannot be reached.
    """
    import threading
    from urllib.parse import urlparse

    parsed = urlparse(url)
    topic = parsed.path.lstrip("/")
    if parsed.scheme != "mqtt" or not parsed.hostname or not topic:
        raise ConfigError(f"checkpoint source {url!r} is not mqtt://host[:port]/topic")
    try:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise ConfigError("reading checkpoints from MQTT needs paho-mqtt (the serve extra)") from None
    got: list[bytes] = []
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got.append(bytes(msg.payload))
        done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(parsed.hostname, parsed.port or 1883, keepalive=10)
    except OSError as exc:
        raise ConfigError(f"MQTT broker of {url!r} cannot be reached: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    out = []
    for payload in got:
        try:
            out.append(Checkpoint.from_dict(json.loads(payload)))
        except (ValueError, ValidationError) as exc:
            log.warning("MQTT %s: not a checkpoint: %s", url, exc)
    return out


# ---------------------------------------------------------------------------- verifying
def in_log(conn: Connection) -> tuple[list[tuple[int, Checkpoint | None]], int]:
    """(record seq, checkpoint or None when unreadable) for every ``checkpoint`` record."""
    out: list[tuple[int, Checkpoint | None]] = []
    result = conn.exec_driver_sql(f"SELECT seq, data FROM {records.name} WHERE kind = 'checkpoint' ORDER BY seq")
    for seq, data in result:
        try:
            out.append((int(seq), Checkpoint.from_dict(json.loads(data))))
        except (TypeError, ValueError, ValidationError):
            out.append((int(seq), None))
    return out, len(out)


def make_check(public_key: Any, external: Iterable[Checkpoint] = (), *, external_notes: Iterable[str] = (),
               source: str = "checkpoint file"):  # type: ignore[no-untyped-def]
    """The ``checkpoint_check`` for ``inspection.log.verify.verify_log``: every checkpoint in the log
    and in ``external`` is checked (signature, then the record at its seq)."""
    external = list(external)

    def check(conn: Connection, last_seq: int | None) -> tuple[list[chain.Problem], int, list[str]]:
        problems: list[chain.Problem] = []
        notes = list(external_notes)
        found, _ = in_log(conn)
        end = _last_seq(conn)
        checked = 0
        candidates: list[tuple[str, int | None, Checkpoint | None]] = [("log", s, c) for s, c in found]
        candidates += [(source, None, c) for c in external]
        for where, record_seq, cp in candidates:
            label = (f"checkpoint record {record_seq}" if where == "log"
                     else f"checkpoint for seq {cp.seq if cp else '?'} in the {where}")
            if cp is None:
                problems.append(chain.Problem("checkpoint_forged", record_seq, f"{label} is unreadable"))
                continue
            checked += 1
            if not signature_ok(cp, public_key):
                problems.append(chain.Problem("checkpoint_forged", record_seq if where == "log" else cp.seq,
                                              f"{label} is not signed by the given key: forged or altered"))
                continue
            problems.extend(_against_records(conn, cp, label, end))
        if not candidates:
            notes.append("no signed checkpoint found: a rewrite of the whole chain would not be detected")
        return _dedupe(problems), checked, notes

    return check


def _last_seq(conn: Connection) -> int:
    (value,) = conn.exec_driver_sql(f"SELECT MAX(seq) FROM {records.name}").one()
    return int(value) if isinstance(value, int) else 0


def _against_records(conn: Connection, cp: Checkpoint, label: str, end: int) -> list[chain.Problem]:
    if cp.seq == 0:
        return []
    if cp.seq > end:
        return [chain.Problem("truncated", cp.seq,
                              f"{label} (signed {cp.time}) vouches for record {cp.seq}, but the log ends at "
                              f"seq {end}: records {end + 1}..{cp.seq} (at least) were removed")]
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    rows = conn.exec_driver_sql(f"SELECT hash, inspection_id FROM {records.name} WHERE seq = {mark}",
                                (cp.seq,)).fetchall()  # type: ignore[arg-type]
    if not rows:
        return [chain.Problem("truncated", cp.seq, f"{label} vouches for record {cp.seq}, which is missing")]
    stored, rid = rows[0]
    if stored != cp.hash:
        return [chain.Problem("checkpoint_mismatch", cp.seq,
                              f"record {cp.seq} hashes to {str(stored)[:12]}... but {label} (signed {cp.time}) "
                              f"says {cp.hash[:12]}...: the chain up to record {cp.seq} was rewritten after it "
                              "was signed (hashes recomputed)", rid)]
    return []


def _dedupe(problems: list[chain.Problem]) -> list[chain.Problem]:
    seen: set[tuple[str, int | None]] = set()
    out = []
    for p in sorted(problems, key=lambda p: (p.seq is None, p.seq or 0)):
        if (p.kind, p.seq) in seen:
            continue
        seen.add((p.kind, p.seq))
        out.append(p)
    return out


__all__ = ["Checkpoint", "Signer", "append_to_file", "fetch_mqtt", "generate_signing_key",
           "load_public_key", "make_check", "read_file", "signature_ok"]
