"""Schemathesis + Hypothesis: drive one API operation and require that it never answers 5xx."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable


def assert_never_5xx(path: str, strategy: Any, *, headers: dict[str, str], mode: str, max_examples: int,
                     seen: dict[str, set[int]]) -> None:
    """Call ``strategy``'s cases (bounded, derandomized) with ``headers``; every answer must be
    below 500. The statuses seen are collected per ``path``. ``mode`` "negative" may have no
    cases at all (nothing to vary, or the only parameter is pinned)."""

    @given(case=strategy)
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call(headers=headers)
        seen.setdefault(path, set()).add(response.status_code)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: {response.text[:500]}")

    try:
        check()
    except Unsatisfiable:
        assert mode == "negative", path
