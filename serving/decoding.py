"""Frame decoding for the server: the header checked first, small frames inline, large ones in a bounded pool.

Every frame's header is read before anything is decoded (``inspection.preprocess.declared_size``,
a few microseconds): a frame declaring more pixels than its station's ``max_frame_pixels`` is
refused with ``FrameTooLargeError`` (413) and never reaches the decoder.

Then, by the size the header declares:

* under ``decoding.pool_min_pixels`` (default 1 MP, ~2-7 ms to decode): decoded right here on
  the event loop. A thread hop costs more than it saves for a line camera's usual frame, and
  the latency work of docs/serving.md counted every hop;
* at or over it: decoded (and resized to the model's input) in a pool of
  ``decoding.pool_threads`` threads, so the event loop keeps reading and answering other
  cameras' frames meanwhile (OpenCV releases the GIL while it decodes). The frames in the pool
  hold a share of a memory budget (``decoding.memory_bytes``, estimated from the header at
  ``BYTES_PER_PIXEL``); a frame waits for room at most ``decoding.max_wait_s`` and is then
  refused as overload (503 + Retry-After, fail-safe reject). A frame larger than the whole
  budget runs alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from inspection.card import InputSpec
from inspection.errors import FrameTooLargeError, OverloadedError
from inspection.preprocess import declared_size, prepare_frame
from serving.settings import DecodeSettings

log = logging.getLogger(__name__)

#: Memory one 8-bit pixel may take while decoding: BGRA from the decoder, then a converted copy.
BYTES_PER_PIXEL = 8


class FrameDecoder:
    """Decodes frames for one app; ``close`` stops its pool."""

    def __init__(self, settings: DecodeSettings) -> None:
        self._settings = settings
        self._pool: ThreadPoolExecutor | None = None
        self._free = settings.memory_bytes
        self._room: asyncio.Condition | None = None
        self.pooled = 0  # frames decoded in the pool (tests and metrics read it)

    def start(self, body: bytes, spec: InputSpec, *, raw_shape: tuple[int, int, int] | None, source: str,
              max_pixels: int, limit_name: str) -> np.ndarray | Awaitable[np.ndarray]:
        """The model input of a frame: an array when decoded inline, else an awaitable for the pool's result.

        The header (or the raw shape) is checked here, synchronously, before anything is decoded.

        Raises:
            ImageError: the frame is not an image or its header cannot be read (also from the awaitable).
            FrameTooLargeError: it declares more pixels than ``max_pixels``.
            OverloadedError: (from the awaitable) no room in the pool within ``max_wait_s``.
        """
        if raw_shape is not None:
            width, height = raw_shape[0], raw_shape[1]
            if width * height > max_pixels:
                raise FrameTooLargeError(f"{source}: raw frame of {width} x {height} = {width * height:,} pixels is "
                                         f"over the limit of {max_pixels:,} pixels ({limit_name})")
        else:
            width, height = declared_size(body, max_pixels=max_pixels, source=source, limit_name=limit_name)
        pixels = width * height
        if pixels < self._settings.pool_min_pixels:
            return prepare_frame(body, spec, raw_shape=raw_shape, source=source, max_pixels=max_pixels)[1]
        # A model that takes 16-bit frames (its card has pixel levels) gets frames of twice the bytes.
        depth = 2 if spec.levels is not None else 1
        return self._in_pool(body, spec, raw_shape, source, max_pixels, pixels * BYTES_PER_PIXEL * depth)

    async def _in_pool(self, body: bytes, spec: InputSpec, raw_shape: tuple[int, int, int] | None, source: str,
                       max_pixels: int, cost: int) -> np.ndarray:
        cost = min(cost, self._settings.memory_bytes)  # larger than the budget: runs alone
        room = self._condition()
        async with room:
            try:
                await asyncio.wait_for(room.wait_for(lambda: self._free >= cost), self._settings.max_wait_s)
            except TimeoutError:
                raise OverloadedError(
                    f"{source}: no room to decode it within {self._settings.max_wait_s:g} s (frames of "
                    f"{self._settings.memory_bytes - self._free:,} bytes are being decoded, decoding.memory_bytes="
                    f"{self._settings.memory_bytes:,}); retry later", retry_after_s=1.0) from None
            self._free -= cost
        try:
            self.pooled += 1
            loop = asyncio.get_running_loop()
            _, model_input = await loop.run_in_executor(
                self._executor(), lambda: prepare_frame(body, spec, raw_shape=raw_shape, source=source,
                                                        max_pixels=max_pixels))
            return model_input
        finally:
            async with room:
                self._free += cost
                room.notify_all()

    def _condition(self) -> asyncio.Condition:
        if self._room is None:
            self._room = asyncio.Condition()
        return self._room

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._settings.pool_threads, thread_name_prefix="decode")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
