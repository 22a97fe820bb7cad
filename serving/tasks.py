"""Background work that lives as long as the server: started in a lifespan hook, cancelled and
awaited when the server stops (so no task outlives the app or logs a 'never retrieved' error);
and callbacks other threads (the Modbus server's) may call into the serving loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``work`` as a task named ``name`` for the duration of the ``async with`` block."""
    task = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def on_this_loop(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` made callable from any thread: run at once on the running loop's own thread, handed
    to the loop (``call_soon_threadsafe``) from any other; dropped once the loop has closed.
    Call it from the loop whose thread ``fn`` must run on."""
    loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()

    def call(*args: Any) -> None:
        if threading.get_ident() == loop_thread:
            fn(*args)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: nobody left to run it
            loop.call_soon_threadsafe(fn, *args)

    return call
