"""`--config=experiments/configs/um_nn_v2.py` loads btsbot_jax/configs/um_nn_v2.py, where the config lives."""

from btsbot_jax.configs.um_nn_v2 import get_config  # noqa: F401
