"""Small asyncio helpers the serving path shares."""

from __future__ import annotations

from typing import Any


async def aclose_iterator(iterator: Any) -> None:
    """Close ``iterator`` if it can be closed (an async generator, an engine stream).

    Engine streams and frame iterators need not be async generators: whatever has
    an ``aclose`` is closed, the rest is left alone.
    """
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
