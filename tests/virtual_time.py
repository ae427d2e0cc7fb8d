"""Virtual time for the running event loop, so timing tests are exact and instant.

Inside ``virtual_time()``, ``loop.time()`` is a virtual clock and a loop with
nothing ready jumps straight to its next timer instead of waiting for it. The
server times everything on ``loop.time()``, so over in-process ASGI every
sleep, step and latency is what the model says, to the float, on any machine.
Only in-process work may run inside: real sockets or threads would see time
jump.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def virtual_time() -> Iterator[None]:
    loop = asyncio.get_running_loop()
    # The selector is a private attribute of CPython's selector event loop (the
    # one pytest-asyncio runs); it is the only place where the loop waits.
    selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
    real_select = selector.select
    now = loop.time()

    def time() -> float:
        return now

    def select(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        nonlocal now
        events = real_select(None if timeout is None else 0)
        if not events and timeout:
            now += timeout
        return events

    patched: Any = loop
    patched.time = time
    selector.select = select  # type: ignore[method-assign]
    try:
        yield
    finally:
        del patched.time
        selector.select = real_select  # type: ignore[method-assign]
