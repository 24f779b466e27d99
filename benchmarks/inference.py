"""Model-only inference throughput and latency of every runtime, side by side, against the alert stream rates.

    python benchmarks/inference.py                # full run: batch 1, 8, 64, 256, 512, 1024, every runtime
    python benchmarks/inference.py --quick        # smoke run (< 1-2 min): batch 1 and 64, short slices
    python benchmarks/inference.py --bf16         # also JAX with bfloat16 compute

Runtimes (each skipped with a printed reason where it cannot run here):
  jax          btsbot_jax.inference.scorer.load_scorer: the public path (input validation, numpy in/out, bucket padding)
  jax_raw      the same jitted function called on device-resident arrays of exactly the batch size: the model alone
  jax_bf16     (--bf16) the scorer computing in bfloat16
  stablehlo    the `btsbot-export` StableHLO artifact run by plain jax (btsbot_jax.inference.runtimes)
  onnx         onnxruntime on the exported ONNX graph (what BOOM runs)
  tf_export    our exported TF SavedModel (plain TF ops; what Kowalski could swap in)
  tf_v101      the published v1.0.1 Keras SavedModel, `signatures['serving_default']`: exactly what Kowalski calls.
               This is the reference of every ratio.
  tf_v101_xla  the same graph under `tf.function(jit_compile=True)`: the faster path a TF user could take

All runtimes see the same inputs and run in interleaved slices (common.interleave), so drift of a shared machine
cancels in the ratios. The JSON holds every figure; the PNG shows throughput against batch size with the ZTF
average, Rubin/LSST and ZTF burst rates, and the float32 compute limit of this device, measured in the same rounds
(a 1024x1024 matmul's GFLOP/s divided by the model's 0.52 GFLOP per alert).
"""

from __future__ import annotations

import os
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
flags.DEFINE_bool("quick", False, "Smoke mode: batch 1 and 64, 2 short rounds (structure check, not a measurement).")
flags.DEFINE_list("batch_sizes", ["1", "8", "64", "256", "512", "1024"], "Batch sizes to measure.")
flags.DEFINE_list("runtimes", [], "Subset of runtimes to run (default: all available).")
flags.DEFINE_bool("bf16", False, "Also measure the JAX scorer computing in bfloat16.")
flags.DEFINE_integer("rounds", 4, "Interleaved rounds per batch size.")
flags.DEFINE_float("slice_seconds", 2.0, "Seconds each runtime runs per round.")
flags.DEFINE_string("checkpoint", None, "Model directory to benchmark (default: the imported v1.0.1 weights from "
                    "../shared/data, or a freshly initialised mm_cnn where they are absent).")
flags.DEFINE_string("out_dir", str(common.RESULTS_DIR), "Where the JSON and PNG go.")
flags.DEFINE_string("tag", None, "File name stem (default inference_<backend>, or inference_<backend>_quick).")
flags.DEFINE_bool("plot", True, "Write the PNG.")

ALL_RUNTIMES = ("jax", "jax_raw", "jax_bf16", "stablehlo", "onnx", "tf_export", "tf_v101", "tf_v101_xla")
REFERENCE = "tf_v101"
CEILING = "compute_limit"
TARGET_BATCHES = (1, 64, 512)


def build_runtimes(wanted, mdir: Path, workdir: Path, buckets):
    """{name: scorer-like or factory}, {name: reason it is unavailable}."""
    import jax

    from btsbot_jax.inference.scorer import Scorer, load_scorer
    from btsbot_jax.models.model_dir import load_model

    ready, skipped = {}, {}
    if "jax" in wanted or "jax_raw" in wanted:
        ready["jax"] = load_scorer(mdir, buckets=buckets)
    if "jax_bf16" in wanted:
        model, card = load_model(mdir)
        try:
            ready["jax_bf16"] = Scorer(model, card, buckets=buckets, compute_dtype=jax.numpy.bfloat16)
        except TypeError as e:
            skipped["jax_bf16"] = f"this Scorer has no compute_dtype option ({e})"
    export_wanted = [r for r in ("stablehlo", "onnx", "tf_export") if r in wanted]
    try:
        from btsbot_jax.inference.export import export_model
    except ImportError as e:
        export_model = None
        for r in export_wanted:
            skipped[r] = f"btsbot_jax.inference.export is not importable: {e}"
    platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    for r in export_wanted if export_model is not None else ():
        fmt = {"tf_export": "savedmodel"}.get(r, r)
        try:
            t0 = time.perf_counter()
            export_model(mdir, workdir / fmt, fmt, platforms=(platform,))
            common.log(f"exported {fmt} in {time.perf_counter() - t0:.1f} s")
            ready[r] = load_scorer(workdir / fmt, buckets=buckets) if r == "stablehlo" else load_scorer(workdir / fmt)
        except Exception as e:  # a runtime package missing or broken: report it, do not abort the run
            skipped[r] = f"{type(e).__name__}: {e}"
    if "tf_v101" in wanted or "tf_v101_xla" in wanted:
        if not common.V101_SAVED_MODEL.exists():
            for r in ("tf_v101", "tf_v101_xla"):
                skipped[r] = f"{common.V101_SAVED_MODEL} is absent"
        else:
            try:
                import tensorflow as tf

                loaded = tf.saved_model.load(str(common.V101_SAVED_MODEL))
                sig = loaded.signatures["serving_default"]
                ready["tf_v101"] = (tf, loaded, sig)
                if "tf_v101_xla" in wanted:
                    def serve(t, m):
                        return sig(triplet=t, metadata=m)

                    ready["tf_v101_xla"] = (tf, loaded, tf.function(serve, jit_compile=True, autograph=False))
            except Exception as e:
                for r in ("tf_v101", "tf_v101_xla"):
                    skipped[r] = f"TensorFlow could not load the SavedModel: {type(e).__name__}: {e}"
    return ready, skipped


