"""`--config=experiments/configs/um_cnn.py` loads btsbot_jax/configs/um_cnn.py, where the config lives."""

from btsbot_jax.configs.um_cnn import get_config  # noqa: F401
