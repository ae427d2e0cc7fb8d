"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright.

Every page is opened with the network cut off: the browser context aborts any
request that is not for the server on 127.0.0.1 and the test fails if one was
attempted, so a page that reaches for a CDN fails here as it would offline.
``UPDATE_SCREENSHOTS=1`` also writes each page's screenshot to ``docs/images/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_KEY = "admin-test-key"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        yield chromium
        chromium.close()


class Offline:
    """A browser page that may only reach ``base_url``; ``elsewhere`` lists what it tried."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.base_url = base_url
        self.elsewhere: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        host = urlsplit(base_url).netloc
        self.context.route(lambda url: self._foreign(url, host), self._refuse)
        self.page = self.context.new_page()

    def _foreign(self, url: str, host: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != host

    def _refuse(self, route: Route) -> None:
        self.elsewhere.append(route.request.url)
        route.abort()

    def open(self, path: str) -> Page:
        self.page.goto(self.base_url + path)
        return self.page

    def screenshot(self, name: str) -> None:
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            IMAGES.mkdir(exist_ok=True)
            self.page.screenshot(path=str(IMAGES / name), full_page=True)


OpenOffline = Callable[[ServerProcess], Offline]


@pytest.fixture
def offline(browser: Browser) -> Iterator[OpenOffline]:
    pages: list[Offline] = []

    def open_for(server: ServerProcess) -> Offline:
        page = Offline(browser, server.base_url)
        pages.append(page)
        return page

    yield open_for
    for page in pages:
        page.context.close()
        assert page.elsewhere == [], f"the page tried to reach the network: {page.elsewhere}"


@pytest.fixture(scope="module")
def dashboard_server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(
        "--admin-key",
        ADMIN_KEY,
        "--enable-fault-headers",
        "--time-to-first-token-ms",
        "20",
        "--inter-token-latency-ms",
        "5",
    )


def _logged_in(offline: Offline) -> Page:
    page = offline.open("/dashboard")
    page.fill("#admin-key", ADMIN_KEY)
    page.click("#keys-save")
    expect(page.locator("#connection")).to_have_text("live")
    # "live" shows once the events' response has started; the server's hello (which
    # fills the model list and enables or disables the controls) is read after it.
    expect(page.locator("#pg-model option").first).to_be_attached()
    return page


def test_docs_lists_every_operation_with_no_network(
    dashboard_server: ServerProcess, offline: OpenOffline
) -> None:
    document = httpx.get(dashboard_server.base_url + "/openapi.json").json()
    operations = sum(
        method in ("get", "post", "put", "patch", "delete")
        for item in document["paths"].values()
        for method in item
    )
    docs = offline(dashboard_server)
    page = docs.open("/docs")
    expect(page.locator(".opblock")).to_have_count(operations)
    docs.screenshot("docs.png")
    redoc = offline(dashboard_server).open("/redoc")
    # ReDoc lists each operation once in its side menu.
    expect(redoc.locator("li[data-item-id^='tag/'] li")).not_to_have_count(0)
    assert redoc.locator("h1").first.inner_text() == "streamapi (0.1.0)"


def test_docs_try_it_out_shows_a_streamed_answer(
    dashboard_server: ServerProcess, offline: OpenOffline
) -> None:
    page = offline(dashboard_server).open("/docs")
    operation = page.locator("#operations-default-create_chat_completion_v1_chat_completions_post")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    body = operation.locator("textarea.body-param__text")
    body.fill(
        '{"model": "sim-small", "stream": true, "max_tokens": 5,'
        ' "messages": [{"role": "user", "content": "hi"}]}'
    )
    # The responses' media type is what Swagger UI sends as Accept.
    operation.locator(".response-controls select").first.select_option("text/event-stream")
    operation.get_by_role("button", name="Execute").click()
    answer = operation.locator(".live-responses-table .response-col_description pre").first
    expect(answer).to_contain_text("data: [DONE]")
    assert "chat.completion.chunk" in answer.inner_text()


def test_waterfall_gains_a_row_while_a_stream_runs_and_shows_the_fault(
    dashboard_server: ServerProcess, offline: OpenOffline
) -> None:
    view = offline(dashboard_server)
    page = _logged_in(view)
    # A stream that stalls for two seconds after 3 tokens, then has its connection cut.
    done = threading.Event()

    def stream() -> None:
        try:
            with httpx.stream(
                "POST",
                dashboard_server.base_url + "/v1/chat/completions",
                json={
                    "model": "sim-small",
                    "stream": True,
                    "messages": [{"role": "user", "content": "waterfall"}],
                },
                headers={"x-streamapi-fault": "stall,after=3,ms=2000,then=drop"},
                timeout=10,
            ) as response:
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass  # the injected drop
        finally:
            done.set()

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        row = page.locator("#waterfall tbody tr", has_text="stall,after=3")
        expect(row).to_have_attribute("data-outcome", "in_progress")
        view.screenshot("dashboard.png")
        expect(row).to_have_attribute("data-outcome", "dropped")
        assert "chat" in row.inner_text()
    finally:
        worker.join(timeout=10)
    assert done.is_set()


def test_playground_streams_a_chat_and_shows_done(
    dashboard_server: ServerProcess, offline: OpenOffline
) -> None:
    view = offline(dashboard_server)
    page = _logged_in(view)
    page.fill("#pg-message", "Tell me about streams.")
    page.click("#pg-send")
    expect(page.locator("#pg-text .done")).to_have_text("[DONE]")
    expect(page.locator("#pg-note")).to_contain_text("HTTP 200, done")
    raw = page.locator("#pg-raw").inner_text()
    assert raw.count("data: {") >= 3
    assert raw.rstrip().endswith("data: [DONE]")
    assert len(page.locator("#pg-text").inner_text()) > len("[DONE]") + 5
    page.locator("#playground-title").scroll_into_view_if_needed()
    view.screenshot("playground.png")


def test_bad_rules_yaml_shows_its_error(
    dashboard_server: ServerProcess, offline: OpenOffline
) -> None:
    view = offline(dashboard_server)
    page = _logged_in(view)
    page.fill("#rules-yaml", "rules:\n  - match: {colour: blue}\n    respond: {text: hi}\n")
    page.click("#rules-apply")
    error = page.locator("#controls-error")
    expect(error).to_contain_text("PUT /admin/rules")
    expect(error).to_contain_text("colour")
    view.screenshot("controls.png")


def test_a_keyboard_user_reaches_every_control(
    dashboard_server: ServerProcess, offline: OpenOffline
) -> None:
    page = _logged_in(offline(dashboard_server))
    controls = page.eval_on_selector_all(
        "button:not([disabled]), input:not([disabled]), select:not([disabled]),"
        " textarea:not([disabled])",
        "elements => elements.map(e => e.id || e.name)",
    )
    assert len(controls) >= 20
    page.locator("body").focus()
    reached: set[str] = set()
    # Bounded: a few more presses than there are focusable things on the page.
    for _ in range(len(controls) + 20):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id || document.activeElement.name"))
    assert set(controls) <= reached, set(controls) - reached


def test_bench_html_report_opens_and_draws_its_plots(
    server_factory: ServerFactory, offline: OpenOffline, tmp_path: Path
) -> None:
    # One request in five fails, so that the errors plot has something to draw.
    server = server_factory(
        "--time-to-first-token-ms", "20", "--inter-token-latency-ms", "10",
        "--fault-rate", "0.2", "--fault-kinds", "status=500",
    )  # fmt: skip
    report = tmp_path / "report.html"
    command = [sys.executable, "-m", "streamapi", "bench", "--url", server.base_url]
    command += ["--concurrency", "4", "--duration", "3", "--max-tokens", "20", "--ignore-eos"]
    command += ["--no-progress", "--html", str(report)]
    finished = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert finished.returncode == 1, finished.stderr.decode(errors="replace")  # the failures
    view = offline(server)
    page = view.page
    page.goto(report.as_uri())
    figures = page.locator("figure svg")
    expect(figures).to_have_count(5)
    for index in range(5):
        points = figures.nth(index).locator("polyline.series").get_attribute("points") or ""
        assert len(points.split()) >= 2, page.locator("figure").nth(index).inner_text()
    assert "<script" not in report.read_text()
    view.screenshot("bench-report.png")