def make_call(name: str, obj, t: np.ndarray, m: np.ndarray):
    """(timed call, scores): a zero-argument callable that scores (t, m) with runtime `name` and blocks until the
    result is on the host (for jax_raw: until the device has it; its inputs are placed on the device beforehand),
    and a function returning that runtime's scores (N,) for the agreement check."""
    if name == "jax_raw":
        import jax

        scorer = obj
        td, md = jax.device_put(t, scorer.device), jax.device_put(m, scorer.device)
        fn = scorer._predict  # the jitted forward pass, without validation or padding
        return (lambda: fn(scorer._state, td, md).block_until_ready(),
                lambda: np.asarray(fn(scorer._state, td, md)))
    if name in ("tf_v101", "tf_v101_xla"):
        tf, _, fn = obj
        if name == "tf_v101":
            call = lambda: fn(triplet=tf.constant(t), metadata=tf.constant(m))["fc_out"].numpy()
        else:
            call = lambda: fn(tf.constant(t), tf.constant(m))["fc_out"].numpy()
        return call, lambda: call()[:, 0]
    return (lambda: obj(t, m)), (lambda: obj(t, m))


def check_agreement(calls_out: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |score - reference score| of each runtime on the benchmark inputs (a benchmark of a wrong model is
    worthless; bf16 is expected to differ by ~1e-2)."""
    ref = calls_out.get(REFERENCE, calls_out.get("jax"))
    return {k: float(np.abs(np.ravel(v) - np.ravel(ref)).max()) for k, v in calls_out.items()}


def _main(argv):
    del argv
    import jax

    quick = FLAGS.quick
    batches = [1, 64] if quick else sorted({int(b) for b in FLAGS.batch_sizes})
    rounds = 2 if quick else FLAGS.rounds
    slice_s = 0.25 if quick else FLAGS.slice_seconds
    wanted = list(FLAGS.runtimes) or [r for r in ALL_RUNTIMES if r != "jax_bf16" or FLAGS.bf16]
    unknown = set(wanted) - set(ALL_RUNTIMES)
    if unknown:
        raise app.UsageError(f"unknown runtime(s) {sorted(unknown)}; choose from {ALL_RUNTIMES}")
    if quick:  # the smoke test checks the structure; exporting three formats would dominate its time
        wanted = [r for r in wanted if r not in ("tf_export", "tf_v101_xla")]
    from btsbot_jax.inference.scorer import DEFAULT_BUCKETS

    buckets = tuple(sorted(set(DEFAULT_BUCKETS) | set(batches)))  # every measured size is a compiled bucket
    info = common.machine_info()
    flops = common.mm_cnn_flops()
    common.log(f"inference benchmark on {info['cpu_model']} ({info['cpu_cores_usable']} cores), "
               f"jax {info['jax_backend']}: {info['devices']}; load average {info['load_average_at_start']}")
    ceiling_call, ceiling_flops = common.matmul_call()
    ceiling_items = ceiling_flops / flops  # alerts' worth of FLOPs per matmul call

    with tempfile.TemporaryDirectory(prefix="btsbot-bench-") as tmp:
        workdir = Path(tmp)
        mdir, source = common.model_dir(workdir, FLAGS.checkpoint)
        common.log(f"model: {source}")
        ready, skipped = build_runtimes(wanted, mdir, workdir, buckets)
        if "jax_raw" in wanted and "jax" in ready:
            ready["jax_raw"] = ready["jax"]
        if "jax" not in wanted:
            ready.pop("jax", None)
        for r, why in skipped.items():
            common.log(f"skip {r}: {why}")
        names = [r for r in ALL_RUNTIMES if r in ready]
        common.log(f"runtimes: {', '.join(names)}")

        results, ratios, agreement = {}, {}, {}
        for b in batches:
            t, m = common.make_inputs(b, seed=b)
            made = {r: make_call(r, ready[r], t, m) for r in names}
            calls = {r: c for r, (c, _) in made.items()}
            calls[CEILING] = ceiling_call
            outs = {r: f() for r, (_, f) in made.items()}
            agreement[b] = check_agreement(outs)
            common.log(f"batch {b}: {rounds} rounds x {slice_s:.2f} s per runtime")
            raw = common.interleave(calls, rounds=rounds, slice_seconds=slice_s, min_calls=1 if b > 64 else 3)
            results[b] = {r: common.summarize(raw[r], b) for r in names}
            results[b][CEILING] = common.summarize(raw[CEILING], ceiling_items)
            ref = REFERENCE if REFERENCE in results[b] else None
            ratios[b] = {r: common.ratio(results[b][r], results[b][ref]) for r in names} if ref else {}
            common.log("  " + "  ".join(
                f"{r} {results[b][r]['throughput']:.1f}/s" + (f" ({ratios[b][r]['ratio']:.2f}x)" if ref else "")
                for r in names) + f"  [compute limit {results[b][CEILING]['throughput']:.1f}/s]")
        info = common.finish_machine_info(info)

    best = {r: max(results[b][r]["throughput"] for b in batches) for r in names}
    limit = max(results[b][CEILING]["throughput"] for b in batches)
    fraction = {str(b): {r: round(results[b][r]["throughput"] / results[b][CEILING]["throughput"], 3)
                         for r in names} for b in batches}
    targets = []
    if REFERENCE in names:
        for b in TARGET_BATCHES:
            if b in results and "jax" in results[b]:
                rr = ratios[b]["jax"]
                targets.append({"target": f"JAX scorer >= 1.0x TF v1.0.1 at batch {b}", "ratio": rr["ratio"],
                                "per_round_min": rr["per_round_min"], "threshold": 1.0, "met": rr["ratio"] >= 1.0})
    report = {
        "benchmark": "inference",
        "machine": info,
        "config": {"quick": quick, "batch_sizes": batches, "rounds": rounds, "slice_seconds": slice_s,
                   "buckets": list(buckets), "runtimes_requested": wanted},
        "model": {"source": source, "flops_per_alert": flops},
        "compute_limit": {"alerts_per_s": round(limit, 1),
                          "gflops": round(limit * flops / 1e9, 2),
                          "per_batch_alerts_per_s": {str(b): results[b][CEILING]["throughput"] for b in batches},
                          "note": "a 1024x1024 float32 matmul on the jax device, interleaved with the runtimes "
                                  "(same rounds, same load), its GFLOP/s divided by the FLOPs of one alert; "
                                  "alerts_per_s is its best over the batch sizes"},
        "stream_rates_per_s": dict(common.STREAM_RATES),
        "runtimes": names,
        "skipped": skipped,
        "results": {str(b): v for b, v in results.items()},
        "ratios_vs_tf_v101": {str(b): v for b, v in ratios.items()},
        "max_abs_score_difference_vs_reference": {str(b): v for b, v in agreement.items()},
        "best_throughput": best,
        "fraction_of_compute_limit": fraction,
        "best_fraction_of_compute_limit": {r: max(fraction[str(b)][r] for b in batches) for r in names},
        "validation_overhead": ({str(b): round(1 - results[b]["jax"]["throughput"]
                                               / results[b]["jax_raw"]["throughput"], 4) for b in batches}
                                if "jax" in names and "jax_raw" in names else None),
        "targets": targets,
    }
    stem = FLAGS.tag or f"inference_{jax.default_backend()}" + ("_quick" if quick else "")
    out_dir = Path(FLAGS.out_dir)
    path = common.write_json(out_dir / f"{stem}.json", report)
    common.log(f"wrote {path}")
    if FLAGS.plot:
        series = {r: (batches, [results[b][r]["throughput"] for b in batches]) for r in names}
        series["float32 compute limit (matmul, same rounds)"] = (
            batches, [results[b][CEILING]["throughput"] for b in batches])
        png = common.plot_throughput(
            out_dir / f"{stem}.png", series,
            title=f"BTSbot model-only inference, {info['device_kind']} x{info['device_count']} "
                  f"({info['cpu_model']}, {info['cpu_cores_usable']} cores), {info['date_utc'][:10]}")
        common.log(f"wrote {png}")
    print_table(report)


def print_table(report) -> None:
    names = report["runtimes"]
    print(f"\n{'batch':>6} " + " ".join(f"{r:>18}" for r in names) + f" {'compute limit':>14}")
    for b, row in report["results"].items():
        rr = report["ratios_vs_tf_v101"].get(b, {})
        cells = []
        for r in names:
            s = f"{row[r]['throughput']:.1f}/s"
            if r in rr:
                s += f" {rr[r]['ratio']:.2f}x"
            cells.append(f"{s:>18}")
        print(f"{b:>6} " + " ".join(cells) + f" {row[CEILING]['throughput']:>12.1f}/s")
    print("p50 latency per call (ms):")
    for b, row in report["results"].items():
        print(f"{b:>6} " + " ".join(f"{row[r]['latency_ms']['p50']:>18.2f}" for r in names))
    for t in report["targets"]:
        print(f"target: {t['target']}: {t['ratio']:.3f} (per-round min {t['per_round_min']}) "
              f"{'MET' if t['met'] else 'MISSED'}")
    print(f"compute limit (best over batch sizes) {report['compute_limit']['alerts_per_s']:.0f} alerts/s; best "
          "fraction of the limit measured in the same rounds: "
          + ", ".join(f"{k} {v:.2f}" for k, v in report["best_fraction_of_compute_limit"].items()))


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
