"""timm's ConvNeXt backbones (Liu et al. 2022; timm `convnext.py`) in Flax NNX, NHWC, as BTSbot v2 uses them.

The sizes follow timm's registered models (depths, dims, `conv_mlp`, stem); BTSbot v2 (Rehemtulla et al. 2025)
publishes `convnext_pico`. Block: depthwise 7x7 conv -> LayerNorm -> 1x1 expand (4x) -> GELU -> 1x1 project ->
layer scale (gamma) -> + shortcut. Stages 2-4 start with LayerNorm -> 2x2 stride-2 conv. Stem: 4x4 stride-4 patch
conv -> LayerNorm (or timm's overlapping 3x3 stems of the `_ols` variants). In NHWC a 1x1 conv is a Dense over
channels and LayerNorm2d is a LayerNorm over the last axis, so `conv_mlp` changes only the torch weight layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from btsbot_jax.models.v2_layers import (
    TorchMap,
    conv,
    gelu,
    layer_norm,
    linear,
    module_map,
    prefixed,
)

# timm/models/convnext.py: the registered sizes atto..tiny (`model_kind` up to the first '.')
CONVNEXT_VARIANTS = {
    "convnext_atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True),
    "convnext_atto_ols": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True,
                              stem_type="overlap_tiered"),
    "convnext_femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True),
    "convnext_femto_ols": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True,
                               stem_type="overlap_tiered"),
    "convnext_pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True),
    "convnext_pico_ols": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True,
                              stem_type="overlap_tiered"),
    "convnext_nano": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True),
    "convnext_nano_ols": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True, stem_type="overlap"),
    "convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), conv_mlp=False),
}
LS_INIT = 1e-6  # timm ls_init_value


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm.layers.helpers.make_divisible."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def convnext_variant(model_kind: str) -> dict:
    """Depths, dims, conv_mlp and stem of a timm ConvNeXt name such as 'convnext_pico.d1_in1k'."""
    name = model_kind.split(".")[0]
    if name not in CONVNEXT_VARIANTS:
        raise ValueError(f"unsupported ConvNeXt model_kind {model_kind!r}; supported: {sorted(CONVNEXT_VARIANTS)}")
    return {"stem_type": "patch", **CONVNEXT_VARIANTS[name]}


class ConvNeXtBlock(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.conv_dw = conv(dim, dim, 7, groups=dim, rngs=rngs)
        self.norm = layer_norm(dim, rngs=rngs)
        self.fc1 = linear(dim, 4 * dim, rngs=rngs)
        self.fc2 = linear(4 * dim, dim, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), LS_INIT, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm(self.conv_dw(x))
        y = self.fc2(gelu(self.fc1(y)))
        return x + y * self.gamma

    def torch_map(self, path: tuple) -> TorchMap:
        return {
            "gamma": ((*path, "gamma"), "same"),
            **module_map(self.conv_dw, (*path, "conv_dw"), "conv_dw"),
            **module_map(self.norm, (*path, "norm"), "norm"),
            **module_map(self.fc1, (*path, "fc1"), "mlp.fc1"),
            **module_map(self.fc2, (*path, "fc2"), "mlp.fc2"),
        }


class ConvNeXtStage(nnx.Module):
    def __init__(self, n_in: int, n_out: int, depth: int, downsample: bool, *, rngs: nnx.Rngs):
        if downsample:
            self.down_norm = layer_norm(n_in, rngs=rngs)
            self.down_conv = conv(n_in, n_out, 2, stride=2, padding=0, rngs=rngs)
        else:
            self.down_norm = self.down_conv = None
        self.blocks = nnx.List([ConvNeXtBlock(n_out, rngs=rngs) for _ in range(depth)])

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.down_conv is not None:
            x = self.down_conv(self.down_norm(x))
        for block in self.blocks:
            x = block(x)
        return x

    def torch_map(self, path: tuple) -> TorchMap:
        m: TorchMap = {}
        if self.down_conv is not None:
            m.update(module_map(self.down_norm, (*path, "down_norm"), "downsample.0"))
            m.update(module_map(self.down_conv, (*path, "down_conv"), "downsample.1"))
        for i, block in enumerate(self.blocks):
            m.update(prefixed(f"blocks.{i}", block.torch_map((*path, "blocks", i))))
        return m


class ConvNeXtBackbone(nnx.Module):
    """timm ConvNeXt up to `forward_features` (stem + stages; the head lives in the BTSbot models)."""

    def __init__(self, model_kind: str, *, rngs: nnx.Rngs):
        v = convnext_variant(model_kind)
        dims, depths = v["dims"], v["depths"]
        self.model_kind = model_kind
        self.stem_type = v["stem_type"]
        if self.stem_type == "patch":
            self.stem_convs = nnx.List([conv(3, dims[0], 4, stride=4, padding=0, rngs=rngs)])
        else:
            mid = make_divisible(dims[0] // 2) if "tiered" in self.stem_type else dims[0]
            self.stem_convs = nnx.List([conv(3, mid, 3, stride=2, padding=1, rngs=rngs),
                                        conv(mid, dims[0], 3, stride=2, padding=1, rngs=rngs)])
        self.stem_norm = layer_norm(dims[0], rngs=rngs)
        prev = dims[0]
        stages = []
        for i, (d, n) in enumerate(zip(dims, depths)):
            stages.append(ConvNeXtStage(prev, d, n, downsample=i > 0, rngs=rngs))
            prev = d
        self.stages = nnx.List(stages)
        self.num_features = dims[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC image -> NHWC feature map (timm forward_features)."""
        for c in self.stem_convs:  # timm 'overlap' stems have no activation between the two convs
            x = c(x)
        x = self.stem_norm(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def torch_map(self, path: tuple) -> TorchMap:
        m: TorchMap = {}
        if self.stem_type == "patch":
            m.update(module_map(self.stem_convs[0], (*path, "stem_convs", 0), "stem.0"))
            m.update(module_map(self.stem_norm, (*path, "stem_norm"), "stem.1"))
        else:
            m.update(module_map(self.stem_convs[0], (*path, "stem_convs", 0), "stem.0"))
            m.update(module_map(self.stem_convs[1], (*path, "stem_convs", 1), "stem.1"))
            m.update(module_map(self.stem_norm, (*path, "stem_norm"), "stem.2"))
        for i, stage in enumerate(self.stages):
            m.update(prefixed(f"stages.{i}", stage.torch_map((*path, "stages", i))))
        return m
