"""Where ONNX Runtime spends its time: per-op time of the float32 and the int8 ONNX export, from ORT's own profiler
(`SessionOptions.enable_profiling`); the evidence for what stays float in the int8 model and what it costs.

    python benchmarks/profile_ort.py --int8=EXPORTS/v1.0.1-int8 --batch=64
    python benchmarks/profile_ort.py --onnx=EXPORTS/v1.0.1/onnx --int8=EXPORTS/v1.0.1-int8

Without --onnx the float32 ONNX export of the v1.0.1 weights (or a fresh mm_cnn) is made here. Prints each model's
op time by op type and by node, and writes them as JSON.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("onnx", None, "Float32 ONNX export directory (default: export the v1.0.1 weights here).")
flags.DEFINE_string("int8", None, "onnx_int8 export directory (optional).")
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("calls", 4, "Profiled calls (plus one first call).")
flags.DEFINE_string("out", str(common.RESULTS_DIR / "profile_ort_cpu.json"), "JSON path.")


def profile(model_path: Path, batch: int, calls: int, trace_dir: Path) -> dict:
    import onnxruntime as ort

    t, m = common.make_inputs(batch, seed=batch)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.enable_profiling = True
    so.profile_file_prefix = str(trace_dir / f"ort_{model_path.parent.name}")  # not into the working directory
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    for _ in range(calls + 1):  # the first call's one-off costs are in the profile too, spread over the calls
        sess.run(None, {"triplet": t, "metadata": m})
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            by_node[f"{e['args']['op_name']} {e['name'][:-len('_kernel_time')]}"] += e["dur"]
    total = sum(by_op.values())
    return {"model": str(model_path), "batch": batch, "calls": calls + 1, "op_time_ms": round(total / 1e3, 2),
            "by_op_type": {k: round(v / total, 4) for k, v in by_op.most_common()},
            "by_node": {k: round(v / total, 4) for k, v in by_node.most_common()}}


def _main(argv):
    del argv
    from btsbot_jax.inference.runtimes import ARTIFACTS

    out = {"benchmark": "profile_ort", "machine": common.machine_info(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="btsbot-ortprof-") as tmp:
        onnx_dir = Path(FLAGS.onnx) if FLAGS.onnx else None
        if onnx_dir is None:
            from btsbot_jax.inference.export import export_model

            mdir, _ = common.model_dir(Path(tmp))
            onnx_dir = Path(tmp) / "onnx"
            export_model(mdir, onnx_dir, "onnx")
        models = {"float32": onnx_dir / ARTIFACTS["onnx"]}
        if FLAGS.int8:
            models["int8"] = Path(FLAGS.int8) / ARTIFACTS["onnx"]
        for name, path in models.items():
            r = profile(path, FLAGS.batch, FLAGS.calls, Path(tmp))
            out["models"][name] = r
            print(f"{name}: {r['op_time_ms']:.1f} ms of op time over {r['calls']} calls at batch {FLAGS.batch}")
            for k, v in list(r["by_op_type"].items())[:8]:
                print(f"  {100 * v:5.1f}%  {k}")
            for k, v in list(r["by_node"].items())[:8]:
                print(f"      {100 * v:5.1f}%  {k}")
    common.finish_machine_info(out["machine"])
    print(f"wrote {common.write_json(FLAGS.out, out)}")


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
