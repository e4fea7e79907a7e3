"""Throughput of the sandboxed executor pool against a fresh `python -c` per program.

The same 500 programs (300 arithmetic, 100 sympy, 100 numpy; the kind of code a step holds)
run three ways:
- the pool: `CodeExecutor(num_workers=2)`, medians of several runs;
- the peer: a fresh `python -c` per program, two at a time (both cores), on 100 of them (the
  same mix) because a fresh interpreter importing sympy costs about a second;
- the limit: plain in-process `exec` of each program, no isolation, one core; the pool's share
  of it is `limit_pct` (two workers on two cores can exceed 100).
Also: simple programs/s (2000 one-line arithmetic programs), and the time from submitting a hung
program to the next result on a one-worker pool (target: timeout + 0.5 s).

    python benchmarks/executor.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import random
import statistics
import subprocess
import sys
import time

from rstar_jax.steps.executor import CodeExecutor

TIMEOUT_S = 1.0


def programs() -> list[str]:
    rng = random.Random(0)
    out = []
    for i in range(500):
        a, b, c = rng.randint(2, 999), rng.randint(2, 999), rng.randint(2, 99)
        if i % 5 in (0, 1, 2):
            out.append(f"# Step 1: totals\ntotal = {a} * {c} + {b}\n"
                       f"# Step 2: per item\nper = total / {c}\nprint(round(per, 4))")  # fmt: skip
        elif i % 5 == 3:
            out.append(f"from sympy import symbols, Eq, solve, Rational\nx = symbols('x')\n"
                       f"sol = solve(Eq({c} * x + {a}, {b}), x)\nprint(sol[0], Rational({a}, {b}))")  # fmt: skip
        else:
            out.append(f"import numpy as np\nv = np.arange({a}) % {c}\n"
                       f"print(v.sum(), float(np.mean(v ** 2)))")  # fmt: skip
    return out


def median_rate(fn, count: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def fresh_process(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def in_process(code: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})  # noqa: S102
    return buffer.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    mix = programs()
    simple = [f"print({i} * 7 + 3)" for i in range(2000)]
    sample = [p for i, p in enumerate(mix) if i % 25 < 5]  # 100 programs, the same mix

    with CodeExecutor(num_workers=2, timeout_s=5.0) as ex:
        results = ex.run(mix)
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        pool_mix = median_rate(lambda: ex.run(mix), len(mix), args.repeats)
        pool_simple = median_rate(lambda: ex.run(simple), len(simple), args.repeats)
        sandbox = ex.sandbox

    in_process(mix[3])  # imports paid once, as the pool's workers pay them at start
    in_process(mix[4])
    limit = median_rate(lambda: [in_process(p) for p in mix], len(mix), args.repeats)
    expected = [in_process(p) for p in sample]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        fresh = list(threads.map(fresh_process, sample))
    peer = len(sample) / (time.perf_counter() - start)
    assert fresh == expected == [r.stdout for i, r in enumerate(results) if i % 25 < 5]

    recoveries = []
    with CodeExecutor(num_workers=1, timeout_s=TIMEOUT_S) as ex:
        ex.run(["print(1)"])
        for _ in range(3):
            start = time.perf_counter()
            hung, after = ex.run(["while True:\n    pass", "print(2)"])
            recoveries.append(time.perf_counter() - start)
            assert hung.error.startswith("TimeoutError") and after.stdout == "2\n"
            time.sleep(1.5)  # the new spare finishes starting, as it would between batches
    recovery = statistics.median(recoveries)

    print(f"sandbox: {sandbox}")
    print(f"{'what':46s} {'programs/s':>12s}")
    print(f"{'pool, 2 workers, 500 mixed programs':46s} {pool_mix:12.0f}")
    print(f"{'fresh python -c per program, 2 at a time':46s} {peer:12.1f}")
    print(f"{'in-process exec, no isolation (limit)':46s} {limit:12.0f}")
    print(f"{'pool, 2 workers, 2000 simple programs':46s} {pool_simple:12.0f}   target >= 2000")
    print(f"pool / fresh process: {pool_mix / peer:.0f}x   target >= 30x")
    print(f"hung program -> next result: {recovery:.3f} s (timeout {TIMEOUT_S:g} s; "
          f"target <= {TIMEOUT_S + 0.5:g} s)")  # fmt: skip
    print(f"RESULT name=executor_programs value={pool_mix:.0f} unit=programs/s peer={peer:.1f} "
          f"ratio={pool_mix / peer:.1f} limit_pct={100 * pool_mix / limit:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
