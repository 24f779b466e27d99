"""Export a btsbot-jax model directory for the runtimes brokers deploy: StableHLO, ONNX (BOOM), SavedModel (Kowalski).

Routes, and why (tried with jax 0.10.2, TF 2.21, onnx 1.23, onnxruntime 1.32):

- stablehlo: `jax.export` of the very jitted Flax forward pass the scorer runs, with a symbolic batch dimension
  `N`, lowered for CPU and CUDA at once, weights embedded as constants. The artifact alone scores with plain jax
  (`jax.export.deserialize(blob).call(triplet, metadata)`): no Flax, no model code, no checkpoint.
- onnx: the graph is written node by node with `onnx.helper` from the weights (Transpose to NCHW, Conv with
  OIHW kernels and SAME pads, Relu, MaxPool VALID, Transpose back so Flatten is channels-last like Keras, Gemm,
  Concat [image, metadata], Sigmoid). Converters were the first choice and failed: jax2onnx 0.17.1 turned the NHWC
  `lax.reduce_window` max-pool into a MaxPool node onnxruntime rejects, and tf2onnx cannot convert jax2tf's
  XlaCallModule. The model is small and fixed (Table 2 of the paper), so the direct graph is short, uses only core ops
  of opset 17 / IR 8 (any onnxruntime since 1.13, BOOM's included), and the parity checks decide.
- savedmodel: a `tf.Module` of plain TF ops (conv2d NHWC, max_pool2d, matmul, batch-norm arithmetic, sigmoid)
  holding the weights as variables. Not `jax2tf.convert`: it loads and matches here, but the whole model becomes
  one XlaCallModule op carrying serialized StableHLO; Kowalski pins TF 2.13, whose XlaCallModule accepts only
  older serialization versions and needs XLA at run time, and tf2onnx cannot convert it. Plain ops run on any TF 2.
  The SavedModel has the published v1.0.1 serving signature (`serving_default`: `triplet` (None,63,63,3),
  `metadata` (None,25) -> {'fc_out': (None,1)}) AND the call Kowalski actually makes
  (`tf.keras.models.load_model(dir)` -> for a non-Keras SavedModel Keras 2 returns `tf.saved_model.load`'s object
  -> `model([triplet, features], training=False)`, with float64 inputs and features shaped (N,25,1)), so it
  swaps in for v1.0.1 unchanged.

Every export is verified before it is published: the artifact is loaded back with its runtime
(`btsbot_jax.inference.runtimes`) and scored against the Flax model on probe inputs (metadata drawn around the BatchNorm
statistics, so the probe lies where the model was trained); a max difference above TOLERANCE aborts the export
and nothing is written. The measured difference is recorded in the export's model card. The directory is written
under a temporary name and renamed at the end, so a failed export never leaves a half-written artifact.
The layout of export directories is documented in `btsbot_jax.inference.runtimes`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from btsbot_jax import __version__
from btsbot_jax.inference.runtimes import (
    ALL_FORMAT,
    ARTIFACTS,
    DEFAULT_RUNTIME,
    EXPORT_FORMATS,
    INPUT_NAMES,
    MODEL_CARD,
    OUTPUT_NAME,
    is_export_card,
    load_exported,
)
from btsbot_jax.models import V2_ARCHITECTURES, is_v2

FORMATS = tuple(EXPORT_FORMATS)  # ("stablehlo", "onnx", "savedmodel")
CHOICES = (*FORMATS, "all")
TOLERANCE = 1e-5  # max |export - flax| on the probe scores
TOLERANCE_V2 = 1e-4  # v2 (deeper float32 graphs; upstream's own ONNX check is rtol 1e-4): scores and ONNX logits
V2_FORMATS = ("stablehlo", "onnx")  # what `all` writes for a v2 model
DEFAULT_PLATFORMS = ("cpu", "cuda")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
POOL_SIZES = (2, 4)  # the two VALID max-pools of models.ImageBranch (after conv2 and conv4)
CONVS = ("conv1", "conv2", "conv3", "conv4")
ONNX_OPSET = 17
ONNX_IR_VERSION = 8

# The layers each architecture has, as flat weight names (what the hand-built ONNX / TF graphs know how to run).
_IMAGE = [f"image/{c}/{p}" for c in CONVS for p in ("kernel", "bias")]
_META = [f"metadata/bn/{p}" for p in ("mean", "var", "scale", "bias")] + [
    f"metadata/{fc}/{p}" for fc in ("fc1", "fc2") for p in ("kernel", "bias")
]
_HEAD = [f"head/{fc}/{p}" for fc in ("fc", "out") for p in ("kernel", "bias")]
LAYERS = {"mm_cnn": _IMAGE + _META + _HEAD, "um_cnn": _IMAGE + _HEAD, "um_nn": _META + _HEAD}


class ExportError(ValueError):
    """A checkpoint that cannot be exported, a bad format or destination, or an export that fails its parity check."""


# ----------------------------------------------------------------------------------------------- weights & spec


def model_weights(model) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as {"image/conv1/kernel": float32 array, ...}."""
    import jax
    from flax import nnx

    pure = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    flat = {}
    for path, value in jax.tree_util.tree_flatten_with_path(pure)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        flat[name] = np.asarray(value, np.float32)
    return flat


