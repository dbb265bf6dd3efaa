"""Run every benchmark and print its table: ``python -m benchmarks`` (or ``./dev bench``).

``python -m benchmarks core`` runs one of them (names: core, reference, scaling). The reference
benchmark includes the Stan side when pystan is installed (``pip install -e '.[bench]'``)."""

import sys

from . import bench_core, bench_reference, bench_scaling

BENCHMARKS = {
    "core": bench_core.main,
    "reference": lambda: bench_reference.main([]),
    "scaling": bench_scaling.main,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}")
        BENCHMARKS[name]()
        print()
