"""BTSbot v2 image-only ConvNeXt-pico (`ConvNeXt`, timm convnext_pico; Rehemtulla et al. 2025) with the v2 recipe.

    btsbot-train --config=convnext_pico --workdir=runs/convnext_pico --config.data_dir=DIR
    # from a pre-trained timm backbone (e.g. the Galaxy Zoo encoder), read without torch:
    btsbot-train --config=convnext_pico ... --config.init_from_timm=SNAPSHOT_DIR
"""

from btsbot_jax.configs._v2 import recipe


def get_config():
    config = recipe("v2_ConvNeXt")  # model_kind convnext_pico.d1_in1k, fc1 256, fc2 8, dropout 0.5
    return config
