"""``nexus bench``: run the benchmark suites (``python -m bench`` with the same arguments).

The suites are the ``bench`` package of the Nexus repository (``make bench`` runs them too); they
are not part of the installed ``nexus`` package. ``nexus bench`` finds them when they are
importable, in the current directory, or beside the ``nexus`` sources of an editable install.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nexus

__all__ = ["find_bench", "register"]


def _is_bench(root: Path) -> bool:
    # The repository's package, not any module that happens to be called "bench".
    return (root / "bench" / "__main__.py").is_file() and (root / "bench" / "_harness.py").is_file()


def find_bench() -> Path | None:
    """The directory holding the ``bench`` package (to put on ``PYTHONPATH``), or None."""
    spec = importlib.util.find_spec("bench")
    if spec is not None and spec.origin and _is_bench(Path(spec.origin).resolve().parent.parent):
        return Path(spec.origin).resolve().parent.parent
    candidates = [Path.cwd(), Path(nexus.__file__).resolve().parents[2]]
    return next((root for root in candidates if _is_bench(root)), None)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmark suites (python -m bench; --help lists its options)",
        description="Run the benchmark suites: the arguments go to `python -m bench` unchanged.",
        add_help=False,
        # No option of its own: every argument, "--quick" and "--help" included, goes to python -m bench.
        prefix_chars="\x00",
    )
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="suites and options of python -m bench")
    parser.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    root = find_bench()
    if root is None:
        print(
            "nexus bench: the benchmark suites (the `bench` package) are not available: they ship with the "
            "Nexus repository, not with the installed package. Run `nexus bench` (or `make bench`) from a "
            "checkout of the repository.",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    # A child process, so that `python -m bench` sees exactly the arguments it was given.
    return subprocess.call([sys.executable, "-m", "bench", *args.bench_args], env=env)
