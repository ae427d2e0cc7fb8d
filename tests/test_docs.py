"""The README and the documentation site (docs/) say only what is true of the server.

Each page's code blocks are checked the way a reader would use them: YAML blocks load
through the server's own loaders, Python and curl examples run against a real server,
option and environment variable names must be settings, and the settings reference,
generated from ``Settings`` at build time, lists every one of them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from anthropic import Anthropic
from openai import OpenAI

from streamapi.cli import main as streamapi_main
from streamapi.control.rules import parse_rules, parse_text
from streamapi.fault_grammar import parse_faults
from streamapi.pytest_plugin import StreamapiServer, serve
from streamapi.settings import Settings

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
EVERY_PAGE = [README, *PAGES]
# The address the examples use; the tests swap in the address of the server they start.
EXAMPLE_URL = "http://127.0.0.1:8080"
# What the examples' admin requests carry as $STREAMAPI_ADMIN_KEY.
ADMIN_KEY_VARIABLE = "$STREAMAPI_ADMIN_KEY"


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang})"


def code_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = page.read_text().split("\n")
    start, lang, body = -1, "", list[str]()
    for number, line in enumerate(lines, 1):
        if start < 0 and line.startswith("```"):
            start, lang, body = number, line[3:].strip(), []
        elif start >= 0 and line.startswith("```"):
            blocks.append(Block(page, start, lang, "\n".join(body) + "\n"))
            start = -1
        elif start >= 0:
            body.append(line)
    assert start < 0, f"{page}: unclosed code block at line {start}"
    return blocks


def prose(page: Path) -> str:
    """The page without its code blocks."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def blocks_of(lang: str) -> list[Block]:
    return [block for page in EVERY_PAGE for block in code_blocks(page) if block.lang == lang]


def _id(block: Block) -> str:
    return str(block)


# --- the README: a front page --------------------------------------------------------


def test_readme_has_the_two_commands() -> None:
    readme = README.read_text()
    assert "pip install . && streamapi serve" in readme
    assert 'pip install -c requirements/ci.lock ".[test]" && pytest' in readme


def test_readme_stays_a_front_page() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move the detail into docs/"


def test_readme_links_point_at_files_that_exist() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [target for target in targets if "://" not in target]
    assert local, "the README links to the documentation"
    for target in local:
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


# --- the settings reference -------------------------------------------------------------


