"""serving/ and inspection/ must run on a line PC without torch (only the serving extra)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

FORBIDDEN = ("torch", "torchvision", "albumentations", "training")


def test_fresh_interpreter_imports_serving_and_inspection_without_torch() -> None:
    code = (
        "import sys, pkgutil, importlib\n"
        "import inspection, serving\n"
        "for pkg in (inspection, serving):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"torch-side modules loaded by serving/inspection: {out.stdout.strip()}"


@pytest.mark.parametrize("package", ["inspection", "serving"])
def test_no_forbidden_import_statements(package: str) -> None:
    # Lazy imports inside functions would escape the runtime check above; read the source too.
    offenders = []
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    # No exceptions, not even in CLI handlers: `inspection train` runs training as its own process.
    assert offenders == []
