"""A stored frame read back: as pixels, and as an image a browser shows.

The inspection log keeps every frame exactly as the camera sent it (its sha256 is what the record
names), and that is not always an image a page can show or a dataset can hold:

* **raw pixels** (``application/octet-stream``, a line PC's fastest path) carry no header. The
  record keeps the width, height and channels the request declared (``data["raw"]``,
  ``RawLayout``); the bytes per sample follow from the frame's length (1 or 2: 8- or 16-bit).
* **TIFF**, the usual file format of industrial cameras, is shown by no common browser, and a
  **16-bit** frame is shown by browsers (PNG) as its top 8 bits: a 12-bit camera's frame, whose
  values end at 4,095, looks black.

``decode_stored`` gives the pixels (the labelling page scores them with the current model,
``inspection dataset build`` writes raw frames as PNG); ``browser_image`` gives what the audit,
labelling and line pages draw — an 8-bit PNG, JPEG or BMP passes unchanged (byte for byte), any
other frame is re-encoded as an 8-bit PNG of the same size, a 16-bit one through the levels of
the model that decided it (what that model saw) or, without them, the frame's own range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from inspection.errors import ImageError
from inspection.imageheader import bit_depth
from inspection.preprocess import RAW_TYPE, decode_image, decode_raw, map_levels, media_type

#: Formats every browser shows as they are (8-bit: a 16-bit PNG is handled apart).
BROWSER_TYPES = ("image/png", "image/jpeg", "image/bmp")

#: Percentiles of a 16-bit frame's own values that span the display where no model's levels are
#: known: a few hot or dead pixels do not set the contrast.
OWN_RANGE_PERCENTILES = (0.1, 99.9)


@dataclass(frozen=True)
class RawLayout:
    """The layout a raw frame was sent with (its record keeps it: the bytes have no header)."""

    width: int
    height: int
    channels: int

    def as_dict(self) -> dict[str, int]:
        return {"width": self.width, "height": self.height, "channels": self.channels}

    @classmethod
    def of_record(cls, data: Mapping[str, Any] | None) -> RawLayout | None:
        """The layout a record's ``data["raw"]`` names, or None (an encoded frame, or a raw frame
        recorded before layouts were kept)."""
        raw = (data or {}).get("raw")
        if not isinstance(raw, Mapping):
            return None
        try:
            return cls(int(raw["width"]), int(raw["height"]), int(raw["channels"]))
        except (KeyError, TypeError, ValueError):
            return None


def decode_stored(data: bytes, raw: RawLayout | None, *, source: str = "frame") -> np.ndarray:
    """A stored frame's pixels (uint8 or uint16): raw bytes by their recorded layout, anything
    else by its header.

    A recorded layout decides, not the bytes' first values: raw pixels can begin like a JPEG's
    magic number.

    Raises:
        ImageError: raw bytes without a layout, or whose length fits neither 8- nor 16-bit
            samples of it; an encoded frame that does not decode.
    """
    if raw is not None:
        samples = raw.width * raw.height * raw.channels
        if samples <= 0 or len(data) not in (samples, 2 * samples):
            raise ImageError(f"{source}: {len(data)} bytes of raw pixels do not fit their recorded layout "
                             f"{raw.width} x {raw.height} x {raw.channels} at 8 or 16 bits a sample (the frame "
                             "was refused when it arrived, and is kept as it came)")
        return decode_raw(data, width=raw.width, height=raw.height, channels=raw.channels,
                          bits=8 * (len(data) // samples), source=source)
    if media_type(data) == RAW_TYPE:
        raise ImageError(f"{source}: raw pixels whose width, height and channels were not recorded (a record "
                         "written before the log kept them); download the frame as stored and decode it with "
                         "the camera's layout")
    return decode_image(data, source=source)


def browser_image(data: bytes, raw: RawLayout | None, *, levels: tuple[int, int] | None = None,
                  source: str = "frame") -> tuple[bytes, str]:
    """(bytes, media type) of an image a browser shows for a stored frame, same width and height.

    ``levels`` maps a 16-bit frame onto 0..255 (the card's ``input.levels`` of the model that
    decided it); without them the frame's own ``OWN_RANGE_PERCENTILES`` do.

    Raises:
        ImageError: as ``decode_stored``.
    """
    kind = media_type(data)
    if raw is None and kind in BROWSER_TYPES and bit_depth(data[:32]) != 16:
        return data, kind
    image = decode_stored(data, raw, source=source)
    if image.dtype == np.uint16:
        image = map_levels(image, levels or own_range(image))
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover -- OpenCV encodes any 8-bit gray or BGR image
        raise ImageError(f"{source}: could not be encoded as PNG for display")
    return buf.tobytes(), "image/png"


def own_range(image: np.ndarray) -> tuple[int, int]:
    """A 16-bit frame's display range from its own values (never empty)."""
    low, high = (int(v) for v in np.percentile(image, OWN_RANGE_PERCENTILES))
    if high <= low:
        high = min(low + 1, 65535)
        low = high - 1
    return low, high
