"""Errors say what, not where: find infrastructure details in what the server tells a client.

``infrastructure_details(text)`` lists what a client must never read: host:port pairs, IP
addresses and ``localhost``, absolute file paths under the usual system folders, database
URLs and driver names, SQL, Python tracebacks. ``watching_responses()`` checks every response
any httpx client gets while it is active (``TestClient`` is one, and so are ``httpx.get`` and
``httpx.AsyncClient`` over an ASGI transport or a real socket), so a fault test gets the check
on every answer without changing how it sends requests; the ``no_infrastructure_details``
fixture (tests/serving/conftest.py) wraps a test in it and fails the test at teardown, listing
each leaking answer. Answers to requests whose path is in ``ALLOWED_PATHS`` are not checked:
an administrator's view of the server's own configuration names its files on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

#: Routes whose answers are the server's configuration shown to an administrator (its paths, on purpose).
ALLOWED_PATHS = ("/v1/admin/settings",)

_PATTERNS: dict[str, re.Pattern[str]] = {
    "host:port": re.compile(r"\b(?:localhost|\d{1,3}(?:\.\d{1,3}){3}|[a-zA-Z][\w-]*(?:\.[\w-]+)+):\d{2,5}\b"),
    "ip address": re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])"),
    "localhost": re.compile(r"\blocalhost\b", re.IGNORECASE),
    "file path": re.compile(r"(?<![\w.:/])/(?:tmp|var|home|root|srv|usr|etc|opt|proc|dev/shm|mnt|run|work)/"),
    "database url": re.compile(r"\b(?:sqlite|postgres(?:ql)?|mysql)(?:\+\w+)?://", re.IGNORECASE),
    "driver": re.compile(r"\b(?:sqlite3?|psycopg2?|postgresql|sqlalchemy|asyncpg|libpq)\b", re.IGNORECASE),
    "sql": re.compile(r"\b(?:INSERT INTO|SELECT .{0,80} FROM|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b"),
    "traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"),
}


def infrastructure_details(text: str) -> list[str]:
    """What in ``text`` names infrastructure: ``["<kind>: <match>", ...]`` (empty when nothing)."""
    return [f"{kind}: {m.group(0)!r}" for kind, pattern in _PATTERNS.items() for m in pattern.finditer(text)]


def _response_text(response: httpx.Response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items() if k.lower() not in ("date", "server"))
    try:
        body = response.text
    except httpx.ResponseNotRead:  # a streamed answer the test has not read: its headers only
        body = ""
    return f"{headers}\n{body}"


def assert_no_infrastructure_details(response: httpx.Response) -> None:
    """Fail naming the request and what its answer leaked."""
    found = leaks_of(response)
    assert not found, found


def leaks_of(response: httpx.Response) -> list[str]:
    """``infrastructure_details`` of one answer, as ``"METHOD path -> status: kind: match"`` lines."""
    if response.request.url.path in ALLOWED_PATHS:
        return []
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    return [f"{where}: {d}" for d in infrastructure_details(_response_text(response))]


@contextmanager
def watching_responses() -> Iterator[list[str]]:
    """Check every answer an httpx client (sync or async) receives meanwhile; yields the list the
    leaks are appended to (checked by the caller: a worker thread's assertion would be lost)."""
    leaks: list[str] = []
    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self: httpx.Client, request: httpx.Request, **kw: Any) -> httpx.Response:
        response = sync_send(self, request, **kw)
        leaks.extend(leaks_of(response))
        return response

    async def asend(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> httpx.Response:
        response = await async_send(self, request, **kw)
        leaks.extend(leaks_of(response))
        return response

    httpx.Client.send = send  # type: ignore[method-assign]
    httpx.AsyncClient.send = asend  # type: ignore[method-assign]
    try:
        yield leaks
    finally:
        httpx.Client.send = sync_send  # type: ignore[method-assign]
        httpx.AsyncClient.send = async_send  # type: ignore[method-assign]
