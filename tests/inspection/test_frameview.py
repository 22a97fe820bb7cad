"""A stored frame read back: raw pixels by their recorded layout, and as an image a browser shows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspection.errors import ImageError
from inspection.frameview import RawLayout, browser_image, decode_stored, own_range
from inspection.preprocess import decode_image


def _encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _gradient(height: int = 30, width: int = 40, *, top: int = 255, dtype: type = np.uint8) -> np.ndarray:
    return np.linspace(0, top, height * width).reshape(height, width).round().astype(dtype)


def test_the_layout_is_read_from_a_records_data_and_nothing_else_passes_for_one() -> None:
    assert RawLayout.of_record({"raw": {"width": 40, "height": 30, "channels": 3}}) == RawLayout(40, 30, 3)
    assert RawLayout(40, 30, 1).as_dict() == {"width": 40, "height": 30, "channels": 1}
    for data in (None, {}, {"raw": None}, {"raw": {"width": 40}}, {"raw": {"width": "x", "height": 1, "channels": 1}}):
        assert RawLayout.of_record(data) is None, data


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_raw_pixels_decode_by_their_layout_at_the_depth_their_length_says(channels: int, dtype: type) -> None:
    image = _gradient(top=255 if dtype is np.uint8 else 4095, dtype=dtype)
    if channels == 3:
        image = np.dstack([image, image // 2, image // 3])
    data = image.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    back = decode_stored(data, RawLayout(40, 30, channels))
    assert back.dtype == dtype and np.array_equal(back, image)


def test_raw_pixels_that_begin_like_a_jpeg_are_still_raw_pixels() -> None:
    image = _gradient()
    image[0, :4] = [0xFF, 0xD8, 0xFF, 0xE0]  # a JPEG's magic number, as pixel values
    back = decode_stored(image.tobytes(), RawLayout(40, 30, 1))
    assert np.array_equal(back, image)


def test_raw_pixels_without_a_layout_or_not_fitting_it_are_refused_with_the_reason() -> None:
    data = _gradient().tobytes()
    with pytest.raises(ImageError, match="width, height and channels were not recorded"):
        decode_stored(data, None, source="frame X")
    with pytest.raises(ImageError, match=r"frame X: 1200 bytes of raw pixels do not fit their recorded layout "
                                         r"40 x 20 x 1 at 8 or 16 bits"):
        decode_stored(data, RawLayout(40, 20, 1), source="frame X")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_an_eight_bit_png_jpeg_or_bmp_is_shown_byte_for_byte(ext: str) -> None:
    data = _encode(_gradient(), ext)
    body, kind = browser_image(data, None)
    assert body == data and kind == {".png": "image/png", ".jpg": "image/jpeg", ".bmp": "image/bmp"}[ext]


def test_tiff_and_raw_frames_are_shown_as_a_png_of_the_same_pixels() -> None:
    image = np.dstack([_gradient(), _gradient()[::-1], np.full((30, 40), 7, np.uint8)])
    for data, raw in ((_encode(image, ".tif"), None), (image.tobytes(), RawLayout(40, 30, 3))):
        body, kind = browser_image(data, raw)
        assert kind == "image/png" and body.startswith(b"\x89PNG")
        assert np.array_equal(decode_image(body), image)


def test_a_sixteen_bit_frame_is_shown_through_the_models_levels_or_else_its_own_range() -> None:
    twelve = _gradient(top=4095, dtype=np.uint16)
    for data, raw in ((_encode(twelve, ".png"), None), (_encode(twelve, ".tif"), None),
                      (twelve.astype("<u2").tobytes(), RawLayout(40, 30, 1))):
        shown, kind = browser_image(data, raw, levels=(0, 4095))
        view = decode_image(shown)
        assert kind == "image/png" and view.dtype == np.uint8 and view.shape == twelve.shape
        assert np.array_equal(view, np.rint(twelve * (255 / 4095)).astype(np.uint8))
        # no levels known: the frame's own range (not its top 8 bits, which would be nearly black)
        own = decode_image(browser_image(data, raw)[0])
        assert own.max() == 255 and own.min() == 0
    # a constant frame still has a range to show
    flat = np.full((5, 5), 1000, np.uint16)
    low, high = own_range(flat)
    assert low < high and low <= 1000 <= high
    assert decode_image(browser_image(_encode(flat, ".png"), None)[0]).shape == (5, 5)


def test_a_frame_that_does_not_decode_is_refused_not_shown_as_something_else() -> None:
    tiff = _encode(_gradient(), ".tif")
    with pytest.raises(ImageError):
        browser_image(tiff[: len(tiff) // 3], None)
