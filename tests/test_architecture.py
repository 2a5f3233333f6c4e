"""The package's architecture holds: import-linter's contracts in pyproject.toml (layers, independent
families, no circle between the children of any package), and no import circle between any modules."""

from __future__ import annotations

import graphlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import REPO_ROOT


def import_circle(package: str) -> list[str] | None:
    """One circle of imports among a package's modules (every import statement, also inside functions), or None."""
    graph = grimp.build_graph(package, cache_dir=None)
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    try:
        graphlib.TopologicalSorter(imports).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return None


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_imports_itself_through_others() -> None:
    circle = import_circle("flowsr_cli")
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_a_circle_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "circular"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from circular import b\n")
    (package / "b.py").write_text("from circular.c import g\n")
    (package / "c.py").write_text("import circular.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    circle = import_circle("circular")
    assert circle is not None and set(circle) == {"circular.a", "circular.b", "circular.c"}
