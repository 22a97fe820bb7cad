"""The import layers: every arrow points one way.

    sim (simulators, the demo)          may import everything below
    serving          training           neither imports the other
    inspection (the core)               imports none of the three above, nor torch

serving/ and inspection/ must also run on a line PC without torch (only the serving extra).
The source is read (AST), so imports inside functions count too; a fresh interpreter checks what
importing every module really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TORCH_SIDE = ("torch", "torchvision", "albumentations")

#: package -> the top-level modules its source may not import.
LAYERS: dict[str, tuple[str, ...]] = {
    "inspection": (*TORCH_SIDE, "training", "serving", "sim"),
    "serving": (*TORCH_SIDE, "training", "sim"),
    "training": ("serving", "sim"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``path``, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def layer_violations(package: str, forbidden: tuple[str, ...], root: Path = REPO) -> list[str]:
    """``path:line module`` for each import in ``root/package`` of a module in ``forbidden``."""
    return [f"{path.relative_to(root)}:{line} {name}"
            for path in sorted((root / package).rglob("*.py"))
            for line, name in _imports(path) if name.split(".")[0] in forbidden]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_points_up_or_across(package: str) -> None:
    # No exceptions, not even in CLI handlers: commands above the core are contributed through
    # the inspection.commands entry points (inspection/cli/commands.py), never imported by it.
    assert layer_violations(package, LAYERS[package]) == []


def test_the_contract_check_finds_a_nested_import(tmp_path: Path) -> None:
    pkg = tmp_path / "inspection" / "cli"
    pkg.mkdir(parents=True)
    (pkg / "serve.py").write_text("import os\n\ndef run():\n    from serving.runner import serve\n    return serve\n",
                                  encoding="utf-8")
    (pkg / "ok.py").write_text("from . import serve\nfrom inspection.errors import ConfigError\n", encoding="utf-8")
    assert layer_violations("inspection", LAYERS["inspection"], root=tmp_path) == [
        "inspection/cli/serve.py:4 serving.runner"]


def test_fresh_interpreter_imports_serving_and_inspection_without_torch() -> None:
    forbidden = (*TORCH_SIDE, "training", "sim")
    code = (
        "import sys, pkgutil, importlib\n"
        "import inspection, serving\n"
        "for pkg in (inspection, serving):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"modules above serving/inspection loaded by them: {out.stdout.strip()}"
