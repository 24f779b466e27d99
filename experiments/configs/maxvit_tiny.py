"""`--config=experiments/configs/maxvit_tiny.py` loads btsbot_jax/configs/maxvit_tiny.py, where the config lives."""

from btsbot_jax.configs.maxvit_tiny import get_config  # noqa: F401
