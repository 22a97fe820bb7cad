"""Frames kept beside the log, content-addressed by sha256.

A frame is written to a temp file, fsynced, renamed into ``<root>/<ab>/<sha256>`` and the
directory fsynced *before* the record naming it is committed, so a record never points at a
frame that a crash lost. The same image inspected twice is stored once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inspection.errors import NotFoundError, ValidationError

_SHA = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits; ValidationError otherwise."""
    if not isinstance(sha256, str) or not _SHA.match(sha256):
        raise ValidationError(f"frame sha256 {sha256!r} is not 64 lowercase hex digits")
    return sha256


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class StoredFrame:
    sha256: str
    path: Path
    size: int
    mtime: float


class FrameStore:
    """Content-addressed frame files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha(sha256)
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` durably (fsynced) and return its sha256; a no-op if already stored."""
        digest = sha256_hex(data)
        if sha256 is not None and sha256 != digest:
            raise ValidationError(f"frame sha256 {sha256!r} does not match the frame's bytes ({digest})")
        final = self.path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return digest

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        """The frame's bytes; NotFoundError when it was never stored or has been pruned."""
        path = self.path(sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"frame {sha256} is not stored (not sampled, or pruned by retention)") from None

    def remove(self, sha256: str) -> int:
        """Delete a frame; returns the bytes freed (0 if it was already gone)."""
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def iter_frames(self) -> Iterator[StoredFrame]:
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sub.iterdir():
                if _SHA.match(f.name):
                    try:
                        st = f.stat()
                    except FileNotFoundError:
                        continue
                    yield StoredFrame(f.name, f, st.st_size, st.st_mtime)
