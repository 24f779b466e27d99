"""Metadata-only ablation of the paper (`um_nn`): the metadata branch of Table 2 -> Dense(head_neurons) -> Dropout ->
Dense(1), trained with the production recipe of prod.py.

    btsbot-train --config=experiments/configs/um_nn.py --workdir=runs/um_nn --config.data_dir=DIR
"""

from btsbot_jax.configs import prod
from btsbot_jax.models import default_model_config


def get_config():
    config = prod.get_config()
    config.model = default_model_config("um_nn")
    config.model_version = "v10-jax-um_nn"
    return config
