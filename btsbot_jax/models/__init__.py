"""Flax NNX models and the model directory format (orbax weights + `model_card.json`) every other part reads."""

from btsbot_jax.models.cnn import ARCHITECTURES, BTSbot, count_parameters, create_model, default_model_config

__all__ = ["ARCHITECTURES", "BTSbot", "count_parameters", "create_model", "default_model_config"]
