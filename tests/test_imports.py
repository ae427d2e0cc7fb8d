"""No module of streamapi imports another library's private module.

A private module (``uvicorn._subprocess`` was one) can change or vanish in any
minor release of its library, breaking us with no deprecation; what we need
from one we write ourselves (``cli._Supervisor`` spawns its own workers).
The standard library's private modules are outside this check: they change
with the Python version, which CI pins.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "streamapi"


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _private_third_party(module: str) -> bool:
    top, *rest = module.split(".")
    if top == "streamapi" or top in sys.stdlib_module_names:
        return False
    return any(part.startswith("_") and not part.startswith("__") for part in rest)


def test_no_module_imports_a_private_module_of_another_library() -> None:
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 10
    found = [
        f"{path.relative_to(SRC)}: {name}"
        for path in modules
        for name in _imported_modules(path)
        if _private_third_party(name)
    ]
    assert found == []


def test_the_check_sees_a_private_import() -> None:
    assert _private_third_party("uvicorn._subprocess")
    assert _private_third_party("uvicorn._subprocess.get_subprocess")
    assert not _private_third_party("uvicorn.config")
    assert not _private_third_party("re._parser")
    assert not _private_third_party("streamapi.cli._Supervisor")
