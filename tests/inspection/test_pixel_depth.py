"""16-bit frames (line cameras' Mono10..16 formats): decoded as they are, mapped onto the graph's
8-bit input through the card's levels by the one preprocessing function, refused where the model
takes the other depth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from inspection.card import InputSpec
from inspection.errors import ImageError
from inspection.preprocess import decode_image, prepare_frame, to_model_input


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("shape", [(24, 40), (24, 40, 3)])
def test_sixteen_bit_png_and_tiff_decode_to_their_own_values(ext: str, shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(1).integers(0, 65536, shape, dtype=np.uint16)
    image = decode_image(_encode(ext, values))
    assert image.dtype == np.uint16 and np.array_equal(image, values)


def test_levels_map_linearly_onto_0_255_and_clip_outside() -> None:
    spec = InputSpec(height=2, width=4, levels=(1000, 2020))
    frame = np.array([[0, 999, 1000, 1002], [1510, 2020, 2021, 65535]], np.uint16)
    got = to_model_input(frame, spec)[0]
    assert got.dtype == np.uint8
    # (v - 1000) * 255 / 1020, rounded; below the window 0, above it 255.
    assert got.tolist() == [[0, 0, 0, 0], [128, 255, 255, 255]]


def test_a_frame_scaled_to_16_bits_gives_the_8_bit_frames_model_input() -> None:
    eight = np.random.default_rng(2).integers(0, 256, (48, 64), dtype=np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # 0..255 -> 0..65535 exactly
    same_size = InputSpec(height=48, width=64)
    assert np.array_equal(to_model_input(sixteen, same_size.model_copy(update={"levels": (0, 65535)})),
                          to_model_input(eight, same_size))
    # Resized in 16 bits and then mapped: the area average keeps the camera's precision, so the
    # result may differ from averaging already rounded 8-bit values by one grey level, not more.
    small = InputSpec(height=20, width=30, geometry="letterbox")
    a = to_model_input(sixteen, small.model_copy(update={"levels": (0, 65535)})).astype(int)
    b = to_model_input(eight, small).astype(int)
    assert np.max(np.abs(a - b)) <= 1


def test_a_frame_of_the_other_depth_is_refused_naming_both() -> None:
    eight = np.full((8, 8), 100, np.uint8)
    with pytest.raises(ImageError, match="16-bit frame, but the model takes 8-bit frames"):
        to_model_input(eight.astype(np.uint16) * 16, InputSpec(height=8, width=8))
    with pytest.raises(ImageError, match=r"cam-3: 8-bit frame, but the model takes 16-bit frames \(pixel levels 0"):
        prepare_frame(_encode(".png", eight), InputSpec(height=8, width=8, levels=(0, 4095)), source="cam-3")


@pytest.mark.parametrize("levels", [(5, 5), (10, 3), (-1, 100), (0, 70000)])
def test_levels_outside_16_bits_or_empty_are_refused(levels: tuple[int, int]) -> None:
    with pytest.raises(ValidationError, match="levels"):
        InputSpec(height=8, width=8, levels=levels)


def test_float_tiff_is_refused_with_its_type() -> None:
    with pytest.raises(ImageError, match="float32 pixels; only 8- and 16-bit unsigned images"):
        decode_image(_encode(".tif", np.zeros((8, 8), np.float32)))


def test_the_header_tells_the_depth_of_png_jpeg_and_bmp_and_leaves_tiff_to_the_decoder(tmp_path) -> None:
    from inspection.imageheader import bit_depth, file_head

    gray = np.full((8, 8), 100, np.uint8)
    cases = {"a.png": (gray, 8), "b.png": (gray.astype(np.uint16) * 16, 16), "c.jpg": (gray, 8), "d.bmp": (gray, 8),
             "e.tif": (gray.astype(np.uint16), None)}
    for name, (image, depth) in cases.items():
        (tmp_path / name).write_bytes(_encode("." + name.split(".")[1], image))
        assert bit_depth(file_head(tmp_path / name)) == depth, name


def test_raw_sixteen_bit_samples_are_little_endian_and_other_depths_refused() -> None:
    from inspection.preprocess import decode_raw

    values = np.array([[1, 256, 4095], [65535, 0, 513]], np.uint16)
    got = decode_raw(values.astype("<u2").tobytes(), width=3, height=2, channels=1, bits=16)
    assert got.dtype == np.uint16 and np.array_equal(got, values)
    with pytest.raises(ImageError, match="bits=12 is not allowed"):
        decode_raw(bytes(12), width=3, height=2, channels=1, bits=12)
