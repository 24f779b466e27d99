"""Flax NNX models and the model directory format (orbax weights + `model_card.json`) every other part reads.

v1 (Rehemtulla et al. 2024): `mm_cnn`, `um_cnn`, `um_nn` (models.cnn). v2 (Rehemtulla et al. 2025): the upstream
PyTorch classes as `v2_ConvNeXt`, `v2_MaxViT`, `v2_mm_ConvNeXt`, `v2_mm_MaxViT`, `v2_um_nn`, `v2_frozen_fusion`
(models.v2). `create_model` / `default_model_config` dispatch on the config's `architecture`; every model takes
(triplets (N,63,63,3), metadata (N,25)) and returns the score (N,1), with `logits()` for the logit.
"""

from __future__ import annotations

import ml_collections

from btsbot_jax.models import cnn
from btsbot_jax.models.cnn import ARCHITECTURES, BTSbot, count_parameters

V2_ARCHITECTURES = ("v2_ConvNeXt", "v2_MaxViT", "v2_mm_ConvNeXt", "v2_mm_MaxViT", "v2_um_nn", "v2_frozen_fusion")
ALL_ARCHITECTURES = (*ARCHITECTURES, *V2_ARCHITECTURES)


def is_v2(architecture: str) -> bool:
    return architecture in V2_ARCHITECTURES


def default_model_config(architecture: str = "mm_cnn") -> ml_collections.ConfigDict:
    """v1: Table 2 of Rehemtulla et al. 2024; v2: the settings of the published v2 models."""
    if is_v2(architecture):
        from btsbot_jax.models.v2 import default_v2_model_config

        return default_v2_model_config(architecture)
    return cnn.default_model_config(architecture)


def create_model(cfg: ml_collections.ConfigDict | None = None, seed: int = 0):
    """A freshly initialised model of a model config (defaults: the paper's mm_cnn)."""
    if cfg is not None and is_v2(cfg["architecture"]):
        from btsbot_jax.models.v2 import build_v2_model

        return build_v2_model(cfg, seed)
    return cnn.create_model(cfg, seed)


__all__ = ["ALL_ARCHITECTURES", "ARCHITECTURES", "BTSbot", "V2_ARCHITECTURES", "count_parameters", "create_model",
           "default_model_config", "is_v2"]
