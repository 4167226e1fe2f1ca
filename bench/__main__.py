"""``python -m bench [NAME ...]``: run the benchmarks (all when no name is given)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )
    wanted = [a for a in argv if not a.startswith("-")] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"[ERROR] unknown benchmark(s) {unknown}; have {names}", file=sys.stderr)
        return 2
    status = 0
    for name in wanted:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== {name} ==", flush=True)
        status |= int(module.main([a for a in argv if a.startswith("-")]))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
