"""The BTSbot v2 models (Rehemtulla et al. 2025; upstream `btsbot/architectures.py`) in Flax NNX.

One class per upstream class, built from the same `train_config.json` keys: `ConvNeXt` and `MaxViT` (image only),
`mm_ConvNeXt` and `mm_MaxViT` (image + metadata, trained end to end), `um_nn` (metadata only) and
`frozen_fusion` (a trained image model and a trained `um_nn` with their heads cut, under a new head; what the
Hub's `-metadata` models are). Our architecture names are the upstream class names prefixed with `v2_`
(`v2_ConvNeXt`, ..., `v2_um_nn`), so they never collide with the v1 `mm_cnn` / `um_cnn` / `um_nn` of
Rehemtulla et al. 2024, whose layers differ.

Call signature (the same as v1's `BTSbot`): `model(triplets, metadata)` with triplets (N, 63, 63, 3) NHWC and
metadata (N, 25) raw features in `metadata_cols` order returns the score sigmoid(logit), (N, 1);
`model.logits(triplets, metadata)` returns upstream's output, the logit (N, 1). Image-only models ignore the
metadata and `v2_um_nn` ignores the triplets. Upstream takes channels-first (N, 3, 63, 63) images: the same triplet
transposed, so the layers here work in NHWC and flatten in NCHW order where upstream flattens a feature map.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from btsbot_jax.constants import IMAGE_SIZE, METADATA_COLUMNS
from btsbot_jax.models.convnext import ConvNeXtBackbone
from btsbot_jax.models.maxvit import MaxViTBackbone, maxvit_image_size
from btsbot_jax.models.v2_layers import (
    TorchMap,
    batch_norm,
    gelu,
    layer_norm,
    linear,
    module_map,
    prefixed,
    resize_bilinear,
)

PREFIX = "v2_"
MODEL_NAMES = ("ConvNeXt", "MaxViT", "mm_ConvNeXt", "mm_MaxViT", "um_nn", "frozen_fusion")
V2_ARCHITECTURES = tuple(PREFIX + n for n in MODEL_NAMES)
DEFAULT_CONVNEXT = "convnext_nano.d1h_in1k"  # upstream defaults of `model_kind`
DEFAULT_MAXVIT = "maxvit_tiny_rw_224.sw_in1k"


def architecture_of(model_name: str) -> str:
    if model_name not in MODEL_NAMES:
        raise ValueError(f"unsupported BTSbot v2 model_name {model_name!r}; supported: {MODEL_NAMES}")
    return PREFIX + model_name


def _relu(x):
    return jax.nn.relu(x)


class _Mlp(nnx.Module):
    """Linear -> act [-> Dropout] -> Linear -> act, the metadata branches and the two-layer heads."""

    def __init__(self, n_in: int, n1: int, n2: int, dropout: float, act, drop_after: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(n_in, n1, rngs=rngs)
        self.fc2 = linear(n1, n2, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.act = act
        self.drop_after = drop_after  # 1: Dropout after the first act (metadata); 2: after the second (heads)

    def __call__(self, x):
        x = self.act(self.fc1(x))
        if self.drop_after == 1:
            x = self.drop(x)
        x = self.act(self.fc2(x))
        return self.drop(x) if self.drop_after == 2 else x


# XLA:CPU compile options for inference (btsbot_jax.inference.scorer applies them on CPU only). By default XLA
# hands YNNPACK whole fusions of dots with their elementwise neighbours; for ConvNeXt's many small dot + bias +
# GELU + LayerNorm + layer-scale sequences that materialises broadcasts and splits the depthwise sums, and dots
# alone in YNNPACK with XLA fusing the elementwise work itself run faster (benchmarks/README.md, "v2 vs v1").
# v1's mm_cnn is the opposite case (its one fused convolution stack is fastest by default), so this is per model.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
}


class V2Model(nnx.Module):
    """Common interface: logits(triplets, metadata) -> (N, 1); __call__ -> sigmoid score (N, 1)."""

    model_name: str = ""
    cpu_compiler_options = CPU_COMPILER_OPTIONS

    def logits(self, triplets: jax.Array, metadata: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __call__(self, triplets: jax.Array, metadata: jax.Array) -> jax.Array:
        return nnx.sigmoid(self.logits(triplets, metadata))

    def torch_map(self) -> TorchMap:
        """{upstream state_dict key: (path in our nnx state, layout kind)} (see v2_layers.KINDS)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ image models


