"""`--config=experiments/configs/demo.py` loads btsbot_jax/configs/demo.py, where the config lives."""

from btsbot_jax.configs.demo import get_config  # noqa: F401
