"""Demo: a small mm_cnn trained for a few minutes on 2 CPU cores on the simulated survey of `make demo`.

    btsbot-simulate --num_sources=... --seed=0 --out=demo_out/sim
    btsbot-train --config=experiments/configs/demo.py --workdir=demo_out/train

Same recipe as prod.py (optimizer, class weights, augmentation, plateau, early stopping) with a narrower image
branch and a short schedule, so that it fits the demo's time budget; prod.py is the paper's model.
"""

import importlib.util
from pathlib import Path


def _prod():
    spec = importlib.util.spec_from_file_location("btsbot_config_prod", Path(__file__).with_name("prod.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    config = _prod().get_config()
    config.data_dir = "demo_out/sim"
    config.data_version = ""
    config.data_n_max = 0
    config.model.conv1_channels = 16
    config.model.conv2_channels = 32
    config.model.conv_kernel = 3
    config.batch_size = 64
    config.learning_rate = 1e-3
    config.num_epochs = 12
    config.reduce_lr_patience = 3
    config.early_stopping_patience = 6
    config.model_version = "demo"
    return config
