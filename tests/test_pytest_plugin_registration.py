"""The pytest plugin is loaded for every suite where streamapi is installed, ours included:
it must add its two fixtures and its marker, and nothing else, and import little."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _pytest.fixtures import FixtureFunctionDefinition

import streamapi.pytest_plugin


def test_the_plugin_adds_two_fixtures_one_marker_and_one_hook(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("streamapi")
    assert plugin is streamapi.pytest_plugin
    assert [name for name in dir(plugin) if name.startswith("pytest_")] == ["pytest_configure"]
    fixtures = [
        name for name, value in vars(plugin).items() if isinstance(value, FixtureFunctionDefinition)
    ]
    assert sorted(fixtures) == ["streamapi_factory", "streamapi_server"]
    markers = [line for line in pytestconfig.getini("markers") if line.startswith("streamapi")]
    assert len(markers) == 1


def test_loading_the_plugin_does_not_import_the_server() -> None:
    probe = "import sys, streamapi.pytest_plugin; print('streamapi.app' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
