"""Run the benchmark suites, print one table, and append it to BENCHMARKS.md.

python -m bench                 # every suite, full workloads, recorded
python -m bench eventlog bus    # only these suites
python -m bench --quick         # small workloads, not recorded (a smoke run)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench._harness import Context, Row, machine, render_table

ROOT = Path(__file__).resolve().parent


def suites() -> list[str]:
    return sorted(m.name[len("bench_") :] for m in pkgutil.iter_modules([str(ROOT)]) if m.name.startswith("bench_"))


async def run(names: list[str], ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        shutil.rmtree(ctx.workdir / name, ignore_errors=True)
        (ctx.workdir / name).mkdir(parents=True, exist_ok=True)
        suite_ctx = Context(quick=ctx.quick, repeats=ctx.repeats, workdir=ctx.workdir / name)
        try:
            got = await module.run(suite_ctx)
        finally:
            shutil.rmtree(ctx.workdir / name, ignore_errors=True)
        for row in got:
            print(f"   {row.name}: {row.value:,.2f} {row.unit} {row.target} {row.peer}", file=sys.stderr, flush=True)
        rows.extend(got)
        print(f"   ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suites", nargs="*", help=f"suites to run (default: all of {', '.join(suites())})")
    parser.add_argument("--quick", action="store_true", help="small workloads; the table is not recorded")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    names = args.suites or suites()
    unknown = sorted(set(names) - set(suites()))
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}; known: {', '.join(suites())}")
    ctx = Context(quick=args.quick, repeats=1 if args.quick else args.repeats)
    rows = asyncio.run(run(names, ctx))
    table = render_table(rows)
    header = (
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {', '.join(names)}\n\n"
        f"Machine: {machine()}. Medians of {ctx.repeats} runs.\n\n"
    )
    print()
    print(header + table)
    if not (args.quick or args.no_record):
        bench_md = ROOT.parent / "BENCHMARKS.md"
        if not bench_md.exists():
            bench_md.write_text("# Benchmarks\n\nRecorded by `make bench`, newest last.\n")
        with bench_md.open("a") as fh:
            fh.write("\n" + header + table + "\n")
        print(f"\nappended to {bench_md.name}")
    misses = [r for r in rows if r.met is False]
    if misses:
        print(f"{len(misses)} target(s) not met: " + "; ".join(f"{r.suite}/{r.name}" for r in misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
