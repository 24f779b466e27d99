"""`--config=experiments/configs/prod.py` loads btsbot_jax/configs/prod.py, where the config lives."""

from btsbot_jax.configs.prod import get_config  # noqa: F401
