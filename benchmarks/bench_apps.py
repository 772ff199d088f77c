"""`llmos app install` and `llmos app run` wall times through the CLI, as a person runs them,
against `llmos run` of the same entry file with the same grants (the baseline for launch).

    python benchmarks/bench_apps.py [--n 5]

Each turn gets a fresh data dir and no config file: `llmos app install --yes` of the shipped
hello app into it, then `llmos app run hello 1 2 3` (the installed copy of main.py, with
exactly the app's grants: calc, time.now), then `llmos run main.py 1 2 3` of the shipped
entry file with `--cap calc --cap time.now` (on top of the default grants, which already
hold both). The three take turns, so the machine's drift falls on all; medians of n turns.
Every command is a fresh `llmos` process: most of each time is Python start and imports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NUMBERS = ["1", "2", "3"]


def llmos_command() -> list[str]:
    """The `llmos` script of this interpreter's environment, as a person types it."""
    script = shutil.which("llmos", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "llmos"]


def timed(argv: list[str], env: dict[str, str], expect: str) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if r.returncode != 0 or expect not in r.stdout:
        raise SystemExit(f"{' '.join(argv[1:])} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    n = ap.parse_args().n

    from llmos.apps import SHIPPED

    hello = SHIPPED / "hello"
    llmos = llmos_command()
    caps = ["--cap", "calc", "--cap", "time.now"]
    sides: dict[str, list[float]] = {
        "app install --yes": [],
        "app run hello": [],
        "run main.py (baseline)": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n + 1):  # the first turn is a warm-up (bytecode, page cache)
            env = {
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "LLMOS_CONFIG": str(Path(tmp) / "absent.toml"),
                "LLMOS_DATA_DIR": str(Path(tmp) / f"data{i}"),
            }
            walls = [
                timed([*llmos, "app", "install", str(hello), "--yes"], env, "installed hello"),
                timed([*llmos, "app", "run", "hello", *NUMBERS], env, "1+2+3 = 6"),
                timed([*llmos, "run", *caps, str(hello / "main.py"), *NUMBERS], env, "1+2+3 = 6"),
            ]
            if i:
                for xs, wall in zip(sides.values(), walls, strict=True):
                    xs.append(wall)

    print(f"hello app through the CLI, n={n} turns (after one warm-up), fresh data dir each")
    for label, xs in sides.items():
        each = " ".join(f"{x * 1e3:.0f}" for x in xs)
        print(f"  {label:24s} median {statistics.median(xs) * 1e3:6.0f} ms  ({each})")
    run, base = (statistics.median(sides[k]) for k in ("app run hello", "run main.py (baseline)"))
    print(f"  app run against run: {(run - base) * 1e3:+.0f} ms, ratio {run / base:.2f}x")


if __name__ == "__main__":
    main()
