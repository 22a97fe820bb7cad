"""Frames kept beside the log, content-addressed by sha256.

A frame is written to a temp file, fsynced, renamed into ``<root>/<ab>/<sha256>`` and the
directory fsynced *before* the record naming it is committed, so a record never points at a
frame that a crash lost. The same image inspected twice is stored once.

Every read re-hashes the bytes: a frame swapped or truncated on disk is never handed out as
the frame its record names (``LogIntegrityError``), whoever reads it (the audit page, an
export, a dataset build, the labelling page). Operating-system errors (disk full, read-only,
permission denied) come out as ``StorageFullError`` / ``StorageError``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inspection.errors import LogIntegrityError, NotFoundError, ValidationError
from inspection.log.faults import from_os_error

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
        """Raises StorageError when ``root`` cannot be created."""
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise from_os_error(exc, "creating the frames directory") from exc

    def path(self, sha256: str) -> Path:
        check_sha(sha256)
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` durably (fsynced) and return its sha256; a no-op if already stored intact.

        Raises ValidationError (``sha256`` does not match the bytes), StorageFullError (no space
        left) or StorageError (read-only filesystem, permission denied, I/O error); nothing
        half-written is left behind.
        """
        digest = sha256_hex(data)
        if sha256 is not None and sha256 != digest:
            raise ValidationError(f"frame sha256 {sha256!r} does not match the frame's bytes ({digest})")
        final = self.path(digest)
        try:
            if final.exists() and self._intact(final, digest):
                # Kept again now: age-based retention reads the file's mtime, and must not take a
                # frame a record keeps today for the older record that first stored the same bytes.
                os.utime(final)
                return digest
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        except OSError as exc:
            raise from_os_error(exc, "storing a frame") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise from_os_error(exc, "storing a frame") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    @staticmethod
    def _intact(path: Path, digest: str) -> bool:
        # A file already there under this name is reused only if it still holds these bytes:
        # a swapped frame is replaced by the genuine one instead of being trusted.
        try:
            return sha256_hex(path.read_bytes()) == digest
        except FileNotFoundError:
            return False

    def has(self, sha256: str) -> bool:
        """Whether a file is stored under that sha256 (its bytes are checked only by ``read``)."""
        try:
            return self.path(sha256).is_file()
        except OSError as exc:
            raise from_os_error(exc, "looking up a frame") from exc

    def read(self, sha256: str) -> bytes:
        """The frame's bytes, re-hashed.

        Raises NotFoundError (never stored, or pruned), LogIntegrityError (the file's bytes no
        longer hash to ``sha256``: swapped, edited or truncated on disk) or StorageError.
        """
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"frame {sha256} is not stored (not sampled, or pruned by retention)") from None
        except OSError as exc:
            raise from_os_error(exc, "reading a frame") from exc
        actual = sha256_hex(data)
        if actual != sha256:
            raise LogIntegrityError(f"frame {sha256} was altered on disk: its {len(data)} bytes hash to {actual} "
                                    "(swapped, edited or truncated); it is not served")
        return data

    def check(self, sha256: str) -> str | None:
        """None when the frame is stored intact; else ``"missing"`` or ``"altered"``.

        Raises StorageError when the file cannot be read for another reason.
        """
        try:
            self.read(sha256)
        except NotFoundError:
            return "missing"
        except LogIntegrityError:
            return "altered"
        return None

    def probe(self) -> None:
        """Write, fsync and remove a small file here. Raises StorageFullError / StorageError."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=self.root)
        except OSError as exc:
            raise from_os_error(exc, "probing the frames directory") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise from_os_error(exc, "probing the frames directory") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        """Bytes free for this process on the frames' filesystem. Raises StorageError."""
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise from_os_error(exc, "reading the free space of the frames directory") from exc
        return st.f_bavail * st.f_frsize

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
        """Every stored frame file (not re-hashed). Raises StorageError when the directory cannot be read."""
        try:
            subs = sorted(self.root.iterdir())
            for sub in subs:
                if not sub.is_dir() or len(sub.name) != 2:
                    continue
                for f in sub.iterdir():
                    if _SHA.match(f.name):
                        try:
                            st = f.stat()
                        except FileNotFoundError:
                            continue
                        yield StoredFrame(f.name, f, st.st_size, st.st_mtime)
        except OSError as exc:
            raise from_os_error(exc, "listing the stored frames") from exc
