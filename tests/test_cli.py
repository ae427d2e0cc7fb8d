"""Settings from options and environment, validated at start-up, listed by --help."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

from streamapi import __version__
from streamapi.cli import main
from streamapi.settings import Settings


def test_serve_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name, field in Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in out
        assert field.description is not None
    assert "STREAMAPI_" in out
    assert "(default: 127.0.0.1)" in out


def test_every_setting_is_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMAPI_INTER_TOKEN_LATENCY_MS", "12.5")
    monkeypatch.setenv("STREAMAPI_SERVED_MODEL_NAMES", '["a", "b"]')
    monkeypatch.setenv("STREAMAPI_ACCEPT_UNKNOWN_MODELS", "false")
    settings = Settings()
    assert settings.inter_token_latency_ms == 12.5
    assert settings.served_model_names == ["a", "b"]
    assert settings.accept_unknown_models is False


def test_options_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMAPI_PORT", "9000")
    settings = CliApp.run(Settings, cli_args=["--port", "9001", "--served-model-names", "x,y"])
    assert settings.port == 9001
    assert settings.served_model_names == ["x", "y"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--port", "70000"], "--port / STREAMAPI_PORT"),
        (["--inter-token-latency-ms", "-1"], "--inter-token-latency-ms"),
        (["--tokens-per-event", "0"], "--tokens-per-event"),
        (["--workers", "0"], "--workers / STREAMAPI_WORKERS"),
        (["--workers", "65"], "--workers / STREAMAPI_WORKERS"),
    ],
)
def test_invalid_settings_stop_start_up_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    assert main(["serve", *args]) == 2
    assert named in capsys.readouterr().err


def test_served_model_names_must_be_distinct_and_not_empty() -> None:
    with pytest.raises(ValidationError, match="repeat"):
        Settings(served_model_names=["a", "a"])
    with pytest.raises(ValidationError, match="empty"):
        Settings(served_model_names=["a", " "])
    with pytest.raises(ValidationError):
        Settings(served_model_names=[])


def test_usage_version_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--version"]) == 0
    assert main(["launch"]) == 2
    captured = capsys.readouterr()
    assert f"streamapi {__version__}" in captured.out
    assert "unknown command 'launch'" in captured.err


def test_rules_check_validates_a_file_without_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text("rules:\n  - name: hello\n    match: {user: hi}\n    respond: {text: Hi!}\n")
    assert main(["rules", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: 1 valid rule(s): hello\n"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "w", "respond": {"template": "{{nope}}"}}]')
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: rule 1 ('w'): respond.template: {{{{nope}}}} is not a variable")


def test_rules_needs_check_and_one_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules"]) == 2
    assert main(["rules", "lint", "x"]) == 2
    assert "usage: streamapi rules check FILE" in capsys.readouterr().err


def test_serve_refuses_an_invalid_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("- {match: {usr: x}}\n")
    assert main(["serve", "--rules-file", str(bad)]) == 2
    assert "invalid rules: " in capsys.readouterr().err


def test_the_admin_key_is_never_echoed_in_a_validation_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--admin-key", " \t "]) == 2
    err = capsys.readouterr().err
    assert "--admin-key" in err
    assert "<secret>" in err
    assert repr(" \t ") not in err
