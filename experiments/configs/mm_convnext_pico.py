"""`--config=experiments/configs/mm_convnext_pico.py` loads btsbot_jax/configs/mm_convnext_pico.py (the config)."""

from btsbot_jax.configs.mm_convnext_pico import get_config  # noqa: F401
