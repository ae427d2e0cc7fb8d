"""The README documents every setting and the commands it promises."""

from __future__ import annotations

from pathlib import Path

from streamapi.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_lists_every_setting_as_option_and_environment_variable() -> None:
    for name in Settings.model_fields:
        assert f"`--{name.replace('_', '-')}` / `STREAMAPI_{name.upper()}`" in README


def test_readme_has_the_two_commands() -> None:
    assert "pip install . && streamapi serve" in README
    assert 'pip install ".[test]" && pytest' in README
