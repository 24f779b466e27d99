"""Image-only ablation of the paper (`um_cnn`): the image branch of Table 2 -> Dense(head_neurons) -> Dropout ->
Dense(1), trained with the production recipe of prod.py.

    btsbot-train --config=experiments/configs/um_cnn.py --workdir=runs/um_cnn --config.data_dir=DIR
"""

from pathlib import Path

from btsbot_jax.models import default_model_config
from btsbot_jax.train import config_from_file


def get_config():
    config = config_from_file(Path(__file__).with_name("prod.py"))
    config.model = default_model_config("um_cnn")
    config.model_version = "v10-jax-um_cnn"
    return config
