"""The paper's production recipe: mm_cnn with the hyperparameters of Table 2, trained as in Table 3.

    btsbot-train --config=experiments/configs/prod.py --workdir=runs/prod --config.data_dir=DIR

DIR holds `{split}_cand_{version}_N100.csv` + `{split}_triplets_{version}_N100.npy` (the published BTS training set
from Zenodo 10839690, or `btsbot-simulate --out=DIR`). Any field can be overridden: `--config.batch_size=32`,
`--config.model.conv1_channels=16`, `--config.learning_rate=3e-4`.
"""

from btsbot_jax.configs import default
from btsbot_jax.models import default_model_config


def get_config():
    config = default.get_config()
    config.model = default_model_config("mm_cnn")  # Table 2
    # Table 3 / the v1 training script
    config.batch_size = 64
    config.learning_rate = 1e-4
    config.beta1 = 0.99
    config.beta2 = 0.99
    config.epsilon = 1e-7
    config.num_epochs = 1000
    config.reduce_lr_factor = 0.4
    config.reduce_lr_patience = 20
    config.reduce_lr_min_lr = 5e-10
    config.early_stopping_patience = 75
    config.class_weighting = "alerts"
    config.augment = True
    config.seed = 2
    config.data_version = "v10"
    config.data_n_max = 100
    config.model_version = "v10-jax"
    return config
