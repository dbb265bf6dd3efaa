"""Run the benchmarks and print their tables: ``python -m benchmarks`` (or ``./dev bench``) runs
every one with its defaults; ``python -m benchmarks NAME [options]`` runs one (names: core,
reference, scaling, dosing, checkpoints) and passes the options on (``python -m benchmarks reference --help``).
The reference benchmark includes the Stan side when pystan is installed (``pip install -e '.[bench]'``)."""

import sys

BENCHMARKS = ("core", "reference", "scaling", "dosing", "checkpoints")


def run(name: str, argv: list[str]) -> None:
    """Run ``benchmarks/bench_NAME.py`` as a script with ``argv`` as its options."""
    import runpy

    sys.argv = [f"benchmarks.bench_{name}", *argv]
    runpy.run_module(f"benchmarks.bench_{name}", run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        name, argv = sys.argv[1], sys.argv[2:]
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; expected one of {BENCHMARKS} (then its options).")
        run(name, argv)
    else:
        for name in BENCHMARKS:
            run(name, [])
            print()
