"""What each hostile message costs the scorer's ingestion (decode_avro_bytes + prepare_batch): wall and CPU time,
peak traced Python/numpy memory (tracemalloc) and growth of the process's peak RSS, one fresh process per case;
plus the fuzz rate of tests/test_fuzz.py's seeded mutants.

    .venv/bin/python benchmarks/hostile.py                      # -> benchmarks/results/hostile_cpu.json
    .venv/bin/python benchmarks/hostile.py --before=/path/to/old/checkout --timeout=60
        # also runs each case against another checkout's btsbot_jax (e.g. the commit before the limits), each in a
        # child process with a time limit and a 3 GiB address-space cap: an unbounded case shows as killed.

The cases are the ones tests/hostile_packets.py builds (a 463 kB gzip bomb in the science stamp, a 2^40-item block
of nulls, oversized strings, deep and recursive schemas, a deflate bomb, a framed LSST message, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS_DIR, load_average, write_json  # noqa: E402

CHILD = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, {tests!r})
import hostile_packets as H
from btsbot_jax.ingest.features import prepare_batch
from btsbot_jax.ingest.readers import SCORING_PROJECTION, decode_avro_bytes
data = H.HOSTILE[{case!r}]()
run = lambda: prepare_batch(decode_avro_bytes(data, "case", projection=SCORING_PROJECTION))
prepare_batch(decode_avro_bytes(H.base_packet(), "warm", projection=SCORING_PROJECTION))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
walls, cpus = [], []
for _ in range(3):
    t0, c0 = time.perf_counter(), time.process_time()
    p = run()
    walls.append(time.perf_counter() - t0); cpus.append(time.process_time() - c0)
    if walls[-1] > 1.0:
        break
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start(); run(); peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
print(json.dumps({{"bytes": len(data), "wall_ms": min(walls) * 1e3, "cpu_ms": min(cpus) * 1e3,
                  "traced_peak_mb": peak / 2**20, "rss_growth_mb": (rss1 - rss0) / 1024,
                  "scored": len(p.info), "rejected": len(p.rejected),
                  "reason": p.rejected[0].reason[:240] if p.rejected else None}}))
"""


def run_case(case: str, code_root: Path, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    src = CHILD.format(tests=str(REPO / "tests"), case=case)
    cmd = [sys.executable, "-c", f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({3 << 30}, {3 << 30}))\n"
           + src]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=code_root)
    except subprocess.TimeoutExpired:
        return {"outcome": f"still running after {timeout:.0f} s (killed)"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"outcome": f"process failed after {time.perf_counter() - t0:.1f} s: {last[:200]}"}
    return {"outcome": "ok", **json.loads(out.stdout.strip().splitlines()[-1])}


def fuzz_rate(n: int) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import test_fuzz

    t0 = time.perf_counter()
    out = test_fuzz._fuzz(n, seed=0)
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, help="another checkout to measure the same cases against")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case and checkout")
    ap.add_argument("--fuzz", type=int, default=2000, help="mutants for the fuzz rate (0: skip)")
    ap.add_argument("--json", type=Path, default=RESULTS_DIR / "hostile_cpu.json")
    args = ap.parse_args()
    os.environ.setdefault("BTSBOT_SHARED", str(REPO.parent / "shared"))
    sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's package, whatever is installed
    import hostile_packets as H

    result = {"benchmark": "hostile", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "load_average_at_start": load_average(), "cases": {}}
    for case in H.HOSTILE:
        row = {"after": run_case(case, REPO, args.timeout)}
        if args.before:
            row["before"] = run_case(case, args.before, args.timeout)
        result["cases"][case] = row
        print(case, json.dumps(row), flush=True)
    write_json(args.json, result)
    if args.fuzz:
        result["fuzz"] = fuzz_rate(args.fuzz)
        print("fuzz", json.dumps(result["fuzz"]), flush=True)
    result["load_average_at_end"] = load_average()
    write_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
