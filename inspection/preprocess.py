"""Frame decoding and preprocessing, in numpy/OpenCV only.

This is the single implementation of "camera frame -> model input". Serving calls it for
every frame and training calls it for every image it evaluates (and before augmenting), so
the two can never drift apart. The steps follow the model card's ``InputSpec``:

1. decode (PNG/JPEG/BMP/TIFF bytes, 8- or 16-bit, or raw 8-bit pixels with declared
   width/height/channels),
   after reading the size the header declares and refusing anything over the pixel limit
   (``FrameTooLargeError``) or with a header that cannot be read: a small file that declares a
   huge image is never handed to the decoder (a 380 KB PNG can declare 20,000 x 20,000 pixels),
2. convert colour to the card's channel count (BGR->GRAY luma weights, or gray replicated),
3. crop the card's region of interest, if it has one,
4. resize to (width, height) with the card's OpenCV interpolation, stretched or letterboxed
   (aspect ratio kept, border mirrored into the padding) as the card's geometry says,
5. a 16-bit frame's card ``levels`` mapped onto 0..255 (after the resize, so the averaging of
   an area resize keeps the camera's precision); a frame of the other depth is refused,
6. lay out as ``uint8[C, H, W]``. Normalisation (and the tile grid, if any) is inside the graph.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from inspection.card import InputSpec
from inspection.errors import FrameTooLargeError, ImageError
from inspection.imageheader import MAX_FRAME_PIXELS, header_size

_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}

#: Content types accepted for encoded frames; anything OpenCV's imdecode reads.
ENCODED_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff")
RAW_TYPE = "application/octet-stream"
MAX_SIDE = 16384

# Magic numbers of the formats we accept, so a truncated or foreign body is named precisely.
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}


def _sniff(data: bytes) -> str | None:
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def media_type(data: bytes) -> str:
    """The MIME type of encoded image bytes from their magic number (``application/octet-stream``
    when they are none of PNG, JPEG, BMP, TIFF, e.g. raw pixels)."""
    kind = _sniff(data)
    return f"image/{kind}" if kind else RAW_TYPE


def _is_truncated(data: bytes, kind: str) -> bool:
    # OpenCV happily decodes a truncated JPEG/PNG into a partly grey image (libjpeg only
    # warns), which would let a broken transfer be scored as a real part. Check the trailers.
    if kind == "png":
        return not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    if kind == "jpeg":
        return b"\xff\xd9" not in data[-64:]
    return False


def declared_size(data: bytes, *, max_pixels: int = MAX_FRAME_PIXELS, source: str = "frame",
                  limit_name: str = "max_frame_pixels") -> tuple[int, int]:
    """(width, height) an encoded image's header declares, checked before anything is decoded.

    A few microseconds: only the header is parsed (``inspection.imageheader``).

    Raises:
        ImageError: empty, not a PNG/JPEG/BMP/TIFF, a header whose size cannot be read, a zero
            dimension, or a truncated file.
        FrameTooLargeError: the declared width x height is over ``max_pixels`` (or 64 MP).
    """
    if not data:
        raise ImageError(f"{source}: empty image (0 bytes); send a PNG, JPEG, BMP or TIFF")
    kind = _sniff(data)
    if kind is None:
        raise ImageError(f"{source}: not a PNG, JPEG, BMP or TIFF image (first bytes {data[:8]!r})")
    size = header_size(data)
    if size is None:
        raise ImageError(f"{source}: {kind.upper()} header does not declare a readable width and height "
                         f"({len(data)} bytes); refused without decoding")
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{source}: {kind.upper()} header declares {width} x {height} pixels; "
                         "an image needs at least 1 x 1")
    limit = min(max_pixels, MAX_FRAME_PIXELS)
    if width * height > limit:
        raise FrameTooLargeError(
            f"{source}: {kind.upper()} header declares {width} x {height} = {width * height:,} pixels, over the "
            f"limit of {limit:,} pixels ({limit_name}); refused without decoding")
    if _is_truncated(data, kind):
        raise ImageError(f"{source}: truncated {kind.upper()} image ({len(data)} bytes, end marker missing)")
    return width, height


def decode_image(data: bytes, *, source: str = "frame", max_pixels: int = MAX_FRAME_PIXELS,
                 limit_name: str = "max_frame_pixels") -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, BMP, TIFF) to HxW or HxWx3 (BGR), ``uint8`` or, for
    16-bit PNG and TIFF (line cameras' Mono10..16), ``uint16``.

    The header's size is checked first (``declared_size``), and the decoded image must have it.

    Raises:
        ImageError: empty, truncated, not an image, an unreadable header, or neither 8- nor 16-bit
            unsigned integers (float or 32-bit TIFF).
        FrameTooLargeError: the header declares more than ``max_pixels`` (never more than 64 MP).
    """
    width, height = declared_size(data, max_pixels=max_pixels, source=source, limit_name=limit_name)
    kind = _sniff(data) or "image"
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError(f"{source}: {kind.upper()} data could not be decoded ({len(data)} bytes)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{source}: {image.dtype} pixels; only 8- and 16-bit unsigned images are accepted")
    if image.shape[:2] not in ((height, width), (width, height)):  # (EXIF orientation may turn it)
        # The header read above is what the limit judged; a decoder that found another size
        # (a second, larger frame in the file) must not slip past it.
        raise ImageError(f"{source}: {kind.upper()} decoded to {image.shape[1]} x {image.shape[0]} pixels, its "
                         f"header declares {width} x {height}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3 and _is_gray(image):
        image = np.ascontiguousarray(image[:, :, 0])
    return image


def _is_gray(image: np.ndarray) -> bool:
    # Many line cameras store grayscale as R=G=B JPEGs (NEU-DET does): keep them 1-channel
    # so the conversion below is the identity rather than a luma re-weighting.
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2]))


