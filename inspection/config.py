"""Helpers shared by the typed configs (serving settings, training config)."""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: Query parameters of a database url that carry a secret (libpq and psycopg take the password there too).
_SECRET_QUERY = ("password", "sslpassword", "passfile")


def safe_url(url: str) -> str:
    """A database url fit for logs, messages and pages: its password replaced by ``***``, whether
    in ``user:password@`` or in the query (``?password=...``)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        secret = {k: "***" for k in parsed.query if k.lower() in _SECRET_QUERY}
        return parsed.update_query_dict(secret).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- not a URL we can parse: say so rather than leak it
        return "<unparseable url>"
