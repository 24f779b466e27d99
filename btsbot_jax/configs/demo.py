"""Demo: a small mm_cnn trained for a few minutes on 2 CPU cores on the simulated survey of `make demo`.

    btsbot-simulate --num_sources=... --seed=2 --out=demo_out/sim
    btsbot-train --config=experiments/configs/demo.py --workdir=demo_out/train

Same recipe as prod.py (loss, class weights, Adam betas, augmentation, plateau, early stopping) with a narrower
image branch and a short schedule, so that it fits the demo's time budget, and one metadata augmentation that a
training split of a few hundred sources needs (`no_second_ps1`); prod.py is the paper's model.
"""

from btsbot_jax.configs import prod


def get_config():
    config = prod.get_config()
    config.data_dir = "demo_out/sim"  # where `make demo` simulates the survey
    config.data_version = ""  # whatever version / N_max the folder holds
    config.data_n_max = 0
    # a narrow image branch: ~30x fewer FLOPs than Table 2's 32/64 channels of 5x5
    config.model.conv1_channels = 8
    config.model.conv2_channels = 16
    config.model.conv_kernel = 3
    # BatchNorm running statistics settle in ~10 steps instead of ~100, which matters for a run of a few hundred
    config.model.bn_momentum = 0.9
    config.learning_rate = 1e-3
    config.batch_size = 64
    config.num_epochs = 5
    config.max_steps_per_epoch = 100  # an "epoch" is 100 batches of a fresh permutation
    config.reduce_lr_patience = 2
    config.early_stopping_patience = 3
    # 5% of training samples are shown without a second PS1 source within 30" (sgscore2 = distpsnr2 = -999): a few
    # hundred sources hold ~10 with that sentinel, and whichever label they drew became a class cue that decided
    # single test sources (docs/sim_to_real.md, section 10); the field's PS1 density says nothing about the class
    config.no_second_ps1 = 0.05
    config.model_version = "demo"
    return config
