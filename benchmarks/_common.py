"""Shared benchmark helpers: machine/version header, timing, peak memory of a child process, and
the ratios recorded in ``recorded.json`` that each benchmark prints its own beside."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RECORDED = Path(__file__).with_name("recorded.json")
"""The ratios of benchmarks/RESULTS.md, by benchmark, ratio and row; ``--record`` rewrites a benchmark's."""
TOLERANCE = 0.25
"""A ratio further than this (relative) from its record is listed as moved: the same code's
interleaved per-gradient ratios varied by up to about 20 % between runs on the shared 2-core
machines (expm 1.33-1.6x the closed form, RESULTS.md section 1)."""


def header() -> str:
    import arviz
    import diffrax
    import jax
    import numpyro

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = ", ".join(str(d) for d in jax.devices())
    return (
        f"machine: {cpu}, {os.cpu_count()} cores; jax devices: {devices}\n"
        f"versions: python {platform.python_version()}, jax {jax.__version__}, numpyro {numpyro.__version__}, "
        f"diffrax {diffrax.__version__}, arviz {arviz.__version__}"
    )


def best_of(fn, repeat: int = 5) -> float:
    """Best wall time of ``fn()`` (which must block until done) over ``repeat`` calls, seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_child(module: str, args: list[str]) -> dict:
    """Run ``python -m module args`` in a fresh process; it prints one JSON line as its last line.
    Adds the child's peak resident memory (MiB) as ``peak_mib``."""
    cmd = [sys.executable, "-c",
           "import resource, runpy, sys; sys.argv = sys.argv[1:]; "
           "runpy.run_module(sys.argv[0], run_name='__main__')\n"
           "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
           module, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {module} {args} failed:\n{out.stderr[-3000:]}")
    lines = out.stdout.strip().splitlines()
    result = json.loads([line for line in lines if line.startswith("{")][-1])
    result["peak_mib"] = int([line for line in lines if line.startswith("PEAK")][-1].split()[1]) / 1024
    return result


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (key, title, format)."""
    head = "| " + " | ".join(t for _, t, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k, math.nan), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _cell(value, spec: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def recorded_columns(key: str) -> list[tuple[str, str, str]]:
    """Table columns for the record of ratio ``key`` and the change from it (see ``against_recorded``)."""
    return [(f"recorded_{key}", "recorded", ".2f"), (f"change_{key}", "change", "+.0%")]


def against_recorded(bench: str, rows: list[dict], key: str, name, record: bool = False,
                     path: Path = RECORDED) -> None:
    """Set each row's ``recorded_KEY`` (the ratio ``row[key]`` recorded for row ``name(row)`` of
    ``bench``; NaN where none is) and ``change_KEY`` (now / recorded - 1). ``record=True`` first
    replaces the record of ``key`` with the rows' ratios (NaN ones left out), written atomically
    with the machine and the date."""
    book = json.loads(path.read_text()) if path.exists() else {}
    if record:
        entry = book.setdefault(bench, {})
        entry[key] = {name(r): round(float(r[key]), 3) for r in rows if not math.isnan(float(r[key]))}
        entry["_recorded"] = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {header().splitlines()[0]}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(book, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    record_of = book.get(bench, {}).get(key, {})
    for r in rows:
        r[f"recorded_{key}"] = then = record_of.get(name(r), math.nan)
        r[f"change_{key}"] = float(r[key]) / then - 1.0


def recorded_summary(bench: str, rows: list[dict], keys: list[str], name, path: Path = RECORDED) -> str:
    """Whether the ratios ``keys`` of ``rows`` (after ``against_recorded``) kept their record: one
    line when all did, else a line per ratio that moved by more than ``TOLERANCE``."""
    when = json.loads(path.read_text()).get(bench, {}).get("_recorded", "never") if path.exists() else "never"
    compared, moved = 0, []
    for key in keys:
        for r in rows:
            change = r[f"change_{key}"]
            if math.isnan(change):
                continue
            compared += 1
            if abs(change) > TOLERANCE:
                moved.append(f"- {key} of {name(r)}: {float(r[key]):.2f}, recorded {r[f'recorded_{key}']:.2f} "
                             f"({change:+.0%})")
    if not compared:
        return f"Ratios vs benchmarks/{path.name}: none recorded for {bench} (run with --record to record them)."
    if not moved:
        return (f"Ratios vs benchmarks/{path.name} (recorded {when}): all {compared} within {TOLERANCE:.0%} "
                "of their record.")
    return "\n".join([f"Ratios vs benchmarks/{path.name} (recorded {when}): {len(moved)} of {compared} MOVED by "
                      f"more than {TOLERANCE:.0%}:", *moved])
