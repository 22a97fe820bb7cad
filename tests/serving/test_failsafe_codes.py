"""Fail-safe reasons are declared on the error classes; the serving guide lists each one."""

from __future__ import annotations

import re
from pathlib import Path

from inspection import errors as E

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def _error_classes() -> list[type[E.InspectionError]]:
    return [c for c in vars(E).values() if isinstance(c, type) and issubclass(c, E.InspectionError)]


def test_each_frame_error_records_its_own_reason_and_subclasses_inherit_it() -> None:
    assert {c.__name__: c.failsafe_code for c in (E.OverloadedError, E.ImageError, E.ModelError,
                                                  E.PayloadTooLargeError, E.UnsupportedMediaError,
                                                  E.ValidationError, E.NotFoundError, E.InspectionError)} == {
        "OverloadedError": "overload", "ImageError": "undecodable_frame", "ModelError": "model_error",
        "PayloadTooLargeError": "payload_too_large", "UnsupportedMediaError": "unsupported_media_type",
        "ValidationError": "invalid_request", "NotFoundError": "server_error", "InspectionError": "server_error",
    }
    assert E.ModelIntegrityError.failsafe_code == E.ModelCardError.failsafe_code == "server_error"


def test_the_serving_guide_lists_every_declared_reason() -> None:
    table = DOCS.read_text(encoding="utf-8").split("| fail-safe reason |", 1)[1].split("\n\n", 1)[0]
    last_cells = [row.rstrip(" |").rsplit("|", 1)[-1] for row in table.splitlines() if row.startswith("|")]
    documented = {code for cell in last_cells for code in re.findall(r"`([a-z_]+)`", cell)}
    declared = {c.failsafe_code for c in _error_classes()} - {"server_error"}
    assert declared == documented, f"docs/serving.md lists {sorted(documented)}, the errors declare {sorted(declared)}"
