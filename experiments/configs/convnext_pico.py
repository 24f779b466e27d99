"""`--config=experiments/configs/convnext_pico.py` loads btsbot_jax/configs/convnext_pico.py, where the config lives."""

from btsbot_jax.configs.convnext_pico import get_config  # noqa: F401
