"""Frame fuzzing through the real app: hostile, broken and unusual frames never get a 5xx.

Every frame goes through ``POST /v1/inspections`` for a named part. A frame the server cannot
or will not decode gets a 4xx whose body names the reason (and fail-safe rejects the part); a
valid frame gets its decision. Nothing reaches the server log as a traceback.

Cases: the committed corpus (tests/data/frame_corpus/: lying headers up to 65,535 x 65,535,
zero sizes, truncated and corrupt chunks, 16-bit, palette, CMYK, progressive, multi-page and
tiled frames, BMP with negative height; see tests/helpers/hostile_frames.py), then Hypothesis:
random bytes behind each format's magic number, and mutations (bit flips, truncations,
insertions, header fields overwritten with large values) of the corpus's valid frames. A case
Hypothesis finds failing is written to the corpus as ``found-<sha>.bin`` before the test fails:
commit it, and it is replayed on every run from then on. Bounded: derandomized, a few hundred
examples, no example database.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context

from inspection.preprocess import media_type
from tests.serving.conftest import post_frame

CORPUS = Path(__file__).resolve().parents[1] / "data" / "frame_corpus"
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*"]
# Errors say what, not where: every answer is checked for infrastructure details (tests/helpers/leaks.py).
pytestmark = pytest.mark.usefixtures("no_infrastructure_details")
BUDGET = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))


def _corpus(prefix: str = "") -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file() and p.name.startswith(prefix))


class Poster:
    """Posts frames for fresh parts and checks every answer's shape."""

    def __init__(self, client: TestClient, keys: dict[str, str]) -> None:
        self.client, self.keys, self.n = client, keys, 0

    def post(self, data: bytes) -> Any:
        self.n += 1
        kind = media_type(data)
        r = post_frame(self.client, self.keys, data, part_id=f"fuzz-{self.n}",
                       content_type=kind if kind.startswith("image/") else "image/png")
        assert r.status_code < 500, f"{r.status_code} for {data[:32]!r}... ({len(data)} bytes): {r.text[:300]}"
        body = r.json()
        if r.status_code >= 400:
            assert body.get("error") and body.get("detail"), body  # a reason class and a sentence
            assert body["failsafe"]["decision"] == "reject" and body["failsafe"]["reason"], body
        else:
            assert r.status_code == 200 and body["decision"] in ("pass", "reject"), body
        return r


@pytest.fixture
def poster(client: TestClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture) -> Iterator[Poster]:
    caplog.set_level(logging.INFO)
    yield Poster(client, keys)
    noisy = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage()[:300] for r in noisy]
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_corpus_frame_gets_its_answer(poster: Poster, path: Path) -> None:
    r = poster.post(path.read_bytes())
    kind = path.name.split("-", 1)[0]
    if kind == "bomb":
        assert r.status_code == 413 and r.json()["error"] == "frame_too_large", r.text
        assert "header declares" in r.json()["detail"] and "refused without decoding" in r.json()["detail"]
    elif kind == "bad":
        assert 400 <= r.status_code < 500, r.text
    elif kind == "ok":
        assert r.status_code == 200, r.text


def test_bombs_leave_the_server_memory_as_it_was(poster: Poster) -> None:
    bombs = [p.read_bytes() for p in _corpus("bomb-")]
    poster.post(bombs[0])  # first-use allocations (the error path, the log) are not growth
    rss = psutil.Process().memory_info().rss
    for _ in range(5):
        for data in bombs:
            assert poster.post(data).status_code == 413
    growth = psutil.Process().memory_info().rss - rss
    assert growth < 50 * 2**20, f"RSS grew {growth / 2**20:.0f} MB over {5 * len(bombs)} refused bombs"


def _save_if_final(data: bytes) -> None:
    # Only the shrunk example Hypothesis reports is kept, not every failing step on the way.
    if current_build_context().is_final:
        found = CORPUS / f"found-{hashlib.sha256(data).hexdigest()[:16]}.bin"
        found.write_bytes(data)
        print(f"saved the failing case to {found}; commit it")


def _check(poster: Poster, data: bytes) -> None:
    try:
        poster.post(data)
    except AssertionError:
        _save_if_final(data)
        raise


def test_random_bytes_behind_a_magic_number(poster: Poster) -> None:
    @given(magic=st.sampled_from(MAGICS), rest=st.binary(max_size=512))
    @BUDGET
    def case(magic: bytes, rest: bytes) -> None:
        _check(poster, magic + rest)

    case()


def _mutate(seed: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for op, at, blob in ops:
        i = at % max(1, len(data))
        if op == "flip":
            data[i:i + 1] = bytes([data[i] ^ (blob[0] | 1)]) if data else b""
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = blob
        else:  # "big": a header field overwritten with a large value
            data[i:i + 4] = b"\xff\xff\x7f\xff"
    return bytes(data)


def test_mutated_valid_frames(poster: Poster) -> None:
    seeds = [p.read_bytes() for p in _corpus("ok-")]
    op = st.tuples(st.sampled_from(["flip", "cut", "insert", "big"]), st.integers(0, 4096),
                   st.binary(min_size=1, max_size=16))

    @given(seed=st.sampled_from(seeds), ops=st.lists(op, min_size=1, max_size=4),
           header_only=st.booleans())
    @BUDGET
    def case(seed: bytes, ops: list[tuple[str, int, bytes]], header_only: bool) -> None:
        # Half the mutations land in the first 64 bytes, where the headers the guard reads are.
        ops = [(o, at % 64 if header_only else at, blob) for o, at, blob in ops]
        _check(poster, _mutate(seed, ops))

    case()
