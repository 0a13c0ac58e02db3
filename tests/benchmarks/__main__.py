"""Run every ``bench_*.py`` module's ``main()``: ``python -m tests.benchmarks [NAME ...]`` (names filter)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path


def bench_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))


# Long runs (the full real-data reproduction, ~30 min) only when named: `make bench-real`.
ON_REQUEST = {"bench_real"}


def main(argv: list[str] | None = None) -> int:
    wanted = list(sys.argv[1:] if argv is None else argv)
    names = [n for n in bench_modules()
             if (not wanted and n not in ON_REQUEST) or any(w in n for w in wanted)]
    if not names:
        print(f"no benchmark matches {wanted}; available: {', '.join(bench_modules())}")
        return 2
    from tests.benchmarks import figures

    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        figures.start(name)
        started = time.perf_counter()
        try:
            importlib.import_module(f"{__package__}.{name}").main()
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - started:.1f} s{' (FAILED)' if name in failed else ''}\n",
              flush=True)
    path, every = figures.write(figures.figures(), names, failed)
    print(f"every figure ({len(every)}), also in {path}:\n{figures.table(every)}")
    missed = [f.name for f in every if f.met is False]
    if missed:
        print(f"goals missed: {'; '.join(missed)}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
