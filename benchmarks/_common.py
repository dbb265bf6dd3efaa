"""Shared benchmark helpers: machine/version header, timing, peak memory of a child process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time


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
    body = ["| " + " | ".join(format(r[k], f) if isinstance(r[k], (int, float)) else str(r[k]) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
