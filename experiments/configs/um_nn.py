"""`--config=experiments/configs/um_nn.py` loads btsbot_jax/configs/um_nn.py, where the config lives."""

from btsbot_jax.configs.um_nn import get_config  # noqa: F401
