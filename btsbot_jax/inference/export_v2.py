"""ONNX for the BTSbot v2 models, with upstream's signature (v2 `to_onnx.py`, what BOOM's v2 loads).

Inputs `image` (N, 3, 63, 63) float32 channels-first and `metadata` (N, 25) float32 (image-only models take
`image` alone; `v2_um_nn` takes `metadata` alone), output `logits` (N, 1), dynamic batch. Scores are
sigmoid(logits), applied by the caller (BOOM does; so does btsbot_jax.inference.runtimes.OnnxScorer).

The graph is written node by node from the Flax modules' weights, like the v1 exporter (btsbot_jax.inference.export
explains why converters were not used), with core ops of opset 17 only: Conv (grouped for depthwise), MatMul,
BatchNormalization (inference), Erf for the exact GELU, Sigmoid for SiLU and gates, AveragePool, ReduceMean,
Reshape/Transpose for MaxViT's window and grid partitions, Softmax. LayerNorm is spelled out (mean, centred
second moment) rather than the LayerNormalization op, whose one-pass variance in onnxruntime loses precision on
large activations; the bilinear resize of MaxViT is two MatMuls with the interpolation matrices the Flax model uses.
Every export is compared with the Flax model before it is written (btsbot_jax.inference.export).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from btsbot_jax import __version__

ONNX_OPSET = 17
ONNX_IR_VERSION = 8
V2_OUTPUT = "logits"


def v2_input_names(model) -> tuple[str, ...]:
    from btsbot_jax.models import v2

    if isinstance(model, (v2.ConvNeXt, v2.MaxViT)):
        return ("image",)
    if isinstance(model, v2.UmNN):
        return ("metadata",)
    return ("image", "metadata")


def v2_signature(model, image_size: int, num_metadata: int) -> dict[str, Any]:
    shapes = {"image": [None, 3, image_size, image_size], "metadata": [None, num_metadata]}
    return {"inputs": {n: shapes[n] for n in v2_input_names(model)}, "outputs": {V2_OUTPUT: [None, 1]},
            "dtype": "float32", "layout": "image channels-first (N, 3, H, W), as upstream",
            "output": "logit; score = sigmoid(logit)"}


def _np(v) -> np.ndarray:
    return np.asarray(v[...], np.float32)


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: np.ndarray, hint: str = "c", dtype=np.float32) -> str:
        from onnx import numpy_helper

        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.array(value, dtype, order="C"), n))  # keeps 0-d scalars 0-d
        return n

    def op(self, op: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        from onnx import helper

        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def shape(self, dims) -> str:
        return self.const(np.asarray(dims, np.int64), "shape", np.int64)

    # ---------------------------------------------------------------- layers (x in NCHW unless said otherwise)

    def conv(self, x: str, c) -> str:
        k = _np(c.kernel)  # HWIO -> OIHW
        (pt, pb), (pl, pr) = c.padding
        inputs = [x, self.const(k.transpose(3, 2, 0, 1), "w")]
        if c.bias is not None:
            inputs.append(self.const(_np(c.bias), "b"))
        return self.op("Conv", inputs, "conv", kernel_shape=list(k.shape[:2]), strides=list(c.strides),
                       pads=[pt, pl, pb, pr], group=int(c.feature_group_count))

    def dense(self, x: str, lin) -> str:
        """Linear on the last axis."""
        y = self.op("MatMul", [x, self.const(_np(lin.kernel), "w")], "matmul")
        return self.op("Add", [y, self.const(_np(lin.bias), "b")], "dense") if lin.bias is not None else y

    def layer_norm_last(self, x: str, ln) -> str:
        mean = self.op("ReduceMean", [x], "ln_mean", axes=[-1], keepdims=1)
        d = self.op("Sub", [x, mean], "ln_centred")
        var = self.op("ReduceMean", [self.op("Mul", [d, d], "ln_sq")], "ln_var", axes=[-1], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(np.array(ln.epsilon, np.float32), "eps")])], "ln_std")
        y = self.op("Div", [d, std], "ln_norm")
        y = self.op("Mul", [y, self.const(_np(ln.scale), "g")], "ln_scaled")
        return self.op("Add", [y, self.const(_np(ln.bias), "b")], "ln")

    def layer_norm_channels(self, x: str, ln) -> str:
        """timm LayerNorm2d on NCHW."""
        y = self.layer_norm_last(self.nhwc(x), ln)
        return self.nchw(y)

    def nhwc(self, x: str) -> str:
        return self.op("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])

    def nchw(self, x: str) -> str:
        return self.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])

    def batch_norm(self, x: str, bn) -> str:
        return self.op("BatchNormalization", [x, self.const(_np(bn.scale)), self.const(_np(bn.bias)),
                                              self.const(_np(bn.mean)), self.const(_np(bn.var))],
                       "bn", epsilon=float(bn.epsilon))

    def gelu(self, x: str) -> str:
        e = self.op("Erf", [self.op("Div", [x, self.const(np.array(np.sqrt(2.0), np.float32))])])
        y = self.op("Mul", [x, self.op("Add", [e, self.const(np.array(1.0, np.float32))])])
        return self.op("Mul", [y, self.const(np.array(0.5, np.float32))], "gelu")

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])], "silu")

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def global_pool(self, x: str) -> str:
        return self.op("ReduceMean", [x], "pool", axes=[2, 3], keepdims=0)

    # ------------------------------------------------------------------------------------------- backbones

    def convnext(self, x: str, bb) -> str:
        for c in bb.stem_convs:
            x = self.conv(x, c)
        x = self.layer_norm_channels(x, bb.stem_norm)
        for stage in bb.stages:
            if stage.down_conv is not None:
                x = self.conv(self.layer_norm_channels(x, stage.down_norm), stage.down_conv)
            for blk in stage.blocks:
                y = self.nhwc(self.conv(x, blk.conv_dw))
                y = self.layer_norm_last(y, blk.norm)
                y = self.dense(self.gelu(self.dense(y, blk.fc1)), blk.fc2)
                y = self.op("Mul", [y, self.const(_np(blk.gamma), "gamma")], "ls")
                x = self.op("Add", [x, self.nchw(y)], "residual")
        return x

    def resize(self, x: str, size: int, in_size: int) -> str:
        from btsbot_jax.models.v2_layers import bilinear_matrix

        if size == in_size:
            return x
        r = bilinear_matrix(size, in_size)
        x = self.op("MatMul", [x, self.const(r.T, "resize_w")], "resize_w")
        return self.op("MatMul", [self.const(r, "resize_h"), x], "resize")

    def mbconv(self, x: str, blk) -> str:
        shortcut = x
        if blk.stride == 2:
            shortcut = self.op("AveragePool", [x], "avgpool", kernel_shape=[2, 2], strides=[2, 2])
            if blk.shortcut_expand is not None:
                shortcut = self.conv(shortcut, blk.shortcut_expand)
        x = self.batch_norm(x, blk.pre_norm)
        x = self.silu(self.batch_norm(self.conv(x, blk.conv1_1x1), blk.norm1))
        x = self.silu(self.batch_norm(self.conv(x, blk.conv2_kxk), blk.norm2))
        s = self.op("ReduceMean", [x], "se_pool", axes=[2, 3], keepdims=1)
        s = self.conv(self.silu(self.conv(s, blk.se_fc1)), blk.se_fc2)
        x = self.op("Mul", [x, self.op("Sigmoid", [s])], "se")
        return self.op("Add", [self.conv(x, blk.conv3_1x1), shortcut], "mbconv")

    def partition_attention(self, x: str, pa, h: int, w: int, c: int) -> str:
        """x: NHWC (N, h, w, c)."""
        from btsbot_jax.models.maxvit import DIM_HEAD, relative_position_index

        p, nh, dh, t = pa.window, pa.num_heads, DIM_HEAD, pa.window * pa.window
        y = self.layer_norm_last(x, pa.norm1)
        if pa.partition == "block":
            y = self.op("Reshape", [y, self.shape([-1, h // p, p, w // p, p, c])])
            y = self.op("Transpose", [y], perm=[0, 1, 3, 2, 4, 5])
        else:
            y = self.op("Reshape", [y, self.shape([-1, p, h // p, p, w // p, c])])
            y = self.op("Transpose", [y], perm=[0, 2, 4, 1, 3, 5])
        y = self.op("Reshape", [y, self.shape([-1, t, c])], "windows")
        qkv = self.op("Reshape", [self.dense(y, pa.qkv), self.shape([-1, t, nh, 3, dh])], "qkv")
        parts = []
        for i in range(3):
            g = self.op("Gather", [qkv, self.const(np.array(i, np.int64), "idx", np.int64)], axis=3)
            parts.append(self.op("Transpose", [g], perm=[0, 2, 1, 3]))  # (B, nh, t, dh)
        q, k, v = parts
        q = self.op("Mul", [q, self.const(np.array(dh ** -0.5, np.float32), "scale")])
        logits = self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 1, 3, 2])], "attn_logits")
        table = _np(pa.rel_pos_table)
        bias = table[relative_position_index(p).ravel()].reshape(t, t, nh).transpose(2, 0, 1)
        attn = self.op("Softmax", [self.op("Add", [logits, self.const(bias, "rel_pos_bias")])], "attn", axis=-1)
        o = self.op("Transpose", [self.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
        o = self.dense(self.op("Reshape", [o, self.shape([-1, t, c])]), pa.proj)
        if pa.partition == "block":
            o = self.op("Reshape", [o, self.shape([-1, h // p, w // p, p, p, c])])
            o = self.op("Transpose", [o], perm=[0, 1, 3, 2, 4, 5])
        else:
            o = self.op("Reshape", [o, self.shape([-1, h // p, w // p, p, p, c])])
            o = self.op("Transpose", [o], perm=[0, 3, 1, 4, 2, 5])
        x = self.op("Add", [x, self.op("Reshape", [o, self.shape([-1, h, w, c])])], "attn_residual")
        m = self.dense(self.gelu(self.dense(self.layer_norm_last(x, pa.norm2), pa.fc1)), pa.fc2)
        return self.op("Add", [x, m], "mlp_residual")

    def maxvit(self, x: str, bb, in_size: int) -> str:
        """NCHW image at `in_size` -> NCHW feature map after the final norm; resizes to bb.img_size first."""
        x = self.resize(x, bb.img_size, in_size)
        x = self.conv(self.silu(self.batch_norm(self.conv(x, bb.stem_conv1), bb.stem_norm1)), bb.stem_conv2)
        side = bb.img_size // 2
        for stage in bb.stages:
            for blk in stage:
                x = self.mbconv(x, blk.conv)
                side = side // blk.conv.stride
                c = int(blk.conv.conv3_1x1.kernel.shape[-1])
                y = self.nhwc(x)
                y = self.partition_attention(y, blk.attn_block, side, side, c)
                y = self.partition_attention(y, blk.attn_grid, side, side, c)
                x = self.nchw(y)
        return self.layer_norm_channels(x, bb.norm)

    # --------------------------------------------------------------------------------------------- heads

    def mlp(self, x: str, mlp, act) -> str:
        return act(self.dense(act(self.dense(x, mlp.fc1)), mlp.fc2))  # dropout: identity at inference


def build_onnx_v2(model, card: dict[str, Any]):
    """ONNX ModelProto of a v2 model (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    from btsbot_jax.models import v2

    g = _Graph()
    s = int(card.get("image_size", 63))
    k = len(card["metadata_columns"])
    img, meta = "image", "metadata"

    def image_embed(m) -> str:
        if isinstance(m, v2.ConvNeXt):
            return g.layer_norm_last(g.global_pool(g.convnext(img, m.convnext)), m.head_norm)
        return g.global_pool(g.maxvit(img, m.maxvit, s))

    def um_nn_embed(m) -> str:
        return g.dense(g.relu(g.dense(g.batch_norm(meta, m.bn), m.fc1)), m.fc2)

    if isinstance(model, (v2.ConvNeXt, v2.MaxViT)):
        out = g.dense(g.mlp(image_embed(model), model.head, g.gelu), model.out)
    elif isinstance(model, v2.UmNN):
        out = g.dense(g.relu(um_nn_embed(model)), model.out)
    else:
        if isinstance(model, v2.mm_ConvNeXt):
            f = g.convnext(img, model.convnext_backbone)
            f = g.layer_norm_last(g.global_pool(f), model.head_norm) if model.pool_norm else \
                g.op("Flatten", [f], "flatten", axis=1)
            h = g.mlp(g.batch_norm(meta, model.metadata_branch.bn), model.metadata_branch.mlp, g.gelu)
            act = g.gelu
        elif isinstance(model, v2.mm_MaxViT):
            f = g.global_pool(g.maxvit(img, model.maxvit_backbone, s))
            h = g.mlp(g.batch_norm(meta, model.metadata_branch.bn), model.metadata_branch.mlp, g.gelu)
            act = g.gelu
        elif isinstance(model, v2.frozen_fusion):
            f, h, act = image_embed(model.image_branch), um_nn_embed(model.meta_branch), g.relu
        else:
            raise TypeError(f"no ONNX builder for {type(model).__name__}")
        x = g.op("Concat", [f, h], "concat", axis=1)
        out = g.dense(g.mlp(x, model.combined_head.mlp, act), model.combined_head.out)
    g.nodes.append(helper.make_node("Identity", [out], [V2_OUTPUT], name=V2_OUTPUT))

    f32 = TensorProto.FLOAT
    shapes = {"image": ["N", 3, s, s], "metadata": ["N", k]}
    graph = helper.make_graph(
        g.nodes, f"btsbot_{card['architecture']}",
        inputs=[helper.make_tensor_value_info(n, f32, shapes[n]) for n in v2_input_names(model)],
        outputs=[helper.make_tensor_value_info(V2_OUTPUT, f32, ["N", 1])],
        initializer=g.inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION,
        producer_name="btsbot-jax", producer_version=__version__,
        doc_string=f"BTSbot v2 {card['architecture']}: logit of a ZTF alert (image NCHW, {k} raw metadata features)",
    )
    helper.set_model_props(proto, {"version": str(card.get("version", "")), "architecture": card["architecture"],
                                   "metadata_columns": json.dumps(card["metadata_columns"]), "output": "logits"})
    onnx.checker.check_model(proto, full_check=True)
    return proto
