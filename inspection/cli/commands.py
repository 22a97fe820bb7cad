"""Commands contributed by other packages: the ``inspection.commands`` entry-point group.

The core owns ``dataset``, ``models`` and ``audit``. Packages above it add their own commands
the way Flask plugins add to ``flask.commands``: each entry point names a
``register(subparsers)`` function, declared in pyproject.toml::

    [project.entry-points."inspection.commands"]
    serve = "serving.cli:register"

A command module whose extra is not installed cannot be imported (``require_extra`` at its top
raises), and its command is left out: a line PC with only the ``serve`` extra offers no
``train``. The core never imports those packages by name; the arrows point up to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections.abc import Callable
from importlib.metadata import entry_points

from inspection.errors import ConfigError

GROUP = "inspection.commands"

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

log = logging.getLogger(__name__)


def require_extra(extra: str, *modules: str) -> None:
    """Refuse to import a command module where its extra is missing (modules are found, not imported).

    Raises:
        ModuleNotFoundError: one of ``modules`` is not installed; the message names the extra.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"{module} is not installed: pip install 'inspection[{extra}]'", name=module)


def contributed() -> list[tuple[str, Register]]:
    """The installed entry points of ``inspection.commands`` that import, by command name.

    An entry point whose module cannot be imported (its package or extra is not installed) is
    skipped and logged at debug level; any other error in a contributed module propagates.
    """
    found: list[tuple[str, Register]] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:
            log.debug("command %r (%s) not available: %s", ep.name, ep.value, exc)
            continue
        found.append((ep.name, register))
    return found


def add_contributed(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                    commands: list[tuple[str, Register]] | None = None) -> None:
    """Let each contributed ``register`` add its command to ``sub``.

    Raises:
        ConfigError: a contributed name is already taken, or its ``register`` added no command of that name.
    """
    for name, register in contributed() if commands is None else commands:
        if name in sub.choices:
            raise ConfigError(f"entry point {GROUP}:{name} names a command that already exists: {name!r}")
        register(sub)
        if name not in sub.choices:
            raise ConfigError(f"entry point {GROUP}:{name} ({_where(register)}) did not add a {name!r} command")


def _where(register: Register) -> str:
    return f"{getattr(register, '__module__', '?')}:{getattr(register, '__qualname__', '?')}"