def check_weights(weights: dict[str, np.ndarray], spec: dict[str, Any]) -> None:
    """Refuse a model whose layers are not exactly those the hand-built graphs implement for its architecture."""
    arch = spec["architecture"]
    if arch not in LAYERS:
        raise ExportError(f"cannot export architecture {arch!r}; the exporters build {sorted(LAYERS)}")
    want, have = set(LAYERS[arch]), set(weights)
    if want != have:
        raise ExportError(
            f"{arch} model has layers the exporters do not know: missing {sorted(want - have)}, "
            f"unexpected {sorted(have - want)}"
        )
    if "image/conv1/kernel" in weights:
        k = weights["image/conv1/kernel"]
        if k.shape[2] != 3 or k.shape[0] != k.shape[1]:
            raise ExportError(f"conv1 kernel has shape {k.shape}; expected (k, k, 3, C)")
    if "metadata/fc1/kernel" in weights and weights["metadata/fc1/kernel"].shape[0] != spec["num_metadata"]:
        raise ExportError("metadata fc1 width does not match the metadata columns of the model card")


def _spec(card: dict[str, Any], eps: float) -> dict[str, Any]:
    return {
        "architecture": card["architecture"],
        "image_size": int(card.get("image_size", 63)),
        "num_metadata": len(card["metadata_columns"]),
        "bn_epsilon": float(eps),
    }


def _same_pads(k: int) -> tuple[int, int]:
    """SAME padding of a stride-1 convolution, split as XLA / TF / Flax do (the extra pixel at the end)."""
    lo = (k - 1) // 2
    return lo, k - 1 - lo


