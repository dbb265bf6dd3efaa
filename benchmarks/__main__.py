"""Run every benchmark and print its table: ``python -m benchmarks`` (or ``./dev bench``).

``python -m benchmarks core`` runs one of them (names: core, reference)."""

import sys

from . import bench_core

BENCHMARKS = {"core": bench_core.main}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}")
        BENCHMARKS[name]()
        print()
