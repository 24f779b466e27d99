"""Pairwise inference benchmark: every ratio from two runtimes alone in their own fresh process.

    python benchmarks/pairwise.py            # all pairs, batch 1, 64, 512 (about 6-7 min on an idle 2-core CPU)
    python benchmarks/pairwise.py --quick    # smoke run (structure check, not a measurement)
    python benchmarks/pairwise.py --pairs=jax_vs_tf,aa_jax

Why pairwise: a run that interleaves many runtimes in one process lets the thread pools of one (ONNX Runtime's
spinning intra-op threads above all) hold the cores while the next one is timed, which biases every ratio. Here
each pair runs in a new Python process started for it (nothing else of ours holds a thread pool), the two runtimes
alternate slice by slice (A B, then B A, ...) so drift of the machine hits both alike, and ONNX Runtime sessions are
built with spinning off (`session.intra_op.allow_spinning=0`, inter-op too; btsbot-score's OnnxScorer default).

Pairs (A vs B; the ratio is A's throughput over B's, per round, so both sides saw the same moment of the machine):
  jax_vs_tf     load_scorer on the imported v1.0.1 weights vs the published v1.0.1 SavedModel (what Kowalski calls)
  jax_vs_ort    the JAX scorer (btsbot-score's fastest runtime here) vs ONNX Runtime on the v1.0.1 ONNX export
  int8_vs_ort   the int8 QDQ export (btsbot-export --format=onnx_int8) vs the float32 ONNX export, both ORT
  aa_jax        the JAX scorer vs a second JAX scorer of the same model: the method's own bias, should be 1.00
  aa_ort        ONNX Runtime vs a second session of the same model: idem
  aa_tf         TF v1.0.1 vs TF v1.0.1: idem (only with --pairs)
  v2_vs_v1_jax  BTSbot v2 ConvNeXt-pico fusion (frozen_fusion) vs v1.0.1 mm_cnn, both the JAX scorer: what moving
                to v2 costs a broker (only with --pairs; also in --v2)
  v2_vs_v1_ort  the same two models, both exported to ONNX and run by ONNX Runtime (idem)

The compute limit (a jitted 1024x1024 float32 matmul, common.matmul_gflops) is measured in its own process before
and after the pairs; each runtime's fraction of it is its alerts/s x FLOPs per alert / that GFLOP/s.
Writes pairwise_<backend>.json (every round's figures) and pairwise_<backend>.md (the table for the docs).
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
flags.DEFINE_bool("quick", False, "Smoke mode: batch 1 and 64, 2 short rounds, pairs aa_ort and int8_vs_ort.")
flags.DEFINE_list("pairs", [], "Pairs to run (default: jax_vs_tf, jax_vs_ort, int8_vs_ort, aa_jax, aa_ort).")
flags.DEFINE_list("batch_sizes", ["1", "64", "512"], "Batch sizes.")
flags.DEFINE_integer("rounds", 6, "Rounds per batch size (each round times A then B, or B then A).")
flags.DEFINE_float("slice_seconds", 1.0, "Seconds each runtime runs per round (at least 2 calls; 1 at batch >= 256).")
flags.DEFINE_string("checkpoint", None, "Model directory (default: v1.0.1 imported from ../shared/data).")
flags.DEFINE_string("int8", None, "An onnx_int8 export directory to measure (default: quantise the ONNX export here "
                    "with quantize.DEFAULT_CONFIG, calibrated on simulated-like benchmark inputs; the speed of the "
                    "graph does not depend on the calibration ranges).")
flags.DEFINE_string("v2_checkpoint", None, "The v2 model of the v2_* pairs (default: the ConvNeXt-pico fusion "
                    "fixture of ../shared/data imported with btsbot-import-torch, else a freshly initialised "
                    "configs/frozen_fusion model: the speed does not depend on the weights).")
flags.DEFINE_bool("v2", False, "Run the v2 pairs (v2_vs_v1_jax, v2_vs_v1_ort) instead of the default pairs.")
flags.DEFINE_string("out_dir", str(common.RESULTS_DIR), "Where the JSON and markdown go.")
flags.DEFINE_string("tag", None, "File name stem (default pairwise_<backend>[_quick]).")
# internal: one pair in this (fresh) process
flags.DEFINE_string("worker", None, "(internal) run one pair and write its JSON to --worker_out.")
flags.DEFINE_string("worker_out", None, "(internal)")
flags.DEFINE_string("workdir", None, "(internal) prepared model/export directories.")

PAIRS = {
    "jax_vs_tf": ("jax", "tf_v101"),
    "jax_vs_ort": ("jax", "onnx"),
    "int8_vs_ort": ("onnx_int8", "onnx"),
    "aa_jax": ("jax", "jax"),
    "aa_ort": ("onnx", "onnx"),
    "aa_tf": ("tf_v101", "tf_v101"),
    "v2_vs_v1_jax": ("jax_v2", "jax"),
    "v2_vs_v1_ort": ("onnx_v2", "onnx"),
}
DEFAULT_PAIRS = ("jax_vs_tf", "jax_vs_ort", "int8_vs_ort", "aa_jax", "aa_ort")
V2_PAIRS = ("v2_vs_v1_jax", "v2_vs_v1_ort")
TARGETS = {"jax_vs_tf": 1.0, "jax_vs_ort": 1.0, "int8_vs_ort": 2.0, "v2_vs_v1_jax": 1.0}
TARGET_BATCHES = {"v2_vs_v1_jax": (64, 512)}  # issue: v2 pico fusion >= v1 mm_cnn at batch 64 and 512 (not 1)


# ----------------------------------------------------------------------------------------------- one pair
def _runtime(name: str, work: Path, batches: list[int]):
    """A zero-argument-per-batch factory: name -> callable(t, m) -> scores, blocking until they are on the host."""
    if name in ("jax", "jax_v2"):
        from btsbot_jax.inference.scorer import DEFAULT_BUCKETS, load_scorer

        s = load_scorer(work / ("model" if name == "jax" else "model_v2"),
                        buckets=tuple(sorted(set(DEFAULT_BUCKETS) | set(batches))))
        return s
    if name in ("onnx", "onnx_int8", "onnx_v2"):
        from btsbot_jax.inference.scorer import load_scorer

        return load_scorer(work / name)  # OnnxScorer: spinning off by default
    if name == "tf_v101":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(common.V101_SAVED_MODEL))
        sig = loaded.signatures["serving_default"]
        fn = lambda t, m: sig(triplet=tf.constant(t), metadata=tf.constant(m))["fc_out"].numpy()[:, 0]  # noqa: E731
        fn._keep = loaded  # the signature needs its object alive
        return fn
    raise ValueError(f"unknown runtime {name!r}")


def run_pair(pair: str, work: Path, batches: list[int], rounds: int, slice_s: float) -> dict:
    a_name, b_name = PAIRS[pair]
    t0 = time.perf_counter()
    a = _runtime(a_name, work, batches)
    b = _runtime(b_name, work, batches)  # a second, independent instance for an A/A pair
    setup_s = time.perf_counter() - t0
    out = {"pair": pair, "a": a_name, "b": b_name, "setup_seconds": round(setup_s, 2), "batches": {}}
    for bs in batches:
        t, m = common.make_inputs(bs, seed=bs)
        sa, sb = np.asarray(a(t, m)), np.asarray(b(t, m))  # warm-up (compiles) and agreement
        raw = common.interleave({"A": lambda t=t, m=m: a(t, m), "B": lambda t=t, m=m: b(t, m)}, rounds=rounds,
                                slice_seconds=slice_s, min_calls=1 if bs >= 256 else 2, warmup=1)
        ra, rb = common.summarize(raw["A"], bs), common.summarize(raw["B"], bs)
        per = np.asarray(ra["throughput_per_round"]) / np.asarray(rb["throughput_per_round"])
        out["batches"][str(bs)] = {
            "a": ra, "b": rb,
            "ratio_per_round": [round(float(x), 4) for x in per],
            "ratio_median": round(float(np.median(per)), 4),
            "ratio_min": round(float(per.min()), 4),
            "ratio_max": round(float(per.max()), 4),
            "ratio_iqr": [round(float(np.percentile(per, 25)), 4), round(float(np.percentile(per, 75)), 4)],
            "ratio_overall": round(ra["throughput"] / rb["throughput"], 4),
            "max_abs_score_difference": float(np.abs(sa - sb).max()),
        }
        common.log(f"  {pair} batch {bs}: {a_name} {ra['throughput']:.1f}/s, {b_name} {rb['throughput']:.1f}/s, "
                   f"median ratio {np.median(per):.3f} [{per.min():.3f}, {per.max():.3f}]")
    return out


# ----------------------------------------------------------------------------------------------- preparation
def prepare(work: Path, need: set[str]) -> dict:
    """Model directory, float ONNX export and int8 export under `work`, as the pairs need them."""
    from btsbot_jax.inference.export import export_model

    info = {}
    mdir, info["model_source"] = common.model_dir(work, FLAGS.checkpoint)
    (work / "model").symlink_to(Path(mdir).absolute())
    if need & {"onnx", "onnx_int8"}:
        export_model(mdir, work / "onnx", "onnx")
    if need & {"jax_v2", "onnx_v2"}:
        v2dir, info["v2_model_source"] = v2_model_dir(work)
        (work / "model_v2").symlink_to(Path(v2dir).absolute())
        info["v2_flops_per_alert"] = model_flops(v2dir)
        if "onnx_v2" in need:
            export_model(v2dir, work / "onnx_v2", "onnx")
    if "onnx_int8" in need:
        if FLAGS.int8:
            (work / "onnx_int8").symlink_to(Path(FLAGS.int8).absolute())
            info["int8_source"] = f"export {FLAGS.int8}"
        else:
            from btsbot_jax.inference import quantize as q
            from btsbot_jax.inference.runtimes import ARTIFACTS

            t, m = common.make_inputs(256, seed=7)
            d = work / "onnx_int8"
            d.mkdir()
            q.quantize(work / "onnx" / ARTIFACTS["onnx"], d / ARTIFACTS["onnx"], t, m, q.DEFAULT_CONFIG)
            card = json.loads((work / "onnx" / "model_card.json").read_text())
            card.update(format=q.INT8_FORMAT, quantization={"config": q.DEFAULT_CONFIG.name, "calibration":
                                                           "benchmark inputs (speed only)"})
            (d / "model_card.json").write_text(json.dumps(card))
            info["int8_source"] = f"quantised here with {q.DEFAULT_CONFIG.name} (speed only; agreement: quantize)"
    return info


def v2_model_dir(work: Path) -> tuple[Path, str]:
    """(the v2 ConvNeXt-pico fusion model directory, where it comes from)."""
    if FLAGS.v2_checkpoint:
        return Path(FLAGS.v2_checkpoint), f"checkpoint {FLAGS.v2_checkpoint}"
    fixture = common.SHARED_DATA / "btsbot_v2_fixture" / "convnext_pico_metadata"
    if fixture.exists():
        from btsbot_jax.inference.import_torch import import_torch

        return Path(import_torch(fixture, work / "v2")), f"{fixture.name} (v2 fixture) imported with import_torch"
    from btsbot_jax.configs import frozen_fusion
    from btsbot_jax.models.model_dir import make_model_card, save_model
    from btsbot_jax.models.v2 import build_v2_model

    cfg = frozen_fusion.get_config().model
    save_model(build_v2_model(cfg), work / "v2", make_model_card(cfg, version="benchmark"))
    return work / "v2", "configs/frozen_fusion freshly initialised (speed only)"


def model_flops(mdir) -> float:
    """FLOPs per alert of a model directory's forward pass, from XLA's cost analysis at batch 64."""
    import jax

    from btsbot_jax.inference.scorer import load_scorer

    s = load_scorer(mdir, buckets=(64,))
    t, m = common.make_inputs(64, seed=0)
    cost = s._predict.lower(s._state, jax.numpy.asarray(t), jax.numpy.asarray(m)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 64


def _ceiling(quick: bool) -> dict:
    """matmul GFLOP/s measured in a fresh process (so no runtime's threads are around)."""
    here, seconds = str(Path(__file__).parent), 0.5 if quick else 3
    code = f"import sys, json; sys.path.insert(0, {here!r}); import common; " \
           f"print(json.dumps(common.matmul_gflops(seconds={seconds})))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return json.loads(p.stdout.strip().splitlines()[-1])


def side_flops(report: dict, runtime: str) -> float:
    """FLOPs per alert of the model a runtime runs (the v2 model for *_v2, else v1 mm_cnn)."""
    m = report["model"]
    return m["v2_flops_per_alert"] if runtime.endswith("_v2") else m["flops_per_alert"]


def markdown(report: dict) -> str:
    flops = report["model"]["flops_per_alert"]
    gf = report["compute_limit"]["best_gflops"]
    lines = [f"Pairwise inference ({report['machine']['cpu_model']}, {report['machine']['cpu_cores_usable']} cores, "
             f"{report['machine']['date_utc'][:10]}, load average {report['machine']['load_average_at_start']} -> "
             f"{report['machine']['load_average_at_end']}; compute limit {gf:.1f} GFLOP/s = "
             f"{gf * 1e9 / flops:,.0f} alerts/s)", "",
             "| pair (A vs B) | batch | A alerts/s | B alerts/s | median A/B | min-max A/B | A, B % of limit |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for p in report["pairs"].values():
        for bs, r in p["batches"].items():
            fa, fb = (100 * r[k]["throughput"] * side_flops(report, p[k]) / (gf * 1e9) for k in ("a", "b"))
            lines.append(f"| {p['pair']} ({p['a']} vs {p['b']}) | {bs} | {r['a']['throughput']:,.1f} | "
                         f"{r['b']['throughput']:,.1f} | **{r['ratio_median']:.2f}x** | "
                         f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} | {fa:.1f}, {fb:.1f} |")
    return "\n".join(lines) + "\n"


def _main(argv):
    del argv
    quick = FLAGS.quick
    batches = [1, 64] if quick else sorted({int(b) for b in FLAGS.batch_sizes})
    rounds = 2 if quick else FLAGS.rounds
    slice_s = 0.2 if quick else FLAGS.slice_seconds
    if FLAGS.worker:
        res = run_pair(FLAGS.worker, Path(FLAGS.workdir), batches, rounds, slice_s)
        common.write_json(FLAGS.worker_out, res)
        return
    pairs = list(FLAGS.pairs) or (list(V2_PAIRS) if FLAGS.v2 else
                                  ["aa_ort", "int8_vs_ort"] if quick else list(DEFAULT_PAIRS))
    unknown = set(pairs) - set(PAIRS)
    if unknown:
        raise app.UsageError(f"unknown pair(s) {sorted(unknown)}; choose from {sorted(PAIRS)}")
    skipped = {}
    if not common.V101_SAVED_MODEL.exists():
        for p in [p for p in pairs if "tf_v101" in PAIRS[p]]:
            skipped[p] = f"{common.V101_SAVED_MODEL} is absent"
            pairs.remove(p)
    t_start = time.perf_counter()
    info = common.machine_info()
    common.log(f"pairwise benchmark on {info['cpu_model']} ({info['cpu_cores_usable']} cores); "
               f"load average {info['load_average_at_start']}; pairs {pairs}")
    ceil_before = _ceiling(quick)
    results: dict = {}
    stem = FLAGS.tag or ("pairwise_" + ("v2_" if FLAGS.v2 else "") + __import__("jax").default_backend()
                         + ("_quick" if quick else ""))
    json_path, md_path = Path(FLAGS.out_dir) / f"{stem}.json", Path(FLAGS.out_dir) / f"{stem}.md"
    prep: dict = {}

    def write(ceil_after: dict | None) -> dict:
        """The report so far (written after every pair, so a run cut short still leaves its finished pairs)."""
        gf = max(ceil_before["best_gflops"], (ceil_after or ceil_before)["best_gflops"])
        flops = common.mm_cnn_flops()
        report = {
            "benchmark": "pairwise_inference",
            "machine": common.finish_machine_info(dict(info)),
            "config": {"quick": quick, "pairs": pairs, "batch_sizes": batches, "rounds": rounds,
                       "slice_seconds": slice_s, "onnxruntime_spinning": False, "complete": ceil_after is not None,
                       "wall_seconds": round(time.perf_counter() - t_start, 1)},
            "model": {"source": prep.get("model_source"), "int8": prep.get("int8_source"), "flops_per_alert": flops,
                      "v2_source": prep.get("v2_model_source"), "v2_flops_per_alert": prep.get("v2_flops_per_alert")},
            "compute_limit": {"before": ceil_before, "after": ceil_after, "best_gflops": gf,
                              "alerts_per_s": round(gf * 1e9 / flops, 1),
                              "note": "jitted 1024x1024 float32 matmul in its own process, before and after the "
                                      "pairs"},
            "pairs": results,
            "ratios": {p: {bs: {k: r[k] for k in ("ratio_median", "ratio_min", "ratio_max", "ratio_iqr")}
                           for bs, r in res["batches"].items()} for p, res in results.items()},
            "targets": [{"pair": p, "batch": bs, "threshold": thr, "ratio_median": r["ratio_median"],
                         "met": r["ratio_median"] >= thr}
                        for p, thr in TARGETS.items() if p in results for bs, r in results[p]["batches"].items()
                        if int(bs) in TARGET_BATCHES.get(p, (int(bs),))],
            "skipped": skipped,
        }
        report["fraction_of_compute_limit"] = {
            p: {bs: {side: round(r[side]["throughput"] * side_flops(report, res[side]) / (gf * 1e9), 4)
                     for side in ("a", "b")} for bs, r in res["batches"].items()} for p, res in results.items()}
        common.write_json(json_path, report)
        md_path.write_text(markdown(report))
        return report

    with tempfile.TemporaryDirectory(prefix="btsbot-pairwise-") as tmp:
        work = Path(tmp)
        prep.update(prepare(work, {r for p in pairs for r in PAIRS[p]}))
        common.log(f"prepared in {time.perf_counter() - t_start:.0f} s: {prep}")
        for pair in pairs:
            out = work / f"{pair}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), f"--worker={pair}", f"--worker_out={out}",
                   f"--workdir={work}", f"--batch_sizes={','.join(map(str, batches))}", f"--rounds={FLAGS.rounds}",
                   f"--slice_seconds={FLAGS.slice_seconds}"] + (["--quick"] if quick else [])
            common.log(f"pair {pair}: fresh process ({time.perf_counter() - t_start:.0f} s so far)")
            proc = subprocess.run(cmd, text=True, capture_output=True, timeout=900)
            sys.stdout.write("".join(line + "\n" for line in proc.stdout.splitlines() if line.startswith("  ")))
            if proc.returncode != 0:
                skipped[pair] = f"worker failed (rc {proc.returncode}): {proc.stderr[-800:]}"
                common.log(f"pair {pair} FAILED: {proc.stderr[-800:]}")
                continue
            results[pair] = json.loads(out.read_text())
            write(None)
    report = write(_ceiling(quick))
    common.log(f"wrote {json_path} and {md_path} in {time.perf_counter() - t_start:.0f} s")
    print(markdown(report))


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
