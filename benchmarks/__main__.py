"""`python -m benchmarks [NAME ...] [--quick] [--recipe RECIPE]`: run the benchmarks and print their tables."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import benchmarks

RESULTS = Path(".facerestore/bench")


def available() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(benchmarks.__path__)
                  if m.name.startswith("bench_"))


def table(name: str, rows: list[dict]) -> Table:
    out = Table(title=name)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))
    return out


def options(run, given: dict) -> dict:
    """The options given (not None) that `run` takes as keywords: a case's own (quality's recipe)."""
    accepted = inspect.signature(run).parameters
    return {key: value for key, value in given.items() if value is not None and key in accepted}


def main() -> None:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(names)})")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the harness, not the speed")
    parser.add_argument("--recipe", help="quality: run this recipe's part only (inpaint, masked_face, face_sr, blind)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (available: {', '.join(names)})")
    console = Console()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.names or names:
        started = time.time()
        run = importlib.import_module(f"benchmarks.bench_{name}").run
        rows = run(quick=args.quick, **options(run, {"recipe": args.recipe}))
        console.print(table(name, rows))
        (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, "quick": args.quick,
                                                           "seconds": time.time() - started}, indent=2))


if __name__ == "__main__":
    main()
