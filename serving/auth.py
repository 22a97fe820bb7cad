"""API keys with roles.

A route declares who may call it in one place, its dependency::

    @router.get("/v1/models")
    async def models(who: Annotated[Principal, Depends(Require("engineer"))]): ...

``Require`` answers 401 without a (known) key and 403 for a key of another role. Keys come
as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; only their sha256 digests are in
the settings, and every configured digest is compared with ``hmac.compare_digest`` (no early
exit on the first match, so timing says nothing about which key is close). Roles are not
hierarchical: a route lists every role it admits. In demo mode with no keys configured every
route is open (the caller is recorded as ``demo``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from inspection.errors import AuthenticationError, PermissionDeniedError
from serving.settings import ROLES, ApiKeySettings, Role

#: Routes open without a key, on purpose (the role x route test refuses any other route that
#: does not declare ``Require``): liveness/readiness probes, the API description, and the audit
#: page's static shell (it asks for a key and calls the protected /v1/audit API with it); the
#: labelling page's shell (/label), the line page (/line) and the front door (/) likewise, and the
#: defect-map script those pages share (code, no data).
OPEN_ROUTES = frozenset(
    {"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/audit", "/label",
     "/line", "/static/defectmap.js"}
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name (recorded as the log's ``actor``) and its role."""

    name: str
    role: Role


class KeyStore:
    """The configured keys, as (digest bytes, principal) pairs."""

    def __init__(self, keys: Iterable[ApiKeySettings], *, open_access: bool = False) -> None:
        self._keys = [(bytes.fromhex(k.sha256), Principal(k.name, k.role)) for k in keys]
        self.open_access = open_access and not self._keys

    def identify(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for stored, principal in self._keys:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def presented_key(conn: HTTPConnection) -> str | None:
    """The key a request presents, from ``Authorization: Bearer`` or ``X-API-Key``."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = conn.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Require:
    """Dependency admitting only keys of the given roles; returns the ``Principal``."""

    def __init__(self, *roles: Role) -> None:
        unknown = [r for r in roles if r not in ROLES]
        if unknown or not roles:
            raise ValueError(f"roles {unknown or '[]'} invalid; allowed: {list(ROLES)}")
        self.roles: frozenset[Role] = frozenset(roles)

    def __repr__(self) -> str:
        return f"Require({', '.join(sorted(self.roles))})"

    async def __call__(self, conn: HTTPConnection) -> Principal:
        keys: KeyStore = conn.app.state.keys
        if keys.open_access:
            return Principal("demo", "admin")
        key = presented_key(conn)
        if key is None:
            raise AuthenticationError(
                "no API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                f"(this route needs role {' or '.join(sorted(self.roles))})"
            )
        principal = keys.identify(key)
        if principal is None:
            raise AuthenticationError("API key not recognised")
        if principal.role not in self.roles:
            raise PermissionDeniedError(f"key {principal.name!r} has role {principal.role!r}; "
                                        f"this route needs {' or '.join(sorted(self.roles))}")
        return principal
