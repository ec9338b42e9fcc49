"""``nexus``: run the platform and operate its log, streams and keys."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from nexus.cli import commands
from nexus.config import ConfigError
from nexus.fs import restrict_umask


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description="Nexus, an event-sourced workflow platform.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before anything touches the data directory: the log, Raw, the NATS store and backups are
    # private (0700/0600) whatever the shell's umask, and every child `nexus up` starts inherits it.
    restrict_umask()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"nexus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
