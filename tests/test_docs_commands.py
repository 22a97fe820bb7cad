"""Every command the README and docs/ tell a user to run exists, with the flags they show.

Commands are taken from fenced code blocks and inline code (`inspection ...`,
`.venv/bin/inspection ...`, `python -m MODULE ...`); the words before the first flag (the
subcommand and its positional arguments) are run with ``--help``: that must exit 0, and every
flag the text uses must appear in the help. Flag values (often placeholders such as ``N``) are
not parsed.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from inspection.cli import build_parser, main
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+)`")


def _words(text: str) -> list[str]:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []
    # `[--arch NAME]` in a synopsis is an optional flag: check the flag, drop the brackets.
    return [w.strip("[]") for w in words if w.strip("[]")]


def _command(words: list[str]) -> list[str] | None:
    """``inspection ARGS`` or ``python -m MODULE ARGS`` (after ``VAR=value`` assignments) -> the argv, else None."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    if not words:
        return None
    if words[0] == "inspection" or words[0].endswith("/bin/inspection"):
        return ["inspection", *words[1:]]
    if Path(words[0]).name.startswith("python") and words[1:2] == ["-m"] and len(words) > 2:
        return ["python", *words[1:]]
    return None


def _alternatives(span: str) -> list[list[str]]:
    """`inspection audit list | show ID | verify` -> one argv per alternative."""
    pieces = [_words(p) for p in span.split("|")]
    first = _command(pieces[0])
    if first is None:
        return []
    prefix = first[:-1]
    return [first] + [prefix + p for p in pieces[1:] if p]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command named in the README and docs/*.md, without duplicates."""
    found: dict[tuple[str, ...], str] = {}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in _FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                argv = _command(_words(line))
                if argv is not None:
                    found.setdefault(tuple(argv), doc.name)
        for span in _SPAN.findall(text):  # inline code, in prose and in code-block comments alike
            for argv in _alternatives(span):
                found.setdefault(tuple(argv), doc.name)
    return [(where, list(argv)) for argv, where in found.items()]


COMMANDS = documented_commands()


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    first_flag = next((i for i, w in enumerate(argv) if i > 0 and w.startswith("-") and w != "-m"), len(argv))
    argv = argv[:first_flag]
    if argv[0] == "python":
        out = subprocess.run([sys.executable, *argv[1:], "--help"], check=False, capture_output=True, text=True,
                             cwd=REPO, timeout=120)
        assert out.returncode == 0, f"{' '.join(argv)} --help: exit {out.returncode}\n{out.stderr}"
        return out.stdout
    _check_words(argv[1:])
    with pytest.raises(SystemExit) as exit_:
        main([*argv[1:], "--help"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, f"{' '.join(argv)} --help: exit {exit_.value.code}\n{captured.err}"
    return captured.out


def _check_words(words: list[str]) -> None:
    """Each word names a subcommand, then at most as many words as the command has positionals.

    ``--help`` alone would not tell: argparse prints the help before it complains about a stray word
    (``inspection serve hash-key --help`` exits 0).
    """
    parser, rest = build_parser(), list(words)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not rest:
            break
        assert rest[0] in subs[0].choices, f"`{rest[0]}` is not a command here; there are {sorted(subs[0].choices)}"
        parser = subs[0].choices[rest.pop(0)]
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    takes_many = any(a.nargs in ("*", "+", argparse.REMAINDER) for a in positionals)
    assert takes_many or len(rest) <= len(positionals), f"{parser.prog} takes no argument {rest[len(positionals):]}"


def test_the_docs_name_the_commands_users_run() -> None:
    named = {tuple(argv[:2]) for _, argv in COMMANDS}
    for command in ("dataset", "train", "models", "serve", "audit"):
        assert ("inspection", command) in named
    assert ("python", "-m") in named


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[f"{w}: {' '.join(a)}" for w, a in COMMANDS])
def test_documented_command_exists_with_its_flags(where: str, argv: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(argv, capsys)
    args = argv[3:] if argv[0] == "python" else argv[1:]  # after `python -m MODULE` / `inspection`
    flags = {w.split("=", 1)[0] for w in args if re.match(r"--?[A-Za-z]", w)}
    missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
    assert missing == [], f"{where}: `{' '.join(argv)}` uses flags its help does not list"
