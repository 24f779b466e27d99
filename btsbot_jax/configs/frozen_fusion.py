"""BTSbot v2 `frozen_fusion` (what the Hub's `-metadata` models are; Rehemtulla et al. 2025): a trained image model
(ConvNeXt-pico) and a trained `um_nn`, heads cut, under a new head; only the head trains (the branches are frozen:
zero updates, no dropout, BatchNorm statistics fixed). v2 recipe.

    btsbot-train --config=convnext_pico --workdir=runs/img --config.data_dir=DIR
    btsbot-train --config=um_nn_v2 --workdir=runs/meta --config.data_dir=DIR
    btsbot-train --config=frozen_fusion --workdir=runs/ff --config.data_dir=DIR \\
        --config.init_from_image=runs/img --config.init_from_metadata=runs/meta

The branch configs (`model.image_model_config`, `model.meta_model_config`) must describe the two models given.
"""

from btsbot_jax.configs._v2 import recipe


def get_config():
    config = recipe("v2_frozen_fusion")  # ConvNeXt-pico image branch, um_nn 64/64, head 64/8
    config.freeze = "image_branch,meta_branch"
    return config
