"""`--config=experiments/configs/frozen_fusion.py` loads btsbot_jax/configs/frozen_fusion.py, where the config lives."""

from btsbot_jax.configs.frozen_fusion import get_config  # noqa: F401
