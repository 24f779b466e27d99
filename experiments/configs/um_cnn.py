"""Image-only ablation of the paper (`um_cnn`): the image branch of Table 2 -> Dense(head_neurons) -> Dropout ->
Dense(1), trained with the production recipe of prod.py.

    btsbot-train --config=experiments/configs/um_cnn.py --workdir=runs/um_cnn --config.data_dir=DIR
"""

import importlib.util
from pathlib import Path

from btsbot_jax.models import default_model_config


def _prod():
    spec = importlib.util.spec_from_file_location("btsbot_config_prod", Path(__file__).with_name("prod.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    config = _prod().get_config()
    config.model = default_model_config("um_cnn")
    config.model_version = "v10-jax-um_cnn"
    return config