class ConvNeXt(V2Model):
    """timm ConvNeXt; head: global avg pool -> LayerNorm -> Linear(fc1) -> GELU -> Linear(fc2) -> GELU -> Dropout ->
    Linear(1). `with_head=False` keeps pool + norm only (frozen_fusion's image branch)."""

    model_name = "ConvNeXt"

    def __init__(self, cfg, *, rngs: nnx.Rngs, with_head: bool = True):
        self.convnext = ConvNeXtBackbone(cfg.get("model_kind", DEFAULT_CONVNEXT), rngs=rngs)
        nf = self.convnext.num_features
        self.head_norm = layer_norm(nf, rngs=rngs)
        self.emb_dim = nf
        self.head = _Mlp(nf, cfg["fc1_neurons"], cfg["fc2_neurons"], cfg["dropout"], gelu, 2, rngs=rngs) \
            if with_head else None
        self.out = linear(cfg["fc2_neurons"], 1, rngs=rngs) if with_head else None

    def feature_map(self, triplets):
        return self.convnext(triplets)

    def embed(self, triplets):
        return self.head_norm(self.feature_map(triplets).mean(axis=(1, 2)))

    def logits(self, triplets, metadata=None):
        return self.out(self.head(self.embed(triplets)))

    def torch_map(self, prefix: str = "") -> TorchMap:
        m = prefixed(prefix + "convnext", self.convnext.torch_map(("convnext",)))
        m.update(module_map(self.head_norm, ("head_norm",), prefix + "convnext.head.1"))
        if self.head is not None:
            m.update(module_map(self.head.fc1, ("head", "fc1"), prefix + "convnext.head.3"))
            m.update(module_map(self.head.fc2, ("head", "fc2"), prefix + "convnext.head.5"))
            m.update(module_map(self.out, ("out",), prefix + "convnext.head.8"))
        return m


class MaxViT(V2Model):
    """timm MaxViT at the size in `model_kind` (input resized bilinearly, align_corners=False); head: global avg
    pool -> Linear(fc1) -> GELU -> Linear(fc2) -> GELU -> Dropout -> Linear(1). `with_head=False` keeps the pool."""

    model_name = "MaxViT"

    def __init__(self, cfg, *, rngs: nnx.Rngs, with_head: bool = True):
        kind = cfg.get("model_kind", DEFAULT_MAXVIT)
        self.image_size = maxvit_image_size(kind)
        self.maxvit = MaxViTBackbone(kind, rngs=rngs)
        if self.maxvit.img_size != self.image_size:
            raise ValueError(f"{kind}: resize size {self.image_size} differs from the timm input size "
                             f"{self.maxvit.img_size}; upstream would not run either")
        nf = self.maxvit.num_features
        self.emb_dim = nf
        self.head = _Mlp(nf, cfg["fc1_neurons"], cfg["fc2_neurons"], cfg["dropout"], gelu, 2, rngs=rngs) \
            if with_head else None
        self.out = linear(cfg["fc2_neurons"], 1, rngs=rngs) if with_head else None

    def feature_map(self, triplets):
        return self.maxvit(resize_bilinear(triplets, self.image_size))

    def embed(self, triplets):
        return self.feature_map(triplets).mean(axis=(1, 2))

    def logits(self, triplets, metadata=None):
        return self.out(self.head(self.embed(triplets)))

    def torch_map(self, prefix: str = "") -> TorchMap:
        m = prefixed(prefix + "maxvit", self.maxvit.torch_map(("maxvit",)))
        if self.head is not None:
            m.update(module_map(self.head.fc1, ("head", "fc1"), prefix + "maxvit.head.1"))
            m.update(module_map(self.head.fc2, ("head", "fc2"), prefix + "maxvit.head.3"))
            m.update(module_map(self.out, ("out",), prefix + "maxvit.head.6"))
        return m


