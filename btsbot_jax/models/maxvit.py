"""timm's MaxViT "rw" backbones (Tu et al. 2022; timm `maxxvit.py`, `_rw_max_cfg`) in Flax NNX, NHWC.

BTSbot v2 (Rehemtulla et al. 2025) uses `maxvit_tiny_rw_224`; the family `maxvit_{pico,nano,tiny}_rw_{224,256}` is
covered. Stem: 3x3 stride-2 conv -> BatchNorm+SiLU -> 3x3 conv. Each stage is a stack of MaxViT blocks:
MBConv (pre-BatchNorm, 1x1 expand 4x of the *input* channels, BN+SiLU, depthwise 3x3 (stride 2 in a stage's first
block), BN+SiLU, squeeze-excitation (mean -> 1x1 -> SiLU -> 1x1 -> sigmoid, width mid/16), 1x1 project, no biases;
shortcut avg-pool 2x2 + 1x1 expand when downsampling), then block (window) attention and grid attention, each
pre-LayerNorm attention with a learned relative-position bias + pre-LayerNorm GELU MLP. A final LayerNorm ends
`forward_features`. Window = grid = image size // 32 (timm `cfg_window_size`), so 7 at 224 px and 8 at 256 px.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from btsbot_jax.models.convnext import make_divisible
from btsbot_jax.models.v2_layers import (
    TorchMap,
    batch_norm,
    conv,
    gelu,
    layer_norm,
    linear,
    module_map,
    prefixed,
)

# timm/models/maxxvit.py model_cfgs (all with _rw_max_cfg(): dim_head 32, SE ratio 1/16, avg2 pooling)
MAXVIT_VARIANTS = {
    "maxvit_pico_rw": dict(embed_dim=(32, 64, 128, 256), depths=(2, 2, 5, 2), stem_width=(24, 32)),
    "maxvit_nano_rw": dict(embed_dim=(64, 128, 256, 512), depths=(1, 2, 3, 1), stem_width=(32, 64)),
    "maxvit_tiny_rw": dict(embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=(32, 64)),
}
DIM_HEAD = 32
PARTITION_RATIO = 32
SE_RATIO = 1 / 16


def maxvit_image_size(model_kind: str) -> int:
    """btsbot.architectures.get_model_image_size: the size in the name ('_(\\d+)\\.'), else 224."""
    if "maxvit" in model_kind.lower():
        match = re.search(r"_(\d+)\.", model_kind)
        if match:
            return int(match.group(1))
    return 224


def maxvit_variant(model_kind: str) -> dict:
    name = model_kind.split(".")[0]
    base = re.sub(r"_\d+$", "", name)
    if base not in MAXVIT_VARIANTS:
        raise ValueError(f"unsupported MaxViT model_kind {model_kind!r}; supported: "
                         f"{sorted(k + '_{224,256}' for k in MAXVIT_VARIANTS)}")
    m = re.search(r"_(\d+)$", name)
    img = int(m.group(1)) if m else 224  # timm builds the model at its pretrained cfg input size
    return {**MAXVIT_VARIANTS[base], "img_size": img}


def relative_position_index(window: int) -> np.ndarray:
    """timm gen_relative_position_index: (dh + w - 1) * (2w - 1) + (dw + w - 1), dh = h_query - h_key."""
    hh, ww = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    coords = np.stack([hh.ravel(), ww.ravel()])  # (2, w*w)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + window - 1) * (2 * window - 1) + (rel[1] + window - 1)


class MbConvBlock(nnx.Module):
    def __init__(self, n_in: int, n_out: int, stride: int, *, rngs: nnx.Rngs):
        mid = make_divisible(n_in * 4.0)  # rw: expansion from the input channels
        self.stride = stride
        self.shortcut_expand = conv(n_in, n_out, 1, bias=False, rngs=rngs) if stride == 2 and n_in != n_out else None
        self.pre_norm = batch_norm(n_in, rngs=rngs)
        self.conv1_1x1 = conv(n_in, mid, 1, bias=False, rngs=rngs)
        self.norm1 = batch_norm(mid, rngs=rngs)
        self.conv2_kxk = conv(mid, mid, 3, stride=stride, groups=mid, bias=False, rngs=rngs)
        self.norm2 = batch_norm(mid, rngs=rngs)
        rd = int(SE_RATIO * mid)
        self.se_fc1 = conv(mid, rd, 1, rngs=rngs)
        self.se_fc2 = conv(rd, mid, 1, rngs=rngs)
        self.conv3_1x1 = conv(mid, n_out, 1, bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        if self.stride == 2:  # Downsample2d 'avg2': AvgPool2d(2, 2), then 1x1 expand
            n, h, w, c = x.shape
            shortcut = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
            if self.shortcut_expand is not None:
                shortcut = self.shortcut_expand(shortcut)
        x = self.pre_norm(x)
        x = nnx.silu(self.norm1(self.conv1_1x1(x)))
        x = nnx.silu(self.norm2(self.conv2_kxk(x)))
        s = x.mean(axis=(1, 2), keepdims=True)
        s = self.se_fc2(nnx.silu(self.se_fc1(s)))
        x = x * nnx.sigmoid(s)
        return self.conv3_1x1(x) + shortcut

    def torch_map(self, path: tuple) -> TorchMap:
        m: TorchMap = {}
        if self.shortcut_expand is not None:
            m.update(module_map(self.shortcut_expand, (*path, "shortcut_expand"), "shortcut.expand"))
        for name, torch_name in (("pre_norm", "pre_norm"), ("conv1_1x1", "conv1_1x1"), ("norm1", "norm1"),
                                 ("conv2_kxk", "conv2_kxk"), ("norm2", "norm2"), ("se_fc1", "se.fc1"),
                                 ("se_fc2", "se.fc2"), ("conv3_1x1", "conv3_1x1")):
            m.update(module_map(getattr(self, name), (*path, name), torch_name))
        return m


class PartitionAttention(nnx.Module):
    """timm PartitionAttentionCl: x + attn(norm1(x)) over windows ('block') or a dilated grid ('grid'), then
    x + mlp(norm2(x))."""

    def __init__(self, dim: int, partition: str, window: int, *, rngs: nnx.Rngs):
        self.partition = partition
        self.window = window
        self.num_heads = dim // DIM_HEAD
        self.norm1 = layer_norm(dim, rngs=rngs)
        self.qkv = linear(dim, 3 * dim, rngs=rngs)
        n_rel = (2 * window - 1) ** 2
        self.rel_pos_table = nnx.Param(jnp.zeros((n_rel, self.num_heads), jnp.float32))  # filled by build_v2_model
        self.proj = linear(dim, dim, rngs=rngs)
        self.norm2 = layer_norm(dim, rngs=rngs)
        self.fc1 = linear(dim, 4 * dim, rngs=rngs)
        self.fc2 = linear(4 * dim, dim, rngs=rngs)

    def _partition(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        p = self.window
        if self.partition == "block":  # windows of p x p neighbouring pixels
            x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        else:  # grid: p x p pixels strided by (h/p, w/p)
            x = x.reshape(n, p, h // p, p, w // p, c).transpose(0, 2, 4, 1, 3, 5)
        return x.reshape(-1, p * p, c)

    def _reverse(self, x: jax.Array, shape) -> jax.Array:
        n, h, w, c = shape
        p = self.window
        if self.partition == "block":
            x = x.reshape(n, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        else:
            x = x.reshape(n, h // p, w // p, p, p, c).transpose(0, 3, 1, 4, 2, 5)
        return x.reshape(n, h, w, c)

    def _attention(self, x: jax.Array) -> jax.Array:
        b, t, c = x.shape
        nh, dh = self.num_heads, DIM_HEAD
        # head_first: the qkv channels are grouped by head, then q/k/v, then the head dimension
        qkv = self.qkv(x).reshape(b, t, nh, 3, dh)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]  # (b, t, nh, dh)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (dh ** -0.5), k)
        index = relative_position_index(self.window).ravel()
        bias = self.rel_pos_table[...][index].reshape(t, t, nh).transpose(2, 0, 1)
        attn = jax.nn.softmax(logits + bias[None], axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, nh * dh)
        return self.proj(out)

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        p = self.window
        if shape[1] % p or shape[2] % p:
            raise ValueError(f"MaxViT feature map {shape[1]}x{shape[2]} is not divisible by the window {p}")
        x = x + self._reverse(self._attention(self._partition(self.norm1(x))), shape)
        return x + self.fc2(gelu(self.fc1(self.norm2(x))))

    def torch_map(self, path: tuple) -> TorchMap:
        m = {"attn.rel_pos.relative_position_bias_table": ((*path, "rel_pos_table"), "same")}
        for name, torch_name in (("norm1", "norm1"), ("qkv", "attn.qkv"), ("proj", "attn.proj"),
                                 ("norm2", "norm2"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")):
            m.update(module_map(getattr(self, name), (*path, name), torch_name))
        return m


class MaxViTBlock(nnx.Module):
    def __init__(self, n_in: int, n_out: int, stride: int, window: int, *, rngs: nnx.Rngs):
        self.conv = MbConvBlock(n_in, n_out, stride, rngs=rngs)
        self.attn_block = PartitionAttention(n_out, "block", window, rngs=rngs)
        self.attn_grid = PartitionAttention(n_out, "grid", window, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.attn_grid(self.attn_block(self.conv(x)))

    def torch_map(self, path: tuple) -> TorchMap:
        return {
            **prefixed("conv", self.conv.torch_map((*path, "conv"))),
            **prefixed("attn_block", self.attn_block.torch_map((*path, "attn_block"))),
            **prefixed("attn_grid", self.attn_grid.torch_map((*path, "attn_grid"))),
        }


class MaxViTBackbone(nnx.Module):
    """timm MaxxVit up to `forward_features` (stem, stages, final norm) at the model's own input size."""

    def __init__(self, model_kind: str, *, rngs: nnx.Rngs):
        v = maxvit_variant(model_kind)
        self.model_kind = model_kind
        self.img_size = v["img_size"]
        self.window = self.img_size // PARTITION_RATIO
        s0, s1 = v["stem_width"]
        self.stem_conv1 = conv(3, s0, 3, stride=2, bias=False, rngs=rngs)
        self.stem_norm1 = batch_norm(s0, rngs=rngs)
        self.stem_conv2 = conv(s0, s1, 3, bias=False, rngs=rngs)
        stages, prev = [], s1
        for d, n in zip(v["embed_dim"], v["depths"]):
            blocks = [MaxViTBlock(prev if i == 0 else d, d, 2 if i == 0 else 1, self.window, rngs=rngs)
                      for i in range(n)]
            stages.append(nnx.List(blocks))
            prev = d
        self.stages = nnx.List(stages)
        self.norm = layer_norm(prev, rngs=rngs)
        self.num_features = prev

    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC image at img_size -> NHWC feature map after the final norm (timm forward_features)."""
        x = self.stem_conv2(nnx.silu(self.stem_norm1(self.stem_conv1(x))))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.norm(x)

    def torch_map(self, path: tuple) -> TorchMap:
        m: TorchMap = {}
        m.update(module_map(self.stem_conv1, (*path, "stem_conv1"), "stem.conv1"))
        m.update(module_map(self.stem_norm1, (*path, "stem_norm1"), "stem.norm1"))
        m.update(module_map(self.stem_conv2, (*path, "stem_conv2"), "stem.conv2"))
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                m.update(prefixed(f"stages.{i}.blocks.{j}", block.torch_map((*path, "stages", i, j))))
        m.update(module_map(self.norm, (*path, "norm"), "norm"))
        return m
