"""Image dimensions read from the file header, without decoding the pixels.

Training reads the size of every image before it decides the model's input size (decoding a
dataset twice would double its loading time), and a size check before decoding is what keeps a
small file that declares a huge image from being decoded at all. PNG (IHDR), JPEG (the first
SOFn marker), BMP (BITMAPINFOHEADER and later) and TIFF (the first IFD) are read; anything
else answers None and the caller decodes.
"""

from __future__ import annotations

import struct
from pathlib import Path

#: The most pixels any decode accepts (64 MP): every path that decodes an image (serving, dataset
#: import and build, labelling uploads, training) refuses more, whatever its own limit says.
MAX_FRAME_PIXELS = 64_000_000

#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by an encoded image's header, or None when unknown or unreadable."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data.startswith(b"BM") and len(data) >= 26:
            (header_len,) = struct.unpack("<I", data[14:18])
            if header_len == 12:  # OS/2 BITMAPCOREHEADER
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return abs(int(w)), abs(int(h))  # negative height: a top-down bitmap
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except struct.error:
        return None
    return None


def file_head(path: Path, *, head: int = 1 << 16) -> bytes:
    """A file's first ``head`` bytes, enough for ``header_size`` and ``bit_depth`` (the whole file
    for TIFF, whose directory may sit anywhere)."""
    with open(path, "rb") as fh:
        data = fh.read(head)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            data += fh.read()
    return data


def bit_depth(head: bytes) -> int | None:
    """8 or 16: the bits per sample an encoded image's first bytes declare where its format tells
    (JPEG and BMP: 8 as decoded here; PNG: its IHDR bit depth, 16 or at most 8); None for TIFF and
    anything else (decode to know)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) > 24:
        return 16 if head[24] == 16 else 8
    if head.startswith((b"\xff\xd8", b"BM")):
        return 8
    return None


#: Segments read before giving up on finding a JPEG's SOF. A real file has a dozen or so (APPn,
#: DQT, DHT); the bound keeps a body of fill bytes or empty markers from costing the caller
#: (an event loop, for a served frame) more than a millisecond.
MAX_JPEG_SEGMENTS = 2048


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if i + 9 >= len(data):
            return None
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None  # no SOF among the first MAX_JPEG_SEGMENTS segments


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[offset : offset + 2])
    size: dict[int, int] = {}
    for k in range(count):
        entry = data[offset + 2 + 12 * k : offset + 14 + 12 * k]
        tag, kind = struct.unpack(endian + "HH", entry[:4])
        if tag > 257 or len(size) == 2:
            break  # entries are sorted by tag: the size comes first (keeps a 65,535-entry IFD cheap)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            value = struct.unpack(endian + ("H" if kind == 3 else "I"), entry[8 : 10 if kind == 3 else 12])[0]
            size[tag] = int(value)
    return (size[256], size[257]) if 256 in size and 257 in size else None