# ------------------------------------------------------------------------------------------------ metadata model


class UmNN(V2Model):
    """v2 um_nn: BatchNorm1d -> Linear -> ReLU -> Dropout -> Linear -> ReLU -> Linear(1). `with_head=False` stops
    after the second Linear (no ReLU), as frozen_fusion cuts it."""

    model_name = "um_nn"

    def __init__(self, cfg, *, rngs: nnx.Rngs, with_head: bool = True):
        n_meta = len(cfg["metadata_cols"])
        self.bn = batch_norm(n_meta, rngs=rngs)
        self.fc1 = linear(n_meta, cfg["meta_fc1_neurons"], rngs=rngs)
        self.drop = nnx.Dropout(cfg["meta_dropout"], rngs=rngs)
        self.fc2 = linear(cfg["meta_fc1_neurons"], cfg["meta_fc2_neurons"], rngs=rngs)
        self.out = linear(cfg["meta_fc2_neurons"], 1, rngs=rngs) if with_head else None
        self.emb_dim = cfg["meta_fc2_neurons"]

    def embed(self, metadata):
        return self.fc2(self.drop(_relu(self.fc1(self.bn(metadata)))))

    def logits(self, triplets, metadata):
        return self.out(_relu(self.embed(metadata)))

    def torch_map(self, prefix: str = "") -> TorchMap:
        m = {}
        m.update(module_map(self.bn, ("bn",), prefix + "network.0"))
        m.update(module_map(self.fc1, ("fc1",), prefix + "network.1"))
        m.update(module_map(self.fc2, ("fc2",), prefix + "network.4"))
        if self.out is not None:
            m.update(module_map(self.out, ("out",), prefix + "network.6"))
        return m


# ------------------------------------------------------------------------------------------- multi-modal models


