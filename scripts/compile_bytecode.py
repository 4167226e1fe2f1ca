"""Compile the .py files under the given folders to bytecode, a batch per process.

``python scripts/compile_bytecode.py SKIP_REGEX FOLDER...``: files whose path matches
SKIP_REGEX are left out. ``compileall -j`` hands its pool one file at a time, and on
the ~3000 files of cfn's site-packages spends half its time passing them around
(12 s here, 6.5 s in batches). Standard library only: bootstrap.sh runs it.
"""

from __future__ import annotations

import contextlib
import os
import py_compile
import re
import sys
from concurrent.futures import ProcessPoolExecutor


def sources(folders: list[str], skip: re.Pattern[str]) -> list[str]:
    found: list[str] = []
    for folder in folders:
        for here, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in names:
                path = os.path.join(here, name)
                if name.endswith(".py") and not skip.search(path):
                    found.append(path)
    return found


def compile_batch(paths: list[str]) -> None:
    for path in paths:
        # A file Python cannot compile (a template, a Python 2 leftover) stays as it is,
        # as compileall leaves it.
        with contextlib.suppress(py_compile.PyCompileError, OSError, ValueError):
            py_compile.compile(path, doraise=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: compile_bytecode.py SKIP_REGEX FOLDER...", file=sys.stderr)
        return 2
    skip, folders = re.compile(argv[0]), argv[1:]
    files = sources(folders, skip)
    batches = 4 * (os.cpu_count() or 1)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(compile_batch, [files[i::batches] for i in range(batches)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
