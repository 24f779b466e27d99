"""Generation rate of `btsbot-simulate`: alerts per second, and the time for 100,000 alerts.

    python benchmarks/simulate.py                       # interleaved rounds at --num_sources, both modes
    python benchmarks/simulate.py --scale_alerts=100000 # then one run of ~100k alerts, full mode

Two modes, run alternately so that both see the same machine load:
- packets: avro packets + truth + per-alert table (features by the ingestion code), no training-set files;
- full: everything `btsbot-simulate` writes (packets, tables, train/val/test csv + npy).
Printed per run: alerts, wall seconds, alerts/s, CPU seconds (this process + workers) per alert, the machine's
load average (other processes share the CPUs: on a busy machine the wall rate understates what an idle one does,
CPU ms per alert does not), and the extrapolated wall time for 100,000 alerts.
"""

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_sources", 250, "Sources per interleaved round (~45 alerts each).")
flags.DEFINE_integer("rounds", 2, "Interleaved rounds of each mode.")
flags.DEFINE_integer("scale_alerts", 0, "If > 0: afterwards, one full run sized for about this many alerts.")
flags.DEFINE_integer("workers", 0, "Processes (0: all CPUs).")
flags.DEFINE_integer("seed", 123, "Seed.")
flags.DEFINE_string("out", None, "Optional JSON file for the results.")
flags.DEFINE_string("tmp", None, "Scratch directory (default: a temporary directory, removed afterwards).")


def _cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _run(out: Path, num_sources: int, seed: int, full: bool) -> dict:
    from btsbot_jax.sim.pipeline import SimConfig, simulate

    shutil.rmtree(out, ignore_errors=True)
    load0 = os.getloadavg()[0]
    c0, t0 = _cpu(), time.perf_counter()
    res = simulate(out, SimConfig(num_sources=num_sources, seed=seed, workers=FLAGS.workers, training_set=full))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    n = res.num_alerts
    row = {"mode": "full" if full else "packets", "sources": num_sources, "alerts": n, "wall_s": round(wall, 2),
           "alerts_per_s": round(n / wall, 1), "cpu_ms_per_alert": round(cpu / n * 1e3, 3),
           "load_avg_1min": round((load0 + os.getloadavg()[0]) / 2, 2),
           "extrapolated_100k_s": round(wall / n * 1e5, 1),
           "stages_s": {k: round(v, 2) for k, v in res.timings.items()}}
    print(f"{row['mode']:8s} {n:7d} alerts  {wall:7.1f} s  {row['alerts_per_s']:7.1f} alerts/s  "
          f"{row['cpu_ms_per_alert']:6.2f} CPU ms/alert  load {row['load_avg_1min']:5.2f}  "
          f"-> 100k alerts in {row['extrapolated_100k_s']:.0f} s   stages {row['stages_s']}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def _main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = Path(FLAGS.tmp) if FLAGS.tmp else Path(tempfile.mkdtemp(prefix="btsbot_sim_bench_"))
    print(f"CPUs: {os.cpu_count()}, workers: {FLAGS.workers or os.cpu_count()}")
    rows = []
    try:
        for r in range(FLAGS.rounds):
            for full in (False, True):
                rows.append(_run(tmp / "run", FLAGS.num_sources, FLAGS.seed + r, full))
        for mode in ("packets", "full"):
            sel = [x for x in rows if x["mode"] == mode]
            a = sum(x["alerts"] for x in sel)
            w = sum(x["wall_s"] for x in sel)
            print(f"{mode:8s} mean: {a / w:7.1f} alerts/s -> 100,000 alerts in {1e5 / (a / w):.0f} s "
                  f"(CPU {sum(x['cpu_ms_per_alert'] * x['alerts'] for x in sel) / a:.2f} ms/alert)")
        if FLAGS.scale_alerts > 0:
            per_source = sum(x["alerts"] for x in rows) / sum(x["sources"] for x in rows)
            n_src = int(round(FLAGS.scale_alerts / per_source))
            print(f"scale run: {n_src} sources (~{per_source:.1f} alerts per source)")
            rows.append(_run(tmp / "scale", n_src, FLAGS.seed + 1000, True))
    finally:
        if not FLAGS.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if FLAGS.out:
        Path(FLAGS.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    app.run(_main)
