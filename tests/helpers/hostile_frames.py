"""Hostile and unusual frames: decompression bombs, lying headers, odd but valid encodings.

Used by the frame fuzz suite (tests/serving/test_frame_fuzz.py) and bench/hostile.py. Bombs and
hand-made TIFFs are built here from bytes (no Pillow needed); the encodings only Pillow writes
(CMYK and progressive JPEG, palette PNG, multi-page TIFF) are in the committed corpus
(tests/data/frame_corpus/), which ``write_corpus`` regenerates where Pillow is installed:

    .venv/bin/python -m tests.helpers.hostile_frames tests/data/frame_corpus

A corpus file's name says what the server must answer: ``bomb-*`` 413, ``bad-*`` a 4xx, ``ok-*``
200 (a valid image), ``odd-*`` (valid, but some decoders refuse it) 200 or a 4xx,
``found-*`` (a case the fuzzer found) anything but a 5xx.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

#: The largest side PNG, JPEG (16-bit fields) and the bench's TIFF bombs declare.
MAX_SIDE = 65_535


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, *, bit_depth: int = 8, colour: int = 0, rows: int = 64) -> bytes:
    """A well-formed PNG (valid CRCs, IEND) that declares ``width`` x ``height`` and carries only
    ``rows`` rows of zeros, deflated: a few hundred bytes whatever it declares."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    row = b"\x00" + bytes(max(1, min(width, 1 << 20)) * max(1, bit_depth // 8))
    idat = zlib.compress(row * max(0, rows), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF marker is rewritten to declare ``width`` x ``height``."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16), 128, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int, *, pixels: bytes | None = None) -> bytes:
    """An 8-bit gray BMP whose header declares ``width`` x ``height`` (negative height: top-down),
    with ``pixels`` (default: none at all) after a gray palette."""
    pixels = b"" if pixels is None else pixels
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def tiff(pixels: np.ndarray, *, declared: tuple[int, int] | None = None, tile: int = 0) -> bytes:
    """An uncompressed 8-bit gray little-endian TIFF of ``pixels`` (HxW), stripped or, with
    ``tile``, tiled (the image padded to whole tiles, as the format wants); ``declared`` makes its
    header lie about the size."""
    height, width = pixels.shape
    w, h = declared or (width, height)
    if tile:
        ty, tx = -(-height // tile), -(-width // tile)
        padded = np.zeros((ty * tile, tx * tile), np.uint8)
        padded[:height, :width] = pixels
        blocks = [padded[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile].tobytes()
                  for r in range(ty) for c in range(tx)]
    else:
        blocks = [np.ascontiguousarray(pixels).tobytes()]
    data_at = 8
    body = b"".join(blocks)
    offsets = [data_at + sum(len(b) for b in blocks[:k]) for k in range(len(blocks))]
    arrays_at = data_at + len(body)
    arrays = struct.pack(f"<{len(blocks)}I", *offsets) + struct.pack(f"<{len(blocks)}I", *map(len, blocks))
    ifd_at = arrays_at + len(arrays)

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        if kind == 3 and count == 1:
            return struct.pack("<HHIHH", tag, kind, count, value, 0)
        return struct.pack("<HHII", tag, kind, count, value)

    n = len(blocks)
    offset_value = offsets[0] if n == 1 else arrays_at
    count_value = len(blocks[0]) if n == 1 else arrays_at + 4 * n
    entries = [entry(256, 4, 1, w), entry(257, 4, 1, h), entry(258, 3, 1, 8), entry(259, 3, 1, 1),
               entry(262, 3, 1, 1)]
    if tile:
        entries += [entry(277, 3, 1, 1), entry(322, 3, 1, tile), entry(323, 3, 1, tile),
                    entry(324, 4, n, offset_value), entry(325, 4, n, count_value)]
    else:
        entries += [entry(273, 4, 1, offset_value), entry(277, 3, 1, 1), entry(278, 4, 1, height),
                    entry(279, 4, 1, count_value)]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_at) + body + arrays + ifd


def bomb_set(side: int = MAX_SIDE) -> dict[str, bytes]:
    """The decompression bombs of issue #20: PNG, JPEG, TIFF (and BMP) declaring ``side`` x ``side``."""
    return {
        "png": png_declaring(side, side),
        "jpeg": jpeg_declaring(side, side),
        "tiff": tiff(np.zeros((8, 8), np.uint8), declared=(side, side)),
        "bmp": bmp_declaring(side, -side),
    }


def _gray(size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size), dtype=np.uint8)


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def built_cases() -> dict[str, bytes]:
    """The corpus cases made from bytes, numpy and OpenCV alone (file name -> content)."""
    gray = _gray()
    colour = np.dstack([gray, gray[::-1], gray.T])
    png, jpg = _encode(".png", gray), _encode(".jpg", colour)
    tif = tiff(gray)
    cases = {
        # Lying headers: tiny files declaring huge images.
        "bomb-png-65535.png": png_declaring(MAX_SIDE, MAX_SIDE),
        "bomb-png-20000.png": png_declaring(20_000, 20_000),
        "bomb-png-wide.png": png_declaring(2**31 - 1, 1),
        "bomb-jpeg-65535.jpg": jpeg_declaring(MAX_SIDE, MAX_SIDE),
        "bomb-tiff-65535.tif": tiff(gray, declared=(MAX_SIDE, MAX_SIDE)),
        "bomb-tiff-tiled-65535.tif": tiff(gray, declared=(MAX_SIDE, MAX_SIDE), tile=16),
        "bomb-bmp-negative-height.bmp": bmp_declaring(MAX_SIDE, -MAX_SIDE),
        # Zero-size images.
        "bad-png-0x0.png": png_declaring(0, 0, rows=0),
        "bad-png-0-wide.png": png_declaring(0, 32),
        "bad-jpeg-0-high.jpg": jpeg_declaring(16, 0),
        "bad-bmp-0x0.bmp": bmp_declaring(0, 0),
        "bad-tiff-0x0.tif": tiff(gray, declared=(0, 0)),
        # Truncated files and corrupt chunks.
        "bad-png-truncated-in-ihdr.png": png[:20],
        "bad-png-truncated-in-idat.png": png[: len(png) // 2],
        "bad-png-idat-corrupt.png": png[:41] + bytes(b ^ 0xA5 for b in png[41:-12]) + png[-12:],
        "bad-png-ihdr-crc.png": png[:29] + b"\x00\x00\x00\x00" + png[33:],
        "bad-jpeg-truncated.jpg": jpg[: len(jpg) // 2],
        "bad-jpeg-only-soi.jpg": b"\xff\xd8\xff",
        "bad-jpeg-no-sof.jpg": b"\xff\xd8" + b"\xff\xfe\x00\x04ab" * 8 + b"\xff\xd9",
        "bad-bmp-no-pixels.bmp": bmp_declaring(32, 32),
        "bad-tiff-truncated.tif": tif[: len(tif) // 3],
        "bad-tiff-ifd-outside.tif": b"II*\x00" + struct.pack("<I", 1 << 30) + bytes(64),
        "bad-png-16-bit.png": _encode(".png", (gray.astype(np.uint16) * 257)),
        "bad-magic-only.png": b"\x89PNG\r\n\x1a\n",
        "bad-empty.bin": b"",
        "bad-random.bin": np.random.default_rng(7).integers(0, 256, 1024, dtype=np.uint8).tobytes(),
        # Valid, if unusual.
        "ok-bmp-top-down.bmp": bmp_declaring(32, -32, pixels=gray.tobytes()),
        # OpenCV's TIFF reader refuses some valid tiled files (its RGBA tile path): 200 or a 4xx.
        "odd-tiff-tiled.tif": tiff(gray, tile=16),
        "ok-tiff-stripped.tif": tif,
        "ok-png-colour.png": _encode(".png", colour),
        "ok-jpeg-colour.jpg": jpg,
    }
    return cases


def pillow_cases() -> dict[str, bytes]:
    """Encodings only Pillow writes here: palette PNG, CMYK and progressive JPEG, multi-page TIFF."""
    from PIL import Image

    gray = _gray()
    colour = Image.fromarray(np.dstack([gray, gray[::-1], gray.T]), "RGB")

    def save(image: Image.Image, fmt: str, **kw: object) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt, **kw)
        return out.getvalue()

    big = Image.fromarray(np.zeros((96, 96), np.uint8), "L")
    return {
        "ok-png-palette.png": save(colour.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "ok-png-gray-alpha.png": save(colour.convert("LA"), "PNG"),
        "ok-jpeg-cmyk.jpg": save(colour.convert("CMYK"), "JPEG"),
        "ok-jpeg-progressive.jpg": save(colour, "JPEG", progressive=True, quality=80),
        "ok-tiff-multipage.tif": save(colour, "TIFF", save_all=True, append_images=[colour.rotate(90)]),
        "ok-tiff-multipage-larger-second.tif": save(Image.fromarray(gray, "L"), "TIFF", save_all=True,
                                                    append_images=[big]),
        "ok-tiff-deflate.tif": save(colour, "TIFF", compression="tiff_adobe_deflate"),
    }


def write_corpus(folder: Path) -> list[Path]:
    """(Re)write the built and Pillow cases into ``folder`` (``found-*`` files are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in {**built_cases(), **pillow_cases()}.items():
        path = folder / name
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/frame_corpus")):
        print(f"{p.stat().st_size:>7} {p}")
