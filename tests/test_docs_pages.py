"""/docs and /redoc load every script and stylesheet from the server itself (no CDN)."""

from __future__ import annotations

import re

import httpx
import pytest

from streamapi.settings import Settings

# src= and href= of the page's tags: everything the browser fetches to draw it.
_REFERENCES = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@pytest.mark.parametrize("settings", [Settings(api_keys=["sk-test"])])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_fetch_only_local_files_open_without_a_key(
    client: httpx.AsyncClient, page: str
) -> None:
    html = (await client.get(page)).text
    references = _REFERENCES.findall(html)
    assert references, html
    for reference in references:
        assert reference.startswith("/"), f"{page} fetches {reference} from elsewhere"
        asset = await client.get(reference)
        assert asset.status_code == 200, reference
        # The file itself (fastapi-offline 1.7.0's favicon is 412 bytes), not a page about it.
        assert len(asset.content) > 100 and not asset.content.lstrip().startswith(b"<"), reference
    assert "https://" not in html and "http://" not in html
