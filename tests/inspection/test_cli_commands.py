"""`inspection` commands contributed through the ``inspection.commands`` entry points.

What is offered depends on what is installed: a fresh interpreter whose import of a package
(or of torch / fastapi) is blocked by a ``sys.meta_path`` finder stands for a line PC without
that package or extra.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from inspection.cli import build_parser
from inspection.cli.commands import add_contributed, require_extra
from inspection.errors import ConfigError
from tests.conftest import REPO

CORE = {"dataset", "models", "audit"}

_BLOCKED_RUN = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
from inspection.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help, or a usage error
    code = exc.code
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "fastapi", "uvicorn", "onnxruntime"}})
print("loaded:", ",".join(loaded))
sys.exit(code)
"""


def _run(blocked: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCKED_RUN.format(blocked=blocked), *argv], check=False,
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def _commands(help_text: str) -> set[str]:
    listed = help_text.split("positional arguments:")[1].split("options:")[0]
    return {m.group(1) for m in re.finditer(r"^ {4}(\S+)", listed, re.MULTILINE)}


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_everything_installed_offers_every_command() -> None:
    assert _choices(build_parser()) == CORE | {"train", "serve", "demo"}


@pytest.mark.parametrize(("blocked", "absent"), [
    ((), set()),
    (("torch",), {"train", "demo"}),          # a line PC: the serve extra only
    (("training",), {"train", "demo"}),
    (("fastapi",), {"serve", "demo"}),        # a training workstation without the serve extra
    (("sim",), {"demo"}),
    (("training", "serving", "sim"), {"train", "serve", "demo"}),
])
def test_help_lists_only_what_is_installed(blocked: tuple[str, ...], absent: set[str]) -> None:
    out = _run(blocked, "--help")
    assert out.returncode == 0, out.stderr
    assert _commands(out.stdout) == (CORE | {"train", "serve", "demo"}) - absent
    # Building the parser imports the command modules, never what their handlers need.
    assert out.stdout.endswith("loaded: \n")


def test_a_missing_command_is_refused_with_the_commands_there_are() -> None:
    out = _run(("torch",), "train", "--data", "datasets/x")
    assert out.returncode == 2
    assert "invalid choice: 'train'" in out.stderr and "'serve'" in out.stderr


def test_verbose_before_or_after_train() -> None:
    parser = build_parser()
    assert parser.parse_args(["-v", "train", "--data", "d"]).verbose is True
    assert parser.parse_args(["train", "--data", "d", "-v"]).verbose is True
    assert parser.parse_args(["train", "--data", "d"]).verbose is False


def _sub() -> argparse._SubParsersAction[argparse.ArgumentParser]:
    return argparse.ArgumentParser().add_subparsers(dest="command")


def test_a_contributed_name_that_is_taken_is_refused() -> None:
    sub = _sub()
    sub.add_parser("dataset")
    with pytest.raises(ConfigError, match="inspection.commands:dataset names a command that already exists"):
        add_contributed(sub, [("dataset", lambda s: s.add_parser("dataset2"))])


def test_a_register_that_adds_another_name_is_refused() -> None:
    def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        sub.add_parser("trian")

    with pytest.raises(ConfigError, match="inspection.commands:train .*did not add a 'train' command"):
        add_contributed(_sub(), [("train", register)])


def test_require_extra_names_the_missing_module_and_the_extra() -> None:
    require_extra("serve", "argparse", "json")
    with pytest.raises(ModuleNotFoundError,
                       match=r"no_such_module_x is not installed: pip install 'inspection\[train\]'"):
        require_extra("train", "json", "no_such_module_x")
