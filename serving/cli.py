"""`inspection serve`: run the reject API, or make an API key for its settings.

    inspection serve --settings serve.yaml [--host 0.0.0.0] [--port 8000]
    inspection serve --settings serve.yaml --workers 2     # 2 processes: ports 8000, 8001
    inspection serve --new-key line:plc-gateway      # prints the key once, and its settings line
    inspection serve --new-signing-key keys/checkpoint.key   # the log's checkpoint key (mode 0600)

Settings come from the file, then ``INSPECTION_*`` environment variables (nested keys joined
with ``__``, e.g. ``INSPECTION_BATCHING__MAX_DELAY_MS=1``); see ``serving.settings``.
"""

# The serving package contributes this command to the `inspection` CLI (entry point
# `inspection.commands: serve`); where the serve extra is missing this module cannot be
# imported and `inspection` does not offer `serve`.

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from inspection.cli.commands import require_extra
from inspection.errors import ConfigError, ValidationError
from serving.settings import ROLES, hash_key, load_settings, worker_settings

require_extra("serve", "fastapi", "uvicorn", "onnxruntime")


def _port(value: str) -> int:
    # Checked here: uvicorn takes 70000 modulo 65536 (and listens on 4464), and -1 fails only as
    # "Servname not supported". 0 lets the system choose, as the settings' port allows.
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port; allowed 0..65535 (0: any free port)")
    return port


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` subcommand to the ``inspection`` CLI (entry point ``inspection.commands: serve``)."""
    p = sub.add_parser("serve", help="serve reject decisions over HTTP/WebSocket (FastAPI + onnxruntime)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", type=Path, help="YAML or JSON settings file (see serving/settings.py)")
    p.add_argument("--host", help="interface to listen on (default: the settings' host, 127.0.0.1)")
    p.add_argument("--port", type=_port, help="TCP port, 0..65535 (default: the settings' port, 8000)")
    p.add_argument("--demo", action="store_true", help="demo mode: well-known or no API keys allowed")
    p.add_argument("--workers", type=int, default=None,
                   help="serving processes on this line PC: process i answers the stations i, i+N, ... of the "
                        "sorted station names on port PORT+i (frames of a station sent to another process get 421 "
                        "naming the right one); share one PostgreSQL log_url between them")
    p.add_argument("--worker", metavar="I/N", help=argparse.SUPPRESS)  # one process of --workers N
    p.add_argument("--new-key", metavar="ROLE:NAME",
                   help="print a new random API key and the api_keys entry (its sha256) for the settings, then exit")
    p.add_argument("--new-signing-key", metavar="PATH", type=Path,
                   help="write a new Ed25519 checkpoint signing key to PATH (owner-only, never over an existing "
                        "file), print its public key and the settings entry, then exit")
    p.set_defaults(func=_run)


def new_key_entry(spec: str) -> tuple[str, str]:
    """``"line:plc-1"`` -> (the new key, its YAML settings entry).

    Raises:
        ValidationError: not ROLE:NAME with a known role.
    """
    role, _, name = spec.partition(":")
    if role not in ROLES or not name:
        raise ValidationError(f"--new-key {spec!r}: expected ROLE:NAME with ROLE one of {list(ROLES)}")
    key = secrets.token_urlsafe(32)
    return key, f'  - {{name: {name}, role: {role}, sha256: "{hash_key(key)}"}}'


def _run(args: argparse.Namespace) -> int:
    if args.new_signing_key:
        from inspection.log.checkpoints import generate_signing_key

        public = generate_signing_key(args.new_signing_key)
        print(f"signing key written to {args.new_signing_key} (mode 0600; keep it off the database's machine)")
        print(f"public key (give it to auditors: inspection audit verify --public-key ...): {public}")
        print("settings entry:")
        print(f"checkpoints: {{signing_key: {args.new_signing_key}, file: checkpoints.jsonl}}")
        return 0
    if args.new_key:
        key, entry = new_key_entry(args.new_key)
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print("settings entry (under api_keys:):")
        print(entry)
        return 0
    from serving.runner import serve

    overrides = {"demo": True} if args.demo else None
    settings = load_settings(args.settings, env=dict(os.environ), overrides=overrides)
    if args.worker:
        index, _, count = args.worker.partition("/")
        if not (index.isdigit() and count.isdigit()):
            raise ConfigError(f"--worker {args.worker!r}: expected I/N, e.g. 0/2")
        settings = worker_settings(settings, int(index), int(count), host=args.host or settings.host,
                                   port=settings.port if args.port is None else args.port)
    elif args.workers is not None and args.workers != 1:
        from serving.workers import run_workers

        return run_workers(args, settings)
    serve(settings, host=args.host, port=args.port if not args.worker else None)
    return 0
