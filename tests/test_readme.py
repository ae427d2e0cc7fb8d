"""The README documents every setting and the commands it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamapi.control.faults import parse_faults
from streamapi.control.rules import parse_rules, parse_text
from streamapi.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()
# Settings may be documented on the README or on a page of the docs.
DOCUMENTED = README + "".join(
    page.read_text() for page in sorted((Path(__file__).parent.parent / "docs").glob("*.md"))
)


def test_readme_lists_every_setting_as_option_and_environment_variable() -> None:
    for name in Settings.model_fields:
        assert f"`--{name.replace('_', '-')}` / `STREAMAPI_{name.upper()}`" in DOCUMENTED


def test_readme_has_the_two_commands() -> None:
    assert "pip install . && streamapi serve" in README
    assert 'pip install ".[test]" && pytest' in README


def _yaml_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_gateway_examples_and_the_compose_routes_file_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-example")
    routes = tmp_path / "routes.yaml"
    routes.write_text(_yaml_after("### Routing file"))
    keys = tmp_path / "keys.yaml"
    keys.write_text(_yaml_after("### Keys, limits and CORS"))
    settings = Settings(routes_file=routes, api_keys_file=keys)
    assert settings.model_names == ["sim-small", "llama-8b", "qwen3", "local-gguf"]
    assert settings.keys.authenticate("sk-ci-example") is not None
    compose = Path(__file__).parent.parent / "deploy" / "gateway-routes.yaml"
    assert Settings(routes_file=compose).routes.upstream_of("upstream-model") is not None


def test_readme_rules_example_is_valid() -> None:
    section = README.split("## Testing your client", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    rules = parse_rules(parse_text(example, source="README"), source="README")
    assert len(rules) == 7


def test_readme_fault_examples_parse() -> None:
    for spec in ("status=429,retry_after=0.5", "mid_stream_error,after=5", "slow,ms=50; no_done"):
        assert spec in README
        parse_faults(spec)
