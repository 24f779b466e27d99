"""Metadata-only ablation of the paper (`um_nn`): the metadata branch of Table 2 -> Dense(head_neurons) -> Dropout ->
Dense(1), trained with the production recipe of prod.py.

    btsbot-train --config=experiments/configs/um_nn.py --workdir=runs/um_nn --config.data_dir=DIR
"""

from pathlib import Path

from btsbot_jax.models import default_model_config
from btsbot_jax.train import config_from_file


def get_config():
    config = config_from_file(Path(__file__).with_name("prod.py"))
    config.model = default_model_config("um_nn")
    config.model_version = "v10-jax-um_nn"
    return config
