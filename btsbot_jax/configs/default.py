"""The paper's recipe (Rehemtulla et al. 2024, Tables 2 and 3): the fields every training config has.

Variants (`prod`, `demo`, `um_cnn`, `um_nn`, ...) import this or each other and change a few fields; any field can be
overridden on the command line: `btsbot-train --config=prod --config.batch_size=32`.
"""

import ml_collections

from btsbot_jax.models import default_model_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = default_model_config("mm_cnn")
    c.data_dir = ""
    c.data_source = "files"  # 'files' (training-set format, memory-mapped) or 'tfds' (btsbot_alerts builder)
    c.tfds_data_dir = ""
    c.data_version = ""  # '' = the only version in data_dir
    c.data_n_max = 0  # 0 = the only N_max in data_dir
    c.batch_size = 64
    c.eval_batch_size = 256
    c.learning_rate = 1e-4
    c.beta1 = 0.99
    c.beta2 = 0.99
    c.epsilon = 1e-7
    c.num_epochs = 1000
    c.max_steps_per_epoch = 0  # 0 = the whole training split each epoch
    c.class_weighting = "alerts"  # 'alerts' (the paper), 'pos_weight' (v2: N_neg/N_pos on label 1) or 'none'
    c.weighted_val_loss = False  # v1: Keras' unweighted val loss; v2: weighted like the training loss
    c.optimizer = "adam"  # 'adam' (v1) or 'adamw' (v2)
    c.weight_decay = 0.0  # AdamW's decoupled weight decay (v2: 0.01, torch's default)
    c.lr_schedule = "plateau"  # 'plateau' (v1: ReduceLROnPlateau below) or 'warmup_cosine' (v2, per epoch)
    c.warmup_epochs = 0  # warmup_cosine: linear warm-up from 0.01x over this many epochs
    c.reduce_lr_factor = 0.4
    c.reduce_lr_patience = 20
    c.reduce_lr_min_lr = 5e-10
    c.reduce_lr_min_delta = 1e-4  # Keras default
    c.early_stopping_patience = 75
    c.early_stopping_min_delta = 0.0  # Keras default
    c.keep_best = "lowest"  # 'lowest' (v1: Keras) or 'relative' (v2: improve by > keep_best_min_rel_delta)
    c.keep_best_min_rel_delta = 0.005
    # start from other weights (btsbot_jax.training.init_from): a model directory of the same architecture, the two
    # branches of a v2_frozen_fusion, or a timm backbone checkpoint
    c.init_from = ""
    c.init_from_image = ""
    c.init_from_metadata = ""
    c.init_from_timm = ""
    c.freeze = ""  # comma-separated frozen submodules (v2_frozen_fusion: 'image_branch,meta_branch')
    c.frozen_eval_mode = True  # frozen submodules without dropout and BatchNorm updates while training
    c.augment = True
    # share of training samples shown without a second PS1 source (sgscore2 = distpsnr2 = -999, nmtchps <= 1);
    # 0 in the paper's recipe (metadata are not augmented), the demo config uses it (data/pipeline.hide_second_ps1)
    c.no_second_ps1 = 0.0
    c.seed = 2
    c.model_version = "dev"
    c.evaluate_test = True
    c.progress_bar = True
    return c