def _settings_hook() -> ModuleType:
    path = DOCS / "hooks" / "settings_reference.py"
    spec = importlib.util.spec_from_file_location("settings_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_reference_lists_every_setting_with_its_help_text() -> None:
    hook = _settings_hook()
    source = (DOCS / "settings.md").read_text()
    assert source.count(hook.MARKER) == 1
    page = hook.on_page_markdown(source, page=None, config=None, files=None)
    assert hook.MARKER not in page
    rows = {line.split("`")[1]: line for line in page.split("\n") if line.startswith("| <span")}
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        row = rows[f"--{name.replace('_', '-')}"]
        assert f"`STREAMAPI_{name.upper()}`" in row
        assert field.description, f"{name} has no help text"
        assert hook.table_cell(field.description) in row
    assert "<br>`--no-accept-unknown-models`" in rows["--accept-unknown-models"]
    assert "≤ 70" in rows["--latency-jitter-pct"]
    assert "latency-profiles" in rows["--inter-token-latency-ms"]


def test_only_the_generated_reference_tables_the_settings() -> None:
    """A hand-written table of settings would drift: the generated one is the reference."""
    for page in EVERY_PAGE:
        assert "| option / environment variable |" not in page.read_text(), page


# --- names of settings ------------------------------------------------------------------


def _bool_fields() -> set[str]:
    return {name for name, field in Settings.model_fields.items() if field.annotation is bool}


SERVE_OPTIONS = {f"--{name.replace('_', '-')}" for name in Settings.model_fields} | {
    f"--no-{name.replace('_', '-')}" for name in _bool_fields()
}
ENVIRONMENT = {f"STREAMAPI_{name.upper()}" for name in Settings.model_fields}
# Not settings: what the test suite and deploy/real-engine/build.sh read (each must be
# read by one of them, see the test below).
DEVELOPMENT_ENVIRONMENT = {"STREAMAPI_REAL_ENGINE_DIR", "STREAMAPI_REQUIRE_REAL_ENGINE"}
# Words in the text that are not options of one command: the negation prefix, a
# placeholder, and the options of the commands the blocks run besides `streamapi serve`.
NOT_SERVE_OPTIONS = {"--no-", "--option", "--help", "--version"}


def command_lines() -> list[tuple[str, str]]:
    """Every command shown, with where: code block lines, and inline code that starts with
    a word and goes on with options (`streamapi serve --port P ...`)."""
    lines: list[tuple[str, str]] = []
    for lang in ("bash", "text"):
        for block in blocks_of(lang):
            for line in block.text.replace("\\\n", " ").split("\n"):
                lines.append((str(block), line.split(" #")[0]))
    for page in EVERY_PAGE:
        for span in re.findall(r"`([a-z][^`]* --[^`]*)`", prose(page)):
            lines.append((str(page.relative_to(ROOT)), span))
    return lines


def _other_commands_options() -> set[str]:
    """Options written after any command other than ``streamapi serve``."""
    found: set[str] = set()
    for _, line in command_lines():
        if "streamapi serve" not in line:
            found.update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    return found


def test_every_environment_variable_named_is_a_setting() -> None:
    for page in EVERY_PAGE:
        for name in re.findall(r"STREAMAPI_[A-Z0-9_]+", page.read_text()):
            assert name in ENVIRONMENT | DEVELOPMENT_ENVIRONMENT, (
                f"{page.relative_to(ROOT)} names {name}: no such setting"
            )
    readers = [
        ROOT / "tests" / "e2e" / "real_engine.py",
        ROOT / "deploy" / "real-engine" / "build.sh",
    ]
    read = "".join(path.read_text() for path in readers)
    assert all(name in read for name in DEVELOPMENT_ENVIRONMENT)


def test_every_serve_option_in_a_command_is_a_setting() -> None:
    commands = 0
    for where, line in command_lines():
        if "streamapi serve" not in line:
            continue
        commands += 1
        words = line.split("streamapi serve", 1)[1].split("&&")[0].split(" & ")[0]
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", words):
            assert option in SERVE_OPTIONS | {"--help"}, f"{where}: `streamapi serve {option}`"
    assert commands >= 5


def _bench_help() -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        streamapi_main(["bench", "--help"])
    return output.getvalue()


def test_every_option_in_the_text_exists() -> None:
    """An option named in prose is a setting, an option of `streamapi bench`, or one of a
    command shown in the docs."""
    bench = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", _bench_help()))
    known = SERVE_OPTIONS | NOT_SERVE_OPTIONS | bench | _other_commands_options()
    for page in EVERY_PAGE:
        for span in re.findall(r"`(--[a-z][a-z0-9*-]*)", prose(page)):
            option = span.removesuffix("*")
            assert option in known or (
                span.endswith("*") and any(name.startswith(option) for name in SERVE_OPTIONS)
            ), f"{page.relative_to(ROOT)} names `{span}`: not a setting nor a shown command's"


def test_streamapi_bench_options_in_the_docs_exist() -> None:
    help_text = _bench_help()
    used = 0
    for block in blocks_of("bash"):
        for line in block.text.replace("\\\n", " ").split("\n"):
            if "streamapi bench" in line:
                for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line.split("#")[0]):
                    used += 1
                    assert option in help_text, f"{block}: streamapi bench has no {option}"
    assert used


# --- YAML blocks: rules, routes and keys files --------------------------------------------


def _load_yaml_block(block: Block, tmp_path: Path) -> Settings | None:
    """Load a YAML block as the file it shows; the Settings it builds, if it is one."""
    document = yaml.safe_load(block.text)
    assert isinstance(document, dict), f"{block}: not a mapping"
    path = tmp_path / f"block-{block.line}.yaml"
    path.write_text(block.text)
    if "rules" in document:
        parse_rules(parse_text(block.text, source=str(block)), source=str(block))
        return Settings(rules_file=path)
    if "upstreams" in document or "models" in document:
        return Settings(routes_file=path)
    if "keys" in document:
        return Settings(api_keys_file=path)
    if "groups" in document:  # a Prometheus rules file: every rule records or alerts on a query
        rules = [rule for group in document["groups"] for rule in group["rules"]]
        assert rules and all(("record" in r or "alert" in r) and r["expr"] for r in rules), block
        return Settings()
    raise AssertionError(f"{block}: YAML that is no rules, routes, keys nor Prometheus file")