def decode_raw(data: bytes, *, width: int, height: int, channels: int, bits: int = 8, source: str = "frame",
               max_pixels: int = MAX_FRAME_PIXELS, limit_name: str = "max_frame_pixels") -> np.ndarray:
    """Interpret raw pixels (row-major, channels last, BGR when 3) as an image: ``bits`` 8, or 16
    (two bytes a sample, little-endian, as GenICam's Mono16 on a line PC).

    Raises:
        ImageError: dimensions out of range, or the byte count differs from
            width * height * channels * bytes per sample.
        FrameTooLargeError: width x height over ``max_pixels``.
    """
    if channels not in (1, 3):
        raise ImageError(f"{source}: channels={channels} is not allowed; raw frames have 1 or 3 channels")
    for name, value in (("width", width), ("height", height)):
        if not 0 < value <= MAX_SIDE:
            raise ImageError(f"{source}: {name}={value} is out of range 1..{MAX_SIDE}")
    limit = min(max_pixels, MAX_FRAME_PIXELS)
    if width * height > limit:
        raise FrameTooLargeError(f"{source}: raw frame of {width} x {height} = {width * height:,} pixels is over the "
                                 f"limit of {limit:,} pixels ({limit_name})")
    if bits not in (8, 16):
        raise ImageError(f"{source}: bits={bits} is not allowed; raw frames have 8 or 16 bits a sample")
    per_sample = bits // 8
    expected = width * height * channels * per_sample
    if len(data) != expected:
        deep = " x 2 bytes (the model takes 16-bit frames)" if per_sample == 2 else ""
        raise ImageError(
            f"{source}: raw frame has {len(data)} bytes, but width={width} x height={height} x "
            f"channels={channels}{deep} needs {expected}"
        )
    # 16-bit samples arrive little-endian; the array is the host's uint16 (a copy only on a
    # big-endian host).
    image = np.frombuffer(data, np.uint8) if per_sample == 1 else np.frombuffer(data, "<u2").astype(np.uint16,
                                                                                                      copy=False)
    shape = (height, width) if channels == 1 else (height, width, 3)
    return image.reshape(shape)


