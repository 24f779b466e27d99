"""Training throughput: our jitted train step against Keras 3 (TensorFlow backend) `model.fit`, same model, same data.

    python benchmarks/training.py            # batch 64, 3 interleaved rounds of 8 steps per framework
    python benchmarks/training.py --quick    # smoke run (< 1-2 min)

Both sides train `mm_cnn` exactly as Table 2 of the paper (Keras: built from keras.layers; ours: btsbot_jax.models) with
the paper's optimiser (Adam 1e-4, beta1 0.99, beta2 0.99, eps 1e-7), class-weighted binary cross-entropy, dropout
on, BatchNorm in training mode, batch 64, on the same in-memory arrays (alert-like random triplets, metadata of
real alerts where present, random labels). Each call of a framework runs `--steps_per_call` optimiser steps;
calls alternate between the frameworks (common.interleave) so drift cancels in the ratio.

  jax_train_step  btsbot_jax.training.train.make_train_step: the step `btsbot-train` runs (jit, donated state, data
                  sharded over a 1-D mesh of all devices), fed batch by batch from host memory like the trainer
  keras_fit       keras.Model.fit(..., batch_size=64, epochs=1) on the same samples; compile() with Keras'
                  defaults (jit_compile="auto": XLA where the model allows it, the path a Keras user gets)
  keras_fit_xla   (--keras_xla) the same with jit_compile=True (TF through XLA)
  jax_train_step_ynnpack  (CPU only) the same step compiled with XLA:CPU's default options (YNNPACK fusions on),
                  which btsbot-train avoids on CPU (train.CPU_TRAIN_COMPILER_OPTIONS; see benchmarks/README.md)

The input pipeline (tf.data, augmentation) is left out on both sides: this measures the step itself.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke mode: 2 steps per call, 2 rounds (checks structure, not speed).")
flags.DEFINE_integer("batch_size", 64, "Training batch size (the paper's 64).")
flags.DEFINE_integer("steps_per_call", 8, "Optimiser steps per timed call.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_bool("keras_xla", False, "Also measure Keras fit with jit_compile=True (XLA).")
flags.DEFINE_bool("cpu_ynnpack", True, "On CPU (not in --quick), also measure the train step compiled with "
                  "XLA's default options (YNNPACK fusions on).")
flags.DEFINE_string("out_dir", str(common.RESULTS_DIR), "Where the JSON and PNG go.")
flags.DEFINE_string("tag", None, "File name stem (default training_<backend>[_quick]).")


def make_data(n: int, seed: int = 0):
    t, m = common.make_inputs(n, seed)
    rng = np.random.default_rng(seed + 1)
    y = (rng.random(n) < 0.3).astype(np.int32)  # imbalanced like the training set, so class weights matter
    return t, m, y


def build_keras(cfg, jit_compile, weights):
    """mm_cnn of the paper's Table 2 with keras.layers (what the original BTSbot training script builds)."""
    import keras
    from keras import layers

    k = cfg.conv_kernel
    t_in = keras.Input((cfg.image_size, cfg.image_size, 3), name="triplet")
    m_in = keras.Input((len(cfg.metadata_cols),), name="metadata")
    x = layers.Conv2D(cfg.conv1_channels, k, padding="same", activation="relu")(t_in)
    x = layers.Conv2D(cfg.conv1_channels, k, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(cfg.conv_dropout1)(x)
    x = layers.Conv2D(cfg.conv2_channels, k, padding="same", activation="relu")(x)
    x = layers.Conv2D(cfg.conv2_channels, k, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(4)(x)
    x = layers.Dropout(cfg.conv_dropout2)(x)
    x = layers.Flatten()(x)
    m = layers.BatchNormalization(momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon)(m_in)
    m = layers.Dense(cfg.meta_fc1_neurons, activation="relu")(m)
    m = layers.Dropout(cfg.meta_dropout)(m)
    m = layers.Dense(cfg.meta_fc2_neurons, activation="relu")(m)
    h = layers.Concatenate()([x, m])
    h = layers.Dense(cfg.comb_fc_neurons, activation="relu")(h)
    h = layers.Dropout(cfg.comb_dropout)(h)
    out = layers.Dense(1, activation="sigmoid", name="fc_out")(h)
    model = keras.Model([t_in, m_in], out)
    model.compile(optimizer=keras.optimizers.Adam(1e-4, beta_1=0.99, beta_2=0.99, epsilon=1e-7),
                  loss="binary_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)
    return model


def _main(argv):
    del argv
    import jax

    from btsbot_jax.models import count_parameters, create_model
    from btsbot_jax.training import train

    quick = FLAGS.quick
    bs = FLAGS.batch_size
    steps = 2 if quick else FLAGS.steps_per_call
    rounds = 2 if quick else FLAGS.rounds
    info = common.machine_info()
    common.log(f"training benchmark on {info['cpu_model']} ({info['cpu_cores_usable']} cores), "
               f"jax {info['jax_backend']}: {info['devices']}; load average {info['load_average_at_start']}")
    from btsbot_jax.configs import default

    cfg = default.get_config()
    n = bs * steps
    t, m, y = make_data(n)
    weights = train.class_weights(y)

    # ours: the trainer's step on a 1-D data mesh, batches put on the devices one by one as the trainer does
    tx = train.make_optimizer(cfg)
    mesh = train.make_mesh()
    batches = [{"triplet": t[i:i + bs], "metadata": m[i:i + bs], "label": y[i:i + bs]} for i in range(0, n, bs)]

    def jax_case(**step_kwargs):
        """(call running the steps on `batches`, seconds of the first call: compile + one step)."""
        mdef, state = train.create_train_state(cfg.model, tx, seed=0)
        holder = {"state": train.replicate(state, mesh)}
        step_fn = train.make_train_step(mdef, tx, weights, mesh, **step_kwargs)

        def call(batches=batches):
            s = holder["state"]
            for b in batches:
                s, metrics = step_fn(s, train.shard_batch(b, mesh), mdef.rng_state)
            jax.block_until_ready(metrics["loss"])
            holder["state"] = s
            return float(metrics["loss"])

        t0 = time.perf_counter()
        call(batches[:1])
        return call, round(time.perf_counter() - t0, 2)

    jax_call, compile_jax = jax_case()
    # for comparison on CPU: the same step compiled with XLA:CPU's defaults (YNNPACK fusions on), which the trainer
    # avoids: YNNPACK computes a kernel gradient (a convolution whose window is the whole 63x63 image) 3-6x slower
    # than Eigen, and those gradients were ~75% of the step (see train.CPU_TRAIN_COMPILER_OPTIONS)
    tuned = None
    if jax.default_backend() == "cpu" and FLAGS.cpu_ynnpack and not quick:
        tuned = jax_case(cpu_compiler_options={})

    # Keras 3 on TensorFlow
    import keras

    class_weight = {0: float(weights[0]), 1: float(weights[1])}
    keras_models = {"keras_fit": build_keras(cfg.model, "auto", weights)}
    if FLAGS.keras_xla:
        keras_models["keras_fit_xla"] = build_keras(cfg.model, True, weights)
    n_keras = keras_models["keras_fit"].count_params()
    n_ours = sum(count_parameters(create_model(cfg.model)))
    yk = y.astype(np.float32)[:, None]
    cases = {"jax_train_step": jax_call}
    compile_s = {"jax_train_step": compile_jax}
    if tuned is not None:
        cases["jax_train_step_ynnpack"] = tuned[0]
        compile_s["jax_train_step_ynnpack"] = tuned[1]
    for name, km in keras_models.items():
        def fit(km=km, n=n):
            h = km.fit([t[:n], m[:n]], yk[:n], batch_size=bs, epochs=1, shuffle=False, class_weight=class_weight,
                       verbose=0)
            return float(h.history["loss"][-1])

        t0 = time.perf_counter()
        fit(n=bs)  # trace/compile + one step
        compile_s[name] = round(time.perf_counter() - t0, 2)
        cases[name] = fit
    jit_resolved = {name: getattr(km, "jit_compile", None) for name, km in keras_models.items()}
    common.log(f"params: ours {n_ours} (incl. 50 BatchNorm statistics), keras {n_keras}; first call (compile + 1 step) "
               f"{compile_s}; keras jit_compile resolved to {jit_resolved}")
    common.log(f"{rounds} rounds x {steps} steps of batch {bs} per framework")
    raw = common.interleave(cases, rounds=rounds, slice_seconds=0.0, min_calls=1, warmup=0, log=common.log)
    results = {k: common.summarize(v, n) for k, v in raw.items()}
    ratios = {k: common.ratio(results["jax_train_step"], results[k]) for k in results if k != "jax_train_step"}
    info = common.finish_machine_info(info)
    flops_fwd = common.mm_cnn_flops()
    targets = [{"target": "training >= 1.5x Keras fit", "threshold": 1.5, "ratio": ratios["keras_fit"]["ratio"],
                "per_round_min": ratios["keras_fit"]["per_round_min"], "met": ratios["keras_fit"]["ratio"] >= 1.5}]
    report = {
        "benchmark": "training",
        "machine": info,
        "config": {"quick": quick, "batch_size": bs, "steps_per_call": steps, "rounds": rounds,
                   "samples_per_call": n, "optimizer": "Adam(1e-4, 0.99, 0.99, 1e-7)",
                   "class_weights": weights.tolist()},
        "model": {"parameters_ours": n_ours, "parameters_keras": n_keras,
                  "train_flops_per_sample_approx": 3 * flops_fwd,
                  "note": "a training step costs about 3x the forward FLOPs (forward, input and weight gradients)"},
        "compile_or_first_call_seconds": compile_s,
        "keras_jit_compile": jit_resolved,
        "keras_version": keras.__version__,
        "results_samples_per_s": results,
        "ratios_jax_vs": ratios,
        "targets": targets,
    }
    stem = FLAGS.tag or f"training_{jax.default_backend()}" + ("_quick" if quick else "")
    out_dir = Path(FLAGS.out_dir)
    path = common.write_json(out_dir / f"{stem}.json", report)
    common.log(f"wrote {path}")
    png = _plot(out_dir / f"{stem}.png", results, info, bs)
    common.log(f"wrote {png}")
    for k, v in results.items():
        print(f"{k:>16}: {v['throughput']:.1f} samples/s  (per round {v['throughput_per_round']})")
    for tg in targets:
        print(f"target: {tg['target']}: {tg['ratio']:.3f} (per-round min {tg['per_round_min']}) "
              f"{'MET' if tg['met'] else 'MISSED'}")


def _plot(path, results, info, bs):
    """Samples/s per framework at the batch size, on the same axes and stream-rate lines as the other benchmarks
    (a trainer far above the ZTF average rate can retrain on a night of alerts within the night)."""
    series = {k: ([bs], [v["throughput"]]) for k, v in results.items()}
    return common.plot_throughput(path, series, ylabel="training throughput (samples / s)",
                                  title=f"BTSbot mm_cnn training step, {info['device_kind']} x{info['device_count']} "
                                        f"({info['cpu_model']}, {info['cpu_cores_usable']} cores), "
                                        f"{info['date_utc'][:10]}")


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
