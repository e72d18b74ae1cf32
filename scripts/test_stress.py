"""Run the cross-process tests several times on a machine kept busy, and count passes per test.

    python scripts/test_stress.py [--rounds 5] [--load 2] [--nice 0] [-- PYTEST_ARGS...]   (make test-stress)

CI runs `make test` on a loaded 2-core machine, where a test that assumes an ordering or a timing
ROS 2 does not promise fails now and then. This finds such tests before CI does: it starts `--load`
busy-loop processes (one per core by default, at the test processes' own priority unless `--nice`
says otherwise), runs pytest `--rounds` times on the ROS and reliability tests (or the paths given
after `--`), stops the load, prints a table of pass/fail counts per test and writes it as JSON.
Exit code 0 only when every test passed in every round.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ["tests/node", "tests/package", "tests/reliability"]


def _busy(nice: int) -> None:
    os.nice(nice)
    while True:
        pass


def outcomes(junit_xml: Path) -> dict[str, str]:
    """test id -> "passed" | "failed" | "skipped" from a pytest junit XML file."""
    result = {}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[name] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy-loop processes (0 = no load)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the busy loops (0 = same as the tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "test_stress.json")
    parser.add_argument("pytest_args", nargs="*", help=f"after --: pytest paths/options (default {DEFAULT_TESTS})")
    args = parser.parse_args()
    pytest_args = args.pytest_args or DEFAULT_TESTS
    args.out.parent.mkdir(parents=True, exist_ok=True)

    load = [mp.Process(target=_busy, args=(args.nice,), daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rounds = []
    try:
        for r in range(1, args.rounds + 1):
            junit = args.out.with_name(f"{args.out.stem}_round{r}.xml")
            t0 = time.monotonic()
            code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    f"--junitxml={junit}", *pytest_args], cwd=ROOT)
            seconds = time.monotonic() - t0
            got = outcomes(junit) if junit.is_file() else {}
            for name, outcome in got.items():
                counts[name][outcome] += 1
            failed = sorted(n for n, o in got.items() if o == "failed")
            rounds.append({"round": r, "exit_code": code, "seconds": round(seconds, 1), "failed": failed})
            print(f"[stress] round {r}/{args.rounds}: exit {code}, {len(got)} tests, {len(failed)} failed, "
                  f"{seconds:.0f} s under {args.load} busy loops", flush=True)
    finally:
        for p in load:
            p.terminate()
        for p in load:
            p.join()

    flaky = {n: dict(c) for n, c in counts.items() if c.get("failed")}
    width = max((len(n) for n in counts), default=10)
    print(f"\n{'test':<{width}}  passed  failed  skipped")
    for name in sorted(counts, key=lambda n: (-counts[n].get("failed", 0), n)):
        c = counts[name]
        print(f"{name:<{width}}  {c.get('passed', 0):>6}  {c.get('failed', 0):>6}  {c.get('skipped', 0):>7}")
    ok = all(r["exit_code"] == 0 for r in rounds) and not flaky
    summary = {"rounds": rounds, "load_processes": args.load, "nice": args.nice, "pytest_args": pytest_args,
               "cpu_count": os.cpu_count(), "tests": {n: dict(c) for n, c in sorted(counts.items())},
               "failed_tests": flaky, "all_passed": ok}
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"\n[stress] {len(counts)} tests x {args.rounds} rounds: "
          f"{'every test passed every round' if ok else f'{len(flaky)} test(s) failed at least once'}; "
          f"JSON: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
