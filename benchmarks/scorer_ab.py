"""A/B of XLA CPU compile options for the scorer's forward pass: the evidence for (or against) changing scorer.py.

    python benchmarks/scorer_ab.py                       # every variant vs XLA's defaults, batch 64 and 512
    python benchmarks/scorer_ab.py --quick
    python benchmarks/scorer_ab.py --variants=no_ynn,onednn --batch_sizes=64

Each variant is the scorer's very jitted function (`Scorer._predict`, the v1.0.1 weights) compiled with extra
`compiler_options` (`jax.jit(...).lower(...).compile(compiler_options=...)`): nothing else changes. Its scores must
stay within 1e-6 of the default's (else it is reported and not timed; `bf16`, a precision variant, is timed
anyway), then default and variant alternate slice
by slice (A/B pairs, order swapped every round) and the per-round ratio gives the median and spread. A/A (the
default compiled twice) shows the method's own noise.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke mode: batch 64, 2 short rounds, two variants.")
flags.DEFINE_list("variants", [], "Variants (default: all of VARIANTS).")
flags.DEFINE_list("batch_sizes", ["64", "512"], "Batch sizes.")
flags.DEFINE_integer("rounds", 6, "Rounds per pair.")
flags.DEFINE_float("slice_seconds", 1.0, "Seconds per side per round.")
flags.DEFINE_string("out_dir", str(common.RESULTS_DIR), "Where the JSON goes.")

TIMED_ANYWAY = {"bf16"}  # variants about precision: timed even though they differ by more than 1e-6

# name -> compiler_options (DebugOptions fields of XLA's CPU backend)
VARIANTS = {
    "aa_default": {},
    "no_ynn": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "xnn": {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_xnnpack": True},
    "onednn": {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_onednn": True},
    # XLA's oneDNN convolution/matmul custom calls (what TF's oneDNN path would give us); the row records how
    # many `__onednn$` custom calls the compiled program holds, i.e. whether this jaxlib build has the rewrite
    "onednn_custom_call": {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_onednn": True,
                           "xla_cpu_experimental_onednn_custom_call": True},
    "vector512": {"xla_cpu_prefer_vector_width": 512},
    "fast_min_max": {"xla_cpu_enable_fast_min_max": True},
    "concurrency_scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    # YNNPACK takes dots and convolutions one by one, XLA fuses the elementwise work (what v2 models use:
    # models.v2.CPU_COMPILER_OPTIONS)
    "ynn_individual": {"xla_cpu_experimental_ynn_fusion_type":
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
    # not compile options: the same default program run on the batch in chunks of this many rows (smaller
    # activations per call: 64 alerts' conv1 output alone is 32 MB of float32, more than the caches hold)
    "chunk8": 8,
    "chunk16": 16,
    "chunk32": 32,
    # not compile options either: the same model with its convolutions written another way (cnn._conv replaced
    # while the variant is traced); same weights, same rows kept
    "im2col": "lowering",   # patches (lax.conv_general_dilated_patches) then one dot per convolution
    "im2col_slices": "lowering",  # patches built from k*k shifted slices (concatenated) then one dot
    "nchw": "lowering",     # the convolutions in NCHW / OIHW layout (transposes around each)
    # weights and inputs in bfloat16 (the scorer's compute_dtype): not float32-equivalent, so timed despite the
    # 1e-6 check, to show whether XLA:CPU has a fast bf16 path (AMX) that a split-precision float32 could use
    "bf16": "bf16",
    # not a compilation either: the public call, scorer(numpy, numpy) -> numpy (validation, bucket plan, host
    # copies), against the same program on device-resident arrays: what the scorer adds to the kernels
    "public_call": "public",
}


def _conv_im2col(conv, x, keep, pad):
    import jax

    x = x[:, :keep, :keep]
    k = conv.kernel.value  # (kh, kw, cin, cout)
    patches = jax.lax.conv_general_dilated_patches(x, k.shape[:2], (1, 1), (pad, pad),
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # patches' features are ordered (cin, kh, kw)
    w = k.transpose(2, 0, 1, 3).reshape(-1, k.shape[3])
    return patches @ w + conv.bias.value


def _conv_im2col_slices(conv, x, keep, pad):
    import jax.numpy as jnp

    k = conv.kernel.value  # (kh, kw, cin, cout)
    kh, kw = k.shape[:2]
    x = jnp.pad(x[:, :keep, :keep], ((0, 0), pad, pad, (0, 0)))
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = jnp.concatenate([x[:, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ k.reshape(-1, k.shape[3]) + conv.bias.value  # features ordered (kh, kw, cin)


def _conv_nchw(conv, x, keep, pad):
    import jax

    y = jax.lax.conv_general_dilated(x[:, :keep, :keep].transpose(0, 3, 1, 2), conv.kernel.value.transpose(3, 2, 0, 1),
                                     (1, 1), (pad, pad), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y.transpose(0, 2, 3, 1) + conv.bias.value


def _lowering(mdir, name: str, batch: int):
    """The scorer's program traced with cnn._conv replaced by the variant's, compiled for `batch`."""
    import jax

    from btsbot_jax.inference.scorer import load_scorer
    from btsbot_jax.models import cnn

    original = cnn._conv
    cnn._conv = {"im2col": _conv_im2col, "im2col_slices": _conv_im2col_slices,
                 "nchw": _conv_nchw}[name]
    try:
        s = load_scorer(mdir, buckets=(batch,))
        t, m = common.make_inputs(batch)
        return s._predict.lower(s._state, jax.device_put(t), jax.device_put(m)).compile()
    finally:
        cnn._conv = original


def _public(scorer, t, m):
    """f(state, t, m) ignoring its device arrays: the scorer's public call on the host copies of the inputs."""
    return lambda state, td, md: _OnHost(scorer(t, m))


