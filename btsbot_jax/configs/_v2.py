"""The BTSbot v2 training recipe (Rehemtulla et al. 2025; upstream `btsbot/train.py` and the Hub's
train_config.json files), shared by the v2 configs: AdamW (betas 0.9/0.999, weight decay 0.01), a per-epoch linear
warm-up from 0.01x over 2 epochs then a cosine to 0.01x at epoch 25, BCE with logits and pos_weight = N_neg/N_pos
(also on the validation loss), keep-best on a 0.5% val-loss improvement, early stopping after 5 epochs without one,
batch 64, flips + rot90. Data format, tf.data pipeline and sharding are v1's."""

import ml_collections

from btsbot_jax.configs import default
from btsbot_jax.models import default_model_config


def recipe(architecture: str) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = default_model_config(architecture)
    c.optimizer = "adamw"
    c.weight_decay = 0.01
    c.learning_rate = 5e-6
    c.beta1 = 0.9
    c.beta2 = 0.999
    c.epsilon = 1e-8  # torch's AdamW default
    c.lr_schedule = "warmup_cosine"
    c.warmup_epochs = 2
    c.num_epochs = 25
    c.batch_size = 64
    c.class_weighting = "pos_weight"
    c.weighted_val_loss = True
    c.keep_best = "relative"
    c.keep_best_min_rel_delta = 0.005
    c.early_stopping_patience = 5
    c.augment = True
    c.seed = 2
    c.data_version = ""  # the only version in data_dir (upstream's v2 models were trained on its v11 set)
    c.data_n_max = 0
    c.model_version = "v2-jax-" + architecture.removeprefix("v2_")
    return c