class _MetadataBranch(nnx.Module):
    """mm_* metadata branch: BatchNorm1d -> Linear -> GELU -> Dropout -> Linear -> GELU."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        n_meta = len(cfg["metadata_cols"])
        self.bn = batch_norm(n_meta, rngs=rngs)
        self.mlp = _Mlp(n_meta, cfg["meta_fc1_neurons"], cfg["meta_fc2_neurons"], cfg["meta_dropout"], gelu, 1,
                        rngs=rngs)

    def __call__(self, m):
        return self.mlp(self.bn(m))

    def torch_map(self, path: tuple, prefix: str) -> TorchMap:
        return {**module_map(self.bn, (*path, "bn"), prefix + ".0"),
                **module_map(self.mlp.fc1, (*path, "mlp", "fc1"), prefix + ".1"),
                **module_map(self.mlp.fc2, (*path, "mlp", "fc2"), prefix + ".4")}


class _CombinedHead(nnx.Module):
    """Linear(comb_fc1) -> act -> Linear(comb_fc2) -> act -> Dropout -> Linear(1)."""

    def __init__(self, n_in: int, cfg, act, *, rngs: nnx.Rngs):
        self.mlp = _Mlp(n_in, cfg["comb_fc1_neurons"], cfg["comb_fc2_neurons"], cfg["comb_dropout"], act, 2,
                        rngs=rngs)
        self.out = linear(cfg["comb_fc2_neurons"], 1, rngs=rngs)

    def __call__(self, h):
        return self.out(self.mlp(h))

    def torch_map(self, path: tuple, prefix: str) -> TorchMap:
        return {**module_map(self.mlp.fc1, (*path, "mlp", "fc1"), prefix + ".0"),
                **module_map(self.mlp.fc2, (*path, "mlp", "fc2"), prefix + ".2"),
                **module_map(self.out, (*path, "out"), prefix + ".5")}


def _convnext_map_side(image_size: int, stem_type: str) -> int:
    """Side of the final ConvNeXt feature map: stem /4 (4x4 patch, or two 3x3 stride-2 convs), then 3 x (2x2 s2)."""
    side = image_size // 4 if stem_type == "patch" else ((image_size - 1) // 2) // 2 + 1
    for _ in range(3):
        side //= 2
    return side


class mm_ConvNeXt(V2Model):  # noqa: N801 (upstream's class name)
    """ConvNeXt feature map flattened (or pool + LayerNorm when `train_data_version` contains "LS") beside the
    GELU metadata branch, under a GELU combined head."""

    model_name = "mm_ConvNeXt"

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.convnext_backbone = ConvNeXtBackbone(cfg.get("model_kind", DEFAULT_CONVNEXT), rngs=rngs)
        nf = self.convnext_backbone.num_features
        self.pool_norm = "LS" in cfg["train_data_version"]
        self.head_norm = layer_norm(nf, rngs=rngs) if self.pool_norm else None
        if not self.pool_norm:
            side = _convnext_map_side(int(cfg.get("image_size", IMAGE_SIZE)), self.convnext_backbone.stem_type)
            if side != 1:  # upstream sizes its head for num_features, i.e. a 1x1 final map
                raise ValueError(f"mm_ConvNeXt flattens the final {side}x{side} feature map into {nf} features only "
                                 "for a 1x1 map; upstream's head would not fit this image size either")
        self.metadata_branch = _MetadataBranch(cfg, rngs=rngs)
        self.combined_head = _CombinedHead(nf + cfg["meta_fc2_neurons"], cfg, gelu, rngs=rngs)

    def feature_map(self, triplets):
        return self.convnext_backbone(triplets)

    def image_features(self, triplets):
        f = self.feature_map(triplets)
        if self.pool_norm:
            return self.head_norm(f.mean(axis=(1, 2)))
        return f.transpose(0, 3, 1, 2).reshape(f.shape[0], -1)  # nn.Flatten on NCHW

    def logits(self, triplets, metadata):
        h = jnp.concatenate([self.image_features(triplets), self.metadata_branch(metadata)], axis=-1)
        return self.combined_head(h)

    def torch_map(self) -> TorchMap:
        m = prefixed("convnext_backbone", self.convnext_backbone.torch_map(("convnext_backbone",)))
        if self.head_norm is not None:
            m.update(module_map(self.head_norm, ("head_norm",), "convnext_backbone.head.1"))
        m.update(self.metadata_branch.torch_map(("metadata_branch",), "metadata_branch"))
        m.update(self.combined_head.torch_map(("combined_head",), "combined_head"))
        return m


class mm_MaxViT(V2Model):  # noqa: N801
    """MaxViT pooled features beside the GELU metadata branch, under a GELU combined head."""

    model_name = "mm_MaxViT"

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        kind = cfg.get("model_kind", DEFAULT_MAXVIT)
        self.image_size = maxvit_image_size(kind)
        self.maxvit_backbone = MaxViTBackbone(kind, rngs=rngs)
        nf = self.maxvit_backbone.num_features
        self.metadata_branch = _MetadataBranch(cfg, rngs=rngs)
        self.combined_head = _CombinedHead(nf + cfg["meta_fc2_neurons"], cfg, gelu, rngs=rngs)

    def feature_map(self, triplets):
        return self.maxvit_backbone(resize_bilinear(triplets, self.image_size))

    def logits(self, triplets, metadata):
        h = jnp.concatenate([self.feature_map(triplets).mean(axis=(1, 2)), self.metadata_branch(metadata)], axis=-1)
        return self.combined_head(h)

    def torch_map(self) -> TorchMap:
        m = prefixed("maxvit_backbone", self.maxvit_backbone.torch_map(("maxvit_backbone",)))
        m.update(self.metadata_branch.torch_map(("metadata_branch",), "metadata_branch"))
        m.update(self.combined_head.torch_map(("combined_head",), "combined_head"))
        return m


_BRANCHES = {"ConvNeXt": ConvNeXt, "MaxViT": MaxViT, "um_nn": UmNN}


class frozen_fusion(V2Model):  # noqa: N801
    """A trained image model (ConvNeXt: pool + norm kept; MaxViT: pool kept) and a trained um_nn (up to its second
    Linear) with their heads cut, concatenated under Linear -> ReLU -> Linear -> ReLU -> Dropout -> Linear(1).
    Upstream trains only this head; `image_branch` and `meta_branch` are the frozen parts."""

    model_name = "frozen_fusion"
    FROZEN = ("image_branch", "meta_branch")

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        icfg, mcfg = cfg["image_model_config"], cfg["meta_model_config"]
        for role, c, allowed in (("image", icfg, ("ConvNeXt", "MaxViT")), ("metadata", mcfg, ("um_nn",))):
            if c is None or c.get("model_name") not in allowed:
                got = None if c is None else c.get("model_name")
                raise ValueError(f"frozen_fusion {role} branch {got!r} is not supported here; expected one of "
                                 f"{allowed} (upstream also allows um_cnn, not ported)")
        self.image_branch = _BRANCHES[icfg["model_name"]](icfg, rngs=rngs, with_head=False)
        self.meta_branch = UmNN(mcfg, rngs=rngs, with_head=False)
        self.combined_head = _CombinedHead(self.image_branch.emb_dim + self.meta_branch.emb_dim, cfg, _relu,
                                           rngs=rngs)

    def image_features(self, triplets):
        return self.image_branch.embed(triplets)

    def meta_features(self, metadata):
        return self.meta_branch.embed(metadata)

    def logits(self, triplets, metadata):
        h = jnp.concatenate([self.image_features(triplets), self.meta_features(metadata)], axis=-1)
        return self.combined_head(h)

    def torch_map(self) -> TorchMap:
        def rebase(m: TorchMap, path: str) -> TorchMap:
            return {k: ((path, *p), kind) for k, (p, kind) in m.items()}

        m = rebase(self.image_branch.torch_map("image_branch."), "image_branch")
        m.update(rebase(self.meta_branch.torch_map("meta_branch."), "meta_branch"))
        m.update(self.combined_head.torch_map(("combined_head",), "combined_head"))
        return m


CLASSES = {"ConvNeXt": ConvNeXt, "MaxViT": MaxViT, "mm_ConvNeXt": mm_ConvNeXt, "mm_MaxViT": mm_MaxViT,
           "um_nn": UmNN, "frozen_fusion": frozen_fusion}


# ------------------------------------------------------------------------------------------------------- configs


def v2_model_config(train_config: dict[str, Any], image_size: int = IMAGE_SIZE) -> ml_collections.ConfigDict:
    """A btsbot-jax model config from an upstream train_config.json: every key kept, plus `architecture`,
    `image_size` and (when upstream has none, e.g. image-only models) `metadata_cols`."""
    tc = copy.deepcopy(dict(train_config))
    name = tc.get("model_name")
    arch = architecture_of(name)
    tc.setdefault("metadata_cols", list(METADATA_COLUMNS))
    tc["architecture"] = arch
    tc["image_size"] = int(image_size)
    if name == "frozen_fusion":
        for k in ("image_model_config", "meta_model_config"):
            if not isinstance(tc.get(k), dict):
                raise ValueError(f"frozen_fusion train_config needs {k!r} (the branch's train config); the Hub's "
                                 "-metadata snapshots include it")
    return ml_collections.ConfigDict(tc)


_DEFAULTS: dict[str, dict[str, Any]] = {
    # typical v2 settings (Rehemtulla et al. 2025; the Hub's train_config.json files)
    "ConvNeXt": dict(model_kind="convnext_pico.d1_in1k", fc1_neurons=256, fc2_neurons=8, dropout=0.5),
    "MaxViT": dict(model_kind=DEFAULT_MAXVIT, fc1_neurons=256, fc2_neurons=8, dropout=0.5),
    "um_nn": dict(meta_fc1_neurons=64, meta_dropout=0.4, meta_fc2_neurons=64),
}
_MM = dict(meta_fc1_neurons=32, meta_dropout=0.25, meta_fc2_neurons=32, comb_fc1_neurons=32, comb_fc2_neurons=8,
           comb_dropout=0.2)


def default_v2_model_config(architecture: str) -> ml_collections.ConfigDict:
    name = architecture.removeprefix(PREFIX)
    architecture_of(name)
    base = dict(model_name=name, train_data_version="v11", pretrained=False, metadata_cols=list(METADATA_COLUMNS))
    if name in _DEFAULTS:
        base.update(_DEFAULTS[name])
    elif name == "mm_ConvNeXt":
        base.update(model_kind="convnext_pico.d1_in1k", **_MM)
    elif name == "mm_MaxViT":
        base.update(model_kind=DEFAULT_MAXVIT, **_MM)
    else:  # frozen_fusion: a ConvNeXt-pico image branch and a um_nn, as the Hub's -metadata models
        base.update(image_model_config=dict(model_name="ConvNeXt", train_data_version="v11", pretrained=False,
                                            **_DEFAULTS["ConvNeXt"]),
                    meta_model_config=dict(model_name="um_nn", train_data_version="v11",
                                           metadata_cols=list(METADATA_COLUMNS), **_DEFAULTS["um_nn"]),
                    image_model_dir="unused", meta_model_dir="unused", skip_load_state=True,
                    comb_fc1_neurons=64, comb_fc2_neurons=8, comb_dropout=0.2)
    return v2_model_config(base)


def _plain(cfg) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def build_v2_model(cfg, seed: int = 0) -> V2Model:
    """The model of a btsbot-jax v2 model config (architecture `v2_*`), freshly initialised."""
    cfg = _plain(cfg)
    name = cfg.get("model_name") or cfg["architecture"].removeprefix(PREFIX)
    if cfg.get("architecture", PREFIX + name) != PREFIX + name:
        raise ValueError(f"model config architecture {cfg['architecture']!r} does not match model_name {name!r}")
    architecture_of(name)
    cls = CLASSES[name]
    # Built abstractly and filled from numpy: initialising with jax would compile a random-number program per
    # weight shape (or one huge program), minutes for a MaxViT on a small CPU; the weights are usually imported.
    abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, _initial_state(state, seed))


def _trunc_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2
    while bad.any():  # timm trunc_normal_: resample outside +-2 std
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > 2
    return (x * std).astype(np.float32)


def _initial_state(state, seed: int):
    """timm's initialisation where it matters for training from scratch: kernels and relative-position tables
    truncated normal (std 0.02), biases 0, norm scales 1, BatchNorm statistics (0, 1), ConvNeXt layer scale 1e-6;
    the dropout RNG streams seeded from `seed + 1`, one key per stream."""
    from btsbot_jax.models.convnext import LS_INIT

    rng = np.random.default_rng(seed)
    dropout_key = jax.random.key(seed + 1)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    out = []
    for i, (path, leaf) in enumerate(leaves):
        name = next((str(k.key) for k in reversed(path) if hasattr(k, "key") and k.key != "value"), "")
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            out.append(jax.random.fold_in(dropout_key, i))
        elif name == "count":
            out.append(np.zeros(leaf.shape, leaf.dtype))
        elif name in ("kernel", "rel_pos_table"):
            out.append(_trunc_normal(rng, leaf.shape, 0.02))
        elif name in ("bias", "mean"):
            out.append(np.zeros(leaf.shape, leaf.dtype))
        elif name in ("scale", "var"):
            out.append(np.ones(leaf.shape, leaf.dtype))
        elif name == "gamma":
            out.append(np.full(leaf.shape, LS_INIT, leaf.dtype))
        else:
            raise ValueError(f"no initialisation rule for weight {jax.tree_util.keystr(path)}")
    return jax.tree_util.tree_unflatten(treedef, jax.device_put(out))  # one transfer, nothing to compile


def create_v2_model(train_config: dict[str, Any], seed: int = 0) -> V2Model:
    """Upstream's `getattr(btsbot.architectures, cfg["model_name"])(cfg)`, in Flax (weights freshly initialised)."""
    return build_v2_model(v2_model_config(train_config), seed)
