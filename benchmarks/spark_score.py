"""btsbot-spark-score on local[1] and local[2] against btsbot-score, on the same simulated archive and machine.

    python benchmarks/spark_score.py             # >= 50,000 simulated alerts (1,300 sources)
    python benchmarks/spark_score.py --quick     # smoke run: ~30 sources, ~1,300 alerts

Each command runs as a user runs it (a fresh process: imports, JVM and Python workers, model loading, compilation,
reading the avro files, writing the outputs), so the wall-clock rates include every fixed cost; the rates inside the
run (the summaries' own `seconds`, from the first file read to the last row written) are reported beside them. The
outputs are checked against btsbot-score's (same counts, same candids, max |score difference|), so the benchmark
also re-verifies parity at scale. Reported: alerts/s of each run, Spark's overhead (btsbot-score rate / Spark rate,
per master) and the scaling from 1 to 2 local cores. The model is a randomly initialised mm_cnn (the v1.0.1
architecture: the same work per alert) unless --checkpoint is given. The load average before and after every run is
recorded: on a shared machine it says how much the numbers can be trusted.

Cores: by default each command runs under `taskset -c 0..N-1` (local[N] on N cores; btsbot-score once per N, on
the same cores, as the overhead's reference). Unpinned (--nopin_cores), a local[1] job's single Python worker
already spreads the model over every core through XLA's thread pool, so local[1] -> local[2] shows no scaling on a
small machine (results/spark_score_cpu_unpinned.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke mode: ~30 simulated sources (checks structure, not speed).")
flags.DEFINE_integer("num_sources", 1300, "Simulated sources (~40 alerts each: 1,300 give >= 50,000 alerts).")
flags.DEFINE_integer("seed", 0, "Simulation seed.")
flags.DEFINE_string("workdir", None, "Where the simulated archive and outputs go (default: a temporary folder); an "
                    "archive already there (sim/alerts) is reused.")
flags.DEFINE_string("checkpoint", None, "Model directory (default: a randomly initialised mm_cnn).")
flags.DEFINE_list("masters", ["local[1]", "local[2]"], "Spark masters to time.")
flags.DEFINE_integer("batch_size", 256, "Alerts per model call (btsbot-score's default).")
flags.DEFINE_bool("pin_cores", True, "Run each command on exactly the cores it is given (taskset -c 0..N-1 for "
                  "local[N], btsbot-score on the same N cores), so local[1] is one core and local[2] two; without "
                  "it every run sees the whole machine (XLA's thread pool in a local[1] worker already uses every "
                  "core, which hides the scaling).")
flags.DEFINE_string("out_dir", str(common.RESULTS_DIR), "Where the JSON goes.")
flags.DEFINE_string("name", "spark_score_cpu", "JSON file name (without .json).")


def _cores(master: str) -> int:
    """N of local[N] / local[N,F]."""
    inner = master[master.index("[") + 1:master.index("]")].split(",")[0]
    return os.cpu_count() if inner == "*" else int(inner)


def _pinned(cmd: list[str], n: int | None) -> list[str]:
    return cmd if n is None else ["taskset", "-c", f"0-{n - 1}", *cmd]


def _run(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess, list, list]:
    la0 = common.load_average()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return wall, p, la0, common.load_average()


def _compare(ref: Path, spark_dir: Path) -> dict:
    import pandas as pd

    a = pd.read_parquet(ref)
    b = pd.read_parquet(spark_dir / "scores")
    m = a.merge(b, on="candid", how="outer", indicator=True, suffixes=("_ref", "_spark"))
    both = m["_merge"] == "both"
    err = np.abs(m.loc[both, "score_ref"].to_numpy(float) - m.loc[both, "score_spark"].to_numpy(float))
    return {"same_candids": bool(both.all()), "rows": int(len(b)), "max_abs_score_diff": float(err.max(initial=0.0))}


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint write at INFO
    info = common.machine_info()
    num_sources = 30 if FLAGS.quick else FLAGS.num_sources
    work = Path(FLAGS.workdir or tempfile.mkdtemp(prefix="btsbot_spark_bench_"))
    sim = work / "sim"
    alerts = sim / "alerts"
    if not any(alerts.glob("*.avro")):
        from btsbot_jax.sim.pipeline import SimConfig, simulate

        common.log(f"simulating {num_sources} sources into {sim}")
        simulate(sim, SimConfig(num_sources=num_sources, seed=FLAGS.seed, training_set=False))
    checkpoint = FLAGS.checkpoint
    if checkpoint is None:
        from btsbot_jax.models import create_model, default_model_config
        from btsbot_jax.models.model_dir import make_model_card, save_model

        checkpoint = str(work / "model")
        if not Path(checkpoint).exists():
            cfg = default_model_config("mm_cnn")
            save_model(create_model(cfg, seed=0), checkpoint, make_model_card(cfg, version="bench-random"))
    repo = str(common.REPO)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
           "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}

    runs = {}
    pins = sorted({_cores(m) for m in FLAGS.masters}) if FLAGS.pin_cores else [None]
    refs = {}
    for pin in pins:  # btsbot-score on the same cores as each Spark master
        name = "btsbot-score" if pin is None else f"btsbot-score[{pin}]"
        ref_out = work / f"btsbot_score{'' if pin is None else pin}.parquet"
        summary = work / f"btsbot_score{'' if pin is None else pin}_summary.json"
        common.log(f"{name} ...")
        wall, p, la0, la1 = _run(_pinned([sys.executable, "-m", "btsbot_jax.cli.score", f"--checkpoint={checkpoint}",
                                          f"--input={alerts}", f"--output={ref_out}",
                                          f"--batch_size={FLAGS.batch_size}", f"--summary_json={summary}",
                                          "--noprogress"], pin), env)
        s = json.loads(summary.read_text())
        n = s["records_read"]
        runs[name] = {"cores": pin, "wall_s": wall, "alerts_per_s_wall": n / wall, "seconds_in_run": s["seconds"],
                      "alerts_per_s_in_run": s["alerts_per_s"], "load_average_before": la0,
                      "load_average_after": la1, "summary": s}
        refs[pin] = (name, ref_out)
        common.log(f"{name}: {n} alerts in {wall:.1f} s ({n / wall:.1f} alerts/s)")
    derived = {}
    for master in FLAGS.masters:
        pin = _cores(master) if FLAGS.pin_cores else None
        ref_name, ref_out = refs[pin]
        out = work / f"spark_{master.replace('[', '_').replace(']', '').replace(',', '_')}"
        common.log(f"btsbot-spark-score --master={master} ...")
        wall, p, la0, la1 = _run(_pinned([sys.executable, "-m", "btsbot_jax.cli.spark_score",
                                          f"--checkpoint={checkpoint}", f"--input={alerts}", f"--output={out}",
                                          f"--master={master}", f"--batch_size={FLAGS.batch_size}",
                                          "--spark_conf=spark.ui.enabled=false,spark.ui.showConsoleProgress=false"],
                                         pin), env)
        ss = json.loads((out / "summary.json").read_text())
        s = runs[ref_name]["summary"]
        for k in ("records_read", "scored", "rejected", "duplicates"):
            if ss[k] != s[k]:
                raise SystemExit(f"{master}: {k} {ss[k]} != btsbot-score's {s[k]}")
        runs[master] = {"cores": pin, "wall_s": wall, "alerts_per_s_wall": n / wall, "seconds_in_run": ss["seconds"],
                        "alerts_per_s_in_run": ss["alerts_per_s"], "load_average_before": la0,
                        "load_average_after": la1, "parity": _compare(ref_out, out), "summary": ss}
        common.log(f"{master}: {wall:.1f} s ({n / wall:.1f} alerts/s), parity {runs[master]['parity']}")
        derived[f"overhead_{master}"] = runs[ref_name]["alerts_per_s_wall"] / runs[master]["alerts_per_s_wall"]
        derived[f"overhead_in_run_{master}"] = (runs[ref_name]["alerts_per_s_in_run"]
                                                / runs[master]["alerts_per_s_in_run"])
    if {"local[1]", "local[2]"} <= set(FLAGS.masters):
        derived["scaling_local1_to_local2"] = (runs["local[2]"]["alerts_per_s_wall"]
                                               / runs["local[1]"]["alerts_per_s_wall"])
        derived["scaling_in_run_local1_to_local2"] = (runs["local[2]"]["alerts_per_s_in_run"]
                                                      / runs["local[1]"]["alerts_per_s_in_run"])
    if FLAGS.pin_cores and {1, 2} <= set(refs):
        derived["scaling_btsbot_score_1_to_2_cores"] = (runs["btsbot-score[2]"]["alerts_per_s_wall"]
                                                        / runs["btsbot-score[1]"]["alerts_per_s_wall"])
    report = {
        "benchmark": "spark_score",
        "machine": common.finish_machine_info(info),
        "quick": FLAGS.quick,
        "alerts": n,
        "num_sources": num_sources,
        "batch_size": FLAGS.batch_size,
        "checkpoint": "random mm_cnn (v1.0.1 architecture)" if FLAGS.checkpoint is None else FLAGS.checkpoint,
        "pin_cores": FLAGS.pin_cores,
        "alerts_target_met": n >= 50_000,
        "notes": "overhead = btsbot-score alerts/s / btsbot-spark-score alerts/s on the same cores (wall clock of the "
                 "whole command; *_in_run: the summaries' own timing). scaling = local[2] / local[1] alerts/s. "
                 "pin_cores: each command ran under taskset on cores 0..N-1.",
        "runs": runs,
        "derived": derived,
    }
    suffix = ("_quick" if FLAGS.quick else "") + ("" if FLAGS.pin_cores else "_unpinned")
    path = common.write_json(Path(FLAGS.out_dir) / f"{FLAGS.name}{suffix}.json", report)
    common.log(f"wrote {path}: {json.dumps(derived)}")


if __name__ == "__main__":
    app.run(main)
