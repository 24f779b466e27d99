"""Image-only ablation of the paper (`um_cnn`): the image branch of Table 2 -> Dense(head_neurons) -> Dropout ->
Dense(1), trained with the production recipe of prod.py.

    btsbot-train --config=experiments/configs/um_cnn.py --workdir=runs/um_cnn --config.data_dir=DIR
"""

from btsbot_jax.configs import prod
from btsbot_jax.models import default_model_config


def get_config():
    config = prod.get_config()
    config.model = default_model_config("um_cnn")
    config.model_version = "v10-jax-um_cnn"
    return config
