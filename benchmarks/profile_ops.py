"""Where the time goes: per-HLO-op time of the scorer's forward pass or of the trainer's step, from a jax.profiler
trace (the evidence behind the explanations in benchmarks/README.md).

    python benchmarks/profile_ops.py --what=train --batch=64            # the train step with XLA's default options
    python benchmarks/profile_ops.py --what=train --no_ynn               # YNNPACK fusions off: as btsbot-train runs it
    python benchmarks/profile_ops.py --what=inference --batch=256

Prints each op's time per call (summed over XLA's worker threads, so the total exceeds the wall time on a multi-core
CPU), its share, its output shape and the JAX operation it came from, and writes the table as JSON. With YNNPACK
off (--no_ynn) XLA runs convolutions as asynchronous Eigen tasks whose trace events cover only their dispatch,
so convolution time is missing from that table (the wall time per call is still right). The trace is
read with TensorFlow's XPlane protobuf (installed with TensorFlow); the trace folder can also be opened in
TensorBoard's profile plugin or Perfetto.
"""

from __future__ import annotations

import collections
import glob
import os
import re
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
flags.DEFINE_enum("what", "train", ["train", "inference"], "Profile the train step or the scorer's forward pass.")
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("steps", 2, "Profiled calls (after one warm-up call).")
flags.DEFINE_bool("no_ynn", False, "Compile with xla_cpu_experimental_ynn_fusion_type='' (YNNPACK fusions off).")
flags.DEFINE_string("checkpoint", None, "--what=inference: the model directory to profile (default: v1.0.1 as "
                    "benchmarks/common.py finds it), e.g. an imported BTSbot v2 model.")
flags.DEFINE_integer("top", 25, "Rows to print.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/profile_<what>_<backend>[_no_ynn].json).")


def hlo_descriptions(compiled_text: str) -> dict[str, str]:
    """op name -> 'shape opcode <jax op_name>' for the instructions of the entry computation."""
    entry = compiled_text[compiled_text.find("ENTRY"):]
    out = {}
    for line in entry.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if m:
            op = re.search(r'op_name="([^"]+)"', line)
            out[m.group(1)] = f"{m.group(2)} {m.group(3)} {op.group(1)[-70:] if op else ''}".strip()
    return out


def op_times(fn, steps: int) -> tuple[float, dict[str, float]]:
    """(wall seconds per call, {op name: seconds per call summed over threads}) from a profiler trace."""
    import jax
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    fn()
    with tempfile.TemporaryDirectory(prefix="btsbot-trace-") as logdir:
        jax.profiler.start_trace(logdir)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        wall = (time.perf_counter() - t0) / steps
        jax.profiler.stop_trace()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
    ops: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if "XLA" not in line.name:  # XLA's worker threads (Eigen pool, PjRt client), not Python frames
                continue
            for ev in line.events:
                name = names.get(ev.metadata_id, "?")
                if not name.startswith("ThunkExecutor"):
                    ops[name] += ev.duration_ps / 1e12 / steps
    return wall, dict(ops)


def _main(argv):
    del argv
    import jax

    opts = {"xla_cpu_experimental_ynn_fusion_type": ""} if FLAGS.no_ynn else None
    bs = FLAGS.batch
    rng = np.random.default_rng(0)
    t = (rng.random((bs, 63, 63, 3), dtype=np.float32) * 0.02)
    m = rng.normal(size=(bs, 25)).astype(np.float32)
    if FLAGS.what == "train":
        from btsbot_jax.configs import default
        from btsbot_jax.training import train
        cfg = default.get_config()
        tx = train.make_optimizer(cfg)
        mdef, state = train.create_train_state(cfg.model, tx, seed=0)
        y = (rng.random(bs) < 0.3).astype(np.int32)
        batch = {"triplet": jax.device_put(t), "metadata": jax.device_put(m), "label": jax.device_put(y)}
        step = train.make_train_step(mdef, tx, np.ones(2, np.float32), cpu_compiler_options=opts or {})
        compiled = step.lower(state, batch, mdef.rng_state).compile()
        holder = {"s": state}

        def fn():
            holder["s"], metrics = compiled(holder["s"], batch, mdef.rng_state)
            jax.block_until_ready(metrics["loss"])
    else:
        with tempfile.TemporaryDirectory(prefix="btsbot-prof-") as tmp:
            from btsbot_jax.inference.scorer import load_scorer

            mdir = FLAGS.checkpoint or common.model_dir(Path(tmp))[0]
            scorer = load_scorer(mdir)
        td, md = jax.device_put(t), jax.device_put(m)
        compiled = scorer._predict.lower(scorer._state, td, md).compile(compiler_options=opts)

        def fn():
            compiled(scorer._state, td, md).block_until_ready()

    desc = hlo_descriptions(compiled.as_text())
    wall, ops = op_times(fn, FLAGS.steps)
    total = sum(ops.values())
    rows = [{"op": k, "seconds": round(v, 5), "share": round(v / total, 4), "hlo": desc.get(k, "")}
            for k, v in sorted(ops.items(), key=lambda kv: -kv[1])]
    print(f"{FLAGS.what}, batch {bs}, YNNPACK {'off' if FLAGS.no_ynn else 'on'}: {wall * 1e3:.1f} ms per call "
          f"(wall), {total * 1e3:.1f} ms of op time over XLA's threads; load average {common.load_average()}")
    for r in rows[:FLAGS.top]:
        print(f"{r['seconds'] * 1e3:9.1f} ms {100 * r['share']:5.1f}%  {r['op'][:30]:30} {r['hlo'][:100]}")
    out = FLAGS.out or (common.RESULTS_DIR / f"profile_{FLAGS.what}_{jax.default_backend()}"
                        f"{'_no_ynn' if FLAGS.no_ynn else ''}.json")
    common.write_json(out, {"what": FLAGS.what, "batch": bs, "ynn": not FLAGS.no_ynn, "wall_seconds": wall,
                            "op_seconds_total": total, "machine": common.finish_machine_info(common.machine_info()),
                            "ops": rows})
    print(f"wrote {out}")


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