def probe_inputs(weights: dict[str, np.ndarray], spec: dict[str, Any], n: int = 48, seed: int = 0):
    """Deterministic inputs shaped like real ones: L2-normalised random cutouts (a few all-pad rows, a few
    with 1e-9 padding at the bottom/right edge) and metadata drawn from the BatchNorm running statistics."""
    rng = np.random.default_rng(seed)
    s, k = spec["image_size"], spec["num_metadata"]
    t = rng.normal(size=(n, s, s, 3)).astype(np.float32) + rng.uniform(0, 3, size=(n, 1, 1, 3)).astype(np.float32)
    # a point source in the middle of science and difference for half of the rows
    yy, xx = np.mgrid[:s, :s]
    star = np.exp(-((yy - s // 2) ** 2 + (xx - s // 2) ** 2) / 8.0).astype(np.float32)
    t[: n // 2, :, :, 0] += 20 * star
    t[: n // 2, :, :, 2] += 20 * star
    t /= np.linalg.norm(t, axis=(1, 2), keepdims=True)
    t[-3:, -5:, :, :] = 1e-9  # CCD-edge padding
    t[-1] = 1e-9
    if "metadata/bn/mean" in weights:
        mean, var = weights["metadata/bn/mean"], weights["metadata/bn/var"]
        m = mean + np.sqrt(np.maximum(var, 0)) * rng.normal(size=(n, k))
    else:
        m = rng.normal(size=(n, k)) * 10
    return t, m.astype(np.float32)


# ------------------------------------------------------------------------------------------------------- ONNX


def build_onnx(weights: dict[str, np.ndarray], spec: dict[str, Any], doc: dict[str, str] | None = None):
    """ONNX ModelProto of the model: inputs `triplet` (N,S,S,3), `metadata` (N,K) float32, output `fc_out` (N,1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    check_weights(weights, spec)
    arch, s, k = spec["architecture"], spec["image_size"], spec["num_metadata"]
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def dense(x: str, layer: str, relu: bool) -> str:
        y = node("Gemm", [x, const(f"{layer}/kernel", weights[f"{layer}/kernel"]),
                          const(f"{layer}/bias", weights[f"{layer}/bias"])], f"{layer}/gemm")
        return node("Relu", [y], f"{layer}/relu") if relu else y

    parts = []
    if arch in ("mm_cnn", "um_cnn"):
        x = node("Transpose", ["triplet"], "image/nchw", perm=[0, 3, 1, 2])
        for conv in CONVS:
            kern = weights[f"image/{conv}/kernel"]  # HWIO (Flax, Keras) -> OIHW (ONNX)
            kh, kw = kern.shape[:2]
            (th, bh), (tw, bw) = _same_pads(kh), _same_pads(kw)
            x = node(
                "Conv",
                [x, const(f"image/{conv}/kernel", kern.transpose(3, 2, 0, 1)),
                 const(f"image/{conv}/bias", weights[f"image/{conv}/bias"])],
                f"image/{conv}/conv", kernel_shape=[kh, kw], pads=[th, tw, bh, bw], strides=[1, 1],
            )
            x = node("Relu", [x], f"image/{conv}/relu")
            if conv in ("conv2", "conv4"):
                p = POOL_SIZES[0] if conv == "conv2" else POOL_SIZES[1]
                # no pads and ceil_mode 0: VALID with floor, 63 -> 31 -> 7 as in Keras MaxPool2D
                x = node("MaxPool", [x], f"image/pool{p}", kernel_shape=[p, p], strides=[p, p])
        x = node("Transpose", [x], "image/nhwc", perm=[0, 2, 3, 1])  # flatten channels-last, as Keras Flatten
        parts.append(node("Flatten", [x], "image/flatten", axis=1))
    if arch in ("mm_cnn", "um_nn"):
        # BatchNorm in inference, in Flax's order: (x - mean) * (scale * rsqrt(var + eps)) + bias
        inv = node("Reciprocal", [node("Sqrt", [node("Add", [
            const("metadata/bn/var", weights["metadata/bn/var"]),
            const("metadata/bn/epsilon", np.array([spec["bn_epsilon"]], np.float32))],
            "metadata/bn/var_eps")], "metadata/bn/std")], "metadata/bn/rstd")
        mul = node("Mul", [inv, const("metadata/bn/scale", weights["metadata/bn/scale"])], "metadata/bn/mul")
        y = node("Sub", ["metadata", const("metadata/bn/mean", weights["metadata/bn/mean"])], "metadata/bn/centred")
        y = node("Mul", [y, mul], "metadata/bn/scaled")
        y = node("Add", [y, const("metadata/bn/bias", weights["metadata/bn/bias"])], "metadata/bn/out")
        y = dense(y, "metadata/fc1", relu=True)
        parts.append(dense(y, "metadata/fc2", relu=True))
    h = node("Concat", parts, "head/concat", axis=1) if len(parts) == 2 else parts[0]
    h = dense(h, "head/fc", relu=True)
    logit = dense(h, "head/out", relu=False)
    node("Sigmoid", [logit], OUTPUT_NAME)

    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, f"btsbot_{arch}",
        inputs=[helper.make_tensor_value_info(INPUT_NAMES[0], f32, ["N", s, s, 3]),
                helper.make_tensor_value_info(INPUT_NAMES[1], f32, ["N", k])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, f32, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION,
        producer_name="btsbot-jax", producer_version=__version__,
        doc_string=f"BTSbot {arch}: sigmoid score of a ZTF alert (triplet NHWC, {k} raw metadata features)",
    )
    if doc:
        helper.set_model_props(model, doc)
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------------------------------------- SavedModel


def build_tf_module(weights: dict[str, np.ndarray], spec: dict[str, Any]):
    """tf.Module with `serve` (the v1.0.1 serving signature) and a Keras-style `__call__` (Kowalski's call)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    check_weights(weights, spec)
    arch, s, k, eps = spec["architecture"], spec["image_size"], spec["num_metadata"], spec["bn_epsilon"]

    class BTSbotServing(tf.Module):
        def __init__(self):
            super().__init__(name=f"btsbot_{arch}")
            self.architecture = arch
            self.w = {
                name: tf.Variable(value, trainable=False, name=name.replace("/", "_"))
                for name, value in weights.items()
            }

        def scores(self, triplet, metadata):
            w = self.w
            parts = []
            if arch in ("mm_cnn", "um_cnn"):
                x = triplet
                for conv in CONVS:
                    x = tf.nn.conv2d(x, w[f"image/{conv}/kernel"], strides=1, padding="SAME")
                    x = tf.nn.relu(tf.nn.bias_add(x, w[f"image/{conv}/bias"]))
                    if conv in ("conv2", "conv4"):
                        p = POOL_SIZES[0] if conv == "conv2" else POOL_SIZES[1]
                        x = tf.nn.max_pool2d(x, ksize=p, strides=p, padding="VALID")
                side = x.shape[1] * x.shape[2] * x.shape[3]
                parts.append(tf.reshape(x, [-1, side]))  # NHWC flatten, channels-last like Keras
            if arch in ("mm_cnn", "um_nn"):
                mul = tf.math.rsqrt(w["metadata/bn/var"] + eps) * w["metadata/bn/scale"]
                y = (metadata - w["metadata/bn/mean"]) * mul + w["metadata/bn/bias"]
                y = tf.nn.relu(tf.matmul(y, w["metadata/fc1/kernel"]) + w["metadata/fc1/bias"])
                parts.append(tf.nn.relu(tf.matmul(y, w["metadata/fc2/kernel"]) + w["metadata/fc2/bias"]))
            h = tf.concat(parts, axis=1) if len(parts) == 2 else parts[0]
            h = tf.nn.relu(tf.matmul(h, w["head/fc/kernel"]) + w["head/fc/bias"])
            return tf.math.sigmoid(tf.matmul(h, w["head/out/kernel"]) + w["head/out/bias"])

        @tf.function(input_signature=[
            tf.TensorSpec([None, s, s, 3], tf.float32, name=INPUT_NAMES[0]),
            tf.TensorSpec([None, k], tf.float32, name=INPUT_NAMES[1]),
        ])
        def serve(self, triplet, metadata):
            return {OUTPUT_NAME: self.scores(triplet, metadata)}

        @tf.function
        def __call__(self, inputs, training=False):
            # Kowalski: model([triplet, features], training=False); the order comes from its config, so the
            # rank tells the two apart; features may come as (N, K, 1) and both may be float64 (numpy default).
            del training  # inference only: no dropout, BatchNorm running statistics
            a, b = inputs
            triplet, metadata = (a, b) if a.shape.rank == 4 else (b, a)
            if metadata.shape.rank == 3:
                metadata = tf.squeeze(metadata, axis=-1)
            return self.scores(tf.cast(triplet, tf.float32), tf.cast(metadata, tf.float32))

    module = BTSbotServing()
    for dt_t in (tf.float32, tf.float64):
        for dt_m in (tf.float32, tf.float64):
            for meta_shape in ([None, k], [None, k, 1]):
                t_spec = tf.TensorSpec([None, s, s, 3], dt_t)
                m_spec = tf.TensorSpec(meta_shape, dt_m)
                for order in ((t_spec, m_spec), (m_spec, t_spec)):
                    module.__call__.get_concrete_function(list(order), training=False)
    return module


def savedmodel_op_types(saved_model_dir: str | os.PathLike) -> set[str]:
    """Every op type in a SavedModel's graphs and function library (tests check there is no XlaCallModule)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    ops = set()
    for mg in sm.meta_graphs:
        ops.update(n.op for n in mg.graph_def.node)
        for f in mg.graph_def.library.function:
            ops.update(n.op for n in f.node_def)
    return ops


# ---------------------------------------------------------------------------------------------------- writers


def _export_stablehlo(model, spec, out: Path, platforms: Sequence[str]) -> dict[str, Any]:
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)

    def score(triplet, metadata):  # (N, 1) like fc_out; the weights are closed over -> embedded constants
        return nnx.merge(graphdef, state)(triplet, metadata)

    (n,) = jax.export.symbolic_shape("N")
    s, k = spec["image_size"], spec["num_metadata"]
    args = (jax.ShapeDtypeStruct((n, s, s, 3), np.float32), jax.ShapeDtypeStruct((n, k), np.float32))
    try:
        exported = jax.export.export(jax.jit(score), platforms=tuple(platforms))(*args)
    except Exception as e:  # lowering for a platform this jax cannot target
        raise ExportError(f"jax.export failed for platforms {tuple(platforms)}: {e}") from e
    (out / ARTIFACTS["stablehlo"]).write_bytes(exported.serialize())
    return {
        "platforms": list(exported.platforms),
        "batch_dimension": "N (symbolic)",
        "calling_convention_version": exported.calling_convention_version,
        "jax_version": jax.__version__,
        "output": "(N, 1) float32 sigmoid score",
    }


def _export_onnx(weights, spec, card, out: Path) -> dict[str, Any]:
    import onnx

    props = {"version": str(card.get("version", "")), "architecture": spec["architecture"],
             "metadata_columns": json.dumps(card["metadata_columns"])}
    model = build_onnx(weights, spec, doc=props)
    onnx.save(model, str(out / ARTIFACTS["onnx"]))
    return {"opset": ONNX_OPSET, "ir_version": ONNX_IR_VERSION, "onnx_version": onnx.__version__}


def _export_savedmodel(weights, spec, out: Path) -> dict[str, Any]:
    import tensorflow as tf

    module = build_tf_module(weights, spec)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    ops = savedmodel_op_types(out)
    if "XlaCallModule" in ops:  # cannot happen with plain ops; guard against a future change of route
        raise ExportError("SavedModel contains an XlaCallModule op; Kowalski's TF 2.13 may not run it")
    return {"tensorflow_version": tf.__version__, "signature": "serving_default", "op_types": sorted(ops)}


def _verify(fmt: str, out: Path, reference, probe) -> dict[str, Any]:
    t, m = probe
    scorer = load_exported(out)
    got = scorer(t, m)
    err = float(np.abs(got - reference).max())
    if not err <= TOLERANCE:
        raise ExportError(
            f"{fmt} export does not reproduce the Flax model: max |difference| = {err:.2e} > {TOLERANCE:.0e} "
            f"on {len(t)} probe inputs; nothing was written"
        )
    return {"max_abs_diff": err, "n_probe": int(len(t)), "tolerance": TOLERANCE, "reference": "flax model",
            "runtime": type(scorer).__name__}


def _v2_probe_stats(model) -> dict[str, np.ndarray]:
    """The running statistics of a v2 model's metadata BatchNorm, named as probe_inputs expects them."""
    from btsbot_jax.models import v2 as v2m

    bn = {v2m.mm_ConvNeXt: lambda m: m.metadata_branch.bn, v2m.mm_MaxViT: lambda m: m.metadata_branch.bn,
          v2m.frozen_fusion: lambda m: m.meta_branch.bn, v2m.UmNN: lambda m: m.bn}.get(type(model))
    if bn is None:
        return {}
    b = bn(model)
    return {"metadata/bn/mean": np.asarray(b.mean[...]), "metadata/bn/var": np.asarray(b.var[...])}


def _export_onnx_v2(model, card, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import onnx

    from btsbot_jax.inference.export_v2 import ONNX_IR_VERSION as IR
    from btsbot_jax.inference.export_v2 import ONNX_OPSET as OPSET
    from btsbot_jax.inference.export_v2 import build_onnx_v2, v2_signature

    proto = build_onnx_v2(model, card)
    onnx.save(proto, str(out / ARTIFACTS["onnx"]))
    sig = v2_signature(model, int(card.get("image_size", 63)), len(card["metadata_columns"]))
    return {"opset": OPSET, "ir_version": IR, "onnx_version": onnx.__version__,
            "signature": "upstream BTSbot v2 to_onnx.py (BOOM)"}, sig


def _verify_v2(fmt: str, out: Path, reference, ref_logits, probe) -> dict[str, Any]:
    """v2: the scores through the runtime scorer and, for ONNX, the raw `logits` output, both within
    TOLERANCE_V2 of the Flax model."""
    t, m = probe
    scorer = load_exported(out)
    err = float(np.abs(scorer(t, m) - reference).max())
    result = {"max_abs_diff": err, "n_probe": int(len(t)), "tolerance": TOLERANCE_V2, "reference": "flax model",
              "runtime": type(scorer).__name__}
    if fmt == "onnx":
        logits = scorer.logits(t, m)
        result["max_abs_logit_diff"] = float(np.abs(logits - ref_logits).max())
    worst = max(err, result.get("max_abs_logit_diff", 0.0))
    if not worst <= TOLERANCE_V2:
        raise ExportError(
            f"{fmt} export does not reproduce the Flax model: max |difference| = {worst:.2e} > {TOLERANCE_V2:.0e} "
            f"on {len(t)} probe inputs; nothing was written"
        )
    return result


# ------------------------------------------------------------------------------------------------ entry point


def _load_source(checkpoint):
    from btsbot_jax.models.model_dir import (
        CARD_FORMAT,
        CheckpointError,
        load_model,
        read_model_card,
        resolve_checkpoint,
    )

    try:
        model_dir = resolve_checkpoint(checkpoint)
        card = read_model_card(model_dir)
    except CheckpointError as e:
        raise ExportError(f"cannot export: {e}") from e
    fmt = card.get("format")
    if is_export_card(card):
        src = card.get("exported_from", {}).get("path")
        raise ExportError(
            f"{model_dir} is already an export ({fmt}); export from the model directory it came from"
            + (f" ({src})" if src else "")
        )
    if fmt != CARD_FORMAT:
        raise ExportError(f"{model_dir}: model card format {fmt!r} is not a btsbot-jax model directory ({CARD_FORMAT})")
    arch = card.get("architecture")
    if arch not in LAYERS and not is_v2(arch):
        raise ExportError(f"{model_dir}: cannot export architecture {arch!r}; supported: "
                          f"{sorted(LAYERS) + list(V2_ARCHITECTURES)}")
    try:
        model, card = load_model(model_dir)
    except CheckpointError as e:
        raise ExportError(f"cannot export: {e}") from e
    return model_dir, model, card


def _export_card(src_card, model_dir, fmt, details, verification, v2_signature=None) -> dict[str, Any]:
    card = {k: v for k, v in src_card.items() if k not in ("format", "created_utc", "btsbot_jax_version")}
    signature = {"inputs": {INPUT_NAMES[0]: [None, src_card["image_size"], src_card["image_size"], 3],
                            INPUT_NAMES[1]: [None, len(src_card["metadata_columns"])]},
                 "outputs": {OUTPUT_NAME: [None, 1]}, "dtype": "float32"}
    if v2_signature is not None:
        signature = v2_signature
    card.update(
        format=EXPORT_FORMATS[fmt],
        artifact=ARTIFACTS[fmt],
        signature=signature,
        exported_from={"path": str(Path(model_dir).resolve()), "format": src_card.get("format"),
                       "created_utc": src_card.get("created_utc")},
        export=details,
        verification=verification,
        btsbot_jax_version=__version__,
        created_utc=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return card


def _write_card(path: Path, card: dict) -> None:
    (path / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def export_model(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "all",
    *,
    overwrite: bool = False,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    n_probe: int = 48,
) -> dict[str, Any]:
    """Export CHECKPOINT (a model directory or a training workdir) to OUT_DIR; returns the written model card.

    `fmt` is one of stablehlo, onnx, savedmodel, all. The export is verified against the Flax model before it
    is moved into place (see the module docstring)."""
    if fmt not in CHOICES:
        raise ExportError(f"unsupported export format {fmt!r}; expected one of {', '.join(CHOICES)}")
    bad = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if bad or not platforms:
        raise ExportError(f"unknown StableHLO platform(s) {bad or list(platforms)}; expected some of {KNOWN_PLATFORMS}")
    import jax

    backend = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    if fmt in ("stablehlo", "all") and backend not in platforms:
        raise ExportError(
            f"StableHLO platforms {tuple(platforms)} leave out this machine's {backend!r}, so the export could not be "
            f"checked against the Flax model here; add {backend!r} (the artifact may hold several platforms)"
        )
    out = Path(out_dir).absolute()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another --out or pass overwrite")
    model_dir, model, src_card = _load_source(checkpoint)
    if out == model_dir.absolute() or model_dir.absolute() in out.parents:
        raise ExportError(f"--out {out} is inside the checkpoint {model_dir}; write the export elsewhere")

    v2 = is_v2(src_card["architecture"])
    if v2 and fmt == "savedmodel":
        raise ExportError(f"{src_card['architecture']}: no SavedModel export for BTSbot v2 models (BOOM loads the "
                          "ONNX; Kowalski's TF 2.13 SavedModel route is v1 only); use stablehlo or onnx")
    weights = model_weights(model)
    spec = _spec(src_card, src_card.get("model_config", {}).get("bn_epsilon", 1e-3))
    if v2:
        probe = probe_inputs(_v2_probe_stats(model), spec, n=n_probe)
        reference = np.asarray(jax.jit(lambda t, m: model(t, m))(*probe))[:, 0]
        ref_logits = np.asarray(jax.jit(lambda t, m: model.logits(t, m))(*probe))[:, 0]
    else:
        check_weights(weights, spec)
        probe = probe_inputs(weights, spec, n=n_probe)
        reference = np.asarray(jax.jit(lambda t, m: model(t, m))(*probe))[:, 0]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary directory
    try:
        formats = (V2_FORMATS if v2 else FORMATS) if fmt == "all" else (fmt,)
        cards = {}
        for f in formats:
            d = tmp / f if fmt == "all" else tmp
            d.mkdir(exist_ok=True)
            sig = None
            if f == "stablehlo":
                details = _export_stablehlo(model, spec, d, platforms)
            elif f == "onnx" and v2:
                details, sig = _export_onnx_v2(model, src_card, d)
            elif f == "onnx":
                details = _export_onnx(weights, spec, src_card, d)
            else:
                details = _export_savedmodel(weights, spec, d)
            card = _export_card(src_card, model_dir, f, details, verification={}, v2_signature=sig)
            _write_card(d, card)
            if v2:
                card["verification"] = _verify_v2(f, d, reference, ref_logits, probe)
            else:
                card["verification"] = _verify(f, d, reference, probe)
            _write_card(d, card)
            cards[f] = card
        if fmt == "all":
            top = {k: v for k, v in cards["stablehlo"].items() if k not in ("artifact", "export", "verification")}
            top.update(format=ALL_FORMAT, exports={f: f for f in formats}, default_runtime=DEFAULT_RUNTIME,
                       verification={f: cards[f]["verification"] for f in formats})
            _write_card(tmp, top)
            result = top
        else:
            result = cards[fmt]
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


__all__ = [
    "CHOICES", "ExportError", "FORMATS", "TOLERANCE", "build_onnx", "build_tf_module", "export_model",
    "model_weights", "probe_inputs", "savedmodel_op_types",
]