def read_image(path: Path, *, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """Read and decode an image file (same checks as a frame sent over the API).

    Raises:
        ImageError: unreadable, truncated or not an image; the message names the file.
        FrameTooLargeError: its header declares more than ``max_pixels``.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_image(data, source=str(path), max_pixels=max_pixels)


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert a decoded image (HxW or HxWx3 BGR) to ``channels`` (1: HxW, 3: HxWx3 RGB)."""
    if channels == 1:
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def crop_roi(image: np.ndarray, spec: InputSpec, *, source: str = "frame") -> np.ndarray:
    """The card's region of interest of a decoded frame (the frame itself when none is set).

    Raises:
        ImageError: the frame (``source`` named) is smaller than the region (wrong camera or settings).
    """
    if spec.roi is None:
        return image
    x, y, w, h = spec.roi
    if image.shape[0] < y + h or image.shape[1] < x + w:
        raise ImageError(
            f"{source} ({image.shape[1]}x{image.shape[0]} px) does not contain the model's region of interest "
            f"x={x} y={y} width={w} height={h}"
        )
    return image[y : y + h, x : x + w]


def letterbox_size(height: int, width: int, spec: InputSpec) -> tuple[int, int]:
    """(height, width) a ``height`` x ``width`` frame is scaled to before padding: one factor for
    both axes, the largest that fits the card's input."""
    scale = min(spec.height / height, spec.width / width)
    return min(spec.height, max(1, round(height * scale))), min(spec.width, max(1, round(width * scale)))


def resize(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Bring a frame to the card's (width, height) with the card's interpolation and geometry;
    a no-op at size."""
    if image.shape[0] == spec.height and image.shape[1] == spec.width:
        return image
    interpolation = _INTERPOLATION[spec.resize]
    if spec.geometry == "stretch":
        return cv2.resize(image, (spec.width, spec.height), interpolation=interpolation)
    h, w = letterbox_size(image.shape[0], image.shape[1], spec)
    scaled = image if (h, w) == image.shape[:2] else cv2.resize(image, (w, h), interpolation=interpolation)
    top, left = (spec.height - h) // 2, (spec.width - w) // 2
    # Mirror the frame's own border into the padding: a constant fill would draw a sharp
    # edge that the network could take for a defect (or for "a frame of another shape").
    border = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(scaled, top, spec.height - h - top, left, spec.width - w - left, border)


def tile_boxes(spec: InputSpec) -> list[tuple[int, int, int, int]]:
    """The card's tile grid as (x, y, width, height) boxes in model-input pixels, row by row:
    ``rows`` x ``cols`` tiles spread evenly from edge to edge (the graph cuts these very boxes).
    One box covering the whole input when the card has no tiles."""
    if spec.tiles is None:
        return [(0, 0, spec.width, spec.height)]
    t = spec.tiles

    def starts(count: int, tile: int, total: int) -> list[int]:
        return [0] if count == 1 else [round(i * (total - tile) / (count - 1)) for i in range(count)]

    return [
        (x, y, t.tile_width, t.tile_height)
        for y in starts(t.rows, t.tile_height, spec.height)
        for x in starts(t.cols, t.tile_width, spec.width)
    ]


@functools.lru_cache(maxsize=8)
def _levels_table(low: int, high: int) -> np.ndarray:
    # One entry per 16-bit value: a lookup is a few ms on a large frame, and exact everywhere.
    values = np.arange(65536, dtype=np.float64)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def check_depth(image: np.ndarray, spec: InputSpec, *, source: str = "frame") -> None:
    """Refuse a frame whose pixel depth is not the model's (8-bit, or 16-bit with ``levels``).

    Raises:
        ImageError: naming both depths.
    """
    if image.dtype == np.uint16 and spec.levels is None:
        raise ImageError(f"{source}: 16-bit frame, but the model takes 8-bit frames (its card has no pixel "
                         "levels): send 8-bit frames (the camera's Mono8 format), or train on 16-bit frames")
    if image.dtype == np.uint8 and spec.levels is not None:
        raise ImageError(f"{source}: 8-bit frame, but the model takes 16-bit frames (pixel levels "
                         f"{spec.levels[0]}..{spec.levels[1]}): send the camera's 16-bit frames")


def map_levels(image: np.ndarray, levels: tuple[int, int]) -> np.ndarray:
    """A 16-bit image's values ``levels`` (low, high) mapped linearly onto 0..255, clipped."""
    return _levels_table(*levels)[image]


def to_eight_bit(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A 16-bit image with the card's ``levels`` mapped onto 0..255 (an 8-bit image unchanged)."""
    if image.dtype != np.uint16 or spec.levels is None:
        return image
    return map_levels(image, spec.levels)


def to_model_input(image: np.ndarray, spec: InputSpec, *, source: str = "frame") -> np.ndarray:
    """Decoded image -> ``uint8[C, H, W]`` as the card's graph expects (no batch axis).

    Raises:
        ImageError: the frame does not contain the card's region of interest, or its pixel depth
            is not the model's.
    """
    check_depth(image, spec, source=source)
    converted = to_eight_bit(resize(convert_channels(crop_roi(image, spec, source=source), spec.channels), spec), spec)
    if converted.ndim == 2:
        return np.ascontiguousarray(converted[np.newaxis, :, :])
    return np.ascontiguousarray(converted.transpose(2, 0, 1))


def prepare_frame(
    data: bytes,
    spec: InputSpec,
    *,
    content_type: str | None = None,
    raw_shape: tuple[int, int, int] | None = None,
    source: str = "frame",
    max_pixels: int = MAX_FRAME_PIXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes as sent by a camera -> (decoded image, model input ``uint8[C, H, W]``).

    ``raw_shape`` is (width, height, channels) for ``application/octet-stream`` bodies.

    Raises:
        ImageError: the frame cannot be decoded or its declared dimensions are wrong.
        FrameTooLargeError: it declares more than ``max_pixels``.
    """
    if raw_shape is not None:
        width, height, channels = raw_shape
        # Raw pixels carry no header: their depth is the model's (16-bit where its card has levels).
        image = decode_raw(data, width=width, height=height, channels=channels,
                           bits=16 if spec.levels is not None else 8, source=source, max_pixels=max_pixels)
    else:
        image = decode_image(data, source=source, max_pixels=max_pixels)
    return image, to_model_input(image, spec, source=source)
