"""A record's stored frame over HTTP: as the camera sent it (the evidence), or as an image a
browser shows (what the audit, labelling and line pages draw; ``inspection.frameview``)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import Response

from inspection.card import ModelCard
from inspection.errors import NotFoundError
from inspection.frameview import RawLayout, browser_image
from inspection.log.framestore import check_sha
from inspection.log.records import StoredRecord
from inspection.log.store import SqlInspectionLog
from inspection.preprocess import RAW_TYPE, media_type

CardLookup = Callable[[str, str], ModelCard | None]


def _stored(log: SqlInspectionLog, rec: StoredRecord) -> bytes:
    if not rec.entry.frame_sha256:
        raise NotFoundError(f"record {rec.entry.inspection_id!r} names no frame")
    return log.frame(check_sha(rec.entry.frame_sha256))


def stored_frame(log: SqlInspectionLog, rec: StoredRecord, *, max_age: int = 86400) -> Response:
    """The frame byte for byte as sent; a raw frame's layout in ``X-Frame-Width``, ``-Height``
    and ``-Channels`` (its bytes have no header).

    Raises:
        NotFoundError: the record names no frame, or it was not kept or was pruned.
    """
    data = _stored(log, rec)
    headers = {"Cache-Control": f"private, max-age={max_age}", "ETag": f'"{rec.entry.frame_sha256}"',
               "X-Content-Type-Options": "nosniff"}
    raw = RawLayout.of_record(rec.entry.data)
    if raw is not None:
        headers.update({"X-Frame-Width": str(raw.width), "X-Frame-Height": str(raw.height),
                        "X-Frame-Channels": str(raw.channels)})
    return Response(data, media_type=RAW_TYPE if raw is not None else media_type(data), headers=headers)


def frame_view(log: SqlInspectionLog, rec: StoredRecord, cards: CardLookup | None, *,
               max_age: int = 86400) -> Response:
    """The frame as an image a browser shows, same size (``inspection.frameview.browser_image``);
    a 16-bit frame through the levels of the model that decided it, where its card is known.

    Raises:
        NotFoundError: as ``stored_frame``.
        ImageError: the stored bytes cannot be shown (a frame refused as undecodable when it
            arrived; ``stored_frame`` still gives it as it came).
    """
    data = _stored(log, rec)
    e = rec.entry
    card = cards(e.model_name, e.model_version) if cards is not None and e.model_name and e.model_version else None
    body, kind = browser_image(data, RawLayout.of_record(e.data), levels=card.input.levels if card else None,
                               source=f"frame of record {e.inspection_id}")
    return Response(body, media_type=kind, headers={"Cache-Control": f"private, max-age={max_age}",
                                                    "ETag": f'"{e.frame_sha256}-view"',
                                                    "X-Content-Type-Options": "nosniff"})