class _OnHost:
    """A host result in the shape of a jax.Array for the timing loop (nothing to wait for, nothing copied)."""

    def __init__(self, x):
        self.x = x

    def block_until_ready(self):
        return self.x

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.x, dtype=dtype)


def _bf16(mdir, batch: int):
    """The scorer's program with compute_dtype=bfloat16, compiled for `batch` (scores still come back float32)."""
    import jax
    import jax.numpy as jnp

    from btsbot_jax.inference.scorer import Scorer
    from btsbot_jax.models.model_dir import load_model

    model, card = load_model(mdir)
    s = Scorer(model, card, buckets=(batch,), compute_dtype=jnp.bfloat16)
    t, m = common.make_inputs(batch)
    compiled = s._predict.lower(s._state, jax.device_put(t), jax.device_put(m)).compile()
    return lambda state, t, m: compiled(s._state, t, m)  # its own bf16 weights, whatever state is passed


def _chunked(scorer, rows: int, batch: int):
    """f(state, t, m) running the default program for `rows`-row chunks of the batch, concatenated."""
    import jax
    import jax.numpy as jnp

    if batch % rows:
        raise ValueError(f"batch {batch} is not a multiple of {rows}")
    t0, m0 = common.make_inputs(rows)
    small = scorer._predict.lower(scorer._state, jax.device_put(t0), jax.device_put(m0)).compile()

    def run(state, t, m):
        return jnp.concatenate([small(state, t[i:i + rows], m[i:i + rows]) for i in range(0, batch, rows)])

    return run


def _main(argv):
    del argv
    import jax

    from btsbot_jax.inference.scorer import load_scorer

    quick = FLAGS.quick
    batches = [64] if quick else [int(b) for b in FLAGS.batch_sizes]
    rounds = 2 if quick else FLAGS.rounds
    slice_s = 0.2 if quick else FLAGS.slice_seconds
    names = list(FLAGS.variants) or (["aa_default", "no_ynn"] if quick else list(VARIANTS))
    info = common.machine_info()
    out = {"benchmark": "scorer_ab", "machine": info, "variants": {n: VARIANTS[n] for n in names},
           "config": {"batch_sizes": batches, "rounds": rounds, "slice_seconds": slice_s}, "results": {}}
    with tempfile.TemporaryDirectory(prefix="btsbot-ab-") as tmp:
        mdir, src = common.model_dir(Path(tmp))
        out["model"] = src
        scorer = load_scorer(mdir, buckets=tuple(sorted(set(batches))))
        for b in batches:
            t, m = common.make_inputs(b, seed=b)
            td, md = jax.device_put(t), jax.device_put(m)
            lowered = scorer._predict.lower(scorer._state, td, md)
            base = lowered.compile()
            ref = np.asarray(base(scorer._state, td, md))
            out["results"][str(b)] = {}
            for name in names:
                try:
                    if isinstance(VARIANTS[name], int):
                        var = _chunked(scorer, VARIANTS[name], b)
                    elif VARIANTS[name] == "lowering":
                        var = _lowering(mdir, name, b)
                    elif VARIANTS[name] == "bf16":
                        var = _bf16(mdir, b)
                    elif VARIANTS[name] == "public":
                        var = _public(scorer, t, m)
                    else:
                        var = lowered.compile(compiler_options=VARIANTS[name] or None)
                except Exception as e:  # an option this jaxlib does not know
                    out["results"][str(b)][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    common.log(f"batch {b} {name}: does not compile: {e}")
                    continue
                got = np.asarray(var(scorer._state, td, md))
                diff = float(np.abs(got - ref).max())
                row = {"max_abs_diff_vs_default": diff}
                if hasattr(var, "as_text"):
                    row["onednn_custom_calls"] = var.as_text().count("__onednn$")
                if diff > 1e-6 and name not in TIMED_ANYWAY:
                    row["error"] = "outputs differ by more than 1e-6; not timed"
                else:
                    raw = common.interleave(
                        {"default": lambda f=base, x=td, y=md: f(scorer._state, x, y).block_until_ready(),
                         name: lambda f=var, x=td, y=md: f(scorer._state, x, y).block_until_ready()},
                        rounds=rounds, slice_seconds=slice_s, min_calls=2)
                    a, d = common.summarize(raw[name], b), common.summarize(raw["default"], b)
                    per = np.asarray(a["throughput_per_round"]) / np.asarray(d["throughput_per_round"])
                    row.update(variant_per_s=a["throughput"], default_per_s=d["throughput"],
                               ratio_median=round(float(np.median(per)), 4), ratio_min=round(float(per.min()), 4),
                               ratio_max=round(float(per.max()), 4))
                out["results"][str(b)][name] = row
                common.log(f"batch {b} {name}: {row}")
    common.finish_machine_info(info)
    stem = f"scorer_ab_{jax.default_backend()}" + ("_quick" if quick else "")  # the options are XLA:CPU's
    path = common.write_json(Path(FLAGS.out_dir) / f"{stem}.json", out)
    common.log(f"wrote {path}")


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
