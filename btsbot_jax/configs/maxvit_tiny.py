"""BTSbot v2 image-only MaxViT-tiny (`MaxViT`, timm maxvit_tiny_rw_224; Rehemtulla et al. 2025) with the v2 recipe.
The triplet is resized bilinearly to 224 px: a GPU model (tens of GFLOP per alert).

    btsbot-train --config=maxvit_tiny --workdir=runs/maxvit_tiny --config.data_dir=DIR
"""

from btsbot_jax.configs._v2 import recipe


def get_config():
    config = recipe("v2_MaxViT")  # model_kind maxvit_tiny_rw_224.sw_in1k, fc1 256, fc2 8, dropout 0.5
    config.eval_batch_size = 64
    return config