@pytest.mark.parametrize("block", blocks_of("yaml"), ids=_id)
def test_yaml_blocks_are_files_the_server_loads(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-example")
    assert _load_yaml_block(block, tmp_path) is not None


def _the_yaml_block(page: str, first_key: str) -> Block:
    (block,) = [
        block
        for block in code_blocks(DOCS / page)
        if block.lang == "yaml" and block.text.startswith(first_key)
    ]
    return block


def test_the_gateway_examples_and_the_compose_routes_file_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-example")
    routes = _load_yaml_block(_the_yaml_block("gateway.md", "upstreams:"), tmp_path)
    keys = _load_yaml_block(_the_yaml_block("keys-and-limits.md", "keys:"), tmp_path)
    assert routes is not None and keys is not None
    assert routes.model_names == ["sim-small", "llama-8b", "qwen3", "local-gguf"]
    assert keys.keys.authenticate("sk-ci-example") is not None
    compose = ROOT / "deploy" / "gateway-routes.yaml"
    assert Settings(routes_file=compose).routes.upstream_of("upstream-model") is not None


def test_the_rules_example_has_every_rule() -> None:
    block = _the_yaml_block("testing/rules.md", "rules:")
    rules = parse_rules(parse_text(block.text, source="docs"), source="docs")
    assert len(rules) == 7


def test_the_fault_examples_parse() -> None:
    faults = "".join(page.read_text() for page in (DOCS / "testing").glob("*.md"))
    for spec in ("status=429,retry_after=0.5", "mid_stream_error,after=5", "slow,ms=50; no_done"):
        assert spec in faults
        parse_faults(spec)


# --- examples run against a real server ------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[StreamapiServer]:
    with serve() as running:
        yield running


def _runnable_python() -> list[Block]:
    # A pytest module (the plugin's example) runs in a user's suite: tests/e2e does that.
    return [block for block in blocks_of("python") if "@pytest.mark" not in block.text]


def _prepare(namespace: dict[str, Any], block: Block, server: StreamapiServer) -> None:
    """What a reader has when the block starts: the client made in Getting started."""
    namespace["client"] = OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0)
    # Blocks of one page build on each other, as a reader runs them one after the other.
    for earlier in code_blocks(block.page):
        if earlier.line >= block.line:
            break
        if earlier.lang == "python" and "@pytest.mark" not in earlier.text:
            _run_python(earlier, server, namespace)


def _run_python(block: Block, server: StreamapiServer, namespace: dict[str, Any]) -> None:
    source = block.text.replace(EXAMPLE_URL, server.base_url.rstrip("/"))
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, str(block), "exec"), namespace)


@pytest.mark.parametrize("block", _runnable_python(), ids=_id)
def test_python_examples_run(block: Block, server: StreamapiServer) -> None:
    namespace: dict[str, Any] = {}
    try:
        _prepare(namespace, block, server)
        before = set(namespace)
        _run_python(block, server, namespace)
        assert set(namespace) - before or "print(" in block.text, f"{block} did nothing"
    finally:
        clients = [value for value in namespace.values() if isinstance(value, OpenAI | Anthropic)]
        for client in clients:
            client.close()
    for client in clients:
        assert str(client.base_url).startswith(server.base_url.rstrip("/")), block


def _curl_commands() -> list[tuple[Block, list[str]]]:
    commands = []
    for block in blocks_of("bash"):
        for line in block.text.replace("\\\n", " ").split("\n"):
            if line.startswith("curl "):
                commands.append((block, shlex.split(line, comments=True)))
    return commands


@pytest.mark.parametrize(
    "command", _curl_commands(), ids=lambda command: f"{command[0]}:{command[1][-1]}"
)
def test_curl_examples_answer(command: tuple[Block, list[str]], server: StreamapiServer) -> None:
    block, line = command
    method, headers, body, url = "GET", dict[str, str](), None, ""
    words = iter(line[1:])
    for word in words:
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(": ")
            headers[name] = value.replace(ADMIN_KEY_VARIABLE, server.admin_key)
        elif word == "-d":
            body = next(words)
            method = "POST" if method == "GET" else method
        elif word in ("-N", "-s"):  # no buffering, silent: what curl shows, not what it sends
            continue
        else:
            assert word.startswith(EXAMPLE_URL), f"{block}: curl {word}?"
            url = word.replace(EXAMPLE_URL, server.base_url.rstrip("/"))
    with httpx.Client(timeout=30) as http:
        response = http.request(method, url, headers=headers, content=body)
    assert response.status_code == 200, f"{block}: {response.status_code} {response.text}"
    if response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), block
